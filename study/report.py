"""Reports of a finished (or running) study, read back from MLflow and the study's Optuna storage.

``snn-study report STUDY`` (:func:`write_report`) writes, into ``<study>/report/``:

* ``report.md``: a table of the trials (the searched dimensions, final and best
  ``test_acc``, status: a trial the scheduler stopped reads "stopped early (epoch k of K)"),
  the paper's rows for the same dataset (or one line saying the paper has none), the best
  configuration over its seeds (with its 95 % confidence interval, where it has replicates)
  and the best full-budget trial (each as typed YAML), the comparison of the configurations
  and of the paper's methods, which dimension matters (:mod:`study.analysis`, which the
  report also records on the study's parent MLflow run), and the plots, with a line for each
  plot left out and why;
* ``acc_by_dimension.png``: final test accuracy against each searched dimension, one panel
  each (numbers as a scatter, ``surrogate_param`` as the ratio to its surrogate's default
  parameter; categories as a box and strip plot); full-budget trials filled, trials stopped
  early (or still running) hollow and grey, one legend entry per "stopped early (k of K
  epochs)"; failed and diverged trials counted in the title, not drawn;
* ``acc_curves.png``: test accuracy per epoch (integer epochs), the best
  :data:`TOP_CURVES` trials by final accuracy in colour with a legend outside the axes, the
  others light grey, trials stopped early dashed;
* ``importance.png``: the importance of each searched dimension (fANOVA and PED-ANOVA side by
  side), where :mod:`study.analysis` has numbers;
* ``replicates.png``: where configurations ran with at least 2 seeds, a forest plot of their
  mean final test accuracy and 95 % confidence interval, each seed a dot, the paper's
  methods named as the paper names them;
* ``parallel_coordinates.png``, ``slice.png``, ``contour.png``: Optuna's views of its
  COMPLETE trials (:mod:`optuna.visualization.matplotlib`), where the study has an Optuna
  storage with enough trials (each left out with its reason otherwise);
* ``lambda_trajectories.png`` (``scheduler: pbt`` or ``pb2``): the learned λ per epoch of the
  best trials beside the paper's linear decay from λ₀ = 0.25.

Then the written files go to the study's parent MLflow run as artifacts under ``report/``
(a warning, not a failure, where the tracking store refuses them).

One importance plot: ``importance.png`` is drawn here from :class:`study.analysis.Importance`
rather than with Optuna's ``plot_param_importances``: it shows fANOVA and PED-ANOVA together
(Optuna's plot takes one evaluator per figure), its numbers are the very ones of the report's
table and the parent run's metrics (computed once, with the analysis' guards: at least
:data:`study.analysis.MIN_IMPORTANCE_TRIALS` trials, ``surrogate_param``'s per-surrogate range
kept out of fANOVA, which refuses it), and it costs no second fANOVA fit.

Our own figures are :class:`matplotlib.figure.Figure` objects outside pyplot; Optuna's draw
through pyplot, so each is made inside :func:`matplotlib.rc_context` (Optuna sets the ggplot
style sheet globally) and closed once saved: no pyplot state is left behind.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from snn.config import METHODS, PAPER_METHOD, PAPER_NAMES
from snn.diagnostics import grad_histogram
from snn.metrics import LAMBDA, TEST_ACC
from snn.registry import SURROGATE_DEFAULTS
from study import baselines as _baselines
from study.analysis import Analysis, Configuration, Importance, analyse, record_analysis
from study.folder import OPTUNA_FILE, StudyFolder, open_study
from study.params import config_of_params
from study.spec import POPULATION

__all__ = ["GRAD_PLOT_FILE", "PLOT_FILES", "REPORT_FILE", "TOP_CURVES", "Report", "metric_per_epoch",
           "plot_grad_histogram", "write_report"]

log = logging.getLogger(__name__)

_COLUMNS = ("lambda0", "schedule", "branches", "surrogate", "surrogate_param")
GRAD_PLOT_FILE = "first_layer_grad_hist.png"  # a trial's artifact: plot_grad_histogram of its last gradient
REPORT_FILE = "report.md"
DIMENSIONS_PLOT_FILE = "acc_by_dimension.png"
CURVES_PLOT_FILE = "acc_curves.png"
IMPORTANCE_PLOT_FILE = "importance.png"
REPLICATES_PLOT_FILE = "replicates.png"
PARALLEL_PLOT_FILE = "parallel_coordinates.png"
SLICE_PLOT_FILE = "slice.png"
CONTOUR_PLOT_FILE = "contour.png"
LAMBDA_PLOT_FILE = "lambda_trajectories.png"
PLOT_FILES: tuple[str, ...] = (DIMENSIONS_PLOT_FILE, CURVES_PLOT_FILE, IMPORTANCE_PLOT_FILE, REPLICATES_PLOT_FILE,
                               PARALLEL_PLOT_FILE, SLICE_PLOT_FILE, CONTOUR_PLOT_FILE, LAMBDA_PLOT_FILE)
"""Every plot a report may write (a report removes those of an earlier one first)."""
_OLD_FILES = ("acc_vs_lambda0.png",)  # written by earlier versions: removed, never left to be logged again
TOP_CURVES = 10
"""Learning curves drawn in colour and named in the legend (the best by final test_acc)."""
_TRAJECTORIES = 5  # the best trials whose learned λ is drawn
_CONTOUR_PARAMS = 3  # at most this many dimensions in Optuna's contour grid
_LOG_DIMS = frozenset({"surrogate_param", "lr", "weight_decay", "v_threshold"})  # searched log-uniform
_FULL_COLOR, _PAPER_COLOR, _PARTIAL_COLOR = "#4477aa", "#ee6677", "#888888"
_PARTIAL_MARKERS = ("o", "s", "^", "D", "v", "P")
_DPI = 110
_BOX_MIN = 3  # full-budget values of a category below which its box is left out (the dots stay)

# what a trial came to: trained its budget, stopped early (scheduler or firing-rate guard),
# still running, or failed / diverged (no accuracy to draw)
FULL, STOPPED, RUNNING, FAILED = "full", "stopped", "running", "failed"


def _figure(figsize: tuple[float, float], **kwargs: Any) -> Figure:
    """A matplotlib Figure outside pyplot: no global figure list to close, no GUI backend to pick."""
    return Figure(figsize=figsize, **kwargs)


def plot_grad_histogram(grad, path: str | os.PathLike, *, title: str = "", bins: int = 50) -> Path:
    """Histogram of the first layer's gradient values (the paper's Fig. 2)."""
    counts, edges = grad_histogram(grad, bins=bins)
    # One filled step patch and fixed margins: drawn for every trial that ends.
    fig = _figure((5, 3.2))
    ax = fig.add_axes((0.14, 0.16, 0.82, 0.74))
    ax.stairs(counts, edges, fill=True, color="#4477aa")
    # Gradients span 1e-6 to 1e-1 over networks and epochs: at most 5 ticks, with a shared
    # power of ten beside the axis, so the labels never run into each other.
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
    ax.set_xlabel("gradient of first-layer weights")
    ax.set_ylabel("count")
    ax.set_title(title or "first-layer gradients", fontsize=9)
    fig.savefig(path, dpi=100)
    return Path(path)


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


# -- the trials, read back from MLflow --------------------------------------------------------------
def _int(v: Any) -> int | None:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return None


def _outcome(status: str, tags: dict[str, str], final: float | None) -> str:
    """:data:`FULL`, :data:`STOPPED`, :data:`RUNNING` or :data:`FAILED` (see the constants)."""
    if status in ("FAILED", "KILLED") or tags.get("diverged") == "true":
        return FAILED
    if tags.get("stopped_early") == "true" or tags.get("stopped") in ("silent", "saturated"):
        return STOPPED
    if status in ("RUNNING", "SCHEDULED"):
        return RUNNING
    return FULL if final is not None else FAILED


def _trial_rows(client, experiment_id: str, study: str) -> list[dict[str, Any]]:
    """One dict per trial run, best final test_acc first.

    Keys: trial_id, method, status (a sentence), outcome (:data:`FULL`, ...), run_id, curve
    ((epoch, test_acc), finite values only), final, best, epochs (epochs with a value),
    budget (the ``epochs`` param), params (MLflow's strings), stopped, saved, and the
    :data:`_COLUMNS`.
    """
    runs = client.search_runs([experiment_id], filter_string=f"tags.study = '{study}' and tags.kind = 'trial'",
                              max_results=10000)
    rows = []
    for r in runs:
        curve = [(e, v) for e, v in metric_per_epoch(client, r.info.run_id, TEST_ACC) if math.isfinite(v)]
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
        final = curve[-1][1] if curve else None
        row = {"trial_id": tags.get("trial_id", r.info.run_id[:8]), "method": tags.get("method", ""),
               "status": status, "outcome": _outcome(r.info.status, tags, final), "run_id": r.info.run_id,
               "curve": curve, "final": final, "best": max(v for _, v in curve) if curve else None,
               "epochs": len(curve), "budget": _int(r.data.params.get("epochs")), "params": dict(r.data.params),
               "stopped": tags.get("stopped"), "saved": saved}
        for c in _COLUMNS:
            row[c] = r.data.params.get(c, "")
        rows.append(row)
    rows.sort(key=lambda r: (r["final"] is None, -(r["final"] or 0)))
    return rows


def _kind(row: dict[str, Any]) -> str:
    """A row's outcome (rows made before ``outcome`` existed: from final and epochs)."""
    if "outcome" in row:
        return row["outcome"]
    if row.get("final") is None:
        return FAILED
    budget = row.get("budget")
    return STOPPED if budget and row.get("epochs", 0) < budget else FULL


def _drawn(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with an accuracy to draw: not failed, a finite final test_acc."""
    return [r for r in rows if _kind(r) != FAILED and r.get("final") is not None and math.isfinite(r["final"])]


def _partial_label(row: dict[str, Any]) -> str:
    """The legend entry of a trial short of its budget: "stopped early (k of K epochs)"."""
    what = "running" if _kind(row) == RUNNING else "stopped early"
    budget = row.get("budget")
    return f"{what} ({row['epochs']} of {budget if budget else '?'} epochs)"


def _budget_label(rows: Sequence[dict[str, Any]]) -> str:
    budgets = sorted({r.get("budget") for r in rows if r.get("budget")})
    if not budgets:
        return "full budget"
    return f"full budget ({'/'.join(map(str, budgets))} epoch{'' if budgets == [1] else 's'})"


def _not_drawn(rows: Sequence[dict[str, Any]]) -> str:
    """What the plots leave out, for a title: "; 2 failed or diverged not shown"."""
    failed = sum(_kind(r) == FAILED for r in rows)
    empty = sum(_kind(r) != FAILED and r.get("final") is None for r in rows)
    parts = [f"{failed} failed or diverged"] * bool(failed) + [f"{empty} without an accuracy yet"] * bool(empty)
    return f"; {' and '.join(parts)} not shown" if parts else ""


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


# -- typed values ------------------------------------------------------------------------------------
_STAGE_LIST = re.compile(r"\d+(,\d+)*")


def _typed(params: dict[str, str]) -> dict[str, Any]:
    """MLflow's string params back as a trial's typed config (:func:`study.params.config_of_params`):
    ``None`` as null, numbers as numbers; ``branches`` as ``all``, ``none`` or a list of stages."""
    config = config_of_params(params)
    branches = config.get("branches")
    if isinstance(branches, int) and not isinstance(branches, bool):
        config["branches"] = [branches]
    elif isinstance(branches, str) and _STAGE_LIST.fullmatch(branches):
        config["branches"] = [int(b) for b in branches.split(",")]
    return config


def _yaml(params: dict[str, str]) -> str:
    """MLflow's string params as typed YAML (:func:`_typed`)."""
    return yaml.safe_dump(_typed(params), sort_keys=True, default_flow_style=None).rstrip()


def _surrogate_ratio(params: dict[str, str]) -> float | None:
    """``surrogate_param`` over its surrogate's default (1: the default; None: no surrogate known)."""
    default = SURROGATE_DEFAULTS.get(params.get("surrogate", ""))
    if default is None:
        return None
    value = _typed({"surrogate_param": params.get("surrogate_param", "None")}).get("surrogate_param")
    return 1.0 if value is None else float(value) / default


def _dim_value(row: dict[str, Any], dim: str) -> Any:
    """The value a panel draws for ``dim``: a number, a category (text), or None (the trial has none)."""
    params = row.get("params") or {}
    if dim == "surrogate_param":
        return _surrogate_ratio(params)
    raw = params.get(dim, row.get(dim))
    if raw in (None, "", "None"):
        return None
    value = _typed({dim: str(raw)}).get(dim)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _fmt(v: Any) -> str:
    if isinstance(v, str):
        try:
            v = float(v) if "." in v else v
        except ValueError:
            pass
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-3 or abs(v) >= 1e3 else f"{v:.4f}".rstrip("0").rstrip(".")
    return "" if v is None else str(v)


# -- accuracy per dimension ---------------------------------------------------------------------------
def _dimensions(spec, rows: Sequence[dict[str, Any]]) -> list[str]:
    """The dimensions to draw: the spec's searched ones, then any column whose value varies between trials."""
    from search_spaces import dims_of

    try:
        searched = list(dims_of(spec.search.preset, spec.search.dims))
    except (AttributeError, ValueError):
        searched = []
    varying = [c for c in (*_COLUMNS, *searched) if len({str(_dim_value(r, c)) for r in rows}) > 1]
    return list(dict.fromkeys(d for d in (*_COLUMNS, *searched) if d in searched or d in varying))


def _style(row: dict[str, Any], partial_markers: dict[str, str]) -> dict[str, Any]:
    """Scatter style: filled blue for a full budget, hollow grey (marker by epochs reached) otherwise."""
    if _kind(row) == FULL:
        return {"marker": "o", "facecolors": _FULL_COLOR, "edgecolors": "white", "linewidths": 0.5}
    marker = partial_markers.setdefault(_partial_label(row), _PARTIAL_MARKERS[len(partial_markers)
                                                                              % len(_PARTIAL_MARKERS)])
    return {"marker": marker, "facecolors": "none", "edgecolors": _PARTIAL_COLOR, "linewidths": 1.2}


def _scatter(ax, points: Sequence[tuple[float, float, dict[str, Any]]], markers: dict[str, str]) -> None:
    """One scatter call per style, so each collection is one outcome (full, or one partial label)."""
    groups: dict[str, list[tuple[float, float, dict[str, Any]]]] = {}
    for x, y, row in points:
        groups.setdefault("" if _kind(row) == FULL else _partial_label(row), []).append((x, y, row))
    for label, pts in groups.items():
        xs, ys, first = [p[0] for p in pts], [p[1] for p in pts], pts[0][2]
        ax.scatter(xs, ys, s=36, zorder=3, label=label or FULL, **_style(first, markers))


def _numeric_panel(ax, dim: str, rows: Sequence[dict[str, Any]], markers: dict[str, str]) -> None:
    points = [(v, r["final"], r) for r in rows if isinstance(v := _dim_value(r, dim), float)]
    _scatter(ax, points, markers)
    if dim in _LOG_DIMS and points and min(p[0] for p in points) > 0:
        _log_axis(ax, powers_of_two=dim == "surrogate_param")
    if dim == "surrogate_param":
        ax.axvline(1.0, color="black", lw=0.8, ls=":", zorder=1)
        ax.set_xlabel("surrogate_param ÷ its surrogate's default")
    else:
        ax.set_xlabel("λ₀" if dim == "lambda0" else dim)


def _log_axis(ax, *, powers_of_two: bool) -> None:
    """A log x axis with plain numbers (0.5, 1, 2; not 5×10⁻¹)."""
    ax.set_xscale("log")
    if powers_of_two:
        ax.xaxis.set_major_locator(FixedLocator([2.0 ** k for k in range(-6, 7)]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _category_order(dim: str, values: set[str]) -> list[str]:
    if dim == "branches":
        return sorted(values, key=lambda v: (v != "none", v == "all", len(v), v))
    return sorted(values)


def _categorical_panel(ax, dim: str, rows: Sequence[dict[str, Any]], markers: dict[str, str]) -> None:
    values = {r["trial_id"]: v for r in rows if (v := _dim_value(r, dim)) is not None}
    cats = _category_order(dim, {str(v) for v in values.values()})
    at = {c: i for i, c in enumerate(cats)}
    full = [[r["final"] for r in rows if _kind(r) == FULL and str(values.get(r["trial_id"])) == c] for c in cats]
    if any(len(f) >= _BOX_MIN for f in full):  # a box of fewer values says no more than the dots
        ax.boxplot([f if len(f) >= _BOX_MIN else [np.nan] for f in full], positions=range(len(cats)), widths=0.5,
                   showfliers=False,
                   medianprops={"color": _FULL_COLOR}, boxprops={"color": "#bbbbbb"},
                   whiskerprops={"color": "#bbbbbb"}, capprops={"color": "#bbbbbb"})
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(rows))  # the same picture every time
    points = [(at[str(values[r["trial_id"]])] + j, r["final"], r) for r, j in zip(rows, jitter)
              if r["trial_id"] in values]
    _scatter(ax, points, markers)
    ax.set_xticks(range(len(cats)), cats, rotation=30 if sum(map(len, cats)) > 24 else 0)
    ax.set_xlim(-0.6, len(cats) - 0.4)
    ax.set_xlabel(dim)


def _legend_handles(rows: Sequence[dict[str, Any]], markers: dict[str, str]) -> list[Line2D]:
    handles = [Line2D([], [], ls="", marker="o", color=_FULL_COLOR, label=_budget_label(rows))] \
        if any(_kind(r) == FULL for r in rows) else []
    return handles + [Line2D([], [], ls="", marker=m, markerfacecolor="none", markeredgecolor=_PARTIAL_COLOR,
                             markeredgewidth=1.2, label=label) for label, m in markers.items()]


def _save(fig: Figure | None, out: Path, name: str) -> Path | None:
    """Write one of our figures as ``out/name`` (nothing for no figure)."""
    if fig is None:
        return None
    fig.savefig(out / name, dpi=_DPI)
    return out / name


def _dimension_figure(rows: Sequence[dict[str, Any]], dims: Sequence[str]) -> Figure | None:
    """Final test_acc against each dimension, one panel each (see the module docstring)."""
    drawn = _drawn(rows)
    if not drawn or not dims:
        return None
    cols = min(3, len(dims))
    nrows = math.ceil(len(dims) / cols)
    fig = _figure((4.3 * cols, 3.3 * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False, sharey=True)
    markers: dict[str, str] = {}  # partial label -> marker, shared by the panels
    for ax, dim in zip(axes.flat, dims):
        numeric = all(isinstance(_dim_value(r, dim), float) for r in drawn if _dim_value(r, dim) is not None)
        (_numeric_panel if numeric else _categorical_panel)(ax, dim, drawn, markers)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(dims):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"final {TEST_ACC}")
    full, partial = sum(_kind(r) == FULL for r in drawn), sum(_kind(r) != FULL for r in drawn)
    short = f", {partial} short of their budget (hollow, grey)" if partial else ""
    fig.suptitle(f"final {TEST_ACC} per dimension: {full} full-budget trial(s){short}{_not_drawn(rows)}",
                 fontsize=10)
    fig.legend(handles=_legend_handles(drawn, markers), loc="outside lower center", ncols=4, fontsize=9,
               frameon=False)
    return fig


# -- learning curves ----------------------------------------------------------------------------------
def _curve_label(row: dict[str, Any]) -> str:
    label = f"{row['trial_id']}  {row['final']:.3f}"
    return label if _kind(row) == FULL else f"{label}, {_partial_label(row)}"


def _curves_figure(rows: Sequence[dict[str, Any]]) -> Figure | None:
    """Test accuracy per epoch: the best :data:`TOP_CURVES` by final test_acc in colour, named (the
    full-budget trials first: an accuracy after fewer epochs is no rival to theirs)."""
    drawn = sorted((r for r in _drawn(rows) if r["curve"]), key=lambda r: (_kind(r) != FULL, -r["final"]))
    if not drawn:
        return None
    top, rest = drawn[:TOP_CURVES], drawn[TOP_CURVES:]
    fig = _figure((9.5, 4.6), layout="constrained")
    ax = fig.add_subplot()
    for r in rest:
        ax.plot(*zip(*r["curve"]), color="#cccccc", lw=0.8, ls="-" if _kind(r) == FULL else "--", zorder=1)
    cmap = colormaps["tab10"]
    for i, r in enumerate(top):
        ax.plot(*zip(*r["curve"]), color=cmap(i % 10), lw=1.6, marker="o", ms=3.5,
                ls="-" if _kind(r) == FULL else "--", label=_curve_label(r), zorder=2 + len(top) - i)
    handles, _ = ax.get_legend_handles_labels()
    if rest:
        handles.append(Line2D([], [], color="#cccccc", lw=0.8, label=f"{len(rest)} other trial(s)"))
    if any(_kind(r) != FULL for r in drawn):
        handles.append(Line2D([], [], color="black", lw=1.2, ls="--", label="dashed: short of its budget"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8.5, frameon=False,
              title=f"trial, final {TEST_ACC}", title_fontsize=9)
    last = max(int(e) for r in drawn for e, _ in r["curve"])
    ax.set_xlim(0.5, last + 0.5)  # whole epochs in view, also for a one-epoch study (no 0.995 ticks)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlabel("epoch")
    ax.set_ylabel(TEST_ACC)
    ax.grid(alpha=0.3)
    ax.set_title(f"{TEST_ACC} per epoch (main branch): the best {len(top)} of {len(drawn)} in colour"
                 f"{_not_drawn(rows)}", fontsize=10)
    return fig


# -- importance and replicates ------------------------------------------------------------------------
def _importance_figure(imp: Importance) -> Figure | None:
    """Bars of each dimension's importance (fANOVA and PED-ANOVA), or nothing without numbers
    (why this plot and not Optuna's: the module docstring)."""
    if not (imp.fanova or imp.ped_anova):
        return None
    dims = sorted(set(imp.fanova) | set(imp.ped_anova), key=lambda d: imp.fanova.get(d, imp.ped_anova.get(d, 0)))
    fig = _figure((6.5, 1.3 + 0.45 * len(dims)), layout="constrained")
    ax = fig.add_subplot()
    height = 0.4
    for i, (name, values) in enumerate((("fANOVA", imp.fanova), ("PED-ANOVA", imp.ped_anova))):
        if values:
            ax.barh([j + (i - 0.5) * height for j in range(len(dims))], [values.get(d, 0.0) for d in dims],
                    height=height, label=name, color=(_FULL_COLOR, _PAPER_COLOR)[i])
    ax.set_yticks(range(len(dims)), dims, fontsize=9)
    ax.set_xlabel("importance (normalised)")
    ax.set_title(f"which dimension matters ({imp.complete} complete trials)", fontsize=10)
    ax.legend(fontsize=9)
    return fig


def _config_label(c: Configuration, stages: int) -> str:
    name = f"{c.label} — {PAPER_NAMES[c.method]}" if c.method in PAPER_NAMES and c.label != PAPER_NAMES[c.method] \
        else c.label
    return (f"[{c.stage}] " if stages > 1 else "") + f"{name} (n={c.n})"


def _replicates_figure(analysis: Analysis) -> Figure | None:
    """Forest plot: mean final test_acc and 95 % CI of every configuration with at least 2 seeds."""
    configs = [c for c in analysis.configurations if c.n >= 2 and c.ci is not None]
    if not configs:
        return None
    stages = len({c.stage for c in configs})
    fig = _figure((8.5, 1.4 + 0.5 * len(configs)), layout="constrained")
    ax = fig.add_subplot()
    for y, c in enumerate(reversed(configs)):
        color = _PAPER_COLOR if c.method in METHODS else _FULL_COLOR
        ax.errorbar(c.mean, y, xerr=[[c.mean - c.ci[0]], [c.ci[1] - c.mean]], fmt="D", ms=6, color=color,
                    capsize=4, lw=1.6, zorder=3)
        ax.scatter(list(c.acc.values()), [y] * len(c.acc), s=14, color=color, alpha=0.45, zorder=2)
    ax.set_yticks(range(len(configs)), [_config_label(c, stages) for c in reversed(configs)], fontsize=9)
    ax.set_ylim(-0.7, len(configs) - 0.3)
    right = ax.secondary_yaxis("right")  # the numbers, as the table has them
    right.set_yticks(range(len(configs)), [f"{c.mean:.4f} [{c.ci[0]:.4f}, {c.ci[1]:.4f}]" for c in reversed(configs)],
                     fontsize=8.5)
    lo, hi = ax.get_xlim()
    ax.set_xlim(max(lo, 0.0), min(hi, 1.0))  # an interval past an accuracy of 1 (few seeds) is cut at 1
    ax.set_xlabel(f"final {TEST_ACC}: mean and 95 % confidence interval (dots: seeds)")
    ax.grid(axis="x", alpha=0.3)
    handles = [Line2D([], [], ls="", marker="D", color=_PAPER_COLOR, label="the paper's methods (Table 1)"),
               Line2D([], [], ls="", marker="D", color=_FULL_COLOR, label="searched configurations")]
    ax.legend(handles=[h for h, on in zip(handles, (any(c.method in METHODS for c in configs),
                                                    any(c.method not in METHODS for c in configs))) if on],
              fontsize=8.5, loc="best")
    ax.set_title(f"configurations run with several seeds ({analysis.stage} stage first)" if stages > 1 else
                 f"configurations run with several seeds ({configs[0].stage} stage)", fontsize=10)
    return fig


# -- learned λ (pbt, pb2) -----------------------------------------------------------------------------
def _lambda_plot(client, rows: list[dict[str, Any]], spec, out: Path) -> Path | None:
    """The learned λ per epoch of the best trials (by final test_acc) of a pbt or pb2 study, beside
    the paper's linear decay λ₀·(1 - e/E) from λ₀ = 0.25 (Eq. 10); nothing for other studies,
    whose λ follows a fixed schedule."""
    if spec.scheduler not in POPULATION:
        return None
    epochs = spec.train.epochs
    lambda0 = METHODS[PAPER_METHOD]["lambda0"]
    fig = _figure((8.5, 3.8), layout="constrained")
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
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("λ")
    ax.set_title(f"learned λ of the best trials ({spec.scheduler}) and the paper's decay", fontsize=10)
    ax.legend(fontsize=8.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    path = out / LAMBDA_PLOT_FILE
    fig.savefig(path, dpi=_DPI)
    return path


# -- Optuna's views -----------------------------------------------------------------------------------
def _load_optuna(folder: StudyFolder) -> tuple[Any, str | None]:
    """The study's Optuna study, or None and why there is none."""
    try:
        return folder.optuna_study(), None
    except FileNotFoundError:
        return None, f"the study folder has no Optuna storage (`{OPTUNA_FILE}`; a pbt or pb2 study has none)"
    except Exception as e:  # no such study, a damaged or foreign file, a server down: the rest of the report stands
        return None, f"the Optuna storage cannot be read ({type(e).__name__}: {' '.join(str(e).split())[:160]})"


def _darker_lines(fig: Figure) -> None:
    """Parallel coordinates: the worst trial's line drawn in Optuna's palest blue is invisible on
    white; the colour map starts at a visible blue instead (its colour bar follows)."""
    from matplotlib.collections import LineCollection
    from matplotlib.colors import ListedColormap

    for ax in fig.axes:
        for coll in ax.collections:
            if isinstance(coll, LineCollection) and coll.get_array() is not None:
                coll.set_cmap(ListedColormap(coll.get_cmap()(np.linspace(0.3, 1.0, 256))))


def _optuna_figure(draw: Callable[[], Any], path: Path, size: tuple[float, float],
                   touch: Callable[[Figure], None] | None = None) -> None:
    """Run one of optuna.visualization.matplotlib's functions and save its figure at ``size``.

    Inside rc_context (Optuna applies the ggplot style sheet globally) and catch_warnings (its
    ExperimentalWarning), and every figure it opened closed whatever happens: nothing global is left."""
    import matplotlib
    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning

    before = set(plt.get_fignums())
    with warnings.catch_warnings(), matplotlib.rc_context({"figure.figsize": size, "font.size": 9}):
        warnings.simplefilter("ignore", ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)  # matplotlib's on a single trial's axis limits
        try:
            fig = np.asarray(draw(), dtype=object).flat[0].figure
            fig.set_size_inches(*size)
            if touch is not None:
                touch(fig)
            fig.savefig(path, dpi=_DPI, bbox_inches="tight")
        finally:
            for number in set(plt.get_fignums()) - before:  # Optuna's figures, drawn or half-drawn
                plt.close(number)


def _contour_params(study, importance: Importance) -> list[str]:
    """Up to :data:`_CONTOUR_PARAMS` dimensions for the contour grid, the most important first;
    ``surrogate_param`` left out (its range differs per surrogate: acc_by_dimension shows it relative)."""
    names = sorted({p for t in study.trials for p in t.params} - {"surrogate_param"})
    rank = {**{d: v for d, v in importance.ped_anova.items()}, **importance.fanova}
    order = sorted(names, key=lambda d: (-rank.get(d, -1.0), _COLUMNS.index(d) if d in _COLUMNS else 99, d))
    return order[:_CONTOUR_PARAMS]


def _optuna_plots(folder: StudyFolder, importance: Importance, out: Path) -> tuple[list[Path], list[str]]:
    """Optuna's parallel coordinates, slice and contour plots of the COMPLETE trials, and a line
    for each one left out."""
    study, why = _load_optuna(folder)
    names = "parallel coordinates, slice and contour plots"
    if study is None:
        return [], [f"Optuna's {names} are left out: {why}."]
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ov

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    params = sorted({p for t in complete for p in t.params})
    multi = len(study.directions) > 1
    kw: dict[str, Any] = {"target_name": TEST_ACC, **({"target": lambda t: t.values[0]} if multi else {})}
    if not params:
        return [], [f"Optuna's {names} are left out: the study searches no dimension."]
    contour = _contour_params(study, importance)
    plans = [(PARALLEL_PLOT_FILE, "parallel coordinates", 2, lambda: ov.plot_parallel_coordinate(study, **kw),
              (2.1 * len(params) + 3, 4.8), _darker_lines),
             (SLICE_PLOT_FILE, "slice plot", 1, lambda: ov.plot_slice(study, **kw), (3.4 * len(params), 3.6), None),
             (CONTOUR_PLOT_FILE, "contour plot", 2, lambda: ov.plot_contour(study, params=contour, **kw),
              (6.0, 4.8) if len(contour) == 2 else (4.0 * len(contour), 3.6 * len(contour)), None)]
    files, notes = [], []
    for name, what, least, draw, size, touch in plans:
        if len(complete) < least:
            notes.append(f"Optuna's {what} is left out: it needs at least {least} complete trial(s), the study has "
                         f"{len(complete)}.")
        elif name == CONTOUR_PLOT_FILE and len(contour) < 2:
            notes.append(f"Optuna's {what} is left out: it needs at least 2 dimensions "
                         f"(besides surrogate_param), the study searches {len(contour)}.")
        else:
            try:
                _optuna_figure(draw, out / name, size, touch)
                files.append(out / name)
            except Exception as e:  # Optuna refuses this study's trials: the rest of the report stands
                notes.append(f"Optuna's {what} is left out: {type(e).__name__}: {' '.join(str(e).split())[:200]}.")
    left = len(study.trials) - len(complete)
    if files and left:
        notes.append(f"Optuna's plots show its {len(complete)} COMPLETE trials; {left} pruned (stopped early), "
                     f"failed or running are not in them.")
    return files, notes


# -- the report -----------------------------------------------------------------------------------
def _analysis(folder: StudyFolder) -> Analysis:
    """The study's analysis, recorded on its parent run; only computed where that run cannot take it."""
    try:
        return record_analysis(folder)
    except MlflowException as e:
        log.warning("report: the analysis could not be recorded on the parent run %s (%s); it is in the report only",
                    folder.parent_run_id, " ".join(str(e).split())[:200])
        return analyse(folder)


def _plots(client, folder: StudyFolder, rows: list[dict[str, Any]], analysis: Analysis,
           out: Path) -> tuple[list[Path], list[str]]:
    """Every plot of the report (see the module docstring), and a line for each one left out."""
    spec = folder.spec
    dims = _dimensions(spec, rows)
    ours = [_save(_dimension_figure(rows, dims), out, DIMENSIONS_PLOT_FILE),
            _save(_curves_figure(rows), out, CURVES_PLOT_FILE),
            _save(_importance_figure(analysis.importance), out, IMPORTANCE_PLOT_FILE),
            _save(_replicates_figure(analysis), out, REPLICATES_PLOT_FILE)]
    notes = []
    if not _drawn(rows):
        notes.append("No trial has an accuracy yet: no accuracy per dimension, no learning curves.")
    elif not dims:
        notes.append("No dimension was searched or varies between the trials: no accuracy per dimension.")
    if not any(c.n >= 2 for c in analysis.configurations):
        notes.append("No configuration ran with 2 or more seeds: no forest plot of replicates (`seeds: N` in the "
                     "spec, N >= 2).")
    optuna_files, optuna_notes = _optuna_plots(folder, analysis.importance, out)
    files = [p for p in (*ours, *optuna_files, _lambda_plot(client, rows, spec, out)) if p is not None]
    return files, notes + optuna_notes


def _trial_lines(rows: list[dict[str, Any]], columns: Sequence[str]) -> list[str]:
    lines = ["| trial | method | " + " | ".join(columns) + " | epochs | final test_acc | best test_acc | status |",
             "|" + "---|" * (len(columns) + 6)]
    for r in rows:
        lines.append(f"| {r['trial_id']} | {r['method']} | " + " | ".join(_fmt(r["params"].get(c, "")) for c in columns)
                     + f" | {r['epochs']} | {_fmt(r['final'])} | {_fmt(r['best'])} | {r['status']} |")
    return lines


def _paper_lines(dataset: str, paper: list[_baselines.Baseline]) -> list[str]:
    if not paper:
        return [f"The paper reports no results on `{dataset}`, so there are no baselines to compare with (it has "
                f"rows for {', '.join(_baselines.DATASETS)})."]
    return ["| table | method | architecture | T | test_acc | ± |", "|---|---|---|---|---|---|"] + [
        f"| {b.table} | {b.method} | {b.architecture} | {b.timesteps} | {b.accuracy:.4f} | "
        f"{'' if b.std is None else f'{b.std:.4f}'} |" for b in paper]


def _best_lines(analysis: Analysis, best: dict[str, Any] | None, rows: list[dict[str, Any]]) -> list[str]:
    lines = []
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
    return lines


def _clear(out: Path) -> None:
    """Remove the files an earlier report wrote here (a plot it no longer draws must not stay)."""
    for name in (REPORT_FILE, *PLOT_FILES, *_OLD_FILES):
        (out / name).unlink(missing_ok=True)


def _log_report(folder: StudyFolder, files: Sequence[Path]) -> None:
    """The report's files as artifacts under ``report/`` of the study's parent run; a warning where refused."""
    try:
        client = MlflowClient(tracking_uri=folder.tracking_uri)
        for f in files:
            client.log_artifact(folder.parent_run_id, str(f), artifact_path="report")
    except Exception as e:  # the store is down or refuses the run: the report on disk stands
        log.warning("report: the report could not be logged on the parent run %s (%s: %s); it is in %s",
                    folder.parent_run_id, type(e).__name__, " ".join(str(e).split())[:200], files[0].parent)


def write_report(study_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 analysis: Analysis | None = None) -> Report:
    """Write the report of the study in ``study_dir`` (see the module docstring) and log it on
    the study's parent MLflow run.

    ``analysis``: the study's :func:`study.analysis.record_analysis`, where the caller has just
    made it (the end of a study); else it is made here.

    Raises:
        StudyError: ``study_dir`` holds no study.
    """
    folder = open_study(study_dir)
    spec = folder.spec
    client = MlflowClient(tracking_uri=folder.tracking_uri)
    exp = client.get_experiment_by_name(spec.experiment)
    rows = _trial_rows(client, exp.experiment_id, spec.name) if exp is not None else []
    out = Path(out_dir) if out_dir else folder.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    _clear(out)
    analysis = analysis if analysis is not None else _analysis(folder)
    pngs, notes = _plots(client, folder, rows, analysis, out)
    paper = list(_baselines.rows(spec.dataset_name))
    full = [r for r in rows if r["run_id"] in analysis.run_ids and r["final"] is not None]
    best = full[0] if full else None  # rows are sorted by final test_acc

    columns = _COLUMNS + tuple(d for d in spec.search.dims if d not in _COLUMNS)  # and the spec's extra dimensions
    lines = [f"# Study `{spec.name}`", "",
             f"Dataset `{spec.dataset_name}`, architecture `{spec.arch}`, T = {spec.timesteps}, "
             f"search preset `{spec.search.preset}`, {len(rows)} trial(s). MLflow experiment "
             f"`{spec.experiment}` at `{folder.tracking_uri}`.", "", "## Trials", ""]
    lines += _trial_lines(rows, columns) + _guard_lines(rows, spec.train.epochs)
    lines += ["", "## The paper's results on this dataset", ""] + _paper_lines(spec.dataset_name, paper)
    lines += ["", "## Best trial", ""] + _best_lines(analysis, best, rows)
    lines += [""] + analysis.markdown(level=2).rstrip("\n").split("\n")
    lines += ["", "## Plots"] + [f"\n![{p.stem}]({p.name})" for p in pngs]
    lines += ([""] + [f"* {n}" for n in notes]) if notes else []
    (out / REPORT_FILE).write_text("\n".join(lines) + "\n")
    _log_report(folder, [out / REPORT_FILE, *pngs])
    return Report(out, rows, paper, best, analysis, pngs, notes)
