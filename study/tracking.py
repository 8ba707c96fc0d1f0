"""MLflow records of a study: a projection of Tune's trial folders.

Each trial's folder (``studies/<name>/trial_<id>/``) is the study's durable record: every
checkpoint, written by the trial itself before Tune's driver hears of the epoch, carries
the trial's config and the metrics of every epoch so far (:mod:`trainables.layout`). MLflow
shows that record:

* a parent run for the study, one nested run per trial (params: the trial's config; one
  metric step per epoch; tags: study, trial id, dataset, architecture, timesteps, method,
  the Ray node, torch's threads, the code's version and commit (:mod:`study.provenance`);
  artifacts: the config, the stripped inference model and the first layer's
  gradient histogram, the paper's Fig. 2), and the paper's Tables 1-4 as runs tagged
  ``kind=baseline`` with the same ``test_acc`` metric (a fraction);
* written live by :class:`StudyTracker`, a Tune callback on the driver (one writer, so
  concurrent trials never race on the store), on a best-effort basis through MLflow's own
  client and its retries;
* and completed by :func:`sync_study`, which writes whatever MLflow lacks and nothing
  twice. It runs at the end of a study, on ``snn-study resume`` and as ``snn-study sync``,
  so an outage of the tracking store, or a driver that died during one, costs MLflow
  nothing once the store answers again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
import yaml
from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus, Metric, Param, RunTag
from ray import tune
from ray.tune.result import AUTO_RESULT_KEYS

from snn.config import TrainConfig, dataset_name, method_of
from snn.metrics import DIVERGED, EPOCH, LAMBDA, STOPPED, STOPPED_STAGE, TEST_ACC
from study import baselines as _baselines
from study.figures import GRAD_PLOT_FILE, plot_grad_histogram
from study.folder import SEARCH, StudyFolder, stage_of
from study.params import config_of_params, params_of
from study.provenance import provenance
from study.spec import POPULATION, is_tracking_server
from study.trial_rows import metric_per_epoch
from study.views import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
from trainables.layout import (FIRST_GRAD_FILE, NODE_ID, STRIPPED_MODEL_FILE, STRIPPED_SPEC_FILE, TORCH_THREADS,
                               read_record)

__all__ = ["BASELINE_ARTIFACT", "BEST_CONFIG_ARTIFACT", "KIND", "MODEL_NAME", "OPTUNA_TRIAL_TAG", "RegisteredModel",
           "RunNotFound", "StudyTracker", "SyncSummary", "TrialRecord", "TrialRun", "check_tracking_uri",
           "finish_parent_run", "inference_model", "log_baselines", "log_inference_model", "read_trial",
           "read_trial_run", "reachable", "register_best_model", "start_parent_run", "sync_study"]

log = logging.getLogger(__name__)

KIND = "kind"  # tag: study | trial | baseline
OPTUNA_TRIAL_TAG = "optuna_trial_number"  # tag of a trial's run: its Optuna trial's number
CONFIG_ARTIFACT = "config.yaml"
_NOT_METRICS = (set(AUTO_RESULT_KEYS) - {"time_total_s"}) | {"config", "trial_id", "node_ip", "hostname", "pid",
                                                              NODE_ID, TORCH_THREADS, "error"}
_BATCH = 1000  # MLflow takes at most 1000 metrics per log_batch


def reachable(tracking_uri: str, timeout_s: float = 2.0) -> bool:
    """Whether the tracking store answers now: a server's ``/health`` within ``timeout_s``.

    A local store (a SQLite file, a folder) always counts as reachable. The study asks
    before each live write to a server, because MLflow's client retries a refused
    connection with a back-off of minutes, and a trial waits for the driver after each
    epoch: the sync writes later what the store missed meanwhile.
    """
    if not is_tracking_server(tracking_uri):
        return True
    try:
        with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout_s) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def check_tracking_uri(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any trial starts, when the tracking server cannot be reached.

    Raises:
        ConnectionError: One line naming the URI and how to fix it.
    """
    if not reachable(tracking_uri, timeout_s):
        raise ConnectionError(f"mlflow.tracking_uri: cannot reach the MLflow server at {tracking_uri}; "
                              f"start it or pass another --tracking-uri")


