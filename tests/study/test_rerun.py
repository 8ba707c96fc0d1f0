"""Re-runnable trials: a trial's MLflow run records what re-running it needs,
and ``snn-study train --run-id`` re-runs it from the run alone."""

from __future__ import annotations

import importlib.metadata
import math
import shutil
import subprocess
from pathlib import Path

import pytest

from snn.config import TrainConfig
from snn.registry import SURROGATE_DEFAULTS
from study import provenance as prov
from study.provenance import provenance

ROOT = Path(__file__).resolve().parents[2]


def _head() -> str | None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return None
    r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def _main(*args: str, capsys) -> tuple[int, str, str]:
    from study.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def _error_line(err: str) -> str:
    lines = [l for l in err.strip().splitlines() if l.startswith("snn-study: error:")]
    assert len(lines) == 1, err
    return lines[0]


# -- provenance -------------------------------------------------------------------------------
def test_provenance_has_the_versions_and_this_checkouts_commit():
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_GIT_DIRTY

    p = provenance()
    assert provenance() is p  # once per process
    assert p.project == "snn-shortcut-study" and p.version == importlib.metadata.version("snn-shortcut-study")
    assert set(p.versions) == {"python", "torch", "ray", "optuna", "mlflow", "numpy"}
    assert p.versions["torch"] == importlib.metadata.version("torch")
    tags = p.tags()
    assert tags["version.torch"] == p.versions["torch"] and tags["version.project"] == p.version
    head = _head()
    if head is None:
        pytest.skip("not a git checkout, or no git here")
    assert p.commit == head and tags[MLFLOW_GIT_COMMIT] == head == tags["mlflow.source.git.commit"]
    assert tags[MLFLOW_GIT_DIRTY] in ("true", "false")


def test_provenance_outside_a_git_checkout_has_no_commit(tmp_path, monkeypatch):
    monkeypatch.setattr(prov, "ROOT", tmp_path)  # not a checkout
    assert prov._commit() == (None, None)
    monkeypatch.setattr(prov, "ROOT", ROOT)
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    assert prov._commit() == (None, None)
    assert "mlflow.source.git.commit" not in prov.Provenance("p", "1", None, None, {"python": "3"}).tags()


# -- the config, back from the params ---------------------------------------------------------
_CONFIGS = {
    "builtin": TrainConfig(arch_kwargs={"width": 8, "blocks": [1, 1, 1, 1]}, branches=[1, 3], lambda0=0.5,
                           schedule="cosine", surrogate="atan", surrogate_param=2.5, lr=1e-5, workers=2,
                           max_batches=3, amp=False, epochs=2, seed=7),
    "user data": TrainConfig(dataset={"format": "npz", "train": "/data/123/007/train.npz", "test_fraction": 0.2,
                                      "name": "007", "input_size": [32, 32], "normalize": "none", "augment": True,
                                      "object_store_limit_mb": 12.5},
                             data_root="/data/123", device="cpu", weight_decay=0.0),
}


@pytest.mark.parametrize("name", list(_CONFIGS))
def test_the_config_rebuilt_from_params_is_the_config(name):
    from study.params import config_of_params, params_of

    cfg = _CONFIGS[name]
    params = params_of(cfg.to_dict())
    assert all(isinstance(v, str) for v in params.values())
    assert "data_root" not in params  # where this machine keeps the data: not what defines the trial
    if name == "user data":
        assert params["dataset.train"] == "007/train.npz"  # relative to the data root
    # a surrogate parameter left to its default is logged as its value: the same training
    trained = cfg.model_copy(update={"surrogate_param": cfg.surrogate_param or SURROGATE_DEFAULTS[cfg.surrogate]})
    assert TrainConfig.from_dict(config_of_params(params, data_root=cfg.data_root)) == trained


