"""The report of a finished (or running) study, read back from MLflow and the study's Optuna storage.

``snn-study report STUDY`` (:func:`write_report`) writes, into ``<study>/report/``,
``report.md``: a table of the trials (the searched dimensions, final and best ``test_acc``,
status: a trial the scheduler stopped reads "stopped early (epoch k of K)"), the paper's rows
for the same dataset (or one line saying the paper has none), the best configuration over its
seeds (with its 95 % confidence interval, where it has replicates) and the best full-budget
trial (each as typed YAML), the comparison of the configurations and of the paper's methods,
which dimension matters (:mod:`study.analysis`, which the report also records on the study's
parent MLflow run), and the plots, with a line for each plot left out and why. The plots are
:mod:`study.figures`' and :mod:`study.optuna_figures`'; the trials are :mod:`study.trial_rows`'.
A warm-started study says under its header from where its search started (:mod:`study.warm_start`).
A study with two objectives also gets its Pareto front (:mod:`study.pareto`): a section with
the Pareto set as a table and the plot of accuracy against the cost; where the caller has not
just recorded the front, the report records it in MLflow (the front's runs tagged, the set on
the parent run). A study whose T grows as a fidelity gets a section on what that saved and
whether its cheap rungs ranked the trials as the target T did (:mod:`study.fidelity_report`).

Then the written files go to the study's parent MLflow run as artifacts under ``report/``
(a warning, not a failure, where the tracking store refuses them).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from snn.config import one_line
from snn.metrics import ENERGY, TEST_ACC
from study import baselines as _baselines
from study import fidelity_report, figures, optuna_figures, rounding, warm_start
from study.analysis import Analysis, analyse, record_analysis
from study.folder import StudyFolder, open_study
from study.markdown import table
from study.pareto import Front, front_of_rows, markdown_lines, record_front
from study.trial_rows import columns, dimensions, read_rows, typed

__all__ = ["REPORT_FILE", "Report", "write_report"]

log = logging.getLogger(__name__)

REPORT_FILE = "report.md"


@dataclass
class Report:
    """Where a report went and what it found.

    Attributes:
        plots: The PNG files written.
        notes: One line per plot left out, and why.
    """

    path: Path
    trials: list[dict[str, Any]]
    baselines: list[_baselines.Baseline]
    best: dict[str, Any] | None  # the best trial that trained its full budget
    analysis: Analysis | None = None
    plots: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    front: Front | None = None  # the Pareto front of a study with two objectives


# -- the tables --------------------------------------------------------------------------------------
def _guard_lines(rows: list[dict[str, Any]], epochs: int) -> list[str]:
    """One sentence on the trials the firing-rate guard stopped and the compute it saved."""
    stopped = [r for r in rows if r.get("stopped")]
    if not stopped:
        return []
    kinds = {k: sum(r["stopped"] == k for r in stopped) for k in ("silent", "saturated")}
    saved, budget = sum(r["saved"] for r in stopped), epochs * len(rows)
    what = ", ".join(f"{n} {k}" for k, n in kinds.items() if n)
    return ["", f"The firing-rate guard stopped {len(stopped)} trial(s) ({what}), saving {saved:.1f} of the study's "
                f"{budget} trial-epochs ({saved / budget:.0%}); they are PRUNED in Optuna, whose sampler now avoids "
                f"such settings."]


def _yaml(params: dict[str, str]) -> str:
    """MLflow's string params as typed YAML (:func:`typed`), every digit kept: the configuration to rerun."""
    return yaml.safe_dump(typed(params), sort_keys=True, default_flow_style=None).rstrip()


def _trial_lines(rows: list[dict[str, Any]], columns: Sequence[str]) -> list[str]:
    return table(["trial", "method", *columns, "epochs", "final test_acc", "best test_acc", "energy_uj (µJ)", "status"],
                 [[r["trial_id"], r["method"], *(rounding.value(r["params"].get(c, ""), c) for c in columns),
                   r["epochs"], _acc(r["final"]), _acc(r["best"]), rounding.metric(r.get("energy"), ENERGY),
                   r["status"]] for r in rows])


