"""The live run writer: a Tune callback on the driver that writes each trial into MLflow as its
results arrive, through one writer thread beside Tune's loop.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from ray import tune

from snn.metrics import EPOCH
from snn.config import one_line
from study.folder import SEARCH, StudyFolder
from study.tracking._folders import TrialRecord, by_epoch, read_trial, trial_ended
from study.tracking._health import reachable
from study.tracking._projection import _Projection
from study.tracking._sync import optuna_of, project, sync_study

__all__ = ["StudyTracker"]

log = logging.getLogger(__name__)


def _run_status(trial, epochs: int) -> str:
    """How Tune's run left a trial, as its MLflow run's status: FAILED if it errored, FINISHED
    if it ended (:func:`trial_ended`: trained its ``epochs``, stopped by the scheduler, diverged,
    stopped by the firing-rate guard), else RUNNING: the run stays open.

    On SIGINT Tune marks the trials still training TERMINATED as it cleans up, without ending
    them; ``snn-study resume`` trains them on, in the same runs, as it does the trials left
    PENDING or PAUSED.
    """
    if trial.status == "ERROR":
        return "FAILED"
    if trial.status == "TERMINATED" and trial_ended(trial.last_result or {}, epochs):
        return "FINISHED"
    return "RUNNING"


class StudyTracker(tune.Callback):
    """Tune callback that projects each trial into MLflow as its results arrive.

    Best effort, and never in the trials' way: a trial waits for the driver after every
    epoch, so the writes run in one writer thread beside Tune's loop (one writer, so
    concurrent trials never race on the store). A result that arrives while the writer is
    busy is not queued: its trial is marked behind, and the next write first brings such
    trials up to date from their folders, which hold every epoch already. A write the store
    refuses, or a server that does not answer (:func:`reachable`), is skipped with one
    warning; training goes on. When the study ends, everything is synced from the trial
    folders (:func:`sync_study`).

    MLflow's client retries a failed write as its environment says (``snn-study`` sets
    :data:`study.tracking.MLFLOW_ENVIRONMENT`); the tracker changes none of it.

    Args:
        folder: The study (its MLflow experiment, parent run and trial folders).
        stage: The study's stage whose trials this Tune run holds (search, or confirm).
    """

    # Tune pickles its callbacks with the experiment and restores them on resume: the class is
    # recorded under its public path, whichever private module holds it
    __module__ = "study.tracking"

    SLOW_WRITE_S = 5.0  # a write under way this long, to a store whose health check fails, is an outage
    END_WAIT_S = 300.0  # how long the study's end waits for a store that does not answer (a restart)
    END_POLL_S = 5.0

    def __init__(self, folder: StudyFolder, stage: str = SEARCH) -> None:
        self.folder, self.stage = folder, stage
        self._init()

    def _init(self) -> None:
        self._projection: _Projection | None = None
        self._trials: dict[str, Any] = {}  # trial id -> Tune's trial (its folder, config, last result)
        # trial id -> the config it started with: its run's params (PBT changes a trial's config as it
        # trains; the run's config.yaml is the last one)
        self._initial: dict[str, dict[str, Any]] = {}
        self._behind: set[str] = set()  # trials the store has not seen all of
        self._lock = threading.Lock()  # guards _behind
        self._writer: threading.Thread | None = None
        self._started = 0.0  # when the writer started its write
        self._down = False  # the store failed, and that was reported

    # the folder, not the thread or the client
    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder, "stage": self.stage}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.folder, self.stage = state["folder"], state.get("stage", SEARCH)
        self._init()

    def _trial_dir(self, trial) -> Path:
        # Local storage: the trial folder itself (its checkpoints); remote: the driver's copy of
        # Tune's files (result.json).
        return Path(trial.path) if "://" not in self.folder.tune_dir else Path(trial.local_path)

    def _submit(self, trial, what: str, fn) -> None:
        self._trials[trial.trial_id] = trial
        self._initial.setdefault(trial.trial_id, dict(trial.config))
        with self._lock:
            busy = self._writer is not None and self._writer.is_alive()
            if busy:
                self._behind.add(trial.trial_id)  # the next write catches it up
                waited = time.monotonic() - self._started
            else:
                self._started = time.monotonic()
                self._writer = threading.Thread(target=self._write, args=(trial.trial_id, what, fn), daemon=True,
                                                name="snn-study-mlflow")
                self._writer.start()
        # A long write to a store that answers (a large model uploaded, a busy server) is not an
        # outage. The health check runs outside the lock, which the writer takes between writes.
        if busy and waited > self.SLOW_WRITE_S and not self._down and not reachable(self.folder.tracking_uri):
            self._down = True
            log.warning("MLflow: %s does not answer (a write has waited %.0f s; MLflow retries it); training goes "
                        "on, the trial folders keep every result, and they are written to MLflow when it answers "
                        "again (or by 'snn-study sync %s')", self.folder.tracking_uri, waited, self.folder.path)

    def _write(self, trial_id: str, what: str, fn) -> None:
        with self._lock:
            behind, self._behind = self._behind, set()
        try:
            if not reachable(self.folder.tracking_uri):
                raise ConnectionError("the server does not answer")
            if self._projection is None:
                self._projection = _Projection(self.folder.tracking_uri, self.folder.spec.experiment,
                                               self.folder.spec.name, self.folder.parent_run_id,
                                               optuna_of(self.folder))
            last = getattr(self._trials.get(trial_id), "last_result", None)  # when it started, if it has reported
            self._projection.run_of(trial_id, self._initial[trial_id], self.stage, [last] if last else None)
            fn(self._projection)
            took = time.monotonic() - self._started
            if took > self.SLOW_WRITE_S and not self._down:  # a large model, a busy server, or an outage unseen
                log.debug("MLflow: %s for trial %s took %.0f s", what, trial_id, took)
            for other in sorted(behind):  # results that came while the writer was busy, from their folders
                trial = self._trials.get(other)
                if trial is not None and (record := self._record(trial)) is not None:
                    self._projection.run_of(other, self._initial[other], self.stage, record.results)
                    project(self._projection, record)
                behind.discard(other)
        except Exception as e:  # the store refused or failed: the trial folders keep the record
            with self._lock:
                self._behind |= behind | {trial_id}
            if not self._down:
                log.warning("MLflow: %s for trial %s failed (%s: %s); training goes on, the trial folders keep "
                            "every result, and they are written to MLflow when it answers again (or by "
                            "'snn-study sync %s')", what, trial_id, type(e).__name__, one_line(e), self.folder.path)
            self._down = True
            return
        if self._down:
            log.warning("MLflow: the store answers again; the results it missed are written")
            self._down = False

    def _record(self, trial) -> TrialRecord | None:
        """The trial's folder, with the last result Tune holds (it may be ahead of result.json)."""
        record = read_trial(self._trial_dir(trial))
        last = trial.last_result or {}
        if last.get(EPOCH) is None:
            return record
        if record is None:
            return TrialRecord(trial.trial_id, self._trial_dir(trial), dict(trial.config), [last])
        record.results = by_epoch(record.results + [last])
        return record

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self._submit(trial, "starting the run", lambda p: p.run_of(trial.trial_id, dict(trial.config), self.stage))

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        if result.get(EPOCH) is None:
            return
        if result.get("iterations_since_restore") == 1 and int(result[EPOCH]) > 1:
            # restarted from a checkpoint, perhaps another trial's (PBT's exploit): the epochs
            # before are as its record holds them
            def log(p: _Projection) -> None:
                record = self._record(trial)
                if record is not None:
                    project(p, record)
        else:
            def log(p: _Projection) -> None:
                p.log(trial.trial_id, dict(trial.config), [result], self.stage)

        self._submit(trial, f"epoch {result[EPOCH]}", log)

    def _end(self, trial, status: str) -> None:
        def end(p: _Projection) -> None:
            record = self._record(trial)
            if record is not None:
                project(p, record, status)

        self._submit(trial, "closing the run", end)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._end(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._end(trial, "FAILED")

    def on_experiment_end(self, trials: list, **info) -> None:
        """Sync every trial from its folder and close the runs of the trials that ended
        (:func:`_run_status`).

        A store that does not answer at the very end (a server restarting) is waited for, up to
        ``END_WAIT_S``, and the wait said on the console; one that stays down leaves the sync
        to ``snn-study sync``.
        """
        if self._writer is not None:
            self._writer.join()  # one writer at a time, to the end: the sync then writes nothing twice
        self._wait_for_store()
        statuses = {t.trial_id: _run_status(t, self.folder.spec.train.epochs) for t in trials}
        try:
            remote = "://" in self.folder.tune_dir
            summary = sync_study(self.folder, statuses, final=True, stage=self.stage,
                                 trial_dirs=[self._trial_dir(t) for t in trials] if remote else None)
        except Exception as e:  # the store is down at the very end
            log.warning("MLflow: the study's end could not be recorded (%s: %s); every result is in the trial "
                        "folders: run 'snn-study sync %s' once the store answers", type(e).__name__,
                        one_line(e), self.folder.path)
            return
        if summary.epochs:
            log.info("MLflow: wrote %d epoch(s) the live record had missed", summary.epochs)

    def _wait_for_store(self) -> None:
        """Wait up to ``END_WAIT_S`` for a tracking server that does not answer (Ctrl-C ends the
        wait; the sync is then ``snn-study sync``'s)."""
        uri = self.folder.tracking_uri
        if reachable(uri):
            return
        log.warning("MLflow: %s does not answer at the study's end; waiting up to %.0f s for it to record the "
                    "trials' last results (every result is in the trial folders)", uri, self.END_WAIT_S)
        deadline = time.monotonic() + self.END_WAIT_S
        try:
            while time.monotonic() < deadline:
                time.sleep(min(self.END_POLL_S, max(0.0, deadline - time.monotonic())))
                if reachable(uri):
                    log.warning("MLflow: the store answers again; the results it missed are written")
                    return
        except KeyboardInterrupt:
            log.warning("MLflow: wait for %s ended by the user", uri)
