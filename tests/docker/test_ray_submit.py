"""`ray up` + `ray submit` with the cluster launcher's `local` provider, over SSH to 127.0.0.1.

The test runs its own sshd (a key and host key made here, loopback only) and launches
docker/cluster-local.yaml with the head on 127.0.0.1. Three changes keep it from touching
the machine: no `ray stop` (it would stop every Ray on the host), no `pip install` in the
setup commands (this environment already has the project; its bin/ is put on the SSH
session's PATH instead, through a temporary home), and the file mount goes to a
temporary folder. The study itself
runs through docker/submit_study.py, as a user's does.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from _ray_cleanup import kill_cluster, kill_matching
from procs import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def sshd():
    """An sshd on 127.0.0.1:22 that lets in one key made here; yields (user, key path)."""
    if not shutil.which("sshd") and not Path("/usr/sbin/sshd").exists() or not shutil.which("rsync"):
        pytest.skip("openssh-server and rsync are needed (Debian: apt-get install openssh-server rsync)")
    if os.geteuid() != 0 or not _port_free(22):
        pytest.skip("needs root and a free port 22 on 127.0.0.1 (the launcher always connects to port 22)")
    work = Path(tempfile.mkdtemp(prefix="snn-ssh-"))
    work.chmod(0o755)
    key, host_key = work / "id_ed25519", work / "host_ed25519"
    for k in (key, host_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(k)], check=True)
    (work / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
    (work / "authorized_keys").chmod(0o600)
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation folder
    # The launcher runs every command in a login shell, which resets PATH from /etc/profile:
    # give the SSH sessions a home of their own whose .profile puts this environment first.
    home = work / "home"
    home.mkdir()
    (home / ".bashrc").write_text("")
    (home / ".profile").write_text(f"export PATH={BIN}:$PATH RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0\n")
    (work / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort 22\nHostKey {host_key}\nAuthorizedKeysFile {work}/authorized_keys\n"
        f"PermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\nStrictModes no\n"
        f"PidFile {work}/sshd.pid\nSetEnv HOME={home}\n")
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(work / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=open(work / "sshd.log", "w"), start_new_session=True)
    try:
        end = time.time() + 30
        while _port_free(22):
            assert proc.poll() is None and time.time() < end, (work / "sshd.log").read_text()
            time.sleep(0.2)
        yield "root", key, work
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        # The launcher's persistent SSH connections (the key's path is in their arguments) and
        # any Ray process started over them (their HOME is the temporary one).
        kill_matching(str(work))
        shutil.rmtree(work, ignore_errors=True)


def test_ray_up_and_submit_run_a_study_on_the_local_provider(sshd, tmp_path):
    from mlflow import MlflowClient

    user, key, work = sshd
    gcs, dash = free_port(), free_port()
    cfg = yaml.safe_load((ROOT / "docker" / "cluster-local.yaml").read_text())
    name = f"snn-submit-test-{gcs}"
    mount = tmp_path / "snn-study"
    cfg.update(cluster_name=name, min_workers=0, max_workers=0,
               provider={"type": "local", "head_ip": "127.0.0.1", "worker_ips": []},
               auth={"ssh_user": user, "ssh_private_key": str(key)},
               file_mounts={str(mount): str(ROOT)},
               setup_commands=["python -c 'import study, trainables, snn'"],  # installed already (see above)
               head_start_ray_commands=[
                   c.replace("ray stop", "true").replace("--port=6379", f"--port={gcs}").replace(
                       "--dashboard-host=127.0.0.1",
                       f"--dashboard-host=127.0.0.1 --dashboard-port={dash} --num-cpus=2 "
                       f"--ray-client-server-port={free_port()} --dashboard-agent-listen-port={free_port()}")
                   for c in cfg["head_start_ray_commands"]])
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump(cfg))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "submitted", "dataset": "digits", "arch": "resnet-tiny", "train": {"epochs": 1, "batch_size": 64},
        "search": {"preset": "quick"}, "trials": 2, "concurrency": 2, "scheduler": "fifo",
        "storage": str(tmp_path / "studies"), "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}}))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env |= {"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "RAY_AUTH_MODE": "disabled"}
    ray = str(BIN / "ray")
    try:
        up = subprocess.run([ray, "up", "-y", "--no-config-cache", str(config)], env=env, capture_output=True,
                            text=True, timeout=600)
        assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-4000:]
        assert (mount / "study" / "cli.py").exists()  # the file mount was rsynced over SSH
        sub = subprocess.run([ray, "submit", str(config), str(ROOT / "docker" / "submit_study.py"), str(spec)],
                             env=env, capture_output=True, text=True, timeout=900)
        assert sub.returncode == 0, sub.stdout[-4000:] + sub.stderr[-4000:]
        c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
        runs = c.search_runs([c.get_experiment_by_name("submitted").experiment_id], "tags.kind = 'trial'")
        assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    finally:
        # Not `ray down`: it runs `ray stop` on the head, which would stop every Ray on this host.
        kill_cluster(gcs)
        for state in Path("/tmp/ray").glob(f"cluster-{name}.*"):  # the local provider's node state
            state.unlink()
