"""Replicates, early stops and conditional dimensions: the spec, the searcher, a study."""

from __future__ import annotations

import math

import optuna
import pytest

from search_spaces import build_space
from snn.metrics import EPOCH, TEST_ACC
from study._search import SeededRepeater, StudyOptunaSearch
from study.spec import SpecError, quickstart_spec


def test_seeds_default_to_fifo_and_refuse_what_breaks_a_mean():
    assert quickstart_spec().scheduler == "asha" and quickstart_spec().seeds == 1
    assert quickstart_spec({"seeds": 3}).scheduler == "fifo"  # not asked for: every replicate its full run
    with pytest.raises(SpecError, match=r"^quickstart: scheduler: asha stops replicates early"):
        quickstart_spec({"seeds": 3, "scheduler": "asha"})
    with pytest.raises(SpecError, match=r"^quickstart: objective: "):
        quickstart_spec({"seeds": 2, "objective": "test_acc+firing_rate"})
    with pytest.raises(SpecError, match=r"^quickstart: confirm: preset ablation searches nothing"):
        quickstart_spec({"confirm": {"top": 2}, "search.preset": "ablation"})
    with pytest.raises(SpecError, match=r"^quickstart: confirm.seeds: "):
        quickstart_spec({"confirm": {"seeds": 1}})
    with pytest.raises(SpecError, match=r"^quickstart: seeds: "):
        quickstart_spec({"seeds": 0})


def _searcher(epochs: int = 3, **kw) -> StudyOptunaSearch:
    space = build_space("quick", stages=3, constants={"epochs": epochs})
    return StudyOptunaSearch(space=space, metric=TEST_ACC, mode="max", epochs=epochs,
                             sampler=optuna.samplers.RandomSampler(seed=0), **kw)


def _result(epoch: int, acc: float) -> dict:
    return {TEST_ACC: acc, EPOCH: epoch, "training_iteration": epoch}


def test_a_trial_stopped_before_its_budget_is_pruned_with_its_values_per_epoch():
    """ASHA's stop: PRUNED in Optuna, each epoch an intermediate value (the last one too, which
    Tune hands to on_trial_complete only); a full run is COMPLETE with its final value."""
    s = _searcher()
    s.suggest("stopped")
    s.suggest("full")
    s.on_trial_result("stopped", _result(1, 0.5))
    s.on_trial_complete("stopped", _result(2, 0.6))  # stopped at epoch 2 of 3
    for e in (1, 2):
        s.on_trial_result("full", _result(e, 0.5 + e / 10))
    s.on_trial_complete("full", _result(3, 0.9))
    stopped, full = s._ot_study.trials
    assert stopped.state == optuna.trial.TrialState.PRUNED and stopped.intermediate_values == {1: 0.5, 2: 0.6}
    assert full.state == optuna.trial.TrialState.COMPLETE and full.value == 0.9
    assert full.intermediate_values == {1: 0.6, 2: 0.7}


def test_a_retried_trial_that_counts_its_iterations_again_warns_of_nothing(recwarn):
    """After a node is lost, Tune restores a trial from its own checkpoint of it, which can lag
    the trial's newest: the trial reports iterations Optuna has had already. Optuna keeps the
    first value of a step, and the console gets no warning per repeated step."""
    s = _searcher(epochs=4)
    s.suggest("t")
    for e in (1, 2, 3):
        s.on_trial_result("t", _result(e, 0.5 + e / 10))
    s.on_trial_result("t", {**_result(2, 0.95), EPOCH: 4})  # Tune's 2nd iteration again, the trial's epoch 4
    s.on_trial_complete("t", {**_result(3, 0.95), EPOCH: 4})
    (t,) = s._ot_study.trials
    assert t.state == optuna.trial.TrialState.COMPLETE and t.value == 0.95
    assert t.intermediate_values == {1: 0.6, 2: 0.7, 3: 0.8}
    assert not [w for w in recwarn if "already reported" in str(w.message)]


def test_a_diverged_trial_fails():
    s = _searcher()
    s.suggest("nan")
    s.on_trial_complete("nan", {TEST_ACC: math.nan, EPOCH: 1, "diverged": 1.0, "training_iteration": 1})
    assert s._ot_study.trials[0].state == optuna.trial.TrialState.FAIL


