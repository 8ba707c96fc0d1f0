"""Reports of a finished (or running) study, read back from MLflow.

``snn-study report STUDY`` writes, into ``<study>/report/``:

* ``report.md``: a table of the trials (the searched dimensions, final and best
  ``test_acc``, status: a trial the scheduler stopped reads "stopped early (epoch k of K)"),
  the paper's rows for the same dataset (or a sentence saying the paper has none), the best
  configuration over its seeds (with its 95 % confidence interval, where it has replicates)
  and the best full-budget trial, the comparison of the configurations and of the paper's
  methods, and which dimension matters (:mod:`study.analysis`, which the report also
  records on the study's parent MLflow run);
* ``acc_vs_lambda0.png``: final test accuracy against λ₀, coloured by schedule shape;
* ``acc_curves.png``: test accuracy per epoch of every trial;
* ``importance.png``: the importance of each searched dimension, where there are numbers.
* ``lambda_trajectories.png`` (``scheduler: pbt`` or ``pb2``): the learned λ per epoch of the
  best trials beside the paper's linear decay from λ₀ = 0.25.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from matplotlib import colormaps
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from snn.diagnostics import grad_histogram
from snn.config import METHODS, PAPER_METHOD
from snn.metrics import LAMBDA, TEST_ACC
from study import baselines as _baselines
from study.analysis import Analysis, Importance, analyse, record_analysis
from study.folder import open_study
from study.spec import POPULATION

__all__ = ["GRAD_PLOT_FILE", "Report", "metric_per_epoch", "plot_grad_histogram", "write_report"]

log = logging.getLogger(__name__)

_COLUMNS = ("lambda0", "schedule", "branches", "surrogate", "surrogate_param")
GRAD_PLOT_FILE = "first_layer_grad_hist.png"  # a trial's artifact: plot_grad_histogram of its last gradient


def _figure(figsize: tuple[float, float]) -> Figure:
    """A matplotlib Figure outside pyplot: no global figure list to close, no GUI backend to pick."""
    return Figure(figsize=figsize)


def plot_grad_histogram(grad, path: str | os.PathLike, *, title: str = "", bins: int = 50) -> Path:
    """Histogram of the first layer's gradient values (the paper's Fig. 2)."""
    counts, edges = grad_histogram(grad, bins=bins)
    # One filled step patch and fixed margins: drawn for every trial that ends.
    fig = _figure((5, 3.2))
    ax = fig.add_axes((0.14, 0.16, 0.82, 0.74))
    ax.stairs(counts, edges, fill=True, color="#4477aa")
    ax.set_xlabel("gradient of first-layer weights")
    ax.set_ylabel("count")
    ax.set_title(title or "first-layer gradients", fontsize=9)
    fig.savefig(path, dpi=100)
    return Path(path)


@dataclass
class Report:
    """Where a report went and what it found."""

    path: Path
    trials: list[dict[str, Any]]
    baselines: list[_baselines.Baseline]
    best: dict[str, Any] | None  # the best trial that trained its full budget
    analysis: Analysis | None = None


def _trial_rows(client, experiment_id: str, study: str) -> list[dict[str, Any]]:
    runs = client.search_runs([experiment_id], filter_string=f"tags.study = '{study}' and tags.kind = 'trial'",
                              max_results=10000)
    rows = []
    for r in runs:
        curve = metric_per_epoch(client, r.info.run_id, TEST_ACC)
        tags = r.data.tags
        status = r.info.status
        saved = 0.0
        if tags.get("stopped_early") == "true":
            last = tags.get("last_epoch") or (str(curve[-1][0]) if curve else "?")
            status = f"stopped early (epoch {last} of {r.data.params.get('epochs', '?')})"
        elif tags.get("stopped") in ("silent", "saturated"):  # the firing-rate guard (snn.guard)
            done, budget = float(tags.get("epochs_done", 0)), float(r.data.params.get("epochs", 0))
            saved = max(0.0, budget - done)
            status = f"stopped: {tags['stopped']} {tags.get('stopped_stage', '')} after {done:.2g} of {budget:g} epochs"
        row = {"trial_id": tags.get("trial_id", r.info.run_id[:8]), "method": tags.get("method", ""),
               "status": status, "run_id": r.info.run_id, "curve": curve,
               "final": curve[-1][1] if curve else None, "best": max(v for _, v in curve) if curve else None,
               "epochs": len(curve), "params": dict(r.data.params), "stopped": tags.get("stopped"), "saved": saved}
        for c in _COLUMNS:
            row[c] = r.data.params.get(c, "")
        rows.append(row)
    rows.sort(key=lambda r: (r["final"] is None, -(r["final"] or 0)))
    return rows


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


def metric_per_epoch(client, run_id: str, key: str) -> list[tuple[int, float]]:
    """A metric's (epoch, value) pairs in order, the newest value of an epoch logged again (PBT's exploit)."""
    newest = {m.step: m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)}
    return sorted(newest.items())


LAMBDA_PLOT_FILE = "lambda_trajectories.png"
_TRAJECTORIES = 5  # the best trials whose learned λ is drawn


def _lambda_plot(client, rows: list[dict[str, Any]], spec, out: Path) -> list[Path]:
    """The learned λ per epoch of the best trials (by final test_acc) of a pbt or pb2 study, beside
    the paper's linear decay λ₀·(1 - e/E) from λ₀ = 0.25 (Eq. 10); nothing for other studies,
    whose λ follows a fixed schedule."""
    if spec.scheduler not in POPULATION:
        return []
    epochs = spec.train.epochs
    lambda0 = METHODS[PAPER_METHOD]["lambda0"]
    fig = _figure((7.5, 3.6))
    ax = fig.add_subplot()
    ax.plot([0, epochs], [lambda0, 0.0], ls="--", color="black", lw=1.2, label=f"paper: {lambda0:g}·(1 - e/E)")
    for r in [r for r in rows if r["final"] is not None][:_TRAJECTORIES]:
        points = metric_per_epoch(client, r["run_id"], LAMBDA)
        if points:
            steps, values = zip(*points)
            # the λ of epoch e held from e - 1 to e (constant between perturbations)
            ax.step([0, *steps], [values[0], *values], where="pre", lw=1.4,
                    label=f"{r['trial_id']} (test_acc {r['final']:.3f})")
    ax.set_xlim(0, epochs)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("λ")
    ax.set_title(f"learned λ of the best trials ({spec.scheduler}) and the paper's decay", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path = out / LAMBDA_PLOT_FILE
    fig.savefig(path, dpi=100)
    return [path]


def _fmt(v: Any) -> str:
    if isinstance(v, str):
        try:
            v = float(v) if "." in v else v
        except ValueError:
            pass
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-3 or abs(v) >= 1e3 else f"{v:.4f}".rstrip("0").rstrip(".")
    return "" if v is None else str(v)


def _plots(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    files = []
    fig = _figure((5.5, 3.6))
    ax = fig.add_subplot()
    shapes = sorted({r["schedule"] for r in rows})
    cmap = colormaps["tab10"]
    for i, s in enumerate(shapes):
        pts = [(float(r["lambda0"]), r["final"]) for r in rows if r["schedule"] == s and r["final"] is not None
               and r["lambda0"] not in ("", None)]
        if pts:
            ax.scatter(*zip(*pts), label=s or "?", color=cmap(i % 10), s=28)
    ax.set_xlabel("λ₀")
    ax.set_ylabel(TEST_ACC)
    ax.set_title("final test accuracy against λ₀, by schedule", fontsize=9)
    if shapes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    files.append(out / "acc_vs_lambda0.png")
    fig.savefig(files[-1], dpi=100)

    fig = _figure((5.5, 3.6))
    ax = fig.add_subplot()
    for r in rows:
        if r["curve"]:
            ax.plot(*zip(*r["curve"]), marker="o", ms=3, lw=1, label=r["trial_id"])
    ax.set_xlabel("epoch")
    ax.set_ylabel(TEST_ACC)
    ax.set_title("test accuracy per epoch (main branch)", fontsize=9)
    if len(rows) <= 12 and rows:
        ax.legend(fontsize=6)
    fig.tight_layout()
    files.append(out / "acc_curves.png")
    fig.savefig(files[-1], dpi=100)
    return files


def _importance_plot(imp: Importance, out: Path) -> list[Path]:
    """Bars of each dimension's importance (fANOVA and PED-ANOVA), or nothing without numbers.

    Drawn here, on a plain Figure: optuna.visualization's plot needs plotly, which the project
    does not install, and its matplotlib variant draws through pyplot."""
    if not (imp.fanova or imp.ped_anova):
        return []
    dims = sorted(set(imp.fanova) | set(imp.ped_anova), key=lambda d: imp.fanova.get(d, imp.ped_anova.get(d, 0)))
    fig = _figure((5.5, 0.9 + 0.35 * len(dims)))
    ax = fig.add_subplot()
    height = 0.4
    for i, (name, values) in enumerate((("fANOVA", imp.fanova), ("PED-ANOVA", imp.ped_anova))):
        if values:
            ax.barh([j + (i - 0.5) * height for j in range(len(dims))], [values.get(d, 0.0) for d in dims],
                    height=height, label=name, color=("#4477aa", "#ee6677")[i])
    ax.set_yticks(range(len(dims)), dims, fontsize=8)
    ax.set_xlabel("importance (normalised)")
    ax.set_title("which dimension matters", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "importance.png"
    fig.savefig(path, dpi=100)
    return [path]


def _analysis(folder) -> Analysis:
    """The study's analysis, recorded on its parent run; only computed where that run cannot take it."""
    try:
        return record_analysis(folder)
    except MlflowException as e:
        log.warning("report: the analysis could not be recorded on the parent run %s (%s); it is in the report only",
                    folder.parent_run_id, " ".join(str(e).split())[:200])
        return analyse(folder)


