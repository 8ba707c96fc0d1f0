"""MLflow as a projection of the trial folders (study/tracking/), on a real SQLite store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from procs import free_port

from snn.config import TrainConfig
from study.baselines import BASELINES
from study.folder import StudyFolder
from study.spec import parse_spec
from study.tracking import check_tracking_uri, log_baselines, read_trial, reachable, start_parent_run, sync_study
from trainables.layout import RECORD_FILE

pytestmark = pytest.mark.slow  # starts MLflow's SQLite store


def test_baselines_are_logged_once(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/m.db"
    assert log_baselines(uri, "paper-baselines", None) == len(BASELINES) == 74
    assert log_baselines(uri, "paper-baselines", None) == 0  # idempotent
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("paper-baselines").experiment_id
    runs = c.search_runs([exp], max_results=1000)
    assert len(runs) == 74 and all(r.data.tags["kind"] == "baseline" for r in runs)
    r = [r for r in runs if r.data.tags["baseline"] == "T3 imagenet resnet34 T=4 Evolutionary Training"][0]
    assert r.data.metrics["test_acc"] == pytest.approx(0.6814) and r.data.metrics["test_acc_std"] == pytest.approx(0.0015)
    assert r.data.tags["method"] == "evolutionary" and r.data.params["timesteps"] == "4"
    assert {a.path for a in c.list_artifacts(r.info.run_id)} == {"baseline.json"}  # no empty artifact view


def test_a_baseline_sits_on_the_trials_axes(tmp_path):
    """A paper row's params are the params a trial of the paper's setting logs (same names, same
    values), so MLflow's charts put both on one axis; vanilla rows, like vanilla trials, have no λ₀."""
    from mlflow import MlflowClient

    from snn.config import METHODS, TrainConfig
    from study.params import params_of

    uri = f"sqlite:///{tmp_path}/m.db"
    log_baselines(uri, "s", "cifar100")
    c = MlflowClient(uri)
    runs = {r.data.tags["baseline"]: r for r in c.search_runs([c.get_experiment_by_name("s").experiment_id],
                                                              max_results=1000)}
    for method in ("evolutionary", "shortcut", "vanilla"):
        run = runs[f"T1 cifar100 resnet34 T=4 {dict(evolutionary='Evolutionary Training', shortcut='Shortcut Back-propagation', vanilla='Vanilla Training')[method]}"]
        trial = params_of(TrainConfig(dataset="cifar100", arch="resnet34", timesteps=4, **METHODS[method]).to_dict())
        axes = ("lambda0", "schedule", "branches", "surrogate", "surrogate_param", "timesteps", "arch", "dataset")
        assert {k: run.data.params.get(k) for k in axes} == {k: trial.get(k) for k in axes}
        assert run.data.params["method"] == method
    assert "lambda0" not in run.data.params  # vanilla: λ₀ weighs no head
    other = runs["T2 cifar100 resnet19 T=2 TET"]
    assert other.data.params == {"dataset": "cifar100", "arch": "resnet19", "timesteps": "2", "method": "other"}


def test_baselines_of_an_older_version_are_completed(tmp_path):
    """A row logged with arch, T and dataset only (before the full setting) gets the rest, once."""
    from mlflow import MlflowClient

    from study.baselines import rows

    uri = f"sqlite:///{tmp_path}/m.db"
    c = MlflowClient(uri)
    exp = c.create_experiment("s")
    row = rows("cifar10-dvs")[-1]
    old = c.create_run(exp, run_name=row.run_name(), tags={"kind": "baseline", "baseline": row.run_name()})
    for k, v in (("arch", row.architecture), ("timesteps", str(row.timesteps)), ("dataset", row.dataset)):
        c.log_param(old.info.run_id, k, v)
    c.log_metric(old.info.run_id, "test_acc", row.accuracy)
    c.set_terminated(old.info.run_id)
    assert log_baselines(uri, "s", "cifar10-dvs") == len(rows("cifar10-dvs")) - 1
    assert log_baselines(uri, "s", "cifar10-dvs") == 0
    run = c.get_run(old.info.run_id)
    assert run.data.params["lambda0"] == "0.25" and run.data.params["branches"] == "all"
    assert {a.path for a in c.list_artifacts(old.info.run_id)} == {"baseline.json"}


