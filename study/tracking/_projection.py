"""Writing trial records into a study's MLflow runs, idempotently: what MLflow has is not sent again.

A trial's run is nested under the study's parent run: its params are the trial's config,
one metric step per epoch, tags name the study, the trial, its dataset, architecture,
timesteps, method, Ray node, torch's threads and the code's version (:mod:`study.provenance`);
its artifacts are the config, the stripped inference model (:mod:`study.tracking._models`)
and the first layer's gradient histogram (the paper's Fig. 2).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import yaml
from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus, Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from ray.tune.result import AUTO_RESULT_KEYS

from snn.config import dataset_name, method_of, one_line
from snn.metrics import EPOCH, LAMBDA, STOPPED_STAGE, TEST_ACC
from study.folder import SEARCH
from study.params import params_of
from study.provenance import provenance
from study.figures import GRAD_PLOT_DPI, GRAD_PLOT_FILE, grad_histogram_figure
from study.tracking._folders import TrialRecord, by_epoch, is_number
from study.tracking._health import reachable
from study.tracking._models import log_inference_model
from study.tracking._parent import experiment_id
from study.tracking._runs import CONFIG_ARTIFACT, KIND, newest_per_epoch, trial_runs_filter
from trainables.layout import FIRST_GRAD_FILE, NODE_ID, STRIPPED_MODEL_FILE, STRIPPED_SPEC_FILE, TORCH_THREADS

__all__ = ["OPTUNA_TRIAL_TAG"]

log = logging.getLogger(__name__)

OPTUNA_TRIAL_TAG = "optuna_trial_number"  # tag of a trial's run: its Optuna trial's number
_NOT_METRICS = (set(AUTO_RESULT_KEYS) - {"time_total_s"}) | {"config", "trial_id", "node_ip", "hostname", "pid",
                                                              NODE_ID, TORCH_THREADS, "error"}
# tags of a trial's run that the scheduler stopped before its budget: that it did, and its last epoch
_STOPPED_EARLY, _LAST_EPOCH = "stopped_early", "last_epoch"
_SIGNATURE = (TEST_ACC, LAMBDA)  # what tells two trainings of one epoch apart (PBT's exploit replaces a trial's epochs)


def _signature(values: dict[str, Any]) -> tuple:
    return tuple(("nan" if math.isnan(float(v)) else float(v)) if is_number(v) else None
                 for v in (values.get(k) for k in _SIGNATURE))


def _started_ms(results: list[dict[str, Any]]) -> int | None:
    """When a trial started, in ms, from its first epoch's result (its end less its duration);
    None without one."""
    first = next((r for r in results if is_number(r.get("timestamp"))), None)
    if first is None:
        return None
    took = first.get("time_this_iter_s", first.get("epoch_time", 0.0))
    return int((float(first["timestamp"]) - (float(took) if is_number(took) else 0.0)) * 1000)


def _method(config: dict[str, Any]) -> str:
    try:
        return method_of(float(config.get("lambda0", 0.0)), config.get("schedule", ""), config["branches"])
    except (KeyError, TypeError, ValueError):
        return "searched"


class _Projection:
    """Writes trial records into one study's MLflow runs; idempotent: what MLflow has is not sent again."""

    def __init__(self, tracking_uri: str, experiment: str, study: str, parent_run_id: str,
                 optuna_study: Callable[[], Any] | None = None) -> None:
        self.uri, self.study, self.parent = tracking_uri, study, parent_run_id
        self.optuna_study = optuna_study  # loads the study's Optuna study, whose trials name their runs
        self._optuna = None  # that Optuna study, once loaded
        self.client = MlflowClient(tracking_uri)
        self.experiment_id = experiment_id(self.client, experiment)
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._logged: dict[str, dict[int, tuple]] = {}  # run id -> epoch -> (its _signature, ms) as MLflow has it
        self._status: dict[str, str] = {}  # run id -> its status, as last read or set
        self._where: dict[str, tuple] = {}  # run id -> the Ray node tags it has
        self._early: dict[str, tuple[str, ...]] = {}  # run id -> which of _STOPPED_EARLY, _LAST_EPOCH it has

    def _find(self, trial_id: str) -> str | None:
        runs = self.client.search_runs([self.experiment_id], max_results=1,
                                       filter_string=trial_runs_filter(self.study, trial_id=trial_id))
        if not runs:
            return None
        run = runs[0]
        self._status[run.info.run_id] = run.info.status
        self._early[run.info.run_id] = tuple(k for k in (_STOPPED_EARLY, _LAST_EPOCH) if k in run.data.tags)
        return run.info.run_id

    def run_of(self, trial_id: str, config: dict[str, Any], stage: str = SEARCH,
               results: list[dict[str, Any]] | None = None) -> str:
        """The trial's run: found by its tags, else created with its params (and its ``stage``),
        starting when the trial started where ``results`` say (a run made after the fact, by a
        writer that was behind or by a sync, then shows how long the trial trained)."""
        if trial_id in self._runs:
            return self._runs[trial_id]
        run_id = self._find(trial_id)
        if run_id is None:
            tags = {MLFLOW_PARENT_RUN_ID: self.parent, "study": self.study, KIND: "trial", "trial_id": trial_id,
                    "dataset": dataset_name(config.get("dataset")), "arch": str(config.get("arch")),
                    "timesteps": str(config.get("timesteps")), "method": _method(config), "stage": stage,
                    **provenance().tags()}
            run = self.client.create_run(self.experiment_id, run_name=f"trial_{trial_id}", tags=tags,
                                         start_time=_started_ms(results or []))
            run_id = run.info.run_id
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in sorted(params_of(config).items())])
            self._status[run_id] = "RUNNING"
            self._logged[run_id] = {}
            self._link_optuna(trial_id, run_id)
        else:
            self._logged[run_id] = self._logged_epochs(run_id)
        self._runs[trial_id] = run_id
        return run_id

    def _link_optuna(self, trial_id: str, run_id: str) -> None:
        """Tag a new run with its Optuna trial's number (:data:`OPTUNA_TRIAL_TAG`), and add the
        run to that trial's user attribute ``mlflow_run_ids``: each view links to the other.

        The Optuna trial is found by the Tune trial ids it names (``tune_trial_ids``, set by
        :class:`study._search.StudyOptunaSearch`), first among the running ones: a run is made as
        its trial starts. A trial that ended before its run was made (seconds long, or written
        by a later sync) is named by its run only: Optuna keeps a finished trial as it is. A
        study without Optuna (PBT, the confirm stage) has nothing to link.
        """
        if self.optuna_study is None:
            return
        import optuna

        from study._search import MLFLOW_RUN_IDS, TUNE_TRIAL_IDS

        try:
            if self._optuna is None:  # none yet (FileNotFoundError, KeyError): tried again at the next run
                self._optuna = self.optuna_study()
            running = self._optuna.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            trial = next((t for t in running if trial_id in t.user_attrs.get(TUNE_TRIAL_IDS, ())), None)
            if trial is None:  # finished before its run was made (a short trial, a sync): the run still names it
                trial = next((t for t in reversed(self._optuna.get_trials(deepcopy=False))
                              if trial_id in t.user_attrs.get(TUNE_TRIAL_IDS, ())), None)
            if trial is None:
                return
            self.client.set_tag(run_id, OPTUNA_TRIAL_TAG, str(trial.number))
            if trial.state.is_finished():  # Optuna keeps a finished trial as it is
                return
            runs = list(dict.fromkeys([*trial.user_attrs.get(MLFLOW_RUN_IDS, []), run_id]))
            # Private: Optuna sets a user attribute only through a Trial object (the searcher's) or the
            # storage by internal trial id
            self._optuna._storage.set_trial_user_attr(trial._trial_id, MLFLOW_RUN_IDS, runs)
        except Exception as e:  # the links are a convenience: the run and the trial stand without them
            log.debug("MLflow: could not link trial %s to its Optuna trial (%s: %s)", trial_id, type(e).__name__, e)

    def _logged_epochs(self, run_id: str) -> dict[int, tuple]:
        """The epochs a run has, each with its newest values' signature and time."""
        newest = {key: newest_per_epoch(self.client.get_metric_history(run_id, key)) for key in (EPOCH, *_SIGNATURE)}
        out = {}
        for step, m in newest[EPOCH].items():
            values = {k: newest[k].get(step) for k in _SIGNATURE}
            out[step] = (_signature({k: v.value for k, v in values.items() if v is not None}),
                         max([m.timestamp] + [v.timestamp for v in values.values() if v is not None]))
        return out

    def log(self, trial_id: str, config: dict[str, Any], results: list[dict[str, Any]], stage: str = SEARCH) -> int:
        """Write the epochs of ``results`` that the trial's run lacks, or holds with other values;
        return how many.

        An epoch with other values is the trial's after PBT's exploit (the donor's training, as
        the trial's checkpoint holds it, in place of the trial's own): it is logged again at its
        step, newer than what it replaces, and every reader takes an epoch's newest value.
        """
        run_id = self.run_of(trial_id, config, stage, results)
        logged = self._logged.setdefault(run_id, {})
        new = [r for r in by_epoch(results) if logged.get(int(r[EPOCH]), (None,))[0] != _signature(r)]
        if not new:
            return 0
        now = int(time.time() * 1000)
        stamps = {int(r[EPOCH]): max(now, logged[int(r[EPOCH])][1] + 1) if int(r[EPOCH]) in logged
                  else int(float(r.get("timestamp", 0)) * 1000) for r in new}
        metrics = [Metric(k, float(v), stamps[int(r[EPOCH])], int(r[EPOCH]))
                   for r in new for k, v in r.items() if k not in _NOT_METRICS and is_number(v)]
        last = new[-1]
        where = tuple((t, str(last[k])) for t, k in (("ray_node", "node_ip"), ("ray_hostname", "hostname"),
                                                     ("ray_node_id", NODE_ID), (TORCH_THREADS, TORCH_THREADS))
                      if last.get(k))
        tags = [RunTag(t, v) for t, v in where] if where != self._where.get(run_id) else []
        self.client.log_batch(run_id, metrics=metrics, tags=tags)  # MLflow sends it in batches of its limits
        # only once all are in: a failed write is sent again
        logged.update({int(r[EPOCH]): (_signature(r), stamps[int(r[EPOCH])]) for r in new})
        self._where[run_id] = where
        if self._status.get(run_id) not in (None, "RUNNING"):  # a resumed trial trains on
            self.client.update_run(run_id, status="RUNNING")
            self._status[run_id] = "RUNNING"
        return len(new)

    def end(self, record: TrialRecord, status: str, reason: str | None = None) -> bool:
        """Close the trial's run as ``status`` (FINISHED or FAILED), with its artifacts and the
        reason of a failure; return whether the run's status changed.

        A run closed FINISHED short of its budget, with neither a divergence nor the firing-rate
        guard to say why, was stopped by the scheduler: it is tagged ``stopped_early``. A run
        that tag no longer fits (closed so before, then resumed and trained on) loses it.
        """
        run_id = self.run_of(record.trial_id, record.config, record.stage, record.results)
        if self._status.get(run_id) == status:
            return False
        have = {a.path for a in self.client.list_artifacts(run_id)}
        if CONFIG_ARTIFACT not in have:
            self.client.log_text(run_id, yaml.safe_dump(record.config, sort_keys=True), CONFIG_ARTIFACT)
        if record.checkpoint is not None:
            try:
                self._checkpoint_artifacts(run_id, record, have)
            except Exception as e:
                if not reachable(self.uri):
                    raise  # the store is down: the run is closed by the next sync
                # a checkpoint a killed worker left half written: the run's record stands without
                # its model, and is closed all the same (a run left RUNNING would read as training)
                log.warning("MLflow: trial %s: the model of %s could not be logged (%s: %s); its run is closed "
                            "without it", record.trial_id, record.checkpoint.name, type(e).__name__,
                            one_line(e))
        tags, early = [], False
        if record.diverged:
            last = record.results[-1]
            tags = [RunTag("diverged", "true"), RunTag("error", str(last.get("error", "training diverged")))]
        elif status == "FAILED" and (reason or record.error):
            tags = [RunTag("error", reason or record.error)]
        elif record.stopped:  # the firing-rate guard stopped it
            last = record.results[-1]
            tags = [RunTag("stopped", record.stopped), RunTag("stopped_stage", str(last.get(STOPPED_STAGE))),
                    RunTag("epochs_done", f"{float(last.get('epochs_done', 0)):.3g}")]
        elif status == "FINISHED" and not record.complete and record.results:  # the scheduler stopped it
            early = True
            tags = [RunTag(_STOPPED_EARLY, "true"), RunTag(_LAST_EPOCH, str(int(record.results[-1][EPOCH])))]
        if tags:
            self.client.log_batch(run_id, tags=tags)
        for key in () if early else self._early.get(run_id, ()):  # from an earlier close, before a resume
            self.client.delete_tag(run_id, key)
        self._early[run_id] = (_STOPPED_EARLY, _LAST_EPOCH) if early else ()
        last = record.results[-1].get("timestamp") if record.results else None
        self.client.set_terminated(run_id, status, end_time=int(float(last) * 1000) if is_number(last) else None)
        self._status[run_id] = status
        return True

    def _checkpoint_artifacts(self, run_id: str, record: TrialRecord, have: set[str]) -> None:
        model = record.checkpoint / STRIPPED_MODEL_FILE
        if (record.checkpoint / STRIPPED_SPEC_FILE).exists():
            # a model whose upload failed or was cut short (its driver killed) is not READY: logged again
            models = self.client.search_logged_models([self.experiment_id],
                                                      filter_string=f"source_run_id = '{run_id}'")
            if not any(m.status == LoggedModelStatus.READY for m in models):
                log_inference_model(self.uri, run_id, record.checkpoint)
        elif model.exists() and STRIPPED_MODEL_FILE not in have:  # weights without the spec that rebuilds them
            self.client.log_artifact(run_id, str(model))
        grad = record.checkpoint / FIRST_GRAD_FILE
        if grad.exists() and GRAD_PLOT_FILE not in have:
            fig = grad_histogram_figure(torch.load(grad, weights_only=True), title=f"trial_{record.trial_id}")
            self.client.log_figure(run_id, fig, GRAD_PLOT_FILE, save_kwargs={"dpi": GRAD_PLOT_DPI})

    def fail_unknown(self, known: set[str], reason: str, stage: str = SEARCH) -> int:
        """Close RUNNING runs of ``stage``'s trials not in ``known`` as FAILED with ``reason``;
        return how many."""
        closed = 0
        for r in self.client.search_runs([self.experiment_id], max_results=5000,
                                         filter_string=trial_runs_filter(self.study, status="RUNNING")):
            if r.data.tags.get("trial_id") not in known and r.data.tags.get("stage", SEARCH) == stage:
                self.client.log_batch(r.info.run_id, tags=[RunTag("error", reason)])
                self.client.set_terminated(r.info.run_id, "FAILED")
                closed += 1
        return closed
