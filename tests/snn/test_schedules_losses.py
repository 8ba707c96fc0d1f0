
import pytest
import torch
import torch.nn.functional as F

from snn import losses, schedules
from snn.models import ModelOutput


@pytest.mark.parametrize("shape,mid,end", [
    ("constant", 1.0, 1.0), ("linear", 0.5, 0.0), ("cosine", 0.5, 0.0),
    ("exponential", 0.1, 0.01), ("step", 0.0, 0.0)])
def test_schedule_values(shape, mid, end):
    lam0, total = 0.25, 1000
    assert schedules.balance(shape, lam0, 0, total) == pytest.approx(lam0)
    assert schedules.balance(shape, lam0, total // 2, total) == pytest.approx(lam0 * mid)
    assert schedules.balance(shape, lam0, total, total) == pytest.approx(lam0 * end, abs=1e-12)


def test_linear_is_eq_10_everywhere():
    for i in range(0, 101, 7):
        assert schedules.balance("linear", 0.25, i, 100) == pytest.approx(0.25 * (1 - i / 100))


@pytest.mark.parametrize("shape", schedules.SHAPES)
def test_non_increasing(shape):
    vals = [schedules.balance(shape, 1.0, i, 50) for i in range(51)]
    assert all(a >= b - 1e-12 for a, b in zip(vals, vals[1:]))


def test_schedule_errors():
    with pytest.raises(ValueError, match="schedule: unknown shape 'lin'; choose one of constant, linear"):
        schedules.balance("lin", 0.25, 0, 10)
    with pytest.raises(ValueError, match="lambda0"):
        schedules.balance("linear", -0.1, 0, 10)
    with pytest.raises(ValueError, match="step"):
        schedules.balance("linear", 0.1, 11, 10)


def make_output(seed=0):
    g = torch.Generator().manual_seed(seed)
    main = torch.randn(6, 4, generator=g)
    branches = [torch.randn(6, 4, generator=g) for _ in range(3)]
    return ModelOutput(main, branches), torch.randint(0, 4, (6,), generator=g)


def test_logit_sum_is_ce_of_summed_logits():
    out, y = make_output()
    lam = 0.3
    manual = F.cross_entropy(out.main + lam * (out.branches[0] + out.branches[1] + out.branches[2]), y)
    torch.testing.assert_close(losses.shortcut_loss(out, y, lam), manual)


def test_deep_supervision_is_sum_of_ces():
    out, y = make_output(1)
    lam = 0.7
    manual = F.cross_entropy(out.main, y) + lam * sum(F.cross_entropy(b, y) for b in out.branches)
    torch.testing.assert_close(losses.shortcut_loss(out, y, lam, "deep_supervision"), manual)


def test_lambda_zero_is_vanilla_and_bad_mode():
    out, y = make_output(2)
    for mode in losses.MODES:
        torch.testing.assert_close(losses.shortcut_loss(out, y, 0.0, mode), F.cross_entropy(out.main, y))
    with pytest.raises(ValueError, match="loss_mode: unknown mode 'sum'; choose one of logit_sum, deep_supervision"):
        losses.shortcut_loss(out, y, 0.1, "sum")