def test_unreachable_tracking_server_fails_fast():
    port = free_port()  # nothing listens there
    t = time.perf_counter()
    assert not reachable(f"http://127.0.0.1:{port}")
    with pytest.raises(ConnectionError, match=f"mlflow.tracking_uri: cannot reach the MLflow server at http://127.0.0.1:{port}"):
        check_tracking_uri(f"http://127.0.0.1:{port}")
    assert time.perf_counter() - t < 10
    assert reachable("sqlite:///anything.db")  # a local store needs no answer


# -- the sync, on study folders written as trials write them ---------------------------------------
def _study(tmp: Path, epochs: int = 3) -> StudyFolder:
    spec = parse_spec({"name": "s", "storage": str(tmp / "studies"), "train": {"epochs": epochs}})
    uri = f"sqlite:///{tmp}/m.db"
    parent = start_parent_run(uri, spec.experiment, spec.name, {})
    return StudyFolder(spec.study_dir(), spec, parent, uri)


def _result(epoch: int, **extra) -> dict:
    return {"epoch": epoch, "test_acc": epoch / 10, "train_loss": 1.0 / epoch, "node_id": "n1", "node_ip": "10.0.0.1",
            "hostname": "h", "timestamp": 1_700_000_000 + epoch, **extra}


def _checkpoint(trial: Path, index: int, config: dict, history: list[dict]) -> None:
    d = trial / f"checkpoint_{index:06d}"
    d.mkdir(parents=True)
    (d / RECORD_FILE).write_text(json.dumps({"config": config, "history": history}))


def _inference_model(ckpt: Path, weights: bytes | None = None):
    """Put a trial's inference model (a stripped resnet-tiny for 8x8 digits) in checkpoint folder
    ``ckpt``, as a trial's last epoch does; ``weights`` in place of its file (one cut short)."""
    import torch

    from snn import models
    from trainables.layout import STRIPPED_MODEL_FILE, STRIPPED_SPEC_FILE

    build = {"arch": "resnet-tiny", "num_classes": 10, "timesteps": 2, "in_channels": 1, "branches": "none"}
    net = models.strip_shortcuts(models.build(**build))
    ckpt.mkdir(parents=True, exist_ok=True)
    if weights is None:
        torch.save(net.state_dict(), ckpt / STRIPPED_MODEL_FILE)
    else:
        (ckpt / STRIPPED_MODEL_FILE).write_bytes(weights)
    (ckpt / STRIPPED_SPEC_FILE).write_text(json.dumps({"build": build, "kind": "static", "input_shape": [1, 8, 8]}))
    return net


def _history(c, run_id: str, key: str = "test_acc") -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in c.get_metric_history(run_id, key))


