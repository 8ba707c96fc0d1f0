"""The Pareto front of a study with two objectives (study/pareto.py, its MLflow tags in
study/tracking/_pareto.py, its plot in study/figures.py): checked against a brute-force
dominance test on random points with ties; then (slow) a ``test_acc+energy`` study on digits
run to its front, in MLflow and in the report."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from snn.metrics import ENERGY, ENERGY_RATIO, FIRING_RATE, TEST_ACC
from study import figures
from study.pareto import ARITHMETIC_ONLY, Front, front_of_results, markdown_lines, non_dominated
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


# -- in MLflow: hand-made trial runs (slow: an MLflow SQLite store) ---------------------------------
def _hand_made_study(tmp_path, runs: dict[str, tuple[list[float], list[float], dict]]):
    """A two-objective study whose trial runs hold ``runs``: trial id -> (test_acc per epoch,
    energy_uj per epoch, tags)."""
    import yaml
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from study.folder import StudyFolder, study_paths, write_state
    from study.spec import parse_spec

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = parse_spec({"name": "front", "objective": "test_acc+energy", "storage": str(tmp_path / "studies"),
                       "train": {"epochs": 3}, "search": {"preset": "quick"}, "mlflow": {"tracking_uri": uri}})
    c = MlflowClient(uri)
    exp = c.create_experiment("front", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = c.create_run(exp, run_name="front", tags={"kind": "study", "study": "front"}).info.run_id
    c.set_terminated(parent, "FINISHED")
    paths = study_paths(spec)
    paths["dir"].mkdir(parents=True)
    paths["spec"].write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    write_state(paths["state"], {"parent_run_id": parent, "tracking_uri": uri})
    ids = {}
    for trial_id, (acc, energy, tags) in runs.items():
        run = c.create_run(exp, tags={"kind": "trial", "study": "front", "trial_id": trial_id,
                                      "mlflow.parentRunId": parent, **tags}).info.run_id
        metrics = [Metric(k, v, 1_700_000_000_000 + e, e) for k, curve in ((TEST_ACC, acc), (ENERGY, energy))
                   for e, v in enumerate(curve, 1)]
        c.log_batch(run, metrics=metrics, params=[Param(k, v) for k, v in {
            "epochs": "3", "lambda0": "0.25", "schedule": "linear", "branches": "1,2", "surrogate": "atan",
            "surrogate_param": "None"}.items()])
        c.set_terminated(run, "FINISHED")
        ids[trial_id] = run
    return StudyFolder(paths["dir"].resolve(), spec, parent, uri), c, ids


def _tagged(c, folder) -> set[str]:
    exp = c.get_experiment_by_name(folder.spec.experiment).experiment_id
    return {r.data.tags["trial_id"] for r in c.search_runs([exp], filter_string="tags.pareto = 'true'")}


@pytest.mark.slow
def test_front_of_runs_is_recorded_once_and_again_without_duplicates(tmp_path):
    from study.pareto import front_of_rows, record_front
    from study.report import write_report
    from study.tracking import PARETO_ARTIFACT, PARETO_SIZE_TAG
    from study.trial_rows import read_rows

    folder, c, ids = _hand_made_study(tmp_path, {
        "cheap": ([0.5, 0.6, 0.80], [0.3, 0.2, 0.010], {}),  # the final epoch counts, not the best
        "mid": ([0.5, 0.6, 0.90], [0.3, 0.2, 0.050], {}),
        "worse": ([0.5, 0.6, 0.85], [0.3, 0.2, 0.060], {}),  # dominated by mid
        "rich": ([0.5, 0.6, 0.95], [0.3, 0.2, 0.900], {}),
        "short": ([0.99], [0.001], {}),  # one epoch of three: not a full budget
        "early": ([0.98, 0.99], [0.001, 0.001], {"stopped_early": "true", "last_epoch": "2"})})
    rows = read_rows(c, c.get_experiment_by_name("front").experiment_id, "front")
    front = front_of_rows(c, rows, folder.spec)
    assert [p.trial_id for p in front.front] == ["cheap", "mid", "rich"] and len(front.points) == 4
    assert front.front[0].run_id == ids["cheap"] and front.front[0].cost == 0.01

    c.set_tag(ids["worse"], "pareto", "true")  # an earlier recording's front: no longer on it
    for _ in range(2):
        record_front(folder, front)
        assert _tagged(c, folder) == {"cheap", "mid", "rich"}
        parent = c.get_run(folder.parent_run_id)
        assert parent.data.tags[PARETO_SIZE_TAG] == "3"
        assert [a.path for a in c.list_artifacts(folder.parent_run_id) if "pareto" in a.path] == [PARETO_ARTIFACT]
        logged = json.loads(Path(c.download_artifacts(parent.info.run_id, PARETO_ARTIFACT, str(tmp_path))).read_text())
        on = ("cheap", "mid", "rich")
        assert [(r["trial_id"], r["run_id"]) for r in logged["front"]] == [(t, ids[t]) for t in on]

    # the report of the study computes and records the same front from its runs
    c.delete_tag(ids["mid"], "pareto")
    rep = write_report(folder.path)
    assert _tagged(c, folder) == {"cheap", "mid", "rich"} and rep.front.front == front.front
    text = (rep.path / "report.md").read_text()
    assert "## Pareto front" in text and "| cheap | 80.0 | 0.01 |" in text
    assert "![pareto_front](pareto_front.png)" in text
    assert (rep.path / figures.PARETO_PLOT_FILE).read_bytes()[:4] == b"\x89PNG"


# -- the done-when test: a test_acc+energy study on digits runs to its Pareto front ------------------
@pytest.fixture(scope="module")
def energy_study(ray_session, tmp_path_factory):
    from study.tuner import run_study

    tmp = tmp_path_factory.mktemp("energy")
    uri = f"sqlite:///{tmp}/mlflow.db"
    spec = quickstart_spec({"name": "energy", "objective": "test_acc+energy", "trials": 5, "train.epochs": 2,
                            "train.max_batches": 12, "storage": str(tmp / "studies"), "mlflow.tracking_uri": uri,
                            "data_root": str(tmp / "data")})
    assert spec.scheduler == "fifo"  # every trial its full budget
    return spec, run_study(spec, verbose=0), uri


def _final(run, key: str) -> float:
    return run.data.metrics[key]  # MLflow's latest value: that of the last epoch (step)


@pytest.mark.slow
def test_energy_study_runs_to_a_pareto_front(energy_study, tmp_path, capsys):
    from mlflow import MlflowClient

    from study.console import summary
    from study.report import write_report
    from study.tracking import PARETO_ARTIFACT, PARETO_SIZE_TAG

    spec, result, uri = energy_study
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(spec.experiment).experiment_id
    runs = c.search_runs([exp], filter_string="tags.kind = 'trial'")
    assert len(runs) == 5 and result.errored == 0
    for r in runs:  # the energy of every epoch of every trial
        assert [m.step for m in c.get_metric_history(r.info.run_id, ENERGY)] == [1, 2]
        assert _final(r, ENERGY) > 0 and 0 < _final(r, ENERGY_RATIO)
    # the front, recomputed from the runs' final metrics by brute force
    values = [(_final(r, TEST_ACC), _final(r, ENERGY)) for r in runs]
    expected = {runs[i].data.tags["trial_id"] for i in _brute_force(values)}
    tagged = {r.data.tags["trial_id"] for r in runs if r.data.tags.get("pareto") == "true"}
    assert tagged == expected == {p.trial_id for p in result.front.front}
    assert all(r.data.tags.get("pareto") in (None, "true") for r in runs)
    # the set on the parent run
    parent = c.get_run(result.parent_run_id)
    assert parent.data.tags[PARETO_SIZE_TAG] == str(len(expected))
    logged = json.loads(Path(c.download_artifacts(parent.info.run_id, PARETO_ARTIFACT, str(tmp_path))).read_text())
    assert {r["trial_id"] for r in logged["front"]} == expected
    by_trial = {r.data.tags["trial_id"]: r for r in runs}
    for record in logged["front"]:
        run = by_trial[record["trial_id"]]
        assert record[ENERGY] == pytest.approx(_final(run, ENERGY)) and record["run_id"] == run.info.run_id
    assert "Pareto front" in parent.data.tags["mlflow.note.content"]
    # the report: the plot and the table, one row per trial of the front
    text = (result.path / "report" / "report.md").read_text()
    assert "## Pareto front" in text and "![pareto_front](pareto_front.png)" in text and ARITHMETIC_ONLY in text
    section = text.split("## Pareto front")[1].split("\n## ")[0]
    assert {line.split(" | ")[0].lstrip("| ") for line in section.splitlines()
            if line.startswith("| ") and "trial" not in line} == expected
    assert (result.path / "report" / figures.PARETO_PLOT_FILE).read_bytes()[:4] == b"\x89PNG"
    assert "report/pareto_front.png" in {a.path for a in c.list_artifacts(parent.info.run_id, "report")}
    # the console names the front, not one best trial
    summary(result, [])
    out = capsys.readouterr().out
    assert f"Pareto front (test_acc up, energy_uj down): {len(expected)} of 5 full-budget trial(s)" in out
    assert "best trial" not in out and all(f"trial {t}: test_acc " in out for t in expected)
    # 'snn-study report' again: the same front, nothing twice
    write_report(result.path)
    again = c.search_runs([exp], filter_string="tags.pareto = 'true'")
    assert {r.data.tags["trial_id"] for r in again} == expected
    assert [a.path for a in c.list_artifacts(parent.info.run_id) if "pareto" in a.path] == [PARETO_ARTIFACT]


def test_the_closing_line_tells_the_guards_stops_from_the_schedulers(tmp_path, capsys):
    from study.console import summary
    from study.finish import StudyResult

    for stopped, guarded, expected in ((0, 1, ", 1 stopped by the firing-rate guard (silent or saturated);"),
                                       (2, 0, ", 2 stopped early by ASHA;"),
                                       (0, 0, "0 errored; folder")):
        summary(StudyResult("s", tmp_path, "s", "sqlite:///m.db", "r", 4, 0, None, stopped=stopped,
                            guarded=guarded), [])
        first = capsys.readouterr().out.strip().splitlines()[0]
        assert expected in first and (guarded or "guard" not in first) and (stopped or "ASHA" not in first), first
