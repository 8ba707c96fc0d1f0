"""The processes of a local Ray that a study's driver started, recorded so that none outlive it.

``snn-study run`` and ``resume`` without ``--address`` start a Ray of their own. When that
driver is killed, some of Ray's processes can be left running with no parent (its
dashboard and runtime-env agents, hundreds of MB). The driver records them in the study
folder (:data:`RECORD_FILE`); the next ``snn-study`` command on the study stops what is
left of them once that driver is gone, and ``snn-study stop STUDY`` stops the driver too.
A Ray joined with ``--address`` is not the study's: nothing of it is recorded or stopped.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import psutil

__all__ = ["RECORD_FILE", "record", "stop", "terminate"]

RECORD_FILE = "local_ray.json"


def _identity(p: psutil.Process) -> list:
    return [p.pid, p.create_time()]  # a pid alone may be reused by another process


def record(study_dir: Path) -> None:
    """Record this driver and the processes of the local Ray it started (its children)."""
    me = psutil.Process()
    children = []
    for child in me.children(recursive=True):
        try:
            children.append(_identity(child) + [child.name()])
        except psutil.Error:  # gone meanwhile
            continue
    tmp = study_dir / (RECORD_FILE + ".tmp")
    tmp.write_text(json.dumps({"driver": _identity(me), "processes": children}))
    tmp.replace(study_dir / RECORD_FILE)


def terminate(procs: list[psutil.Process], grace_s: float = 10.0) -> None:
    """Stop ``procs``: SIGTERM, then SIGKILL whatever still runs after ``grace_s``."""
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, still = psutil.wait_procs(procs, timeout=grace_s)
    for p in still:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(still, timeout=5)


def _alive(identity: list) -> psutil.Process | None:
    try:
        p = psutil.Process(identity[0])
        return p if abs(p.create_time() - identity[1]) < 1e-3 and p.status() != psutil.STATUS_ZOMBIE else None
    except psutil.Error:
        return None


def stop(study_dir: Path, *, driver_too: bool = False, wait_s: float = 60.0) -> tuple[int, bool]:
    """Stop what is left of the local Ray a study's driver started.

    Args:
        study_dir: The study folder.
        driver_too: Also stop a driver that still runs (``snn-study stop``): it is sent
            SIGINT, on which Tune saves its state and ends the study as ``resume`` expects,
            and waited for up to ``wait_s``. Without it, nothing is stopped while the driver
            runs.

    Returns:
        How many of Ray's processes were stopped, and whether the driver is still running.
    """
    path = study_dir / RECORD_FILE
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0, False
    driver = _alive(recorded["driver"])
    if driver is not None and driver.pid == os.getpid():
        return 0, True
    if driver is not None:
        if not driver_too:
            return 0, True
        driver.send_signal(signal.SIGINT)
        try:
            driver.wait(wait_s)
        except psutil.TimeoutExpired:
            return 0, True
    left = [p for p in map(_alive, recorded["processes"]) if p is not None]
    terminate(left)
    path.unlink(missing_ok=True)
    return len(left), False
