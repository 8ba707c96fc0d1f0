import math
import re

import pytest
import torch

from snn import surrogates

# The formulas of Eq. 4 (x = u_pre - V_th, V_th = 1), written independently of snn.surrogates.
EXPECTED = {
    "triangle": lambda x, g: g * torch.clamp(1 - torch.abs((x + 1) / 1 - 1), min=0),
    "rectangle": lambda x, a: (torch.abs(x) < a / 2).double() / a,
    "tanh": lambda x, k: k / 2 * (1 - torch.tanh(k * x) ** 2),
    "sigmoid": lambda x, a: a * torch.sigmoid(a * x) * (1 - torch.sigmoid(a * x)),
    "atan": lambda x, a: (a / 2) / (1 + (math.pi / 2 * a * x) ** 2),
}


def test_names_cover_the_issue_list():
    assert set(surrogates.NAMES) == set(EXPECTED)


@pytest.mark.parametrize("name", surrogates.NAMES)
@pytest.mark.parametrize("param", [None, 0.7, 3.0])
def test_backward_is_the_formula(name, param):
    f = surrogates.get(name, param)
    p = surrogates.DEFAULTS[name] if param is None else param
    x = torch.linspace(-2.3, 2.3, 301, dtype=torch.float64, requires_grad=True)
    f(x).sum().backward()
    torch.testing.assert_close(x.grad, EXPECTED[name](x.detach(), p))


@pytest.mark.parametrize("name", surrogates.NAMES)
def test_forward_is_heaviside_strict(name):
    f = surrogates.get(name)
    x = torch.tensor([-1.0, -1e-7, 0.0, 1e-7, 2.0])
    assert f(x).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("name", surrogates.NAMES)
def test_grad_is_derivative_of_primitive(name):
    # away from the rectangle's jumps, the hand-written g' equals autograd through g
    f = surrogates.get(name, 1.3)
    x = torch.linspace(-2.0, 2.0, 97, dtype=torch.float64)
    x = x[(x.abs() - 0.65).abs() > 1e-3].requires_grad_()
    f.primitive(x).sum().backward()
    torch.testing.assert_close(x.grad, f.grad(x.detach()))


@pytest.mark.parametrize("name", [n for n in surrogates.NAMES if n != "rectangle"])
def test_primitive_is_a_smoothed_step(name):
    f = surrogates.get(name)
    assert float(f.primitive(torch.tensor(-50.0))) == pytest.approx(0.0, abs=0.02)
    assert float(f.primitive(torch.tensor(50.0))) == pytest.approx(1.0, abs=0.02)


def test_unknown_name_lists_valid_names():
    valid = re.escape(", ".join(surrogates.NAMES))
    with pytest.raises(ValueError, match=f"^surrogate: unknown name 'tanhh'; choose one of {valid}$"):
        surrogates.get("tanhh")


@pytest.mark.parametrize("name", surrogates.NAMES)
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_non_positive_param_is_rejected(name, bad):
    with pytest.raises(ValueError, match=f"^surrogate_param: .*{name!r}.*{re.escape(', '.join(surrogates.NAMES))}"):
        surrogates.get(name, bad)
