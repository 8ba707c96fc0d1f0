"""An earlier study's finished trials, read for a warm start (:mod:`study.warm_start`).

An entry of ``search.warm_start`` names a study folder (``studies/<name>``, or the name of one
under ./studies) or an MLflow experiment in the new study's tracking store. What is read:

* **A study folder: its Optuna storage** (the folder's SQLite file, or its ``search.storage``).
  It is the search's own record: the values Optuna was told (a replicated configuration's mean
  over its seeds), the parameters with their types, and a state decided as each trial ended
  (COMPLETE only for a full budget and a finite value; early-stopped trials are PRUNED,
  diverged ones FAIL). The rest of a trial's configuration is the folder's spec's. Where the
  new study needs a metric the old one did not optimise (``energy_uj`` for a multi-objective
  study after a single-objective one), the folder's MLflow runs are read instead, in the
  folder's own tracking store.
* **An MLflow experiment: its trial runs** (``kind=trial``, search stage), as the study folder
  may be on another machine and the parent run's spec names its storage relative to where it
  ran. MLflow is a projection written on a best-effort basis (``snn-study sync`` completes it
  after a driver died), and its params are text: a run counts only when FINISHED, not stopped
  early, with its last ``epoch`` at its ``epochs`` param and finite final metrics; replicates
  (the same params but the seed) are one configuration at their mean, as Optuna would have
  been told.

A population study (``scheduler: pbt`` or ``pb2``) has no trial to give: its trials' λ changed
while they trained.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from search_spaces import dims_of
from snn import registry
from snn.config import one_line
from snn.metrics import ENERGY, EPOCH, ran_full_budget
from study.folder import SEARCH, StudyError, StudyFolder, open_study
from study.params import config_of_params
from study.spec import POPULATION, StudySpec
from study.tracking import KIND, SPEC_ARTIFACT, check_tracking_uri, trial_runs_filter

__all__ = ["EarlierStudy", "EarlierTrial", "finite", "read"]


@dataclass(frozen=True)
class EarlierTrial:
    """A finished trial of an earlier study (a configuration, its replicates at their mean)."""

    key: str  # the trial, named where it was read: its Optuna trial number, or its MLflow runs
    config: dict[str, Any]  # every value it trained with: its study's constants, fixed values and drawn values
    stages: int  # its architecture's stages, by which a branch placement is spelled
    values: dict[str, float]  # its final metrics, by name


@dataclass
class EarlierStudy:
    """An earlier study, as one entry of ``search.warm_start`` names it."""

    entry: str  # as the spec gives it
    where: str  # what was read, in words
    searched: frozenset[str]  # the dimensions it drew
    trials: list[EarlierTrial] = field(default_factory=list)  # finished, with every metric the new study needs
    finished: int = 0  # its finished trials (configurations)
    unusable: Counter = field(default_factory=Counter)  # finished trials that cannot be used, by reason


def finite(v: Any) -> bool:
    """Whether ``v`` is a finite number (a bool is not)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _error(entry: str, message: str) -> StudyError:
    return StudyError(f"search.warm_start: {entry}: {message}", exit_code=2)


def _needed(spec: StudySpec) -> list[str]:
    """The final metrics an earlier trial must have: the new study's objectives, and its energy
    where it has an energy budget (Optuna's constraint)."""
    metrics = [m for m, _ in spec.objectives()]
    return metrics + ([ENERGY] if spec.energy.max_uj is not None and ENERGY not in metrics else [])


def _searched(preset: str, dims: list[str], fixed: dict[str, Any]) -> frozenset[str]:
    return frozenset(dims_of(preset, dims)) - set(fixed)


def read(entry: str, spec: StudySpec, tracking_uri: str) -> EarlierStudy:
    """The earlier study ``entry`` names, with its finished trials that have every final metric
    ``spec``'s study needs.

    Args:
        entry: A study folder, the name of one under ./studies, or an MLflow experiment's name.
        spec: The new study's spec.
        tracking_uri: The new study's tracking store, where an experiment is looked for.

    Raises:
        StudyError: One line (exit code 2): no such study folder or experiment, a population
            study, or records that cannot be read.
    """
    if not entry.strip():
        raise StudyError("search.warm_start: an empty entry; give a study folder or an MLflow experiment's name",
                         exit_code=2)
    path = Path(entry).expanduser()
    if path.is_dir() or (Path("studies") / entry).is_dir():
        where = path if path.is_dir() else entry
        try:
            folder = open_study(where)
        except StudyError as e:
            raise _error(entry, str(e).removeprefix(f"{where}: ")) from None
        return _from_folder(entry, folder, _needed(spec))
    places = [path.resolve()] + ([(Path("studies") / entry).resolve()] if len(path.parts) == 1 else [])
    missing = (f"neither a study folder (none at {' or '.join(map(str, places))}) nor an MLflow experiment in "
               f"{tracking_uri}")
    return _from_experiment(entry, tracking_uri, entry, _needed(spec), missing=missing)