def _experiment_id(c: MlflowClient, name: str) -> str:
    """The experiment's id; a new one is created as a model-training experiment (MLflow 3's UI
    opens those on the runs table, not on the GenAI traces page)."""
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except Exception:  # another study or process created it meanwhile
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def start_parent_run(tracking_uri: str, experiment: str, study: str, spec: dict[str, Any],
                     run_id: str | None = None) -> str:
    """Create (or, with ``run_id``, reopen) the study's parent run; return its id."""
    c = MlflowClient(tracking_uri)
    if run_id is not None:
        c.update_run(run_id, status="RUNNING")
        return run_id
    exp_id = _experiment_id(c, experiment)
    if EXPERIMENT_KIND_TAG not in c.get_experiment(exp_id).tags:  # made by an older version, or by hand
        c.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    run = c.create_run(exp_id, run_name=study, tags={KIND: "study", "study": study})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        c.log_artifact(run.info.run_id, str(path))
    return run.info.run_id


BEST_CONFIG_ARTIFACT = "best_trial_config.yaml"  # on the parent run: the best full-budget trial's config
NOTE = "mlflow.note.content"  # a run's description in the MLflow UI


def finish_parent_run(tracking_uri: str, run_id: str, best: dict[str, Any] | None, status: str = "FINISHED",
                      note: str | None = None) -> None:
    """Record the study's best full-budget trial on its parent run, and close the run.

    The parent run holds the study's answer, not a copy of a trial's internals: the metric
    ``best_test_acc`` (that trial's final test accuracy), the tags ``best_trial_id`` and
    ``best_run_id`` (its run), the artifact :data:`BEST_CONFIG_ARTIFACT` (its config), and
    ``note``, the answer in a few lines, as the run's description. The comparison of the
    configurations and the importance of each dimension are recorded by
    :func:`study.analysis.record_analysis`, the report's plots by :func:`study.report.write_report`.
    """
    c = MlflowClient(tracking_uri)
    tags = [RunTag(NOTE, note)] if note else []
    if best:
        tags.append(RunTag("best_trial_id", best["trial_id"]))
        run = c.get_run(run_id)
        found = c.search_runs([run.info.experiment_id], max_results=1, filter_string=(
            f"tags.mlflow.parentRunId = '{run_id}' and tags.trial_id = '{best['trial_id']}'"))
        if found:
            tags.append(RunTag("best_run_id", found[0].info.run_id))
        acc = best["metrics"].get(TEST_ACC)
        metrics = [Metric("best_test_acc", float(acc), int(time.time() * 1000), 0)] if _number(acc) else []
        c.log_batch(run_id, metrics=metrics, tags=tags)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / BEST_CONFIG_ARTIFACT
            path.write_text(yaml.safe_dump(best["config"], sort_keys=True))
            c.log_artifact(run_id, str(path))
    elif tags:
        c.log_batch(run_id, tags=tags)
    c.set_terminated(run_id, status)


BASELINE_ARTIFACT = "baseline.json"  # every baseline run's artifact: the row as the paper gives it


def log_baselines(tracking_uri: str, experiment: str, dataset: str | None) -> int:
    """Log the paper's rows for ``dataset`` (all rows for None) as ``kind=baseline`` runs.

    Each run carries the row's full setting as params (:meth:`Baseline.setting`: the same
    names and values as a trial's params, so it lands on the trials' axes in MLflow's
    charts), ``test_acc`` (a fraction, and its std where the paper gives one), and the row
    as an artifact (:data:`BASELINE_ARTIFACT`), so that no view of it has an empty artifact
    section. Idempotent: a row already in the experiment is not logged again; one logged by
    an older version is completed with what it lacks.

    Returns:
        The number of runs created.
    """
    c = MlflowClient(tracking_uri)
    exp_id = _experiment_id(c, experiment)
    existing = {r.data.tags.get("baseline"): r for r in c.search_runs(
        [exp_id], filter_string=f"tags.{KIND} = 'baseline'", max_results=5000)}
    created = 0
    for row in _baselines.rows(dataset):
        name = row.run_name()
        params = {k: str(v) for k, v in row.setting().items()}
        run = existing.get(name)
        if run is None:
            run = c.create_run(exp_id, run_name=name, tags={
                KIND: "baseline", "baseline": name, "table": str(row.table), "dataset": row.dataset,
                "method": row.method_tag, "paper_method": row.method, "citation": row.citation,
                "arch": row.architecture, "timesteps": str(row.timesteps),
                "mlflow.note.content": f"Table {row.table} of Guo et al., NeurIPS 2024: {row.method}"
                                       f"{f' ({row.citation})' if row.citation else ''}, {row.architecture}, "
                                       f"T={row.timesteps} on {row.dataset}"})
            metrics = [Metric(TEST_ACC, row.accuracy, 0, 0)]
            if row.std is not None:
                metrics.append(Metric(f"{TEST_ACC}_std", row.std, 0, 0))
            c.log_batch(run.info.run_id, metrics=metrics)
            created += 1
        have = run.data.params if name in existing else {}
        missing = [Param(k, v) for k, v in params.items() if k not in have]
        if missing:
            c.log_batch(run.info.run_id, params=missing)
        if name not in existing or BASELINE_ARTIFACT not in {a.path for a in c.list_artifacts(run.info.run_id)}:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / BASELINE_ARTIFACT
                path.write_text(json.dumps({**dataclasses.asdict(row), "setting": row.setting()}, indent=2))
                c.log_artifact(run.info.run_id, str(path))
        if name not in existing:
            c.set_terminated(run.info.run_id, "FINISHED")
    return created


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# -- a finished trial's inference network, as an MLflow model -----------------------------------
MODEL_NAME = "model"  # the name of every trial's logged model