def test_sync_writes_every_epoch_once_and_nothing_twice(tmp_path):
    from mlflow import MlflowClient

    folder = _study(tmp_path, epochs=3)
    config = TrainConfig(epochs=3, lambda0=0.25, schedule="linear").to_dict()
    done, running = folder.path / "trial_aaa", folder.path / "trial_bbb"
    # a finished trial: its newest checkpoint has all 3 epochs; Tune's result.json, behind it,
    # repeats epoch 2 (re-run from an older checkpoint after a restart)
    _checkpoint(done, 1, config, [_result(1), _result(2)])
    _checkpoint(done, 2, config, [_result(1), _result(2), _result(3)])
    (done / "result.json").write_text("\n".join(json.dumps(_result(e)) for e in (1, 2, 2)) + "\n{\"epoch\": 3, ")
    _checkpoint(running, 0, config, [_result(1)])  # still training when the driver died
    summary = sync_study(folder)
    assert (summary.trials, summary.epochs, summary.closed) == (2, 4, 1)
    c = MlflowClient(folder.tracking_uri)
    runs = {r.data.tags["trial_id"]: r for r in c.search_runs(
        [c.get_experiment_by_name("s").experiment_id], "tags.kind = 'trial'")}
    assert _history(c, runs["aaa"].info.run_id) == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert runs["aaa"].info.status == "FINISHED" and runs["bbb"].info.status == "RUNNING"
    assert runs["aaa"].data.params["lambda0"] == "0.25" and runs["aaa"].data.tags["method"] == "evolutionary"
    assert runs["aaa"].data.tags["mlflow.parentRunId"] == folder.parent_run_id
    assert runs["aaa"].data.tags["ray_node_id"] == "n1"
    assert "config.yaml" in {a.path for a in c.list_artifacts(runs["aaa"].info.run_id)}

    assert sync_study(folder).epochs == 0  # idempotent
    _checkpoint(running, 1, config, [_result(1), _result(2)])  # the trial went on
    assert sync_study(folder).epochs == 1
    assert _history(c, runs["bbb"].info.run_id) == [(1, 0.1), (2, 0.2)]
    # the end of the study: Tune says the other trial was stopped early (ASHA), one never started
    c.create_run(c.get_experiment_by_name("s").experiment_id,
                 tags={"kind": "trial", "study": "s", "trial_id": "zzz"})
    sync_study(folder, {"aaa": "FINISHED", "bbb": "FINISHED"}, final=True)
    runs = {r.data.tags["trial_id"]: r for r in c.search_runs(
        [c.get_experiment_by_name("s").experiment_id], "tags.kind = 'trial'")}
    assert runs["bbb"].info.status == "FINISHED" and len(_history(c, runs["bbb"].info.run_id)) == 2
    assert runs["zzz"].info.status == "FAILED" and "re-suggested" in runs["zzz"].data.tags["error"]


def test_a_diverged_trial_is_closed_failed_with_the_reason(tmp_path):
    from mlflow import MlflowClient

    folder = _study(tmp_path, epochs=3)
    trial = folder.path / "trial_ccc"
    config = TrainConfig(epochs=3).to_dict()
    _checkpoint(trial, 0, config, [_result(1)])
    nan = _result(2, diverged=1.0, test_acc=float("nan"), error="training loss became nan at iteration 40")
    (trial / "result.json").write_text(json.dumps(_result(1)) + "\n" + json.dumps({**nan, "config": config}) + "\n")
    record = read_trial(trial)
    assert record.diverged and not record.complete
    sync_study(folder)
    c = MlflowClient(folder.tracking_uri)
    (run,) = c.search_runs([c.get_experiment_by_name("s").experiment_id], "tags.kind = 'trial'")
    assert run.info.status == "FAILED" and run.data.tags["diverged"] == "true"
    assert "training loss became nan" in run.data.tags["error"]
    assert [m.step for m in c.get_metric_history(run.info.run_id, "diverged")] == [2]


def _trial_runs(folder: StudyFolder) -> dict:
    from mlflow import MlflowClient

    c = MlflowClient(folder.tracking_uri)
    return {r.data.tags["trial_id"]: r for r in c.search_runs(
        [c.get_experiment_by_name(folder.spec.experiment).experiment_id], "tags.kind = 'trial'")}


def test_trials_a_sigint_left_unfinished_stay_open_and_resume_in_the_same_run(tmp_path):
    """On SIGINT Tune marks the trials still training TERMINATED as it cleans up: their runs stay
    open and untagged, and resumed to their budget they close FINISHED. A trial the scheduler
    stopped (Tune's done flag on its last result) is closed FINISHED, tagged stopped_early."""
    import types

    from mlflow import MlflowClient

    from study.tracking import StudyTracker

    folder = _study(tmp_path, epochs=3)
    config = TrainConfig(epochs=3).to_dict()
    _checkpoint(folder.path / "trial_aaa", 0, config, [_result(1)])  # training when Ctrl-C came
    _checkpoint(folder.path / "trial_bbb", 0, config, [_result(1)])  # stopped by ASHA after epoch 1

    def trial(trial_id: str, last: dict):
        return types.SimpleNamespace(trial_id=trial_id, status="TERMINATED", last_result=last, config=config,
                                     path=str(folder.path / f"trial_{trial_id}"))

    StudyTracker(folder).on_experiment_end([trial("aaa", _result(1)), trial("bbb", _result(1, done=True))])
    runs = _trial_runs(folder)
    assert runs["aaa"].info.status == "RUNNING" and "stopped_early" not in runs["aaa"].data.tags
    assert runs["bbb"].info.status == "FINISHED" and runs["bbb"].data.tags["stopped_early"] == "true"

    _checkpoint(folder.path / "trial_aaa", 1, config, [_result(1), _result(2), _result(3)])  # resumed, to the end
    sync_study(folder, {"aaa": "FINISHED", "bbb": "FINISHED"}, final=True)
    runs = _trial_runs(folder)
    assert runs["aaa"].info.status == "FINISHED"
    assert _history(MlflowClient(folder.tracking_uri), runs["aaa"].info.run_id) == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert {"stopped_early", "last_epoch"}.isdisjoint(runs["aaa"].data.tags)
    assert runs["bbb"].info.status == "FINISHED" and runs["bbb"].data.tags["last_epoch"] == "1"


