"""The Pareto front of a study with two objectives: the trials no other trial beats on both.

A study whose ``objective`` names a cost beside ``test_acc`` (``test_acc+energy``,
``test_acc+firing_rate``: :meth:`study.spec.StudySpec.objectives`) has no single best trial.
Its answer is the front: the full-budget trials that no other full-budget trial *dominates*,
that is, matches on both objectives and beats on one (a higher ``test_acc`` or a lower
cost). Trials with the same values on both are all on the front (neither dominates the
other). A trial whose energy is above the spec's budget (``energy: {max_uj: ...}``) breaks
the search's constraint and is not on the front, as Optuna's ``Study.best_trials`` leaves out
the trials that break a constraint.

:func:`front_of_results` reads the front from Tune's results at the end of a study,
:func:`front_of_rows` from the study's trial runs in MLflow (:mod:`study.trial_rows`, for a
report); both keep only the trials that trained their full budget, and both filter with
:func:`non_dominated`. :func:`record_front` tags the front's runs ``pareto=true`` in MLflow and
logs the set on the parent run (:func:`study.tracking.tag_pareto_front`); the report draws it
(:func:`study.figures.pareto_figure`) and tabulates it (:func:`markdown_lines`), the console
names it (:meth:`Front.lines`).

Why a filter of our own and not ``Study.best_trials``: Optuna's front is that of the trials
in an Optuna study, with the values the searcher told it; the front here is over the study's
record (Tune's results, MLflow's runs), keyed by Tune's trial id, and a throwaway Optuna
study built for it would print Optuna's "A new study created" line on the console. With two
objectives the exact filter is a sort and one sweep.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from search_spaces import DIMENSIONS
from snn.metrics import ENERGY, ENERGY_RATIO, FIRING_RATE, TEST_ACC, ran_full_budget
from study import rounding
from study.markdown import table
from study.tracking import log_pareto_set, metric_per_epoch, tag_pareto_front
from study.trial_rows import FULL, columns, typed

__all__ = ["ARITHMETIC_ONLY", "Front", "Point", "front_of_results", "front_of_rows", "markdown_lines",
           "non_dominated", "record_front"]

_UNITS = {ENERGY: "µJ", FIRING_RATE: ""}
ARITHMETIC_ONLY = "arithmetic only, no memory traffic"
"""What the energy estimate counts (:mod:`snn.energy`), said wherever the figure is shown."""


@dataclass(frozen=True)
class Point:
    """One full-budget trial with a value of both objectives.

    Attributes:
        config: The searched dimensions (:func:`study.trial_rows.columns`) with the values the
            trial trained with (:meth:`search_spaces.Dimension.value`: a surrogate's own
            parameter where the config holds None).
        energy_ratio: Its energy over the non-spiking network's (energy studies; None where
            not reported).
        run_id: Its MLflow run, where read from MLflow.
    """

    trial_id: str
    test_acc: float
    cost: float
    config: dict[str, Any] = field(default_factory=dict)
    energy_ratio: float | None = None
    run_id: str | None = None


def non_dominated(values: Sequence[tuple[float, float]]) -> list[int]:
    """The indices of the (accuracy, cost) pairs that no other pair dominates, accuracy maximised
    and cost minimised; cheapest first (equal pairs in the order given).

    A pair dominates another that it matches on both values and beats on one; equal pairs do
    not dominate each other, so both are kept. Values must be finite.
    """
    order = sorted(range(len(values)), key=lambda i: (values[i][1], -values[i][0], i))
    kept: list[int] = []
    best, setter = -math.inf, None  # the highest accuracy at a lower cost so far, and its pair
    for i in order:
        if values[i][0] > best:
            kept.append(i)
            best, setter = values[i][0], values[i]
        elif values[i] == setter:  # the same pair as the one kept last: not dominated by it
            kept.append(i)
    return kept


@dataclass(frozen=True)
class Front:
    """A study's Pareto front and the trials it was chosen from.

    Attributes:
        cost: The minimised objective: :data:`snn.metrics.ENERGY` or ``FIRING_RATE``.
        points: Every full-budget trial with finite values of both objectives, best test_acc first.
        front: The non-dominated trials within the budget, cheapest first.
        max_cost: The spec's energy budget (µJ) where it has one.
        no_cost: Full-budget trials without a finite cost (not ranked).
    """

    cost: str
    points: tuple[Point, ...]
    front: tuple[Point, ...]
    max_cost: float | None = None
    no_cost: int = 0

    @property
    def over_budget(self) -> tuple[Point, ...]:
        """The points above the energy budget (infeasible, never on the front)."""
        return tuple(p for p in self.points if self.max_cost is not None and p.cost > self.max_cost)

    @property
    def most_accurate(self) -> Point | None:
        """The front's most accurate trial (the cheapest of equals); None for an empty front."""
        return max(self.front, key=lambda p: (p.test_acc, -p.cost)) if self.front else None

    def records(self) -> list[dict[str, Any]]:
        """The front as plain records (full precision), cheapest first: trial_id, run_id,
        test_acc, the cost under its metric name, energy_ratio (energy studies), config."""
        out = []
        for p in self.front:
            record = {"trial_id": p.trial_id, "run_id": p.run_id, TEST_ACC: p.test_acc, self.cost: p.cost}
            if self.cost == ENERGY:
                record[ENERGY_RATIO] = p.energy_ratio
            out.append({**record, "config": p.config})
        return out

    def json(self) -> str:
        """:meth:`records` with the objectives, as the parent run's :data:`study.tracking.PARETO_ARTIFACT`."""
        return json.dumps({"objectives": {TEST_ACC: "max", self.cost: "min"}, "max_uj": self.max_cost,
                           "candidates": len(self.points), "front": self.records()}, indent=1, default=str)

    def lines(self) -> list[str]:
        """The console's closing lines: the front's size, then one line per trial on it."""
        head = (f"Pareto front ({TEST_ACC} up, {self.cost} down): {len(self.front)} of {len(self.points)} "
                f"full-budget trial(s)")
        if not self.front:
            why = f" within the energy budget of {rounding.metric(self.max_cost, ENERGY)} µJ" if self.over_budget else ""
            return [head + f"; none{why}"]
        out = [head + ", cheapest first:"]
        for p in self.front:
            config = ", ".join(f"{k}={_config_value(v, k)}" for k, v in p.config.items())
            out.append(f"  trial {p.trial_id}: {TEST_ACC} {_percent(p.test_acc)}, {self._cost_text(p)} ({config})")
        return out

    def _cost_text(self, p: Point) -> str:
        text = f"{self.cost} {rounding.metric(p.cost, self.cost)}" + (f" {_UNITS[self.cost]}" if _UNITS.get(self.cost) else "")
        if self.cost == ENERGY and p.energy_ratio is not None and math.isfinite(p.energy_ratio):
            text += f" ({rounding.metric(p.energy_ratio, ENERGY_RATIO)}× the non-spiking network's)"
        return text


