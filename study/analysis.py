"""The analysis of a study: its configurations compared with confidence, and which dimension matters.

Read back from MLflow and the study's Optuna storage:

* **Comparisons.** Only trial runs that ran their full budget count (FINISHED, not stopped
  early by the scheduler, last epoch at the ``epochs`` param, a finite final value). Runs with the same
  params but ``seed`` are replicates of one *configuration*; each stage (``search``,
  ``confirm``) is analysed on its own, and the confirm stage is the study's answer when it
  has runs. A configuration with at least 2 seeds gets its mean final ``test_acc``, sd and a
  95 % Student-t confidence interval; the paper's methods (Table 1: ``evolutionary``,
  ``shortcut``, ``vanilla``) are compared pairwise on the seeds both ran (a paired t-test),
  with one plain sentence per pair: a detected difference, or how many seeds would detect a
  1-point difference at the observed spread. The statistics are :mod:`study.replicates`'.
* **Which dimension matters.** Optuna's own hyperparameter importances over the searched
  dimensions (fANOVA, and PED-ANOVA), on the study's COMPLETE trials (:mod:`study.importance`).

This module reads the runs into configurations, pairs the paper's methods, and puts the result
into words and tables; :func:`record_analysis` writes it to the study's parent MLflow run:
metrics (see :meth:`Analysis.metrics`) and the artifacts ``comparison.md`` and ``comparison.csv``.

Accuracies are fractions, as MLflow's ``test_acc``; sentences speak of *points*
(percentage points of accuracy).
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from mlflow import MlflowClient

from snn.metrics import TEST_ACC, ran_full_budget
from study import rounding
from study.folder import CONFIRM, SEARCH, StudyFolder
from study.importance import Importance, importances
from study.markdown import table
from study.replicates import CONFIDENCE, Configuration, PairedDifference, configuration, paired_difference
from study.tracking import newest_per_epoch, trial_runs_filter

__all__ = ["COMPARISON_CSV", "COMPARISON_MD", "PAIRS", "Analysis", "analyse", "record_analysis"]

PAIRS: tuple[tuple[str, str], ...] = (("evolutionary", "vanilla"), ("evolutionary", "shortcut"),
                                      ("shortcut", "vanilla"))
"""The paired comparisons of the paper's methods (Table 1): ``a`` minus ``b``."""
COMPARISON_MD = "comparison.md"
COMPARISON_CSV = "comparison.csv"


# -- the result ------------------------------------------------------------------------------------
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
        lines += ["", f"{h} Which dimension matters", ""] + self.importance.markdown_lines()
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
            lines += [""] + table(
                ["configuration", "method", "n", f"mean {TEST_ACC}", "sd", header, "seeds", "trials"],
                [[c.label, c.method, c.n, _acc(c.mean), _acc(c.sd),
                  "" if c.ci is None else f"[{_acc(c.ci[0])}, {_acc(c.ci[1])}]", ", ".join(c.seeds),
                  ", ".join(c.trial_ids)] for c in configs])
            single = sum(c.n < 2 for c in configs)
            if single:
                lines += ["", f"{single} of {len(configs)} configuration(s) ran with a single seed: a confidence "
                              f"interval needs replicates (`seeds: N` in the spec, N >= 2)."]
            diffs = [d for d in self.differences if d.stage == stage]
            if diffs:
                lines += [""] + table(
                    ["difference", "paired seeds", "mean (points)", f"{header} (points)", "p"],
                    [[f"{d.a} − {d.b}", d.n, "" if d.mean is None else f"{100 * d.mean:+.2f}",
                      "" if d.ci is None else f"[{100 * d.ci[0]:+.2f}, {100 * d.ci[1]:+.2f}]",
                      "" if d.p is None else f"{d.p:.3g}"] for d in diffs])
                lines += [""] + [f"* {d.sentence}." for d in diffs]
        return lines


# -- the study's runs, into configurations ---------------------------------------------------------
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