def test_a_run_closed_stopped_early_then_resumed_to_its_budget_loses_the_tag(tmp_path):
    """A trial's run closed FINISHED short of its budget reads as stopped by the scheduler
    (stopped_early); resumed and trained to its budget, its run is FINISHED without that tag."""
    folder = _study(tmp_path, epochs=3)
    config = TrainConfig(epochs=3).to_dict()
    trial = folder.path / "trial_aaa"
    _checkpoint(trial, 0, config, [_result(1)])
    sync_study(folder, {"aaa": "FINISHED"}, final=True)
    assert _trial_runs(folder)["aaa"].data.tags["stopped_early"] == "true"
    _checkpoint(trial, 1, config, [_result(1), _result(2), _result(3)])  # resumed, to the end
    sync_study(folder)
    (run,) = _trial_runs(folder).values()
    assert run.info.status == "FINISHED" and {"stopped_early", "last_epoch"}.isdisjoint(run.data.tags)


def test_a_half_written_model_leaves_no_run_open_at_the_studys_end(tmp_path, caplog):
    """A worker killed while its last checkpoint was written leaves a model file cut short:
    the trial's run is closed without the model, and the sync goes on to close the others."""
    from mlflow import MlflowClient

    folder = _study(tmp_path, epochs=2)
    config = TrainConfig(epochs=2).to_dict()
    trial = folder.path / "trial_aaa"
    _checkpoint(trial, 1, config, [_result(1), _result(2)])
    _inference_model(trial / "checkpoint_000001", weights=b"PK\x03\x04 cut short")
    c = MlflowClient(folder.tracking_uri)
    exp = c.get_experiment_by_name("s").experiment_id
    c.create_run(exp, tags={"kind": "trial", "study": "s", "trial_id": "zzz"})  # started as the driver died
    sync_study(folder, {"aaa": "FINISHED"}, final=True)
    runs = {r.data.tags["trial_id"]: r for r in c.search_runs([exp], "tags.kind = 'trial'")}
    assert runs["aaa"].info.status == "FINISHED" and _history(c, runs["aaa"].info.run_id) == [(1, 0.1), (2, 0.2)]
    assert runs["zzz"].info.status == "FAILED"
    assert "trial aaa: the model of checkpoint_000001 could not be logged" in caplog.text


def test_logging_trial_models_leaves_the_drivers_import_path_as_it_was(tmp_path):
    """Loading a logged model (as mlflow.pytorch.log_model does to check it) puts the model's code
    copy first on sys.path for good: the driver logs one model per trial, so a path left behind per
    model would make every later import and package lookup slower as the study grows."""
    import sys

    import mlflow.pytorch
    import torch
    from mlflow import MlflowClient

    from study.tracking import log_inference_model

    ckpt = tmp_path / "checkpoint_000003"
    net = _inference_model(ckpt)
    uri = f"sqlite:///{tmp_path}/m.db"
    c = MlflowClient(uri)
    exp = c.create_experiment("models", artifact_location=str(tmp_path / "artifacts"))
    before = list(sys.path)
    uris = [log_inference_model(uri, c.create_run(exp).info.run_id, ckpt) for _ in range(3)]
    assert sys.path == before
    x = torch.rand(4, 1, 8, 8)
    mlflow.set_tracking_uri(uri)  # a models:/ URI is looked up in the process's tracking store
    with torch.no_grad():
        assert torch.equal(mlflow.pytorch.load_model(uris[-1])(x), net.eval()(x))  # still a working model