def test_replicates_get_paired_seeds_and_the_searcher_their_mean():
    """seeds: N — each suggestion runs N times as seed + 0..N-1 (the same k in every group), and
    Optuna hears one value per configuration: the mean over its replicates."""
    inner = _searcher()
    rep = SeededRepeater(inner, repeat=3, seed=10)
    configs = {f"t{i}": rep.suggest(f"t{i}") for i in range(6)}
    assert [c["seed"] for c in configs.values()] == [10, 11, 12, 10, 11, 12]
    params = [{k: v for k, v in c.items() if k != "seed"} for c in configs.values()]
    assert params[0] == params[1] == params[2] and params[3] == params[4] == params[5] and params[0] != params[3]
    accs = [0.5, 0.6, 0.7, 0.8, 0.8, 0.9]
    for (tid, _), acc in zip(configs.items(), accs):
        rep.on_trial_complete(tid, _result(3, acc))
    values = [t.value for t in inner._ot_study.trials]
    assert values == pytest.approx([0.6, (0.8 + 0.8 + 0.9) / 3])
    assert len(inner._ot_study.trials) == 2


def test_replicate_groups_survive_a_restore(tmp_path):
    rep = SeededRepeater(_searcher(), repeat=2, seed=0)
    rep.suggest("a")
    rep.on_trial_complete("a", _result(3, 0.5))
    rep.save_to_dir(str(tmp_path), "s1")  # as Tune saves a searcher: one file, written then renamed into place
    assert [p.name for p in tmp_path.iterdir()] == ["searcher-state-s1.pkl"]
    again = SeededRepeater(_searcher(), repeat=2, seed=0)
    again.restore_from_dir(str(tmp_path))
    second = again.suggest("b")  # the group's second replicate, not a new configuration
    assert second["seed"] == 1
    again.on_trial_complete("b", _result(3, 0.7))
    assert [t.value for t in again.searcher._ot_study.trials] == pytest.approx([0.6])
    again.on_trial_complete("unknown", _result(3, 0.1))  # a trial it never grouped: ignored, not a crash


def test_confirm_points_are_the_best_full_configurations_and_the_papers_with_new_seeds():
    from types import SimpleNamespace as Result

    from study.tuner import confirm_points

    spec = quickstart_spec({"confirm": {"top": 2, "seeds": 3}, "train.epochs": 3, "seed": 4})
    base = {**spec.train_constants(), "seed": 4}
    for k in ("lambda0", "schedule", "branches", "surrogate", "surrogate_param"):
        base.pop(k)
    vanilla = {**base, "branches": "none", "surrogate": "atan", "surrogate_param": 2.0}
    vanilla.pop("loss_mode")
    lucky = {**base, "branches": "1", "lambda0": 0.5, "schedule": "cosine", "surrogate": "atan", "surrogate_param": 2.0}
    third = {**lucky, "lambda0": 0.1}
    results = [Result(error=None, metrics={TEST_ACC: a, EPOCH: e}, config=c) for a, e, c in [
        (0.90, 3, vanilla), (0.99, 1, lucky),  # the lucky one was stopped after 1 epoch: not ranked on it
        (0.80, 3, lucky), (0.70, 3, third), (math.nan, 3, third)]]
    points = confirm_points(spec, results)
    configs = [{k: v for k, v in p.items() if k != "seed"} for p in points]
    assert configs[0] == {k: v for k, v in vanilla.items() if k != "seed"}
    assert configs[3] == {k: v for k, v in lucky.items() if k != "seed"}
    paper = configs[6]
    assert (paper["lambda0"], paper["schedule"], paper["branches"], paper["surrogate"]) == (0.25, "linear", "1,2",
                                                                                            "triangle")
    assert len(points) == 9 and [p["seed"] for p in points] == [5, 6, 7] * 3  # new seeds: after the search's
    from snn.config import TrainConfig

    for p in points:
        TrainConfig.from_dict(p)  # every point is a trial config as it stands


# -- studies -----------------------------------------------------------------------------------------
def _study(ray_session, tmp_path, **over):
    from study.tuner import run_study

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # 6 batches of 64 an epoch: enough to tell the methods apart, and the guard checks every batch
    spec = quickstart_spec({"storage": str(tmp_path / "studies"), "mlflow.tracking_uri": uri,
                            "data_root": str(tmp_path / "data"), "train.batch_size": 64, "train.max_batches": 6,
                            **over})
    return spec, run_study(spec, verbose=0), uri


