"""Reports of a finished (or running) study, read back from MLflow.

``snn-study report STUDY`` writes, into ``<study>/report/``:

* ``report.md``: a table of the trials (the searched dimensions, final and best
  ``test_acc``, status), the paper's rows for the same dataset (or a sentence saying the
  paper has none), and the best trial's configuration;
* ``acc_vs_lambda0.png``: final test accuracy against λ₀, coloured by schedule shape;
* ``acc_curves.png``: test accuracy per epoch of every trial.
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

from snn.diagnostics import grad_histogram
from snn.metrics import TEST_ACC
from study import baselines as _baselines
from study.folder import open_study

__all__ = ["GRAD_PLOT_FILE", "Report", "plot_grad_histogram", "write_report"]

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
    best: dict[str, Any] | None


def _trial_rows(client, experiment_id: str, study: str) -> list[dict[str, Any]]:
    runs = client.search_runs([experiment_id], filter_string=f"tags.study = '{study}' and tags.kind = 'trial'",
                              max_results=10000)
    rows = []
    for r in runs:
        history = sorted(client.get_metric_history(r.info.run_id, TEST_ACC), key=lambda m: m.step)
        curve = [(m.step, m.value) for m in history]
        row = {"trial_id": r.data.tags.get("trial_id", r.info.run_id[:8]), "method": r.data.tags.get("method", ""),
               "status": r.info.status, "run_id": r.info.run_id, "curve": curve,
               "final": curve[-1][1] if curve else None, "best": max(v for _, v in curve) if curve else None,
               "epochs": len(curve), "params": dict(r.data.params)}
        for c in _COLUMNS:
            row[c] = r.data.params.get(c, "")
        rows.append(row)
    rows.sort(key=lambda r: (r["final"] is None, -(r["final"] or 0)))
    return rows


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
    pngs = _plots(rows, out)
    paper = list(_baselines.rows(spec.dataset_name))
    best = rows[0] if rows and rows[0]["final"] is not None else None

    lines = [f"# Study `{spec.name}`", "",
             f"Dataset `{spec.dataset_name}`, architecture `{spec.arch}`, T = {spec.timesteps}, "
             f"search preset `{spec.search.preset}`, {len(rows)} trial(s). MLflow experiment "
             f"`{experiment}` at `{folder.tracking_uri}`.", "", "## Trials", "",
             "| trial | method | " + " | ".join(_COLUMNS) + " | epochs | final test_acc | best test_acc | status |",
             "|" + "---|" * (len(_COLUMNS) + 6)]
    for r in rows:
        lines.append(f"| {r['trial_id']} | {r['method']} | " + " | ".join(_fmt(r[c]) for c in _COLUMNS)
                     + f" | {r['epochs']} | {_fmt(r['final'])} | {_fmt(r['best'])} | {r['status']} |")
    lines += ["", "## The paper's results on this dataset", ""]
    if paper:
        lines += ["| table | method | architecture | T | test_acc | ± |", "|---|---|---|---|---|---|"]
        lines += [f"| {b.table} | {b.method} | {b.architecture} | {b.timesteps} | {b.accuracy:.4f} | "
                  f"{'' if b.std is None else f'{b.std:.4f}'} |" for b in paper]
    else:
        lines.append(f"The paper reports no results on `{spec.dataset_name}`, so there are no baselines to compare "
                     f"with (it has rows for {', '.join(_baselines.DATASETS)}).")
    lines += ["", "## Best trial", ""]
    if best:
        lines += [f"Trial `{best['trial_id']}` reached test_acc {best['final']:.4f} (main branch, as at inference).",
                  "", "```yaml", yaml.safe_dump({k: yaml.safe_load(v) for k, v in best["params"].items()}, sort_keys=True).rstrip(), "```"]
    else:
        lines.append("No trial has reported a test accuracy yet.")
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in pngs]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return Report(out, rows, paper, best)