def _acc(v: float | None) -> str:
    return rounding.metric(v, TEST_ACC)


def _paper_lines(dataset: str, paper: list[_baselines.Baseline]) -> list[str]:
    if not paper:
        return [f"The paper reports no results on `{dataset}`, so there are no baselines to compare with (it has "
                f"rows for {', '.join(_baselines.DATASETS)})."]
    return table(["table", "method", "architecture", "T", "test_acc", "±"],
                 [[b.table, b.method, b.architecture, b.timesteps, _acc(b.accuracy), _acc(b.std)]
                  for b in paper])


def _best_lines(analysis: Analysis, best: dict[str, Any] | None, rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    if (config := analysis.best) is not None:
        lines += [f"Best configuration ({config.stage} stage, {config.label}): mean test_acc {_acc(config.mean)}, "
                  f"95 % CI [{_acc(config.ci[0])}, {_acc(config.ci[1])}] over {config.n} seeds "
                  f"({', '.join(config.seeds)}; trials {', '.join(config.trial_ids)}).", "",
                  "```yaml", _yaml(config.params), "```", ""]
    if best:
        lines += [f"Best single trial among those that trained their full budget: `{best['trial_id']}` reached "
                  f"test_acc {_acc(best['final'])} (main branch, as at inference).",
                  "", "```yaml", _yaml(best["params"]), "```"]
    elif rows:
        lines.append("No trial has trained its full budget yet (stopped early, failed or still running).")
    else:
        lines.append("No trial has reported a test accuracy yet.")
    return lines


# -- the report -----------------------------------------------------------------------------------
def _analysis(folder: StudyFolder) -> Analysis:
    """The study's analysis, recorded on its parent run; only computed where that run cannot take it."""
    try:
        return record_analysis(folder)
    except MlflowException as e:
        log.warning("report: the analysis could not be recorded on the parent run %s (%s); it is in the report only",
                    folder.parent_run_id, one_line(e))
        return analyse(folder)


def _plots(client, folder: StudyFolder, rows: list[dict[str, Any]], analysis: Analysis,
           out: Path) -> tuple[list[Path], list[str]]:
    """Every plot of the report (:mod:`study.figures`, :mod:`study.optuna_figures`), and a line for
    each one left out."""
    spec = folder.spec
    dims = dimensions(spec, rows)
    ours = [figures.save(figures.dimension_figure(rows, dims), out, figures.DIMENSIONS_PLOT_FILE),
            figures.save(figures.curves_figure(rows), out, figures.CURVES_PLOT_FILE),
            figures.save(figures.importance_figure(analysis.importance), out, figures.IMPORTANCE_PLOT_FILE),
            figures.save(figures.replicates_figure(analysis), out, figures.REPLICATES_PLOT_FILE)]
    notes = []
    if not figures.drawable(rows):
        notes.append("No trial has an accuracy yet: no accuracy per dimension, no learning curves.")
    elif not dims:
        notes.append("No dimension was searched or varies between the trials: no accuracy per dimension.")
    if not any(c.n >= 2 for c in analysis.configurations):
        notes.append("No configuration ran with 2 or more seeds: no forest plot of replicates (`seeds: N` in the "
                     "spec, N >= 2).")
    optuna_files, optuna_notes = optuna_figures.optuna_plots(folder, analysis.importance, out)
    files = [p for p in (*ours, *optuna_files, figures.lambda_plot(client, rows, spec, out)) if p is not None]
    return files, notes + optuna_notes


def _front(client, folder: StudyFolder, rows: list[dict[str, Any]]) -> Front | None:
    """A study with two objectives: its Pareto front from its trial runs, recorded on them and on
    the parent run (a warning where the store refuses: the report shows it all the same)."""
    if len(folder.spec.objectives()) < 2:
        return None
    front = front_of_rows(client, rows, folder.spec)
    try:
        return record_front(folder, front)
    except MlflowException as e:
        log.warning("report: the Pareto front could not be recorded in MLflow (%s); it is in the report only",
                    one_line(e))
    return front


def _front_lines(front: Front | None, spec, plot: Path | None) -> list[str]:
    """The report's section on the Pareto front, with its plot; nothing for one objective."""
    if front is None:
        return []
    return (["", "## Pareto front", ""] + markdown_lines(front, spec)
            + ([f"\n![{plot.stem}]({plot.name})"] if plot is not None else []))


def _clear(out: Path) -> None:
    """Remove the files an earlier report wrote here (a plot it no longer draws must not stay)."""
    for name in (REPORT_FILE, *figures.PLOT_FILES, *optuna_figures.PLOT_FILES):
        (out / name).unlink(missing_ok=True)


def _log_report(folder: StudyFolder, files: Sequence[Path]) -> None:
    """The report's files as artifacts under ``report/`` of the study's parent run; a warning where refused."""
    try:
        client = MlflowClient(tracking_uri=folder.tracking_uri)
        for f in files:
            client.log_artifact(folder.parent_run_id, str(f), artifact_path="report")
    except Exception as e:  # the store is down or refuses the run: the report on disk stands
        log.warning("report: the report could not be logged on the parent run %s (%s: %s); it is in %s",
                    folder.parent_run_id, type(e).__name__, one_line(e), files[0].parent)


def write_report(study_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 analysis: Analysis | None = None, front: Front | None = None) -> Report:
    """Write the report of the study in ``study_dir`` (see the module docstring) and log it on
    the study's parent MLflow run.

    ``analysis``: the study's :func:`study.analysis.record_analysis`, where the caller has just
    made it (the end of a study); else it is made here. ``front``: likewise, the Pareto front
    of a study with two objectives, where the caller has just recorded it.

    Raises:
        StudyError: ``study_dir`` holds no study.
    """
    folder = open_study(study_dir)
    spec = folder.spec
    client = MlflowClient(tracking_uri=folder.tracking_uri)
    exp = client.get_experiment_by_name(spec.experiment)
    rows = read_rows(client, exp.experiment_id, spec.name) if exp is not None else []
    out = Path(out_dir) if out_dir else folder.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    _clear(out)
    analysis = analysis if analysis is not None else _analysis(folder)
    pngs, notes = _plots(client, folder, rows, analysis, out)
    front = front if front is not None else _front(client, folder, rows)
    front_png = (figures.save(figures.pareto_figure(front), out, figures.PARETO_PLOT_FILE)
                 if front is not None else None)
    paper = list(_baselines.rows(spec.dataset_name))
    full = [r for r in rows if r["run_id"] in analysis.run_ids and r["final"] is not None]
    best = full[0] if full else None  # rows are sorted by final test_acc

    shown = columns(spec.search.dims)
    lines = [f"# Study `{spec.name}`", "",
             f"Dataset `{spec.dataset_name}`, architecture `{spec.arch}`, T = {spec.timesteps}, "
             f"search preset `{spec.search.preset}`, {len(rows)} trial(s). MLflow experiment "
             f"`{spec.experiment}` at `{folder.tracking_uri}`."]
    lines += warm_start.report_lines(client, folder)  # the earlier studies' trials Optuna started from
    lines += ["", "## Trials", ""]
    lines += _trial_lines(rows, shown) + _guard_lines(rows, spec.train.epochs)
    lines += fidelity_report.section(client, exp.experiment_id if exp is not None else None, spec)
    lines += _front_lines(front, spec, front_png)
    lines += ["", "## The paper's results on this dataset", ""] + _paper_lines(spec.dataset_name, paper)
    lines += ["", "## Best trial", ""] + _best_lines(analysis, best, rows)
    lines += [""] + analysis.markdown(level=2).rstrip("\n").split("\n")
    lines += ["", "## Plots"] + [f"\n![{p.stem}]({p.name})" for p in pngs]
    lines += ([""] + [f"* {n}" for n in notes]) if notes else []
    (out / REPORT_FILE).write_text("\n".join(lines) + "\n")
    pngs += [front_png] if front_png is not None else []
    _log_report(folder, [out / REPORT_FILE, *pngs])
    return Report(out, rows, paper, best, analysis, pngs, notes, front)
