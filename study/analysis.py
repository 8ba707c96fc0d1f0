"""Comparisons with confidence, and which dimension matters: the analysis of a study.

Read back from MLflow and the study's Optuna storage (issue 23, items 2 and 6):

* **Comparisons.** Only trial runs that trained their full budget count (FINISHED, not
  stopped early by the scheduler, last epoch = the ``epochs`` param). Runs with the same
  params but ``seed`` are replicates of one *configuration*; each stage (``search``,
  ``confirm``) is analysed on its own, and the confirm stage is the study's answer when it
  has runs. A configuration with at least 2 seeds gets its mean final ``test_acc``, sd and a
  95 % Student-t confidence interval; the paper's methods (Table 1: ``evolutionary``,
  ``shortcut``, ``vanilla``) are compared pairwise on the seeds both ran (a paired t-test),
  with one plain sentence per pair: a detected difference, or how many seeds would detect a
  1-point difference at the observed spread.
* **Which dimension matters.** Optuna's own hyperparameter importances over the searched
  dimensions (fANOVA, and PED-ANOVA), on the study's COMPLETE trials.

:func:`record_analysis` writes both to the study's parent MLflow run: metrics (see
:meth:`Analysis.metrics`) and the artifacts ``comparison.md`` and ``comparison.csv``.

Accuracies are fractions, as MLflow's ``test_acc``; sentences speak of *points*
(percentage points of accuracy).
"""

from __future__ import annotations

import csv
import io
import math
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from snn.config import HEAD_ONLY
from snn.metrics import TEST_ACC
from study.folder import CONFIRM, SEARCH, StudyFolder

__all__ = ["CONFIDENCE", "COMPARISON_CSV", "COMPARISON_MD", "DETECT_POINTS", "MIN_IMPORTANCE_TRIALS", "PAIRS",
           "POWER", "Analysis", "Configuration", "Importance", "PairedDifference", "analyse", "record_analysis",
           "seeds_needed"]

MIN_IMPORTANCE_TRIALS = 10
"""Fewer COMPLETE trials than this get a sentence instead of importances."""
CONFIDENCE = 0.95  # of every confidence interval
POWER = 0.80  # of the seeds-needed estimate (two-sided test at 1 - CONFIDENCE)
DETECT_POINTS = 1.0  # the difference, in points of accuracy, the seeds-needed estimate is for
PAIRS: tuple[tuple[str, str], ...] = (("evolutionary", "vanilla"), ("evolutionary", "shortcut"),
                                      ("shortcut", "vanilla"))
"""The paired comparisons of the paper's methods (Table 1): ``a`` minus ``b``."""
COMPARISON_MD = "comparison.md"
COMPARISON_CSV = "comparison.csv"
_MAX_SEEDS = 10_000_000  # the seeds-needed search stops here
_ZERO = 1e-12  # an sd below this is no spread at all (float noise of equal accuracies)


