"""Stop what a Ray cluster started by a test left behind, without `ray stop` (which would stop
every Ray on the host, the test session's own included)."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path


def _procs():
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            yield proc


def _kill(proc: Path) -> None:
    try:
        os.kill(int(proc.name), signal.SIGKILL)
    except ProcessLookupError:
        pass


def kill_matching(*marks: str) -> set[str]:
    """SIGKILL every process (but this one) whose command line contains one of ``marks``.

    Returns:
        The Ray session folders (``/tmp/ray/session_...``) those processes named.
    """
    sessions: set[str] = set()
    for proc in _procs():
        try:
            args = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace") + " "
        except OSError:
            continue
        if any(m in args for m in marks):
            sessions |= set(re.findall(r"/tmp/ray/session_[0-9_-]+", args))
            _kill(proc)
    return sessions


def kill_sessions(sessions: set[str]) -> None:
    """SIGKILL processes that write into one of these Ray session folders.

    Ray's agents rename themselves (``ray::DashboardAgent``), so their command line names
    nothing; their open log files do.
    """
    for proc in _procs():
        try:
            files = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except OSError:
            continue
        if any(f.startswith(s + "/") for f in files for s in sessions):
            _kill(proc)


def kill_cluster(gcs_port: int) -> None:
    """SIGKILL every process of the cluster whose GCS listens on ``gcs_port``; forget it in /tmp/ray."""
    sessions = kill_matching(f":{gcs_port} ", f"--gcs_server_port={gcs_port} ", f"--port={gcs_port} ")
    kill_sessions(sessions)
    current = Path("/tmp/ray/ray_current_cluster")  # written by `ray start --head`, removed by `ray stop`
    if current.exists() and current.read_text().strip().endswith(f":{gcs_port}"):
        current.unlink()