class _NoPickleAdvice(logging.Filter):
    """Drops mlflow.pytorch's advice to save as 'pt2' (torch.export): an exported spiking
    network is fixed to the example's batch size, so the study saves the module itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "serialization_format" not in record.getMessage()


def inference_model(checkpoint: str | os.PathLike) -> tuple[torch.nn.Module, np.ndarray]:
    """The stripped network of a trial's final checkpoint (Algorithm 1, inference part: the
    main branch only, Eq. 7's b_n) with its weights, in eval mode, and an input example of
    one sample (``[1, C, H, W]``; frames ``[T, 1, C, H, W]``, as the network takes them).

    Raises:
        FileNotFoundError: The checkpoint holds no stripped model (not the trial's last epoch).
    """
    from snn import models

    checkpoint = Path(checkpoint)
    spec = json.loads((checkpoint / STRIPPED_SPEC_FILE).read_text())
    net = models.strip_shortcuts(models.build(**spec["build"]))
    net.load_state_dict(torch.load(checkpoint / STRIPPED_MODEL_FILE, weights_only=True))
    shape = spec["input_shape"]
    example_shape = [shape[0], 1, *shape[1:]] if spec["kind"] == "frames" else [1, *shape]
    example = np.random.default_rng(0).random(example_shape, dtype=np.float32)  # a fixed, non-trivial input
    return net.eval(), example


def log_inference_model(tracking_uri: str, run_id: str, checkpoint: str | os.PathLike) -> str:
    """Log a finished trial's inference network to its run with ``mlflow.pytorch`` (signature
    and input example included); return the model's URI, for ``mlflow.pytorch.load_model``.

    The module is saved whole (``serialization_format="pickle"``) with the ``snn`` package's
    source (``code_paths``), so it loads where the project is not installed; torch.export's
    format would fix the batch size to the example's.
    """
    import mlflow
    import mlflow.pytorch

    import snn

    net, example = inference_model(checkpoint)
    mlflow.set_tracking_uri(tracking_uri)  # the driver's one store; the active run below is this thread's
    advice = _NoPickleAdvice()
    logging.getLogger("mlflow.pytorch").addFilter(advice)
    before = set(sys.path)
    try:
        with mlflow.start_run(run_id=run_id, log_system_metrics=False):
            info = mlflow.pytorch.log_model(
                net, name=MODEL_NAME, input_example=example, serialization_format="pickle",
                code_paths=[str(Path(snn.__file__).parent)],
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}", "numba"])
    finally:
        logging.getLogger("mlflow.pytorch").removeFilter(advice)
        # MLflow checks the logged model by loading it, which puts the model's code folder (a
        # temporary copy) first on sys.path for good: left there, the driver would import from
        # one more dead folder per trial, and every import and package lookup (MLflow's own, per
        # model) would grow with the study (issue 26: the driver's cost per trial grew 2x)
        for added in [p for p in sys.path if p not in before]:
            sys.path.remove(added)
            sys.path_importer_cache.pop(added, None)
    return info.model_uri


BEST_ALIAS = "best"  # the registered version of a study's best model: models:/<study>@best


@dataclass(frozen=True)
class RegisteredModel:
    """A study's best model in the Model Registry."""

    name: str
    version: str
    run_id: str
    trial_id: str
    test_acc: float

    @property
    def uri(self) -> str:
        """What ``mlflow.pytorch.load_model`` loads: the study's model by its alias."""
        return f"models:/{self.name}@{BEST_ALIAS}"


