"""The Tune function trainable (:mod:`trainables._trainable`): the inference model it records."""

from __future__ import annotations

import json

import torch

from snn import data, models
from snn.config import TrainConfig
from snn.neurons import LIF
from snn.training import Trainer
from trainables import _trainable


def test_the_stripped_spec_rebuilds_the_trained_network():
    # every setting of the network away from its default: a rebuild that forgot one would differ
    cfg = TrainConfig(dataset="digits", arch="resnet-tiny", arch_kwargs={"width": 8, "blocks": [1, 2],
                                                                          "detach_reset": True},
                      timesteps=3, tau=0.75, v_threshold=0.5, surrogate="atan", surrogate_param=3.0,
                      branches=[1], fused_lif=False, epochs=1, batch_size=16, max_batches=1, seed=2)
    trainer = Trainer(cfg)
    trainer.run_epoch()
    spec = json.loads(json.dumps(_trainable.stripped_spec(cfg, None)))  # as the checkpoint file holds it
    assert spec["build"] == models.build_args(cfg, data.info("digits"), branches="none")
    rebuilt = models.strip_shortcuts(models.build(**spec["build"]))
    rebuilt.load_state_dict(models.strip_shortcuts(trainer.model).state_dict())
    lifs = [m for m in rebuilt.modules() if isinstance(m, LIF)]
    assert lifs and all((m.tau, m.v_threshold, m.detach_reset, m.fused) == (0.75, 0.5, True, False) for m in lifs)
    assert all((m.surrogate.name, m.surrogate.param) == ("atan", 3.0) for m in lifs)
    x = torch.rand(4, *spec["input_shape"]).to(memory_format=torch.channels_last)  # as the trainer feeds it
    rebuilt = rebuilt.to(memory_format=torch.channels_last).eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), trainer.model.eval()(x).main)
