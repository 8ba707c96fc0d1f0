"""How a study starts: MLflow's setup side by side with Ray's start (study/tuner.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from study import tuner


def test_mlflow_setup_runs_while_ray_starts(monkeypatch):
    # Each side waits for the other to have begun: done one after the other, the first to
    # run would wait out its timeout and see nothing.
    ray_started, setup_started = threading.Event(), threading.Event()
    seen = {}

    def init_ray(address):
        ray_started.set()
        seen["ray saw setup"] = setup_started.wait(timeout=10)

    def setup(uri):
        setup_started.set()
        seen["setup saw ray"] = ray_started.wait(timeout=10)
        return f"store at {uri}"

    monkeypatch.setattr(tuner, "_init_ray", init_ray)
    assert tuner._alongside_ray_start(None, setup, "sqlite:///x.db") == "store at sqlite:///x.db"
    assert seen == {"ray saw setup": True, "setup saw ray": True}


def test_failed_ray_start_waits_for_the_mlflow_setup_to_finish(monkeypatch):
    # A store whose tables are being created must not be cut off half way by the error.
    finished = []

    def init_ray(address):
        raise RuntimeError("no Ray here")

    def setup():
        time.sleep(0.3)
        finished.append(True)

    monkeypatch.setattr(tuner, "_init_ray", init_ray)
    with pytest.raises(RuntimeError, match="no Ray here"):
        tuner._alongside_ray_start(None, setup)
    assert finished == [True]


def test_mlflow_setup_error_reaches_the_caller(monkeypatch):
    def setup():
        raise PermissionError("mlflow.db: read-only folder")

    monkeypatch.setattr(tuner, "_init_ray", lambda address: None)
    with pytest.raises(PermissionError, match="read-only"):
        tuner._alongside_ray_start(None, setup)


def test_a_new_sqlite_store_is_staged_beside_its_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri, staged, final = tuner._staged_store("sqlite:///mlflow.db")
    assert final == tmp_path / "mlflow.db"
    assert staged.parent == tmp_path and staged.name.startswith(".mlflow.db.") and staged.name.endswith(".new")
    assert uri == f"sqlite:///{staged}"
    (tmp_path / "mlflow.db").write_bytes(b"")  # a store that exists is written in place
    assert tuner._staged_store("sqlite:///mlflow.db") == ("sqlite:///mlflow.db", None, None)
    assert tuner._staged_store("http://127.0.0.1:5000") == ("http://127.0.0.1:5000", None, None)


def test_publishing_never_replaces_a_store_that_appeared_meanwhile(tmp_path):
    from study.tracking import client, log_baselines

    uri, staged, final = tuner._staged_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    n = log_baselines(uri, "s", "cifar10")
    c = client(f"sqlite:///{final}")  # another study creates the store first, with a run of its own
    theirs = c.create_run(c.create_experiment("theirs")).info.run_id
    tuner._publish_store(staged, final, f"sqlite:///{final}", "s", "cifar10")
    assert c.get_run(theirs).info.run_id == theirs
    rows = c.search_runs([c.get_experiment_by_name("s").experiment_id], "tags.kind = 'baseline'", max_results=500)
    assert len(rows) == n > 0


def test_publishing_on_a_filesystem_without_hard_links_moves_the_store(tmp_path, monkeypatch):
    from study.tracking import client, log_baselines

    uri, staged, final = tuner._staged_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    n = log_baselines(uri, "s", "cifar10")

    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(tuner.os, "link", no_links)
    tuner._publish_store(staged, final, f"sqlite:///{final}", "s", "cifar10")
    assert not staged.exists()
    c = client(f"sqlite:///{final}")
    rows = c.search_runs([c.get_experiment_by_name("s").experiment_id], "tags.kind = 'baseline'", max_results=500)
    assert len(rows) == n > 0


def test_trial_actors_get_no_runtime_env_of_their_own(monkeypatch):
    # Tune's actor class for a trainable carries Tune's default runtime_env; a non-empty one
    # keeps the trial off the worker processes Ray started ahead (see the next test).
    from ray.tune.execution import class_cache

    from study.spec import parse_spec

    for name in class_cache.ENV_VARS_TO_PROPAGATE:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(class_cache, "DEFAULT_ENV_VARS", {"PL_DISABLE_FORK": "1"})
    tuner._trainable(parse_spec({"name": "s", "dataset": "digits"}, "spec.yaml"))
    actor_cls = class_cache._ActorClassCache().get(type("Probe", (), {}))
    assert not (actor_cls._default_options.get("runtime_env") or {}).get("env_vars")


_ACTOR_ON_A_STARTED_WORKER = """
import logging, os, time

import ray
from ray.tune.execution import class_cache

from study import tuner

def idle_workers():  # Ray names a worker process that waits for work "ray::IDLE"
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().startswith(b"ray::IDLE"):
                    found.add(int(pid))
        except OSError:
            pass
    return found

tuner._trial_actors_without_runtime_env()  # without it: "in a new process"
ray.init(address="local", num_cpus=1, include_dashboard=False, configure_logging=False, log_to_driver=False,
         logging_level=logging.ERROR)
end = time.time() + 60
while not idle_workers() and time.time() < end:
    time.sleep(0.2)
time.sleep(1)
started = idle_workers()

class Probe:
    def pid(self):
        return os.getpid()

actor = class_cache._ActorClassCache().get(Probe).options(num_cpus=1).remote()  # as a trial asks
print("on a started worker" if ray.get(actor.pid.remote()) in started else "in a new process")
ray.shutdown()
"""


@pytest.mark.slow
def test_a_trial_actor_starts_on_a_worker_ray_already_started(tmp_path):
    # What the previous test is for. A local Ray (one started without a job runtime_env, as
    # `snn-study run` starts it) starts an idle worker process per CPU at once, and hands an
    # actor one of them only when their runtime_envs match; Tune's actor class, as a study
    # leaves it, must get one. (The test's own Ray has a job runtime_env: a new Ray, here.)
    from ray.tune.execution import class_cache

    env = {k: v for k, v in os.environ.items() if k not in class_cache.ENV_VARS_TO_PROPAGATE and k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(tuner.__file__).parents[1]), env.get("PYTHONPATH", "")])
    script = tmp_path / "probe.py"
    script.write_text(_ACTOR_ON_A_STARTED_WORKER)
    out = subprocess.run([sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, check=False,
                         text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "on a started worker"
