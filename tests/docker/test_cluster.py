"""The compose stack's commands, run as processes on loopback: a real multi-node Ray cluster
with an MLflow server on PostgreSQL, and a study sent with ``ray job submit`` (issue: deployment).

Each service's command is read from ``docker/compose.yaml`` and run with the container
host names and ports replaced by loopback ones, so this test and the compose file cannot
drift apart. Extra Ray flags keep this cluster's ports clear of the test session's own Ray.
Everything is stopped afterwards, also when an assertion fails.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from _ray_cleanup import kill_cluster
from procs import free_port, http_ok, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # mlflow, ray and snn-study of this environment


def _compose_command(service: str, env: dict[str, str], replace: dict[str, str]) -> list[str]:
    """The service's command from compose.yaml, with ${VAR:-default} expanded and hosts replaced."""
    cmd = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"][service]["command"]
    text = cmd if isinstance(cmd, str) else cmd[-1]  # ["sh", "-c", "..."]: the script
    text = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m.group(1), m.group(2)), text)
    for old, new in replace.items():
        text = text.replace(old, new)
    return shlex.split(text)


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not found and not shutil.which("initdb"):
        pytest.skip("PostgreSQL server binaries not found (Debian: apt-get install postgresql; `make test` does it)")
    return Path(found[-1]).parent if found else Path(shutil.which("initdb")).parent


def _as_postgres(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root: run it as the postgres user the Debian package creates.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class _Processes:
    """Started processes, each in its own session; stop() ends them and everything they started."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        out = open(self.logs / f"{name}.log", "w")
        p = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        p.log_path = out.name
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        end = time.time() + 30
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, end - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_ray_job_submit_runs_a_study_over_several_nodes_into_mlflow_on_postgres():
    from mlflow import MlflowClient

    pg_bin = _pg_bin()
    work = Path(tempfile.mkdtemp(prefix="snn-cluster-", dir="/tmp"))
    work.chmod(0o755)  # readable by the postgres user
    procs = _Processes(work)
    pg, mlflow_port, gcs, dash = (free_port() for _ in range(4))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env |= {"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0", "RAY_HEAD_CPUS": "0", "RAY_WORKER_CPUS": "1"}
    ray_extra = ["--node-ip-address=127.0.0.1"]
    try:
        # -- PostgreSQL, MLflow's backend store --------------------------------------------
        data = work / "pgdata"
        data.mkdir()
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
        subprocess.run(_as_postgres([str(pg_bin / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]),
                       check=True, capture_output=True)
        db = procs.start("postgres", _as_postgres([str(pg_bin / "postgres"), "-D", str(data), "-h", "127.0.0.1",
                                                   "-p", str(pg), "-k", str(data)]), env)
        psql = [str(pg_bin / "psql"), "-h", "127.0.0.1", "-p", str(pg), "-U", "postgres", "-v", "ON_ERROR_STOP=1"]
        wait_for(lambda: subprocess.run([*psql, "-c", "select 1"], capture_output=True).returncode == 0, 60,
                 "PostgreSQL", [db], interval=1.0)
        subprocess.run([*psql, "-c", "CREATE ROLE mlflow LOGIN PASSWORD 'mlflow'"], check=True, capture_output=True)
        subprocess.run([*psql, "-c", "CREATE DATABASE mlflow OWNER mlflow"], check=True, capture_output=True)

        # -- the MLflow tracking server -----------------------------------------------------
        uri = f"http://127.0.0.1:{mlflow_port}"
        server = procs.start("mlflow", _compose_command("mlflow", env, {
            "@postgres:5432": f"@127.0.0.1:{pg}", "/mlartifacts": str(work / "artifacts"),
            "--host 0.0.0.0": "--host 127.0.0.1", "--port 5000": f"--port {mlflow_port}"}), env)
        wait_for(lambda: http_ok(f"{uri}/health"), 180, "the MLflow server", [server])

        # -- Ray: a head and two worker nodes -----------------------------------------------
        head_cmd = _compose_command("ray-head", env, {"--port=6379": f"--port={gcs}",
                                                      "--dashboard-host=0.0.0.0": "--dashboard-host=127.0.0.1"})
        head = procs.start("ray-head", head_cmd + ray_extra + [
            f"--dashboard-port={dash}", f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}"], env)
        wait_for(lambda: subprocess.run([str(BIN / "ray"), "status", f"--address=127.0.0.1:{gcs}"], env=env,
                                         capture_output=True).returncode == 0, 120, "the Ray head", [head])
        workers = []
        for i in range(2):  # one after the other: two raylets starting at once can time out on 2 cores
            workers.append(procs.start(f"ray-worker-{i}", _compose_command("ray-worker", env, {
                "ray-head:6379": f"127.0.0.1:{gcs}"}) + ray_extra + [f"--dashboard-agent-listen-port={free_port()}"],
                env))

            def joined(n=i + 1) -> bool:  # "Total Usage: x/N.0 CPU": the head has none
                out = subprocess.run([str(BIN / "ray"), "status", f"--address=127.0.0.1:{gcs}"], env=env,
                                     capture_output=True, text=True).stdout
                return f"/{n}.0 CPU" in out

            wait_for(joined, 180, f"worker node {i + 1}", [head, *workers])

        # -- the study, sent as a Ray job (compose's `study` service runs the same command) --
        spec = work / "spec.yaml"
        spec.write_text(yaml.safe_dump({
            "name": "cluster", "dataset": "digits", "arch": "resnet-tiny", "train": {"epochs": 1, "batch_size": 64},
            "search": {"preset": "quick"}, "trials": 4, "concurrency": 2, "scheduler": "fifo",
            "storage": str(work / "studies")}))
        study_cmd = _compose_command("study", env | {"STUDY_SPEC": str(spec)}, {
            "ray-head:6379": f"127.0.0.1:{gcs}", "http://mlflow:5000": uri})
        run = study_cmd[study_cmd.index("snn-study"):]  # after `ray start ... && exec`: the node is the head here
        job = subprocess.run([str(BIN / "ray"), "job", "submit", f"--address=http://127.0.0.1:{dash}", "--", *run],
                             env=env, capture_output=True, text=True, timeout=900)
        (work / "job.log").write_text(job.stdout + job.stderr)
        assert job.returncode == 0 and "succeeded" in job.stdout, job.stdout[-3000:] + job.stderr[-3000:]

        # -- every trial is in MLflow, through the server, and they ran on both workers -----
        c = MlflowClient(uri)
        exp = c.get_experiment_by_name("cluster")
        trials = c.search_runs([exp.experiment_id], "tags.kind = 'trial'")
        assert len(trials) == 4 and all(r.info.status == "FINISHED" for r in trials)
        assert all(c.get_metric_history(r.info.run_id, "test_acc") for r in trials)
        nodes = {r.data.tags["ray_node_id"] for r in trials}
        assert len(nodes) >= 2, f"all trials ran on one node: {nodes}"
        assert c.search_runs([exp.experiment_id], "tags.kind = 'study'")[0].info.status == "FINISHED"
    finally:
        procs.stop()
        shutil.rmtree(work, ignore_errors=True)
        kill_cluster(gcs)  # anything of this cluster that outlived `ray start --block`
