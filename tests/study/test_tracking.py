import pytest
from procs import free_port

from study.baselines import BASELINES
from study.tracking import check_tracking_uri, log_baselines

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


def test_unreachable_tracking_server_fails_fast():
    import time

    port = free_port()  # nothing listens there
    t = time.perf_counter()
    with pytest.raises(ConnectionError, match=f"mlflow.tracking_uri: cannot reach the MLflow server at http://127.0.0.1:{port}"):
        check_tracking_uri(f"http://127.0.0.1:{port}")
    assert time.perf_counter() - t < 10


class _Trial:
    """What StudyMLflowCallback reads of a Tune trial."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id, self.config = trial_id, {"dataset": "digits", "arch": "resnet-tiny", "timesteps": 2}
        self.last_result, self.checkpoint, self.error_file = {}, None, None

    def __str__(self) -> str:
        return f"trial_{self.trial_id}"


def test_an_epoch_reported_again_after_a_restart_is_logged_once(tmp_path):
    # Tune runs a result's callbacks before it saves the result's checkpoint, so a trial worker
    # that dies in between is restarted from the checkpoint before and reports that epoch again
    from mlflow import MlflowClient

    from study.tracking import StudyMLflowCallback, start_parent_run

    uri = f"sqlite:///{tmp_path}/m.db"
    parent = start_parent_run(uri, "exp", "s", {})
    cb = StudyMLflowCallback(uri, "exp", "s", parent)
    cb.setup()
    trial = _Trial("t1")
    cb.log_trial_start(trial)
    for i, epoch in enumerate([1, 2, 2, 3], start=1):
        cb.log_trial_result(i, trial, {"epoch": epoch, "test_acc": epoch / 10, "timestamp": 1_700_000_000 + i})
    cb.log_trial_end(trial)
    c = MlflowClient(uri)
    run = c.search_runs([c.get_experiment_by_name("exp").experiment_id], filter_string="tags.kind = 'trial'")[0]
    assert [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, "test_acc")] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert run.info.status == "FINISHED"
