"""The figures of a study's report that we draw with matplotlib, and a trial's gradient histogram.

Each ``*_figure`` function returns a :class:`matplotlib.figure.Figure` (None where it has
nothing to draw) that :func:`save` writes into the report's folder as:

* ``acc_by_dimension.png`` (:func:`dimension_figure`): final test accuracy against each
  searched dimension, one panel each (numbers as a scatter, ``surrogate_param`` as the ratio
  to its surrogate's default parameter; categories as a box and strip plot); full-budget
  trials filled, trials stopped early (or still running) hollow and grey, one legend entry
  per "stopped early (k of K epochs)"; failed and diverged trials counted in the title, not
  drawn;
* ``acc_curves.png`` (:func:`curves_figure`): test accuracy per epoch (integer epochs), the
  best :data:`TOP_CURVES` trials by final accuracy in colour with a legend outside the axes,
  the others light grey, trials stopped early dashed;
* ``importance.png`` (:func:`importance_figure`): the importance of each searched dimension
  (fANOVA and PED-ANOVA side by side), where :mod:`study.importance` has numbers;
* ``replicates.png`` (:func:`replicates_figure`): where configurations ran with at least 2
  seeds, a forest plot of their mean final test accuracy and 95 % confidence interval, each
  seed a dot, the paper's methods named as the paper names them;
* ``lambda_trajectories.png`` (:func:`lambda_plot`, ``scheduler: pbt`` or ``pb2``): the learned
  λ per epoch of the best trials beside the paper's linear decay from λ₀ = 0.25;
* ``pareto_front.png`` (:func:`pareto_figure`, a study with two objectives): test accuracy
  against the cost (energy per inference, or firing rate), every full-budget trial a point,
  the Pareto front (:mod:`study.pareto`) highlighted and joined as a step line.

Optuna's own views are :mod:`study.optuna_figures`. :func:`plot_grad_histogram` draws a
trial's first-layer gradients (the paper's Fig. 2), which the tracker logs with each trial as
:data:`GRAD_PLOT_FILE`.

One importance plot: ``importance.png`` is drawn here from :class:`study.importance.Importance`
rather than with Optuna's ``plot_param_importances``: it shows fANOVA and PED-ANOVA together
(Optuna's plot takes one evaluator per figure), its numbers are the very ones of the report's
table and the parent run's metrics (computed once, with the analysis' guards: at least
:data:`study.importance.MIN_IMPORTANCE_TRIALS` trials, ``surrogate_param``'s per-surrogate range
kept out of fANOVA, which refuses it), and it costs no second fANOVA fit.

These figures are :class:`matplotlib.figure.Figure` objects outside pyplot: no global figure
list, no GUI backend, no style to leave behind.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter, PercentFormatter

from snn.config import METHODS, PAPER_METHOD, PAPER_NAMES
from snn.diagnostics import grad_histogram
from snn.metrics import ENERGY, LAMBDA, TEST_ACC
from study import rounding
from study.analysis import Analysis
from study.importance import Importance
from study.pareto import ARITHMETIC_ONLY, Front
from study.replicates import Configuration
from study.spec import POPULATION
from search_spaces import DIMENSIONS
from study.tracking import metric_per_epoch
from study.trial_rows import FAILED, FULL, RUNNING, dim_value

__all__ = ["CURVES_PLOT_FILE", "DIMENSIONS_PLOT_FILE", "DPI", "GRAD_PLOT_DPI", "GRAD_PLOT_FILE", "IMPORTANCE_PLOT_FILE",
           "LAMBDA_PLOT_FILE", "PARETO_PLOT_FILE", "PLOT_FILES", "REPLICATES_PLOT_FILE", "TOP_CURVES", "curves_figure",
           "dimension_figure", "drawable", "grad_histogram_figure", "importance_figure", "lambda_plot", "pareto_figure",
           "plot_grad_histogram", "replicates_figure", "save"]

GRAD_PLOT_FILE = "first_layer_grad_hist.png"  # a trial's artifact: grad_histogram_figure of its last gradient
DIMENSIONS_PLOT_FILE = "acc_by_dimension.png"
CURVES_PLOT_FILE = "acc_curves.png"
IMPORTANCE_PLOT_FILE = "importance.png"
REPLICATES_PLOT_FILE = "replicates.png"
LAMBDA_PLOT_FILE = "lambda_trajectories.png"
PARETO_PLOT_FILE = "pareto_front.png"
PLOT_FILES: tuple[str, ...] = (DIMENSIONS_PLOT_FILE, CURVES_PLOT_FILE, IMPORTANCE_PLOT_FILE, REPLICATES_PLOT_FILE,
                               LAMBDA_PLOT_FILE, PARETO_PLOT_FILE)
"""Every file of this module's figures in a report's folder."""
TOP_CURVES = 10
"""Learning curves drawn in colour and named in the legend (the best by final test_acc)."""
DPI = 110
"""The resolution of every figure of a report (Optuna's too)."""
_TRAJECTORIES = 5  # the best trials whose learned λ is drawn
_FULL_COLOR, _PAPER_COLOR, _PARTIAL_COLOR = "#4477aa", "#ee6677", "#888888"
_PARTIAL_MARKERS = ("o", "s", "^", "D", "v", "P")
_BOX_MIN = 3  # full-budget values of a category below which its box is left out (the dots stay)


def _figure(figsize: tuple[float, float], **kwargs: Any) -> Figure:
    """A matplotlib Figure outside pyplot: no global figure list to close, no GUI backend to pick."""
    return Figure(figsize=figsize, **kwargs)


def plot_grad_histogram(grad, path: str | os.PathLike, *, title: str = "", bins: int = 50) -> Path:
    """Histogram of the first layer's gradient values (the paper's Fig. 2), written to ``path``."""
    grad_histogram_figure(grad, title=title, bins=bins).savefig(path, dpi=GRAD_PLOT_DPI)
    return Path(path)


GRAD_PLOT_DPI = 100


def grad_histogram_figure(grad, *, title: str = "", bins: int = 50) -> Figure:
    """The figure of :func:`plot_grad_histogram` (the paper's Fig. 2), not written anywhere."""
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
    return fig


# -- the trials a figure draws, and how it names them -------------------------------------------------
def drawable(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with an accuracy to draw: not failed, a finite final test_acc."""
    return [r for r in rows if r["outcome"] != FAILED and r.get("final") is not None and math.isfinite(r["final"])]


def _partial_label(row: dict[str, Any]) -> str:
    """The legend entry of a trial short of its budget: "stopped early (k of K epochs)"."""
    what = "running" if row["outcome"] == RUNNING else "stopped early"
    budget = row.get("budget")
    return f"{what} ({row['epochs']} of {budget if budget else '?'} epochs)"


def _budget_label(rows: Sequence[dict[str, Any]]) -> str:
    budgets = sorted({r.get("budget") for r in rows if r.get("budget")})
    if not budgets:
        return "full budget"
    return f"full budget ({'/'.join(map(str, budgets))} epoch{'' if budgets == [1] else 's'})"


def _not_drawn(rows: Sequence[dict[str, Any]]) -> str:
    """What the plots leave out, for a title: "; 2 failed or diverged not shown"."""
    failed = sum(r["outcome"] == FAILED for r in rows)
    empty = sum(r["outcome"] != FAILED and r.get("final") is None for r in rows)
    parts = [f"{failed} failed or diverged"] * bool(failed) + [f"{empty} without an accuracy yet"] * bool(empty)
    return f"; {' and '.join(parts)} not shown" if parts else ""


# -- accuracy per dimension ---------------------------------------------------------------------------
def _style(row: dict[str, Any], partial_markers: dict[str, str]) -> dict[str, Any]:
    """Scatter style: filled blue for a full budget, hollow grey (marker by epochs reached) otherwise."""
    if row["outcome"] == FULL:
        return {"marker": "o", "facecolors": _FULL_COLOR, "edgecolors": "white", "linewidths": 0.5}
    marker = partial_markers.setdefault(_partial_label(row), _PARTIAL_MARKERS[len(partial_markers)
                                                                              % len(_PARTIAL_MARKERS)])
    return {"marker": marker, "facecolors": "none", "edgecolors": _PARTIAL_COLOR, "linewidths": 1.2}


def _scatter(ax, points: Sequence[tuple[float, float, dict[str, Any]]], markers: dict[str, str]) -> None:
    """One scatter call per style, so each collection is one outcome (full, or one partial label)."""
    groups: dict[str, list[tuple[float, float, dict[str, Any]]]] = {}
    for x, y, row in points:
        groups.setdefault("" if row["outcome"] == FULL else _partial_label(row), []).append((x, y, row))
    for label, pts in groups.items():
        xs, ys, first = [p[0] for p in pts], [p[1] for p in pts], pts[0][2]
        ax.scatter(xs, ys, s=36, zorder=3, label=label or FULL, **_style(first, markers))


def _numeric_panel(ax, dim: str, rows: Sequence[dict[str, Any]], markers: dict[str, str]) -> None:
    points = [(v, r["final"], r) for r in rows if isinstance(v := dim_value(r, dim), float)]
    _scatter(ax, points, markers)
    d = DIMENSIONS.get(dim)
    if d is not None and d.log and points and min(p[0] for p in points) > 0:
        _log_axis(ax, powers_of_two=d.relative)
    if d is not None and d.relative:
        ax.axvline(1.0, color="black", lw=0.8, ls=":", zorder=1)  # the default
    ax.set_xlabel(d.title if d is not None else dim)


def _log_axis(ax, *, powers_of_two: bool) -> None:
    """A log x axis with plain numbers (0.5, 1, 2; not 5×10⁻¹)."""
    ax.set_xscale("log")
    if powers_of_two:
        ax.xaxis.set_major_locator(FixedLocator([2.0 ** k for k in range(-6, 7)]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _categorical_panel(ax, dim: str, rows: Sequence[dict[str, Any]], markers: dict[str, str]) -> None:
    values = {r["trial_id"]: v for r in rows if (v := dim_value(r, dim)) is not None}
    texts = {str(v) for v in values.values()}
    cats = DIMENSIONS[dim].sort(texts) if dim in DIMENSIONS else sorted(texts)
    at = {c: i for i, c in enumerate(cats)}
    full = [[r["final"] for r in rows if r["outcome"] == FULL and str(values.get(r["trial_id"])) == c] for c in cats]
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
        if any(r["outcome"] == FULL for r in rows) else []
    return handles + [Line2D([], [], ls="", marker=m, markerfacecolor="none", markeredgecolor=_PARTIAL_COLOR,
                             markeredgewidth=1.2, label=label) for label, m in markers.items()]


def save(fig: Figure | None, out: Path, name: str) -> Path | None:
    """Write one of our figures as ``out/name`` (nothing for no figure)."""
    if fig is None:
        return None
    fig.savefig(out / name, dpi=DPI)
    return out / name


def dimension_figure(rows: Sequence[dict[str, Any]], dims: Sequence[str]) -> Figure | None:
    """Final test_acc against each dimension, one panel each (see the module docstring)."""
    drawn = drawable(rows)
    if not drawn or not dims:
        return None
    cols = min(3, len(dims))
    nrows = math.ceil(len(dims) / cols)
    fig = _figure((4.3 * cols, 3.3 * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False, sharey=True)
    markers: dict[str, str] = {}  # partial label -> marker, shared by the panels
    for ax, dim in zip(axes.flat, dims):
        numeric = all(isinstance(dim_value(r, dim), float) for r in drawn if dim_value(r, dim) is not None)
        (_numeric_panel if numeric else _categorical_panel)(ax, dim, drawn, markers)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(dims):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"final {TEST_ACC}")
    full, partial = sum(r["outcome"] == FULL for r in drawn), sum(r["outcome"] != FULL for r in drawn)
    short = f", {partial} short of their budget (hollow, grey)" if partial else ""
    fig.suptitle(f"final {TEST_ACC} per dimension: {full} full-budget trial(s){short}{_not_drawn(rows)}",
                 fontsize=10)
    fig.legend(handles=_legend_handles(drawn, markers), loc="outside lower center", ncols=4, fontsize=9,
               frameon=False)
    return fig


# -- learning curves ----------------------------------------------------------------------------------
def _curve_label(row: dict[str, Any]) -> str:
    label = f"{row['trial_id']}  {rounding.metric(row['final'], TEST_ACC)}"
    return label if row["outcome"] == FULL else f"{label}, {_partial_label(row)}"


def curves_figure(rows: Sequence[dict[str, Any]]) -> Figure | None:
    """Test accuracy per epoch: the best :data:`TOP_CURVES` by final test_acc in colour, named (the
    full-budget trials first: an accuracy after fewer epochs is no rival to theirs)."""
    drawn = sorted((r for r in drawable(rows) if r["curve"]), key=lambda r: (r["outcome"] != FULL, -r["final"]))
    if not drawn:
        return None
    top, rest = drawn[:TOP_CURVES], drawn[TOP_CURVES:]
    fig = _figure((9.5, 4.6), layout="constrained")
    ax = fig.add_subplot()
    for r in rest:
        ax.plot(*zip(*r["curve"]), color="#cccccc", lw=0.8, ls="-" if r["outcome"] == FULL else "--", zorder=1)
    cmap = colormaps["tab10"]
    for i, r in enumerate(top):
        ax.plot(*zip(*r["curve"]), color=cmap(i % 10), lw=1.6, marker="o", ms=3.5,
                ls="-" if r["outcome"] == FULL else "--", label=_curve_label(r), zorder=2 + len(top) - i)
    handles, _ = ax.get_legend_handles_labels()
    if rest:
        handles.append(Line2D([], [], color="#cccccc", lw=0.8, label=f"{len(rest)} other trial(s)"))
    if any(r["outcome"] != FULL for r in drawn):
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
def importance_figure(imp: Importance) -> Figure | None:
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


def _mean_ci(c: Configuration) -> str:
    """A configuration's mean and interval, as the comparison's table writes them: 0.9312 [0.9207, 0.9418]."""
    mean, lo, hi = (rounding.metric(v, TEST_ACC) for v in (c.mean, *c.ci))
    return f"{mean} [{lo}, {hi}]"


def replicates_figure(analysis: Analysis) -> Figure | None:
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
    right.set_yticks(range(len(configs)), [_mean_ci(c) for c in reversed(configs)], fontsize=8.5)
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
def lambda_plot(client, rows: list[dict[str, Any]], spec, out: Path) -> Path | None:
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
                    label=f"{r['trial_id']} (test_acc {rounding.metric(r['final'], TEST_ACC)})")
    ax.set_xlim(0, epochs)
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("λ")
    ax.set_title(f"learned λ of the best trials ({spec.scheduler}) and the paper's decay", fontsize=10)
    ax.legend(fontsize=8.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    path = out / LAMBDA_PLOT_FILE
    fig.savefig(path, dpi=DPI)
    return path


# -- the Pareto front (two objectives) ----------------------------------------------------------------
_FRONT_COLOR = _PAPER_COLOR


def pareto_figure(front: Front) -> Figure | None:
    """test_acc against the cost: every full-budget trial a point, the Pareto front highlighted,
    named and joined as a step line (the best accuracy reached at each cost), trials above the
    energy budget hollow beside its line; a log cost axis where the costs span over a decade.
    An energy axis says that the estimate counts arithmetic only. Nothing without points."""
    if not front.points:
        return None
    fig = _figure((8.0, 4.8), layout="constrained")
    ax = fig.add_subplot()
    over = {p.trial_id for p in front.over_budget}
    on = {p.trial_id for p in front.front}
    rest = [p for p in front.points if p.trial_id not in over | on]
    if rest:
        ax.scatter([p.cost for p in rest], [p.test_acc for p in rest], s=30, color=_FULL_COLOR, alpha=0.7, zorder=2,
                   label=f"full-budget trial ({len(rest)})")
    if over:
        ax.scatter([p.cost for p in front.over_budget], [p.test_acc for p in front.over_budget], s=30,
                   facecolors="none", edgecolors=_PARTIAL_COLOR, zorder=2,
                   label=f"above the energy budget ({len(over)})")
        ax.axvline(front.max_cost, color=_PARTIAL_COLOR, ls="--", lw=1, zorder=1, label="energy budget (max_uj)")
    if front.front:
        costs, accs = [p.cost for p in front.front], [p.test_acc for p in front.front]
        ax.step(costs, accs, where="post", color=_FRONT_COLOR, lw=1.6, zorder=3)
        ax.scatter(costs, accs, s=56, color=_FRONT_COLOR, edgecolors="black", linewidths=0.6, zorder=4,
                   label=f"Pareto front ({len(front.front)})")
        for p in front.front:
            ax.annotate(p.trial_id, (p.cost, p.test_acc), xytext=(4, -10), textcoords="offset points", fontsize=7)
    values = [p.cost for p in front.points]
    if min(values) > 0 and max(values) > 10 * min(values):
        _log_axis(ax, powers_of_two=False)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    energy = front.cost == ENERGY
    ax.set_xlabel(f"{ENERGY}: µJ per inference ({ARITHMETIC_ONLY})" if energy else front.cost)
    ax.set_ylabel(f"final {TEST_ACC}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8.5, loc="lower right")
    ax.set_title(f"{TEST_ACC} against {front.cost}: {len(front.points)} full-budget trial(s), "
                 f"{len(front.front)} on the Pareto front", fontsize=10)
    return fig