# -- numbers as they mean --------------------------------------------------------------------------
def _percent(acc: float) -> str:
    return f"{100 * acc:.1f} %"


def _config_value(v: Any, dim: str) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    return rounding.value(v, dim)


# -- the front, from Tune's results or MLflow's runs -----------------------------------------------
def _config(config: dict[str, Any], extra: Sequence[str]) -> dict[str, Any]:
    """The searched dimensions' values a trial trained with."""
    return {k: DIMENSIONS[k].value(config) for k in columns(extra) if k in config}


def _cost(spec) -> str:
    """The study's minimised objective (its second)."""
    (_, _), (cost, _) = spec.objectives()
    return cost


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _front(spec, candidates: Iterable[tuple[str, float, float | None, float | None, dict[str, Any], str | None]]
           ) -> Front:
    """The front of (trial_id, test_acc, cost, energy_ratio, config, run_id) candidates."""
    cost = _cost(spec)
    points, no_cost = [], 0
    for trial_id, acc, value, ratio, config, run_id in candidates:
        if value is None:
            no_cost += 1
            continue
        points.append(Point(trial_id, acc, value, config, ratio, run_id))
    points.sort(key=lambda p: (-p.test_acc, p.cost, p.trial_id))
    budget = spec.energy.max_uj if cost == ENERGY else None
    feasible = [p for p in points if budget is None or p.cost <= budget]
    front = [feasible[i] for i in non_dominated([(p.test_acc, p.cost) for p in feasible])]
    return Front(cost, tuple(points), tuple(front), budget, no_cost)


