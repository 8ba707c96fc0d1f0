"""Whether the tracking store answers: a server's ``/health``, asked before the study writes to it."""

from __future__ import annotations

import urllib.error
import urllib.request

from study.spec import is_tracking_server

__all__ = ["check_tracking_uri", "reachable"]


def reachable(tracking_uri: str, timeout_s: float = 2.0) -> bool:
    """Whether the tracking store answers now: a server's ``/health`` within ``timeout_s``.

    A local store (a SQLite file, a folder) always counts as reachable. The study asks
    before each live write to a server, because MLflow's client retries a refused
    connection with a back-off, and a trial waits for the driver after each epoch: the
    sync writes later what the store missed meanwhile.
    """
    if not is_tracking_server(tracking_uri):
        return True
    try:
        with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout_s) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def check_tracking_uri(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any trial starts, when the tracking server cannot be reached.

    Raises:
        ConnectionError: One line naming the URI and how to fix it.
    """
    if not reachable(tracking_uri, timeout_s):
        raise ConnectionError(f"mlflow.tracking_uri: cannot reach the MLflow server at {tracking_uri}; "
                              f"start it or pass another --tracking-uri")
