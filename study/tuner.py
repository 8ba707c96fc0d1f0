"""Build and run the Ray Tune study for a spec: Tuner + OptunaSearch + ASHA + MLflow.

The wiring is in :func:`build_tuner`, in the order Ray's own examples use: the trainable
with its resources, the searcher (Optuna TPE, seeded, backed by an RDB storage in the
study folder so ``optuna-dashboard`` can open it, with the paper's setting enqueued
first), the scheduler, the ``TuneConfig`` and the ``RunConfig`` (storage, failure retries,
checkpoints, the MLflow projection). :func:`run_study` and :func:`resume_study` check
what they can before Ray starts, then run it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import ray
import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from search_spaces import build_space, first_points
from snn import data
from snn.metrics import EPOCH, FIRING_RATE, TEST_ACC
from study import local_ray
from study._search import StudyOptunaSearch
from study.folder import StudyError, StudyFolder, open_study, study_paths, write_state
from study.preflight import prepare_data
from study.spec import StudySpec
from study.tracking import (StudyTracker, check_tracking_uri, finish_parent_run, log_baselines, start_parent_run,
                            sync_study)
from trainables import train_snn

__all__ = ["StudyError", "StudyResult", "build_tuner", "resume_study", "run_study", "study_paths"]

log = logging.getLogger(__name__)


@dataclass
class StudyResult:
    """What a finished study returns: where it lives and its best trial."""

    name: str
    path: Path
    experiment: str
    tracking_uri: str
    parent_run_id: str
    trials: int
    errored: int
    best: dict[str, Any] | None
    recovered: int = 0  # trials that failed, were retried and ended well


def _objective(spec: StudySpec) -> tuple[str | list[str], str | list[str]]:
    if spec.objective == "test_acc":
        return TEST_ACC, "max"
    return [TEST_ACC, FIRING_RATE], ["max", "min"]


def _searcher(spec: StudySpec) -> StudyOptunaSearch:
    metric, mode = _objective(spec)
    fixed = spec.search.fixed_values()
    space = build_space(spec.search.preset, stages=spec.stages, extra=spec.search.dims, fixed=fixed,
                        constants=spec.train_constants(), seed=spec.seed)
    storage = optuna.storages.RDBStorage(f"sqlite:///{study_paths(spec)['optuna']}")
    points = first_points(spec.search.preset, stages=spec.stages, extra=spec.search.dims, fixed=fixed)
    return StudyOptunaSearch(space=space, metric=metric, mode=mode, points_to_evaluate=points or None,
                             sampler=optuna.samplers.TPESampler(seed=spec.seed), study_name=spec.name,
                             storage=storage, seed=spec.seed)


def _trainable(spec: StudySpec, prepared: data.Prepared | None = None):
    # The trial folders, where a trial finds checkpoints newer than Tune's saved state names
    study_dir = None if "://" in spec.storage else str(spec.study_dir())
    shipped = {}
    if prepared is not None:  # a user's data: through the object store if small, else from data_root
        small = prepared.nbytes <= spec.dataset.object_store_limit_mb * 2**20
        shipped = {"data": prepared.in_memory() if small else None, "data_path": prepared.path}
    return tune.with_resources(tune.with_parameters(train_snn, study_dir=study_dir, **shipped),
                               {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


class _FaultLines(tune.Callback):
    """One console line for each trial failure Tune recovers from, in the study's words (the
    traceback goes to the study's log)."""

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        error = ""
        for folder in filter(None, (trial.local_path, trial.path)):
            path = Path(folder) / "error.txt"
            if "://" not in str(folder) and path.exists():
                lines = [line for line in path.read_text().splitlines() if line.strip()]
                error = f" ({lines[-1].split('. ')[0][:200]})" if lines else ""  # its first sentence
                break
        epoch = (trial.last_result or {}).get(EPOCH)
        start = f"its last checkpoint (epoch {int(epoch)})" if epoch else "the start"
        log.warning("trial %s failed%s; Tune retries it from %s", trial.trial_id, error, start)


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def build_tuner(folder: StudyFolder, *, verbose: int = 1, prepared: data.Prepared | None = None) -> tune.Tuner:
    """The :class:`ray.tune.Tuner` of a study (Ray must already be initialised); ``prepared``:
    the user's data, as :func:`snn.data.prepare` returned it."""
    spec = folder.spec
    metric, mode = _objective(spec)
    single = isinstance(metric, str)
    if spec.scheduler == "asha":
        # Early stopping on test_acc; with two objectives ASHA still ranks by test_acc alone.
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=spec.train.epochs, grace_period=1,
                                  reduction_factor=2, **({} if single else {"metric": metric[0], "mode": mode[0]}))
    else:
        scheduler = FIFOScheduler()
    tune_config = tune.TuneConfig(
        search_alg=_searcher(spec), scheduler=scheduler, num_samples=spec.trials,
        max_concurrent_trials=spec.concurrency, trial_dirname_creator=_trial_dirname, reuse_actors=True,
        trial_name_creator=_trial_dirname, **({"metric": metric, "mode": mode} if single else {}))
    run_config = tune.RunConfig(
        name=spec.name, storage_path=spec.storage_uri(),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=[StudyTracker(folder), _FaultLines()], verbose=verbose)
    return tune.Tuner(_trainable(spec, prepared), tune_config=tune_config, run_config=run_config)


