"""What the replicates of a configuration say: a configuration's mean final ``test_acc`` over
its seeds with a 95 % Student-t confidence interval, the paired difference of two
configurations over the seeds both ran (a paired t-test, with one plain sentence), and how
many paired seeds would detect a :data:`DETECT_POINTS`-point difference at the observed
spread (the power of the paired t-test).

Plain numbers in, numbers and sentences out: no MLflow, no Optuna (:mod:`study.analysis`
reads the study's runs into configurations). Accuracies are fractions, as MLflow's
``test_acc``; sentences speak of *points* (percentage points of accuracy).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CONFIDENCE", "DETECT_POINTS", "POWER", "Configuration", "PairedDifference", "configuration",
           "paired_difference", "seeds_needed"]

CONFIDENCE = 0.95  # of every confidence interval
POWER = 0.80  # of the seeds-needed estimate (two-sided test at 1 - CONFIDENCE)
DETECT_POINTS = 1.0  # the difference, in points of accuracy, the seeds-needed estimate is for
_MAX_SEEDS = 10_000_000  # the seeds-needed search stops here
_ZERO = 1e-12  # an sd below this is no spread at all (float noise of equal accuracies)


@dataclass(frozen=True)
class Configuration:
    """One configuration of one stage: every param but ``seed``, and its replicates.

    Attributes:
        stage: ``search`` or ``confirm``.
        method: The runs' tag ``method`` (vanilla, shortcut, evolutionary, searched).
        label: A short name: the method of a paper setting, else the params that tell it
            apart from the stage's other configurations.
        params: The runs' MLflow params, ``seed`` left out.
        acc: Final ``test_acc`` by seed (seeds as MLflow holds them; a seed run twice: the mean).
        trial_ids: The trials that ran it.
        n, mean, sd, ci: Replicates, their mean, sd and 95 % Student-t interval (sd and ci:
            None below 2 replicates).
    """

    stage: str
    method: str
    label: str
    params: dict[str, str]
    acc: dict[str, float]
    trial_ids: tuple[str, ...]
    n: int
    mean: float
    sd: float | None
    ci: tuple[float, float] | None

    @property
    def seeds(self) -> list[str]:
        """The seeds it ran, in order."""
        return sorted(self.acc, key=_seed_order)


@dataclass(frozen=True)
class PairedDifference:
    """``a`` minus ``b`` (final ``test_acc``, a fraction) over the seeds both ran.

    ``mean``, ``sd``, ``ci`` and ``p`` are None where they cannot be computed: below 2 paired
    seeds (all of them), or with no spread between the pairs (``ci``, ``p``).
    ``seeds_needed``: paired seeds that would detect a :data:`DETECT_POINTS` difference at
    the observed spread (set only where no difference was detected).
    """

    stage: str
    a: str
    b: str
    seeds: tuple[str, ...]
    mean: float | None
    sd: float | None
    ci: tuple[float, float] | None
    p: float | None
    seeds_needed: int | None
    sentence: str

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def key(self) -> str:
        """Its metrics' prefix on the parent run: ``diff_<a>_minus_<b>``."""
        return f"diff_{self.a}_minus_{self.b}"



def _seed_order(seed: str) -> tuple[int, Any]:
    try:
        return 0, int(seed)
    except ValueError:
        return 1, seed


