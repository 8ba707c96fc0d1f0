"""Build and run the Ray Tune study for a spec: Tuner + OptunaSearch + ASHA + MLflow.

The wiring is in :func:`build_tuner`, in the order Ray's own examples use: the trainable
with its resources, the searcher (Optuna TPE, seeded, backed by an RDB storage, the
study folder's SQLite file or the database server of the spec's ``search.storage``, so
``optuna-dashboard`` can open it, with the paper's setting enqueued first), the
scheduler, the ``TuneConfig`` and the ``RunConfig`` (storage, failure retries,
checkpoints, the MLflow projection). With ``scheduler: pbt`` or ``pb2`` there is no
searcher: Tune draws the initial population and PBT (or PB2) perturbs λ (and lr) while the
trials train (:func:`population`). :func:`run_study` and :func:`resume_study` check what
they can before Ray starts, then run it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import ray
import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining, TrialScheduler
from ray.tune.schedulers.pb2 import PB2
from ray.tune.search import BasicVariantGenerator
from sqlalchemy.engine import make_url

from search_spaces import build_space, dims_of, first_points, paper_setting
from snn import data
from snn.config import HEAD_ONLY
from snn.metrics import DIVERGED, EPOCH, FIRING_RATE, TEST_ACC
from study import local_ray
from study._search import Points, SeededRepeater, StudyOptunaSearch
from study.folder import (CONFIRM, SEARCH, StudyError, StudyFolder, open_study, optuna_url, stage_dir, study_paths,
                          write_state)
from study import baselines as _baselines
from study.analysis import Analysis, record_analysis
from study.preflight import prepare_data
from study.spec import PERTURBED, POPULATION, StudySpec, hide_password, redacted
from study.report import write_report
from study.system_metrics import SystemSampler
from study.tracking import (RegisteredModel, StudyTracker, check_tracking_uri, finish_parent_run, log_baselines,
                            register_best_model, start_parent_run, sync_study)
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
    stopped: int = 0  # trials the scheduler stopped before their full budget (PRUNED in Optuna)
    confirmed: int = 0  # trials of the confirm stage
    answer: list[str] = field(default_factory=list)  # the best replicated configuration, the paired differences
    model: RegisteredModel | None = None  # the best model, registered under the study's name


def _objective(spec: StudySpec) -> tuple[str | list[str], str | list[str]]:
    if spec.objective == "test_acc":
        return TEST_ACC, "max"
    return [TEST_ACC, FIRING_RATE], ["max", "min"]


def _searcher(spec: StudySpec) -> StudyOptunaSearch | SeededRepeater:
    metric, mode = _objective(spec)
    fixed = spec.search.fixed_values()
    space = build_space(spec.search.preset, stages=spec.stages, extra=spec.search.dims, fixed=fixed,
                        constants=spec.train_constants(), seed=spec.seed)
    storage = _rdb_storage(optuna_url(spec))
    points = first_points(spec.search.preset, stages=spec.stages, extra=spec.search.dims, fixed=fixed)
    search = StudyOptunaSearch(space=space, metric=metric, mode=mode, points_to_evaluate=points or None,
                               sampler=optuna.samplers.TPESampler(seed=spec.seed), study_name=spec.name,
                               storage=storage, seed=spec.seed, epochs=spec.train.epochs)
    return SeededRepeater(search, repeat=spec.seeds, seed=spec.seed) if spec.seeds > 1 else search


def _trainable(spec: StudySpec, prepared: data.Prepared | None = None, stage: str = SEARCH):
    # The trial folders, where a trial finds checkpoints newer than Tune's saved state names
    study_dir = None if "://" in spec.storage else str(spec.study_dir() / stage_dir(stage))
    shipped = {}
    if prepared is not None:  # a user's data: through the object store if small, else from data_root
        small = prepared.nbytes <= spec.dataset.object_store_limit_mb * 2**20
        shipped = {"data": prepared.in_memory() if small else None, "data_path": prepared.path}
    # the sampler of each trial's system metrics (MLflow's monitors): the trainable imports no MLflow
    return tune.with_resources(tune.with_parameters(train_snn, study_dir=study_dir, system_metrics=SystemSampler,
                                                    **shipped),
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


# -- population-based training (scheduler pbt, pb2) -------------------------------------------------
def _clip(config: dict[str, Any], bounds: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """PBT's explore step multiplies a value by 0.8 or 1.2, past its range if need be: bring it back."""
    for k, (lo, hi) in bounds.items():
        if k in config:
            config[k] = min(max(float(config[k]), lo), hi)
    return config


