"""Define-by-run Optuna search spaces and the presets of shortcut back-propagation studies.

The dimensions themselves (names, ranges, choices, conditions) are declared once in
:mod:`search_spaces._dims`; this module turns a preset, a spec's extra dimensions and its
fixed values into the define-by-run function OptunaSearch calls. The presets:

* ``paper``: the published setting (Eq. 10 with λ₀ = 0.25), repeated with new seeds;
* ``ablation``: Table 1's rows (evolutionary, shortcut, vanilla) in turn, a new seed each round;
* ``full``: the searched dimensions (:func:`search_spaces.searched`), ``branches = "none"``
  (vanilla training) included;
* ``quick``: the same dimensions with fewer choices.

As in Ray's Optuna example, the define-by-run function only calls ``trial.suggest_*`` and
returns a dict of constants; no computation happens there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from search_spaces._dims import DIMENSIONS, dimension, optional, searched, spelled
from snn import registry
from snn.config import METHODS as _METHODS
from snn.config import HEAD_ONLY, TrainConfig

if TYPE_CHECKING:  # optuna is only needed by whoever calls the space; keep spec validation light
    import optuna

METHODS: tuple[str, ...] = tuple(_METHODS)
"""The settings of the paper's ablation (Table 1, :data:`snn.config.METHODS`), the paper's own first."""

PRESETS: tuple[str, ...] = ("paper", "ablation", "full", "quick")
"""Named search presets a spec refers to."""

_HEADS = "branches"  # the dimension that says whether a trial has shortcut heads


def method_setting(method: str, stages: int) -> dict[str, Any]:
    """The hyperparameters of one row of the paper's ablation (Table 1, :data:`snn.config.METHODS`)."""
    if method not in _METHODS:
        raise ValueError(f"method: unknown name {method!r}; choose one of {', '.join(METHODS)}")
    setting = dict(_METHODS[method])
    setting[_HEADS] = spelled(setting[_HEADS], stages)
    return setting


def paper_setting(stages: int | None, dims: Sequence[str] | None = None) -> dict[str, Any]:
    """The paper's published point in ``dims`` (default: :func:`searched`):
    :class:`snn.config.TrainConfig`'s defaults (λ₀ = 0.25, linear, a head after every stage but
    the last, the triangle surrogate), each dimension's ``default_of`` where the default is None
    (the surrogate's own parameter). The branches are spelled for ``stages`` stages (None: as
    TrainConfig holds them, ``"all"``)."""
    defaults = {k: f.default for k, f in TrainConfig.model_fields.items() if f.default_factory is None}
    point = {}
    for name in searched() if dims is None else dims:
        value = dimension(name).value(defaults)
        point[name] = spelled(value, stages) if name == _HEADS and stages is not None else value
    return point