def register_best_model(folder: StudyFolder, trial_ids: Iterable[str], why: str) -> RegisteredModel | None:
    """Register, under the study's name, the logged model of the trial among ``trial_ids`` with
    the best final ``test_acc`` (the best configuration's replicates, or the best trial), and
    point the alias :data:`BEST_ALIAS` at it. Idempotent: the same model is not registered twice.

    Args:
        folder: The study.
        trial_ids: The trials to choose from.
        why: The version's description: what made these trials the best.

    Returns:
        The registered version, or None where none of the trials has a logged model.
    """
    c = MlflowClient(folder.tracking_uri)
    exp = c.get_experiment_by_name(folder.spec.experiment)
    if exp is None:
        return None
    runs = []
    for trial_id in dict.fromkeys(trial_ids):
        runs += c.search_runs([exp.experiment_id], max_results=1, filter_string=(
            f"tags.study = '{folder.spec.name}' and tags.{KIND} = 'trial' and tags.trial_id = '{trial_id}'"))
    runs = sorted((r for r in runs if _number(r.data.metrics.get(TEST_ACC)) and math.isfinite(r.data.metrics[TEST_ACC])),
                  key=lambda r: -r.data.metrics[TEST_ACC])
    for run in runs:
        models = c.search_logged_models([exp.experiment_id], max_results=1,
                                        filter_string=f"source_run_id = '{run.info.run_id}'")
        if models:
            break
    else:
        return None
    name, model = folder.spec.name, models[0]
    versions = c.search_model_versions(f"name = '{name}'")
    version = next((v for v in versions if v.source == model.model_uri), None)
    if version is None:
        if not versions and not c.search_registered_models(f"name = '{name}'"):
            c.create_registered_model(name, description=f"The best model of study {name} (snn-study)")
        version = c.create_model_version(name, model.model_uri, run_id=run.info.run_id, model_id=model.model_id,
                                         description=why, tags={"trial_id": run.data.tags.get("trial_id", ""),
                                                                TEST_ACC: str(run.data.metrics[TEST_ACC])})
    c.set_registered_model_alias(name, BEST_ALIAS, version.version)
    return RegisteredModel(name, str(version.version), run.info.run_id, run.data.tags.get("trial_id", ""),
                           float(run.data.metrics[TEST_ACC]))


# -- what re-running a trial reads from its run -------------------------------------------------
@dataclass
class TrialRun:
    """What a trial's MLflow run says about how to re-run it, and what it recorded."""

    run_id: str
    study: str | None
    trial_id: str | None
    config: dict[str, Any]
    source: str  # where the config came from: the config.yaml artifact, or the params
    threads: int | None  # torch's CPU threads in the trial (its torch_threads tag)
    history: dict[int, dict[str, float]]  # epoch -> metric -> value, as recorded
    tags: dict[str, str] = field(default_factory=dict)


class RunNotFound(LookupError):
    """The tracking store has no such run, or cannot be read."""


