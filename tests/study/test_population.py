"""Learned λ: population-based training, scheduler pbt and pb2.

The spec's refusals, the population Tune starts from, the trainable's choice of checkpoint
after PBT's exploit, a perturbed learning rate, MLflow's record of a trial whose epochs an
exploit replaced; and real pbt and pb2 studies on the quick-start (slow).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from snn.config import TrainConfig
from snn.metrics import EPOCH, LAMBDA, TEST_ACC
from study.spec import SpecError, quickstart_spec
from trainables._trainable import _newer_checkpoint, _with_lr
from trainables.layout import RECORD_FILE, STATE_FILE


# -- the spec ----------------------------------------------------------------------------------------
def test_pbt_and_pb2_are_schedulers_with_small_defaults_for_the_quick_start():
    for scheduler in ("pbt", "pb2"):
        spec = quickstart_spec({"scheduler": scheduler})
        assert spec.scheduler == scheduler and spec.train.epochs == 3
        assert (spec.population.interval, spec.population.quantile, spec.population.synch) == (1, 0.25, False)
        assert spec.population_config()["schedule"] == "constant"
    spec = quickstart_spec({"scheduler": "pbt", "search.dims": ["lr"], "search.fixed.schedule": "constant",
                            "pbt": {"interval": 2, "quantile": 0.5}, "train.epochs": 4})
    assert spec.population.interval == 2 and spec.population.quantile == 0.5


@pytest.mark.parametrize("over, field", [
    ({"seeds": 2}, "seeds"),
    ({"confirm": {"top": 1}}, "confirm"),
    ({"objective": "test_acc+firing_rate"}, "objective"),
    ({"search.preset": "paper"}, "search.preset"),
    ({"search.preset": "ablation"}, "search.preset"),
    ({"search.dims": ["lr", "timesteps"]}, "search.dims"),
    ({"search.dims": ["weight_decay"]}, "search.dims"),
    ({"search.fixed.lambda0": 0.3}, "search.fixed.lambda0"),
    ({"search.fixed.schedule": "linear"}, "search.fixed.schedule"),
    ({"search.dims": ["lr"], "search.fixed.lr": 0.01}, "search.fixed.lr"),
    ({"search.fixed.branches": "none"}, "search.fixed.branches"),
    ({"trials": 1}, "trials"),
    ({"pbt": {"interval": 3}}, "pbt.interval"),  # the quick-start trains 3 epochs
    ({"pbt": {"quantile": 0.75}}, "pbt.quantile"),
])
@pytest.mark.parametrize("scheduler", ["pbt", "pb2"])
def test_a_population_refuses_what_makes_no_sense_in_one_line_naming_the_field(scheduler, over, field):
    with pytest.raises(SpecError) as e:
        quickstart_spec({"scheduler": scheduler, **over})
    assert str(e.value).startswith(f"quickstart: {field}: ") and "\n" not in str(e.value)


def test_pbt_settings_without_a_population_scheduler_are_refused():
    with pytest.raises(SpecError, match=r"^quickstart: pbt: only with scheduler: pbt or pb2"):
        quickstart_spec({"pbt": {"interval": 1}})


# -- the scheduler and the initial population --------------------------------------------------------
def test_the_population_starts_from_the_spec_with_tune_drawing_lambda0_and_lr():
    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.schedulers.pb2 import PB2
    from ray.tune.search.sample import Domain

    from study.tuner import population

    spec = quickstart_spec({"scheduler": "pbt", "search.dims": ["lr"], "train.epochs": 4})
    scheduler, space = population(spec)
    assert isinstance(scheduler, PopulationBasedTraining) and set(scheduler._hyperparam_mutations) == {"lambda0", "lr"}
    assert scheduler._perturbation_interval == 1 and scheduler._quantile_fraction == 0.25
    assert isinstance(space["lambda0"], Domain) and isinstance(space["lr"], Domain)
    for _ in range(20):
        config = {k: v.sample() if isinstance(v, Domain) else v for k, v in space.items()}
        cfg = TrainConfig.from_dict(config)  # as the trainable builds it
        assert cfg.schedule == "constant" and 0 <= cfg.lambda0 <= 1 and 1e-3 <= cfg.lr <= 3e-2
        assert cfg.branches == "all" and cfg.epochs == 4  # the paper's setting elsewhere, the spec's recipe
    scheduler, space = population(quickstart_spec({"scheduler": "pb2"}))
    assert isinstance(scheduler, PB2) and scheduler._hyperparam_bounds == {"lambda0": [0.0, 1.0]}
    assert space["lr"] == 0.01  # not perturbed: the recipe's


def test_the_perturbed_ranges_are_the_optuna_spaces():
    from search_spaces import build_space, describe
    from study.tuner import perturbed

    optuna = describe(build_space("full", stages=3, extra=["lr"]))
    spec = quickstart_spec({"scheduler": "pbt", "search.dims": ["lr"], "search.fixed.schedule": "constant"})
    assert set(perturbed(spec)) == {"lambda0", "lr"}
    for name, (lo, hi) in perturbed(spec).items():
        assert optuna[name].endswith(f"in [{lo:g}, {hi:g}]"), (name, optuna[name])


def test_explore_keeps_lambda0_and_lr_in_their_ranges():
    from ray.tune.schedulers.pbt import _explore

    from study.tuner import population

    scheduler, _ = population(quickstart_spec({"scheduler": "pbt", "search.dims": ["lr"]}))
    for factor in (1.2, 0.8):
        config = {"lambda0": 0.95 if factor > 1 else 0.5, "lr": 0.029 if factor > 1 else 0.0011}
        new, _ = _explore(config, scheduler._hyperparam_mutations, 0.0, (factor,), scheduler._custom_explore_fn)
        assert 0.0 <= new["lambda0"] <= 1.0 and 1e-3 <= new["lr"] <= 3e-2
        assert new["lambda0"] == (1.0 if factor > 1 else 0.4)


def test_no_perturbation_at_a_trials_last_epoch_or_last_report():
    """A trial exploited at its last result would restart with nothing left to train, a copy
    of its donor; one paused at its report of a stop would train and stop again: the scheduler
    lets both finish (and never looks at the trial)."""
    from ray.tune.schedulers import TrialScheduler

    from study.tuner import population

    for scheduler_name in ("pbt", "pb2"):
        scheduler, _ = population(quickstart_spec({"scheduler": scheduler_name, "train.epochs": 3}))
        assert scheduler.on_trial_result(None, object(), {EPOCH: 3, TEST_ACC: 0.5,
                                                          "training_iteration": 3}) == TrialScheduler.CONTINUE
        stopped = {EPOCH: 1, TEST_ACC: math.nan, "stopped": "silent", "training_iteration": 1}  # the guard's
        assert scheduler.on_trial_result(None, object(), stopped) == TrialScheduler.CONTINUE


# -- the trainable: which checkpoint a restarted trial continues -------------------------------------
def _entry(epoch: int, lam: float) -> dict:
    return {EPOCH: epoch, TEST_ACC: epoch / 10 + lam, LAMBDA: lam, "timestamp": 1_700_000_000.5 + epoch}


def _ckpt(trial: Path, index: int, history: list[dict], config: dict | None = None) -> Path:
    d = trial / f"checkpoint_{index:06d}"
    d.mkdir(parents=True)
    (d / RECORD_FILE).write_text(json.dumps({"config": config or {}, "history": history}))
    (d / STATE_FILE).write_bytes(b"")
    return d


def test_a_trial_catches_up_only_on_its_own_training(tmp_path):
    """Tune hands a restarted trial a checkpoint: its own (a resume, a retry, a pause), none, or
    a donor's (PBT's exploit). Newer checkpoints in the trial's folder are taken only in the
    first two cases, and only where they continue the handed checkpoint's epochs."""
    own, donor = tmp_path / "trial_a", tmp_path / "trial_b"
    mine = [_entry(1, 0.3), _entry(2, 0.3), _entry(3, 0.3)]
    handed = _ckpt(own, 1, mine[:2])
    ahead = _ckpt(own, 2, mine)  # trained before the driver heard of it (a killed driver, PBT's pause)
    theirs = _ckpt(donor, 1, [_entry(1, 0.7), _entry(2, 0.7)])
    assert _newer_checkpoint(own, mine[:2], str(handed)) == ahead
    assert _newer_checkpoint(own, [], None) == ahead  # Tune's state named no checkpoint yet
    # PBT's exploit: the trial goes on from the donor's epoch 2, not from its own epoch 3
    assert _newer_checkpoint(own, json.loads((theirs / RECORD_FILE).read_text())["history"], str(theirs)) is None
    # a path spelled differently is still the trial's own
    assert _newer_checkpoint(own, mine[:2], str(own / ".." / own.name / handed.name)) == ahead