def _project_root() -> str:
    return str(Path(__file__).resolve().parents[1])


def _init_ray(spec: StudySpec, address: str | None) -> bool:
    """Start a local Ray, or join ``address``; the spec's ``env_vars`` go to the trials' processes.

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
    # No address: a new local Ray, as documented, never a cluster that `ray start` left behind
    # in /tmp/ray (join one with --address auto).
    target = address or os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address=target, dashboard_host="127.0.0.1", configure_logging=False,
             runtime_env={"env_vars": env_vars} if env_vars else None)
    return target == "local"


def _check_resources(spec: StudySpec) -> None:
    """A trial that asks for more than the whole cluster has would wait forever: refuse it."""
    total = ray.cluster_resources()
    for key, want in (("GPU", spec.resources.gpu), ("CPU", spec.resources.cpu)):
        have = total.get(key, 0.0)
        if want > have:
            raise StudyError(f"resources.{key.lower()}: {want:g} per trial requested, but the Ray cluster has "
                             f"{have:g} {key}(s) in all; lower it, or join a bigger cluster with --address",
                             exit_code=2)


def _check_server(uri: str) -> None:
    """Fail before Ray starts when an MLflow server cannot be reached (a local store always can)."""
    try:
        check_tracking_uri(uri)
    except ConnectionError as e:
        raise StudyError(str(e)) from None


def _best(results, metric: str) -> dict[str, Any] | None:
    try:
        r = results.get_best_result(metric=metric, mode="max", scope="last", filter_nan_and_inf=True)
    except RuntimeError:
        return None
    if r is None or r.metrics is None:
        return None
    return {"trial_id": r.metrics.get("trial_id", ""), "config": dict(r.config), "path": r.path,
            "metrics": {k: v for k, v in r.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}}


def _finish(folder: StudyFolder, results) -> StudyResult:
    best = _best(results, TEST_ACC)
    errored = sum(1 for r in results if r.error is not None)
    # Tune leaves error.txt in a trial folder at each failure, also when a retry then succeeds
    recovered = sum(1 for r in results if r.error is None and r.path and "://" not in r.path
                    and (Path(r.path) / "error.txt").exists())
    try:
        finish_parent_run(folder.tracking_uri, folder.parent_run_id, best)
    except Exception as e:  # the store is down at the very end: the trials' results are in their folders
        log.warning("MLflow: could not record the best trial on the parent run %s (%s: %s); run 'snn-study sync "
                    "%s' once the store answers", folder.parent_run_id, type(e).__name__, e, folder.path)
    spec = folder.spec
    return StudyResult(spec.name, folder.path, spec.experiment, folder.tracking_uri, folder.parent_run_id,
                       len(results), errored, best, recovered)


def run_study(spec: StudySpec, *, address: str | None = None, tracking_uri: str | None = None,
              verbose: int = 1) -> StudyResult:
    """Run a new study to the end.

    Args:
        spec: A validated study spec.
        address: Ray cluster address (``auto`` joins a running cluster; None starts a
            local Ray unless ``RAY_ADDRESS`` is set).
        tracking_uri: Overrides the spec's MLflow tracking URI.
        verbose: Tune's progress verbosity (0 silent, 1 status tables, 2 every result).

    Raises:
        StudyError: The study exists already, the tracking server or the data is missing,
            or a trial asks for more than the cluster has.
    """
    uri = tracking_uri or spec.mlflow.tracking_uri
    paths = study_paths(spec)
    if paths["state"].exists():
        raise StudyError(f"study {spec.name!r} already exists in {paths['dir']}; resume it with "
                         f"'snn-study resume {paths['dir']}' or choose another name")
    _check_server(uri)
    prepared = prepare_data(spec)
    own_ray = _init_ray(spec, address)
    _check_resources(spec)  # before MLflow's store or the study folder exist: a refused study leaves nothing
    n = log_baselines(uri, spec.experiment, spec.dataset_name)
    log.info("logged %d baseline rows of the paper for %s", n, spec.dataset_name)
    paths["dir"].mkdir(parents=True, exist_ok=True)
    if own_ray:
        local_ray.record(paths["dir"])
    resolved = spec.model_dump(mode="json")
    resolved["mlflow"]["tracking_uri"] = uri
    trial = spec.trial_config().to_dict()  # paths as this driver resolved them: a resume elsewhere finds the same
    resolved["data_root"], resolved["dataset"] = trial["data_root"], trial["dataset"]
    paths["spec"].write_text(yaml.safe_dump(resolved, sort_keys=False))
    parent = start_parent_run(uri, spec.experiment, spec.name, resolved)
    write_state(paths["state"], {"parent_run_id": parent, "tracking_uri": uri})
    folder = StudyFolder(paths["dir"], spec, parent, uri)
    results = build_tuner(folder, verbose=verbose, prepared=prepared).fit()
    return _finish(folder, results)


def resume_study(study: str | os.PathLike, *, address: str | None = None, verbose: int = 1) -> StudyResult:
    """Resume an interrupted study from its folder (or its name under ./studies).

    First writes into MLflow whatever the trial folders hold and MLflow lacks (what a
    driver that died missed); then finished trials are kept as they are, trials that were
    running continue from their last checkpoint, and errored trials are retried.

    Raises:
        StudyError: No study there, or Tune saved nothing of it yet.
    """
    folder = open_study(study)
    _check_server(folder.tracking_uri)
    prepared = prepare_data(folder.spec)
    stopped, running = local_ray.stop(folder.path)
    if running:
        raise StudyError(f"{study}: the study's driver is still running; 'snn-study stop {study}' stops it")
    if stopped:
        log.warning("stopped %d process(es) of the local Ray that the study's previous driver left", stopped)
    if _init_ray(folder.spec, address):
        local_ray.record(folder.path)
    if not tune.Tuner.can_restore(folder.tune_dir):
        raise StudyError(f"{study}: Tune has not saved any state of this study yet; start it again with "
                         f"'snn-study run' after removing {folder.path}")
    start_parent_run(folder.tracking_uri, folder.spec.experiment, folder.spec.name, {}, run_id=folder.parent_run_id)
    summary = sync_study(folder)
    if summary.epochs:
        log.info("MLflow: wrote %d epoch(s) that the interrupted driver had not recorded", summary.epochs)
    # The RunConfig, with its StudyTracker, comes back from Tune's own state.
    tuner = tune.Tuner.restore(folder.tune_dir, trainable=_trainable(folder.spec, prepared), resume_unfinished=True,
                               resume_errored=True)
    return _finish(folder, tuner.fit())