def read_trial_run(tracking_uri: str, run_id: str) -> TrialRun:
    """Read a trial's run: its config (the ``config.yaml`` artifact, exact types, where the run
    has it; else its params), its thread count and its metrics of every epoch.

    Raises:
        RunNotFound: No such run in the store, or the store cannot be read (one line).
        ValueError: The run is not a trial's (a baseline, a study's parent run), or its
            config cannot be read (one line).
    """
    from mlflow.exceptions import MlflowException

    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        raise RunNotFound(f"--tracking-uri: no MLflow store at {tracking_uri} (the file does not exist)")
    check_tracking_uri(tracking_uri)
    c = MlflowClient(tracking_uri)
    try:
        run = c.get_run(run_id)
    except MlflowException as e:
        raise RunNotFound(f"--run-id: no run {run_id} in the MLflow store at {tracking_uri} "
                          f"({' '.join(str(e.message).split())[:200]})") from None
    tags, kind = run.data.tags, run.data.tags.get(KIND)
    if kind == "baseline":
        raise ValueError(f"--run-id: run {run_id} is a result published in the paper ({tags.get('baseline')}), "
                         f"not a trial: there is nothing to re-run")
    if kind == "study":
        raise ValueError(f"--run-id: run {run_id} is the parent run of study {tags.get('study')}, not a trial: "
                         f"give the run of one of its trials (its nested runs)")
    if kind != "trial":
        raise ValueError(f"--run-id: run {run_id} is not a trial of an snn-study study (it has no tag {KIND}=trial)")
    source, config = "params", None
    try:
        if CONFIG_ARTIFACT in {a.path for a in c.list_artifacts(run_id)}:
            # MLflow draws a progress bar for every download, one file or not
            quiet = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
            with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, quiet):
                config = yaml.safe_load(Path(c.download_artifacts(run_id, CONFIG_ARTIFACT, tmp)).read_text())
            source = CONFIG_ARTIFACT
        if not isinstance(config, dict):
            # where the data was is not a param: read it under this machine's default data root
            source, config = "params", config_of_params(run.data.params, TrainConfig.model_fields["data_root"].default)
        history: dict[int, dict[str, float]] = {}
        for key in sorted(run.data.metrics):
            for step, value in metric_per_epoch(c, run_id, key):  # an epoch logged again: the newest value
                history.setdefault(int(step), {})[key] = value
    except (MlflowException, OSError, yaml.YAMLError) as e:
        raise RunNotFound(f"--run-id: cannot read run {run_id} from {tracking_uri} ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:200]})") from None
    if not config:
        raise ValueError(f"--run-id: run {run_id} records no config (neither {CONFIG_ARTIFACT} nor params)")
    threads = tags.get(TORCH_THREADS)
    return TrialRun(run_id, tags.get("study"), tags.get("trial_id"), config, source,
                    int(threads) if threads and threads.isdigit() else None, history, dict(tags))


# -- the record of a trial, read from its folder ----------------------------------------------
@dataclass
class TrialRecord:
    """What a trial folder says: config, one result per epoch, the last checkpoint, any error."""

    trial_id: str
    path: Path
    config: dict[str, Any]
    results: list[dict[str, Any]]  # one per epoch, in order
    checkpoint: Path | None = None
    error: str | None = None

    @property
    def stage(self) -> str:
        """The study's stage the trial ran in: search, or confirm."""
        return stage_of(self.path)

    @property
    def complete(self) -> bool:
        """Trained all its epochs."""
        epochs = self.config.get("epochs")
        return bool(self.results) and epochs is not None and int(self.results[-1].get(EPOCH, 0)) >= int(epochs)

    @property
    def diverged(self) -> bool:
        return bool(self.results) and bool(self.results[-1].get(DIVERGED))

    @property
    def stopped(self) -> str | None:
        """``silent`` or ``saturated``: the firing-rate guard stopped it (:mod:`snn.guard`)."""
        return (self.results[-1].get(STOPPED) or None) if self.results else None


def _checkpoints(trial_dir: Path) -> list[Path]:
    return sorted(trial_dir.glob("checkpoint_*"), key=lambda p: p.name)