def _final_acc(client, run) -> float:
    history = client.get_metric_history(run.info.run_id, TEST_ACC)
    return max(history, key=lambda m: m.step).value


@pytest.mark.slow
def test_an_ablation_with_five_seeds_states_each_paired_difference(ray_session, tmp_path, capsys):
    """Table 1 with error bars on digits: 3 methods x 5 paired seeds;
    the report and the parent run state each paired difference with its interval, and the
    numbers are scipy's on the MLflow data, computed here independently."""
    import numpy as np
    import scipy.stats
    from mlflow import MlflowClient

    from study.report import write_report

    spec, result, uri = _study(ray_session, tmp_path, name="t1", **{"search.preset": "ablation", "trials": 3,
                                                                    "seeds": 5, "train.epochs": 1})
    assert result.trials == 15 and result.errored == 0
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("t1").experiment_id
    runs = c.search_runs([exp], filter_string="tags.kind = 'trial'", max_results=100)
    acc: dict[str, dict[int, float]] = {}
    for r in runs:
        acc.setdefault(r.data.tags["method"], {})[int(r.data.params["seed"])] = _final_acc(c, r)
        if r.data.tags["method"] == "vanilla":
            assert "lambda0" not in r.data.params and "schedule" not in r.data.params
    assert {m: sorted(s) for m, s in acc.items()} == {m: [0, 1, 2, 3, 4] for m in ("evolutionary", "shortcut",
                                                                                   "vanilla")}
    parent = c.get_run(result.parent_run_id).data.metrics
    text = (write_report(result.path).path / "report.md").read_text()
    for a, b in (("evolutionary", "vanilla"), ("evolutionary", "shortcut"), ("shortcut", "vanilla")):
        x, y = np.array([acc[a][k] for k in range(5)]), np.array([acc[b][k] for k in range(5)])
        test = scipy.stats.ttest_rel(x, y)
        lo, hi = test.confidence_interval(0.95)
        key = f"diff_{a}_minus_{b}"
        assert parent[key] == pytest.approx(float(np.mean(x - y)))
        if np.std(x - y) > 0:
            assert (parent[f"{key}_ci_low"], parent[f"{key}_ci_high"]) == pytest.approx((lo, hi))
        assert f"{a}" in text and f"{b}" in text and "paired seeds" in text
    assert "## Comparison" in text and "Which dimension matters" in text
    assert any("paired seeds" in line for line in result.answer)  # said on the console too


@pytest.mark.slow
def test_a_search_with_asha_prunes_and_a_confirm_stage_gives_the_answer(ray_session, tmp_path):
    """ASHA's early stops are PRUNED in Optuna and marked in MLflow; the confirm stage re-runs
    the best full configuration and the paper's with new seeds, tagged stage=confirm, and is
    the study's answer."""
    from mlflow import MlflowClient

    from study.folder import OPTUNA_FILE
    from study.report import write_report

    spec, result, uri = _study(ray_session, tmp_path, name="conf", trials=4, **{"train.epochs": 2,
                                                                               "confirm": {"top": 1, "seeds": 2}})
    assert result.errored == 0 and result.confirmed in (2, 4)  # the best, and the paper's unless it is the best
    st = optuna.load_study(study_name="conf", storage=f"sqlite:///{result.path / OPTUNA_FILE}")
    states = [t.state for t in st.trials]
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("conf").experiment_id
    runs = c.search_runs([exp], filter_string="tags.kind = 'trial'", max_results=100)
    search = [r for r in runs if r.data.tags["stage"] == "search"]
    confirm = [r for r in runs if r.data.tags["stage"] == "confirm"]
    assert len(search) == 4 and len(confirm) == result.confirmed
    stopped = [r for r in search if r.data.tags.get("stopped_early") == "true"]
    assert len(stopped) == states.count(optuna.trial.TrialState.PRUNED) == result.stopped
    for t in st.trials:
        if t.state == optuna.trial.TrialState.PRUNED:
            assert t.intermediate_values and max(t.intermediate_values) < 2  # stopped before epoch 2
    for r in stopped:
        assert r.data.tags["last_epoch"] == "1" and r.info.status == "FINISHED"
    assert {int(r.data.params["seed"]) for r in confirm} == {1, 2}  # new seeds, after the search's 0
    assert all(r.data.tags["mlflow.parentRunId"] == result.parent_run_id for r in confirm)
    assert c.get_run(result.parent_run_id).data.tags.get("analysis_stage") == "confirm"
    report = write_report(result.path)
    assert report.analysis.stage == "confirm" and "stopped early (epoch 1 of 2)" in (report.path / "report.md").read_text() \
        or not stopped


