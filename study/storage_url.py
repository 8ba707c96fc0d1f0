"""Optuna's storage URL (``search.storage``): checked without connecting, and shown without its
password wherever the study records or prints it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

__all__ = ["RDB_BACKENDS", "hide_password", "rdb_url", "redacted"]


RDB_BACKENDS = ("postgresql", "mysql", "mariadb", "sqlite")
"""The databases ``search.storage`` may name: those Optuna's RDB storage supports."""


def rdb_url(value: str) -> str:
    """``value`` checked as an Optuna RDB storage URL, parsed by SQLAlchemy without connecting;
    a relative SQLite path made absolute (a resume from another folder opens the same file).
    The error never repeats a password: a URL that does not parse is not echoed at all."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    allowed = (f"give a SQLAlchemy URL of {', '.join(RDB_BACKENDS[:-1])} or {RDB_BACKENDS[-1]}, e.g. "
               f"postgresql+psycopg://user@host:5432/optuna or sqlite:////abs/path.db (or leave it out: the SQLite "
               f"file optuna.db in the study folder)")
    try:
        url = make_url(value)
    except (ArgumentError, ValueError):
        raise ValueError(f"not a database URL; {allowed}") from None
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() not in RDB_BACKENDS:
        raise ValueError(f"{shown!r} is not an RDB storage Optuna can use; {allowed}")
    try:
        url.get_dialect()  # the driver's name is one SQLAlchemy knows (it is imported when the study opens it)
    except NoSuchModuleError:
        raise ValueError(f"{shown!r}: SQLAlchemy has no driver {url.get_driver_name()!r} for "
                         f"{url.get_backend_name()}; {allowed}") from None
    if url.get_backend_name() == "sqlite":
        if url.database in (None, "", ":memory:"):
            raise ValueError(f"{shown!r} is an in-memory database, gone when the study's driver ends; {allowed}")
        if not Path(url.database).is_absolute():
            return url.set(database=str(Path(url.database).expanduser().resolve())).render_as_string(
                hide_password=False)
    return value


def hide_password(url: str) -> str:
    """Database URL ``url`` with its password, if it has one, shown as ``***``: what MLflow, the
    report and the console show of ``search.storage``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "(a database URL)"  # never the text as given: it may hold a password


def redacted(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of a resolved spec as plain data (what the study folder keeps) fit to be recorded
    elsewhere (MLflow): the password of ``search.storage`` hidden."""
    out = copy.deepcopy(data)
    search = out.get("search")
    if isinstance(search, dict) and search.get("storage"):
        search["storage"] = hide_password(search["storage"])
    return out
