"""MLflow records of a study: a parent run, one nested run per trial, and the paper's baselines.

Logging happens on the driver only, through Ray's :class:`MLflowLoggerCallback` (one
writer, so concurrent trials never race on the store). This module adds what the
project needs on top of it:

* per-trial tags (study, trial id, dataset, architecture, timesteps, method, the Ray node
  that ran it) and the ``mlflow.parentRunId`` tag that nests trial runs under the study's
  parent run in the MLflow UI;
* metrics stepped by epoch, in one batch per report;
* artifacts at the end of a trial: the resolved config, the stripped inference model and
  the first layer's gradient histogram (the paper's Fig. 2);
* re-attaching to a trial's existing run after a driver restart, so a resumed study keeps
  one continuous history per trial;
* the paper's Tables 1-4 as runs tagged ``kind=baseline`` with the same ``test_acc``
  metric (a fraction), logged idempotently.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.result import AUTO_RESULT_KEYS

from snn.training import DIVERGED, EPOCH, TEST_ACC, TrainConfig
from study import baselines as _baselines
from study.spec import is_tracking_server
from trainables import NODE_ID

__all__ = ["StudyMLflowCallback", "check_tracking_uri", "client", "finish_parent_run", "log_baselines",
           "release_store", "start_parent_run"]

log = logging.getLogger(__name__)

KIND = "kind"  # tag: study | trial | baseline
_NOT_METRICS = set(AUTO_RESULT_KEYS) - {"time_total_s"} | {"config", "trial_id", "node_ip", "hostname", "pid",
                                                                     NODE_ID}


def client(tracking_uri: str):
    """An :class:`mlflow.MlflowClient` for ``tracking_uri``."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def check_tracking_uri(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any trial starts, when the tracking server cannot be reached.

    Raises:
        ConnectionError: One line naming the URI and how to fix it.
    """
    if not is_tracking_server(tracking_uri):
        return
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(timeout_s)))
    try:
        client(tracking_uri).search_experiments(max_results=1)
    except Exception as e:  # any failure to talk to the server means: do not start the study
        raise ConnectionError(f"mlflow.tracking_uri: cannot reach the MLflow server at {tracking_uri} "
                              f"({type(e).__name__}); start it or pass another --tracking-uri") from None


def release_store(tracking_uri: str) -> None:
    """Close the pooled connections MLflow keeps to ``tracking_uri``'s database, where it says how."""
    try:
        from mlflow.tracking._tracking_service.utils import _get_store  # MLflow's cache of stores by URI

        engine = getattr(_get_store(tracking_uri), "engine", None)
    except (ImportError, AttributeError):  # another MLflow: its connections close with the process
        return
    if engine is not None:
        engine.dispose()


def _experiment_id(c, name: str) -> str:
    exp = c.get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else c.create_experiment(name)


def start_parent_run(tracking_uri: str, experiment: str, study: str, spec: dict[str, Any],
                     run_id: str | None = None) -> str:
    """Create (or, with ``run_id``, reopen) the study's parent run; return its id."""
    c = client(tracking_uri)
    if run_id is not None:
        c.update_run(run_id, status="RUNNING")
        return run_id
    exp_id = _experiment_id(c, experiment)
    run = c.create_run(exp_id, run_name=study, tags={KIND: "study", "study": study})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        c.log_artifact(run.info.run_id, str(path))
    return run.info.run_id


