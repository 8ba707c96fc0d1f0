"""Define-by-run Optuna search spaces for shortcut back-propagation studies.

The four dimensions the project searches are named as everywhere else in the project
(spec key, Tune config key, MLflow param):

* ``lambda0``: λ₀ of Eq. 10, a float in [0, 1];
* ``schedule``: the shape of λ(i) (:data:`snn.registry.SHAPES`; ``linear`` is Eq. 10);
* ``branches``: the stages carrying a shortcut head, as a comma-separated string such as
  ``"1,2,3"``, or ``"none"`` (vanilla training: reachable by the search);
* ``surrogate``: a name from :data:`snn.registry.SURROGATES`, with ``surrogate_param`` as a
  conditional dimension whose range depends on the surrogate.

Optional dimensions a spec may switch on: ``timesteps``, ``lr``, ``weight_decay``,
``loss_mode``, and the neuron's ``tau`` and ``v_threshold`` (:data:`NEURON_RANGES`, wide
enough to reach silent networks, which the firing-rate guard of :mod:`snn.guard` stops).

As in Ray's Optuna example, the define-by-run function only calls ``trial.suggest_*``
and returns a dict of constants; no computation happens there.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from snn import registry
from snn.config import METHODS as _METHODS
from snn.config import HEAD_ONLY, TrainConfig

if TYPE_CHECKING:  # optuna is only needed by whoever calls the space; keep spec validation light
    import optuna

# Ranges of each surrogate's parameter, searched on a log scale around its default.
SURROGATE_RANGES: dict[str, tuple[float, float]] = {
    "atan": (0.5, 8.0),
    "rectangle": (0.25, 4.0),
    "sigmoid": (1.0, 16.0),
    "tanh": (0.5, 8.0),
    "triangle": (0.25, 4.0),
}
assert set(SURROGATE_RANGES) == set(registry.SURROGATES)

NEURON_RANGES: dict[str, tuple[float, float]] = {"tau": (0.05, 1.0), "v_threshold": (0.1, 10.0)}
"""Ranges of the neuron's dimensions (Eq. 1-2): τ's factor uniform, the threshold log-uniform."""

SEARCHED: tuple[str, ...] = ("lambda0", "schedule", "branches", "surrogate")
"""The four dimensions of a full search (``surrogate_param`` goes with ``surrogate``)."""

OPTIONAL: tuple[str, ...] = ("timesteps", "lr", "weight_decay", "loss_mode", "tau", "v_threshold")
"""Dimensions a spec may switch on in addition to a preset's."""

FIXABLE: tuple[str, ...] = SEARCHED + ("surrogate_param",) + OPTIONAL
"""The trial parameters a spec's ``search.fixed`` may set instead of searching them."""

METHODS: tuple[str, ...] = tuple(_METHODS)
"""The settings of the paper's ablation (Table 1, :data:`snn.config.METHODS`), the paper's own first."""

PRESETS: tuple[str, ...] = ("paper", "ablation", "full", "quick")
"""Named search presets a spec refers to."""

# Choices of the quick preset: a small space a laptop explores in a few trials.
_QUICK = {"schedule": ("constant", "linear", "cosine"), "surrogate": ("atan", "sigmoid", "triangle")}
_TIMESTEPS = (1, 2, 4, 6)


def branch_choices(stages: int) -> list[str]:
    """Every placement of shortcut heads on stages 1..n-1, as strings; ``"none"`` first."""
    idx = range(1, stages)
    subsets = [c for r in range(1, stages) for c in itertools.combinations(idx, r)]
    return ["none"] + [",".join(map(str, c)) for c in subsets]


def all_branches(stages: int) -> str:
    """The paper's placement (a head after every stage but the last) in the search's spelling."""
    return ",".join(str(i) for i in range(1, stages)) or "none"


def _spelled(branches: Any, stages: int) -> str:
    """A branch placement in the search's spelling: ``"1,2"``, or ``"none"``."""
    return ",".join(map(str, registry.resolve_branches(branches, stages))) or "none"


def method_setting(method: str, stages: int) -> dict[str, Any]:
    """The hyperparameters of one row of the paper's ablation (Table 1, :data:`snn.config.METHODS`)."""
    if method not in _METHODS:
        raise ValueError(f"method: unknown name {method!r}; choose one of {', '.join(METHODS)}")
    setting = dict(_METHODS[method])
    setting["branches"] = _spelled(setting["branches"], stages)
    return setting


def paper_setting(stages: int, dims: Sequence[str] = SEARCHED + ("surrogate_param",)) -> dict[str, Any]:
    """The paper's published point in ``dims``: :class:`snn.config.TrainConfig`'s defaults
    (λ₀ = 0.25, linear, a head after every stage but the last, the triangle surrogate with
    its default parameter)."""
    d = TrainConfig.model_fields
    surrogate = d["surrogate"].default
    point = {"lambda0": d["lambda0"].default, "schedule": d["schedule"].default,
             "branches": _spelled(d["branches"].default, stages), "surrogate": surrogate,
             "surrogate_param": registry.SURROGATE_DEFAULTS[surrogate]}
    return {k: v for k, v in point.items() if k in dims}


