"""Warm starts (``search.warm_start``): earlier studies' finished trials, added to a new study's
Optuna search before its first suggestion.

Each entry names an earlier study: its folder or an MLflow experiment, whose finished trials
(a full budget, a finite final value of each of the new study's objectives) are read by
:mod:`study._earlier_studies` (which says from where, and why there). Those that fit the new
space become COMPLETE trials of the new Optuna study, with their values (:func:`add_trials`;
:func:`check` first says whether each entry can be read), so TPE models them instead of
drawing at random (TPE draws at random until a study holds 10 complete or pruned trials,
Optuna's ``n_startup_trials``).

What fits: the new space is run on a stand-in trial that answers each suggestion with the
earlier trial's value (its drawn value, else its study's constant: the default), so a
conditional dimension is asked only where the new space would ask it. A value outside the new
range or choices, a dimension without a value, or a dimension the new spec fixes
(``search.fixed``) at another value skips the trial, counted by reason. A branch placement is
compared by the stages it names on each study's architecture.

Recorded: each added trial carries the user attribute :data:`WARM_START` naming the earlier
trial, so nothing is added twice (a source named twice, a searcher built again); the parent
MLflow run gets (:func:`record`) the params :data:`TRIALS_PARAM` (the trials the Optuna study
holds from earlier studies) and :data:`FROM_PARAM` (from where, and what was skipped), which
the report puts in a sentence (:func:`report_lines`).

Ray's ``OptunaSearch(points_to_evaluate=..., evaluated_rewards=...)`` is not used: Ray 2.60
refuses it with a define-by-run space (``TypeError``), and it takes one value per point, so no
multi-objective study. Optuna's ``Study.add_trials`` takes the distributions the space draws from.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import optuna
from mlflow import MlflowClient
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from search_spaces import DIMENSIONS, Dimension, SearchSpace, build_space, spelled
from snn.config import meaningful, one_line
from snn.metrics import ENERGY
from study._earlier_studies import EarlierStudy, EarlierTrial, finite, read
from study._search import CONSTRAINT, ENERGY_CONSTRAINT, SeededRepeater, StudyOptunaSearch
from study.folder import StudyError, StudyFolder
from study.spec import StudySpec

__all__ = ["FROM_PARAM", "TRIALS_PARAM", "WARM_START", "WarmStart", "add_trials", "check", "plan_lines", "record",
           "report_lines"]

log = logging.getLogger(__name__)

WARM_START = "warm_start"  # user attribute of an Optuna trial a warm start added: the earlier trial it copies
TRIALS_PARAM = "warm_start_trials"  # param of the parent run: the trials the Optuna study holds from earlier studies
FROM_PARAM = "warm_start_from"  # param of the parent run: from where, and what was skipped and why
_PARAM_CHARS = 6000  # MLflow's longest param value


@dataclass(frozen=True)
class WarmStart:
    """What a warm start added: ``trials``, the earlier trials the Optuna study holds; ``lines``,
    one per source (where, how many of its finished trials, what was skipped and why)."""

    trials: int
    lines: tuple[str, ...]


def _space(spec: StudySpec) -> SearchSpace:
    """The new study's define-by-run space, as its searcher draws from it (study.tuner)."""
    return build_space(spec.search.preset, stages=spec.stages, extra=spec.search.dims,
                       fixed=spec.search.fixed_values(), constants=spec.train_constants(), seed=spec.seed)


def check(spec: StudySpec, tracking_uri: str) -> list[EarlierStudy]:
    """Open every earlier study ``spec``'s ``search.warm_start`` names, and read its finished trials.

    Args:
        spec: The new study's spec.
        tracking_uri: The new study's MLflow tracking store, where an entry that is no study
            folder names an experiment.

    Raises:
        StudyError: One line (exit code 2): an entry is neither a study folder nor an
            experiment there, its records cannot be read, or it searched no dimension the
            new study searches.
    """
    dims = _space(spec).dims
    sources = [read(entry, spec, tracking_uri) for entry in spec.search.warm_start]
    for s in sources:
        if not s.searched & set(dims):
            raise StudyError(f"search.warm_start: {s.entry}: it searched {', '.join(sorted(s.searched)) or 'nothing'}, "
                             f"this study searches {', '.join(dims) or 'nothing'}: no dimension in common, so none "
                             f"of its trials can inform this search", exit_code=2)
    return sources


