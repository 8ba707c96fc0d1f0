"""The views of a study a researcher reads at a glance: MLflow's UI on its runs, optuna-dashboard on its search.

Each view is one server for one user, bound to 127.0.0.1 unless asked otherwise:

- MLflow's UI (:func:`mlflow_ui_command`) is ``mlflow server`` with one uvicorn worker and
  MLflow's job execution off (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``), so that it
  starts no huey consumers: that, not ``mlflow ui`` (4 workers plus job runners), is what
  one person reading one study needs. Its link (:func:`study_link`) opens the study's runs
  table, ranked by test accuracy, in MLflow's classic machine-learning view
  (``workflowType=machine_learning``), not the GenAI view on a traces page that MLflow 3
  opens by default; :func:`classic_experiment` tags the experiment the same way
  (``mlflow.experimentKind``), which the UI reads too. The link opens a saved view
  (:data:`STUDY_VIEW`, an experiment tag :func:`classic_experiment` writes, which the UI's
  ``viewStateShareKey`` parameter names): the table shows the trials' dimensions, test
  accuracy and method, not MLflow's default columns a new user would have to swap by hand.
- optuna-dashboard (:func:`dashboard_command`) on the study's Optuna storage (the study
  folder's SQLite file, or the database server of the spec's ``search.storage``), with its
  single-process server (wsgiref).

:func:`serving` starts a view, waits until it answers and stops it (its whole process group)
however the caller ends; :func:`run_view` is what ``snn-study ui`` and ``dashboard`` run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from search_spaces import searched
from snn.metrics import ENERGY, TEST_ACC

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["DASHBOARD_PORT", "DEFAULT_HOST", "EXPERIMENT_KIND", "EXPERIMENT_KIND_TAG", "STUDY_COLUMNS", "STUDY_VIEW",
           "UI_PORT", "SavedView", "study_columns", "ViewError", "base_url", "check_port", "classic_experiment", "compare_link",
           "dashboard_command", "dashboard_link", "mlflow_ui_command", "mlflow_ui_env", "optuna_storage", "run_view",
           "save_view", "serving", "stop", "study_link", "wait_until_up"]

DEFAULT_HOST = "127.0.0.1"
UI_PORT = 5000
DASHBOARD_PORT = 8080
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow's UI opens an experiment in the view this tag names
EXPERIMENT_KIND = "custom_model_development"  # the classic ML view: runs table, charts, compare
WORKFLOW = "machine_learning"  # the UI's `workflowType` query parameter for that view (the other: genai)
VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # MLflow's UI: experiment tag <prefix><key> holds saved view <key>
VIEW_KEY_PARAM = "viewStateShareKey"  # ... and opens it from this query parameter of the runs page
UI_HEALTH = "/health"  # MLflow's server answers 200 there once it serves
DASHBOARD_HEALTH = "/api/meta"  # optuna-dashboard's first API call, 200 once it serves
# Python's documented warning filter (PYTHONWARNINGS) for the one notice MLflow's server prints at
# start: Starlette deprecating a module MLflow imports, which no setting of ours can act on.
_STARLETTE_NOTICE = "ignore:starlette.middleware.wsgi is deprecated:Warning"


class ViewError(RuntimeError):
    """A view cannot start; the message is one line saying why and what to do."""


def _url_host(host: str) -> str:
    """The host a browser reaches a server bound to ``host`` at (a wildcard: this machine)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def base_url(host: str = DEFAULT_HOST, port: int = UI_PORT) -> str:
    """The URL of a view served on ``host``:``port``, as a browser on this machine opens it."""
    return f"http://{_url_host(host)}:{port}"


def _column(kind: str, name: str) -> str:
    """A runs-table column as MLflow's UI names it: ``params.`lambda0```, ``metrics.`test_acc```."""
    return f"{kind}.`{name}`"


def study_columns(extra: Sequence[str] = ()) -> tuple[str, ...]:
    """What a study's runs table shows, in this order after the run's name: the test accuracy the
    search ranks by, the energy of one inference (µJ, :mod:`snn.energy`), the dimensions a full
    search draws (:func:`search_spaces.searched`), the spec's ``extra`` dimensions, and the
    method they amount to."""
    dims = dict.fromkeys((*searched(), *extra))
    return (_column("metrics", TEST_ACC), _column("metrics", ENERGY), *(_column("params", p) for p in dims),
            _column("tags", "method"))


