"""The Pareto front of a study with two objectives (study/pareto.py, its MLflow tags in
study/tracking/_pareto.py, its plot in study/figures.py): checked against a brute-force
dominance test on random points with ties; then (slow) a ``test_acc+energy`` study on digits
run to its front, in MLflow and in the report."""

from __future__ import annotations

import itertools
import json
import random
from types import SimpleNamespace

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from snn.metrics import ENERGY, ENERGY_RATIO, FIRING_RATE, TEST_ACC
from study import figures
from study.pareto import ARITHMETIC_ONLY, Front, Point, front_of_results, markdown_lines, non_dominated, show_value
from study.spec import quickstart_spec


def _dominated(p: tuple[float, float], q: tuple[float, float]) -> bool:
    """q dominates p: accuracy (first) at least p's, cost (second) at most p's, one of them strictly."""
    return q[0] >= p[0] and q[1] <= p[1] and (q[0] > p[0] or q[1] < p[1])


def _brute_force(values: list[tuple[float, float]]) -> set[int]:
    return {i for i, p in enumerate(values) if not any(_dominated(p, q) for q in values)}


@pytest.mark.parametrize("seed", range(40))
def test_front_is_the_brute_force_non_dominated_set_with_ties(seed):
    rng = random.Random(seed)
    n = rng.randint(0, 30)
    # a coarse grid: many equal accuracies, equal costs and duplicate points
    values = [(rng.randint(0, 6) / 10, rng.randint(1, 6) * 0.5) for _ in range(n)]
    kept = non_dominated(values)
    assert set(kept) == _brute_force(values) and len(kept) == len(set(kept))
    costs = [values[i][1] for i in kept]
    assert costs == sorted(costs)  # cheapest first


def test_front_of_continuous_points_and_edge_cases():
    rng = random.Random(7)
    values = [(rng.random(), rng.lognormvariate(0, 2)) for _ in range(300)]
    assert set(non_dominated(values)) == _brute_force(values)
    assert non_dominated([]) == []
    assert non_dominated([(0.5, 1.0)]) == [0]
    assert non_dominated([(0.5, 1.0)] * 3) == [0, 1, 2]  # equal points: none dominates another
    # same accuracy, cheaper wins; same cost, more accurate wins
    assert non_dominated([(0.9, 2.0), (0.9, 1.0), (0.8, 1.0), (0.95, 3.0)]) == [1, 3]


# -- the front of a study's trials -----------------------------------------------------------------
def _spec(objective: str = "test_acc+energy", **energy):
    return quickstart_spec({"objective": objective, **({"energy": energy} if energy else {})})


def _result(trial_id: str, acc: float, energy: float | None, ratio: float = 0.5, **config) -> SimpleNamespace:
    metrics = {"trial_id": trial_id, TEST_ACC: acc, ENERGY_RATIO: ratio, FIRING_RATE: energy}
    if energy is not None:
        metrics[ENERGY] = energy
    return SimpleNamespace(metrics=metrics, config={"lambda0": 0.25, "schedule": "linear", "branches": "1,2",
                                                    "surrogate": "atan", "surrogate_param": None, "epochs": 3,
                                                    **config})


RESULTS = [_result("a", 0.90, 0.020), _result("b", 0.95, 0.050), _result("c", 0.85, 0.030),  # c: dominated by a
           _result("d", 0.97, 0.400, lambda0=0.5), _result("e", 0.90, 0.020),  # e: a's twin
           _result("f", 0.99, None)]  # no energy: not ranked


def test_front_of_tune_results_keeps_twins_and_names_the_searched_values():
    front = front_of_results(RESULTS, _spec())
    assert front.cost == ENERGY and front.no_cost == 1 and len(front.points) == 5
    assert [p.trial_id for p in front.front] == ["a", "e", "b", "d"]  # cheapest first; a and e are equal
    a = front.front[0]
    # the values it trained with: the surrogate's own parameter where the config holds None (atan: 2)
    assert a.config == {"lambda0": 0.25, "schedule": "linear", "branches": "1,2", "surrogate": "atan",
                        "surrogate_param": 2.0}
    assert front.most_accurate.trial_id == "d"
    records = json.loads(front.json())
    assert records["objectives"] == {TEST_ACC: "max", ENERGY: "min"} and records["candidates"] == 5
    assert [r["trial_id"] for r in records["front"]] == ["a", "e", "b", "d"]
    assert records["front"][3][ENERGY] == 0.4 and records["front"][3][ENERGY_RATIO] == 0.5