def write_report(study_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Report:
    """Write the report of the study in ``study_dir`` (see the module docstring).

    Raises:
        StudyError: ``study_dir`` holds no study.
    """
    folder = open_study(study_dir)
    d, spec = folder.path, folder.spec
    client = MlflowClient(tracking_uri=folder.tracking_uri)
    experiment = spec.experiment
    exp = client.get_experiment_by_name(experiment)
    rows = _trial_rows(client, exp.experiment_id, spec.name) if exp is not None else []
    out = Path(out_dir) if out_dir else d / "report"
    out.mkdir(parents=True, exist_ok=True)
    analysis = _analysis(folder)
    pngs = _plots(rows, out) + _importance_plot(analysis.importance, out) + _lambda_plot(client, rows, spec, out)
    paper = list(_baselines.rows(spec.dataset_name))
    full = [r for r in rows if r["run_id"] in analysis.run_ids and r["final"] is not None]
    best = full[0] if full else None  # rows are sorted by final test_acc

    columns = _COLUMNS + tuple(d for d in spec.search.dims if d not in _COLUMNS)  # and the spec's extra dimensions
    lines = [f"# Study `{spec.name}`", "",
             f"Dataset `{spec.dataset_name}`, architecture `{spec.arch}`, T = {spec.timesteps}, "
             f"search preset `{spec.search.preset}`, {len(rows)} trial(s). MLflow experiment "
             f"`{experiment}` at `{folder.tracking_uri}`.", "", "## Trials", "",
             "| trial | method | " + " | ".join(columns) + " | epochs | final test_acc | best test_acc | status |",
             "|" + "---|" * (len(columns) + 6)]
    for r in rows:
        lines.append(f"| {r['trial_id']} | {r['method']} | " + " | ".join(_fmt(r["params"].get(c, "")) for c in columns)
                     + f" | {r['epochs']} | {_fmt(r['final'])} | {_fmt(r['best'])} | {r['status']} |")
    lines += _guard_lines(rows, spec.train.epochs)
    lines += ["", "## The paper's results on this dataset", ""]
    if paper:
        lines += ["| table | method | architecture | T | test_acc | ± |", "|---|---|---|---|---|---|"]
        lines += [f"| {b.table} | {b.method} | {b.architecture} | {b.timesteps} | {b.accuracy:.4f} | "
                  f"{'' if b.std is None else f'{b.std:.4f}'} |" for b in paper]
    else:
        lines.append(f"The paper reports no results on `{spec.dataset_name}`, so there are no baselines to compare "
                     f"with (it has rows for {', '.join(_baselines.DATASETS)}).")
    lines += ["", "## Best trial", ""]
    if (config := analysis.best) is not None:
        lines += [f"Best configuration ({config.stage} stage, {config.label}): mean test_acc {config.mean:.4f}, "
                  f"95 % CI [{config.ci[0]:.4f}, {config.ci[1]:.4f}] over {config.n} seeds "
                  f"({', '.join(config.seeds)}; trials {', '.join(config.trial_ids)}).", "",
                  "```yaml", _yaml(config.params), "```", ""]
    if best:
        lines += [f"Best single trial among those that trained their full budget: `{best['trial_id']}` reached "
                  f"test_acc {best['final']:.4f} (main branch, as at inference).",
                  "", "```yaml", _yaml(best["params"]), "```"]
    elif rows:
        lines.append("No trial has trained its full budget yet (stopped early, failed or still running).")
    else:
        lines.append("No trial has reported a test accuracy yet.")
    lines += [""] + analysis.markdown(level=2).rstrip("\n").split("\n")
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in pngs]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return Report(out, rows, paper, best, analysis)


def _yaml(params: dict[str, str]) -> str:
    """MLflow's string params as typed YAML."""
    return yaml.safe_dump({k: yaml.safe_load(v) for k, v in params.items()}, sort_keys=True).rstrip()
