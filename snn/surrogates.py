"""Surrogate gradients for the spike function (Eq. 4 of Guo et al., NeurIPS 2024).

The forward pass of every surrogate is the exact Heaviside step of Eq. 2,
``o = 1 if x > 0 else 0`` with ``x = u_pre - V_th`` (a value exactly at the threshold
does not fire). Only the backward pass differs: it uses the derivative ``g'(x)`` of a
smooth primitive ``g(x)`` whose shape is set by one positive parameter.

Each surrogate is written in three small parts, as in spikingjelly:

* a backward formula ``_<name>_grad(x, p)`` giving g'(x);
* a primitive ``_<name>_primitive(x, p)`` giving g(x), used by tests to check the
  hand-written formula against autograd;
* the shared :class:`Surrogate` callable that holds the name and parameter.

Example:
    >>> f = get("atan", 2.0)
    >>> f(torch.tensor([-0.1, 0.0, 0.3]))
    tensor([0., 0., 1.])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from snn import registry

__all__ = ["NAMES", "DEFAULTS", "Surrogate", "get"]


def _triangle_grad(x: Tensor, gamma: float) -> Tensor:
    # g'(x) = gamma * max(0, 1 - |x|)   (Eq. 4, first form, at V_th = 1)
    return x.abs().neg_().add_(1.0).clamp_min_(0.0).mul_(gamma)  # in place after one new tensor


def _triangle_primitive(x: Tensor, gamma: float) -> Tensor:
    # integral of the triangle: piecewise quadratic, 0 below -1, gamma above 1
    xc = x.clamp(-1.0, 1.0)
    return gamma * (xc + 1.0 - xc * xc.abs() / 2.0 - 0.5)


def _rectangle_grad(x: Tensor, a: float) -> Tensor:
    # g'(x) = (1/a) * 1[|x| < a/2]   (Eq. 4, second form)
    return (x.abs() < a / 2.0).to(x.dtype) / a


def _rectangle_primitive(x: Tensor, a: float) -> Tensor:
    return (x.clamp(-a / 2.0, a / 2.0) + a / 2.0) / a


def _tanh_grad(x: Tensor, k: float) -> Tensor:
    # g'(x) = (k/2) * (1 - tanh(k x)^2), the derivative of g(x) = (tanh(k x) + 1) / 2
    return torch.tanh(k * x).square_().neg_().add_(1.0).mul_(0.5 * k)


def _tanh_primitive(x: Tensor, k: float) -> Tensor:
    return 0.5 * (torch.tanh(k * x) + 1.0)


def _sigmoid_grad(x: Tensor, alpha: float) -> Tensor:
    # g'(x) = alpha * sigma(alpha x) * (1 - sigma(alpha x))
    s = torch.sigmoid(alpha * x)
    return s.neg().add_(1.0).mul_(s).mul_(alpha)


def _sigmoid_primitive(x: Tensor, alpha: float) -> Tensor:
    return torch.sigmoid(alpha * x)


def _atan_grad(x: Tensor, alpha: float) -> Tensor:
    # g'(x) = (alpha/2) / (1 + (pi/2 * alpha * x)^2)
    return x.mul(math.pi / 2.0 * alpha).square_().add_(1.0).reciprocal_().mul_(alpha / 2.0)


def _atan_primitive(x: Tensor, alpha: float) -> Tensor:
    return torch.atan(math.pi / 2.0 * alpha * x) / math.pi + 0.5


_FORMULAS: dict[str, tuple[Callable[[Tensor, float], Tensor], Callable[[Tensor, float], Tensor], float]] = {
    "atan": (_atan_grad, _atan_primitive, 2.0),
    "rectangle": (_rectangle_grad, _rectangle_primitive, 1.0),
    "sigmoid": (_sigmoid_grad, _sigmoid_primitive, 4.0),
    "tanh": (_tanh_grad, _tanh_primitive, 2.0),
    "triangle": (_triangle_grad, _triangle_primitive, 1.0),
}

NAMES: tuple[str, ...] = registry.SURROGATES
"""Valid surrogate names, the one list that specs, search spaces and docs read."""

DEFAULTS: dict[str, float] = registry.SURROGATE_DEFAULTS
"""Default parameter of each surrogate (α, a, α, k, γ)."""
assert set(NAMES) == set(_FORMULAS) and all(DEFAULTS[n] == _FORMULAS[n][2] for n in NAMES)


class _Spike(torch.autograd.Function):
    """Heaviside forward, surrogate backward, for a single tensor (used outside LIF)."""

    @staticmethod
    def forward(ctx, x: Tensor, surrogate: "Surrogate") -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad_out * ctx.surrogate.grad(x), None


@dataclass(frozen=True)
class Surrogate:
    """A named surrogate gradient (Eq. 4) with its shape parameter.

    Calling it on ``x = u_pre - V_th`` returns ``(x > 0)`` as a float tensor; its
    backward multiplies the incoming gradient by :meth:`grad`.

    The five formulas, for x = u_pre - V_th (V_th = 1 as in the paper):

    * ``triangle``: g'(x) = γ·max(0, 1 - |x|)  (= γ·max(0, 1 - |u/V_th - 1|) of Eq. 4), γ = 1.
    * ``rectangle``: g'(x) = (1/a)·1[|x| < a/2]  (Eq. 4), a = 1.
    * ``tanh``: g'(x) = (k/2)·(1 - tanh²(k·x)), k = 2. Eq. 4's third form is printed as
      k(1 - tanh(u_pre - V_th))², which is monotone rather than a bump around the
      threshold and does not integrate to a step; we implement the derivative of the
      tanh-like primitive g(x) = (tanh(kx) + 1)/2 of IM-Loss (Guo et al., 2022a), which
      the paper cites for this surrogate, so that k sets the sharpness as the text says.
    * ``sigmoid``: g'(x) = α·σ(αx)·(1 - σ(αx)), α = 4.
    * ``atan``: g'(x) = (α/2) / (1 + (π/2·α·x)²), α = 2.

    Attributes:
        name: One of :data:`NAMES`.
        param: The shape parameter (γ, a, k or α), strictly positive.
    """

    name: str
    param: float

    def grad(self, x: Tensor) -> Tensor:
        """g'(x): the surrogate derivative of the spike with respect to x."""
        return _FORMULAS[self.name][0](x, self.param)

    def primitive(self, x: Tensor) -> Tensor:
        """g(x): the smooth function whose derivative is :meth:`grad`."""
        return _FORMULAS[self.name][1](x, self.param)

    def __call__(self, x: Tensor) -> Tensor:
        return _Spike.apply(x, self)


def get(name: str, param: float | None = None) -> Surrogate:
    """Return the surrogate called ``name`` (Eq. 4).

    Args:
        name: One of :data:`NAMES`.
        param: Its shape parameter; ``None`` takes the default in :data:`DEFAULTS`.

    Returns:
        A :class:`Surrogate` callable on ``x = u_pre - V_th``.

    Raises:
        ValueError: For an unknown name or a parameter that is not strictly positive.
    """
    if name not in _FORMULAS:
        raise ValueError(f"surrogate: unknown name {name!r}; choose one of {', '.join(NAMES)}")
    value = DEFAULTS[name] if param is None else float(param)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"surrogate_param: must be a finite number > 0 for surrogate {name!r}, got {param!r} "
            f"(surrogates: {', '.join(NAMES)})"
        )
    return Surrogate(name, value)