# -- results ---------------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class Importance:
    """Hyperparameter importances (normalised to sum 1) of the searched dimensions.

    Attributes:
        complete: COMPLETE trials with a finite objective in the Optuna study.
        pruned, failed: Trials left out as PRUNED and FAIL.
        trials: Trials the fANOVA importances rest on (those with every dimension assessed).
        fanova: ``FanovaImportanceEvaluator(seed=0)``, by dimension; empty without numbers.
        ped_anova: ``PedAnovaImportanceEvaluator()`` over all complete trials (Optuna's
            conditional PED-ANOVA: dimensions missing from some trials included).
        sentence: What the numbers rest on, or why there are none.
        notes: Dimensions left out, evaluators that refused, and why.
    """

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    trials: int = 0
    fanova: dict[str, float] = field(default_factory=dict)
    ped_anova: dict[str, float] = field(default_factory=dict)
    sentence: str = ""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Analysis:
    """Everything :func:`analyse` found.

    Attributes:
        stage: The stage the answer comes from (``confirm`` when it has runs), None without runs.
        configurations: Every stage's configurations, the answer's stage first, each stage's
            best mean first.
        differences: The paired differences of the paper's methods, per stage.
        importance: Which dimension matters.
        run_ids: The MLflow runs that trained their full budget (the only ones counted).
        left_out: Trial runs left out, by reason.
    """

    stage: str | None
    configurations: tuple[Configuration, ...]
    differences: tuple[PairedDifference, ...]
    importance: Importance
    run_ids: frozenset[str]
    left_out: dict[str, int]

    def stages(self) -> list[str]:
        """The stages with runs, the answer's first."""
        return list(dict.fromkeys(c.stage for c in self.configurations))

    @property
    def best(self) -> Configuration | None:
        """The answer stage's configuration with the best mean over at least 2 seeds."""
        replicated = [c for c in self.configurations if c.stage == self.stage and c.n >= 2]
        return max(replicated, key=lambda c: c.mean) if replicated else None

    def method(self, name: str, stage: str | None = None) -> Configuration | None:
        """The one configuration of paper method ``name`` in ``stage`` (default: the answer's)."""
        found = [c for c in self.configurations if c.stage == (stage or self.stage) and c.method == name]
        return found[0] if len(found) == 1 else None

    def metrics(self) -> dict[str, float]:
        """What :func:`record_analysis` logs on the parent run (the answer's stage; finite values).

        * ``importance_<dim>`` (fANOVA), ``ped_anova_<dim>``, ``importance_trials``;
        * ``diff_<a>_minus_<b>`` with ``_ci_low``, ``_ci_high``, ``_p``, ``_n``;
        * ``<method>_test_acc_mean``, ``_sd``, ``_ci_low``, ``_ci_high`` and ``<method>_n``
          for each paper method with one configuration;
        * ``best_config_test_acc_mean``, ``_ci_low``, ``_ci_high``, ``best_config_n``;
        * ``configurations`` (in the answer's stage), ``full_budget_runs``, ``left_out_runs``.
        """
        out: dict[str, float] = {"full_budget_runs": len(self.run_ids), "left_out_runs": sum(self.left_out.values()),
                                 "configurations": sum(c.stage == self.stage for c in self.configurations)}
        imp = self.importance
        if imp.fanova:
            out["importance_trials"] = imp.trials
            out.update({f"importance_{k}": v for k, v in imp.fanova.items()})
        out.update({f"ped_anova_{k}": v for k, v in imp.ped_anova.items()})
        for d in self.differences:
            if d.stage != self.stage:
                continue
            out[f"{d.key}_n"] = d.n
            if d.mean is not None:
                out[d.key] = d.mean
            if d.ci is not None:
                out[f"{d.key}_ci_low"], out[f"{d.key}_ci_high"] = d.ci
            if d.p is not None:
                out[f"{d.key}_p"] = d.p
        summaries = [(m, self.method(m)) for m in dict.fromkeys(a for pair in PAIRS for a in pair)]
        for prefix, c in summaries + [("best_config", self.best)]:
            if c is None:
                continue
            out[f"{prefix}_n"] = c.n
            out[f"{prefix}_{TEST_ACC}_mean"] = c.mean
            if c.sd is not None:
                out[f"{prefix}_{TEST_ACC}_sd"] = c.sd
            if c.ci is not None:
                out[f"{prefix}_{TEST_ACC}_ci_low"], out[f"{prefix}_{TEST_ACC}_ci_high"] = c.ci
        return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(float(v))}

    def markdown(self, level: int = 2) -> str:
        """The sections "Comparison" and "Which dimension matters", headings at ``level``."""
        h = "#" * level
        lines = [f"{h} Comparison", ""] + self._comparison_lines(h + "#")
        lines += ["", f"{h} Which dimension matters", ""] + _importance_lines(self.importance)
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        """The per-configuration table, one row per configuration of every stage."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["stage", "configuration", "method", "n", f"{TEST_ACC}_mean", f"{TEST_ACC}_sd", "ci_low",
                    "ci_high", "seeds", "trials", "params"])
        for c in self.configurations:
            w.writerow([c.stage, c.label, c.method, c.n, repr(c.mean), "" if c.sd is None else repr(c.sd),
                        "" if c.ci is None else repr(c.ci[0]), "" if c.ci is None else repr(c.ci[1]),
                        " ".join(c.seeds), " ".join(c.trial_ids),
                        " ".join(f"{k}={v}" for k, v in sorted(c.params.items()))])
        return buf.getvalue()

    def _comparison_lines(self, h: str) -> list[str]:
        lines = [_counts_sentence(len(self.run_ids), self.left_out)]
        if self.stage is None:
            return lines
        stages = self.stages()
        if self.stage == CONFIRM:
            lines[-1] += (" The answer comes from the confirm stage (the search's best configurations run again "
                          "with new seeds)" + (", the search stage follows it." if len(stages) > 1 else "."))
        else:
            lines[-1] += f" The answer comes from the {self.stage} stage."
        for stage in stages:
            configs = [c for c in self.configurations if c.stage == stage]
            if len(stages) > 1:
                lines += ["", f"{h} {stage.capitalize()} stage"]
            header = f"{100 * CONFIDENCE:.0f} % CI"
            lines += ["", f"| configuration | method | n | mean {TEST_ACC} | sd | {header} | seeds | trials |",
                      "|---|---|---|---|---|---|---|---|"]
            for c in configs:
                ci = "" if c.ci is None else f"[{c.ci[0]:.4f}, {c.ci[1]:.4f}]"
                sd = "" if c.sd is None else f"{c.sd:.4f}"
                lines.append(f"| {c.label} | {c.method} | {c.n} | {c.mean:.4f} | {sd} | {ci} | {', '.join(c.seeds)} "
                             f"| {', '.join(c.trial_ids)} |")
            single = sum(c.n < 2 for c in configs)
            if single:
                lines += ["", f"{single} of {len(configs)} configuration(s) ran with a single seed: a confidence "
                              f"interval needs replicates (`seeds: N` in the spec, N >= 2)."]
            diffs = [d for d in self.differences if d.stage == stage]
            if diffs:
                lines += ["", f"| difference | paired seeds | mean (points) | {header} (points) | p |",
                          "|---|---|---|---|---|"]
                for d in diffs:
                    mean = "" if d.mean is None else f"{100 * d.mean:+.2f}"
                    ci = "" if d.ci is None else f"[{100 * d.ci[0]:+.2f}, {100 * d.ci[1]:+.2f}]"
                    p = "" if d.p is None else f"{d.p:.3g}"
                    lines.append(f"| {d.a} − {d.b} | {d.n} | {mean} | {ci} | {p} |")
                lines += [""] + [f"* {d.sentence}." for d in diffs]
        return lines


# -- statistics ------------------------------------------------------------------------------------
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


def _difference(stage: str, a: Configuration, b: Configuration) -> PairedDifference:
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


def _configuration(stage: str, method: str, label: str, params: dict[str, str], acc: dict[str, float],
                   trial_ids: Sequence[str]) -> Configuration:
    from scipy import stats

    x = np.array([acc[s] for s in sorted(acc, key=_seed_order)])
    sd = ci = None
    if len(x) >= 2:
        sd = float(x.std(ddof=1))
        ci = _interval(_quiet(lambda: stats.ttest_1samp(x, 0).confidence_interval(CONFIDENCE)))
    return Configuration(stage, method, label, params, acc, tuple(trial_ids), len(x), float(x.mean()), sd, ci)


# -- MLflow ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Run:
    run_id: str
    trial_id: str
    stage: str
    method: str
    seed: str
    params: dict[str, str]  # without seed
    final: float
    start: int


def _seed_order(seed: str) -> tuple[int, Any]:
    try:
        return 0, int(seed)
    except ValueError:
        return 1, seed


def _full_budget_runs(folder: StudyFolder) -> tuple[list[_Run], dict[str, int]]:
    """The study's trial runs that trained their full budget, and how many were left out why."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=folder.tracking_uri)
    exp = client.get_experiment_by_name(folder.spec.experiment)
    if exp is None:
        return [], {}
    runs = client.search_runs([exp.experiment_id], max_results=10000,
                              filter_string=f"tags.study = '{folder.spec.name}' and tags.kind = 'trial'")
    kept, left_out = [], Counter()
    for r in runs:
        tags, params = r.data.tags, dict(r.data.params)
        if r.info.status != "FINISHED":
            left_out["not finished"] += 1
            continue
        if tags.get("stopped_early") == "true":
            left_out["stopped early"] += 1
            continue
        try:
            epochs = int(params["epochs"])
        except (KeyError, ValueError):
            left_out["no epochs param"] += 1
            continue
        history = [m for m in client.get_metric_history(r.info.run_id, TEST_ACC) if math.isfinite(m.value)]
        last = max((m.step for m in history), default=None)
        if last != epochs:
            left_out["short of its budget"] += 1
            continue
        final = max((m for m in history if m.step == last), key=lambda m: m.timestamp).value
        seed = params.pop("seed", None)
        kept.append(_Run(r.info.run_id, tags.get("trial_id", r.info.run_id[:8]), tags.get("stage", SEARCH),
                         tags.get("method", "searched"), seed if seed is not None else r.info.run_id, params,
                         float(final), r.info.start_time or 0))
    return kept, dict(left_out)


