"""The compose stack's services as processes on loopback: PostgreSQL, an MLflow server on it,
a Ray head and worker nodes started with ``ray start`` (for the cluster and load tests, and
``benchmarks.load``).

Each service's command is read from ``docker/compose.yaml`` and run with the container host
names and ports replaced by loopback ones, so these tests and the compose file cannot drift
apart. Extra Ray flags keep the cluster's ports clear of a test session's own Ray. Each
service runs in its own session; :meth:`LocalCluster.stop` ends them all and anything of the
cluster that outlived ``ray start --block``.
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
import time
from pathlib import Path

import psutil
import yaml
from _ray_cleanup import kill_cluster
from procs import free_port, http_ok, wait_for

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # mlflow, ray and snn-study of this environment


def compose_command(service: str, env: dict[str, str], replace: dict[str, str]) -> list[str]:
    """The service's command from compose.yaml, with ${VAR:-default} expanded and hosts replaced."""
    cmd = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"][service]["command"]
    text = cmd if isinstance(cmd, str) else cmd[-1]  # ["sh", "-c", "..."]: the script
    text = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m.group(1), m.group(2)), text)
    for old, new in replace.items():
        text = text.replace(old, new)
    return shlex.split(text)


def compose_environment(service: str, env: dict[str, str]) -> dict[str, str]:
    """The service's environment from compose.yaml, with ${VAR:-default} expanded."""
    given = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"][service].get("environment", {})
    return {k: re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m.group(1), m.group(2)), str(v))
            for k, v in given.items()}


def pg_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (initdb, postgres, psql), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    return Path(shutil.which("initdb")).parent if shutil.which("initdb") else None


