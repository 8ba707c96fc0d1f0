"""End to end on CPU: spec -> Ray Tune + Optuna -> trials -> MLflow -> report."""

from __future__ import annotations

import pytest
import yaml

from search_spaces import paper_setting
from study.report import write_report
from study.spec import quickstart_spec
from study.tuner import run_study, study_paths

pytestmark = pytest.mark.slow


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


@pytest.fixture(scope="module")
def quick(ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quick")
    uri = f"sqlite:///{tmp}/mlflow.db"
    spec = quickstart_spec({"trials": 3, "train.epochs": 2, "scheduler": "fifo", "storage": str(tmp / "studies"),
                            "mlflow.tracking_uri": uri, "data_root": str(tmp / "data")})
    result = run_study(spec, verbose=0)
    return spec, result, uri


def test_mlflow_holds_parent_and_nested_trials(quick):
    spec, result, uri = quick
    c = _client(uri)
    exp = c.get_experiment_by_name("quickstart")
    parent = c.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["kind"] == "study"
    assert 0 < parent.data.metrics["best_test_acc"] <= 1
    trials = c.search_runs([exp.experiment_id], filter_string="tags.kind = 'trial'")
    assert len(trials) == 3 and result.trials == 3 and result.errored == 0
    for r in trials:
        assert r.data.tags["mlflow.parentRunId"] == result.parent_run_id
        assert r.info.status == "FINISHED"
        assert {"lambda0", "schedule", "branches", "surrogate", "surrogate_param"} <= set(r.data.params)
        for k in ("study", "trial_id", "dataset", "arch", "timesteps", "method", "ray_node", "ray_node_id"):
            assert k in r.data.tags
        history = c.get_metric_history(r.info.run_id, "test_acc")
        assert sorted(m.step for m in history) == [1, 2]
        assert {a.path for a in c.list_artifacts(r.info.run_id)} >= {"config.yaml", "first_layer_grad_hist.png"}
        assert "data_root" not in r.data.params  # a path of this machine, not what defines the trial
        # MLflow's system metrics, one step per epoch
        assert sorted(m.step for m in c.get_metric_history(r.info.run_id, "system/cpu_utilization_percentage")) == [1, 2]
        assert 0 < r.data.metrics["system/system_memory_usage_megabytes"]
    # digits is not in the paper: no baseline runs, and the parent run says so
    assert c.search_runs([exp.experiment_id], filter_string="tags.kind = 'baseline'") == []
    assert "The paper reports no results on `digits`" in parent.data.tags["mlflow.note.content"]
    # the parent run holds the study's answer, not copies of a trial's internals
    assert not [k for k in parent.data.params if k.startswith("best")]
    assert not {"best_pid", "best_timestamp", "best_time_this_iter_s"} & set(parent.data.metrics)
    best = c.get_run(parent.data.tags["best_run_id"])
    assert best.data.tags["trial_id"] == parent.data.tags["best_trial_id"] == result.best["trial_id"]
    assert parent.data.metrics["best_test_acc"] == best.data.metrics["test_acc"]
    assert {"best_trial_config.yaml", "comparison.md", "report"} <= {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert c.get_experiment_by_name("quickstart").tags["mlflow.experimentKind"] == "custom_model_development"


def test_every_finished_trial_is_an_mlflow_model_and_the_best_is_registered(quick):
    """The logged model of a trial gives the logits of the trial's own network, rebuilt with its
    shortcut branches from its last checkpoint's training state (the main branch, Eq. 7)."""
    import mlflow.pytorch
    import torch

    from snn import models
    from study.tracking import read_trial

    spec, result, uri = quick
    c = _client(uri)
    exp = c.get_experiment_by_name("quickstart")
    trials = c.search_runs([exp.experiment_id], filter_string="tags.kind = 'trial'")
    logged = {m.source_run_id: m for m in c.search_logged_models([exp.experiment_id])}
    assert set(logged) == {r.info.run_id for r in trials}
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))  # digits: 1 x 8 x 8
    mlflow.set_tracking_uri(uri)  # a models:/ URI is looked up in the process's tracking store
    for r in trials:
        record = read_trial(result.path / f"trial_{r.data.tags['trial_id']}")
        state = torch.load(record.checkpoint / "state.pt", weights_only=True)
        cfg = record.config
        full = models.build(cfg["arch"], 10, cfg["timesteps"], in_channels=1, surrogate=cfg["surrogate"],
                            surrogate_param=cfg["surrogate_param"], branches=cfg["branches"]).eval()
        full.load_state_dict(state["model"])
        loaded = mlflow.pytorch.load_model(logged[r.info.run_id].model_uri)
        with torch.no_grad():
            assert torch.equal(loaded(x), full(x).main)
        assert logged[r.info.run_id].model_id in {o.model_id for o in r.outputs.model_outputs}
    # the best trial's model, registered under the study's name, with the alias "best"
    assert result.model is not None and result.model.trial_id == result.best["trial_id"]
    version = c.get_model_version_by_alias(spec.name, "best")
    assert version.run_id == c.get_run(c.get_run(result.parent_run_id).data.tags["best_run_id"]).info.run_id
    with torch.no_grad():
        assert torch.equal(mlflow.pytorch.load_model(result.model.uri)(x),
                           mlflow.pytorch.load_model(logged[version.run_id].model_uri)(x))


