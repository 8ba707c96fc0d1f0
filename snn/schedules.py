"""Balance-coefficient schedules λ(i) over training iterations (Guo et al., NeurIPS 2024, Eq. 10).

Eq. 10 weighs the shortcut branches by λ(i) = λ·(1 - i/I): the paper's evolutionary
training, which moves attention from the shallow branches to the main branch as
training goes on. The other shapes let a study ask whether that decay is the right one.
Every shape starts at λ₀ (at i = 0) and is counted in iterations, not epochs.
"""

from __future__ import annotations

import math

__all__ = ["SHAPES", "balance"]


def _constant(p: float) -> float:
    return 1.0


def _linear(p: float) -> float:
    return 1.0 - p  # Eq. 10


def _cosine(p: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * p))


def _exponential(p: float) -> float:
    return 0.01 ** p  # decays to 1% of λ₀ at the last iteration


def _step(p: float) -> float:
    return 1.0 if p < 0.5 else 0.0  # shortcut training for the first half, vanilla after


_SHAPES = {"constant": _constant, "linear": _linear, "cosine": _cosine,
           "exponential": _exponential, "step": _step}

SHAPES: tuple[str, ...] = tuple(_SHAPES)
"""Valid schedule shapes."""


def balance(shape: str, lambda0: float, step: int, total_steps: int) -> float:
    """The balance coefficient λ(i) of Eq. 10 at iteration ``step`` of ``total_steps``.

    With p = i / I:

    * ``constant``: λ₀ (λ₀ = 1 is the paper's plain shortcut back-propagation, Eq. 6);
    * ``linear``: λ₀·(1 - p), the paper's evolutionary training (Eq. 10);
    * ``cosine``: λ₀·(1 + cos(πp))/2;
    * ``exponential``: λ₀·0.01^p (1% of λ₀ at the end);
    * ``step``: λ₀ for p < 1/2, then 0.

    Args:
        shape: One of :data:`SHAPES`.
        lambda0: λ₀ ≥ 0.
        step: The iteration i, 0 ≤ i ≤ I.
        total_steps: I ≥ 1, the total number of training iterations.

    Raises:
        ValueError: Unknown shape, negative λ₀, or a step outside 0..I.
    """
    if shape not in _SHAPES:
        raise ValueError(f"schedule: unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    if not (lambda0 >= 0.0 and math.isfinite(lambda0)):
        raise ValueError(f"lambda0: must be a finite number >= 0, got {lambda0!r}")
    if total_steps < 1 or not 0 <= step <= total_steps:
        raise ValueError(f"step: must satisfy 0 <= step <= total_steps with total_steps >= 1, "
                         f"got step={step}, total_steps={total_steps}")
    return float(lambda0) * _SHAPES[shape](step / total_steps)
