"""The Tune function trainable (:mod:`trainables._trainable`): the inference model it records,
and a real trial's torch threads under Tune."""

from __future__ import annotations

import json

import pytest
import torch

from snn import data, models
from snn.config import TrainConfig
from snn.neurons import LIF
from snn.training import Trainer
from trainables import _trainable
from trainables.layout import SYSTEM_PREFIX, TORCH_THREADS


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


@pytest.mark.slow
def test_a_trial_with_one_cpu_trains_on_one_torch_thread(ray_session, tmp_path):
    # On a machine with more cores than the trial's CPUs: a fresh trial process starts numba's
    # thread pool (the fused CPU LIF) inside the trial, which must not raise torch's count.
    # amp off: in float32 the LIF takes the numba kernels on every CPU (bfloat16 never does).
    from ray import tune

    from study.system_metrics import SystemSampler

    config = TrainConfig(dataset="digits", arch="resnet-tiny", arch_kwargs={"width": 8}, epochs=1, batch_size=32,
                         max_batches=2, workers=0, amp=False, data_root=str(tmp_path / "data")).to_dict()
    tuner = tune.Tuner(tune.with_resources(tune.with_parameters(_trainable.train_snn, system_metrics=SystemSampler),
                                           {"cpu": 1, "gpu": 0}),
                       param_space=config,
                       run_config=tune.RunConfig(name="threads", storage_path=str(tmp_path / "tune"), verbose=0))
    result = tuner.fit()[0]
    assert result.error is None, result.error
    assert result.metrics[TORCH_THREADS] == 1
    assert any(k.startswith(SYSTEM_PREFIX) for k in result.metrics)  # the injected sampler ran