class _UntilTheLastEpoch:
    """No perturbation at a trial's last epoch: a trial exploited there would restart from a
    checkpoint with nothing left to train, and end as a copy of its donor. Nor at a trial's
    last report without an accuracy (diverged, or stopped by the firing-rate guard): paused
    there, it would train and stop again when it resumes."""

    def __init__(self, *args: Any, epochs: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._epochs = epochs

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        acc = result.get(TEST_ACC)
        if int(result.get(EPOCH, 0)) >= self._epochs or not (isinstance(acc, (int, float)) and math.isfinite(acc)):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


class _PBT(_UntilTheLastEpoch, PopulationBasedTraining):
    pass


class _PB2(_UntilTheLastEpoch, PB2):
    pass


def perturbed(spec: StudySpec) -> dict[str, tuple[float, float]]:
    """What a population study perturbs, with its range: λ₀, and lr where ``search.dims`` lists it."""
    return {k: r for k, r in PERTURBED.items() if k == "lambda0" or k in spec.search.dims}


def _initial(name: str, bounds: tuple[float, float]):
    return tune.loguniform(*bounds) if name == "lr" else tune.uniform(*bounds)


def population(spec: StudySpec) -> tuple[TrialScheduler, dict[str, Any]]:
    """The scheduler of a pbt or pb2 study and its initial population (Tune's ``param_space``).

    Every trial starts from the spec's parameters with λ constant (``schedule: constant``) at
    λ₀ ~ U[0, 1] (and lr log-uniform where ``search.dims`` lists it), drawn by Tune, not Optuna;
    every ``pbt.interval`` epochs a trial in the bottom ``pbt.quantile`` by test_acc continues
    from a top trial's checkpoint with that trial's λ₀ (and lr) perturbed: PBT by 0.8 or 1.2,
    or a new draw; PB2 by a Gaussian-process bandit over the population's results.
    """
    bounds = perturbed(spec)
    pop = spec.population
    common = dict(time_attr="training_iteration", perturbation_interval=pop.interval, quantile_fraction=pop.quantile,
                  synch=pop.synch, custom_explore_fn=functools.partial(_clip, bounds=bounds), epochs=spec.train.epochs)
    if spec.scheduler == "pbt":
        scheduler = _PBT(hyperparam_mutations={k: _initial(k, b) for k, b in bounds.items()}, **common)
    else:
        scheduler = _PB2(hyperparam_bounds={k: list(b) for k, b in bounds.items()}, **common)
    return scheduler, {**spec.population_config(), **{k: _initial(k, b) for k, b in bounds.items()}}


def build_tuner(folder: StudyFolder, *, verbose: int = 1, prepared: data.Prepared | None = None) -> tune.Tuner:
    """The :class:`ray.tune.Tuner` of a study (Ray must already be initialised); ``prepared``:
    the user's data, as :func:`snn.data.prepare` returned it."""
    spec = folder.spec
    if spec.scheduler in POPULATION:
        return _population_tuner(folder, verbose=verbose, prepared=prepared)
    metric, mode = _objective(spec)
    single = isinstance(metric, str)
    if spec.scheduler == "asha":
        # Early stopping on test_acc; with two objectives ASHA still ranks by test_acc alone.
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=spec.train.epochs, grace_period=1,
                                  reduction_factor=2, **({} if single else {"metric": metric[0], "mode": mode[0]}))
    else:
        scheduler = FIFOScheduler()
    tune_config = tune.TuneConfig(
        search_alg=_searcher(spec), scheduler=scheduler, num_samples=spec.trials * spec.seeds,
        max_concurrent_trials=spec.concurrency, trial_dirname_creator=_trial_dirname, reuse_actors=True,
        trial_name_creator=_trial_dirname, **({"metric": metric, "mode": mode} if single else {}))
    run_config = tune.RunConfig(
        name=spec.name, storage_path=spec.storage_uri(),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=[StudyTracker(folder), _FaultLines()], verbose=verbose)
    return tune.Tuner(_trainable(spec, prepared), tune_config=tune_config, run_config=run_config)