def _by_epoch(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One result per epoch (the first one seen: re-run epochs repeat the same values)."""
    out: dict[int, dict[str, Any]] = {}
    for r in results:
        if r.get(EPOCH) is not None:
            out.setdefault(int(r[EPOCH]), r)
    return [out[k] for k in sorted(out)]


_SIGNATURE = (TEST_ACC, LAMBDA)  # what tells two trainings of one epoch apart (PBT's exploit replaces a trial's epochs)


def _signature(values: dict[str, Any]) -> tuple:
    return tuple(("nan" if math.isnan(float(v)) else float(v)) if _number(v) else None
                 for v in (values.get(k) for k in _SIGNATURE))


def read_trial(trial_dir: str | Path) -> TrialRecord | None:
    """Read a trial folder: its newest checkpoint's record, and Tune's ``result.json``.

    The checkpoint is written by the trial before the driver hears of the epoch, so it is
    never behind Tune's own log; ``result.json`` adds what has no checkpoint (the report of
    a diverged trial), its latest report of each such epoch. The checkpoint's epochs are the
    trial's lineage: after PBT's exploit they are the donor's, whatever ``result.json`` logged
    of the trial's own before. Returns None for a folder with neither (a trial that never reported).
    """
    trial_dir = Path(trial_dir)
    results: list[dict[str, Any]] = []
    config: dict[str, Any] = {}
    checkpoints = _checkpoints(trial_dir)
    for ckpt in reversed(checkpoints):  # the newest readable one (a folder half copied is skipped)
        try:
            record = read_record(ckpt)
        except (OSError, ValueError):
            record = None
        if record:
            results, config = list(record.get("history", [])), dict(record.get("config", {}))
            break
    lineage = len(results)
    result_file = trial_dir / "result.json"
    if result_file.exists():
        for line in result_file.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:  # a line cut off by a killed driver
                continue
            results.append(r)
            config = config or dict(r.get("config") or {})
    if not results:
        return None
    error_file = trial_dir / "error.txt"
    error = error_file.read_text().strip().splitlines()[-1][-1000:] if error_file.exists() else None
    newest_first = results[:lineage] + results[lineage:][::-1]  # _by_epoch keeps the first one of an epoch
    return TrialRecord(trial_dir.name.removeprefix("trial_"), trial_dir, config, _by_epoch(newest_first),
                       checkpoints[-1] if checkpoints else None, error)


def _started_ms(results: list[dict[str, Any]]) -> int | None:
    """When a trial started, in ms, from its first epoch's result (its end less its duration);
    None without one."""
    first = next((r for r in results if _number(r.get("timestamp"))), None)
    if first is None:
        return None
    took = first.get("time_this_iter_s", first.get("epoch_time", 0.0))
    return int((float(first["timestamp"]) - (float(took) if _number(took) else 0.0)) * 1000)


# -- the projection into MLflow ------------------------------------------------------------------
class _Projection:
    """Writes trial records into one study's MLflow runs; idempotent: what MLflow has is not sent again."""

    def __init__(self, tracking_uri: str, experiment: str, study: str, parent_run_id: str,
                 optuna_study: Callable[[], Any] | None = None) -> None:
        self.uri, self.study, self.parent = tracking_uri, study, parent_run_id
        self.optuna_study = optuna_study  # loads the study's Optuna study, whose trials name their runs
        self._optuna = None  # that Optuna study, once loaded
        self.client = MlflowClient(tracking_uri)
        self.experiment_id = _experiment_id(self.client, experiment)
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._logged: dict[str, dict[int, tuple]] = {}  # run id -> epoch -> (its _signature, ms) as MLflow has it
        self._status: dict[str, str] = {}  # run id -> its status, as last read or set
        self._where: dict[str, tuple] = {}  # run id -> the Ray node tags it has

    def _find(self, trial_id: str) -> str | None:
        runs = self.client.search_runs([self.experiment_id], max_results=1, filter_string=(
            f"tags.trial_id = '{trial_id}' and tags.study = '{self.study}' and tags.{KIND} = 'trial'"))
        if not runs:
            return None
        run = runs[0]
        self._status[run.info.run_id] = run.info.status
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
            tags = {"mlflow.parentRunId": self.parent, "study": self.study, KIND: "trial", "trial_id": trial_id,
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
        newest: dict[str, dict[int, Any]] = {}
        for key in (EPOCH, *_SIGNATURE):
            for m in sorted(self.client.get_metric_history(run_id, key), key=lambda m: m.timestamp):
                newest.setdefault(key, {})[int(m.step)] = m
        out = {}
        for step, m in newest.get(EPOCH, {}).items():
            values = {k: newest.get(k, {}).get(step) for k in _SIGNATURE}
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
        new = [r for r in _by_epoch(results) if logged.get(int(r[EPOCH]), (None,))[0] != _signature(r)]
        if not new:
            return 0
        now = int(time.time() * 1000)
        stamps = {int(r[EPOCH]): max(now, logged[int(r[EPOCH])][1] + 1) if int(r[EPOCH]) in logged
                  else int(float(r.get("timestamp", 0)) * 1000) for r in new}
        metrics = [Metric(k, float(v), stamps[int(r[EPOCH])], int(r[EPOCH]))
                   for r in new for k, v in r.items() if k not in _NOT_METRICS and _number(v)]
        last = new[-1]
        where = tuple((t, str(last[k])) for t, k in (("ray_node", "node_ip"), ("ray_hostname", "hostname"),
                                                     ("ray_node_id", NODE_ID), (TORCH_THREADS, TORCH_THREADS))
                      if last.get(k))
        tags = [RunTag(t, v) for t, v in where] if where != self._where.get(run_id) else []
        for i in range(0, len(metrics), _BATCH):
            self.client.log_batch(run_id, metrics=metrics[i:i + _BATCH], tags=tags if i == 0 else [])
        # only once all are in: a failed batch is sent again
        logged.update({int(r[EPOCH]): (_signature(r), stamps[int(r[EPOCH])]) for r in new})
        self._where[run_id] = where
        if self._status.get(run_id) not in (None, "RUNNING"):  # a resumed trial trains on
            self.client.update_run(run_id, status="RUNNING")
            self._status[run_id] = "RUNNING"
        return len(new)

    def end(self, record: TrialRecord, status: str, reason: str | None = None) -> bool:
        """Close the trial's run as ``status`` (FINISHED or FAILED), with its artifacts and the
        reason of a failure; return whether the run's status changed."""
        run_id = self.run_of(record.trial_id, record.config, record.stage, record.results)
        if self._status.get(run_id) == status:
            return False
        have = {a.path for a in self.client.list_artifacts(run_id)}
        if CONFIG_ARTIFACT not in have:
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / CONFIG_ARTIFACT).write_text(yaml.safe_dump(record.config, sort_keys=True))
                self.client.log_artifact(run_id, str(Path(tmp) / CONFIG_ARTIFACT))
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
                            " ".join(str(e).split())[:200])
        tags = []
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
            tags = [RunTag("stopped_early", "true"), RunTag("last_epoch", str(int(record.results[-1][EPOCH])))]
        if tags:
            self.client.log_batch(run_id, tags=tags)
        last = record.results[-1].get("timestamp") if record.results else None
        self.client.set_terminated(run_id, status, end_time=int(float(last) * 1000) if _number(last) else None)
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
        elif model.exists() and STRIPPED_MODEL_FILE not in have:  # a trial of an older version: the bare weights
            self.client.log_artifact(run_id, str(model))
        grad = record.checkpoint / FIRST_GRAD_FILE
        if grad.exists() and GRAD_PLOT_FILE not in have:
            with tempfile.TemporaryDirectory() as tmp:
                png = Path(tmp) / GRAD_PLOT_FILE
                plot_grad_histogram(torch.load(grad, weights_only=True), png, title=f"trial_{record.trial_id}")
                self.client.log_artifact(run_id, str(png))

    def fail_unknown(self, known: set[str], reason: str, stage: str = SEARCH) -> int:
        """Close RUNNING runs of ``stage``'s trials not in ``known`` as FAILED with ``reason``;
        return how many."""
        closed = 0
        for r in self.client.search_runs([self.experiment_id], max_results=5000, filter_string=(
                f"tags.study = '{self.study}' and tags.{KIND} = 'trial' and attributes.status = 'RUNNING'")):
            if r.data.tags.get("trial_id") not in known and r.data.tags.get("stage", SEARCH) == stage:
                self.client.log_batch(r.info.run_id, tags=[RunTag("error", reason)])
                self.client.set_terminated(r.info.run_id, "FAILED")
                closed += 1
        return closed


