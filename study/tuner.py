"""Build and run the Ray Tune study for a spec: Tuner + OptunaSearch + ASHA + MLflow.

Everything of the wiring is in :func:`build_tuner`, in the order Ray's own examples use:
the trainable with its resources, the searcher (Optuna TPE, seeded, backed by an RDB
storage in the study folder so ``optuna-dashboard`` can open it, with the paper's setting
enqueued first), the scheduler, the ``TuneConfig`` and the ``RunConfig`` (storage,
failure retries, checkpoints, the MLflow callback).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from study.spec import StudySpec, is_tracking_server, parse_spec

__all__ = ["StudyError", "StudyResult", "build_tuner", "resume_study", "run_study", "study_paths"]

log = logging.getLogger(__name__)

SPEC_FILE = "study.yaml"  # the resolved spec, written before the study starts
STATE_FILE = "study.json"  # MLflow parent run id and tracking URI of the study
OPTUNA_FILE = "optuna.db"

T = TypeVar("T")


class StudyError(RuntimeError):
    """A study cannot start or resume; the message is one line saying why and what to do.

    Attributes:
        exit_code: 2 for a request that can never run as given (like a bad spec), else 1.
    """

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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


def study_paths(spec: StudySpec) -> dict[str, Path]:
    d = spec.study_dir()
    return {"dir": d, "spec": d / SPEC_FILE, "state": d / STATE_FILE, "optuna": d / OPTUNA_FILE}


def _objective(spec: StudySpec) -> tuple[str | list[str], str | list[str]]:
    from snn.training import FIRING_RATE, TEST_ACC

    if spec.objective == "test_acc":
        return TEST_ACC, "max"
    return [TEST_ACC, FIRING_RATE], ["max", "min"]


def _searcher(spec: StudySpec, paths: dict[str, Path]):
    import optuna

    from study._search import StudyOptunaSearch

    from search_spaces import build_space, first_points

    metric, mode = _objective(spec)
    constants = spec.train_constants()
    space = build_space(spec.search.preset, stages=spec.stages, extra=spec.search.dims, fixed=spec.search.fixed,
                        constants=constants, seed=spec.seed)
    storage = optuna.storages.RDBStorage(f"sqlite:///{paths['optuna']}")
    sampler = optuna.samplers.TPESampler(seed=spec.seed)
    points = first_points(spec.search.preset, stages=spec.stages, extra=spec.search.dims, fixed=spec.search.fixed)
    return StudyOptunaSearch(space=space, metric=metric, mode=mode, points_to_evaluate=points or None,
                        sampler=sampler, study_name=spec.name, storage=storage, seed=spec.seed)


def _trainable(spec: StudySpec):
    from ray import tune

    from trainables import train_snn

    _trial_actors_without_runtime_env()
    return tune.with_resources(train_snn, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def _trial_actors_without_runtime_env() -> None:
    """Let Tune's trial actors start on the worker processes Ray has already started.

    A local Ray starts one idle worker process per CPU at ``ray.init``, and hands an actor
    only a worker started for the same ``runtime_env``. Tune gives every trial actor one of
    its own, ``{"env_vars": {"PL_DISABLE_FORK": "1"}}`` (``DEFAULT_ENV_VARS`` in
    ``ray/tune/execution/class_cache.py``; the variable is for PyTorch Lightning, which the
    trials do not use), so each trial slot started a new process while the ones ready stayed
    idle. Without it, an 8 x 2 digits study on 2 cores took 1.3 s less on average over six
    interleaved pairs, in 9-12 s (README, Performance). Tune still adds the variables it
    propagates (AWS credentials, Ray Train's settings) when the driver has them set; its
    trials then start as before, and so do those of a Ray joined with an address, which
    ``_init_ray`` starts with a job ``runtime_env``.
    """
    from ray.tune.execution import class_cache

    getattr(class_cache, "DEFAULT_ENV_VARS", {}).pop("PL_DISABLE_FORK", None)


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def build_tuner(spec: StudySpec, *, parent_run_id: str, tracking_uri: str, verbose: int = 1):
    """The :class:`ray.tune.Tuner` of a study (Ray must already be initialised)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from study.tracking import StudyMLflowCallback

    paths = study_paths(spec)
    metric, mode = _objective(spec)
    single = isinstance(metric, str)
    if spec.scheduler == "asha":
        # Early stopping on test_acc; with two objectives ASHA still ranks by test_acc alone.
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=spec.train.epochs, grace_period=1,
                                  reduction_factor=2, **({} if single else {"metric": metric[0], "mode": mode[0]}))
    else:
        scheduler = FIFOScheduler()
    tune_config = tune.TuneConfig(
        search_alg=_searcher(spec, paths), scheduler=scheduler, num_samples=spec.trials,
        max_concurrent_trials=spec.concurrency, trial_dirname_creator=_trial_dirname, reuse_actors=True,
        trial_name_creator=_trial_dirname, **({"metric": metric, "mode": mode} if single else {}))
    run_config = tune.RunConfig(
        name=spec.name, storage_path=spec.storage_uri(),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=[StudyMLflowCallback(tracking_uri, spec.experiment, spec.name, parent_run_id)],
        verbose=verbose)
    return tune.Tuner(_trainable(spec), tune_config=tune_config, run_config=run_config)