def test_a_trial_never_returns_to_a_lineage_it_left(tmp_path):
    """After an exploit the trial's folder may still hold a checkpoint of its own earlier training
    with more epochs; handed its post-exploit checkpoint later (a pause), it must not go back."""
    own = tmp_path / "trial_a"
    _ckpt(own, 3, [_entry(1, 0.3), _entry(2, 0.3), _entry(3, 0.3), _entry(4, 0.3)])  # before the exploit
    after = [_entry(1, 0.7), _entry(2, 0.7), _entry(3, 0.5)]  # the donor's two epochs, then its own
    handed = _ckpt(own, 2, after)
    assert _newer_checkpoint(own, after, str(handed)) is None
    went_on = _ckpt(own, 4, after + [_entry(4, 0.5)])
    assert _newer_checkpoint(own, after, str(handed)) == went_on


def test_a_perturbed_learning_rate_takes_over_the_cosine_decay():
    """PBT's explore may change lr: the restarted trial follows lr·(1 + cos(πi/I))/2 from the new
    lr, not the donor's, and λ from its own config."""
    # One torch thread: in the full suite this test took minutes where it takes a second alone,
    # as if its two OpenMP threads waited on each other behind other processes on the 2 cores
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _perturbed_lr_case()
    finally:
        torch.set_num_threads(threads)


