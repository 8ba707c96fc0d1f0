"""Helpers for tests that start servers and processes: free ports, waiting, health checks."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url: str) -> bool:
    """Whether ``url`` answers 200 within two seconds."""
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False


def wait_for(pred: Callable[[], bool], timeout: float, what: str, procs: Iterable[subprocess.Popen] = (),
             interval: float = 0.5) -> None:
    """Poll ``pred`` until it holds.

    Raises:
        AssertionError: ``timeout`` passed, or one of ``procs`` exited first (with the tail of
            its ``log_path`` file, where it has one).
    """
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        for p in procs:
            if p.poll() is not None:
                log = Path(p.log_path).read_text()[-3000:] if hasattr(p, "log_path") else ""
                raise AssertionError(f"{what}: {p.args[:3]} exited with {p.returncode}:\n{log}")
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")
