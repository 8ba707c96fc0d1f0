"""T as a fidelity (:mod:`snn.fidelity`): the arithmetic of the stages and rungs, and a trainer
that grows T within one trial, continuing from its own weights, resumable in the middle."""

from __future__ import annotations

import io
import itertools
import random

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from snn import fidelity
from snn.config import TrainConfig
from snn.metrics import COST, TEST_ACC, TIMESTEPS, TRAIN_LOSS
from snn.training import Trainer, fit


def _stages_by_hand(values, epochs):
    """An independent reading of the rule: rung k is at T₂·2^(k-1); stage k trains until the
    trial's cost reaches rung k, then the next value takes over."""
    out, cost, k = [], 0, 0
    for _ in range(epochs):
        out.append(values[k])
        cost += values[k]
        if k < len(values) - 1 and cost >= values[1] * 2 ** k:
            k += 1
    return out


def test_one_two_four_reaches_each_rung_exactly():
    assert fidelity.epoch_timesteps((1, 2, 4), 8) == [1, 1, 2, 4, 4, 4, 4, 4]
    assert list(itertools.accumulate([1, 1, 2, 4, 4, 4, 4, 4])) == [1, 2, 4, 8, 12, 16, 20, 24]
    assert fidelity.rungs((1, 2, 4)) == [2, 4] and fidelity.grace_cost((1, 2, 4)) == 2
    assert fidelity.budget_cost((1, 2, 4), 8) == 24  # against 32 at T = 4 throughout
    assert fidelity.first_target_epoch((1, 2, 4)) == 4


def test_no_epoch_passes_two_rungs_and_each_stage_ends_on_its_rung():
    # any values that at most double: every rung (T₂·2^k) is first reached by an epoch of its own,
    # and the epochs that reach the first K-1 rungs are the last of their stage
    rng = random.Random(0)
    for _ in range(300):
        values = [rng.randint(1, 6)]
        for _ in range(rng.randint(1, 4)):
            values.append(rng.randint(values[-1] + 1, 2 * values[-1]))
        epochs = 40
        per_epoch = fidelity.epoch_timesteps(tuple(values), epochs)
        assert per_epoch == _stages_by_hand(values, epochs)
        costs = list(itertools.accumulate(per_epoch))
        milestones = [values[1] * 2 ** k for k in range(12) if values[1] * 2 ** k <= costs[-1]]
        reaching = [next(e for e, c in enumerate(costs) if c >= m) for m in milestones]
        assert len(set(reaching)) == len(reaching), (values, costs, milestones)
        ends = [e for e in range(epochs - 1) if per_epoch[e + 1] != per_epoch[e]]
        assert ends == reaching[:len(values) - 1], (values, per_epoch)


@pytest.mark.parametrize("values,message", [
    ([4, 2], "must rise from the first T to the target, got [4, 2]"),
    ([2, 2, 4], "must rise"),
    ([1, 4], "4 is more than twice 1 in [1, 4]"),
    ([4], "needs two values or more, the T a trial starts at and the target, got [4]"),
    ([0, 1], "greater than or equal to 1"),
])
def test_bad_values_are_refused(values, message):
    with pytest.raises(ValidationError) as e:
        fidelity.Fidelity(timesteps=values)
    assert message in str(e.value)


def test_the_config_ties_the_target_to_timesteps_and_needs_an_epoch_at_it():
    with pytest.raises(ValueError, match=r"^fidelity: its last T, 4, is the target and must equal timesteps \(2\)"):
        TrainConfig.from_dict({"timesteps": 2, "fidelity": {"timesteps": [1, 2, 4]}})
    with pytest.raises(ValueError, match=r"^fidelity: T \[1, 2, 4\] reaches the target 4 at epoch 4, past the "
                                         r"budget of 3 epoch\(s\); give at least 4 epochs$"):
        TrainConfig.from_dict({"timesteps": 4, "epochs": 3, "fidelity": {"timesteps": [1, 2, 4]}})
    assert TrainConfig(timesteps=4, epochs=4, fidelity={"timesteps": [1, 2, 4]}).to_dict()["fidelity"] == {
        "timesteps": [1, 2, 4]}


# -- the trainer --------------------------------------------------------------------------------------
def cfg(**kw):
    base = dict(dataset="digits", arch="resnet-tiny", arch_kwargs={"width": 8}, timesteps=4,
                fidelity={"timesteps": [1, 2, 4]}, epochs=5, batch_size=64, max_batches=4, seed=1)
    return TrainConfig(**{**base, **kw})


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_trial_grows_t_twice_from_its_own_weights():
    """T 1, 1, 2, 4, 4 with cost its running sum; at each raise the first step starts from the
    weights (and BatchNorm statistics) the last epoch ended with, in the same model."""
    reports, ends, starts = [], {}, {}
    trainer = None

    def report(m, t):
        reports.append(m)
        ends[m["epoch"]] = _weights(t.model)

    def progress(phase, done, total):
        if phase == "train" and done == 0:  # before the epoch's first step, after any raise
            starts[len(reports) + 1] = (trainer.model.timesteps, _weights(trainer.model))

    def start(t):
        nonlocal trainer
        trainer = t

    fit(cfg(), report, progress=progress, start=start)
    assert [m[TIMESTEPS] for m in reports] == [1, 1, 2, 4, 4]
    assert [m[COST] for m in reports] == [1, 2, 4, 8, 12]
    model = trainer.model
    assert model.timesteps == 4
    for raised in (3, 4):  # the epochs that start at a new T
        t, weights = starts[raised]
        assert t == [1, 1, 2, 4, 4][raised - 1]
        for k, v in ends[raised - 1].items():
            assert torch.equal(weights[k], v), k  # carried over, not re-initialised (running stats too)
    fresh = Trainer(cfg()).model.state_dict()
    assert not all(torch.equal(fresh[k], v) for k, v in ends[2].items() if v.is_floating_point())


