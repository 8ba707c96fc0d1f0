"""docker/README.md as written, under a real Docker engine: set-up, images, the stack, the
quick-start, a second study, down and up again.

The test extracts the ``bash`` blocks of docker/README.md marked ``<!-- test: run -->`` and
runs them in order in one ``bash -euo pipefail`` (tests/docker/_readme_blocks.py), so a wrong
line in the file fails here. After a block marked ``check: NAME`` the script calls this file
as a program (``python test_compose_stack.py NAME "$STACK"``), which asserts what the block
promises. The README is written for a root shell: its set-up installs Debian's packages.

Opt-in (the images take about ten minutes to build, and several GB): set
``SNN_STUDY_DOCKER_TEST=1``; ``TORCH_VARIANT`` picks the image (the README's default is cpu,
whose wheels come from download.pytorch.org; ``cuda`` needs only PyPI). Everything the
stack keeps (project ``snndoctest``) is removed afterwards with ``down -v``; the images stay.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
from _readme_blocks import blocks, script  # noqa: E402

PROJECT = "snndoctest"
MLFLOW = os.environ.get("MLFLOW_UI_URL", "http://127.0.0.1:5000")  # the script's hook gets the test's


def _client(timeout: float = 300):
    """An MlflowClient for the stack's server, once the server answers."""
    import urllib.request

    from mlflow import MlflowClient

    end = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{MLFLOW}/health", timeout=5)
            return MlflowClient(MLFLOW)
        except OSError:
            if time.time() > end:
                raise
            time.sleep(3)


def _trials(experiment: str) -> list:
    c = _client()
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id], "tags.kind = 'trial'") if exp else []


def _stack(stack: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([*shlex.split(stack), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def check(name: str, stack: str) -> None:
    """What the README block marked ``check: name`` promises (called from the test's script)."""
    state_file = Path(os.environ["SNN_DOC_STATE"])
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    state["stack"] = stack
    state_file.write_text(json.dumps(state))
    if name == "quickstart":
        out = Path(os.environ["SNN_DOC_LOG"]).read_text()
        # the address to open on the host, then the containers' own, where the driver writes
        assert f"at {MLFLOW} (the driver writes to http://mlflow:5000)" in out, "the study did not print the host's " \
            "MLflow address"
        assert "Bad git executable" not in out  # GitPython's complaint about the image's missing git
        runs = _trials("quickstart")
        assert len(runs) == 8 and all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
        nodes = {r.data.tags["ray_node_id"] for r in runs}
        assert len(nodes) == 2, f"the trials ran on {len(nodes)} Ray node(s), not on both workers"
        report = _stack(stack, "run", "--rm", "--no-deps", "-T", "study", "ls", "studies/quickstart/report")
        assert report.returncode == 0 and report.stdout.split(), report.stdout + report.stderr
        state["metrics"] = {r.info.run_id: r.data.metrics["test_acc"] for r in runs}
    elif name == "second":
        again = _stack(stack, "run", "--rm", "-T", "study")
        assert again.returncode != 0, "a second quick-start ran instead of being refused"
        assert "study 'quickstart' already exists" in again.stdout + again.stderr, again.stdout + again.stderr
        runs = _trials("quickstart-2")
        assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    elif name == "kept":
        assert {r.info.run_id: r.data.metrics["test_acc"] for r in _trials("quickstart")} == state["metrics"]
        ls = _stack(stack, "run", "--rm", "--no-deps", "-T", "study", "sh", "-c",
                    "ls -d studies/quickstart/trial_*/checkpoint_*")
        assert ls.returncode == 0 and len(ls.stdout.split()) >= 8, ls.stdout + ls.stderr  # Tune's checkpoints
    else:
        raise AssertionError(f"docker/README.md names an unknown check {name!r}")
    state_file.write_text(json.dumps(state))
    print(f"check {name}: ok", flush=True)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SNN_STUDY_DOCKER_TEST") != "1",
                    reason="opt-in: set SNN_STUDY_DOCKER_TEST=1 (builds the images: docker/README.md)")
def test_docker_readme_runs_as_written(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("docker/README.md is written for a root shell (its set-up installs Debian's packages)")
    log, state = tmp_path / "readme.log", tmp_path / "state.json"
    hook = f"{shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__)))}"
    (tmp_path / "readme.sh").write_text(script(blocks(), hook))
    env = os.environ | {"COMPOSE_PROJECT_NAME": PROJECT, "SNN_DOC_LOG": str(log), "SNN_DOC_STATE": str(state)}
    # The README's ports where they are free; where something else listens on one (an MLflow of
    # the developer's), other ports, through the variables the README gives for that.
    ports = {"MLFLOW_PORT": 5000, "RAY_DASHBOARD_PORT": 8265}
    for var, port in ports.items():
        while not _port_free(port):
            port += 10000 if port < 10000 else 1
        env[var] = str(port)
    env["MLFLOW_UI_URL"] = f"http://127.0.0.1:{env['MLFLOW_PORT']}"
    try:
        with log.open("w") as out:
            done = subprocess.run(["bash", str(tmp_path / "readme.sh")], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                  stdout=out, stderr=subprocess.STDOUT, timeout=3600)
        text = log.read_text()
        assert done.returncode == 0, text[-6000:]
        for name in {b.check for b in blocks() if b.run and b.check}:
            assert f"check {name}: ok" in text, name
    finally:
        stack = json.loads(state.read_text())["stack"] if state.exists() else (
            "docker-compose -f docker/compose.yaml -f docker/offline/compose.yaml")
        subprocess.run([*shlex.split(stack), "down", "-v"], cwd=ROOT, env=env, capture_output=True, timeout=300)


if __name__ == "__main__":  # the script's hook: python test_compose_stack.py NAME "$STACK"
    try:
        check(sys.argv[1], sys.argv[2])
    except AssertionError as e:
        print(f"check {sys.argv[1]} FAILED: {e}", flush=True)
        raise