def finish_parent_run(tracking_uri: str, run_id: str, best: dict[str, Any] | None, status: str = "FINISHED") -> None:
    """Record the best trial's config and metrics on the parent run and close it."""
    from mlflow.entities import Metric, Param

    c = client(tracking_uri)
    if best:
        params = [Param(f"best.{k}", str(v)[:6000]) for k, v in best["config"].items()]
        metrics = [Metric(f"best_{k}", float(v), 0, 0) for k, v in best["metrics"].items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        existing = set(c.get_run(run_id).data.params)
        c.log_batch(run_id, metrics=metrics, params=[p for p in params if p.key not in existing])
        c.set_tag(run_id, "best_trial_id", best["trial_id"])
    c.set_terminated(run_id, status)


def log_baselines(tracking_uri: str, experiment: str, dataset: str | None) -> int:
    """Log the paper's rows for ``dataset`` (all rows for None) as ``kind=baseline`` runs.

    Idempotent: a row already in the experiment is not logged again.

    Returns:
        The number of runs created.
    """
    from mlflow.entities import Metric, Param, RunTag

    c = client(tracking_uri)
    exp_id = _experiment_id(c, experiment)
    existing = {r.data.tags.get("baseline") for r in c.search_runs([exp_id], filter_string=f"tags.{KIND} = 'baseline'",
                                                                    max_results=5000)}
    created = 0
    for row in _baselines.rows(dataset):
        name = row.run_name()
        if name in existing:
            continue
        run = c.create_run(exp_id, run_name=name, tags={
            KIND: "baseline", "baseline": name, "table": str(row.table), "dataset": row.dataset,
            "method": row.method_tag, "paper_method": row.method, "citation": row.citation,
            "arch": row.architecture, "timesteps": str(row.timesteps)})
        metrics = [Metric(TEST_ACC, row.accuracy, 0, 0)]
        if row.std is not None:
            metrics.append(Metric(f"{TEST_ACC}_std", row.std, 0, 0))
        c.log_batch(run.info.run_id, metrics=metrics,
                    params=[Param("arch", row.architecture), Param("timesteps", str(row.timesteps)),
                            Param("dataset", row.dataset)],
                    tags=[RunTag("mlflow.note.content", f"Table {row.table} of Guo et al., NeurIPS 2024")])
        c.set_terminated(run.info.run_id, "FINISHED")
        created += 1
    return created


def _tolerant(method):
    """Run a logging hook; if the tracking store fails, warn and let the study go on.

    Training and Tune's own results (``result.json`` in each trial folder) continue; what
    the store missed is named in the warning.
    """
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as e:  # the store is down or refused the write: never stop the study for it
            trial = next((a for a in args if hasattr(a, "trial_id")), None)
            log.warning("MLflow: %s for trial %s failed (%s: %s); training goes on, Tune keeps the results in "
                        "the trial folder", method.__name__, getattr(trial, "trial_id", "?"), type(e).__name__, e)
    return wrapper


class StudyMLflowCallback(MLflowLoggerCallback):
    """Ray's MLflow logger, with nested trial runs, project tags and trial artifacts.

    Args:
        tracking_uri: The MLflow tracking URI.
        experiment_name: The study's experiment.
        study: The study's name (a tag on every run).
        parent_run_id: The study's parent run; trial runs are nested under it.
    """

    def __init__(self, tracking_uri: str, experiment_name: str, study: str, parent_run_id: str) -> None:
        super().__init__(tracking_uri=tracking_uri, experiment_name=experiment_name,
                         tags={"mlflow.parentRunId": parent_run_id, "study": study, KIND: "trial"})
        self.study = study
        self._node_tagged: set[str] = set()
        self._logged_upto: dict[str, int] = {}  # run id -> last epoch already in MLflow
        self._was_finished: set[str] = set()  # re-attached runs that had already ended FINISHED
        self._pending: dict[Any, list] = {}  # trial -> metrics the store has not taken yet (it was down)
        self._unended: dict[Any, bool] = {}  # trial -> failed, for trials whose run could not be ended yet
        self._mlflow_client = None  # one client for the study (creating one costs a store lookup)

    def _client(self):
        if self._mlflow_client is None:
            self._mlflow_client = self.mlflow_util._get_client()
        return self._mlflow_client

    @_tolerant
    def log_trial_start(self, trial) -> None:
        from mlflow.entities import Param
        from ray.tune.utils import flatten_dict

        if trial not in self._trial_runs:
            existing = self._find_run(trial.trial_id)
            if existing is not None:  # the driver restarted: continue the trial's run
                self._trial_runs[trial] = existing
                c = self._client()
                history = c.get_metric_history(existing, EPOCH)
                self._logged_upto[existing] = int(max((m.step for m in history), default=0))
                if c.get_run(existing).info.status == "FINISHED":
                    self._was_finished.add(existing)
                else:
                    c.update_run(existing, status="RUNNING")
            else:
                cfg = trial.config
                tags = {**self.tags, "trial_id": trial.trial_id, "trial_name": str(trial),
                        "dataset": str(cfg.get("dataset")), "arch": str(cfg.get("arch")),
                        "timesteps": str(cfg.get("timesteps")), "method": _method(cfg)}
                run = self.mlflow_util.start_run(tags=tags, run_name=str(trial))
                self._trial_runs[trial] = run.info.run_id
                # One batch, not one request per parameter (Ray's log_params): the driver's
                # loop waits on every call.
                self._client().log_batch(run.info.run_id, params=[
                    Param(k, str(v)[:6000]) for k, v in flatten_dict(dict(cfg)).items()])

    def _find_run(self, trial_id: str) -> str | None:
        c = self._client()
        runs = c.search_runs([self.mlflow_util.experiment_id],
                             filter_string=f"tags.trial_id = '{trial_id}' and tags.study = '{self.study}'",
                             max_results=1)
        return runs[0].info.run_id if runs else None

    @_tolerant
    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        from mlflow.entities import Metric

        step = int(result.get(EPOCH) or result.get("training_iteration") or iteration)
        ts = int(result.get("timestamp", 0) * 1000)
        self._pending.setdefault(trial, []).extend(
            Metric(k, float(v), ts, step) for k, v in result.items()
            if k not in _NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool))
        run_id = self._flush(trial)
        for other, failed in list(self._unended.items()):  # the store is back: end what it missed
            self.log_trial_end(other, failed)
        c = self._client()
        if run_id not in self._node_tagged and result.get("node_ip"):
            c.set_tag(run_id, "ray_node", str(result["node_ip"]))
            c.set_tag(run_id, "ray_hostname", str(result.get("hostname", "")))
            if result.get(NODE_ID):
                c.set_tag(run_id, "ray_node_id", str(result[NODE_ID]))
            self._node_tagged.add(run_id)

    def _flush(self, trial) -> str:
        """Send the trial's metrics that the store has not taken yet, oldest first.

        Metrics wait here while the store is down and go out with the first report after it
        is back, so an outage leaves no gap in a run's history as long as the driver lives.

        Returns:
            The trial's run id.

        Raises:
            Exception: Whatever the store raised; the metrics stay pending.
        """
        run_id = self._trial_runs.get(trial)
        if run_id is None:  # its start could not be recorded (store down): try again now
            self.log_trial_start(trial)
            run_id = self._trial_runs.get(trial)
            if run_id is None:
                raise ConnectionError("the trial's MLflow run could not be created")
        # Epochs re-run from an earlier checkpoint are already in MLflow with the same values
        # (the loop is deterministic): keep one history. A driver restart re-runs the epochs
        # after Tune's last saved state; a restarted trial worker re-runs the epoch whose
        # result Tune had taken but whose checkpoint it had not yet registered (Tune saves a
        # reported checkpoint only after the result's callbacks have run).
        upto = self._logged_upto.get(run_id, 0)
        pending = [m for m in self._pending.get(trial, []) if m.step > upto]
        last = max((m.step for m in pending), default=upto)
        c = self._client()
        while pending:  # MLflow takes at most 1000 metrics per batch
            c.log_batch(run_id, metrics=pending[:1000])
            pending = self._pending[trial] = pending[1000:]
        self._pending.pop(trial, None)
        self._logged_upto[run_id] = last  # only once all are in: what a failed batch left pending stays
        return run_id

    @_tolerant
    def log_trial_end(self, trial, failed: bool = False) -> None:
        self._unended[trial] = failed
        self._end(trial, failed)
        del self._unended[trial]

    def on_experiment_end(self, trials, **info) -> None:
        """Last chance for what the store missed while it was down: pending metrics and run ends.

        Retries for up to ``SNN_STUDY_MLFLOW_WAIT_S`` seconds (default 120) before giving up;
        what is still not in MLflow then stays in Tune's ``result.json`` of each trial.
        """
        import time

        deadline = time.monotonic() + float(os.environ.get("SNN_STUDY_MLFLOW_WAIT_S", "120"))
        while self._unended:
            for trial, failed in list(self._unended.items()):
                self.log_trial_end(trial, failed)
            if not self._unended or time.monotonic() > deadline:
                break
            time.sleep(2.0)
        if self._unended:
            log.warning("MLflow: gave up on %d trial run(s) that the store missed; their results are in Tune's "
                        "trial folders", len(self._unended))
        self._fail_orphans({t.trial_id for t in trials})
        super().on_experiment_end(trials, **info)

    @_tolerant
    def _fail_orphans(self, known: set[str]) -> None:
        """Close runs of trials that Tune no longer knows, as FAILED with the reason.

        A driver killed between starting a trial and saving Tune's experiment state leaves
        such a run RUNNING; on resume Tune never sees that trial again and Optuna marks its
        point FAIL and suggests another (see ``StudyOptunaSearch``). MLflow says the same.
        """
        c = self._client()
        for r in c.search_runs([self.mlflow_util.experiment_id], max_results=5000, filter_string=(
                f"tags.study = '{self.study}' and tags.{KIND} = 'trial' and attributes.status = 'RUNNING'")):
            if r.data.tags.get("trial_id") not in known:
                c.set_tag(r.info.run_id, "error", "the driver stopped before Tune recorded this trial; "
                                                  "re-suggested on resume")
                c.set_terminated(r.info.run_id, "FAILED")

    def _end(self, trial, failed: bool) -> None:
        if self._pending.get(trial):
            self._flush(trial)  # raises while the store is down: the trial stays in _unended
        run_id = self._trial_runs.get(trial)
        if run_id is None:
            return
        c = self._client()
        if run_id in self._was_finished and not failed:
            return  # recorded in full before the driver restarted
        try:
            _log_trial_artifacts(c, run_id, trial)
        except Exception:  # artifacts are a bonus: never lose the run's status over them
            log.exception("could not log artifacts of trial %s", trial.trial_id)
        last = trial.last_result or {}
        if last.get(DIVERGED):
            failed = True
            c.set_tag(run_id, "error", str(last.get("error", "training diverged")))
            c.set_tag(run_id, "diverged", "true")
        elif failed and trial.error_file and os.path.exists(trial.error_file):
            c.set_tag(run_id, "error", Path(trial.error_file).read_text()[-4000:].strip().splitlines()[-1])
        self.mlflow_util.end_run(run_id=run_id, status="FAILED" if failed else "FINISHED")