def _perturbed_lr_case() -> None:
    from snn.training import Trainer

    def cfg(**kw):
        return TrainConfig(dataset="digits", arch="resnet-tiny", arch_kwargs={"width": 8}, epochs=3, batch_size=64,
                           max_batches=4, seed=1, schedule="constant", **kw)

    donor = Trainer(cfg(lr=0.01, lambda0=0.5))
    donor.run_epoch()
    state = donor.state_dict()
    same = _with_lr(state, 0.01)
    assert same is state and state["optimizer"]["param_groups"][0]["lr"] == donor.optimizer.param_groups[0]["lr"]
    trainer = Trainer(cfg(lr=0.02, lambda0=0.2))
    trainer.load_state_dict(_with_lr(state, 0.02))
    total, step = trainer.total_steps, trainer.step
    expected = 0.02 * (1 + math.cos(math.pi * step / total)) / 2
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9)
    metrics = trainer.run_epoch()
    expected = 0.02 * (1 + math.cos(math.pi * trainer.step / total)) / 2
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9)
    assert metrics[LAMBDA] == 0.2
    assert torch.equal(torch.tensor(trainer.lr_schedule.base_lrs), torch.tensor([0.02]))


# -- the report --------------------------------------------------------------------------------------
class _Metric:
    def __init__(self, step: int, value: float, timestamp: int) -> None:
        self.step, self.value, self.timestamp = step, value, timestamp


class _Client:
    """What the report asks of MLflow: a metric's history (an exploited epoch logged twice)."""

    def __init__(self, histories: dict[str, list[_Metric]]) -> None:
        self.histories = histories

    def get_metric_history(self, run_id: str, key: str) -> list[_Metric]:
        return self.histories.get(run_id, []) if key == LAMBDA else []