def test_points_run_each_config_once_as_given_and_survive_a_restore(tmp_path):
    from ray.tune.search import Searcher

    from study._search import Points

    configs = [{"branches": "none", "seed": 1}, {"branches": "1", "lambda0": 0.5, "seed": 1}]
    s = Points(configs, TEST_ACC, "max")
    assert s.suggest("a") == configs[0]
    s.save(str(tmp_path / "points.pkl"))
    again = Points([], TEST_ACC, "max")
    again.restore(str(tmp_path / "points.pkl"))
    assert again.suggest("a") == configs[0]  # the same trial asks again after a restore: the same config
    assert again.suggest("b") == configs[1]
    assert again.suggest("c") == Searcher.FINISHED


def test_a_silent_trial_is_pruned_with_its_reason_and_infeasible_for_the_sampler():
    """The constraint hand-off: the guard's stop reaches Optuna as PRUNED, its reason
    as a user attribute, and as an infeasible constraint (Trial.set_constraint), which TPE reads
    when it splits trials into good and bad, single- and multi-objective."""
    from optuna.samplers._tpe.sampler import _split_trials

    from snn.metrics import STOPPED, STOPPED_STAGE

    for metric, mode in ((TEST_ACC, "max"), ([TEST_ACC, "firing_rate"], ["max", "min"])):
        space = build_space("quick", stages=3, extra=["v_threshold"], constants={"epochs": 3})
        s = StudyOptunaSearch(space=space, metric=metric, mode=mode, epochs=3,
                              sampler=optuna.samplers.TPESampler(seed=0))
        s.suggest("silent")
        s.suggest("fine")
        s.on_trial_complete("silent", {STOPPED: "silent", STOPPED_STAGE: "stage2", TEST_ACC: math.nan, EPOCH: 1,
                                       "training_iteration": 1})
        s.on_trial_complete("fine", {**_result(3, 0.9), "firing_rate": 0.1})
        silent, fine = s._ot_study.trials
        assert silent.state == optuna.trial.TrialState.PRUNED and silent.user_attrs[STOPPED] == "silent (stage2)"
        assert fine.state == optuna.trial.TrialState.COMPLETE
        assert silent.constraints == {"firing": 1.0} and fine.constraints == {"firing": 0.0}
        below, above = _split_trials(s._ot_study, s._ot_study.trials, 1)
        assert [t.number for t in below] == [fine.number] and [t.number for t in above] == [silent.number]


def test_an_energy_budget_makes_the_trials_over_it_infeasible_and_the_study_names_its_objectives():
    """energy.max_uj reaches Optuna as a constraint of every trial (energy_uj - budget, > 0 over
    it), which TPE reads; the Optuna study names its objectives, so its dashboard and plots label
    their axes test_acc and energy_uj."""
    import warnings

    from optuna.samplers._tpe.sampler import _split_trials

    from snn.metrics import ENERGY

    for metric, mode in ((TEST_ACC, "max"), ([TEST_ACC, ENERGY], ["max", "min"])):
        space = build_space("quick", stages=3, constants={"epochs": 3})
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing on the console (set_metric_names is experimental)
            s = StudyOptunaSearch(space=space, metric=metric, mode=mode, epochs=3, max_energy_uj=0.05,
                                  sampler=optuna.samplers.TPESampler(seed=0))
        for t in ("costly", "cheap"):
            s.suggest(t)
        s.on_trial_complete("costly", {**_result(3, 0.95), ENERGY: 0.08})  # the better accuracy, over the budget
        s.on_trial_complete("cheap", {**_result(3, 0.6), ENERGY: 0.02})
        costly, cheap = s._ot_study.trials
        assert costly.constraints["energy"] == pytest.approx(0.03) and cheap.constraints["energy"] == pytest.approx(-0.03)
        assert s._ot_study.metric_names == ([TEST_ACC] if metric == TEST_ACC else [TEST_ACC, ENERGY])
        below, above = _split_trials(s._ot_study, s._ot_study.trials, 1)
        assert [t.number for t in below] == [cheap.number] and [t.number for t in above] == [costly.number]