def _population_tuner(folder: StudyFolder, *, verbose: int, prepared: data.Prepared | None) -> tune.Tuner:
    """The Tuner of a pbt or pb2 study: no Optuna (PBT takes no searcher; Tune draws the initial
    population, seeded), checkpoints kept long enough for a donor's to outlive its copy."""
    spec = folder.spec
    scheduler, space = population(spec)
    # Tune fetches a trial's result.json whenever PBT restarts it, and warns of each one not
    # synced yet: a console line per restart that says nothing wrong
    logging.getLogger("ray.tune.logger.logger").setLevel(logging.ERROR)
    # PB2 fits a Gaussian process to a handful of results at each perturbation, and scikit-learn
    # warns that its kernel's variance reached a bound: the bandit still chooses
    warnings.filterwarnings("ignore", message="The optimal value found for dimension", module="sklearn")
    tune_config = tune.TuneConfig(
        # Tune ignores max_concurrent_trials beside a BasicVariantGenerator: the generator takes the limit
        search_alg=BasicVariantGenerator(random_state=spec.seed, max_concurrent=spec.concurrency or 0),
        scheduler=scheduler, num_samples=spec.trials, metric=TEST_ACC, mode="max", trial_dirname_creator=_trial_dirname,
        trial_name_creator=_trial_dirname, reuse_actors=True)
    run_config = tune.RunConfig(
        name=spec.name, storage_path=spec.storage_uri(),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        # a bottom trial restarts from a top trial's checkpoint of the last perturbation, which
        # must still be there when it starts (Ray warns at 2 or fewer)
        checkpoint_config=tune.CheckpointConfig(num_to_keep=max(4, 2 * spec.population.interval + 2)),
        callbacks=[StudyTracker(folder), _FaultLines()], verbose=verbose)
    return tune.Tuner(_trainable(spec, prepared), param_space=space, tune_config=tune_config, run_config=run_config)


def _key(config: dict[str, Any]) -> str:
    """A configuration's identity: its config but the seed."""
    return json.dumps({k: v for k, v in config.items() if k != "seed"}, sort_keys=True, default=str)


def confirm_points(spec: StudySpec, results) -> list[dict[str, Any]]:
    """The trials of the confirm stage: the search's ``confirm.top`` best configurations (by
    their mean final test_acc over full-budget trials) and the paper's setting, each with
    ``confirm.seeds`` new seeds, paired across configurations (seed + seeds + k)."""
    assert spec.confirm is not None
    epochs = spec.train.epochs
    groups: dict[str, list[float]] = {}
    configs: dict[str, dict[str, Any]] = {}
    for r in results:
        if _full(r, epochs):
            key = _key(dict(r.config))
            groups.setdefault(key, []).append(float(r.metrics[TEST_ACC]))
            configs[key] = {k: v for k, v in r.config.items() if k != "seed"}
    ranked = sorted(groups, key=lambda k: sum(groups[k]) / len(groups[k]), reverse=True)[:spec.confirm.top]
    chosen = [configs[k] for k in ranked]
    if chosen:  # the paper's setting, as the search would have given it
        dims = set(dims_of(spec.search.preset, spec.search.dims)) - set(spec.search.fixed_values())
        constants = spec.train_constants()  # the spec's value of a searched dimension the paper does not set
        paper = {**{k: v for k, v in chosen[0].items() if k not in dims | set(HEAD_ONLY)},
                 **{k: constants[k] for k in dims | set(HEAD_ONLY)}, **paper_setting(spec.stages, tuple(dims))}
        if _key(paper) not in {_key(c) for c in chosen}:
            chosen.append(paper)
    first = spec.seed + spec.seeds
    return [{**c, "seed": first + k} for c in chosen for k in range(spec.confirm.seeds)]


def build_confirm_tuner(folder: StudyFolder, points: list[dict[str, Any]], *, verbose: int = 1,
                        prepared: data.Prepared | None = None) -> tune.Tuner:
    """The Tuner of the confirm stage: ``points`` as they are (no search, no early stopping),
    in the study folder's ``confirm/``, recorded in MLflow with ``stage=confirm``."""
    spec = folder.spec
    tune_config = tune.TuneConfig(
        search_alg=Points(points, TEST_ACC, "max"), num_samples=len(points), metric=TEST_ACC,
        mode="max", max_concurrent_trials=spec.concurrency, trial_dirname_creator=_trial_dirname,
        trial_name_creator=_trial_dirname, reuse_actors=True)
    run_config = tune.RunConfig(
        name=stage_dir(CONFIRM), storage_path=folder.tune_dir,
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=[StudyTracker(folder, stage=CONFIRM), _FaultLines()], verbose=verbose)
    return tune.Tuner(_trainable(spec, prepared, CONFIRM), tune_config=tune_config, run_config=run_config)