def test_the_report_draws_learned_trajectories_only_for_a_population(tmp_path):
    from study.figures import LAMBDA_PLOT_FILE
    from study.figures import lambda_plot as _lambda_plot
    from study.tracking import metric_per_epoch

    client = _Client({"r1": [_Metric(1, 0.1, 10), _Metric(2, 0.1, 20), _Metric(1, 0.6, 30), _Metric(3, 0.4, 40)]})
    assert metric_per_epoch(client, "r1", LAMBDA) == [(1, 0.6), (2, 0.1), (3, 0.4)]  # the newest value of an epoch
    rows = [{"run_id": "r1", "trial_id": "a", "final": 0.9}, {"run_id": "r2", "trial_id": "b", "final": None}]
    assert _lambda_plot(client, rows, quickstart_spec(), tmp_path) is None
    png = _lambda_plot(client, rows, quickstart_spec({"scheduler": "pbt"}), tmp_path)
    assert png.name == LAMBDA_PLOT_FILE and png.read_bytes()[:4] == b"\x89PNG"


# -- MLflow: a trial whose epochs an exploit replaced (slow: MLflow's SQLite store) -------------------
@pytest.mark.slow
def test_mlflow_holds_the_lineage_a_trials_checkpoint_holds(tmp_path):
    """The trial logged its own epochs 1-2, then PBT's exploit gave it the donor's: they are
    logged again, newer, and every reader takes an epoch's newest value; a sync then writes
    nothing."""
    from mlflow import MlflowClient

    from study.folder import StudyFolder
    from study.tracking import read_trial, start_parent_run, sync_study
    from study.tracking import metric_per_epoch

    spec = quickstart_spec({"scheduler": "pbt", "storage": str(tmp_path / "studies"), "train.epochs": 3})
    uri = f"sqlite:///{tmp_path}/m.db"
    folder = StudyFolder(spec.study_dir(), spec, start_parent_run(uri, spec.experiment, spec.name, {}), uri)
    trial = folder.path / "trial_a"
    config = spec.population_config()
    _ckpt(trial, 1, [_entry(1, 0.3), _entry(2, 0.3)], {**config, "lambda0": 0.3})
    assert sync_study(folder).epochs == 2
    lineage = [_entry(1, 0.7), _entry(2, 0.7), _entry(3, 0.5)]  # the donor's epochs 1-2, then its own
    _ckpt(trial, 2, lineage, {**config, "lambda0": 0.5})
    # Tune's log has the trial's own epochs, and its own epoch 3 from before the exploit
    (trial / "result.json").write_text("\n".join(json.dumps({**e, "config": config}) for e in
                                                 [_entry(1, 0.3), _entry(2, 0.3), _entry(3, 0.3)]) + "\n")
    assert [r[LAMBDA] for r in read_trial(trial).results] == [0.7, 0.7, 0.5]
    assert sync_study(folder).epochs == 3
    c = MlflowClient(uri)
    (run,) = c.search_runs([c.get_experiment_by_name(spec.experiment).experiment_id], "tags.kind = 'trial'")
    assert metric_per_epoch(c, run.info.run_id, LAMBDA) == [(1, 0.7), (2, 0.7), (3, 0.5)]
    assert [v for _, v in metric_per_epoch(c, run.info.run_id, TEST_ACC)] == [e[TEST_ACC] for e in lineage]
    assert c.get_run(run.info.run_id).data.metrics[LAMBDA] == 0.5
    assert sync_study(folder).epochs == 0  # idempotent: the newest values are the record's


# -- real studies --------------------------------------------------------------------------------------
def _population_study(ray_session, tmp_path, scheduler: str, **over):
    from study.report import write_report
    from study.tuner import run_study

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = quickstart_spec({"name": scheduler, "scheduler": scheduler, "trials": 4, "train.batch_size": 64,
                            "train.max_batches": 8,  # 8 batches an epoch: the trials still tell apart, in seconds
                            "storage": str(tmp_path / "studies"), "mlflow.tracking_uri": uri,
                            "data_root": str(tmp_path / "data"), **over})
    result = run_study(spec, verbose=0)
    return spec, result, uri, write_report(result.path)


