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