def _confirm(folder: StudyFolder, results, *, verbose: int, prepared: data.Prepared | None):
    """Run (or resume) the confirm stage after the search; None when the spec has none."""
    if folder.spec.confirm is None:
        return None
    where = folder.tune_dir + "/" + stage_dir(CONFIRM)
    if tune.Tuner.can_restore(where):
        log.info("confirm stage: resuming it")
        return tune.Tuner.restore(where, trainable=_trainable(folder.spec, prepared, CONFIRM), resume_unfinished=True,
                                  resume_errored=True).fit()
    log.info("search stage finished; choosing the configurations to confirm")
    points = confirm_points(folder.spec, results)
    if not points:
        log.warning("confirm stage: no trial of the search trained its full budget; nothing to confirm")
        return None
    log.info("confirm stage: %d configuration(s) x %d new seeds", len(points) // folder.spec.confirm.seeds,
             folder.spec.confirm.seeds)
    return build_confirm_tuner(folder, points, verbose=verbose, prepared=prepared).fit()


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


def _rdb_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at ``url``, its tables made where the database has none yet.

    Two studies that start at once on a new database server both make the tables: one's
    CREATE then fails on what the other made (a unique violation in PostgreSQL's catalog),
    and it opens the storage again, complete by then.
    """
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(1, 5):
        try:
            return optuna.storages.RDBStorage(url)
        except (IntegrityError, ProgrammingError):
            time.sleep(0.5 * attempt)
    return optuna.storages.RDBStorage(url)


def _check_optuna(spec: StudySpec, *, new: bool) -> None:
    """Fail before Ray starts when the database server of the spec's ``search.storage`` cannot be
    opened, or when a new study's name is taken there: Ray's OptunaSearch would carry on another
    study's search of that name (a server is shared; the study folder's own file is not)."""
    if spec.search.storage is None:
        return
    shown = hide_password(spec.search.storage)
    try:
        storage = _rdb_storage(spec.search.storage)  # creates Optuna's tables, as the search would
        try:
            storage.get_study_id_from_name(spec.name)
            taken = True
        except KeyError:
            taken = False
        storage.engine.dispose()  # its connections: the search opens its own
    except Exception as e:  # no driver, no server, refused credentials: the database's own words
        if _holds_mlflow(spec.search.storage):  # Optuna's own words blame its version
            raise StudyError(f"search.storage: {shown} holds MLflow's tables (it is an MLflow backend store); "
                             f"Optuna needs a database of its own, as both version their tables in "
                             f"alembic_version: create one (e.g. 'createdb optuna') and name it here") from None
        why = " ".join(str(e).split())[:300]
        password = make_url(spec.search.storage).password
        if password:
            why = why.replace(str(password), "***")
        raise StudyError(f"search.storage: cannot open the Optuna storage {shown} ({type(e).__name__}: {why}); "
                         f"start the database server, install its driver or fix the URL") from None
    if new and taken:
        raise StudyError(f"search.storage: {shown} already holds an Optuna study named {spec.name!r}, another "
                         f"study's search; choose another name (or resume that study)")


def _holds_mlflow(url: str) -> bool:
    """Whether the database at ``url`` holds MLflow's tables (its runs, experiments, metrics)."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url)
    except Exception:
        return False
    try:
        return {"experiments", "runs", "metrics"} <= set(sqlalchemy.inspect(engine).get_table_names())
    except Exception:
        return False
    finally:
        engine.dispose()


@contextlib.contextmanager
def _memory_kills(folder: StudyFolder):
    """Turn Ray Tune's end of a study whose trials Ray's memory monitor killed into a
    :class:`StudyError` that says so and what to do.

    When a node's memory passes Ray's threshold (95% by default), Ray kills trial workers
    with an ``OutOfMemoryError``, which Tune does not count as a trial failure (to retry):
    it stops the whole run. Every epoch the trials finished is in their folders, so the
    study resumes where it stopped once fewer trials share a node's memory.
    """
    try:
        yield
    except RuntimeError as e:
        if not isinstance(e.__cause__, ray.exceptions.OutOfMemoryError):
            raise
        where = re.search(r"Memory on the node \(IP: ([^,]+), ID: (\w{8})\w*\) was (\S+ used / \S+ limit)",
                          str(e.__cause__))
        node = f" on node {where[1]} ({where[2]}: {where[3]})" if where else ""
        raise StudyError(f"Ray's memory monitor killed trials{node}, and Ray Tune stops a study when it does; "
                         f"every finished epoch is kept. Let fewer trials share a node's memory (a lower "
                         f"'concurrency', or more 'resources.cpu' per trial), then: snn-study resume "
                         f"{folder.path}") from None