def dims_of(preset: str, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The Optuna parameter names a preset searches (plus ``extra`` optional dimensions)."""
    base = {"paper": (), "ablation": (), "full": SEARCHED, "quick": SEARCHED}[_check_preset(preset)]
    out = list(base)
    if "surrogate" in out:
        out.append("surrogate_param")
    return tuple(out) + tuple(d for d in extra if d not in out)


def _check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise ValueError(f"search.preset: unknown name {preset!r}; choose one of {', '.join(PRESETS)}")
    return preset


def build_space(preset: str, *, stages: int, extra: Sequence[str] = (),
                fixed: Mapping[str, Any] | None = None, constants: Mapping[str, Any] | None = None,
                seed: int = 0) -> "SearchSpace":
    """Return the define-by-run function of a preset.

    Args:
        preset: One of :data:`PRESETS`: ``paper`` (the published setting, repeated with
            new seeds), ``ablation`` (Table 1: evolutionary, shortcut, vanilla in turn,
            a new seed each round), ``full`` (the four dimensions), ``quick`` (the four
            dimensions with fewer choices).
        stages: Number of stages of the architecture, which bounds ``branches``.
        extra: Optional dimensions to search as well (from :data:`OPTIONAL`).
        fixed: Values that replace a dimension: a fixed key is not searched.
        constants: The rest of the trial's configuration, returned unchanged.
        seed: The study's seed; the replicate presets add the trial number to it.

    Returns:
        ``f(trial) -> dict`` of constants for OptunaSearch; the suggested values are
        added to each trial's config by OptunaSearch itself.
    """
    _check_preset(preset)
    bad = [d for d in extra if d not in OPTIONAL]
    if bad:
        raise ValueError(f"search.dims: unknown dimension(s) {bad}; choose from {', '.join(OPTIONAL)}")
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
        dims, fixed, stages, quick = self.dims, self.fixed, self.stages, self.preset == "quick"
        out = dict(self.constants)
        if self.preset == "paper":
            out.update(paper_setting(stages))
            out["seed"] = self.seed + trial.number
        elif self.preset == "ablation":
            method = METHODS[trial.number % len(METHODS)]
            out.update(paper_setting(stages))
            out.update(method_setting(method, stages))
            out["seed"] = self.seed + trial.number // len(METHODS)
        if "branches" in dims:
            branches = trial.suggest_categorical("branches", branch_choices(stages))
        else:
            branches = fixed.get("branches", out.get("branches", TrainConfig.model_fields["branches"].default))
        # Without a shortcut head, λ₀, its schedule and the loss's reading of the heads mean
        # nothing: not sampled, so a vanilla trial carries no value for them.
        heads = bool(registry.resolve_branches(branches, stages))
        if "lambda0" in dims and heads:
            trial.suggest_float("lambda0", 0.0, 1.0)
        if "schedule" in dims and heads:
            trial.suggest_categorical("schedule", list(_QUICK["schedule"] if quick else registry.SHAPES))
        if "surrogate" in dims:
            name = trial.suggest_categorical("surrogate", list(_QUICK["surrogate"] if quick else registry.SURROGATES))
        else:
            name = fixed.get("surrogate", out.get("surrogate", TrainConfig.model_fields["surrogate"].default))
        if "surrogate_param" in dims:
            lo, hi = SURROGATE_RANGES[name]
            trial.suggest_float("surrogate_param", lo, hi, log=True)
        if "timesteps" in dims:
            trial.suggest_categorical("timesteps", list(_TIMESTEPS))
        if "lr" in dims:
            trial.suggest_float("lr", 1e-3, 3e-2, log=True)
        if "weight_decay" in dims:
            trial.suggest_float("weight_decay", 1e-3, 1e-1, log=True)
        if "loss_mode" in dims and heads:
            trial.suggest_categorical("loss_mode", list(registry.LOSS_MODES))
        # The neuron: wide enough to reach networks that never fire (a high threshold, a fast
        # leak) or fire at every step, which the firing-rate guard stops (snn.guard).
        if "tau" in dims:
            trial.suggest_float("tau", *NEURON_RANGES["tau"])
        if "v_threshold" in dims:
            trial.suggest_float("v_threshold", *NEURON_RANGES["v_threshold"], log=True)
        out.update(fixed)
        for k in dims:  # suggested values win over constants of the same name
            out.pop(k, None)
        if not heads:
            for k in HEAD_ONLY:
                out.pop(k, None)
        return out


def first_points(preset: str, *, stages: int, extra: Sequence[str] = (),
                 fixed: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The points to enqueue before the search: the paper's setting, in the searched dimensions.

    Empty when the preset searches nothing (``paper`` and ``ablation`` start from the
    paper's setting by construction).
    """
    fixed = dict(fixed or {})
    dims = [d for d in dims_of(preset, extra) if d not in fixed]
    point = paper_setting(stages, dims)
    if "surrogate_param" in point and "surrogate" not in dims:
        point.pop("surrogate_param")
    return [point] if point else []


class _Recorder:
    """Stands in for an Optuna trial: records what a define-by-run space suggests."""

    number = 0

    def __init__(self) -> None:
        self.dims: dict[str, tuple] = {}

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        self.dims[name] = ("float", low, high, log)
        return low

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        self.dims[name] = ("categorical", tuple(choices))
        return choices[-1]  # the last: for branches, every head, so the dimensions they condition show


def describe(space: SearchSpace) -> dict[str, str]:
    """What ``space`` searches, read off the space itself: each dimension and its range.

    ``surrogate_param``'s range depends on the surrogate the trial draws; it is given for
    each choice.
    """
    rec = _Recorder()
    space(rec)  # type: ignore[arg-type]
    out = {}
    for name, dim in rec.dims.items():
        if dim[0] == "categorical":
            out[name] = "one of " + ", ".join(map(str, dim[1]))
        else:
            out[name] = f"{'log-uniform' if dim[3] else 'uniform'} in [{dim[1]:g}, {dim[2]:g}]"
    if "surrogate_param" in rec.dims and "surrogate" in rec.dims:
        ranges = "; ".join(f"{n} [{SURROGATE_RANGES[n][0]:g}, {SURROGATE_RANGES[n][1]:g}]"
                           for n in rec.dims["surrogate"][1])
        out["surrogate_param"] = f"log-uniform in the drawn surrogate's range: {ranges}"
    return out
