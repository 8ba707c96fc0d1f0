"""The trial hyperparameters a study can search: one declaration each.

A :class:`Dimension` carries everything about one hyperparameter, as an Optuna distribution
does for the samplers, the storage and the plots: its name (the one spelling of the spec key,
the Tune config key and the MLflow param), its kind and range or choices, its log scale, the
dimension its range depends on, whether population-based training may perturb it, and its
label and unit. Everything that handles a searched hyperparameter iterates over
:data:`DIMENSIONS` instead of naming it: the Optuna space (:mod:`search_spaces._spaces`), the
spec's ``search.dims`` and ``search.fixed`` (:mod:`study.spec`), the MLflow params
(:mod:`study.params`), the report's columns and per-dimension plots, the MLflow views, the
CLI's tables and PBT's perturbations (:mod:`study.tuner`).

Adding a dimension is one entry here (see docs/decisions.md, "Adding a dimension"). Its name
must be a field of :class:`snn.config.TrainConfig`, which holds the trial's default and the
values a trial accepts; whether it acts only through shortcut heads is the core's fact too
(:data:`snn.config.HEAD_ONLY`: a trial without heads ignores it, so it is not drawn).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from snn import registry
from snn.config import HEAD_ONLY, TrainConfig

__all__ = ["DIMENSIONS", "Dimension", "all_branches", "branch_choices", "dimension", "fixable", "optional",
           "perturbed", "register", "searched", "spelled"]


@dataclass(frozen=True)
class Dimension:
    """One searchable hyperparameter of a trial.

    Args:
        name: Its one spelling: a :class:`snn.config.TrainConfig` field, the spec key, the Tune
            config key and the MLflow param.
        kind: ``float``, ``int`` or ``categorical``.
        low, high: The range of a number (both inclusive, as Optuna's).
        log: Searched (and plotted) on a log scale.
        choices: A categorical dimension's values, or a function of the architecture's number
            of stages that returns them (the branch placements).
        quick: The ``quick`` preset's smaller set of choices (None: the same as ``choices``).
        searched: One of the dimensions the ``full`` and ``quick`` presets search (and the
            report, the views and the CLI show); otherwise a spec switches it on in
            ``search.dims``.
        depends_on: The dimension whose drawn value picks this one's range from ``ranges``.
        ranges: The range for each value of ``depends_on``.
        default_of: The value a trial trains with where its config holds None (the surrogate's
            own parameter); MLflow records that value, on the searched values' axis.
        relative: Plotted as the ratio to ``default_of`` (ranges that differ per choice of
            ``depends_on`` share one axis).
        perturbed: Population-based training may change it during training (uniform, or
            log-uniform where ``log``, in ``low``-``high``).
        binned: Event data are binned into frames once for this value, so it cannot be searched
            on event data.
        order: The sort key of a categorical dimension's values (as MLflow's text) in a plot
            (None: alphabetical).
        label: Its name in plots and console tables (default: ``name``).
        unit: Its unit, where it has one.
        help: One line on what it is, citing the paper's equation.
    """

    name: str
    kind: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | Callable[[int], tuple[Any, ...]] = ()
    quick: tuple[Any, ...] | None = None
    searched: bool = False
    depends_on: str | None = None
    ranges: Mapping[Any, tuple[float, float]] = field(default_factory=dict)
    default_of: Callable[[Mapping[str, Any]], Any] | None = None
    relative: bool = False
    perturbed: bool = False
    binned: bool = False
    order: Callable[[str], Any] | None = None
    label: str = ""
    unit: str = ""
    help: str = ""

    def __post_init__(self) -> None:
        if self.name not in TrainConfig.model_fields:
            raise ValueError(f"dimension {self.name!r}: not a trial parameter (a field of snn.config.TrainConfig)")
        if self.kind == "categorical" and not self.choices:
            raise ValueError(f"dimension {self.name!r}: a categorical dimension needs choices")
        if self.kind != "categorical" and not self.ranges and (self.low is None or self.high is None):
            raise ValueError(f"dimension {self.name!r}: a {self.kind} dimension needs low and high (or ranges)")

    @property
    def heads_only(self) -> bool:
        """Whether it acts only through shortcut heads (:data:`snn.config.HEAD_ONLY`)."""
        return self.name in HEAD_ONLY

    @property
    def title(self) -> str:
        """Its label with its unit: what a plot's axis says."""
        label = self.label or self.name
        return f"{label} ({self.unit})" if self.unit else label

    def options(self, stages: int, *, quick: bool = False) -> tuple[Any, ...]:
        """A categorical dimension's choices on an architecture of ``stages`` stages."""
        if quick and self.quick is not None:
            return self.quick
        return tuple(self.choices(stages)) if callable(self.choices) else tuple(self.choices)

    def bounds(self, drawn: Mapping[str, Any] | None = None) -> tuple[float, float]:
        """A number's range, for the value of ``depends_on`` in ``drawn`` where it has one."""
        if self.depends_on is not None:
            return self.ranges[(drawn or {})[self.depends_on]]
        return float(self.low), float(self.high)  # type: ignore[arg-type]

    def suggest(self, trial: Any, *, stages: int, quick: bool = False, drawn: Mapping[str, Any] | None = None) -> Any:
        """Draw it with Optuna's ``trial.suggest_*`` (no computation: Ray's define-by-run rule)."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.options(stages, quick=quick)))
        lo, hi = self.bounds(drawn)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(lo), int(hi), log=self.log)
        return trial.suggest_float(self.name, lo, hi, log=self.log)

    def sort(self, values: set[str]) -> list[str]:
        """A categorical dimension's values (as text) in the order a plot shows them."""
        return sorted(values, key=self.order)

    def value(self, config: Mapping[str, Any]) -> Any:
        """The value a trial with ``config`` trains with (``default_of`` where the config holds None)."""
        v = config.get(self.name)
        if v is None and self.default_of is not None:
            return self.default_of(config)
        return v

    def describe(self, stages: int, *, quick: bool = False, among: tuple[Any, ...] | None = None) -> str:
        """Its range in words: "one of a, b", "log-uniform in [lo, hi]"; a range that depends on
        another dimension is given for each value in ``among`` (default: all)."""
        if self.kind == "categorical":
            return "one of " + ", ".join(map(str, self.options(stages, quick=quick)))
        scale = "log-uniform" if self.log else "uniform"
        if self.depends_on is not None:
            keys = tuple(self.ranges) if among is None else among
            if len(keys) == 1:
                return f"{scale} in [{self.ranges[keys[0]][0]:g}, {self.ranges[keys[0]][1]:g}]"
            each = "; ".join(f"{k} [{self.ranges[k][0]:g}, {self.ranges[k][1]:g}]" for k in keys)
            return f"{scale} in the drawn {self.depends_on}'s range: {each}"
        what = "integer " if self.kind == "int" else ""
        return f"{what}{scale} in [{self.low:g}, {self.high:g}]"


