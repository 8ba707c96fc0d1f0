"""The errors of the data layer: the one every loader raises when a dataset's files are
missing, and the one a user's data raises when it can never train; and the one way the
loaders write files (whole or not at all)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["DataError", "DatasetNotFoundError", "cleanup_on_failure", "not_found", "write_whole"]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing (and were not, or could not be, downloaded)."""


class DataError(ValueError):
    """A user's data can never train as the spec describes it."""


def not_found(name: str, where: str | os.PathLike, what: str, cause: BaseException | None = None) -> DatasetNotFoundError:
    """A one-line error naming the dataset, the directory searched and what to place there."""
    why = f" (download failed: {type(cause).__name__}: {cause})" if cause is not None else ""
    return DatasetNotFoundError(
        f"dataset {name!r}: files not found in {Path(where).resolve()}{why}; place {what} there, or pass "
        f"download=True (spec: download: true) where a network is available")


@contextmanager
def cleanup_on_failure(root: str | os.PathLike):
    """Remove whatever a failed download created under ``root``, so nothing half-written stays."""
    root = Path(root)
    before = set(root.iterdir()) if root.exists() else None
    try:
        yield
    except BaseException:
        if before is None:
            shutil.rmtree(root, ignore_errors=True)
        else:
            for p in set(root.iterdir()) - before:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        raise


def write_whole(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through ``write(file)`` under a temporary name beside it, then rename it
    into place: concurrent trials read the whole file or none, and a failed write leaves nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