# -- fitting an earlier trial into the new space ---------------------------------------------------
class _Misfit(Exception):
    """An earlier trial the new space cannot take; the message is the reason, as it is counted."""


_NONE = object()  # no choice matches


def _choice(dim: Dimension, value: Any, old_stages: int, new_stages: int, choices) -> Any:
    """The one of ``choices`` that is the earlier trial's ``value``, or :data:`_NONE`."""
    if callable(dim.choices):  # choices that depend on the architecture (branch placements): the stages they name
        try:
            want = spelled(str(value) if isinstance(value, int) else value, old_stages)
            return next((c for c in choices if spelled(c, new_stages) == want), _NONE)
        except (TypeError, ValueError):
            return _NONE
    return next((c for c in choices if c == value or str(c) == str(value)), _NONE)


class _Replay:
    """Stands in for an Optuna trial: answers the new space's suggestions with an earlier trial's
    values, records each one's distribution, and raises :class:`_Misfit` at the first value the
    space cannot take."""

    number = 0  # read only by the paper and ablation presets, which take no warm start (StudySpec)

    def __init__(self, trial: EarlierTrial, stages: int) -> None:
        self.trial, self.stages = trial, stages
        self.params: dict[str, Any] = {}
        self.distributions: dict[str, optuna.distributions.BaseDistribution] = {}

    def _value(self, name: str) -> Any:
        value = DIMENSIONS[name].value(self.trial.config)
        if value is None:
            raise _Misfit(f"{name} without a value")
        return value

    def _keep(self, name: str, value: Any, distribution) -> Any:
        self.params[name], self.distributions[name] = value, distribution
        return value

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        return self._number(name, FloatDistribution(low, high, log=log), float)

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int:
        return self._number(name, IntDistribution(low, high, log=log), int)

    def _number(self, name: str, distribution, kind: type) -> Any:
        raw = self._value(name)
        try:
            value = kind(float(raw))
            fits = float(raw) == value and distribution.low <= value <= distribution.high
        except (TypeError, ValueError):
            fits = False
        if not fits:
            raise _Misfit(f"{name} outside this study's range")
        return self._keep(name, value, distribution)

    def suggest_categorical(self, name: str, choices) -> Any:
        distribution = CategoricalDistribution(choices)
        choice = _choice(DIMENSIONS[name], self._value(name), self.trial.stages, self.stages, distribution.choices)
        if choice is _NONE:
            raise _Misfit(f"{name} outside this study's choices")
        return self._keep(name, choice, distribution)


def _fit(space: SearchSpace, trial: EarlierTrial) -> _Replay | str:
    """The earlier trial in the new space (its params and distributions), or why it does not fit."""
    kept = meaningful(trial.config)  # a fixed λ₀ means nothing to a trial without shortcut heads
    for name, fixed in space.fixed.items():
        dim = DIMENSIONS.get(name)
        if dim is None or name not in kept:
            continue
        value = dim.value(kept)
        same = (_choice(dim, value, trial.stages, space.stages, [fixed]) is not _NONE if dim.kind == "categorical"
                else finite(value) and math.isclose(float(value), float(fixed)))
        if not same:
            return f"{name} not this study's fixed value"
    replay = _Replay(trial, space.stages)
    try:
        space(replay)  # type: ignore[arg-type]
    except _Misfit as e:
        return str(e)
    return replay


def _tally(space: SearchSpace, source: EarlierStudy) -> tuple[list[tuple[EarlierTrial, _Replay]], Counter]:
    """The source's trials that fit the new space, and the others counted by reason."""
    fits, skipped = [], Counter(source.unusable)
    for trial in source.trials:
        fit = _fit(space, trial)
        if isinstance(fit, str):
            skipped[fit] += 1
        else:
            fits.append((trial, fit))
    return fits, skipped