@pytest.mark.slow
def test_a_search_over_the_neuron_stops_silent_trials_and_records_them(ray_session, tmp_path):
    """search.dims [tau, v_threshold] reaches silent networks: the guard stops them in
    their first epoch; MLflow tags them silent with the stage, Optuna has them PRUNED with the
    reason and infeasible, the report says what it saved."""
    from mlflow import MlflowClient

    from snn.metrics import STOPPED
    from study.folder import OPTUNA_FILE
    from study.report import write_report

    # seed 1: TPE's start-up draws a threshold of 5.7 as the third trial (v_threshold is log-uniform in [0.1, 10])
    spec, result, uri = _study(ray_session, tmp_path, name="neuron", trials=4, scheduler="fifo", seed=1,
                               **{"train.epochs": 1, "search.dims": ["tau", "v_threshold"]})
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("neuron").experiment_id
    runs = c.search_runs([exp], filter_string="tags.kind = 'trial'", max_results=100)
    silent = [r for r in runs if r.data.tags.get("stopped") == "silent"]
    assert silent, "the neuron's range reaches silent networks (v_threshold up to 10)"
    st = optuna.load_study(study_name="neuron", storage=f"sqlite:///{result.path / OPTUNA_FILE}")
    pruned = {t.number: t for t in st.trials if t.state == optuna.trial.TrialState.PRUNED}
    assert len(pruned) == len(silent) == sum(t.constraints.get("firing", 0) > 0 for t in st.trials)
    for t in pruned.values():
        assert t.user_attrs[STOPPED].startswith("silent (") and t.params["v_threshold"] > 1.0
    for r in silent:
        assert float(r.data.tags["epochs_done"]) < 1 and r.data.tags["stopped_stage"]  # stopped in its first epoch
        assert r.info.status == "FINISHED"
    text = (write_report(result.path).path / "report.md").read_text()
    assert f"The firing-rate guard stopped {len(silent)} trial(s) ({len(silent)} silent)" in text
    header = next(line for line in text.splitlines() if line.startswith("| trial |"))
    assert "| tau | v_threshold |" in header  # the searched neuron has its columns


def test_a_configuration_whose_every_replicate_was_silent_reaches_optuna_as_stopped():
    from snn.metrics import STOPPED, STOPPED_STAGE

    inner = _searcher()
    rep = SeededRepeater(inner, repeat=2, seed=0)
    for t in ("a", "b", "c", "d"):
        rep.suggest(t)
    silent = {STOPPED: "silent", STOPPED_STAGE: "stem", TEST_ACC: math.nan, EPOCH: 1, "training_iteration": 1}
    rep.on_trial_complete("a", silent)
    rep.on_trial_complete("b", silent)  # both replicates silent: PRUNED and infeasible
    rep.on_trial_complete("c", silent)
    rep.on_trial_complete("d", _result(3, 0.8))  # one of two: the other's value
    first, second = inner._ot_study.trials
    assert first.state == optuna.trial.TrialState.PRUNED and first.constraints == {"firing": 1.0}
    assert second.state == optuna.trial.TrialState.COMPLETE and second.value == pytest.approx(0.8)


def test_the_guard_is_set_in_the_spec_and_a_stopped_report_gives_no_intermediate_value():
    from snn.metrics import STOPPED

    assert quickstart_spec({"stop": {"silent_rate": None}}).trial_config().stop.silent_rate is None
    s = _searcher()
    s.suggest("t")
    s.on_trial_result("t", {STOPPED: "silent", TEST_ACC: math.nan, EPOCH: 1, "training_iteration": 1})
    s.on_trial_complete("t", {STOPPED: "silent", TEST_ACC: math.nan, EPOCH: 1, "training_iteration": 1})
    assert s._ot_study.trials[0].intermediate_values == {}
