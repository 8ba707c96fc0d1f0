"""Build and run the Ray Tune study for a spec: Tuner + OptunaSearch + ASHA + MLflow.

The wiring is in :func:`build_tuner`, in the order Ray's own examples use: the trainable
with its resources, the searcher (Optuna TPE, seeded, backed by an RDB storage, the
study folder's SQLite file or the database server of the spec's ``search.storage``, so
``optuna-dashboard`` can open it, with the paper's setting enqueued first), the
scheduler, the ``TuneConfig`` and the ``RunConfig`` (storage, failure retries,
checkpoints, the MLflow projection). With ``scheduler: pbt`` or ``pb2`` there is no
searcher: Tune draws the initial population and PBT (or PB2) perturbs λ (and lr) while the
trials train (:func:`population`). A spec with a ``confirm`` stage runs a second Tuner
after the search (:func:`build_confirm_tuner`). :func:`run_study` and :func:`resume_study`
run the checks of :mod:`study.startup` before Ray starts, run the Tuners, and end with
:mod:`study.finish`: an interrupted study raises
:class:`~study.finish.StudyInterrupted`, a finished one records its answer.
With ``search.warm_start``, earlier studies' finished trials join the searcher's Optuna study
before its first suggestion (:mod:`study.warm_start`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import optuna
import ray
import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining, TrialScheduler
from ray.tune.schedulers.pb2 import PB2
from ray.tune.search import BasicVariantGenerator

from search_spaces import DIMENSIONS, build_space, dims_of, first_points, paper_setting
from search_spaces import perturbed as perturbed_dims
from snn import data
from snn.config import HEAD_ONLY
from snn.metrics import EPOCH, TEST_ACC, ran_full_budget
from study import baselines as _baselines
from study import local_ray, warm_start
from study._search import Points, SeededRepeater, StudyOptunaSearch
from study.fidelity import asha_settings
from study.finish import StudyResult, check_finished, finish_study, full_budget
from study.folder import (CONFIRM, SEARCH, StudyError, StudyFolder, open_study, optuna_url, stage_dir, study_paths,
                          write_state)
from study.preflight import prepare_data
from study.spec import POPULATION, StudySpec, redacted
from study.startup import check_optuna, check_resources, check_server, rdb_storage, start_ray
from study.system_metrics import SystemSampler
from study.tracking import StudyTracker, log_baselines, start_parent_run, sync_study
from trainables import train_snn

__all__ = ["StudyError", "StudyResult", "build_tuner", "resume_study", "run_study", "study_paths"]

log = logging.getLogger(__name__)


def _objective(spec: StudySpec) -> tuple[str | list[str], str | list[str]]:
    """Tune's metric and mode: one name, or a list for a multi-objective search."""
    objectives = spec.objectives()
    if len(objectives) == 1:
        return objectives[0]
    return [m for m, _ in objectives], [mode for _, mode in objectives]


def _searcher(spec: StudySpec) -> StudyOptunaSearch | SeededRepeater:
    metric, mode = _objective(spec)
    fixed = spec.search.fixed_values()
    space = build_space(spec.search.preset, stages=spec.stages, extra=spec.search.dims, fixed=fixed,
                        constants=spec.train_constants(), seed=spec.seed)
    storage = rdb_storage(optuna_url(spec))
    points = first_points(spec.search.preset, stages=spec.stages, extra=spec.search.dims, fixed=fixed)
    search = StudyOptunaSearch(space=space, metric=metric, mode=mode, points_to_evaluate=points or None,
                               sampler=optuna.samplers.TPESampler(seed=spec.seed), study_name=spec.name,
                               storage=storage, seed=spec.seed, epochs=spec.train.epochs,
                               max_energy_uj=spec.energy.max_uj)
    return SeededRepeater(search, repeat=spec.seeds, seed=spec.seed) if spec.seeds > 1 else search


