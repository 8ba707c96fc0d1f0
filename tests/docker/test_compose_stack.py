"""The compose stack under a real Docker engine: up, the quick-start study, down, up again.

Opt-in (building the images takes about ten minutes and several GB): set
``SNN_STUDY_DOCKER_TEST=1`` after building ``snn-study:latest`` and, on machines without a
registry, ``snn-postgres:15`` and a local ``BASE_IMAGE`` as docker/README.md ("Offline")
describes. Everything the test starts is removed afterwards (``down -v``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    os.environ.get("SNN_STUDY_DOCKER_TEST") != "1",
    reason="opt-in: build the images (docker/README.md) and set SNN_STUDY_DOCKER_TEST=1")]

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> list[str]:
    files = ["-f", "docker/compose.yaml"]
    if subprocess.run(["docker", "image", "inspect", "postgres:16"], capture_output=True).returncode != 0:
        files += ["-f", "docker/offline/compose.yaml"]  # no registry: the locally built PostgreSQL
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose", *files]
    assert shutil.which("docker-compose"), "neither docker compose nor docker-compose is installed"
    return ["docker-compose", *files]


def _trial_runs() -> list:
    from mlflow import MlflowClient

    c = MlflowClient("http://127.0.0.1:5000")
    exp = c.get_experiment_by_name("quickstart")
    return c.search_runs([exp.experiment_id], "tags.kind = 'trial'") if exp else []


def _wait_healthy(compose: list[str], env: dict, service: str, timeout: float = 300) -> None:
    end = time.time() + timeout
    while time.time() < end:
        ps = subprocess.run([*compose, "ps", service], cwd=ROOT, env=env, capture_output=True, text=True).stdout
        if "(healthy)" in ps:
            return
        time.sleep(5)
    raise AssertionError(f"{service} did not become healthy")


def test_compose_runs_the_quickstart_and_keeps_everything_across_down_up():
    compose = _compose()
    env = os.environ | {"COMPOSE_PROJECT_NAME": "snnstacktest", "RAY_HEAD_CPUS": "0", "RAY_WORKER_CPUS": "1"}

    def run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run([*compose, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)

    try:
        up = run("up", "-d", "--scale", "ray-worker=2", "postgres", "mlflow", "ray-head", "ray-worker")
        assert up.returncode == 0, up.stderr
        _wait_healthy(compose, env, "mlflow")
        study = run("run", "--rm", "study", timeout=1500)  # the one-shot driver: the built-in quick-start
        assert study.returncode == 0, study.stdout[-3000:] + study.stderr[-3000:]
        runs = _trial_runs()
        assert len(runs) == 8 and all(r.info.status == "FINISHED" for r in runs)
        assert len({r.data.tags["ray_node_id"] for r in runs}) >= 2  # spread over both workers
        before = {r.info.run_id: r.data.metrics["test_acc"] for r in runs}

        assert run("down").returncode == 0  # keeps the named volumes
        assert run("up", "-d", "postgres", "mlflow").returncode == 0
        _wait_healthy(compose, env, "mlflow")
        assert {r.info.run_id: r.data.metrics["test_acc"] for r in _trial_runs()} == before
        ls = run("run", "--rm", "--no-deps", "study", "sh", "-c", "ls -d studies/quickstart/trial_*/checkpoint_*")
        assert ls.returncode == 0 and len(ls.stdout.split()) >= 8, ls.stdout + ls.stderr  # Tune's checkpoints
    finally:
        run("down", "-v", timeout=300)