def _summary(source: EarlierStudy, added: int, skipped: Counter) -> str:
    why = "; ".join(f"{reason}: {n}" for reason, n in skipped.most_common())
    return (f"{added} of the {source.finished} finished trial(s) of {source.where}"
            + (f", {sum(skipped.values())} skipped ({why})" if skipped else ""))


# -- adding them, and saying so --------------------------------------------------------------------
def add_trials(searcher: StudyOptunaSearch | SeededRepeater, spec: StudySpec, tracking_uri: str) -> WarmStart:
    """Add the finished trials of the earlier studies that ``spec`` names (``search.warm_start``)
    to the searcher's Optuna study, before its first suggestion; an earlier trial the study
    already holds (:data:`WARM_START`) is not added again.

    Raises:
        StudyError: As :func:`check`.
    """
    inner = searcher.searcher if isinstance(searcher, SeededRepeater) else searcher
    # Private (no public accessor): OptunaSearch's Optuna study (docs/decisions.md, "Private APIs")
    study = inner._ot_study
    held = {t.user_attrs.get(WARM_START) for t in study.get_trials(deepcopy=False)}
    space, objectives = _space(spec), [m for m, _ in spec.objectives()]
    new, lines = [], []
    for source in check(spec, tracking_uri):
        fits, skipped = _tally(space, source)
        for trial, replay in fits:
            if trial.key in held:
                continue
            held.add(trial.key)
            constraints = {CONSTRAINT: 0.0}  # a full-budget trial: the firing-rate guard did not stop it
            if spec.energy.max_uj is not None:
                constraints[ENERGY_CONSTRAINT] = trial.values[ENERGY] - spec.energy.max_uj
            new.append(optuna.trial.create_trial(
                params=replay.params, distributions=replay.distributions, values=[trial.values[m] for m in objectives],
                user_attrs={WARM_START: trial.key}, constraints=constraints))
        lines.append(_summary(source, len(fits), skipped))
        log.info("warm start: %s", lines[-1])
    study.add_trials(new)
    return WarmStart(sum(WARM_START in t.user_attrs for t in study.get_trials(deepcopy=False)), tuple(lines))


def record(folder: StudyFolder, warm: WarmStart) -> None:
    """Log a warm start on the study's parent MLflow run: :data:`TRIALS_PARAM` and :data:`FROM_PARAM`
    (a warning where the store refuses: the Optuna study holds the trials all the same)."""
    try:
        MlflowClient(folder.tracking_uri).log_batch(folder.parent_run_id, params=[
            Param(TRIALS_PARAM, str(warm.trials)), Param(FROM_PARAM, "; ".join(warm.lines)[:_PARAM_CHARS])])
    except Exception as e:  # the store is down or refuses the run
        log.warning("warm start: the parent run %s did not take %s (%s: %s)", folder.parent_run_id, TRIALS_PARAM,
                    type(e).__name__, one_line(e))


def plan_lines(spec: StudySpec, tracking_uri: str) -> list[str]:
    """What a warm start of ``spec`` would add, as lines for ``snn-study check``; nothing without one."""
    if not spec.search.warm_start:
        return []
    try:
        sources = check(spec, tracking_uri)
    except StudyError as e:
        return [f"warm start: {e}"]
    space = _space(spec)
    out = ["warm start (added to Optuna as COMPLETE trials before its first suggestion):"]
    for source in sources:
        fits, skipped = _tally(space, source)
        out.append(f"  {source.entry}: {_summary(source, len(fits), skipped)}")
    return out


def report_lines(client: MlflowClient, folder: StudyFolder) -> list[str]:
    """The report's sentence on the study's warm start, from its parent run; nothing without one."""
    try:
        params = client.get_run(folder.parent_run_id).data.params
    except MlflowException:
        return []
    if TRIALS_PARAM not in params:
        return []
    return ["", f"Optuna's search started from {params[TRIALS_PARAM]} trial(s) of earlier studies "
                f"(`search.warm_start`): {params.get(FROM_PARAM, '')}. They are COMPLETE trials of this study's "
                f"Optuna study, which its sampler, importances and plots read beside its own; the tables and "
                f"comparisons here are this study's runs only."]
