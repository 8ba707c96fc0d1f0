"""Optuna's views of a study in its report: parallel coordinates, slice and contour plots of
the COMPLETE trials of its Optuna storage (:mod:`optuna.visualization.matplotlib`), each left
out with its reason where the study has no storage or too few trials or dimensions. The
contour grid takes the dimensions that took 2 or more values in those trials (over one value
Optuna draws nothing and logs a warning for every pair of the grid), and names those it left out.

Optuna draws through pyplot and applies the ggplot style sheet globally, so each figure is
made inside :func:`matplotlib.rc_context` and :func:`warnings.catch_warnings`, and every
pyplot figure it opened is closed once saved: no pyplot state or style is left behind.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from snn.config import one_line
from snn.metrics import TEST_ACC
from study.figures import DPI
from study.folder import OPTUNA_FILE, StudyFolder
from study.importance import Importance
from search_spaces import DIMENSIONS
from study.trial_rows import columns

__all__ = ["CONTOUR_PLOT_FILE", "PARALLEL_PLOT_FILE", "PLOT_FILES", "SLICE_PLOT_FILE", "optuna_plots"]

PARALLEL_PLOT_FILE = "parallel_coordinates.png"
SLICE_PLOT_FILE = "slice.png"
CONTOUR_PLOT_FILE = "contour.png"
PLOT_FILES = (PARALLEL_PLOT_FILE, SLICE_PLOT_FILE, CONTOUR_PLOT_FILE)
_CONTOUR_PARAMS = 3  # at most this many dimensions in Optuna's contour grid


def _load_optuna(folder: StudyFolder) -> tuple[Any, str | None]:
    """The study's Optuna study, or None and why there is none."""
    try:
        return folder.optuna_study(), None
    except FileNotFoundError:
        return None, f"the study folder has no Optuna storage (`{OPTUNA_FILE}`; a pbt or pb2 study has none)"
    except Exception as e:  # no such study, a damaged or foreign file, a server down: the rest of the report stands
        return None, f"the Optuna storage cannot be read ({type(e).__name__}: {one_line(e, 160)})"


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
            fig.savefig(path, dpi=DPI, bbox_inches="tight")
        finally:
            for number in set(plt.get_fignums()) - before:  # Optuna's figures, drawn or half-drawn
                plt.close(number)


def _relative() -> list[str]:
    return [n for n, d in DIMENSIONS.items() if d.relative]


def _varied(trials: list, name: str) -> bool:
    """Whether ``name`` took at least 2 values among ``trials`` (Optuna draws no contour over one value:
    it logs a warning for every pair of the grid that holds it)."""
    return len({repr(t.params[name]) for t in trials if name in t.params}) >= 2


def _contour_params(complete: list, importance: Importance) -> tuple[list[str], list[str]]:
    """Up to :data:`_CONTOUR_PARAMS` dimensions for the contour grid, the most important first, and
    the dimensions left out because the plotted trials gave them a single value. A ``relative``
    dimension is left out too (its range differs per choice of the one it depends on:
    acc_by_dimension shows it relative)."""
    names = sorted({p for t in complete for p in t.params} - set(_relative()))
    single = [d for d in names if not _varied(complete, d)]
    rank = {**{d: v for d, v in importance.ped_anova.items()}, **importance.fanova}
    shown = columns()
    order = sorted((d for d in names if d not in single),
                   key=lambda d: (-rank.get(d, -1.0), shown.index(d) if d in shown else 99, d))
    return order[:_CONTOUR_PARAMS], single


def _one_value(single: list[str]) -> str:
    """The dimensions the plotted trials gave one value each, in words."""
    return ", ".join(f"`{d}`" for d in single) + " (a single value in the complete trials)"


def optuna_plots(folder: StudyFolder, importance: Importance, out: Path) -> tuple[list[Path], list[str]]:
    """Optuna's parallel coordinates, slice and contour plots of the COMPLETE trials, and a line
    for each one left out."""
    study, why = _load_optuna(folder)
    names = "parallel coordinates, slice and contour plots"
    if study is None:
        return [], [f"Optuna's {names} are left out: {why}."]
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ov

    # the trials Optuna's plots draw: COMPLETE, with a finite objective (the first of several)
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.values and math.isfinite(t.values[0])]
    params = sorted({p for t in complete for p in t.params})
    multi = len(study.directions) > 1
    kw: dict[str, Any] = {"target_name": TEST_ACC, **({"target": lambda t: t.values[0]} if multi else {})}
    if not params:
        return [], [f"Optuna's {names} are left out: the study searches no dimension."]
    contour, single = _contour_params(complete, importance)
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
            notes.append(f"Optuna's {what} is left out: it needs at least 2 dimensions that took 2 or more values "
                         f"(besides {', '.join(_relative())}), the study has {len(contour)}"
                         + (f"; left out: {_one_value(single)}." if single else "."))
        else:
            try:
                _optuna_figure(draw, out / name, size, touch)
                files.append(out / name)
            except Exception as e:  # Optuna refuses this study's trials: the rest of the report stands
                notes.append(f"Optuna's {what} is left out: {type(e).__name__}: {one_line(e)}.")
    if CONTOUR_PLOT_FILE in {f.name for f in files} and single:
        notes.append(f"Optuna's contour plot leaves out {_one_value(single)}.")
    left = len(study.trials) - len(complete)
    if files and left:
        notes.append(f"Optuna's plots show its {len(complete)} COMPLETE trials; {left} pruned (stopped early), "
                     f"failed or running are not in them.")
    return files, notes