def _trainable(spec: StudySpec, prepared: data.Prepared | None = None, stage: str = SEARCH):
    # The trial folders, where a trial finds checkpoints newer than Tune's saved state names
    study_dir = None if "://" in spec.storage else str(spec.study_dir() / stage_dir(stage))
    shipped = {}
    if prepared is not None:  # a user's data: through the object store if small, else from data_root
        small = prepared.nbytes <= spec.dataset.object_store_limit_mb * 2**20
        shipped = {"data": prepared.in_memory() if small else None, "data_path": prepared.path}
    # the sampler of each trial's system metrics (MLflow's monitors): the trainable imports no MLflow;
    # the objectives lead each result, so that Tune's progress table shows them
    return tune.with_resources(tune.with_parameters(train_snn, study_dir=study_dir, system_metrics=SystemSampler,
                                                    objectives=[m for m, _ in spec.objectives()], **shipped),
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
        finite = isinstance(acc, (int, float)) and math.isfinite(acc)
        if ran_full_budget(result.get(EPOCH), self._epochs) or not finite:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


class _PBT(_UntilTheLastEpoch, PopulationBasedTraining):
    pass


class _PB2(_UntilTheLastEpoch, PB2):
    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        # PB2 fits a Gaussian process to a handful of results at each perturbation, and scikit-learn
        # warns that its kernel's variance reached a bound: the bandit still chooses
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The optimal value found for dimension", module="sklearn")
            return super().on_trial_result(tune_controller, trial, result)


def perturbed(spec: StudySpec) -> dict[str, tuple[float, float]]:
    """What a population study perturbs, with its range: the perturbable dimensions of a full
    search (λ₀), and those ``search.dims`` lists (lr) (:func:`search_spaces.perturbed`)."""
    return {k: d.bounds() for k, d in perturbed_dims(spec.search.dims).items()}


def _initial(name: str, bounds: tuple[float, float]):
    return tune.loguniform(*bounds) if DIMENSIONS[name].log else tune.uniform(*bounds)


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


def _samples(spec: StudySpec) -> int:
    """The trials of a study's search stage: each configuration once per seed (a population: its size)."""
    return spec.trials if spec.scheduler in POPULATION else spec.trials * spec.seeds


def build_tuner(folder: StudyFolder, *, verbose: int = 1, prepared: data.Prepared | None = None) -> tune.Tuner:
    """The :class:`ray.tune.Tuner` of a study (Ray must already be initialised); ``prepared``:
    the user's data, as :func:`snn.data.prepare` returned it."""
    spec = folder.spec
    if spec.scheduler in POPULATION:
        return _population_tuner(folder, verbose=verbose, prepared=prepared)
    metric, mode = _objective(spec)
    single = isinstance(metric, str)
    if spec.scheduler == "asha":
        # early stopping on test_acc (a multi-objective study runs fifo: StudySpec); with a fidelity,
        # on the trials' cost, at the rungs where they raise T
        scheduler = ASHAScheduler(**asha_settings(spec))
    else:
        scheduler = FIFOScheduler()
    search = _searcher(spec)
    if spec.search.warm_start:  # earlier studies' finished trials, in Optuna before its first suggestion
        warm_start.record(folder, warm_start.add_trials(search, spec, folder.tracking_uri))
    tune_config = tune.TuneConfig(
        search_alg=search, scheduler=scheduler, num_samples=_samples(spec),
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
    tune_config = tune.TuneConfig(
        # Tune ignores max_concurrent_trials beside a BasicVariantGenerator: the generator takes the limit
        search_alg=BasicVariantGenerator(random_state=spec.seed, max_concurrent=spec.concurrency or 0),
        scheduler=scheduler, num_samples=_samples(spec), metric=TEST_ACC, mode="max", trial_dirname_creator=_trial_dirname,
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
        if full_budget(r, epochs):
            key = _key(dict(r.config))
            groups.setdefault(key, []).append(float(r.metrics[TEST_ACC]))
            # at the target T throughout: a fidelity is the search's economy, not the configuration's
            configs[key] = {k: None if k == "fidelity" else v for k, v in r.config.items() if k != "seed"}
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
    """Run (or resume) the confirm stage after the search; None when the spec has none.

    Raises:
        StudyInterrupted: Tune's run of the stage ended before its trials did.
    """
    if folder.spec.confirm is None:
        return None
    points = confirm_points(folder.spec, results)  # what the stage runs (a resumed one: ran)
    where = folder.tune_dir + "/" + stage_dir(CONFIRM)
    if tune.Tuner.can_restore(where):
        log.info("confirm stage: resuming it")
        tuner = tune.Tuner.restore(where, trainable=_trainable(folder.spec, prepared, CONFIRM), resume_unfinished=True,
                                   resume_errored=True)
    else:
        log.info("search stage finished; choosing the configurations to confirm")
        if not points:
            log.warning("confirm stage: no trial of the search trained its full budget; nothing to confirm")
            return None
        log.info("confirm stage: %d configuration(s) x %d new seeds", len(points) // folder.spec.confirm.seeds,
                 folder.spec.confirm.seeds)
        tuner = build_confirm_tuner(folder, points, verbose=verbose, prepared=prepared)
    confirmed = tuner.fit()
    check_finished(folder, confirmed, len(points), CONFIRM)
    return confirmed


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
            local Ray: :func:`study.startup.start_ray`).
        tracking_uri: Overrides the spec's MLflow tracking URI.
        verbose: Tune's progress verbosity (0 silent, 1 status tables, 2 every result).

    Raises:
        StudyError: The study exists already, the tracking server or the data is missing,
            or a trial asks for more than the cluster has.
        StudyInterrupted: Tune ended the study before its trials (on SIGINT): every finished
            epoch is kept, and :func:`resume_study` continues it.
    """
    uri = tracking_uri or spec.mlflow.tracking_uri
    paths = study_paths(spec)
    if paths["state"].exists():
        raise StudyError(f"study {spec.name!r} already exists in {paths['dir']}; resume it with "
                         f"'snn-study resume {paths['dir']}' or choose another name")
    check_server(uri)
    check_optuna(spec, new=True)
    warm_start.check(spec, uri)  # the earlier studies of search.warm_start are there, and share a dimension
    prepared = prepare_data(spec)
    own_ray = start_ray(spec, address)
    check_resources(spec)  # before MLflow's store or the study folder exist: a refused study leaves nothing
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
        check_finished(folder, results, _samples(spec))
        confirmed = _confirm(folder, results, verbose=verbose, prepared=prepared)
    return finish_study(folder, results, confirmed)


def resume_study(study: str | os.PathLike, *, address: str | None = None, verbose: int = 1) -> StudyResult:
    """Resume an interrupted study from its folder (or its name under ./studies).

    First writes into MLflow whatever the trial folders hold and MLflow lacks (what a
    driver that died missed); then finished trials are kept as they are, trials that were
    running continue from their last checkpoint, and errored trials are retried.

    Args:
        study: The study's folder, or its name under ./studies.
        address: Ray cluster address, as for :func:`run_study`.
        verbose: Tune's progress verbosity, as for :func:`run_study`.

    Raises:
        StudyError: No study there, or Tune saved nothing of it yet.
        StudyInterrupted: Tune ended the study again before its trials did.
    """
    folder = open_study(study)
    check_server(folder.tracking_uri)
    check_optuna(folder.spec, new=False)
    prepared = prepare_data(folder.spec)
    stopped, running = local_ray.stop(folder.path)
    if running:
        raise StudyError(f"{study}: the study's driver is still running; 'snn-study stop {study}' stops it")
    if stopped:
        log.warning("stopped %d process(es) of the local Ray that the study's previous driver left", stopped)
    if start_ray(folder.spec, address):
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
        check_finished(folder, results, _samples(folder.spec))
        confirmed = _confirm(folder, results, verbose=verbose, prepared=prepared)
    return finish_study(folder, results, confirmed)