def _method(cfg: dict[str, Any]) -> str:
    try:
        return TrainConfig.from_dict(cfg).method()
    except (TypeError, ValueError):
        return "searched"


def _log_trial_artifacts(c, run_id: str, trial) -> None:
    from study.report import plot_grad_histogram
    from trainables import FIRST_GRAD_FILE, FIRST_GRAD_PLOT, STRIPPED_MODEL_FILE

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(dict(trial.config), sort_keys=True))
        c.log_artifact(run_id, str(Path(tmp) / "config.yaml"))
    checkpoint = trial.checkpoint
    if checkpoint is None:
        return
    import torch

    with checkpoint.as_directory() as d:
        model = Path(d) / STRIPPED_MODEL_FILE
        if model.exists():
            c.log_artifact(run_id, str(model))
        grad, plot = Path(d) / FIRST_GRAD_FILE, Path(d) / FIRST_GRAD_PLOT
        if plot.exists():  # drawn by the trial itself at its last epoch
            c.log_artifact(run_id, str(plot))
        elif grad.exists():  # stopped early (ASHA): draw it from the last checkpoint's gradient
            with tempfile.TemporaryDirectory() as tmp:
                png = Path(tmp) / FIRST_GRAD_PLOT
                plot_grad_histogram(torch.load(grad, weights_only=True), png, title=str(trial))
                c.log_artifact(run_id, str(png))
