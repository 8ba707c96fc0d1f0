"""Stop a trial whose network is silent or saturated (Firmin et al., 2024, "Parallel
Hyperparameter Optimization of Spiking Neural Networks", arXiv 2403.00450).

A stage whose neurons (almost) never fire passes no signal forward, and its surrogate
gradients vanish with the membrane far below threshold: the trial cannot learn, and its
compute is wasted. A stage whose neurons fire at (almost) every time step carries no
information either. The guard reads the per-stage firing rates (spikes per neuron per time
step, :class:`snn.diagnostics.ActivityMonitor`) at a few points of each epoch and says when
one stage has stayed below ``silent_rate``, or above ``saturated_rate``, for ``patience``
consecutive points. Plain Python: the training loop calls it, the rules live here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["FiringGuard", "Verdict"]


@dataclass(frozen=True)
class Verdict:
    """Why a trial stops: ``kind`` is ``silent`` or ``saturated``, in ``stage``, at ``rate``."""

    kind: str
    stage: str
    rate: float


class FiringGuard:
    """Counts, per stage, consecutive checks out of the firing-rate range; returns a
    :class:`Verdict` once a stage has been out for ``patience`` checks.

    Args:
        silent_rate: A stage below this rate is silent (None: never).
        saturated_rate: A stage above this rate is saturated (None: never).
        patience: Consecutive checks a stage must stay out of range.
    """

    def __init__(self, silent_rate: float | None, saturated_rate: float | None, patience: int) -> None:
        if patience < 1:
            raise ValueError(f"patience: must be >= 1, got {patience}")
        self.silent_rate, self.saturated_rate, self.patience = silent_rate, saturated_rate, patience
        self._silent: dict[str, int] = {}
        self._saturated: dict[str, int] = {}

    @property
    def active(self) -> bool:
        return self.silent_rate is not None or self.saturated_rate is not None

    def update(self, rates: Mapping[str, float]) -> Verdict | None:
        """Take one check's per-stage rates; the verdict once a stage has stayed out of range."""
        verdict = None
        for stage, rate in rates.items():
            silent = self.silent_rate is not None and rate < self.silent_rate
            saturated = self.saturated_rate is not None and rate > self.saturated_rate
            self._silent[stage] = self._silent.get(stage, 0) + 1 if silent else 0
            self._saturated[stage] = self._saturated.get(stage, 0) + 1 if saturated else 0
            if verdict is None and self._silent[stage] >= self.patience:
                verdict = Verdict("silent", stage, rate)
            elif verdict is None and self._saturated[stage] >= self.patience:
                verdict = Verdict("saturated", stage, rate)
        return verdict
