"""What a study does once Ray Tune has run it: tell a finished study from an interrupted one, then
record the finished study's answer.

:func:`check_finished` reads Tune's results: a run that Tune ended early (Ctrl-C, SIGINT,
``snn-study stop``) leaves trials that had not ended, or fewer trials than the study asked
for; it raises :class:`StudyInterrupted`, which says how far the study got and
how to resume it. :func:`finish_study` then records a finished study's answer: its best
trial (among those that trained their full budget), or for a study with two objectives its
Pareto front (:mod:`study.pareto`: the front's runs tagged in MLflow, the set on the parent
run) and the front's most accurate trial as its best, the comparison of its configurations
(:mod:`study.analysis`), its best model registered in MLflow, the parent run's note and the
report (:mod:`study.report`), and returns a :class:`StudyResult`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snn.config import one_line
from snn.metrics import DIVERGED, EPOCH, STOPPED, TEST_ACC, ran_full_budget
from study import baselines as _baselines
from study.analysis import Analysis, record_analysis
from study.folder import SEARCH, StudyError, StudyFolder
from study.pareto import Front, front_of_results, record_front
from study.report import write_report
from study.tracking import RegisteredModel, finish_parent_run, register_best_model, trial_ended

__all__ = ["StudyInterrupted", "StudyResult", "check_finished", "finish_study", "full_budget"]

log = logging.getLogger(__name__)

INTERRUPTED_EXIT_CODE = 130  # the shell's code for a process ended by SIGINT (128 + 2)


class StudyInterrupted(StudyError):
    """Ray Tune ended the study before its trials did (on SIGINT); every finished epoch is kept,
    and ``snn-study resume`` continues it. Exit code 130.

    Attributes:
        finished: Trials that ended (trained their budget, were stopped early by the
            scheduler, or errored).
        total: Trials the stage asked for.
    """

    def __init__(self, message: str, *, finished: int, total: int) -> None:
        super().__init__(message, exit_code=INTERRUPTED_EXIT_CODE)
        self.finished, self.total = finished, total


@dataclass
class StudyResult:
    """What a finished study returns: where it lives and its best trial (the most accurate of its
    Pareto front, for a study with two objectives)."""

    name: str
    path: Path
    experiment: str
    tracking_uri: str
    parent_run_id: str
    trials: int
    errored: int
    best: dict[str, Any] | None
    recovered: int = 0  # trials that failed, were retried and ended well
    stopped: int = 0  # trials the scheduler stopped before their full budget (PRUNED in Optuna)
    guarded: int = 0  # trials the firing-rate guard stopped: silent or saturated networks (PRUNED too)
    confirmed: int = 0  # trials of the confirm stage
    answer: list[str] = field(default_factory=list)  # the best replicated configuration, the paired differences
    model: RegisteredModel | None = None  # the best model, registered under the study's name
    front: Front | None = None  # the Pareto front of a study with two objectives


def check_finished(folder: StudyFolder, results, total: int, stage: str = SEARCH) -> None:
    """Raise :class:`StudyInterrupted` where Tune's run of a stage ended before its trials did.

    On SIGINT Tune saves its state and returns its results like a finished run's: the trials
    that were running read TERMINATED, a trial waiting to start PENDING, one paused by PBT
    PAUSED, and trials not yet asked for are missing. A trial ended if it errored, or if its
    last result says so (:func:`study.tracking.trial_ended`: Tune's ``done`` flag, its
    budget trained, a divergence, the firing-rate guard). The study's parent run in
    MLflow is closed as KILLED (``resume`` opens it again); the trials' runs were synced by
    the tracker at the end of Tune's run, those of the trials that had not ended left open.

    Args:
        folder: The study.
        results: Tune's :class:`~ray.tune.ResultGrid` of the stage.
        total: Trials the stage asked for (Tune's ``num_samples``).
        stage: The stage whose results these are.
    """
    epochs = folder.spec.train.epochs
    finished = results.num_errors + sum(1 for r in results if r.error is None and trial_ended(r.metrics or {}, epochs))
    total = max(total, len(results))
    if finished >= total:
        return
    try:
        finish_parent_run(folder.tracking_uri, folder.parent_run_id, None, status="KILLED")
    except Exception as e:  # the store is down: resume reopens the run all the same
        log.warning("MLflow: could not close the parent run %s (%s: %s)", folder.parent_run_id, type(e).__name__,
                    one_line(e))
    where = "" if stage == SEARCH else f" in its {stage} stage"
    raise StudyInterrupted(f"study {folder.spec.name} stopped early{where}: {finished} of {total} trial(s) finished; "
                           f"every finished epoch is kept, in its folder and in MLflow; resume it with "
                           f"'snn-study resume {folder.path}'", finished=finished, total=total)


def full_budget(r, epochs: int) -> bool:
    """A trial of Tune's results that ran its full budget (:func:`snn.metrics.ran_full_budget`)
    without an error, and ended with a finite ``test_acc``."""
    acc = (r.metrics or {}).get(TEST_ACC)
    return (r.error is None and isinstance(acc, (int, float)) and math.isfinite(acc)
            and ran_full_budget((r.metrics or {}).get(EPOCH), epochs))


def _best(results, epochs: int, front: Front | None = None) -> dict[str, Any] | None:
    """The best trial among those that trained their whole budget (an early-stopped trial's
    accuracy is from fewer epochs, not comparable); with a Pareto front, its most accurate trial."""
    full = [r for r in results if full_budget(r, epochs)]
    if front is not None:
        top = front.most_accurate
        full = [r for r in full if top is not None and r.metrics.get("trial_id") == top.trial_id]
    if not full:
        return None
    r = max(full, key=lambda r: r.metrics[TEST_ACC])
    return {"trial_id": r.metrics.get("trial_id", ""), "config": dict(r.config), "path": r.path,
            "metrics": {k: v for k, v in r.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}}


def _analysis(folder: StudyFolder) -> Analysis | None:
    """The study's analysis, recorded on its parent run (:mod:`study.analysis`); None while the
    store does not answer."""
    try:
        return record_analysis(folder)
    except Exception as e:  # the store is down at the very end: 'snn-study report' computes it later
        log.warning("MLflow: the study's comparison could not be recorded (%s: %s); 'snn-study report %s' "
                    "computes it once the store answers", type(e).__name__, one_line(e), folder.path)
        return None


def _answer(analysis: Analysis | None) -> list[str]:
    """The study's answer: the best replicated configuration with its interval, and the paired
    differences of the paper's methods; empty without replicates."""
    if analysis is None:
        return []
    lines = []
    best = analysis.best
    if best is not None and best.ci is not None:
        lines.append(f"best configuration ({analysis.stage} stage): {best.label}: test_acc {best.mean:.4f} "
                     f"[{best.ci[0]:.4f}, {best.ci[1]:.4f}] (95 % CI) over {best.n} seeds")
    lines += [d.sentence for d in analysis.differences if d.stage == analysis.stage]
    return lines


def _front(folder: StudyFolder, results) -> Front | None:
    """A study with two objectives: its Pareto front, recorded in MLflow (a warning where the
    store does not answer: 'snn-study report' records it later); None for one objective."""
    spec = folder.spec
    if len(spec.objectives()) < 2:
        return None
    front = front_of_results([r for r in results if full_budget(r, spec.train.epochs)], spec)
    try:
        return record_front(folder, front)
    except Exception as e:  # the store is down at the very end: the report records it later
        log.warning("MLflow: the Pareto front could not be recorded (%s: %s); 'snn-study report %s' records it "
                    "once the store answers", type(e).__name__, one_line(e), folder.path)
    return front


def _register(folder: StudyFolder, analysis: Analysis | None, best: dict[str, Any] | None,
              front: Front | None = None) -> RegisteredModel | None:
    """Register the model of the best configuration's best replicate, else of the best trial
    (the most accurate of the Pareto front)."""
    if analysis is not None and analysis.best is not None:
        trial_ids, why = analysis.best.trial_ids, (f"the best of the {analysis.best.n} replicates of the best "
                                                   f"configuration ({analysis.stage} stage): {analysis.best.label}")
    elif best is not None:
        trial_ids, why = [best["trial_id"]], ("the most accurate trial of the Pareto front" if front is not None
                                              else "the best trial that trained its full budget")
    else:
        return None
    try:
        return register_best_model(folder, trial_ids, why)
    except Exception as e:  # the store is down, or has no model registry (a folder store)
        log.warning("MLflow: the best model could not be registered (%s: %s)", type(e).__name__, one_line(e))
        return None


def _note(folder: StudyFolder, results, answer: list[str], best: dict[str, Any] | None,
          registered: RegisteredModel | None, front: Front | None = None) -> str:
    """The parent run's description: the study's answer in a few lines (markdown): the best
    trial, or the Pareto front (its lines are in ``answer``)."""
    spec = folder.spec
    lines = [f"**{spec.name}**: {len(results)} trial(s) on `{spec.dataset_name}`, {spec.arch}, T={spec.timesteps}, "
             f"search `{spec.search.preset}`."]
    lines += [f"- {line}" for line in answer]
    if best and front is None:
        lines.append(f"- best trial `{best['trial_id']}` (full budget): test_acc "
                     f"{best['metrics'].get(TEST_ACC, float('nan')):.4f}")
    if registered is not None:
        lines.append(f"- its model: `{registered.uri}` (version {registered.version}, trial {registered.trial_id})")
    if not _baselines.rows(spec.dataset_name):
        lines.append(f"- The paper reports no results on `{spec.dataset_name}`: no baselines beside these trials.")
    lines.append("\nComparison, importance and plots: the artifacts `comparison.md` and `report/`.")
    return "\n".join(lines)


def _report(folder: StudyFolder, analysis: Analysis | None, front: Front | None) -> None:
    """Write the study's report, which also puts its plots on the parent run."""
    try:
        write_report(folder.path, analysis=analysis, front=front)
    except Exception as e:  # a plot or the store failed: the study's results stand without it
        log.warning("report: could not be written (%s: %s); run 'snn-study report %s'", type(e).__name__,
                    one_line(e), folder.path)


def finish_study(folder: StudyFolder, results, confirm_results=None) -> StudyResult:
    """Record a finished study's answer (best trial or Pareto front, analysis, best model, note, report).

    Args:
        folder: The study.
        results: Tune's results of the search stage.
        confirm_results: Tune's results of the confirm stage; None without one.
    """
    epochs = folder.spec.train.epochs
    front = _front(folder, results)
    best = _best(results, epochs, front)
    short = [r for r in results if r.error is None and r.metrics and not r.metrics.get(DIVERGED)
             and not ran_full_budget(r.metrics.get(EPOCH), epochs)]
    guarded = sum(1 for r in short if r.metrics.get(STOPPED))
    every = list(results) + list(confirm_results or [])
    errored = sum(1 for r in every if r.error is not None)
    # Tune leaves error.txt in a trial folder at each failure, also when a retry then succeeds
    recovered = sum(1 for r in every if r.error is None and r.path and "://" not in r.path
                    and (Path(r.path) / "error.txt").exists())
    log.info("recording the study's answer: the comparison of its configurations, the best model, the report ...")
    analysis = _analysis(folder)
    answer = _answer(analysis) + (front.lines() if front is not None else [])
    registered = _register(folder, analysis, best, front)
    try:
        finish_parent_run(folder.tracking_uri, folder.parent_run_id, best,
                          note=_note(folder, every, answer, best, registered, front))
    except Exception as e:  # the store is down at the very end: the trials' results are in their folders
        log.warning("MLflow: could not record the best trial on the parent run %s (%s: %s); run 'snn-study sync "
                    "%s' once the store answers", folder.parent_run_id, type(e).__name__, one_line(e), folder.path)
    _report(folder, analysis, front)
    spec = folder.spec
    return StudyResult(spec.name, folder.path, spec.experiment, folder.tracking_uri, folder.parent_run_id,
                       len(results), errored, best, recovered, len(short) - guarded, guarded,
                       len(confirm_results) if confirm_results is not None else 0, answer, registered, front)
