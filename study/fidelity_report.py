"""The report's Fidelity section: what growing T saved a study, and whether its cheap rungs
ranked the trials as the target T did.

A study with ``fidelity: {timesteps: [...]}`` trains each search trial at the small T first
and raises T at ASHA's rungs (:mod:`snn.fidelity`, :mod:`study.fidelity`). Read back from the
search stage's trial runs in MLflow (their per-epoch ``timesteps``, ``cost`` and ``test_acc``):

* **Compute.** What the trials spent, Σ over their epochs of each epoch's T (their last
  ``cost``), next to what the same epochs would have cost at the target T throughout, and how
  many trials ASHA stopped at each T.
* **Ranking.** At each rung where T is raised, the Spearman rank correlation between the
  trials' accuracy there (the last epoch at that T) and their accuracy at the target T, over
  the trials that reached the target. A trial's accuracy at the target is the one at the first
  rung there: every trial that reached the target T has it, after the same epochs at the same
  T, so none is ranked on a longer training than another. Its 95 % interval is a bootstrap
  over the trials (:data:`RESAMPLES` resamples, seeded, percentile interval).
* **Verdict.** A correlation below :data:`WEAK` says that the fidelity misled the study. For
  normally distributed scores, a rank correlation of 0.5 (a Pearson r of 0.52) puts a trial on
  the wrong side of a halving rung's median one time in three (1/2 − arcsin(r)/π), where a
  ranking by chance does so one time in two: below it the cheap rung's halving cut by little
  more than chance. Fewer than :data:`MIN_TRIALS` trials at the target give no verdict.

The trials that reached the target passed the cheap rungs, so they are their better half: the
range is narrowed, and the correlation over them reads lower than over all trials would.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from snn.fidelity import epoch_timesteps, rungs
from snn.metrics import COST, TEST_ACC, TIMESTEPS
from study.folder import SEARCH
from study.markdown import table
from study.tracking import metric_per_epoch, trial_runs_filter

__all__ = ["MIN_TRIALS", "RESAMPLES", "WEAK", "FidelityAnalysis", "Ranking", "TrialCurve", "analyse",
           "markdown_lines", "read_curves", "section"]

WEAK = 0.5  # a rank correlation below this: the fidelity misled the study (see the module docstring)
MIN_TRIALS = 5  # trials at the target T below which a rung's correlation gives no verdict
RESAMPLES = 2000  # bootstrap resamples of the trials


@dataclass(frozen=True)
class TrialCurve:
    """One search trial as MLflow has it: epoch k's T, cost and test_acc at index k - 1 (NaN where
    MLflow has none)."""

    trial_id: str
    timesteps: list[int]
    costs: list[float]
    accs: list[float]
    stopped_early: bool = False  # ASHA stopped it before its budget


@dataclass(frozen=True)
class Ranking:
    """How one rung where T is raised ranked the trials, against the target T."""

    cost: int  # the rung's cost
    epoch: int  # the epoch that reaches it: the last at ``timesteps``
    timesteps: int
    n: int  # trials with an accuracy here and at the target
    rho: float | None  # Spearman's; None: fewer than 3 trials, or no variation
    ci: tuple[float, float] | None  # 95 % bootstrap interval

    @property
    def misled(self) -> bool:
        return self.n >= MIN_TRIALS and self.rho is not None and self.rho < WEAK


@dataclass(frozen=True)
class FidelityAnalysis:
    """What :func:`analyse` found."""

    values: tuple[int, ...]  # the fidelity's T values, the target last
    trials: int
    spent: float  # Σ of the trials' last cost
    at_target: float  # Σ of their epochs × the target T
    by_t: dict[int, tuple[int, int]]  # T -> (trials that trained at it, of them stopped there by ASHA)
    target_epoch: int  # the epoch of the first rung at the target T
    rankings: list[Ranking] = field(default_factory=list)

    @property
    def target(self) -> int:
        return self.values[-1]


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(stats.spearmanr(a, b).statistic)


def _interval(a: np.ndarray, b: np.ndarray, seed: int = 0) -> tuple[float, float] | None:
    """The 95 % percentile interval of Spearman's ρ over resamples of the trials (pairs kept)."""
    rng = np.random.default_rng(seed)
    draws = []
    with warnings.catch_warnings():  # a resample of tied values has no ρ: left out
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        for _ in range(RESAMPLES):
            i = rng.integers(0, len(a), len(a))
            rho = _spearman(a[i], b[i])
            if rho is not None and math.isfinite(rho):
                draws.append(rho)
    if len(draws) < RESAMPLES // 2:
        return None
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return float(lo), float(hi)


