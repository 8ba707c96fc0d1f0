
import math
import re

import pytest
import torch
import torch.nn.functional as F

from snn import losses, schedules
from snn.models import ModelOutput

# λ(i)/λ₀ of each shape as a function of p = i/I, written from the shapes' definitions
# (``linear`` is Eq. 10), with its value worked out by hand at p = 1/2 and at p = 1.
SHAPES = {
    "constant": (lambda p: 1.0, 1.0, 1.0),
    "linear": (lambda p: 1 - p, 0.5, 0.0),
    "cosine": (lambda p: (1 + math.cos(math.pi * p)) / 2, 0.5, 0.0),
    "exponential": (lambda p: 0.01 ** p, 0.1, 0.01),
    "step": (lambda p: 1.0 if p < 0.5 else 0.0, 0.0, 0.0),
}


def test_every_shape_has_a_reference():
    assert set(schedules.SHAPES) == set(SHAPES)


@pytest.mark.parametrize("shape", schedules.SHAPES)
def test_schedule_values(shape):
    formula, mid, end = SHAPES[shape]
    lam0, total = 0.25, 1000
    assert schedules.balance(shape, lam0, 0, total) == pytest.approx(lam0)
    assert schedules.balance(shape, lam0, total // 2, total) == pytest.approx(lam0 * mid)
    assert schedules.balance(shape, lam0, total, total) == pytest.approx(lam0 * end, abs=1e-12)
    for i in range(0, total + 1, 37):
        assert schedules.balance(shape, lam0, i, total) == pytest.approx(lam0 * formula(i / total), abs=1e-12)


def test_linear_is_eq_10_everywhere():
    for i in range(0, 101, 7):
        assert schedules.balance("linear", 0.25, i, 100) == pytest.approx(0.25 * (1 - i / 100))


@pytest.mark.parametrize("shape", schedules.SHAPES)
def test_non_increasing(shape):
    vals = [schedules.balance(shape, 1.0, i, 50) for i in range(51)]
    assert all(a >= b - 1e-12 for a, b in zip(vals, vals[1:]))


def test_schedule_errors():
    valid = re.escape(", ".join(schedules.SHAPES))
    with pytest.raises(ValueError, match=f"^schedule: unknown shape 'lin'; choose one of {valid}$"):
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


# The two readings of Eq. 10, written out with three shortcut heads.
MODES = {
    # cross-entropy of the main logits plus λ times the heads' logits
    "logit_sum": lambda out, y, lam: F.cross_entropy(out.main + lam * (out.branches[0] + out.branches[1]
                                                                       + out.branches[2]), y),
    # the main head's cross-entropy plus λ times each shortcut head's own
    "deep_supervision": lambda out, y, lam: F.cross_entropy(out.main, y) + lam * (
        F.cross_entropy(out.branches[0], y) + F.cross_entropy(out.branches[1], y)
        + F.cross_entropy(out.branches[2], y)),
}


def test_every_loss_mode_has_a_reference():
    assert set(losses.MODES) == set(MODES)


@pytest.mark.parametrize("mode", losses.MODES)
@pytest.mark.parametrize("lam", [0.3, 0.7])
def test_loss_is_its_reading_of_eq_10(mode, lam):
    out, y = make_output(1)
    torch.testing.assert_close(losses.shortcut_loss(out, y, lam, mode), MODES[mode](out, y, lam))


def test_logit_sum_is_the_default():
    out, y = make_output()
    torch.testing.assert_close(losses.shortcut_loss(out, y, 0.3), MODES["logit_sum"](out, y, 0.3))


@pytest.mark.parametrize("mode", losses.MODES)
def test_lambda_zero_is_vanilla(mode):
    out, y = make_output(2)
    torch.testing.assert_close(losses.shortcut_loss(out, y, 0.0, mode), F.cross_entropy(out.main, y))


def test_bad_mode():
    out, y = make_output(2)
    valid = re.escape(", ".join(losses.MODES))
    with pytest.raises(ValueError, match=f"^loss_mode: unknown mode 'sum'; choose one of {valid}$"):
        losses.shortcut_loss(out, y, 0.1, "sum")