def _full(r, epochs: int) -> bool:
    """A trial that trained its whole budget (not stopped early, not failed) with a finite value."""
    acc = (r.metrics or {}).get(TEST_ACC)
    return (r.error is None and isinstance(acc, (int, float)) and math.isfinite(acc)
            and int((r.metrics or {}).get(EPOCH, 0)) >= epochs)


def _best(results, epochs: int) -> dict[str, Any] | None:
    """The best trial among those that trained their whole budget: an early-stopped trial's
    accuracy is from fewer epochs, not comparable."""
    full = [r for r in results if _full(r, epochs)]
    if not full:
        return None
    r = max(full, key=lambda r: r.metrics[TEST_ACC])
    return {"trial_id": r.metrics.get("trial_id", ""), "config": dict(r.config), "path": r.path,
            "metrics": {k: v for k, v in r.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}}


def _analysis(folder: StudyFolder) -> Analysis | None:
    """The study's analysis, recorded on its parent run (:mod:`study.analysis`); None while the
    store does not answer."""
    try:
        return record_analysis(folder)
    except Exception as e:  # the store is down at the very end: 'snn-study report' computes it later
        log.warning("MLflow: the study's comparison could not be recorded (%s: %s); 'snn-study report %s' "
                    "computes it once the store answers", type(e).__name__, str(e)[:200], folder.path)
        return None


def _answer(analysis: Analysis | None) -> list[str]:
    """The study's answer: the best replicated configuration with its interval, and the paired
    differences of the paper's methods; empty without replicates."""
    if analysis is None:
        return []
    lines = []
    best = analysis.best
    if best is not None and best.ci is not None:
        lines.append(f"best configuration ({analysis.stage} stage): {best.label}: test_acc {best.mean:.4f} "
                     f"[{best.ci[0]:.4f}, {best.ci[1]:.4f}] (95 % CI) over {best.n} seeds")
    lines += [d.sentence for d in analysis.differences if d.stage == analysis.stage]
    return lines


def _register(folder: StudyFolder, analysis: Analysis | None, best: dict[str, Any] | None) -> RegisteredModel | None:
    """Register the model of the best configuration's best replicate, else of the best trial."""
    if analysis is not None and analysis.best is not None:
        trial_ids, why = analysis.best.trial_ids, (f"the best of the {analysis.best.n} replicates of the best "
                                                   f"configuration ({analysis.stage} stage): {analysis.best.label}")
    elif best is not None:
        trial_ids, why = [best["trial_id"]], "the best trial that trained its full budget"
    else:
        return None
    try:
        return register_best_model(folder, trial_ids, why)
    except Exception as e:  # the store is down, or has no model registry (a folder store)
        log.warning("MLflow: the best model could not be registered (%s: %s)", type(e).__name__, str(e)[:200])
        return None


def _note(folder: StudyFolder, results, answer: list[str], best: dict[str, Any] | None,
          registered: RegisteredModel | None) -> str:
    """The parent run's description: the study's answer in a few lines (markdown)."""
    spec = folder.spec
    lines = [f"**{spec.name}**: {len(results)} trial(s) on `{spec.dataset_name}`, {spec.arch}, T={spec.timesteps}, "
             f"search `{spec.search.preset}`."]
    lines += [f"- {line}" for line in answer]
    if best:
        lines.append(f"- best trial `{best['trial_id']}` (full budget): test_acc "
                     f"{best['metrics'].get(TEST_ACC, float('nan')):.4f}")
    if registered is not None:
        lines.append(f"- its model: `{registered.uri}` (version {registered.version}, trial {registered.trial_id})")
    if not _baselines.rows(spec.dataset_name):
        lines.append(f"- The paper reports no results on `{spec.dataset_name}`: no baselines beside these trials.")
    lines.append("\nComparison, importance and plots: the artifacts `comparison.md` and `report/`.")
    return "\n".join(lines)


