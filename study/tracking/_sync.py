"""The sync: writes into MLflow whatever a study's trial folders hold and MLflow lacks.

It runs at the end of a study, on ``snn-study resume`` and as ``snn-study sync``, so an
outage of the tracking store, or a driver that died during one, costs MLflow nothing once
the store answers again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snn.config import one_line
from study.folder import SEARCH, StudyFolder, stage_of
from study.spec import POPULATION
from study.tracking._folders import TrialRecord, read_trial
from study.tracking._health import reachable
from study.tracking._projection import _Projection

__all__ = ["SyncSummary", "optuna_of", "project", "sync_study"]

log = logging.getLogger(__name__)

_ORPHAN = "the driver stopped before Tune recorded this trial; re-suggested on resume"


def optuna_of(folder: StudyFolder) -> Callable[[], Any] | None:
    """What loads the study's Optuna study, whose trials the runs link to; None for a study
    without one (PBT's population is drawn by Tune)."""
    return None if folder.spec.scheduler in POPULATION else folder.optuna_study


@dataclass
class SyncSummary:
    """What a sync wrote: epochs, runs closed, and the trials it could not write (id -> why)."""

    epochs: int = 0
    closed: int = 0
    trials: int = 0
    failed: dict[str, str] = field(default_factory=dict)


def project(projection: _Projection, record: TrialRecord, status: str | None = None, reason: str | None = None,
            summary: SyncSummary | None = None) -> None:
    """Write one trial's record; close its run if it trained all its epochs (FINISHED), diverged
    (FAILED) or ``status`` says how it ended."""
    summary = summary if summary is not None else SyncSummary()
    summary.trials += 1
    summary.epochs += projection.log(record.trial_id, record.config, record.results, record.stage)
    if record.diverged:
        status = "FAILED"
    elif record.stopped:
        status, reason = "FINISHED", None
    elif record.complete:
        status, reason = "FINISHED", None
    if status in ("FINISHED", "FAILED"):
        summary.closed += projection.end(record, status, reason)


def sync_study(folder: StudyFolder, statuses: dict[str, str] | None = None, *, final: bool = False,
               trial_dirs: Iterable[Path] | None = None, stage: str | None = None) -> SyncSummary:
    """Write into MLflow whatever the study's trial folders hold and MLflow lacks.

    Idempotent: an epoch MLflow has is not sent again, a closed run is not closed again.
    A trial that trained all its epochs is closed FINISHED, a diverged one FAILED; others
    as ``statuses`` says (trial id -> FINISHED, FAILED, or RUNNING to leave it open).

    Args:
        folder: The study.
        statuses: Tune's word on each trial, where the caller has it (the end of a study).
        final: The study has ended: runs of trials Tune does not know (started just before
            a driver died, and re-suggested on resume) are closed FAILED.
        trial_dirs: Where to read the trials (default: the study folder's; a study on remote
            storage passes the driver's copies).
        stage: Only this stage's trials (the end of a stage); None: every stage.

    Raises:
        Exception: Whatever the tracking store raised (it is down): run the sync again later.
    """
    statuses = statuses or {}
    projection = _Projection(folder.tracking_uri, folder.spec.experiment, folder.spec.name, folder.parent_run_id,
                             optuna_of(folder))
    summary = SyncSummary()
    for trial_dir in folder.trial_dirs() if trial_dirs is None else trial_dirs:
        if stage is not None and trial_dirs is None and stage_of(trial_dir) != stage:
            continue
        record = read_trial(trial_dir)
        if record is None:
            continue
        orphan = final and record.trial_id not in statuses
        try:
            project(projection, record, "FAILED" if orphan else statuses.get(record.trial_id),
                    _ORPHAN if orphan else None, summary)
        except Exception as e:
            if not reachable(folder.tracking_uri):
                raise  # the store is down: the whole sync is for later
            # one trial's record the store refuses: the others are written, and their runs closed
            summary.failed[record.trial_id] = f"{type(e).__name__}: {one_line(e)}"
            log.warning("MLflow: trial %s could not be written (%s); 'snn-study sync %s' tries it again",
                        record.trial_id, summary.failed[record.trial_id], folder.path)
    if final:
        summary.closed += projection.fail_unknown(set(statuses), _ORPHAN, stage or SEARCH)
    return summary