def _init_ray(address: str | None) -> None:
    import ray

    # Save Tune's experiment state every few seconds, so that a killed driver leaves little
    # for `snn-study resume` to redo (Tune's "auto" period can grow to minutes).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    # With CheckpointConfig(num_to_keep=2) Tune also saves that state whenever a trial has
    # checkpointed twice since the last save, so that it never names a pruned checkpoint; with
    # epochs of a second or less (the quick-start) it warns each time that this "may become a
    # bottleneck", three lines asking to change the settings chosen here on purpose. Measured:
    # with cProfile, 0.57 s of the driver's time in a 27 s study (4 trials x 20 digits epochs).
    # Set it to 5 to see them.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return
    # No address: a new local Ray, as documented, never a cluster that `ray start` left
    # behind in /tmp/ray (join one with --address auto).
    ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local", dashboard_host="127.0.0.1",
             configure_logging=False, runtime_env={"env_vars": {"PYTHONPATH": _project_root()}}
             if address else None)


def _alongside_ray_start(address: str | None, fn: Callable[..., T], *args: Any) -> T:
    """Start (or join) Ray in this thread while ``fn(*args)`` runs in another; return its result.

    Both take seconds of CPU before the first trial can start: MLflow's side (importing it
    with torch and Tune, writing the paper's baseline rows) and Ray's (its processes). Side
    by side the study starts seconds sooner (README, Performance). Whatever happens to Ray,
    ``fn`` runs to its end before this returns or raises: no store write is cut off half way.
    """
    import ray  # noqa: F401  (here, not first inside fn's imports of Ray's MLflow integration)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="snn-study-mlflow") as pool:
        future = pool.submit(fn, *args)
        _init_ray(address)
    return future.result()


def _project_root() -> str:
    return str(Path(__file__).resolve().parents[1])


def _check_resources(spec: StudySpec) -> None:
    """A trial that asks for more than the whole cluster has would wait forever: refuse it."""
    import ray

    total = ray.cluster_resources()
    for key, want in (("GPU", spec.resources.gpu), ("CPU", spec.resources.cpu)):
        have = total.get(key, 0.0)
        if want > have:
            raise StudyError(f"resources.{key.lower()}: {want:g} per trial requested, but the Ray cluster has "
                             f"{have:g} {key}(s) in all; lower it, or join a bigger cluster with --address",
                             exit_code=2)


def _preflight_data(spec: StudySpec) -> None:
    """Open the dataset once on the driver, so missing files fail before Ray starts."""
    from snn import data

    if data.info(spec.dataset).bundled:  # nothing to find (and opening it costs a second of imports)
        return
    try:
        data.build(spec.dataset, spec.train_constants()["data_root"], train=False,
                   timesteps=spec.timesteps, download=spec.download)
    except data.DatasetNotFoundError as e:
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


def _finish(spec: StudySpec, results, state: dict[str, Any]) -> StudyResult:
    from snn.training import TEST_ACC
    from study.tracking import finish_parent_run

    best = _best(results, TEST_ACC)
    errored = sum(1 for r in results if r.error is not None)
    try:
        finish_parent_run(state["tracking_uri"], state["parent_run_id"], best)
    except Exception as e:  # the store is down at the very end: the trials' results are in Tune's folder
        log.warning("MLflow: could not record the best trial on the parent run %s (%s: %s); 'snn-study report %s' "
                    "reads Tune's results", state["parent_run_id"], type(e).__name__, e, study_paths(spec)["dir"])
    return StudyResult(spec.name, study_paths(spec)["dir"], spec.experiment, state["tracking_uri"],
                       state["parent_run_id"], len(results), errored, best)


def _check_server(uri: str) -> None:
    """Fail before Ray starts when an MLflow server cannot be reached (a local store always can)."""
    if not is_tracking_server(uri):
        return  # nothing to reach; importing MLflow for nothing would cost the seconds saved below
    from study.tracking import check_tracking_uri

    try:
        check_tracking_uri(uri)
    except ConnectionError as e:
        raise StudyError(str(e)) from None


