"""A study's folder: what a study writes where, and opening one again.

``studies/<name>/`` (the spec's ``storage``) holds Tune's experiment (its state and one
``trial_<id>/`` folder per trial, with the checkpoints), the resolved spec
(:data:`SPEC_FILE`), where MLflow records the study (:data:`STATE_FILE`) and the Optuna
storage (:data:`OPTUNA_FILE`, unless the spec's ``search.storage`` names a database server:
:func:`optuna_url` decides). ``snn-study resume``, ``sync``, ``report`` and ``ui`` start
from it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from study.spec import SpecError, StudySpec, hide_password, parse_spec

__all__ = ["CONFIRM", "OPTUNA_FILE", "SEARCH", "SPEC_FILE", "STATE_FILE", "StudyError", "StudyFolder", "open_study",
           "optuna_url", "stage_dir", "stage_of", "study_paths"]

SPEC_FILE = "study.yaml"  # the resolved spec, written before the study starts
STATE_FILE = "study.json"  # MLflow parent run id and tracking URI of the study
OPTUNA_FILE = "optuna.db"
SEARCH, CONFIRM = "search", "confirm"  # a study's stages: the search, then (if the spec asks) the confirm stage


def stage_dir(stage: str) -> str:
    """Where a stage's Tune experiment lives, relative to the study folder: the search in the
    folder itself, the confirm stage in ``confirm/``."""
    return "" if stage == SEARCH else stage


def stage_of(trial_dir: str | os.PathLike) -> str:
    """The stage a trial folder belongs to."""
    return CONFIRM if Path(trial_dir).parent.name == CONFIRM else SEARCH


class StudyError(RuntimeError):
    """A study cannot start, resume or be read, or one trial trained alone (:mod:`study.single_trial`)
    cannot train; the message is one line saying why and what to do.

    Attributes:
        exit_code: 2 for a request that can never run as given (like a bad spec), else 1.
    """

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def study_paths(spec: StudySpec) -> dict[str, Path]:
    """The study folder of ``spec`` and the files in it."""
    d = spec.study_dir()
    return {"dir": d, "spec": d / SPEC_FILE, "state": d / STATE_FILE, "optuna": d / OPTUNA_FILE}


def optuna_url(spec: StudySpec, folder: Path | None = None) -> str:
    """The Optuna storage of ``spec``'s study, as an RDB URL: the spec's ``search.storage``, else the
    SQLite file :data:`OPTUNA_FILE` in the study folder (``folder``; default: the spec's)."""
    if spec.search.storage is not None:
        return spec.search.storage
    return f"sqlite:///{(spec.study_dir() if folder is None else folder) / OPTUNA_FILE}"


@dataclass(frozen=True)
class StudyFolder:
    """A study as its folder describes it."""

    path: Path
    spec: StudySpec
    parent_run_id: str
    tracking_uri: str

    @property
    def tune_dir(self) -> str:
        """Tune's experiment: this folder, or the spec's remote storage URI."""
        return self.spec.storage_uri().rstrip("/") + "/" + self.spec.name

    @property
    def optuna_path(self) -> Path:
        """The study folder's SQLite file of the Optuna storage, where the spec's ``search.storage``
        names no other (a pbt or pb2 study has none, and a study whose search has not started has
        none yet)."""
        return self.path / OPTUNA_FILE

    @property
    def optuna_url(self) -> str:
        """The study's Optuna storage as an RDB URL: the spec's ``search.storage``, else
        :attr:`optuna_path`'s. It may hold a password: show :attr:`optuna_shown` instead."""
        return optuna_url(self.spec, self.path)

    @property
    def optuna_shown(self) -> str:
        """The study's Optuna storage as messages, reports and MLflow name it: the SQLite file's
        path, or the URL with its password hidden."""
        return str(self.optuna_path) if self.spec.search.storage is None else hide_password(self.optuna_url)

    def optuna_study(self):
        """The study's Optuna study, from :attr:`optuna_url`.

        Raises:
            FileNotFoundError: The study has no Optuna storage (the SQLite file in the folder
                is not there).
            KeyError: The storage holds no study of this name.
            Exception: Whatever Optuna raised reading a damaged or foreign file, or a database
                server that does not answer.
        """
        if self.spec.search.storage is None and not self.optuna_path.is_file():
            raise FileNotFoundError(f"no Optuna storage at {self.optuna_path}")
        import optuna

        return optuna.load_study(study_name=self.spec.name, storage=self.optuna_url)

    def trial_dirs(self) -> list[Path]:
        """The trial folders Tune made, the search's then the confirm stage's (local storage
        only; a remote one has none here)."""
        if "://" in self.tune_dir:
            return []
        root = Path(self.tune_dir)
        return [p for pattern in ("trial_*", f"{CONFIRM}/trial_*") for p in sorted(root.glob(pattern)) if p.is_dir()]


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Write the study's MLflow state whole (a reader never sees half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(path)


def open_study(study: str | os.PathLike) -> StudyFolder:
    """Open the study in folder ``study``, or the one named ``study`` under ./studies.

    Raises:
        StudyError: No study there, or its files cannot be read.
    """
    d = Path(study)
    if not (d / SPEC_FILE).exists() and (Path("studies") / str(study) / SPEC_FILE).exists():
        d = Path("studies") / str(study)
    if not (d / SPEC_FILE).is_file() or not (d / STATE_FILE).is_file():
        raise StudyError(f"{study}: no study found there (expected {SPEC_FILE} and {STATE_FILE} in the folder)")
    try:
        spec = parse_spec(yaml.safe_load((d / SPEC_FILE).read_text()), str(d / SPEC_FILE))
        state = json.loads((d / STATE_FILE).read_text())
        return StudyFolder(d.resolve(), spec, state["parent_run_id"], state["tracking_uri"])
    except (OSError, ValueError, KeyError, yaml.YAMLError, SpecError) as e:
        raise StudyError(f"{d}: the study's files cannot be read ({type(e).__name__}: {e})") from None