def _method(config: dict[str, Any]) -> str:
    try:
        return method_of(float(config.get("lambda0", 0.0)), config.get("schedule", ""), config["branches"])
    except (KeyError, TypeError, ValueError):
        return "searched"


def _optuna_of(folder: StudyFolder) -> Callable[[], Any] | None:
    """What loads the study's Optuna study, whose trials the runs link to; None for a study
    without one (PBT's population is drawn by Tune)."""
    return None if folder.spec.scheduler in POPULATION else folder.optuna_study


_ORPHAN = "the driver stopped before Tune recorded this trial; re-suggested on resume"


@dataclass
class SyncSummary:
    """What a sync wrote: epochs, runs closed, and the trials it could not write (id -> why)."""

    epochs: int = 0
    closed: int = 0
    trials: int = 0
    failed: dict[str, str] = field(default_factory=dict)


def _project(projection: _Projection, record: TrialRecord, status: str | None = None, reason: str | None = None,
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
                             _optuna_of(folder))
    summary = SyncSummary()
    for trial_dir in folder.trial_dirs() if trial_dirs is None else trial_dirs:
        if stage is not None and trial_dirs is None and stage_of(trial_dir) != stage:
            continue
        record = read_trial(trial_dir)
        if record is None:
            continue
        orphan = final and record.trial_id not in statuses
        try:
            _project(projection, record, "FAILED" if orphan else statuses.get(record.trial_id),
                     _ORPHAN if orphan else None, summary)
        except Exception as e:
            if not reachable(folder.tracking_uri):
                raise  # the store is down: the whole sync is for later
            # one trial's record the store refuses: the others are written, and their runs closed
            summary.failed[record.trial_id] = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
            log.warning("MLflow: trial %s could not be written (%s); 'snn-study sync %s' tries it again",
                        record.trial_id, summary.failed[record.trial_id], folder.path)
    if final:
        summary.closed += projection.fail_unknown(set(statuses), _ORPHAN, stage or SEARCH)
    return summary