@pytest.mark.parametrize("answers", [True, False])
def test_a_long_write_is_an_outage_only_when_the_store_does_not_answer(tmp_path, caplog, answers):
    """A large model uploaded to a busy server takes more than a few seconds: that is not an
    outage, and the console says nothing; a store whose health check fails is one (one warning)."""
    import threading
    import types

    from study.tracking import StudyTracker

    spec = parse_spec({"name": "s", "storage": str(tmp_path / "studies")})
    uri = f"sqlite:///{tmp_path}/m.db" if answers else f"http://127.0.0.1:{free_port()}"  # nothing listens there
    tracker = StudyTracker(StudyFolder(spec.study_dir(), spec, "parent", uri))
    busy = threading.Event()
    tracker._writer = threading.Thread(target=busy.wait, daemon=True)  # a write under way ...
    tracker._writer.start()
    tracker._started = time.monotonic() - 2 * StudyTracker.SLOW_WRITE_S  # ... for twice the threshold
    try:
        for epoch in (1, 2):  # results that arrive meanwhile
            tracker.on_trial_result(epoch, [], types.SimpleNamespace(trial_id="t1", config={}), {"epoch": epoch})
    finally:
        busy.set()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert tracker._behind == {"t1"}  # caught up by the next write, from its folder
    if answers:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warnings[0].startswith(f"MLflow: {uri} does not answer"), warnings


@pytest.mark.parametrize("returns", [True, False])
def test_the_studys_end_waits_a_while_for_a_server_that_does_not_answer(tmp_path, caplog, monkeypatch, returns):
    """A server restarting as the last trials end (MLflow's short retries fail at once) is waited
    for, and the study's end then written; one that stays down past the wait leaves the sync to
    `snn-study sync`, said once."""
    import http.server
    import threading

    from study.tracking import StudyTracker

    port = free_port()

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    servers = []

    def come_back():  # the server answers again after a second
        time.sleep(1.0)
        servers.append(http.server.HTTPServer(("127.0.0.1", port), Health))
        servers[-1].serve_forever()

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the sync's writes to this stand-in fail at once
    monkeypatch.setattr(StudyTracker, "END_POLL_S", 0.2)
    monkeypatch.setattr(StudyTracker, "END_WAIT_S", 30.0 if returns else 0.6)
    spec = parse_spec({"name": "s", "storage": str(tmp_path / "studies")})
    uri = f"http://127.0.0.1:{port}"
    tracker = StudyTracker(StudyFolder(spec.study_dir(), spec, "parent", uri))
    if returns:
        threading.Thread(target=come_back, daemon=True).start()
    t0 = time.monotonic()
    try:
        with caplog.at_level("WARNING"):
            tracker.on_experiment_end([])
    finally:
        for server in servers:
            server.shutdown()
    waited = time.monotonic() - t0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings[0].startswith(f"MLflow: {uri} does not answer at the study's end; waiting up to"), warnings
    if returns:
        assert 1.0 <= waited < 30.0, waited
        assert warnings[1] == "MLflow: the store answers again; the results it missed are written", warnings
    else:
        assert waited >= 0.6
        assert "the study's end could not be recorded" in warnings[-1], warnings
        assert not any("answers again" in w for w in warnings)


