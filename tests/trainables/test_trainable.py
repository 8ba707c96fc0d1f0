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


class _Died(Exception):
    """The trial's process ends with its driver (killed), after a checkpoint."""


class _TuneHere:
    """Tune's function API as :func:`train_snn` calls it, in this process: each reported
    checkpoint persisted into the trial's folder as ``checkpoint_<n>`` (as Tune does), the
    checkpoint Tune's saved state names handed over at the start."""

    def __init__(self, trial_dir, handed=None, die_after=None):
        from ray import tune

        self.Checkpoint = tune.Checkpoint
        self.trial_dir, self.handed, self.die_after = trial_dir, handed, die_after
        self.results = []

    def get_context(self):
        from types import SimpleNamespace

        return SimpleNamespace(get_trial_resources=lambda: None, get_trial_id=lambda: "t0")

    def get_checkpoint(self):
        return None if self.handed is None else self.Checkpoint.from_directory(str(self.handed))

    def report(self, result, checkpoint=None):
        import shutil

        self.results.append(result)
        if checkpoint is not None:
            n = len(list(self.trial_dir.glob("checkpoint_*")))
            shutil.copytree(checkpoint.path, self.trial_dir / f"checkpoint_{n:06d}")
        if result.get("epoch") == self.die_after:
            raise _Died


def test_a_trial_resumed_in_the_middle_of_growth_trains_no_epoch_twice(tmp_path, monkeypatch):
    """Killed after its epoch-3 checkpoint (at T = 2, between the two raises), with Tune's state
    naming epoch 2's (at T = 1): the resumed trial reports epoch 3 as it was trained, then trains
    epochs 4 and 5 at the target T, exactly as a trial that never stopped."""
    from snn.metrics import COST, TEST_ACC, TIMESTEPS, TRAIN_LOSS
    from snn.training import fit

    config = TrainConfig(dataset="digits", arch="resnet-tiny", arch_kwargs={"width": 8}, timesteps=4,
                         fidelity={"timesteps": [1, 2, 4]}, epochs=5, batch_size=64, max_batches=3, workers=0,
                         seed=3, data_root=str(tmp_path / "data"))
    trial_dir = tmp_path / "study" / "trial_t0"
    trial_dir.mkdir(parents=True)
    monkeypatch.setattr(_trainable, "_node_id", lambda: "node")
    first = _TuneHere(trial_dir, die_after=3)
    monkeypatch.setattr(_trainable, "tune", first)
    with pytest.raises(_Died):
        _trainable.train_snn(config.to_dict(), study_dir=str(tmp_path / "study"))
    assert [r[TIMESTEPS] for r in first.results] == [1, 1, 2]
    resumed = _TuneHere(trial_dir, handed=trial_dir / "checkpoint_000001")  # Tune's state: behind, at epoch 2
    monkeypatch.setattr(_trainable, "tune", resumed)
    _trainable.train_snn(config.to_dict(), study_dir=str(tmp_path / "study"))
    assert [r["epoch"] for r in resumed.results] == [3, 4, 5]
    # epoch 3 as it was trained and recorded (its epoch_time too): not trained again
    assert resumed.results[0] == {k: v for k, v in first.results[2].items() if k in resumed.results[0]}
    assert [(r[TIMESTEPS], r[COST]) for r in resumed.results] == [(2, 4), (4, 8), (4, 12)]
    straight = []
    fit(config, lambda m, t: straight.append(m))
    for a, b in zip(straight[2:], resumed.results):
        assert all(a[k] == b[k] for k in (TRAIN_LOSS, TEST_ACC, TIMESTEPS, COST)), a["epoch"]
    history = _trainable.read_record(max(trial_dir.glob("checkpoint_*")))["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]  # each epoch once, in the newest record