def dims_of(preset: str, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The Optuna parameter names a preset searches (plus ``extra`` optional dimensions)."""
    base = () if _check_preset(preset) in ("paper", "ablation") else searched()
    return tuple(base) + tuple(d for d in extra if d not in base)


def _check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise ValueError(f"search.preset: unknown name {preset!r}; choose one of {', '.join(PRESETS)}")
    return preset


def build_space(preset: str, *, stages: int, extra: Sequence[str] = (),
                fixed: Mapping[str, Any] | None = None, constants: Mapping[str, Any] | None = None,
                seed: int = 0) -> "SearchSpace":
    """Return the define-by-run function of a preset.

    Args:
        preset: One of :data:`PRESETS` (see the module docstring).
        stages: Number of stages of the architecture, which bounds ``branches``.
        extra: Optional dimensions to search as well (from :func:`search_spaces.optional`).
        fixed: Values that replace a dimension: a fixed key is not searched.
        constants: The rest of the trial's configuration, returned unchanged.
        seed: The study's seed; the replicate presets add the trial number to it.

    Returns:
        ``f(trial) -> dict`` of constants for OptunaSearch; the suggested values are
        added to each trial's config by OptunaSearch itself.
    """
    _check_preset(preset)
    bad = [d for d in extra if d not in optional()]
    if bad:
        raise ValueError(f"search.dims: unknown dimension(s) {bad}; choose from {', '.join(optional())}")
    fixed = dict(fixed or {})
    dims = tuple(d for d in dims_of(preset, extra) if d not in fixed)
    return SearchSpace(preset, stages, dims, fixed, dict(constants or {}), seed)


@dataclass(frozen=True)
class SearchSpace:
    """A define-by-run search space; a picklable callable, so Tune can checkpoint the searcher."""

    preset: str
    stages: int
    dims: tuple[str, ...]
    fixed: dict[str, Any]
    constants: dict[str, Any]
    seed: int = 0

    def __call__(self, trial: "optuna.Trial") -> dict[str, Any]:
        """Suggest one trial's hyperparameters (no computation here); return the constants."""
        out = dict(self.constants)
        if self.preset == "paper":
            out.update(paper_setting(self.stages))
            out["seed"] = self.seed + trial.number
        elif self.preset == "ablation":
            method = METHODS[trial.number % len(METHODS)]
            out.update(paper_setting(self.stages))
            out.update(method_setting(method, self.stages))
            out["seed"] = self.seed + trial.number // len(METHODS)
        # what the trial has so far, for the conditions: drawn values over fixed over constants
        known = {_HEADS: TrainConfig.model_fields[_HEADS].default, **out, **self.fixed}
        quick = self.preset == "quick"
        if _HEADS in self.dims:
            known[_HEADS] = DIMENSIONS[_HEADS].suggest(trial, stages=self.stages, quick=quick)
        heads = bool(registry.resolve_branches(known[_HEADS], self.stages))
        for name, dim in DIMENSIONS.items():
            if name == _HEADS or name not in self.dims or (dim.heads_only and not heads):
                # Without a shortcut head, λ₀, its schedule and the loss's reading of the heads mean
                # nothing: not sampled, so a vanilla trial carries no value for them.
                continue
            if dim.depends_on is not None:
                known.setdefault(dim.depends_on, TrainConfig.model_fields[dim.depends_on].default)
            known[name] = dim.suggest(trial, stages=self.stages, quick=quick, drawn=known)
        out.update(self.fixed)
        for k in self.dims:  # suggested values win over constants of the same name
            out.pop(k, None)
        if not heads:
            for k in HEAD_ONLY:
                out.pop(k, None)
        return out


def first_points(preset: str, *, stages: int, extra: Sequence[str] = (),
                 fixed: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The points to enqueue before the search: the paper's setting, in the searched dimensions.

    Empty when the preset searches nothing (``paper`` and ``ablation`` start from the
    paper's setting by construction). A dimension whose range depends on a fixed one keeps
    the fixed one's range: it is not enqueued at the paper's value.
    """
    fixed = dict(fixed or {})
    dims = [d for d in dims_of(preset, extra) if d not in fixed]
    point = paper_setting(stages, [d for d in dims if d in searched()])
    for name in list(point):
        parent = DIMENSIONS[name].depends_on
        if parent is not None and parent not in dims:
            point.pop(name)
    return [point] if point else []


class _Recorder:
    """Stands in for an Optuna trial: records what a define-by-run space suggests."""

    number = 0

    def __init__(self) -> None:
        self.drawn: dict[str, Any] = {}

    def _record(self, name: str, value: Any) -> Any:
        self.drawn[name] = value
        return value

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        return self._record(name, low)

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int:
        return self._record(name, low)

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._record(name, choices[-1])  # the last: for branches, every head, so the dimensions they condition show


def describe(space: SearchSpace) -> dict[str, str]:
    """What ``space`` searches, read off the space itself: each dimension and its range in words.

    A range that depends on another dimension (``depends_on``) is given for each choice of
    that dimension the space draws, or for its fixed value.
    """
    rec = _Recorder()
    space(rec)  # type: ignore[arg-type]
    quick = space.preset == "quick"
    out = {}
    for name in rec.drawn:
        dim = DIMENSIONS[name]
        if dim.depends_on is None:
            out[name] = dim.describe(space.stages, quick=quick)
        elif dim.depends_on in rec.drawn:
            out[name] = dim.describe(space.stages, among=DIMENSIONS[dim.depends_on].options(space.stages, quick=quick))
        else:
            parent = {**space.constants, **space.fixed}.get(
                dim.depends_on, TrainConfig.model_fields[dim.depends_on].default)
            out[name] = dim.describe(space.stages, among=(parent,))
    return out