def test_optuna_storage_starts_from_the_papers_setting(quick):
    import optuna

    spec, result, uri = quick
    study = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{study_paths(spec)['optuna']}")
    assert len(study.trials) == 3
    assert study.trials[0].params == paper_setting(spec.stages)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    # each Optuna trial names its Tune trial, whose MLflow run names the Optuna trial back
    c = _client(uri)
    exp = c.get_experiment_by_name("quickstart")
    for t in study.trials:
        (tune_id,) = t.user_attrs["tune_trial_ids"]
        (run,) = c.search_runs([exp.experiment_id], filter_string=f"tags.trial_id = '{tune_id}'")
        assert run.data.tags["optuna_trial_number"] == str(t.number)


def test_report_writes_table_and_plots(quick):
    spec, result, uri = quick
    rep = write_report(result.path)
    text = (rep.path / "report.md").read_text()
    assert len(rep.trials) == 3 and "| trial | method |" in text
    assert "The paper reports no results on `digits`" in text
    for png in ("acc_by_dimension.png", "acc_curves.png", "parallel_coordinates.png", "slice.png"):
        assert (rep.path / png).read_bytes()[:4] == b"\x89PNG"
        assert f"![{png[:-4]}]({png})" in text
    # the best trial's config as typed YAML, not MLflow's strings
    config = yaml.safe_load(text.split("```yaml\n")[-1].split("```")[0])
    assert config["epochs"] == 2 and config["max_batches"] is None and "max_batches: null" in text
    assert config["branches"] in ("all", "none") or isinstance(config["branches"], list)
    # and the report on the study's parent run, under report/
    logged = {a.path for a in _client(uri).list_artifacts(result.parent_run_id, "report")}
    assert {"report/report.md", "report/acc_by_dimension.png", "report/acc_curves.png"} <= logged


def test_train_reproduces_a_trials_first_epoch(quick, tmp_path):
    from snn.training import Trainer, TrainConfig

    spec, result, uri = quick
    c = _client(uri)
    run = c.search_runs([c.get_experiment_by_name("quickstart").experiment_id],
                        filter_string="tags.kind = 'trial'", max_results=1)[0]
    config = yaml.safe_load(open(c.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))))
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trial ran (1 CPU): float sums depend on the thread count
    try:
        metrics = Trainer(TrainConfig.from_dict(config)).run_epoch()
    finally:
        torch.set_num_threads(threads)
    logged = {k: [m for m in c.get_metric_history(run.info.run_id, k) if m.step == 1][0].value
              for k in ("train_loss", "test_acc")}
    assert metrics["train_loss"] == pytest.approx(logged["train_loss"], rel=1e-6)
    assert metrics["test_acc"] == logged["test_acc"]


def test_cifar10_study_logs_the_papers_rows(ray_session, tmp_path, monkeypatch):
    from fakes import accept_fake_cifar, make_fake_cifar
    from study.baselines import rows

    accept_fake_cifar(monkeypatch)
    make_fake_cifar(tmp_path / "data", "cifar10")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = quickstart_spec({"name": "c10", "dataset": "cifar10", "data_root": str(tmp_path / "data"), "trials": 1,
                            "train.epochs": 1, "train.batch_size": 16, "train.max_batches": 2,
                            "arch_kwargs": {"width": 4}, "search.preset": "paper", "scheduler": "fifo",
                            "storage": str(tmp_path / "studies"), "mlflow.tracking_uri": uri})
    result = run_study(spec, verbose=0)
    assert result.errored == 0
    c = _client(uri)
    exp = c.get_experiment_by_name("c10").experiment_id
    base = c.search_runs([exp], filter_string="tags.kind = 'baseline'", max_results=1000)
    assert len(base) == len(rows("cifar10")) == 24
    accs = sorted(r.data.metrics["test_acc"] for r in base)
    assert accs == sorted(b.accuracy for b in rows("cifar10"))
    rep = write_report(result.path)
    assert len(rep.baselines) == 24 and "| 2 | Evolutionary Training | resnet19 | 2 | 0.9536 | 0.0010 |" in \
        (rep.path / "report.md").read_text()


@pytest.mark.parametrize("objective", ["test_acc", "test_acc+energy"])
def test_diverged_trials_fail_at_once_and_the_study_goes_on(ray_session, tmp_path, objective):
    """Also with two objectives: the trial's last report holds every objective (NaN), which
    Tune requires of each result."""
    import optuna

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = quickstart_spec({"name": "nan", "trials": 2, "train.epochs": 2, "scheduler": "fifo", "objective": objective,
                            "search.fixed": {"lr": 1.0e12}, "storage": str(tmp_path / "studies"),
                            "mlflow.tracking_uri": uri})
    result = run_study(spec, verbose=0)  # returns: the study is not stopped by a diverged trial
    assert result.trials == 2 and result.best is None
    c = _client(uri)
    runs = c.search_runs([c.get_experiment_by_name("nan").experiment_id], filter_string="tags.kind = 'trial'")
    assert len(runs) == 2
    for r in runs:
        assert r.info.status == "FAILED" and r.data.tags["diverged"] == "true"
        assert "training loss became nan" in r.data.tags["error"]
        assert [m.step for m in c.get_metric_history(r.info.run_id, "diverged")] == [1]  # stopped in epoch 1
    study = optuna.load_study(study_name="nan", storage=f"sqlite:///{study_paths(spec)['optuna']}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
