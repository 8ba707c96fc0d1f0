"""What ``run`` and ``resume`` check and start before a study's Tuner runs.

Each check fails with a :class:`~study.folder.StudyError` before anything that would have
to be undone: the MLflow tracking server answers (:func:`check_server`), the Optuna
storage opens and a new study's name is free there (:func:`check_optuna`), and, once Ray
is started or joined (:func:`start_ray`), one trial fits in the cluster
(:func:`check_resources`). :func:`rdb_storage` opens the Optuna storage for these checks and
for the search. The data are opened by :func:`study.preflight.prepare_data`.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import optuna
import ray
from sqlalchemy.engine import make_url

from snn.config import one_line
from study.folder import StudyError
from study.spec import StudySpec, hide_password
from study.tracking import check_tracking_uri

__all__ = ["check_optuna", "check_resources", "check_server", "rdb_storage", "start_ray"]

log = logging.getLogger(__name__)


def _project_root() -> str:
    return str(Path(__file__).resolve().parents[1])


def start_ray(spec: StudySpec, address: str | None) -> bool:
    """Start a local Ray, or join ``address``; the spec's ``env_vars`` go to the trials' processes.

    Args:
        spec: The study's spec.
        address: The Ray cluster to join (``auto``, ``host:port``, ``ray://...``); None starts
            a new local Ray, never a cluster that ``ray start`` left behind in /tmp/ray, and
            whatever ``RAY_ADDRESS`` says (``snn-study`` passes that variable as ``--address``).

    Returns:
        Whether this started a Ray of its own (whose processes the study records).
    """
    env_vars = dict(spec.env_vars)
    if ray.is_initialized():
        if env_vars:
            log.warning("env_vars: Ray was already started in this process; its trials keep that Ray's "
                        "environment, without %s", ", ".join(sorted(env_vars)))
        return False
    if address:  # the trials run where the project may not be installed: give them its folder
        env_vars["PYTHONPATH"] = os.pathsep.join(filter(None, [_project_root(), env_vars.get("PYTHONPATH")]))
    # "local": Ray's word for a new instance; ray.init(address=None) would read RAY_ADDRESS itself,
    # then join the newest cluster recorded in /tmp/ray
    target = address or "local"
    ray.init(address=target, dashboard_host="127.0.0.1", configure_logging=False,
             runtime_env={"env_vars": env_vars} if env_vars else None)
    return target == "local"


def check_resources(spec: StudySpec) -> None:
    """A trial that asks for more than the whole cluster has would wait forever: refuse it."""
    total = ray.cluster_resources()
    for key, want in (("GPU", spec.resources.gpu), ("CPU", spec.resources.cpu)):
        have = total.get(key, 0.0)
        if want > have:
            raise StudyError(f"resources.{key.lower()}: {want:g} per trial requested, but the Ray cluster has "
                             f"{have:g} {key}(s) in all; lower it, or join a bigger cluster with --address",
                             exit_code=2)


def check_server(uri: str) -> None:
    """Fail before Ray starts when an MLflow server cannot be reached (a local store always can)."""
    try:
        check_tracking_uri(uri)
    except ConnectionError as e:
        raise StudyError(str(e)) from None


def rdb_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at ``url``, its tables made where the database has none yet.

    Two studies that start at once on a new database server both make the tables: one's
    CREATE then fails on what the other made (a unique violation in PostgreSQL's catalog),
    and it opens the storage again, complete by then.
    """
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(1, 5):
        try:
            return optuna.storages.RDBStorage(url)
        except (IntegrityError, ProgrammingError):
            time.sleep(0.5 * attempt)
    return optuna.storages.RDBStorage(url)


def check_optuna(spec: StudySpec, *, new: bool) -> None:
    """Fail before Ray starts when the database server of the spec's ``search.storage`` cannot be
    opened, or when a new study's name is taken there: Ray's OptunaSearch would carry on another
    study's search of that name (a server is shared; the study folder's own file is not)."""
    if spec.search.storage is None:
        return
    shown = hide_password(spec.search.storage)
    try:
        storage = rdb_storage(spec.search.storage)  # creates Optuna's tables, as the search would
        try:
            storage.get_study_id_from_name(spec.name)
            taken = True
        except KeyError:
            taken = False
        storage.engine.dispose()  # its connections: the search opens its own
    except Exception as e:  # no driver, no server, refused credentials: the database's own words
        if _holds_mlflow(spec.search.storage):  # Optuna's own words blame its version
            raise StudyError(f"search.storage: {shown} holds MLflow's tables (it is an MLflow backend store); "
                             f"Optuna needs a database of its own, as both version their tables in "
                             f"alembic_version: create one (e.g. 'createdb optuna') and name it here") from None
        why = one_line(e, 300)
        password = make_url(spec.search.storage).password
        if password:
            why = why.replace(str(password), "***")
        raise StudyError(f"search.storage: cannot open the Optuna storage {shown} ({type(e).__name__}: {why}); "
                         f"start the database server, install its driver or fix the URL") from None
    if new and taken:
        raise StudyError(f"search.storage: {shown} already holds an Optuna study named {spec.name!r}, another "
                         f"study's search; choose another name (or resume that study)")


def _holds_mlflow(url: str) -> bool:
    """Whether the database at ``url`` holds MLflow's tables (its runs, experiments, metrics)."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url)
    except Exception:
        return False
    try:
        return {"experiments", "runs", "metrics"} <= set(sqlalchemy.inspect(engine).get_table_names())
    except Exception:
        return False
    finally:
        engine.dispose()