def _roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("stop", [2, 3])  # at T = 1 just before a raise; at T = 2 between the two
def test_a_resume_in_the_middle_of_growth_is_exact(stop):
    straight, states = [], {}
    fit(cfg(), lambda m, t: (straight.append(m), states.__setitem__(m["epoch"], _roundtrip(t.state_dict()))))
    assert states[stop]["timesteps"] == [1, 1, 2, 4, 4][stop - 1]  # the checkpoint holds the current T
    resumed = []
    final = {}
    fit(cfg(), lambda m, t: (resumed.append(m), final.update(_weights(t.model))), state=states[stop])
    assert [m["epoch"] for m in resumed] == list(range(stop + 1, 6))  # nothing trained twice
    for a, b in zip(straight[stop:], resumed):
        for key in (TIMESTEPS, COST, TRAIN_LOSS, TEST_ACC, "lambda"):
            assert a[key] == b[key], (a["epoch"], key)
    for k, v in states[5]["model"].items():
        assert torch.equal(final[k], v), k


def test_a_state_from_another_t_is_refused():
    trainer = Trainer(cfg())
    trainer.run_epoch()
    state = trainer.state_dict()
    state["timesteps"] = 4
    with pytest.raises(ValueError, match=r"^state: epoch 1 trained at T=4, where this config trains at T=1$"):
        Trainer(cfg()).load_state_dict(state)


def test_event_frames_are_binned_again_at_each_raise(tmp_path):
    """digits-dvs is binned into T frames for each T; the new loaders at a raise shuffle on from
    where the old one was, as a trial at one T throughout does."""
    common = dict(dataset="digits-dvs", data_root=str(tmp_path), timesteps=2, epochs=3, batch_size=16, max_batches=1)
    growing, constant = Trainer(cfg(fidelity={"timesteps": [1, 2]}, **common)), Trainer(cfg(fidelity=None, **common))
    seen = []
    for _ in range(3):
        m = growing.run_epoch()
        constant.run_epoch()
        x, _ = next(iter(growing.test_loader))  # [B, T, C, H, W]
        seen.append((m[TIMESTEPS], growing.train_loader.dataset.timesteps, x.shape[1]))
        assert torch.equal(growing.train_loader.generator.get_state(), constant.train_loader.generator.get_state())
    assert seen == [(1, 1, 1), (1, 1, 1), (2, 2, 2)]  # [1, 2]: two epochs at T = 1 reach the rung at 2


def test_a_users_frames_cannot_grow(tmp_path):
    from snn.config import UserData

    rng = np.random.default_rng(0)
    path = tmp_path / "frames.npz"
    np.savez(path, x=rng.integers(0, 3, (40, 4, 2, 8, 8)).astype(np.uint8), y=np.arange(40) % 4)
    user = UserData(format="npz", train=str(path), test_fraction=0.25)
    with pytest.raises(ValueError, match=r"^fidelity: frames holds frames of T=4, prepared once for all trials, "
                                         r"so T cannot grow on it; remove fidelity$"):
        Trainer(cfg(dataset=user, data_root=str(tmp_path / "root")))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_captured_step_is_captured_again_at_each_raise_and_makes_the_eager_steps_updates():
    # float32 and deep supervision, as tests/snn/test_training.py's graph-against-eager test
    runs = {}
    for graphs in (False, True):
        cudnn = torch.backends.cudnn
        cudnn.benchmark, cudnn.deterministic = False, True
        try:
            t = Trainer(cfg(epochs=4, max_batches=6, device="cuda", amp=False, loss_mode="deep_supervision",
                            cuda_graphs=graphs))
            captured = []
            for _ in range(4):
                m = t.run_epoch()
                captured.append((m[TIMESTEPS], t._graph))
            runs[graphs] = (t, m)
        finally:
            cudnn.benchmark, cudnn.deterministic = True, False
    (eager, m0), (graphed, m1) = runs[False], runs[True]
    assert [t for t, _ in captured] == [1, 1, 2, 4]
    assert len({id(g) for _, g in captured}) == 3 and graphed._graph.graph is not None  # one capture per T
    for (k, a), b in zip(eager.model.state_dict().items(), graphed.model.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5, msg=k)
    assert m1[TRAIN_LOSS] == pytest.approx(m0[TRAIN_LOSS], rel=1e-3)