def _from_folder(entry: str, folder: StudyFolder, needed: list[str]) -> EarlierStudy:
    old = folder.spec
    if old.scheduler in POPULATION:
        raise _error(entry, f"a {old.scheduler} study: its trials' λ changed while they trained, so none has one "
                            f"configuration to add")
    searched = _searched(old.search.preset, old.search.dims, old.search.fixed_values())
    metrics = [m for m, _ in old.objectives()]
    lacking = [m for m in needed if m not in metrics]
    if lacking:  # Optuna was told its objectives only: the runs have every metric
        return _from_experiment(entry, folder.tracking_uri, old.experiment, needed, study=old.name, searched=searched,
                                missing=f"its MLflow experiment {old.experiment} is not in {folder.tracking_uri}",
                                where=f"study folder {folder.path} (its MLflow runs: its Optuna storage holds "
                                      f"{', '.join(metrics)}, not {', '.join(lacking)})")
    try:
        study = folder.optuna_study()
        constants = old.train_constants()
    except FileNotFoundError:
        raise _error(entry, f"no Optuna storage at {folder.optuna_shown}: its search has not started") from None
    except KeyError:
        raise _error(entry, f"the Optuna storage {folder.optuna_shown} holds no study {old.name!r}") from None
    except Exception as e:  # a damaged file, a server that does not answer: the library's own words
        raise _error(entry, f"its Optuna storage {folder.optuna_shown} cannot be read ({type(e).__name__}: "
                            f"{one_line(e)})") from None
    source = EarlierStudy(entry, f"study folder {folder.path} (its Optuna storage)", searched)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.values is None or len(t.values) != len(metrics) or not all(map(finite, t.values)):
            continue
        source.finished += 1
        source.trials.append(EarlierTrial(f"{folder.path} trial {t.number}", {**constants, **t.params}, old.stages,
                                          dict(zip(metrics, t.values))))
    return source


def _client(entry: str, uri: str, missing: str) -> MlflowClient:
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise _error(entry, f"{missing} (no MLflow store there)")  # MLflow would create one
    try:
        check_tracking_uri(uri)
    except ConnectionError as e:
        raise _error(entry, str(e)) from None
    return MlflowClient(uri)


def _all_runs(client: MlflowClient, experiment_id: str, filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        runs += page
        token = page.token
        if not token:
            return runs


def _specs(client: MlflowClient, experiment_id: str) -> dict[str, dict[str, Any]]:
    """The spec of each study in an experiment, by study name, as its parent run holds it (plain data)."""
    out = {}
    for run in _all_runs(client, experiment_id, f"tags.{KIND} = 'study'"):
        try:
            with tempfile.TemporaryDirectory() as tmp:
                spec = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, SPEC_ARTIFACT, tmp)).read_text())
        except (MlflowException, OSError, yaml.YAMLError):
            continue
        if isinstance(spec, dict) and isinstance(spec.get("search"), dict):
            out[run.data.tags.get("study", spec.get("name"))] = spec
    return out


def _full_budget(run) -> bool:
    """Whether an MLflow trial run of the search trained its full budget and ended well."""
    tags = run.data.tags
    if run.info.status != "FINISHED" or tags.get("stopped_early") == "true" or tags.get("stopped") \
            or tags.get("diverged") == "true" or tags.get("stage", SEARCH) != SEARCH:
        return False
    try:
        return ran_full_budget(run.data.metrics.get(EPOCH), float(run.data.params["epochs"]))
    except (KeyError, ValueError):
        return False


def _stages(config: dict[str, Any]) -> int | None:
    try:
        return registry.num_stages(config["arch"], **(config.get("arch_kwargs") or {}))
    except (KeyError, TypeError, ValueError):
        return None


def _from_experiment(entry: str, uri: str, experiment: str, needed: list[str], *, missing: str,
                     study: str | None = None, searched: frozenset[str] | None = None,
                     where: str | None = None) -> EarlierStudy:
    """An experiment's finished trial runs (of ``study`` only, where given); ``searched``: what
    the study drew (None: read from the specs on the experiment's parent runs)."""
    client = _client(entry, uri, missing)
    try:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise _error(entry, missing)
        specs = {} if searched is not None else _specs(client, exp.experiment_id)
        runs = _all_runs(client, exp.experiment_id, trial_runs_filter(study))
    except MlflowException as e:
        raise _error(entry, f"MLflow at {uri} cannot be read ({one_line(e.message)})") from None
    if searched is None:
        if not specs:
            raise _error(entry, f"the MLflow experiment {experiment} holds no snn-study study (no run tagged "
                                f"{KIND}=study with its {SPEC_ARTIFACT})")
        population = {name for name, s in specs.items() if s.get("scheduler") in POPULATION}
        searched = frozenset().union(*(_searched(s["search"].get("preset", "quick"), s["search"].get("dims") or [],
                                                 s["search"].get("fixed") or {})
                                       for name, s in specs.items() if name not in population))
        runs = [r for r in runs if r.data.tags.get("study") not in population]
    source = EarlierStudy(entry, where or f"MLflow experiment {experiment} in {uri} (its trial runs)", searched)
    groups: dict[str, list] = {}  # a configuration (its study, its params but the seed) -> its replicates
    for r in filter(_full_budget, runs):
        params = {k: v for k, v in r.data.params.items() if k != "seed"}
        groups.setdefault(json.dumps([r.data.tags.get("study"), params], sort_keys=True), []).append(r)
    for replicates in groups.values():
        source.finished += 1
        lacking = [m for m in needed if not all(finite(r.data.metrics.get(m)) for r in replicates)]
        config = config_of_params(replicates[0].data.params)
        stages = _stages(config)
        if lacking or stages is None:
            source.unusable[f"no final {lacking[0]}" if lacking else "an architecture this version lacks"] += 1
            continue
        values = {m: sum(r.data.metrics[m] for r in replicates) / len(replicates) for m in needed}
        ids = ",".join(sorted(r.info.run_id for r in replicates))
        source.trials.append(EarlierTrial(f"MLflow run(s) {ids}", config, stages, values))
    return source