def _log_baselines(uri: str, experiment: str, dataset: str) -> int:
    from study.tracking import log_baselines  # imports MLflow, torch and Tune: seconds

    return log_baselines(uri, experiment, dataset)


def _staged_store(uri: str) -> tuple[str, Path | None, Path | None]:
    """Where MLflow's setup writes: the store itself or, for a SQLite file that does not exist
    yet, a hidden file beside it that becomes the store once Ray has accepted the study (so a
    refused study leaves no file).

    Returns:
        The URI to write to, the staged file and the store's file (both None: no staging).
    """
    database = uri[len("sqlite:///"):].split("?")[0] if uri.startswith("sqlite:///") else ""
    if not database or database == ":memory:" or Path(database).exists():
        return uri, None, None
    final = Path(database).resolve()
    staged = final.with_name(f".{final.name}.{os.getpid()}.new")
    return f"sqlite:///{staged}", staged, final


def _publish_store(staged: Path, final: Path, uri: str, experiment: str, dataset: str) -> None:
    """Give the staged SQLite store its real name, unless a study beside this one made it first."""
    from study.tracking import log_baselines, release_store

    release_store(f"sqlite:///{staged}")
    try:
        os.link(staged, final)  # never replaces a store that appeared meanwhile
    except FileExistsError:
        log_baselines(uri, experiment, dataset)
    except OSError:  # a filesystem without hard links
        if final.exists():
            log_baselines(uri, experiment, dataset)
        else:
            os.replace(staged, final)


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
        StudyError: The study exists already, the tracking server or the data is missing.
    """
    uri = tracking_uri or spec.mlflow.tracking_uri
    paths = study_paths(spec)
    if paths["state"].exists():
        raise StudyError(f"study {spec.name!r} already exists in {paths['dir']}; resume it with "
                         f"'snn-study resume {paths['dir']}' or choose another name")
    _check_server(uri)
    _preflight_data(spec)
    setup_uri, staged, final = _staged_store(uri)
    try:
        n = _alongside_ray_start(address, _log_baselines, setup_uri, spec.experiment, spec.dataset)
        _check_resources(spec)
        if staged is not None:
            _publish_store(staged, final, uri, spec.experiment, spec.dataset)
    finally:
        if staged is not None:
            staged.unlink(missing_ok=True)
    log.info("logged %d baseline rows of the paper for %s", n, spec.dataset)

    from study.tracking import start_parent_run

    paths["dir"].mkdir(parents=True, exist_ok=True)
    resolved = spec.model_dump(mode="json")
    resolved["mlflow"]["tracking_uri"] = uri
    paths["spec"].write_text(yaml.safe_dump(resolved, sort_keys=False))
    parent = start_parent_run(uri, spec.experiment, spec.name, resolved)
    state = {"parent_run_id": parent, "tracking_uri": uri}
    tmp = paths["state"].with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(paths["state"])
    tuner = build_tuner(spec, parent_run_id=parent, tracking_uri=uri, verbose=verbose)
    results = tuner.fit()
    return _finish(spec, results, state)


def resume_study(study: str | os.PathLike, *, address: str | None = None, verbose: int = 1) -> StudyResult:
    """Resume an interrupted study from its folder (or its name under ./studies).

    Finished trials are kept as they are; trials that were running continue from their
    last checkpoint; errored trials are retried.

    Raises:
        StudyError: No study there.
    """
    from ray import tune

    from study.tracking import start_parent_run

    d = Path(study)
    if not (d / SPEC_FILE).exists() and (Path("studies") / str(study) / SPEC_FILE).exists():
        d = Path("studies") / str(study)
    if not (d / SPEC_FILE).exists() or not (d / STATE_FILE).exists():
        raise StudyError(f"{study}: no study found there (expected {SPEC_FILE} and {STATE_FILE} in the folder)")
    spec = parse_spec(yaml.safe_load((d / SPEC_FILE).read_text()), str(d / SPEC_FILE))
    state = json.loads((d / STATE_FILE).read_text())
    start_parent_run(state["tracking_uri"], spec.experiment, spec.name, {}, run_id=state["parent_run_id"])
    _init_ray(address)
    tune_dir = spec.storage_uri().rstrip("/") + "/" + spec.name
    if not tune.Tuner.can_restore(tune_dir):
        raise StudyError(f"{study}: Tune has not saved any state of this study yet; start it again with "
                         f"'snn-study run' after removing {d}")
    # The RunConfig (with its MLflow callback) comes back from Tune's own state; the callback
    # re-attaches each trial to its existing MLflow run (StudyMLflowCallback.log_trial_start).
    tuner = tune.Tuner.restore(tune_dir, trainable=_trainable(spec), resume_unfinished=True, resume_errored=True)
    results = tuner.fit()
    return _finish(spec, results, state)