def _labels(keys: list[tuple[tuple[str, str], ...]], methods: list[str]) -> list[str]:
    """Short names of a stage's configurations: a paper method's name where it is the only one of its
    method, else the params that tell the configurations apart."""
    varying = sorted({k for key in keys for k, _ in key
                      if len({dict(other).get(k) for other in keys}) > 1})
    counts = Counter(methods)
    out = []
    for key, method in zip(keys, methods):
        if method != "searched" and counts[method] == 1:
            out.append(method)
            continue
        params = dict(key)
        shown = " ".join(f"{k}={params[k]}" for k in varying if k in params)
        out.append(shown or method)
    return out


def _compare(runs: list[_Run]) -> tuple[str | None, list[Configuration], list[PairedDifference]]:
    groups: dict[tuple[str, tuple[tuple[str, str], ...]], list[_Run]] = defaultdict(list)
    for r in sorted(runs, key=lambda r: r.start):
        groups[(r.stage, tuple(sorted(r.params.items())))].append(r)
    stages = sorted({s for s, _ in groups}, key=lambda s: (s != CONFIRM, s != SEARCH, s))
    configs, diffs = [], []
    for stage in stages:
        keys = [k for s, k in groups if s == stage]
        methods = [groups[(stage, k)][0].method for k in keys]
        here = []
        for key, method, label in zip(keys, methods, _labels(keys, methods)):
            by_seed: dict[str, list[float]] = defaultdict(list)
            for r in groups[(stage, key)]:
                by_seed[r.seed].append(r.final)
            acc = {s: float(np.mean(v)) for s, v in by_seed.items()}
            here.append(_configuration(stage, method, label, dict(key), acc,
                                       [r.trial_id for r in groups[(stage, key)]]))
        here.sort(key=lambda c: (c.n < 2, -c.mean))
        configs += here
        of_method = {m: [c for c in here if c.method == m] for m in dict.fromkeys(x for p in PAIRS for x in p)}
        for a, b in PAIRS:
            if not of_method[a] or not of_method[b]:
                continue
            several = [m for m in (a, b) if len(of_method[m]) > 1]
            if several:
                diffs.append(PairedDifference(
                    stage, a, b, (), None, None, None, None, None,
                    f"{a} − {b} is not compared: "
                    + " and ".join(f"{m} has {len(of_method[m])} configurations" for m in several)
                    + f" in the {stage} stage, and a paired comparison takes one per method (as the `ablation` "
                      f"preset runs them)"))
                continue
            diffs.append(_difference(stage, of_method[a][0], of_method[b][0]))
    return (stages[0] if stages else None), configs, diffs