def front_of_results(results: Iterable[Any], spec) -> Front:
    """The front of Tune's results of the trials that trained their full budget
    (:func:`study.finish.full_budget`), by each trial's last result.

    Args:
        results: Tune's results (:class:`ray.tune.Result`), full-budget trials only.
        spec: The study's spec (:class:`study.spec.StudySpec`) with two objectives.
    """
    cost = _cost(spec)
    return _front(spec, ((r.metrics.get("trial_id", ""), float(r.metrics[TEST_ACC]), _finite(r.metrics.get(cost)),
                          _finite(r.metrics.get(ENERGY_RATIO)), _config(dict(r.config), spec.search.dims), None)
                         for r in results))


def front_of_rows(client, rows: Sequence[dict[str, Any]], spec) -> Front:
    """The front of the study's trial runs (:func:`study.trial_rows.read_rows`) that trained
    their full budget: each run's cost and energy ratio at the epoch of its final test_acc,
    as :func:`study.tracking.metric_per_epoch` reads them.

    Args:
        client: An :class:`mlflow.MlflowClient` of the study's store.
        rows: The study's trial rows.
        spec: The study's spec with two objectives.
    """
    cost = _cost(spec)

    def at_last(run_id: str, key: str, epoch: int) -> float | None:
        return _finite(dict(metric_per_epoch(client, run_id, key)).get(epoch))

    full = [r for r in rows if r["outcome"] == FULL and r["curve"] and r["budget"]
            and ran_full_budget(r["curve"][-1][0], r["budget"])]
    return _front(spec, ((r["trial_id"], float(r["final"]), at_last(r["run_id"], cost, r["curve"][-1][0]),
                          at_last(r["run_id"], ENERGY_RATIO, r["curve"][-1][0]) if cost == ENERGY else None,
                          _config(typed(r["params"]), spec.search.dims), r["run_id"]) for r in full))


# -- where the front goes --------------------------------------------------------------------------
def record_front(folder, front: Front) -> Front:
    """Tag the front's trial runs ``pareto=true`` (:func:`study.tracking.tag_pareto_front`) and
    log the set on the study's parent run (:func:`study.tracking.log_pareto_set`); recorded
    again, it changes nothing that is already so. Returns the front with its MLflow run ids.

    Raises:
        Exception: Whatever the tracking store raised (it is down).
    """
    runs = tag_pareto_front(folder.tracking_uri, folder.parent_run_id, folder.spec.name,
                            [p.trial_id for p in front.front])
    front = replace(front, front=tuple(replace(p, run_id=runs.get(p.trial_id, p.run_id)) for p in front.front))
    log_pareto_set(folder.tracking_uri, folder.parent_run_id, front.json(), len(front.front))
    return front


def markdown_lines(front: Front, spec) -> list[str]:
    """The report's section on the front: a sentence, and the Pareto set as a table
    (test_acc in % to 1 decimal, the cost to 3 significant digits)."""
    energy = front.cost == ENERGY
    lines = [f"{len(front.front)} of {len(front.points)} full-budget trial(s) are on the Pareto front of "
             f"{TEST_ACC} (maximised) and {front.cost} (minimised): no other trial is as good on both and better "
             f"on one. Cheapest first."]
    if energy:
        costs = spec.energy.costs()
        lines[-1] += (f" {ENERGY} is the energy of one inference in µJ at `{spec.energy.name}` ({costs.mac_pj:g} pJ "
                      f"per multiply-accumulate, {costs.ac_pj:g} pJ per accumulate): it counts {ARITHMETIC_ONLY}; "
                      f"the ratio compares it with the same network run as a non-spiking one.")
    if front.over_budget:
        lines[-1] += (f" {len(front.over_budget)} trial(s) above the energy budget of {rounding.metric(front.max_cost, ENERGY)} µJ "
                      f"are not on it.")
    if front.no_cost:
        lines[-1] += f" {front.no_cost} full-budget trial(s) reported no {front.cost} and are not ranked."
    if not front.front:
        return lines
    dims = list(dict.fromkeys(k for p in front.front for k in p.config))
    unit = f" ({_UNITS[front.cost]})" if _UNITS.get(front.cost) else ""
    headers = ["trial", f"{TEST_ACC} (%)", f"{front.cost}{unit}", *(["× non-spiking"] if energy else []), *dims]
    rows = [[p.trial_id, f"{100 * p.test_acc:.1f}", rounding.metric(p.cost, front.cost),
             *([rounding.metric(p.energy_ratio, ENERGY_RATIO)] if energy else []),
             *(_config_value(p.config[k], k) if k in p.config else "" for k in dims)] for p in front.front]
    return lines + [""] + table(headers, rows)