def _quiet(fn: Callable[[], Any]) -> Any:
    """``fn()`` without scipy's and numpy's warnings on degenerate samples (no spread)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return fn()


def _interval(ci: Any) -> tuple[float, float]:
    return float(ci.low), float(ci.high)


def _paired_power(n: int, effect: float, sd: float, alpha: float) -> float:
    """Power of the two-sided paired t-test with ``n`` pairs (the noncentral t)."""
    from scipy import stats

    df, nc = n - 1, effect / sd * math.sqrt(n)
    crit = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def seeds_needed(sd: float, effect: float = DETECT_POINTS / 100, *, power: float = POWER,
                 alpha: float = 1 - CONFIDENCE) -> int | None:
    """The fewest paired seeds at which a two-sided paired t-test at level ``alpha`` detects a
    true difference ``effect`` with probability ``power``, when the paired differences have
    standard deviation ``sd`` (same unit as ``effect``: fractions of accuracy by default).

    Returns:
        At least 2; None for ``sd`` 0 or not finite, or beyond ten million seeds.
    """
    if not (sd > 0 and math.isfinite(sd)):
        return None
    if _paired_power(2, effect, sd, alpha) >= power:
        return 2
    lo, hi = 2, 4  # power(lo) < power <= power(hi): it grows with n
    while _paired_power(hi, effect, sd, alpha) < power:
        lo, hi = hi, hi * 2
        if hi > _MAX_SEEDS:
            return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _paired_power(mid, effect, sd, alpha) >= power else (mid, hi)
    return hi


def _points(*values: float) -> list[str]:
    """Points of accuracy, two decimals below one point, else one."""
    digits = 2 if max(abs(100 * v) for v in values) < 1 else 1
    return [f"{100 * v:.{digits}f}" for v in values]


def _seeds(n: int) -> str:
    return f"{n} paired seed{'s' if n != 1 else ''}"


def paired_difference(stage: str, a: Configuration, b: Configuration) -> PairedDifference:
    """``a`` minus ``b`` over the seeds both ran: the paired t-test's mean, interval and p, and
    its sentence (a detected difference, or how many seeds would detect one)."""
    from scipy import stats

    common = tuple(s for s in a.seeds if s in b.acc)
    n, names = len(common), (a.method, b.method)
    if n < 2:
        return PairedDifference(stage, *names, common, None, None, None, None, None,
                                f"{a.method} and {b.method} share {_seeds(n)}: a confidence interval needs at least "
                                f"2, so replicates are needed (`seeds: N` in the spec, N >= 2)")
    x = np.array([a.acc[s] for s in common])
    y = np.array([b.acc[s] for s in common])
    d = x - y
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd < _ZERO:
        what = (f"{a.method} and {b.method} reach the same accuracy" if abs(mean) < _ZERO else
                f"{a.method} and {b.method} differ by exactly {_points(mean)[0]} points")
        return PairedDifference(stage, *names, common, mean, 0.0, None, None, None,
                                f"{what} on each of the {_seeds(n)}: the observed spread is 0, so there is no "
                                f"confidence interval and no estimate of the seeds needed")
    res = _quiet(lambda: stats.ttest_rel(x, y))
    lo, hi = _interval(res.confidence_interval(CONFIDENCE))
    p = float(res.pvalue)
    if lo > 0 or hi < 0:
        sign = 1 if lo > 0 else -1
        m, l, h = _points(sign * mean, *sorted((sign * lo, sign * hi)))
        verb = "beats" if sign > 0 else "trails"
        sentence = f"{a.method} {verb} {b.method} by {m} points [{l}, {h}] over {_seeds(n)}"
        return PairedDifference(stage, *names, common, mean, sd, (lo, hi), p, None, sentence)
    need = seeds_needed(sd)
    detect = (f"a {DETECT_POINTS:g}-point difference at the observed spread ({100 * POWER:.0f} % power, two-sided "
              f"{100 * (1 - CONFIDENCE):.0f} %)")
    if need is None:
        tail = f"more than {_MAX_SEEDS:,} seeds would be needed to detect {detect}"
        sentence = f"no difference detected between {a.method} and {b.method} at {_seeds(n)}; {tail}"
    elif need <= n:
        sentence = (f"no difference detected between {a.method} and {b.method} at {_seeds(n)}, though {need} seeds "
                    f"would already detect {detect}")
    else:
        sentence = (f"no difference detected between {a.method} and {b.method} at {_seeds(n)}; about {need} seeds "
                    f"would detect {detect}")
    return PairedDifference(stage, *names, common, mean, sd, (lo, hi), p, need, sentence)


def configuration(stage: str, method: str, label: str, params: dict[str, str], acc: dict[str, float],
                  trial_ids: Sequence[str]) -> Configuration:
    """The :class:`Configuration` of final accuracies ``acc`` by seed: their mean, and sd and
    interval from 2 replicates on."""
    from scipy import stats

    x = np.array([acc[s] for s in sorted(acc, key=_seed_order)])
    sd = ci = None
    if len(x) >= 2:
        sd = float(x.std(ddof=1))
        ci = _interval(_quiet(lambda: stats.ttest_1samp(x, 0).confidence_interval(CONFIDENCE)))
    return Configuration(stage, method, label, params, acc, tuple(trial_ids), len(x), float(x.mean()), sd, ci)
