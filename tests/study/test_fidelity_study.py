"""T as a fidelity in a study (:mod:`study.fidelity`, :mod:`study.fidelity_report`): ASHA decides on
the trials' cost where they raise T, the confirm stage trains at the target T, the report's
Fidelity section; and a study end to end."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from snn.fidelity import epoch_timesteps
from snn.metrics import COST, EPOCH, TEST_ACC, TIMESTEPS
from study.fidelity import asha_settings
from study.spec import parse_spec, quickstart_spec

FIDELITY = {"fidelity": {"timesteps": [1, 2, 4]}, "timesteps": 4, "train.epochs": 8}


def test_asha_ranks_on_cost_at_the_reports_after_which_trials_raise_t():
    """Two trials a little worse than the first at every epoch: ASHA stops the one at the
    first rung, cost 2, the last epoch at T = 1 (on epochs, with a grace of one, it would have
    stopped it after epoch 1); the other passes it and is stopped at the second rung, cost 4,
    its epoch at T = 2. A report between rungs decides nothing."""
    spec = quickstart_spec(FIDELITY)
    settings = asha_settings(spec)
    assert settings == {"time_attr": "cost", "max_t": 24, "grace_period": 2, "reduction_factor": 2}
    asha = ASHAScheduler(metric=TEST_ACC, mode="max", **settings)
    per_epoch = epoch_timesteps((1, 2, 4), 8)
    costs = list(itertools.accumulate(per_epoch))
    trials = {name: SimpleNamespace(trial_id=name) for name in ("best", "first_out", "second_out")}
    for t in trials.values():
        asha.on_trial_add(None, t)

    def report(name, epoch, acc):
        result = {TEST_ACC: acc, COST: costs[epoch - 1], TIMESTEPS: per_epoch[epoch - 1], EPOCH: epoch,
                  "training_iteration": epoch}
        return asha.on_trial_result(None, trials[name], result)

    decisions = {name: [] for name in trials}
    for epoch in range(1, 9):
        for name, acc in (("best", 0.5), ("first_out", 0.3 if epoch > 1 else 0.1), ("second_out", 0.6 if epoch < 3
                                                                                         else 0.4)):
            if TrialScheduler.STOP in decisions[name]:
                continue
            decisions[name].append(report(name, epoch, acc + epoch / 100))
    assert decisions["first_out"] == [TrialScheduler.CONTINUE, TrialScheduler.STOP]  # epoch 2, cost 2, T = 1
    assert decisions["second_out"] == [TrialScheduler.CONTINUE] * 2 + [TrialScheduler.STOP]  # epoch 3, cost 4, T = 2
    assert per_epoch[2] == 2 and per_epoch[3] == 4  # the stop at epoch 3 is where the next epoch raises T
    assert decisions["best"] == [TrialScheduler.CONTINUE] * 7 + [TrialScheduler.STOP]  # its budget, cost 24 = max_t


def test_without_a_fidelity_asha_decides_on_epochs_as_before():
    assert asha_settings(quickstart_spec({"train.epochs": 8})) == {
        "time_attr": "training_iteration", "max_t": 8, "grace_period": 1, "reduction_factor": 2}


def test_the_confirm_stage_trains_at_the_target_t_throughout():
    from study.tuner import confirm_points

    spec = quickstart_spec({**FIDELITY, "confirm": {"top": 1, "seeds": 2}})
    config = {**spec.train_constants(), "seed": 0}
    assert config["fidelity"] == {"timesteps": [1, 2, 4]} and config["timesteps"] == 4
    results = [SimpleNamespace(error=None, metrics={TEST_ACC: 0.9, EPOCH: 8}, config=config)]
    points = confirm_points(spec, results)
    assert points and all(p["fidelity"] is None and p["timesteps"] == 4 for p in points)


# -- the report's Fidelity section ---------------------------------------------------------------------
def _curve(trial, accs, stopped=False):
    from snn.fidelity import epoch_timesteps
    from study.fidelity_report import TrialCurve

    per_epoch = epoch_timesteps((1, 2, 4), len(accs))
    return TrialCurve(trial, per_epoch, list(itertools.accumulate(per_epoch)), list(accs), stopped)


def _ranks(values):
    return [sorted(values).index(v) for v in values]


def test_the_section_counts_the_compute_and_correlates_the_cheap_rungs_with_the_target():
    """Six trials that reached the target (8 epochs; its first rung, cost 8, is epoch 4) and two
    stopped at the first rung: what they spent against the target T throughout, counted by
    hand; ρ at each cheap rung against a Pearson correlation of the ranks, by hand."""
    from study.fidelity_report import analyse, markdown_lines

    target = [0.60, 0.70, 0.80, 0.90, 0.65, 0.75]
    at_first = [0.30, 0.35, 0.50, 0.45, 0.20, 0.40]  # epoch 2: a ranking close to the target's
    at_second = [0.50, 0.45, 0.40, 0.35, 0.55, 0.30]  # epoch 3: nearly the reverse of it
    curves = [_curve(f"t{i}", [0.1, a1, a2, t, t, t, t, t]) for i, (a1, a2, t) in
              enumerate(zip(at_first, at_second, target))]
    curves += [_curve("s0", [0.1, 0.1], stopped=True), _curve("s1", [0.1, 0.15], stopped=True)]
    a = analyse(curves, (1, 2, 4), 8)
    assert a.spent == 6 * 24 + 2 * 2 and a.at_target == (6 * 8 + 2 * 2) * 4
    assert a.by_t == {1: (8, 2), 2: (6, 0), 4: (6, 0)} and a.target_epoch == 4
    first, second = a.rankings
    assert (first.cost, first.epoch, first.timesteps, first.n) == (2, 2, 1, 6)
    assert (second.cost, second.epoch, second.timesteps, second.n) == (4, 3, 2, 6)
    for r, accs in ((first, at_first), (second, at_second)):
        assert r.rho == pytest.approx(float(np.corrcoef(_ranks(accs), _ranks(target))[0, 1]))
        assert r.ci[0] <= r.rho <= r.ci[1]
    assert not first.misled and second.misled
    text = "\n".join(markdown_lines(a))
    assert "would have cost 208 (71% of it)" in text
    assert "**The fidelity misled this study** at the rung at T = 2 (cost 4, epoch 3)" in text
    assert "The rung at T = 1 (cost 2, epoch 2) ranked the trials as the target T did" in text


def test_too_few_trials_at_the_target_give_no_verdict():
    from study.fidelity_report import analyse, markdown_lines

    curves = [_curve("a", [0.1, 0.2, 0.3, 0.5]), _curve("b", [0.1, 0.3, 0.4, 0.6]), _curve("c", [0.1, 0.1], True)]
    a = analyse(curves, (1, 2, 4), 4)
    assert [r.n for r in a.rankings] == [2, 2] and all(r.rho is None and not r.misled for r in a.rankings)
    assert "2 trial(s) reached the target T with an accuracy at both: too few to tell" in "\n".join(markdown_lines(a))


@pytest.mark.slow
def test_a_fidelity_study_grows_t_stops_trials_on_cost_and_reports_it(ray_session, tmp_path):
    """A study end to end: a trial that ran its budget shows both raises in MLflow's per-epoch
    timesteps, with cost their running sum; a trial ASHA stopped is PRUNED in Optuna, its last
    cost a rung and its last timesteps the T it was ranked at; the report has its Fidelity section."""
    import optuna
    from mlflow import MlflowClient

    from snn.fidelity import rungs
    from study.folder import OPTUNA_FILE
    from study.report import write_report
    from study.tracking import metric_per_epoch
    from study.tuner import run_study

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = quickstart_spec({**FIDELITY, "name": "fid", "trials": 6, "concurrency": 2, "train.epochs": 5,
                            "train.batch_size": 64, "train.max_batches": 3, "storage": str(tmp_path / "studies"),
                            "mlflow.tracking_uri": uri, "data_root": str(tmp_path / "data")})
    result = run_study(spec, verbose=0)
    assert result.errored == 0
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("fid").experiment_id], filter_string="tags.kind = 'trial'")
    assert len(runs) == 6
    full = [r for r in runs if r.data.tags.get("stopped_early") != "true"]
    stopped = [r for r in runs if r.data.tags.get("stopped_early") == "true"]
    assert full  # the first trial at each rung goes on: one ran its budget
    for r in full:
        assert [v for _, v in metric_per_epoch(c, r.info.run_id, TIMESTEPS)] == [1, 1, 2, 4, 4]
        assert [v for _, v in metric_per_epoch(c, r.info.run_id, COST)] == [1, 2, 4, 8, 12]
        assert r.data.params["timesteps"] == "4"
    rung_costs = [*rungs((1, 2, 4)), 8]  # where T is raised, and the first rung at the target
    for r in stopped:
        cost, t = r.data.metrics[COST], r.data.metrics[TIMESTEPS]
        assert cost in rung_costs and t == {2: 1, 4: 2, 8: 4}[int(cost)], (cost, t)
    study = optuna.load_study(study_name="fid", storage=f"sqlite:///{result.path / OPTUNA_FILE}")
    assert sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials) == len(stopped)
    text = (write_report(result.path).path / "report.md").read_text()
    assert "## Fidelity" in text and "would have cost" in text and "Spearman" in text


def test_a_users_frames_are_refused_before_anything_starts(tmp_path):
    """npz frames hold one T, prepared once on the driver: 'snn-study check' (prepare_data) says so."""
    from study.folder import StudyError
    from study.preflight import prepare_data

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "frames.npz", x=rng.integers(0, 3, (40, 4, 2, 8, 8)).astype(np.uint8), y=np.arange(40) % 4)
    spec = quickstart_spec({**FIDELITY, "data_root": str(tmp_path / "root"),
                            "dataset": {"format": "npz", "train": str(tmp_path / "frames.npz"), "test_fraction": 0.25}})
    with pytest.raises(StudyError, match=r"^fidelity: frames holds frames of T=4, prepared once, so T cannot grow on "
                                         r"them; remove fidelity$") as e:
        prepare_data(spec, say=lambda line: None)
    assert e.value.exit_code == 2


def test_a_trials_params_give_its_fidelity_back():
    """MLflow's params of a search trial rebuild its config, growth included (``snn-study train
    --run-id`` re-runs it as it trained); a confirm trial's read back without one."""
    from snn.config import TrainConfig
    from study.params import config_of_params, params_of

    for fidelity in ({"timesteps": [1, 2, 4]}, None):
        config = TrainConfig(timesteps=4, epochs=8, fidelity=fidelity)
        back = TrainConfig.from_dict(config_of_params(params_of(config.to_dict())))
        assert (back.fidelity, back.timesteps) == (config.fidelity, 4)


def test_check_says_how_t_grows_and_what_a_full_budget_costs():
    """`snn-study check` names the fidelity: T per epoch of a full budget and its cost against the
    target T throughout (from snn.fidelity's own arithmetic: 1+1+2+4×5 = 24 against 8×4)."""
    from study.preflight import plan

    lines = plan(parse_spec({"name": "f", "fidelity": {"timesteps": [1, 2, 4]}, "train": {"epochs": 8}}), None)
    (line,) = [x for x in lines if "as a fidelity" in x]
    assert "starts at T=1" in line and "to 4" in line and "T = 1, 1, 2, 4, 4, 4, 4, 4;" in line
    assert "cost 24 against 32 at T=4 throughout" in line
    assert not any("as a fidelity" in x for x in plan(parse_spec({"name": "f"}), None))