def _report(folder: StudyFolder, analysis: Analysis | None) -> None:
    """Write the study's report, which also puts its plots on the parent run."""
    try:
        write_report(folder.path, analysis=analysis)
    except Exception as e:  # a plot or the store failed: the study's results stand without it
        log.warning("report: could not be written (%s: %s); run 'snn-study report %s'", type(e).__name__,
                    str(e)[:200], folder.path)


def _finish(folder: StudyFolder, results, confirm_results=None) -> StudyResult:
    epochs = folder.spec.train.epochs
    best = _best(results, epochs)
    stopped = sum(1 for r in results if r.error is None and r.metrics and not r.metrics.get(DIVERGED)
                  and int(r.metrics.get(EPOCH, 0)) < epochs)
    every = list(results) + list(confirm_results or [])
    errored = sum(1 for r in every if r.error is not None)
    # Tune leaves error.txt in a trial folder at each failure, also when a retry then succeeds
    recovered = sum(1 for r in every if r.error is None and r.path and "://" not in r.path
                    and (Path(r.path) / "error.txt").exists())
    log.info("recording the study's answer: the comparison of its configurations, the best model, the report ...")
    analysis = _analysis(folder)
    answer = _answer(analysis)
    registered = _register(folder, analysis, best)
    try:
        finish_parent_run(folder.tracking_uri, folder.parent_run_id, best,
                          note=_note(folder, every, answer, best, registered))
    except Exception as e:  # the store is down at the very end: the trials' results are in their folders
        log.warning("MLflow: could not record the best trial on the parent run %s (%s: %s); run 'snn-study sync "
                    "%s' once the store answers", folder.parent_run_id, type(e).__name__, e, folder.path)
    _report(folder, analysis)
    spec = folder.spec
    return StudyResult(spec.name, folder.path, spec.experiment, folder.tracking_uri, folder.parent_run_id,
                       len(results), errored, best, recovered, stopped,
                       len(confirm_results) if confirm_results is not None else 0, answer, registered)


def _record_spec(spec: StudySpec, uri: str) -> str:
    """Write the resolved spec into the study folder and start the study's parent run in MLflow
    with it; return the run's id. The folder's copy keeps ``search.storage`` as given (a resume
    opens it), MLflow's shows it with its password hidden."""
    resolved = spec.model_dump(mode="json")
    resolved["mlflow"]["tracking_uri"] = uri
    trial = spec.trial_config().to_dict()  # paths as this driver resolved them: a resume elsewhere finds the same
    resolved["data_root"], resolved["dataset"] = trial["data_root"], trial["dataset"]
    study_paths(spec)["spec"].write_text(yaml.safe_dump(resolved, sort_keys=False))
    return start_parent_run(uri, spec.experiment, spec.name, redacted(resolved))


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
    _check_optuna(spec, new=True)
    prepared = prepare_data(spec)
    own_ray = _init_ray(spec, address)
    _check_resources(spec)  # before MLflow's store or the study folder exist: a refused study leaves nothing
    if _baselines.rows(spec.dataset_name):
        log.info("MLflow: logging the paper's %d result(s) on %s beside the trials ...",
                 len(_baselines.rows(spec.dataset_name)), spec.dataset_name)
        n = log_baselines(uri, spec.experiment, spec.dataset_name)
        log.info("MLflow: %d new baseline run(s) in experiment '%s'", n, spec.experiment)
    else:
        log.info("the paper reports no results on %s: no baselines beside the trials", spec.dataset_name)
    paths["dir"].mkdir(parents=True, exist_ok=True)
    if own_ray:
        local_ray.record(paths["dir"])
    parent = _record_spec(spec, uri)
    write_state(paths["state"], {"parent_run_id": parent, "tracking_uri": uri})
    folder = StudyFolder(paths["dir"], spec, parent, uri)
    with _memory_kills(folder):
        results = build_tuner(folder, verbose=verbose, prepared=prepared).fit()
        confirmed = _confirm(folder, results, verbose=verbose, prepared=prepared)
    return _finish(folder, results, confirmed)


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
    _check_optuna(folder.spec, new=False)
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
    with _memory_kills(folder):
        results = tuner.fit()
        confirmed = _confirm(folder, results, verbose=verbose, prepared=prepared)
    return _finish(folder, results, confirmed)