def _as_postgres(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root: run it as the postgres user the Debian package creates.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class LocalCluster:
    """PostgreSQL, an MLflow server on it and a Ray cluster, all on 127.0.0.1.

    Args:
        work: A folder for the services' data and logs (PostgreSQL's user must read it).
        worker_cpus: Trial slots (logical CPUs) per worker node (compose's RAY_WORKER_CPUS).
    """

    def __init__(self, work: Path, worker_cpus: int = 1) -> None:
        self.work, self.worker_cpus = work, worker_cpus
        self.procs: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen] = []
        self.pg_port, self.mlflow_port, self.gcs, self.dash = (free_port() for _ in range(4))
        self.mlflow: subprocess.Popen | None = None
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
        self.env = env | {"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "RAY_AUTH_MODE": "disabled",
                          "RAY_USAGE_STATS_ENABLED": "0", "RAY_HEAD_CPUS": "0",
                          "RAY_WORKER_CPUS": str(worker_cpus)}
        self.ray_extra = ["--node-ip-address=127.0.0.1"]

    @property
    def uri(self) -> str:
        """The MLflow server's address."""
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dash}"

    def database_url(self, db: str, driver: str = "postgresql+psycopg") -> str:
        """An SQLAlchemy URL of database ``db`` (its owner has the database's name, and trust auth)."""
        return f"{driver}://{db}@127.0.0.1:{self.pg_port}/{db}"

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        out = open(self.work / f"{name}.log", "a")
        p = subprocess.Popen(cmd, env=env or self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        p.log_path = out.name
        self.procs.append(p)
        return p

    # -- PostgreSQL ------------------------------------------------------------------------------
    def start_postgres(self, databases: tuple[str, ...] = ("mlflow",)) -> None:
        """PostgreSQL with one database per name in ``databases``, each owned by a role of its name."""
        bin_ = pg_bin()
        if bin_ is None:
            raise FileNotFoundError("PostgreSQL server binaries not found (Debian: apt-get install postgresql; "
                                    "`make test` does it)")
        self.work.chmod(0o755)  # readable by the postgres user
        data = self.work / "pgdata"
        data.mkdir()
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
        subprocess.run(_as_postgres([str(bin_ / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]),
                       check=True, capture_output=True)
        db = self.start("postgres", _as_postgres([str(bin_ / "postgres"), "-D", str(data), "-h", "127.0.0.1",
                                                  "-p", str(self.pg_port), "-k", str(data), "-c", "max_connections=300"]))
        psql = [str(bin_ / "psql"), "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "postgres", "-v", "ON_ERROR_STOP=1"]
        wait_for(lambda: subprocess.run([*psql, "-c", "select 1"], capture_output=True).returncode == 0, 60,
                 "PostgreSQL", [db], interval=1.0)
        for name in databases:
            password = " PASSWORD 'mlflow'" if name == "mlflow" else ""  # compose's MLflow URL names one
            subprocess.run([*psql, "-c", f"CREATE ROLE {name} LOGIN{password}"], check=True, capture_output=True)
            subprocess.run([*psql, "-c", f"CREATE DATABASE {name} OWNER {name}"], check=True, capture_output=True)
        self.psql = psql

    def query(self, sql: str, db: str = "mlflow") -> str:
        """One SQL statement's output, unaligned and without headers."""
        return subprocess.run([*self.psql, "-d", db, "-At", "-c", sql], check=True, capture_output=True,
                              text=True).stdout.strip()

    # -- MLflow ----------------------------------------------------------------------------------
    def start_mlflow(self) -> subprocess.Popen:
        """compose's MLflow server, on PostgreSQL; waits until it answers."""
        self.mlflow = self.start("mlflow", compose_command("mlflow", self.env, {
            "@postgres:5432": f"@127.0.0.1:{self.pg_port}", "/mlartifacts": str(self.work / "artifacts"),
            "--host 0.0.0.0": "--host 127.0.0.1", "--port 5000": f"--port {self.mlflow_port}"}),
            self.env | compose_environment("mlflow", self.env | {"MLFLOW_PORT": str(self.mlflow_port)}))
        wait_for(lambda: http_ok(f"{self.uri}/health"), 180, "the MLflow server", [self.mlflow])
        return self.mlflow

    def kill_mlflow(self) -> None:
        """SIGKILL the MLflow server and every process it started."""
        os.killpg(self.mlflow.pid, signal.SIGKILL)
        self.mlflow.wait()

    # -- Ray -------------------------------------------------------------------------------------
    def _ray_status(self) -> str:
        return subprocess.run([str(BIN / "ray"), "status", f"--address={self.gcs_address}"], env=self.env,
                              capture_output=True, text=True).stdout

    def start_ray(self, workers: int = 2) -> None:
        """compose's Ray head (no CPUs) and ``workers`` worker nodes; waits until all joined."""
        head_cmd = compose_command("ray-head", self.env, {"--port=6379": f"--port={self.gcs}",
                                                          "--dashboard-host=0.0.0.0": "--dashboard-host=127.0.0.1"})
        head = self.start("ray-head", head_cmd + self.ray_extra + [
            f"--dashboard-port={self.dash}", f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}"])
        wait_for(lambda: subprocess.run([str(BIN / "ray"), "status", f"--address={self.gcs_address}"],
                                         env=self.env, capture_output=True).returncode == 0, 120, "the Ray head", [head])
        for _ in range(workers):  # one after the other: two raylets starting at once can time out on 2 cores
            self.add_worker()

    def add_worker(self) -> subprocess.Popen:
        """One more worker node; waits until the cluster counts its CPUs."""
        alive = sum(1 for w in self.workers if w.poll() is None)
        w = self.start(f"ray-worker-{len(self.workers)}", compose_command("ray-worker", self.env, {
            "ray-head:6379": self.gcs_address}) + self.ray_extra + [f"--dashboard-agent-listen-port={free_port()}"])
        self.workers.append(w)
        want = f"/{(alive + 1) * self.worker_cpus}.0 CPU"  # "Total Usage: x/N.0 CPU": the head has none
        wait_for(lambda: want in self._ray_status(), 180, f"worker node {len(self.workers)}", [w])
        return w

    def kill_worker(self, i: int) -> list[int]:
        """SIGKILL worker node ``i`` whole: its ``ray start``, raylet, agents and every process they
        started (trial workers included), by their pids, as a machine that dies. Returns the pids."""
        root = psutil.Process(self.workers[i].pid)
        procs = [root, *root.children(recursive=True)]
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        self.workers[i].wait()
        psutil.wait_procs(procs, timeout=30)
        return [p.pid for p in procs]

    def node_processes(self, i: int) -> list[psutil.Process]:
        """The live processes of worker node ``i`` (its ``ray start`` and everything under it)."""
        try:
            root = psutil.Process(self.workers[i].pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    # -- the end ---------------------------------------------------------------------------------
    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        end = time.time() + 10  # `ray start --block` takes its node down on SIGTERM; a study is over by now
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, end - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        kill_cluster(self.gcs)  # anything of this cluster that outlived `ray start --block`