# -- the live writer ------------------------------------------------------------------------------
# MLflow's HTTP retries (its own environment variables) while the trials train. A live write
# that fails loses nothing (the trial folders keep every result, and the next write catches up),
# so the writer gives up after about 15 s instead of MLflow's minutes of back-off, and writes
# again within seconds of a server's return rather than minutes after; the sync at the study's
# end keeps MLflow's own retries. Values a user set are kept.
LIVE_HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


class StudyTracker(tune.Callback):
    """Tune callback that projects each trial into MLflow as its results arrive.

    Best effort, and never in the trials' way: a trial waits for the driver after every
    epoch, so the writes run in one writer thread beside Tune's loop. A result that arrives
    while the writer is busy is not queued: its trial is marked behind, and the next write
    first brings such trials up to date from their folders, which hold every epoch already.
    A write the store refuses, or a server that does not answer (:func:`reachable`), is
    skipped with one warning; training goes on. When the study ends, everything is synced
    from the trial folders (:func:`sync_study`), with MLflow's retries if the store is down.

    Args:
        folder: The study (its MLflow experiment, parent run and trial folders).
        stage: The study's stage whose trials this Tune run holds (search, or confirm).
    """

    SLOW_WRITE_S = 5.0  # a write under way this long, to a store whose health check fails, is an outage

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
        self._retries_set: dict[str, str] = {}  # the LIVE_HTTP_RETRIES this tracker put in the environment

    # Tune pickles its callbacks with the experiment: the folder, not the thread or the client
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
                                               _optuna_of(self.folder))
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
                    _project(self._projection, record)
                behind.discard(other)
        except Exception as e:  # the store refused or failed: the trial folders keep the record
            with self._lock:
                self._behind |= behind | {trial_id}
            if not self._down:
                log.warning("MLflow: %s for trial %s failed (%s: %s); training goes on, the trial folders keep "
                            "every result, and they are written to MLflow when it answers again (or by "
                            "'snn-study sync %s')", what, trial_id, type(e).__name__, str(e)[:200], self.folder.path)
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
        record.results = _by_epoch(record.results + [last])
        return record

    def setup(self, **info) -> None:
        """The study's Tune run starts (or resumes): the live writer's short retries."""
        self._retries_set = {k: v for k, v in LIVE_HTTP_RETRIES.items() if k not in os.environ}
        os.environ.update(self._retries_set)

    def _restore_retries(self) -> None:
        for key, value in self._retries_set.items():
            if os.environ.get(key) == value:
                del os.environ[key]
        self._retries_set = {}

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
                    _project(p, record)
        else:
            def log(p: _Projection) -> None:
                p.log(trial.trial_id, dict(trial.config), [result], self.stage)

        self._submit(trial, f"epoch {result[EPOCH]}", log)

    def _end(self, trial, status: str) -> None:
        def end(p: _Projection) -> None:
            record = self._record(trial)
            if record is not None:
                _project(p, record, status)

        self._submit(trial, "closing the run", end)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._end(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._end(trial, "FAILED")

    def on_experiment_end(self, trials: list, **info) -> None:
        """Sync every trial from its folder and close the runs as Tune ended them.

        The trials are done, so nothing waits for this but the study's summary: a store that
        is down gets MLflow's own retries (minutes, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``)
        before the study gives up and says to run ``snn-study sync``.
        """
        if self._writer is not None:
            self._writer.join()  # one writer at a time, to the end: the sync then writes nothing twice
        self._restore_retries()  # the sync waits out an outage with MLflow's own retries
        statuses = {t.trial_id: {"TERMINATED": "FINISHED", "ERROR": "FAILED"}.get(t.status, "RUNNING") for t in trials}
        try:
            remote = "://" in self.folder.tune_dir
            summary = sync_study(self.folder, statuses, final=True, stage=self.stage,
                                 trial_dirs=[self._trial_dir(t) for t in trials] if remote else None)
        except Exception as e:  # the store is down at the very end
            log.warning("MLflow: the study's end could not be recorded (%s: %s); every result is in the trial "
                        "folders: run 'snn-study sync %s' once the store answers", type(e).__name__,
                        str(e)[:200], self.folder.path)
            return
        if summary.epochs:
            log.info("MLflow: wrote %d epoch(s) the live record had missed", summary.epochs)