def analyse(curves: list[TrialCurve], values: tuple[int, ...], epochs: int) -> FidelityAnalysis:
    """The compute and the rankings of a fidelity study's search trials (see the module docstring).

    Args:
        curves: The search trials, each as MLflow recorded its epochs.
        values: The fidelity's T values, the target last.
        epochs: A trial's budget of epochs.
    """
    per_epoch = epoch_timesteps(values, epochs)
    costs = np.cumsum(per_epoch)
    milestones = rungs(values)
    # the first rung at the target: the rung after the last raise (ASHA's rungs double)
    target_rung = milestones[-1] * 2
    target_epoch = next((e for e, c in enumerate(costs, start=1) if c >= target_rung), epochs)
    by_t: dict[int, tuple[int, int]] = {}
    for t in values:
        trained = [c for c in curves if t in c.timesteps]
        stopped = [c for c in trained if c.stopped_early and c.timesteps[-1] == t]
        by_t[t] = (len(trained), len(stopped))
    spent = sum(c.costs[-1] for c in curves if c.costs and math.isfinite(c.costs[-1]))
    at_target = sum(len(c.timesteps) * values[-1] for c in curves)
    reached = [c for c in curves if len(c.accs) >= target_epoch and math.isfinite(c.accs[target_epoch - 1])]
    rankings = []
    for m in milestones:
        epoch = next(e for e, c in enumerate(costs, start=1) if c >= m)
        pairs = np.array([(c.accs[epoch - 1], c.accs[target_epoch - 1]) for c in reached
                          if math.isfinite(c.accs[epoch - 1])]).reshape(-1, 2)
        a, b = pairs[:, 0], pairs[:, 1]
        rho = _spearman(a, b)
        ci = _interval(a, b) if rho is not None else None
        rankings.append(Ranking(m, epoch, per_epoch[epoch - 1], len(pairs), rho, ci))
    return FidelityAnalysis(tuple(values), len(curves), float(spent), float(at_target), by_t, target_epoch, rankings)


def _rho(r: Ranking) -> str:
    if r.rho is None:
        return "—"
    return f"{r.rho:+.2f}" + (f" [{r.ci[0]:+.2f}, {r.ci[1]:+.2f}]" if r.ci else "")


def _verdict(r: Ranking) -> str:
    where = f"the rung at T = {r.timesteps} (cost {r.cost}, epoch {r.epoch})"
    if r.n < MIN_TRIALS or r.rho is None:
        return (f"At {where}, {r.n} trial(s) reached the target T with an accuracy at both: too few to tell "
                f"whether it ranked them as the target did (at least {MIN_TRIALS}).")
    if r.misled:
        uncertain = r.ci is not None and r.ci[1] >= WEAK
        return (f"**The fidelity misled this study** at {where}: its ranking agrees with the target T's by a rank "
                f"correlation of {r.rho:.2f}, below {WEAK}, so its halving cut chose little better than chance, "
                f"or worse" + (f" ({r.n} trials leave it uncertain: the interval reaches {r.ci[1]:.2f})." if uncertain
                               else "."))
    unsettled = r.ci is not None and r.ci[0] < WEAK
    return (f"{where[0].upper()}{where[1:]} ranked the trials as the target T did (ρ = {r.rho:.2f})"
            + (f"; {r.n} trials do not settle it: the interval reaches {r.ci[0]:.2f}." if unsettled else "."))


def markdown_lines(a: FidelityAnalysis) -> list[str]:
    """The section's body: the compute, the trials per T, the rankings and their verdicts."""
    values = ", ".join(map(str, a.values))
    ratio = f" ({a.spent / a.at_target:.0%} of it)" if a.at_target else ""
    lines = [f"T grew through {values} at ASHA's rungs on the trials' cost (the sum of their epochs' T). The "
             f"{a.trials} search trial(s) spent {a.spent:g} epoch × T, where the same epochs at the target T = "
             f"{a.target} throughout would have cost {a.at_target:g}{ratio}.", ""]
    lines += table(["T", "trials that trained at it", "stopped there by ASHA"],
                   [[t, n, s] for t, (n, s) in a.by_t.items()])
    lines += ["", f"Each rung's accuracy against the accuracy at the target T, at its first rung (epoch "
                  f"{a.target_epoch}), over the trials that reached it: Spearman's ρ with its 95 % bootstrap "
                  f"interval. Below {WEAK}, the fidelity misled the study.", ""]
    lines += table(["rung (cost)", "epoch", "T", "trials", "Spearman ρ [95 % interval]"],
                   [[r.cost, r.epoch, r.timesteps, r.n, _rho(r)] for r in a.rankings])
    lines += [""] + [f"* {_verdict(r)}" for r in a.rankings]
    return lines


def read_curves(client: Any, experiment_id: str, study: str) -> list[TrialCurve]:
    """The search stage's trial runs of ``study``, each with its per-epoch T, cost and test_acc."""
    runs = client.search_runs([experiment_id], filter_string=trial_runs_filter(study), max_results=10000)
    curves = []
    for r in runs:
        if r.data.tags.get("stage", SEARCH) != SEARCH:
            continue
        series = {key: dict(metric_per_epoch(client, r.info.run_id, key)) for key in (TIMESTEPS, COST, TEST_ACC)}
        epochs = range(1, max(series[TIMESTEPS], default=0) + 1)
        curves.append(TrialCurve(r.data.tags.get("trial_id", r.info.run_id[:8]),
                                 [int(series[TIMESTEPS].get(e, 0)) for e in epochs],
                                 [series[COST].get(e, math.nan) for e in epochs],
                                 [series[TEST_ACC].get(e, math.nan) for e in epochs],
                                 r.data.tags.get("stopped_early") == "true"))
    return curves


def section(client: Any, experiment_id: str | None, spec: Any) -> list[str]:
    """The report's Fidelity section of a study with a fidelity; nothing for one without."""
    if spec.fidelity is None or experiment_id is None:
        return []
    a = analyse(read_curves(client, experiment_id, spec.name), spec.fidelity.timesteps, spec.train.epochs)
    return ["", "## Fidelity", ""] + markdown_lines(a)