def _counts_sentence(kept: int, left_out: Mapping[str, int]) -> str:
    out = f"{kept} trial run(s) trained their full budget and count here"
    if left_out:
        out += "; left out: " + ", ".join(f"{n} {why}" for why, n in sorted(left_out.items()))
    return out + "."


# -- Optuna ----------------------------------------------------------------------------------------
def _importance(folder: StudyFolder) -> Importance:
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator, get_param_importances
    from optuna.trial import TrialState

    where = folder.optuna_shown  # its path, or its URL with no password: the analysis goes to MLflow
    try:
        study = folder.optuna_study()
    except FileNotFoundError:
        return Importance(sentence=f"No Optuna storage at `{where}`: no importances.")
    except KeyError:
        return Importance(sentence=f"The Optuna storage `{where}` holds no study `{folder.spec.name}`: no importances.")
    except Exception as e:  # a damaged or foreign file, a server that does not answer: the rest of the analysis stands
        return Importance(sentence=f"The Optuna storage `{where}` cannot be read ({type(e).__name__}: "
                                   f"{' '.join(str(e).split())[:200]}): no importances.")
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values and math.isfinite(t.values[0])]
    base = dict(complete=len(complete), pruned=states[TrialState.PRUNED], failed=states[TrialState.FAIL])
    aside = " and ".join(f"{n} {w}" for n, w in ((base["pruned"], "pruned"), (base["failed"], "failed")) if n)
    aside = f" ({aside} left out)" if aside else ""
    dims = sorted({d for t in complete for d in t.distributions})
    if complete and not dims:
        return Importance(**base, sentence=f"The search preset `{folder.spec.search.preset}` searches no dimension: "
                                           f"there is nothing to rank.")
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        return Importance(**base, sentence=f"Importance needs at least {MIN_IMPORTANCE_TRIALS} complete trials; this "
                                           f"study has {len(complete)}{aside}.")
    if len({t.values[0] for t in complete}) == 1:
        return Importance(**base, sentence=f"Every one of the {len(complete)} complete trials reached the same "
                                           f"objective value: no dimension made a difference.")
    # fANOVA assesses a dimension with one range, on the trials that have every dimension it assesses
    notes = []
    dynamic = [d for d in dims if len({t.distributions[d] for t in complete if d in t.distributions}) > 1]
    for d in dynamic:
        notes.append(f"`{d}` is left out of fANOVA: its range differs between trials (it depends on another "
                     f"dimension), and fANOVA needs one range per dimension (Optuna refuses a dynamic search space "
                     f"there); PED-ANOVA assesses it")
    kept = [d for d in dims if d not in dynamic]
    used = [t for t in complete if all(d in t.params for d in kept)]
    numbers = {t.number for t in used}
    missing = {d for t in complete if t.number not in numbers for d in kept if d not in t.params}
    subset = (" with shortcut branches" if missing <= set(HEAD_ONLY) else " with every searched dimension") \
        if len(used) < len(complete) else ""
    multi = len(study.directions) > 1
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    fanova, ped = {}, {}
    if len(used) < MIN_IMPORTANCE_TRIALS:
        notes.append(f"fANOVA needs at least {MIN_IMPORTANCE_TRIALS} complete trials{subset}; this study has "
                     f"{len(used)} (of {len(complete)} complete)")
    elif kept:
        try:
            fanova = _quiet(lambda: get_param_importances(
                study, evaluator=FanovaImportanceEvaluator(seed=0), params=kept,
                target=(lambda t: t.values[0]) if multi else None))
        except (ValueError, RuntimeError, ImportError) as e:
            notes.append(f"fANOVA refused: {' '.join(str(e).split())[:300]}")
    try:
        ped = _quiet(lambda: get_param_importances(
            study, evaluator=PedAnovaImportanceEvaluator(),
            target=(lambda t: -t.values[0] if maximize else t.values[0]) if multi else None))
    except (ValueError, RuntimeError, ImportError) as e:
        notes.append(f"PED-ANOVA refused: {' '.join(str(e).split())[:300]}")
    parts = [f"fANOVA over {len(used)} trials{subset}" if subset else f"fANOVA over all {len(used)}"] if fanova else []
    if ped:
        parts.append(f"PED-ANOVA over all {len(complete)}, conditional dimensions included")
    objective = " (of test_acc, the first objective)" if multi else ""
    sentence = (f"Importances{objective} rest on the study's {len(complete)} complete trials{aside}: "
                + ("; ".join(parts) if parts else "none could be computed") + ".")
    return Importance(**base, trials=len(used) if fanova else 0, fanova={k: float(v) for k, v in fanova.items()},
                      ped_anova={k: float(v) for k, v in ped.items()}, sentence=sentence,
                      notes=tuple(notes))


