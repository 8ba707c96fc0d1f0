"""Timesteps as a fidelity: a trial that starts at a small T and raises it at successive halving's rungs.

An SNN's forward and backward pass runs T time steps, so an epoch at T costs about T times an
epoch at T = 1. With ``fidelity: {timesteps: [1, 2, 4]}`` a trial starts at the smallest T and
raises it each time it passes a rung of successive halving (ASHA), which ranks the trials on
their *cost*: the running sum over their epochs of each epoch's T. The last value is the
target T, at which every trial that ASHA keeps ends (Time Inheritance Training, Deng et al.,
ICLR 2022: a network trained at a small T continues well at a larger one).

The arithmetic, written once here for the trainer (which raises T) and the study (whose ASHA
decides):

* ASHA's rung k (k = 1, 2, ...) is at cost g·η^(k-1), with the reduction factor η = 2 (each
  rung keeps the better half) and the grace period g = T₂, the second value: the first rung
  comes when a trial has spent what one epoch at T₂ costs (``ASHAScheduler(time_attr="cost",
  grace_period=g, reduction_factor=η, max_t=`` :func:`budget_cost` ``)``).
* A trial trains at T₁ until its cost first reaches rung 1, then at T₂ until it reaches rung 2,
  and so on; from rung K-1 on (K values) it trains at the target T. ASHA ranks a trial at the
  report where its cost first reaches a rung, the same report that ends a stage: a trial it
  stops is stopped at the T it was ranked at, one it keeps trains its next epoch at the next T.
* Each value is at most twice the one before it. Then no epoch passes two rungs at once, so
  each stage ends on a rung of its own: an epoch at T_k (k ≥ 2) adds at most 2^(k-2)·T₂, half
  the distance from rung k to rung k+1 (an epoch at T₁ less than T₂, the distance from rung 1
  to rung 2).

For [1, 2, 4], g = 2: the epochs train at T = 1, 1, 2, 4, 4, ... and cost 1, 2, 4, 8, 12, 16, ...
in all, so rungs 2, 4, 8, 16, ... are reached exactly, at epochs 2 (T = 1), 3 (T = 2), 4 and 6
(T = 4). A trial of 8 epochs costs 24 against 32 at T = 4 throughout, and one that ASHA stops
at the first rung costs 2 against 4 (at T = 4, ASHA's first rung is one epoch). Values that do
not double overshoot a rung by less than one epoch, and the stage ends at that epoch.

The λ schedule and the learning rate run over the whole budget of epochs, whatever T an epoch
has. Plain Python (no torch): the study's spec checks a fidelity before anything starts.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["REDUCTION_FACTOR", "Fidelity", "budget_cost", "epoch_timesteps", "first_target_epoch", "grace_cost",
           "rungs"]

REDUCTION_FACTOR = 2
"""ASHA's η: each rung keeps the better half of the trials that reached it (the study's
``scheduler: asha``, with or without a fidelity)."""


class Fidelity(BaseModel):
    """T as a fidelity (a spec's ``fidelity:``): the values a trial's T grows through, the target last."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timesteps: tuple[Annotated[int, Field(ge=1)], ...] = Field(
        description="ascending, each at most twice the one before; the last is the target T "
                                  "(the spec's timesteps), the first the T every trial starts at")

    @field_validator("timesteps")
    @classmethod
    def _rising(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(v) < 2:
            raise ValueError(f"needs two values or more, the T a trial starts at and the target, got {list(v)}")
        for a, b in zip(v, v[1:]):
            if b <= a:
                raise ValueError(f"must rise from the first T to the target, got {list(v)}")
            if b > REDUCTION_FACTOR * a:
                raise ValueError(f"{b} is more than twice {a} in {list(v)}: ASHA's rungs double a trial's cost, "
                                 f"and a T that more than doubles would pass two rungs in one epoch; add a value "
                                 f"between them")
        return v

    @property
    def target(self) -> int:
        """The target T: the last value."""
        return self.timesteps[-1]


def grace_cost(timesteps: tuple[int, ...]) -> int:
    """ASHA's grace period on the cost axis: the first rung, the cost of one epoch at the second value."""
    return timesteps[1]


def rungs(timesteps: tuple[int, ...]) -> list[int]:
    """The costs of the rungs at which T is raised: one per value but the last."""
    g = grace_cost(timesteps)
    return [g * REDUCTION_FACTOR ** k for k in range(len(timesteps) - 1)]


def _epochs(timesteps: tuple[int, ...]) -> Iterator[int]:
    """The T of each epoch, on and on: a stage ends at the epoch whose cost first reaches its rung."""
    cost, stage, raises = 0, 0, rungs(timesteps)
    while True:
        t = timesteps[stage]
        yield t
        cost += t
        if stage < len(raises) and cost >= raises[stage]:
            stage += 1


def epoch_timesteps(timesteps: tuple[int, ...], epochs: int) -> list[int]:
    """The T of each of ``epochs`` epochs.

    >>> epoch_timesteps((1, 2, 4), 8)
    [1, 1, 2, 4, 4, 4, 4, 4]
    """
    return list(itertools.islice(_epochs(timesteps), epochs))


def budget_cost(timesteps: tuple[int, ...], epochs: int) -> int:
    """The cost of a trial's whole budget of ``epochs``, the sum of their T: ASHA's ``max_t``,
    where it ends a trial anyway."""
    return sum(epoch_timesteps(timesteps, epochs))


def first_target_epoch(timesteps: tuple[int, ...]) -> int:
    """The first epoch (1-based) that trains at the target T."""
    return next(e for e, t in enumerate(_epochs(timesteps), start=1) if t == timesteps[-1])