STUDY_COLUMNS: tuple[str, ...] = study_columns()
_RUN_NAME = _column("attributes", "Run Name")  # the UI's id of the runs table's name column


def _width(column: str) -> int:
    """Pixels for ``column``: its header, no wider (the UI's default, 100, puts the last of
    :data:`STUDY_COLUMNS` past the edge of a 1600-pixel screen with MLflow's assistant open)."""
    return 150 if column == _RUN_NAME else max(90, 8 * len(column.split("`")[1]))


@dataclass(frozen=True)
class SavedView:
    """A saved view of MLflow's runs table: ``columns`` shown, ranked by metric ``rank_by``, best
    first (ranked, the table lists every trial as a row; unranked, it nests them under the
    study's run, collapsed, and a saved view cannot expand them: the UI leaves row expansion
    out of one).

    Its :attr:`key` is a hash of its :meth:`state`, so one view is written once however often
    ``snn-study ui`` runs, and a changed view gets a key of its own.
    """

    columns: tuple[str, ...] = field(default_factory=study_columns)
    rank_by: str | None = TEST_ACC
    name: str = field(default="snn-study: trials", compare=False)  # in the UI's list of views

    def state(self) -> dict[str, object]:
        """The view's state as MLflow's UI saves one: its search facets (sort, filters, at their
        defaults but the sort) and the table's columns (which, in what order, how wide: the
        name first, then ``columns``); the UI fills in the rest."""
        order = [_RUN_NAME, *self.columns]
        return {"searchFilter": "", "orderByKey": _column("metrics", self.rank_by) if self.rank_by
                else "attributes.start_time", "orderByAsc": False, "startTime": "ALL", "lifecycleFilter": "Active",
                "datasetsFilter": [], "modelVersionFilter": "All Runs", "selectedColumns": list(self.columns),
                "columnOrder": order, "columnWidths": {c: _width(c) for c in order}}

    @property
    def key(self) -> str:
        text = json.dumps(self.state(), sort_keys=True, separators=(",", ":"))
        return "snn-" + hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def tag(self) -> str:
        """The experiment tag that holds the view."""
        return VIEW_TAG_PREFIX + self.key

    def tag_value(self, now_ms: int | None = None) -> str:
        """The tag's value: the UI's envelope (name, times in ms, the state as a JSON string)."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        return json.dumps({"name": self.name, "createdAt": now_ms, "updatedAt": now_ms,
                           "state": json.dumps(self.state(), separators=(",", ":"))}, separators=(",", ":"))


STUDY_VIEW = SavedView()


def study_link(experiment_id: str, host: str = DEFAULT_HOST, port: int = UI_PORT, *,
               rank_by: str | None = TEST_ACC, view: SavedView | None = STUDY_VIEW) -> str:
    """The runs table of experiment ``experiment_id`` in MLflow's classic ML view (not its GenAI view):
    in saved ``view`` (written by :func:`classic_experiment`), else ranked by metric ``rank_by``,
    best first.

    Ranked, the table lists every run as a row; in its default order (by start time) it nests a
    study's trials under the study's run, collapsed, so the link would show one row. A view
    carries its own sort: the UI ignores a view where the link sorts or filters too.
    """
    query = {"workflowType": WORKFLOW}
    if view is not None:
        query[VIEW_KEY_PARAM] = view.key
    elif rank_by:
        query.update(orderByKey=_column("metrics", rank_by), orderByAsc="false")
    return f"{base_url(host, port)}/#/experiments/{experiment_id}/runs?{urllib.parse.urlencode(query)}"


def compare_link(run_ids: Sequence[str], experiment_ids: Sequence[str], host: str = DEFAULT_HOST,
                 port: int = UI_PORT) -> str:
    """MLflow's compare view of ``run_ids`` in its classic ML view (the UI's ``/compare-runs`` route:
    JSON lists of run and experiment ids, the experiments sorted and without repeats, as the UI
    itself writes them)."""
    runs = urllib.parse.quote(json.dumps(list(run_ids), separators=(",", ":")))
    experiments = urllib.parse.quote(json.dumps(sorted(set(experiment_ids)), separators=(",", ":")))
    return f"{base_url(host, port)}/#/compare-runs?runs={runs}&experiments={experiments}&workflowType={WORKFLOW}"


def dashboard_link(host: str = DEFAULT_HOST, port: int = DASHBOARD_PORT, study_id: int | None = None) -> str:
    """optuna-dashboard's page of Optuna study ``study_id`` (its list of studies for None)."""
    return f"{base_url(host, port)}/dashboard" + (f"/studies/{study_id}" if study_id is not None else "")