def _importance_lines(imp: Importance) -> list[str]:
    lines = [imp.sentence]
    if imp.fanova or imp.ped_anova:
        dims = sorted(set(imp.fanova) | set(imp.ped_anova), key=lambda d: -imp.fanova.get(d, imp.ped_anova.get(d, 0)))
        lines += ["", "| dimension | fANOVA | PED-ANOVA |", "|---|---|---|"]
        for d in dims:
            f, p = imp.fanova.get(d), imp.ped_anova.get(d)
            lines.append(f"| {d} | {'' if f is None else f'{f:.3f}'} | {'' if p is None else f'{p:.3f}'} |")
    if imp.notes:
        lines += [""] + [f"* {n}." for n in imp.notes]
    return lines


# -- the entry points ------------------------------------------------------------------------------
def analyse(folder: StudyFolder) -> Analysis:
    """Compare the study's configurations and rank its dimensions; record nothing.

    Raises:
        Exception: Whatever the tracking store raised (it is down).
    """
    runs, left_out = _full_budget_runs(folder)
    stage, configs, diffs = _compare(runs)
    return Analysis(stage, tuple(configs), tuple(diffs), _importance(folder), frozenset(r.run_id for r in runs),
                    left_out)


def record_analysis(folder: StudyFolder) -> Analysis:
    """:func:`analyse` the study and write the result to its parent MLflow run.

    Metrics :meth:`Analysis.metrics` (step 0), the tag ``analysis_stage``, and the artifacts
    :data:`COMPARISON_MD` and :data:`COMPARISON_CSV`. Idempotent: run again, it logs the
    values again (the latest win) and replaces the artifacts. The parent run may be
    finished already; it stays as it is.

    Raises:
        Exception: Whatever the tracking store raised (it is down, or the run is gone).
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    analysis = analyse(folder)
    client = MlflowClient(tracking_uri=folder.tracking_uri)
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in sorted(analysis.metrics().items())]
    tags = [RunTag("analysis_stage", analysis.stage or "none")]
    for i in range(0, max(len(metrics), 1), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(folder.parent_run_id, metrics=metrics[i:i + 1000], tags=tags if i == 0 else [])
    with tempfile.TemporaryDirectory() as tmp:
        md = Path(tmp) / COMPARISON_MD
        md.write_text(f"# Study `{folder.spec.name}`: comparison\n\n" + analysis.markdown(level=2))
        (Path(tmp) / COMPARISON_CSV).write_text(analysis.csv())
        for name in (COMPARISON_MD, COMPARISON_CSV):
            client.log_artifact(folder.parent_run_id, str(Path(tmp) / name))
    return analysis