# -- reading a run, and the CLI's answers -----------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite store with a study's parent run, one trial's run (written as the study writes
    it), a trial run made by hand with params only, and a baseline run."""
    from mlflow import MlflowClient

    from study.params import params_of
    from study.tracking import TrialRecord, log_baselines, start_parent_run
    from study.tracking._projection import _Projection

    tmp = tmp_path_factory.mktemp("rerun")
    uri = f"sqlite:///{tmp}/mlflow.db"
    MlflowClient(uri).create_experiment("s", artifact_location=str(tmp / "artifacts"))  # not ./mlruns
    parent = start_parent_run(uri, "s", "s", {"name": "s"})
    config = _CONFIGS["builtin"].to_dict()
    results = [{"epoch": e, "test_acc": e / 10, "train_loss": 1.0 / 3 / e, "node_id": "n1", "node_ip": "10.0.0.1",
                "hostname": "h", "torch_threads": 3, "timestamp": 1_700_000_000 + e} for e in (1, 2)]
    projection = _Projection(uri, "s", "s", parent)
    projection.log("t1", config, results)
    projection.end(TrialRecord("t1", tmp, config, results), "FINISHED")
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("s").experiment_id
    by_hand = c.create_run(exp, tags={"kind": "trial", "study": "s", "trial_id": "t2"}).info.run_id
    for k, v in params_of(_CONFIGS["user data"].to_dict()).items():
        c.log_param(by_hand, k, v)
    log_baselines(uri, "s", "cifar10")
    baseline = c.search_runs([exp], "tags.kind = 'baseline'", max_results=1)[0].info.run_id
    return {"uri": uri, "client": c, "parent": parent, "trial": projection.run_of("t1", config),
            "by_hand": by_hand, "baseline": baseline, "config": config}


def test_a_trials_run_records_what_rerunning_needs(store):
    from study.tracking import read_trial_run

    run = store["client"].get_run(store["trial"])
    assert run.data.tags["torch_threads"] == "3" and "torch_threads" not in run.data.metrics
    assert {k: run.data.tags[k] for k in provenance().tags()} == provenance().tags()
    assert run.data.params["seed"] == "7"
    trial = read_trial_run(store["uri"], store["trial"])
    assert trial.source == "config.yaml" and trial.config == store["config"]  # exact types
    assert (trial.threads, trial.study, trial.trial_id) == (3, "s", "t1")
    assert trial.history == {1: {"epoch": 1.0, "test_acc": 0.1, "train_loss": 1.0 / 3},
                             2: {"epoch": 2.0, "test_acc": 0.2, "train_loss": 1.0 / 6}}


def test_a_run_without_config_yaml_is_read_from_its_params(store):
    from study.tracking import read_trial_run

    trial = read_trial_run(store["uri"], store["by_hand"])
    assert trial.source == "params" and trial.threads is None and trial.history == {}
    # the params do not say where the data was: the files are read under TrainConfig's data root
    cfg = _CONFIGS["user data"]
    here = TrainConfig.model_fields["data_root"].default
    assert TrainConfig.from_dict(trial.config) == cfg.model_copy(update={
        "data_root": here, "dataset": cfg.dataset.model_copy(update={"train": f"{here}/007/train.npz"}),
        "surrogate_param": SURROGATE_DEFAULTS[cfg.surrogate]})  # the default, as its value


@pytest.mark.parametrize("what, code, says", [
    ("missing", 1, "--run-id: no run 0123456789abcdef in the MLflow store"),
    ("baseline", 2, "is a result published in the paper"),
    ("parent", 2, "is the parent run of study s, not a trial"),
])
def test_a_run_that_is_not_a_trials_is_one_line(store, capsys, what, code, says):
    run_id = {"missing": "0123456789abcdef", "baseline": store["baseline"], "parent": store["parent"]}[what]
    rc, out, err = _main("train", "--run-id", run_id, "--tracking-uri", store["uri"], capsys=capsys)
    assert rc == code and says in _error_line(err) and "Traceback" not in err
    assert "epoch" not in out  # nothing trained


def test_run_id_excludes_a_spec_and_a_store_that_is_not_there_is_not_made(tmp_path, capsys):
    rc, _, err = _main("train", "spec.yaml", "--run-id", "abc", capsys=capsys)
    assert rc == 2 and "give --run-id, or a SPEC or --config, not both" in _error_line(err)
    rc, _, err = _main("train", "--config", "c.yaml", "--run-id", "abc", capsys=capsys)
    assert rc == 2 and "not both" in _error_line(err)
    rc, _, err = _main("train", "--run-id", "abc", "--tracking-uri", f"sqlite:///{tmp_path}/none.db", capsys=capsys)
    assert rc == 1 and "no MLflow store at" in _error_line(err) and not (tmp_path / "none.db").exists()


def test_the_comparison_names_the_first_difference():
    from study.single_trial import _compare

    recorded = {1: {"epoch": 1.0, "test_acc": 0.5, "train_loss": 0.25, "epoch_time": 9.0, "time_total_s": 3.0},
                2: {"epoch": 2.0, "test_acc": 0.75, "train_loss": 0.125, "diverged": math.nan}}
    same = [{"epoch": 1, "test_acc": 0.5, "train_loss": 0.25, "epoch_time": 1.0},
            {"epoch": 2, "test_acc": 0.75, "train_loss": 0.125, "diverged": math.nan}]
    assert _compare(recorded, same).startswith("reproduced 2 epochs exactly (5 values of 3 metrics)")
    other = [same[0], {**same[1], "train_loss": 0.125 + 1e-9}]
    line = _compare(recorded, other)
    assert line.startswith("not reproduced: epoch 2 train_loss differs by +1e-09") and "0.125" in line
    assert "not re-run" in _compare(recorded, same[:1])


# -- a real study's trial, re-run ---------------------------------------------------------------
@pytest.mark.slow
def test_train_run_id_reproduces_every_epoch_of_a_real_trial(ray_session, tmp_path, capsys, monkeypatch):
    import torch
    from mlflow import MlflowClient

    import snn.training
    from study.spec import quickstart_spec
    from study.tuner import run_study

    monkeypatch.chdir(tmp_path)  # MLflow's artifacts: ./mlruns
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = quickstart_spec({"name": "rerun", "trials": 2, "train.epochs": 2, "scheduler": "fifo",
                            "storage": str(tmp_path / "studies"), "mlflow.tracking_uri": uri,
                            "data_root": str(tmp_path / "data")})
    result = run_study(spec, verbose=0)
    assert result.errored == 0
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("rerun").experiment_id],
                         "tags.kind = 'trial' and attributes.status = 'FINISHED'")
    assert len(runs) == 2
    run = runs[0]
    tags = run.data.tags
    assert {k: tags.get(k) for k in provenance().tags()} == provenance().tags()
    assert tags["mlflow.source.git.commit"] == (_head() or tags["mlflow.source.git.commit"])
    assert tags["version.torch"] == importlib.metadata.version("torch")
    assert tags["version.project"] == provenance().version
    assert tags["torch_threads"] == "1" and "torch_threads" not in run.data.metrics  # resources.cpu: 1

    rerun: list[dict[str, float]] = []
    fit = snn.training.fit

    def recording_fit(cfg, report=None, **kw):
        def both(metrics, trainer):
            rerun.append(dict(metrics))
            report(metrics, trainer)
        return fit(cfg, both, **kw)

    monkeypatch.setattr(snn.training, "fit", recording_fit)
    threads = torch.get_num_threads()
    capsys.readouterr()  # the study's own output
    try:
        rc, out, err = _main("train", "--run-id", run.info.run_id, "--tracking-uri", uri, capsys=capsys)
    finally:
        torch.set_num_threads(threads)
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert "1 torch thread(s)" in lines[0] and "from its config.yaml" in lines[0]
    assert [l.split()[1] for l in lines[1:3]] == ["1/2", "2/2"]
    assert lines[-1].startswith("reproduced 2 epochs exactly"), out
    # and, checked here too: every metric of every epoch as MLflow recorded it
    assert [int(m["epoch"]) for m in rerun] == [1, 2]
    compared = 0
    for key in run.data.metrics:
        if key in ("epoch", "epoch_time", "images_per_s") or key not in rerun[0]:
            continue
        history = {int(m.step): m.value for m in c.get_metric_history(run.info.run_id, key)}
        assert history == {m["epoch"]: float(m[key]) for m in rerun}, key
        compared += 1
    assert compared >= 10 and {"test_acc", "train_loss", "train_acc", "firing_rate"} <= set(run.data.metrics)

    # --set applies on top, and the comparison says so
    try:
        rc, out, err = _main("train", "--run-id", run.info.run_id, "--tracking-uri", uri, "--set", "seed=1",
                             "--set", "epochs=1", capsys=capsys)
    finally:
        torch.set_num_threads(threads)
    lines = out.strip().splitlines()
    assert rc == 0 and "changed by --set seed=1 epochs=1" in lines[0] and lines[1].startswith("epoch 1/1")
    assert lines[-1].startswith("not reproduced: epoch 1 ") and "recorded epoch(s) 2 not re-run" in lines[-1]
    assert lines[-1].endswith("; the config was changed by --set")