def mlflow_ui_command(tracking_uri: str, host: str = DEFAULT_HOST, port: int = UI_PORT) -> list[str]:
    """The command that serves MLflow's UI on ``tracking_uri`` for one user: one uvicorn worker, no
    access log on the console; run it with :func:`mlflow_ui_env`.

    Runs keep the artifact location they were logged with (a local folder, for a sqlite store
    a study writes through ``MlflowClient``), and the server reads them there, so no artifact
    option is given; the registry is the same store (said here, so MLflow does not print that
    it chose so).
    """
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
            "--registry-store-uri", tracking_uri, "--host", host, "--port", str(port), "--workers", "1",
            "--uvicorn-opts", "--no-access-log"]


def mlflow_ui_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of :func:`mlflow_ui_command`: ``base`` (default: this process's) with MLflow's
    job execution off (no huey consumers, the GenAI features' job runners) and Starlette's
    deprecation notice filtered (``PYTHONWARNINGS``, after the user's own filters)."""
    env = dict(os.environ if base is None else base)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    env["PYTHONWARNINGS"] = ",".join(w for w in (env.get("PYTHONWARNINGS"), _STARLETTE_NOTICE) if w)
    return env


def classic_experiment(tracking_uri: str, experiment: str, view: SavedView | None = STUDY_VIEW) -> str | None:
    """The id of ``experiment`` in ``tracking_uri``, tagged to open in MLflow's classic ML view
    (``mlflow.experimentKind=custom_model_development``) with saved ``view`` (:func:`save_view`),
    each written only where missing; None where the store has no such experiment. A store that
    refuses the kind tag keeps the link working: it names the view itself."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    if found.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        try:
            client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        except MlflowException:
            pass
    if view is not None:
        save_view(client, found.experiment_id, view, found.tags)
    return found.experiment_id


def save_view(client: MlflowClient, experiment_id: str, view: SavedView, tags: Mapping[str, str] | None = None) -> bool:
    """Write ``view`` to experiment ``experiment_id`` (its ``tags``, where the caller has read them),
    unless it is there already, and drop the views of the same name it replaces (an older
    :data:`STUDY_VIEW`), so the UI's list of views holds one. False where the store refuses."""
    from mlflow.exceptions import MlflowException

    tags = client.get_experiment(experiment_id).tags if tags is None else tags
    try:
        if view.tag not in tags:
            client.set_experiment_tag(experiment_id, view.tag, view.tag_value())
        for key, value in tags.items():
            if key.startswith(VIEW_TAG_PREFIX) and key != view.tag and _view_name(value) == view.name:
                client.delete_experiment_tag(experiment_id, key)
    except MlflowException:
        return False
    return True


def _view_name(value: str) -> str | None:
    try:
        found = json.loads(value)
    except ValueError:
        return None
    return found.get("name") if isinstance(found, dict) else None


def optuna_storage(folder) -> str:
    """The Optuna storage URL of the study in ``folder`` (a :class:`study.folder.StudyFolder`): the
    study folder's SQLite file, or the database server of the spec's ``search.storage``.

    Raises:
        ViewError: The study has none: population-based training searches without Optuna, and a
            study whose search has not started has not written its SQLite file yet.
    """
    from study.spec import POPULATION

    spec = folder.spec
    if spec.scheduler in POPULATION:
        raise ViewError(f"{spec.name}: scheduler {spec.scheduler} (population-based training) draws its trials "
                        f"without Optuna, so the study has no Optuna storage to show; `snn-study ui` shows its runs")
    path = folder.optuna_path
    if spec.search.storage is None and not path.is_file():
        raise ViewError(f"{spec.name}: no Optuna storage at {path} (the study's search has not started); "
                        f"run or resume the study first")
    return folder.optuna_url


def optuna_study_id(storage: str, name: str) -> int | None:
    """The id of Optuna study ``name`` in ``storage`` (None where it is not there), read without
    writing: for the dashboard's link straight to the study."""
    import optuna

    try:
        return optuna.storages.RDBStorage(storage, skip_table_creation=True).get_study_id_from_name(name)
    except Exception:  # an unreadable or older storage: the link opens the dashboard's list instead
        return None


def _console_script(name: str) -> str:
    """The path of console script ``name``: this Python's own (its venv), else the one on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.is_file() and os.access(here, os.X_OK) else shutil.which(name)
    if found is None:
        raise ViewError(f"{name} is not installed in this environment; install it (pip install {name})")
    return found


def dashboard_command(storage: str, host: str = DEFAULT_HOST, port: int = DASHBOARD_PORT) -> list[str]:
    """The command that serves optuna-dashboard on Optuna ``storage``: one process (the wsgiref
    server, threaded; gunicorn, its default where installed, forks a worker), quiet."""
    return [_console_script("optuna-dashboard"), storage, "--host", host, "--port", str(port),
            "--server", "wsgiref", "--quiet"]


def check_port(host: str, port: int) -> None:
    """Refuse ``host``:``port`` where a server could not listen (an address in use, a host that is
    not this machine's), before starting one that would fail after seconds of start-up.

    Raises:
        ViewError: The address cannot be bound.
    """
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ViewError(f"--host: {host!r} is not a name or address of this machine ({e.strerror}); "
                        f"use 127.0.0.1, or 0.0.0.0 for every interface") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and wsgiref bind
        try:
            s.bind(address)
        except OSError as e:
            raise ViewError(f"--port: {port} on {host} cannot be used ({e.strerror}); "
                            f"choose a free port between 1024 and 65535") from None


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _last_line(log: Path | None) -> str:
    if log is None or not log.is_file():
        return ""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return f": {lines[-1][:300]}" if lines else ""


def wait_until_up(url: str, proc: subprocess.Popen, timeout_s: float = 120.0, log: Path | None = None) -> None:
    """Wait until ``url`` answers 200 while ``proc`` runs.

    Raises:
        ViewError: ``proc`` ended first, or ``url`` did not answer within ``timeout_s``; the
            message ends with the last line of the server's ``log``, where given.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            where = f" (its log: {log})" if log is not None else ""
            raise ViewError(f"the server exited with code {proc.returncode} before it answered{where}"
                            f"{_last_line(log)}")
        if _answers(url):
            return
        time.sleep(0.25)
    raise ViewError(f"the server did not answer {url} within {timeout_s:.0f} s"
                    + (f" (its log: {log})" if log is not None else ""))


def stop(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """Stop ``proc`` and what it started (its process group: :func:`serving` starts it in one of
    its own): SIGTERM, which both servers answer by shutting down cleanly, then SIGKILL for
    whatever is left after ``timeout_s``."""
    def signal_group(sig: int) -> bool:
        try:
            os.killpg(proc.pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    signal_group(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + timeout_s
    while signal_group(0) and time.monotonic() < deadline:  # the server's own children (uvicorn)
        time.sleep(0.1)
    signal_group(signal.SIGKILL)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


@contextmanager
def serving(cmd: Sequence[str], health_url: str, *, env: Mapping[str, str] | None = None,
            log: Path | None = None, timeout_s: float = 120.0) -> Iterator[subprocess.Popen]:
    """Start ``cmd`` in a process group of its own, yield it once ``health_url`` answers, and stop
    the group when the block ends, however it ends (an error, Ctrl-C).

    Output goes to ``log`` (appended) where given, else to this process's console. A group of
    its own: a terminal's Ctrl-C reaches only the caller, which then stops the server in order.
    """
    out: IO | None = log.open("ab") if log is not None else None
    try:
        proc = subprocess.Popen(list(cmd), env=dict(env) if env is not None else None, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True)
    except BaseException:
        if out is not None:
            out.close()
        raise
    try:
        wait_until_up(health_url, proc, timeout_s, log)
        yield proc
    finally:
        with _no_interrupts():  # a second Ctrl-C must not leave the server half-stopped
            stop(proc)
        if out is not None:
            out.close()


@contextmanager
def _no_interrupts() -> Iterator[None]:
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_view(cmd: Sequence[str], health_url: str, link: str, *, env: Mapping[str, str] | None = None,
             log: Path | None = None, echo: Callable[[str], None] = print, timeout_s: float = 120.0) -> int:
    """Serve a view until it ends or the user stops it (Ctrl-C, SIGTERM): print ``open <link>``
    once it answers. Returns the exit code for the command: the server's, 0 when stopped.

    Raises:
        ViewError: The server did not come up (:func:`wait_until_up`).
    """
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with serving(cmd, health_url, env=env, log=log, timeout_s=timeout_s) as proc:
            echo(f"open {link}")
            echo("Ctrl-C to stop" + (f"; the server's log: {log}" if log is not None else ""))
            return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