def branch_choices(stages: int) -> tuple[str, ...]:
    """Every placement of shortcut heads on stages 1..n-1, as strings; ``"none"`` first."""
    idx = range(1, stages)
    subsets = [c for r in range(1, stages) for c in itertools.combinations(idx, r)]
    return ("none",) + tuple(",".join(map(str, c)) for c in subsets)


def all_branches(stages: int) -> str:
    """The paper's placement (a head after every stage but the last) in the search's spelling."""
    return ",".join(str(i) for i in range(1, stages)) or "none"


def spelled(branches: Any, stages: int) -> str:
    """A branch placement in the search's spelling: ``"1,2"``, or ``"none"``."""
    return ",".join(map(str, registry.resolve_branches(branches, stages))) or "none"


def _surrogate_default(config: Mapping[str, Any]) -> float | None:
    return registry.SURROGATE_DEFAULTS.get(config.get("surrogate", TrainConfig.model_fields["surrogate"].default))


# In the order of the columns of tables and views. A dimension another depends on comes before
# it (surrogate before surrogate_param); the space draws the branches first, since whether a
# trial has a shortcut head decides whether it draws the heads-only dimensions.
DIMENSIONS: dict[str, Dimension] = {d.name: d for d in (
    Dimension("lambda0", "float", 0.0, 1.0, searched=True, perturbed=True, label="λ₀",
              help="the balance coefficient's start, λ₀ of Eq. 10"),
    Dimension("schedule", "categorical", choices=registry.SHAPES, quick=("constant", "linear", "cosine"),
              searched=True, help="the shape of λ(i) over training; linear is Eq. 10"),
    Dimension("branches", "categorical", choices=branch_choices, searched=True,
              order=lambda v: (v != "none", v == "all", len(v), v),  # vanilla first, every stage last
              help="the stages that carry a shortcut head (Eq. 6-7); none is vanilla training"),
    Dimension("surrogate", "categorical", choices=registry.SURROGATES, quick=("atan", "sigmoid", "triangle"),
              searched=True, help="the surrogate gradient of the spike (Eq. 4)"),
    # each surrogate's parameter, searched on a log scale around its default
    Dimension("surrogate_param", "float", log=True, searched=True, depends_on="surrogate",
              ranges={"atan": (0.5, 8.0), "rectangle": (0.25, 4.0), "sigmoid": (1.0, 16.0), "tanh": (0.5, 8.0),
                      "triangle": (0.25, 4.0)},
              default_of=_surrogate_default, relative=True, label="surrogate_param ÷ its surrogate's default",
              help="the surrogate's width or steepness (Eq. 4); None: its default"),
    Dimension("timesteps", "categorical", choices=(1, 2, 4, 6), binned=True, label="T",
              help="simulation time steps T (Eq. 1)"),
    Dimension("lr", "float", 1e-3, 3e-2, log=True, perturbed=True, help="AdamW's learning rate"),
    Dimension("weight_decay", "float", 1e-3, 1e-1, log=True, help="AdamW's weight decay"),
    Dimension("loss_mode", "categorical", choices=registry.LOSS_MODES,
              help="how the heads enter the loss: Eq. 10 as printed, or deep supervision"),
    # wide enough to reach networks that never fire (a high threshold, a fast leak) or fire at
    # every step, which the firing-rate guard (snn.guard) stops
    Dimension("tau", "float", 0.05, 1.0, label="τ", help="the LIF membrane's decay factor (Eq. 1)"),
    Dimension("v_threshold", "float", 0.1, 10.0, log=True, label="V_th", help="the LIF firing threshold (Eq. 2)"),
)}
"""Every searchable dimension by name, in the order tables and views show them."""

