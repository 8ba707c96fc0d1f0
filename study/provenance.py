"""What re-running a trial needs besides its config: the code's version and the libraries'.

Recorded as tags on every trial's MLflow run (:mod:`study.tracking`): the project's version
(its installed distribution), the git commit of the project folder where it is a git
checkout (and whether the tree had uncommitted changes), and the versions of Python, torch,
Ray, Optuna, MLflow and NumPy. MLflow's own tag names are used where MLflow has them
(``mlflow.source.git.commit``), plain ``version.<name>`` tags otherwise. Computed once per
process.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_GIT_DIRTY

__all__ = ["LIBRARIES", "PROJECT_VERSION_TAG", "Provenance", "provenance", "version_tag"]

ROOT = Path(__file__).resolve().parents[1]  # the project folder (a git checkout, or site-packages)
LIBRARIES = ("torch", "ray", "optuna", "mlflow", "numpy")  # distributions whose versions are recorded
PROJECT_VERSION_TAG = "version.project"
_GIT_TIMEOUT_S = 5.0


def version_tag(name: str) -> str:
    """The tag of a library's (or ``python``'s) version: ``version.<name>``."""
    return f"version.{name}"


@dataclass(frozen=True)
class Provenance:
    """The code a process runs: the project's name, version and git commit, the libraries' versions."""

    project: str | None
    version: str | None  # the installed distribution's version
    commit: str | None  # None: not a git checkout, or git is absent
    dirty: bool | None  # uncommitted changes to tracked files (None without a commit)
    versions: dict[str, str] = field(default_factory=dict)  # python and each of LIBRARIES installed

    def tags(self) -> dict[str, str]:
        """MLflow tags: MLflow's own git tags, ``version.project`` and ``version.<library>``."""
        tags = {version_tag(k): v for k, v in self.versions.items()}
        if self.version is not None:
            tags[PROJECT_VERSION_TAG] = self.version
        if self.commit is not None:
            tags[MLFLOW_GIT_COMMIT] = self.commit
            if self.dirty is not None:
                tags[MLFLOW_GIT_DIRTY] = str(self.dirty).lower()
        return tags


def _project_name() -> str | None:
    """The distribution's name: pyproject.toml's where the project folder has one, else the
    installed distribution that provides this package."""
    pyproject = ROOT / "pyproject.toml"
    try:
        text = pyproject.read_text(encoding="utf-8")
    except (OSError, ValueError):
        text = None
    if text is not None:
        try:
            import tomllib

            name = tomllib.loads(text).get("project", {}).get("name")
        except (ImportError, ValueError):  # Python 3.10, or a file tomllib refuses
            m = re.search(r'^\s*name\s*=\s*"([^"]+)"', text, re.MULTILINE)
            name = m[1] if m else None
        if name:
            return str(name)
    dists = importlib.metadata.packages_distributions().get(__package__ or "study", [])
    return dists[0] if dists else None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=_GIT_TIMEOUT_S,
                           check=False)
    except (OSError, subprocess.SubprocessError):  # no git, or it hung
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def _commit() -> tuple[str | None, bool | None]:
    """HEAD of the project folder and whether tracked files differ from it; (None, None) where
    the folder is not the top of a git checkout (an installed package inside someone's repo is not)."""
    top = _git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != ROOT:
        return None, None
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return None, None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit, (bool(status) if status is not None else None)


@functools.cache
def provenance() -> Provenance:
    """The provenance of this process's code (computed once)."""
    name = _project_name()
    versions = {"python": platform.python_version()}
    versions.update({lib: v for lib in LIBRARIES if (v := _version(lib)) is not None})
    commit, dirty = _commit()
    return Provenance(name, _version(name) if name else None, commit, dirty, versions)