def test_trials_above_the_energy_budget_are_not_on_the_front():
    front = front_of_results(RESULTS, _spec(max_uj=0.1))
    assert [p.trial_id for p in front.front] == ["a", "e", "b"]
    assert [p.trial_id for p in front.over_budget] == ["d"] and front.max_cost == 0.1
    empty = front_of_results(RESULTS, _spec(max_uj=0.001))
    assert empty.front == () and empty.most_accurate is None
    assert empty.lines() == ["Pareto front (test_acc up, energy_uj down): 0 of 5 full-budget trial(s); none within "
                             "the energy budget of 0.001 µJ"]


def test_firing_rate_is_the_cost_of_a_firing_rate_study():
    front = front_of_results(RESULTS[:5], _spec("test_acc+firing_rate"))
    assert front.cost == FIRING_RATE and [p.cost for p in front.front] == [0.02, 0.02, 0.05, 0.4]
    assert "energy" not in " ".join(front.lines()) and ENERGY_RATIO not in front.json()


def test_numbers_are_rounded_to_what_they_mean():
    assert [show_value(v) for v in (0.0123456, 1234.5, 12.0, 1.23456e-5, 0.1 + 0.2)] == \
           ["0.0123", "1230", "12", "1.23e-05", "0.3"]
    front = front_of_results([_result("a", 0.93149, 0.0123456, ratio=0.045678, lambda0=0.1 + 0.2)], _spec())
    (line,) = front.lines()[1:]
    assert line == ("  trial a: test_acc 93.1 %, energy_uj 0.0123 µJ (0.0457× the non-spiking network's) "
                    "(lambda0=0.3, schedule=linear, branches=1,2, surrogate=atan, surrogate_param=2)")
    text = markdown_lines(front, _spec())
    assert ARITHMETIC_ONLY in text[0] and "45nm-fp32" in text[0] and "4.6 pJ" in text[0]
    assert text[2].startswith("| trial | test_acc (%) | energy_uj (µJ) | × non-spiking | lambda0 |")
    assert text[4] == "| a | 93.1 | 0.0123 | 0.0457 | 0.3 | linear | 1,2 | atan | 2 |"


# -- its plot -----------------------------------------------------------------------------------
def _points(ax) -> dict[str, object]:
    return {c.get_label(): c for c in ax.collections}


def test_plot_highlights_the_front_as_a_step_line_on_a_log_axis():
    front = front_of_results(RESULTS, _spec(max_uj=0.1))
    fig = figures.pareto_figure(front)
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    points = _points(ax)
    assert len(points["Pareto front (3)"].get_offsets()) == 3
    assert [tuple(xy) for xy in points["full-budget trial (1)"].get_offsets()] == [(0.03, 0.85)]
    assert [tuple(xy) for xy in points["above the energy budget (1)"].get_offsets()] == [(0.4, 0.97)]
    (step,) = [line for line in ax.lines if line.get_drawstyle() == "steps-post"]
    assert list(zip(step.get_xdata(), step.get_ydata())) == [(0.02, 0.9), (0.02, 0.9), (0.05, 0.95)]
    assert ax.get_xscale() == "log"  # 0.02 to 0.4: over a decade
    assert ARITHMETIC_ONLY in ax.get_xlabel() and "µJ" in ax.get_xlabel()
    narrow = figures.pareto_figure(front_of_results(RESULTS[:3], _spec()))
    assert narrow.axes[0].get_xscale() == "linear"  # 0.02 to 0.05
    assert figures.pareto_figure(Front(ENERGY, (), ())) is None


def test_front_points_come_out_of_every_permutation_alike():
    values = [(0.9, 1.0), (0.9, 1.0), (0.95, 2.0), (0.8, 0.5), (0.85, 1.5)]
    fronts = set()
    for order in itertools.permutations(range(len(values))):
        shuffled = [values[j] for j in order]
        fronts.add(tuple(sorted(shuffled[i] for i in non_dominated(shuffled))))
    assert fronts == {((0.8, 0.5), (0.9, 1.0), (0.9, 1.0), (0.95, 2.0))}