def _full_budget_runs(folder: StudyFolder) -> tuple[list[_Run], dict[str, int]]:
    """The study's trial runs that ran their full budget, and how many were left out why.

    A run's final value is the newest ``test_acc`` of its last epoch
    (:func:`~study.tracking.newest_per_epoch`: after PBT's exploit, the donor's training logged
    again in place of the trial's own); a run whose final value is NaN has none to compare.
    """
    client = MlflowClient(tracking_uri=folder.tracking_uri)
    exp = client.get_experiment_by_name(folder.spec.experiment)
    if exp is None:
        return [], {}
    runs = client.search_runs([exp.experiment_id], max_results=10000,
                              filter_string=trial_runs_filter(folder.spec.name))
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
        history = newest_per_epoch(client.get_metric_history(r.info.run_id, TEST_ACC))
        last = max(history, default=None)
        if not ran_full_budget(last, epochs):
            left_out["short of its budget"] += 1
            continue
        final = history[last].value
        if not math.isfinite(final):
            left_out["without a finite final test_acc"] += 1
            continue
        seed = params.pop("seed", None)
        kept.append(_Run(r.info.run_id, tags.get("trial_id", r.info.run_id[:8]), tags.get("stage", SEARCH),
                         tags.get("method", "searched"), seed if seed is not None else r.info.run_id, params,
                         float(final), r.info.start_time or 0))
    return kept, dict(left_out)


def _labels(keys: list[tuple[tuple[str, str], ...]], methods: list[str]) -> list[str]:
    """Short names of a stage's configurations: a paper method's name where it is the only one of its
    method, else the params that tell the configurations apart, their numbers rounded
    (:func:`study.rounding.label`) to as few significant digits as still tell them apart."""
    varying = sorted({k for key in keys for k, _ in key
                      if len({dict(other).get(k) for other in keys}) > 1})
    counts = Counter(methods)
    named = [method != "searched" and counts[method] == 1 for method in methods]
    for digits in range(rounding.SIGNIFICANT, 18):  # 17 significant digits tell any two floats apart
        shown = [rounding.label(dict(key), varying, digits=digits) for key in keys]
        texts = [s for s, n in zip(shown, named) if not n and s]
        if len(set(texts)) == len(texts):
            break
    return [method if n else (s or method) for s, method, n in zip(shown, methods, named)]


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
            here.append(configuration(stage, method, label, dict(key), acc,
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
            diffs.append(paired_difference(stage, of_method[a][0], of_method[b][0]))
    return (stages[0] if stages else None), configs, diffs


def _acc(v: float | None) -> str:
    """An accuracy (or its sd) in the comparison's tables."""
    return rounding.metric(v, TEST_ACC)


def _counts_sentence(kept: int, left_out: Mapping[str, int]) -> str:
    out = f"{kept} trial run(s) trained their full budget and count here"
    if left_out:
        out += "; left out: " + ", ".join(f"{n} {why}" for why, n in sorted(left_out.items()))
    return out + "."


# -- the entry points ------------------------------------------------------------------------------
def analyse(folder: StudyFolder) -> Analysis:
    """Compare the study's configurations and rank its dimensions; record nothing.

    Raises:
        Exception: Whatever the tracking store raised (it is down).
    """
    runs, left_out = _full_budget_runs(folder)
    stage, configs, diffs = _compare(runs)
    return Analysis(stage, tuple(configs), tuple(diffs), importances(folder), frozenset(r.run_id for r in runs),
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
    client.log_batch(folder.parent_run_id, metrics=metrics, tags=tags)  # in batches of MLflow's limits
    client.log_text(folder.parent_run_id, f"# Study `{folder.spec.name}`: comparison\n\n" + analysis.markdown(level=2),
                    COMPARISON_MD)
    client.log_text(folder.parent_run_id, analysis.csv(), COMPARISON_CSV)
    return analysis