def _trajectories(spec, result, uri):
    """Each trial's MLflow run: its initial λ₀ (param), its λ per epoch (newest values), its last config."""
    import yaml
    from mlflow import MlflowClient

    from study.tracking import metric_per_epoch

    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name(spec.experiment).experiment_id], "tags.kind = 'trial'")
    out = {}
    for r in runs:
        path = c.download_artifacts(r.info.run_id, "config.yaml", str(Path(result.path) / f"dl_{r.info.run_id}"))
        out[r.data.tags["trial_id"]] = (float(r.data.params["lambda0"]), metric_per_epoch(c, r.info.run_id, LAMBDA),
                                        yaml.safe_load(Path(path).read_text()), r.info.status)
    return out


def _check_learned(spec, result, uri, report, interval: int) -> dict:
    epochs = spec.train.epochs
    assert result.trials == 4 and result.errored == 0
    runs = _trajectories(spec, result, uri)
    assert len(runs) == 4
    initial = {lambda0 for lambda0, *_ in runs.values()}
    for trial_id, (lambda0, lam, config, status) in runs.items():
        assert status == "FINISHED" and [e for e, _ in lam] == list(range(1, epochs + 1))
        values = [v for _, v in lam]
        assert all(0.0 <= v <= 1.0 for v in values)
        # piecewise constant: λ changes only where a perturbation interval starts
        assert all(values[e] == values[e - 1] for e in range(1, epochs) if e % interval), (trial_id, values)
        assert values[0] in initial  # the first epoch of some trial of the population
        assert values[-1] == config["lambda0"] and config["schedule"] == "constant"  # its last λ, its last config
    # some trial took a top trial's weights: it trained with a λ it did not start from
    exploited = {t for t, (lambda0, lam, config, _) in runs.items() if any(v != lambda0 for _, v in lam)}
    assert exploited, "no trial took a top trial's weights"
    for lambda0, lam, *_ in runs.values():  # not the paper's linear decay: λ never falls epoch after epoch
        assert not all(b < a for (_, a), (_, b) in zip(lam, lam[1:]))
    assert (Path(result.path) / "pbt_global.txt").read_text().strip()  # Tune's own log of the exploits
    text = (report.path / "report.md").read_text()
    assert "![lambda_trajectories](lambda_trajectories.png)" in text
    assert (report.path / "lambda_trajectories.png").read_bytes()[:4] == b"\x89PNG"
    return runs


@pytest.mark.slow
def test_a_pbt_study_learns_lambda_and_reports_its_trajectories(ray_session, tmp_path):
    """A pbt study of 4 trials x 4 epochs on digits, perturbed every epoch
    (asynchronous, as Ray's default): each trial's λ per epoch is in MLflow as it was trained
    (an exploited trial: the donor's epochs, then its own), not the linear decay, and the report
    draws the best beside it."""
    spec, result, uri, report = _population_study(ray_session, tmp_path, "pbt", **{
        "train.epochs": 4, "pbt": {"interval": 1, "quantile": 0.5}})
    runs = _check_learned(spec, result, uri, report, interval=1)
    # learned: some trajectory changes, which no constant schedule does
    assert any(len({v for _, v in lam}) > 1 for _, lam, _, _ in runs.values())


@pytest.mark.slow
def test_a_pb2_study_learns_lambda_and_reports_its_trajectories(ray_session, tmp_path):
    """The same with pb2, synchronous, so that the bottom half takes the top half's weights at
    every epoch. Its GP bandit chooses a new λ only once a donor has two results under one λ
    (Ray's PB2 copies the donor's λ before that), so a trajectory may or may not change within
    4 epochs: what is certain is that trials go on with λ they did not start from."""
    spec, result, uri, report = _population_study(ray_session, tmp_path, "pb2", **{
        "train.epochs": 4, "pbt": {"interval": 1, "quantile": 0.5, "synch": True}})
    _check_learned(spec, result, uri, report, interval=1)