assert set(DIMENSIONS["surrogate_param"].ranges) == set(registry.SURROGATES)


def register(dim: Dimension) -> Dimension:
    """Add (or replace) a dimension; every consumer reads :data:`DIMENSIONS` when it runs."""
    DIMENSIONS[dim.name] = dim
    return dim


def dimension(name: str) -> Dimension:
    """The dimension called ``name``.

    Raises:
        ValueError: No such dimension (one line listing them).
    """
    try:
        return DIMENSIONS[name]
    except KeyError:
        raise ValueError(f"unknown dimension {name!r}; choose one of {', '.join(DIMENSIONS)}") from None


def searched() -> tuple[str, ...]:
    """The dimensions a full search draws (the ``full`` and ``quick`` presets)."""
    return tuple(n for n, d in DIMENSIONS.items() if d.searched)


def optional() -> tuple[str, ...]:
    """The dimensions a spec may switch on in ``search.dims``, in addition to a preset's."""
    return tuple(n for n, d in DIMENSIONS.items() if not d.searched)


def fixable() -> tuple[str, ...]:
    """The trial parameters ``search.fixed`` may set instead of searching them: every dimension."""
    return tuple(DIMENSIONS)


def perturbed(extra: tuple[str, ...] | list[str] = ()) -> dict[str, Dimension]:
    """What population-based training perturbs: the perturbable dimensions of a full search,
    and of ``extra`` (a spec's ``search.dims``)."""
    return {n: d for n, d in DIMENSIONS.items() if d.perturbed and (d.searched or n in extra)}