def test_the_cli_shortens_mlflows_retries_once_and_the_tracker_leaves_the_environment_alone(tmp_path):
    """A failed write loses nothing (the folders keep it): MLflow's minutes of back-off would only
    delay the writes after a server's return. MLflow reads its retries from the environment only,
    so the CLI sets them at its start, keeping a user's own value; the tracker, which a Python
    user runs too, sets nothing."""
    import os
    import subprocess
    import sys
    from unittest import mock

    from study.tracking import MLFLOW_ENVIRONMENT, StudyTracker

    with mock.patch.dict(os.environ):
        for key in MLFLOW_ENVIRONMENT:
            os.environ.pop(key, None)
        os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "3"  # the user's own: kept
        before = {k: os.environ.get(k) for k in MLFLOW_ENVIRONMENT}
        tracker = StudyTracker(_study(tmp_path))
        tracker.setup(stop=None, num_samples=1, total_num_samples=1)
        tracker.on_experiment_end([])
        assert {k: os.environ.get(k) for k in MLFLOW_ENVIRONMENT} == before
        code = ("import json, os\nfrom study.cli import main\ntry:\n    main(['sync', '--help'])\n"
                "except SystemExit:\n    pass\nprint(json.dumps(dict(os.environ)))")
        root = str(Path(__file__).resolve().parents[2])  # this checkout's study package
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": root}, cwd=root)
    cli = json.loads(out.stdout.strip().splitlines()[-1])
    assert cli["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "4"
    assert cli["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "3"
    assert cli["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"


def test_a_model_left_pending_is_logged_again_when_the_run_is_closed(tmp_path):
    """A driver killed while it logged a trial's model leaves a logged model that never became
    READY: the sync that closes the run logs the model again, and a READY one is not logged twice."""
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelStatus

    folder = _study(tmp_path, epochs=2)
    config = TrainConfig(epochs=2).to_dict()
    trial = folder.path / "trial_aaa"
    _checkpoint(trial, 0, config, [_result(1)])
    sync_study(folder)  # the run, open: the trial trains on
    _checkpoint(trial, 1, config, [_result(1), _result(2)])  # its last epoch, with the inference model
    _inference_model(trial / "checkpoint_000001")
    c = MlflowClient(folder.tracking_uri)
    exp = c.get_experiment_by_name("s").experiment_id
    (run,) = c.search_runs([exp], "tags.kind = 'trial'")
    c.create_logged_model(exp, name="model", source_run_id=run.info.run_id)  # the killed driver's, PENDING

    def statuses():
        return sorted(m.status for m in c.search_logged_models([exp], filter_string=(
            f"source_run_id = '{run.info.run_id}'")))

    assert statuses() == [LoggedModelStatus.PENDING]
    sync_study(folder, {"aaa": "FINISHED"}, final=True)
    assert statuses() == [LoggedModelStatus.PENDING, LoggedModelStatus.READY]
    c.update_run(run.info.run_id, status="RUNNING")  # closed once more (a resumed trial): nothing logged twice
    sync_study(folder, {"aaa": "FINISHED"}, final=True)
    assert statuses() == [LoggedModelStatus.PENDING, LoggedModelStatus.READY]


def test_the_best_model_registered_is_a_ready_one(tmp_path, monkeypatch):
    """A driver killed while it logged a trial's model leaves a newer logged model that never became
    READY (PENDING, or FAILED): the study's best model is registered from the READY one."""
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelStatus

    from study.tracking import register_best_model

    monkeypatch.chdir(tmp_path)  # a SQLite store keeps its artifacts in ./mlruns
    folder = _study(tmp_path, epochs=2)
    config = TrainConfig(epochs=2).to_dict()
    trial = folder.path / "trial_aaa"
    _checkpoint(trial, 1, config, [_result(1), _result(2)])
    _inference_model(trial / "checkpoint_000001")
    sync_study(folder, {"aaa": "FINISHED"}, final=True)  # the run, closed, with its READY model
    c = MlflowClient(folder.tracking_uri)
    exp = c.get_experiment_by_name("s").experiment_id
    (run,) = c.search_runs([exp], "tags.kind = 'trial'")
    (ready,) = c.search_logged_models([exp], filter_string=f"source_run_id = '{run.info.run_id}'")
    assert ready.status == LoggedModelStatus.READY
    time.sleep(0.01)  # newer by MLflow's millisecond clock
    c.create_logged_model(exp, name="model", source_run_id=run.info.run_id)  # PENDING
    time.sleep(0.01)
    failed = c.create_logged_model(exp, name="model", source_run_id=run.info.run_id)
    c.finalize_logged_model(failed.model_id, LoggedModelStatus.FAILED)
    registered = register_best_model(folder, ["aaa"], "the best trial")
    assert registered is not None and registered.trial_id == "aaa"
    assert c.get_model_version(registered.name, registered.version).source == ready.artifact_location
