"""Ray's OptunaSearch, with three additions: a diverged trial is a FAIL in Optuna, a trial
the scheduler stopped before its full budget is PRUNED, and a trial that Optuna already
recorded as finished is left alone after a driver restart. And Ray's Repeater, giving each
replicate of a configuration its seed."""

from __future__ import annotations

import math
import os
import pickle
import warnings
from typing import Any

import optuna
from ray.tune.search import Repeater, Searcher
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

from snn.metrics import DIVERGED, ENERGY, EPOCH, STOPPED, STOPPED_STAGE, ran_full_budget


class StudyOptunaSearch(OptunaSearch):
    """OptunaSearch that records a diverged trial (NaN loss) as FAIL and an early-stopped one
    as PRUNED in the Optuna storage.

    A diverged trial ends with a report whose ``diverged`` is 1 and whose ``test_acc`` is
    NaN; OptunaSearch would try to tell Optuna a NaN value, which Optuna refuses, leaving
    the trial RUNNING in the storage. It is told as failed instead.

    A trial the scheduler (ASHA) stopped before ``epochs`` ends as PRUNED, its per-epoch
    values reported as intermediate values (OptunaSearch reports every result), so Optuna's
    samplers and importance evaluators treat it as the partial run it is, not as a final
    value to rank against full runs.

    Every trial also carries Optuna's constraints (:data:`CONSTRAINT`: its network stopped
    silent or saturated; :data:`ENERGY_CONSTRAINT`: its energy over the study's budget), which
    Optuna's samplers read to steer later suggestions into the feasible region, and the study
    names its objectives (``set_metric_names``), so Optuna's dashboard and plots label their
    axes test_acc or energy_uj, not "Objective 0".

    Args:
        epochs: The full budget of a trial, in epochs.
        max_energy_uj: The study's energy budget per inference (``energy.max_uj``): a trial
            whose final ``energy_uj`` is over it is infeasible. None: no budget.
        **kwargs: OptunaSearch's.
    """

    def __init__(self, *args: Any, epochs: int | None = None, max_energy_uj: float | None = None,
                 **kwargs: Any) -> None:
        self.max_energy_uj = max_energy_uj
        super().__init__(*args, **kwargs)
        self.epochs = epochs

    def _setup_study(self, mode: str | list) -> None:
        super()._setup_study(mode)
        names = list(self.metric) if isinstance(self.metric, list) else [self.metric]
        # Private (no public accessor): OptunaSearch's Optuna study. set_metric_names is marked
        # experimental since Optuna 3.2; its warning says nothing a study's user can act on.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if self._ot_study.metric_names != names:
                self._ot_study.set_metric_names(names)
        self._reported: dict[str, set] = {}  # trial id -> the steps told to Optuna as intermediate values

    def suggest(self, trial_id: str) -> dict | None:
        """OptunaSearch's suggestion; the Optuna trial names the Tune trial that runs it
        (user attribute :data:`TUNE_TRIAL_IDS`), so Optuna's view links to Tune and MLflow."""
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            self.link(trial_id, [trial_id])
        return config

    def link(self, trial_id: str, tune_trial_ids: list[str]) -> None:
        """Record on the Optuna trial of Tune trial ``trial_id`` the Tune trials that ran its
        configuration (a configuration replicated over seeds runs in several)."""
        # Private (no public accessor): OptunaSearch's Optuna trials by Tune trial id
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and not self._finished(ot_trial):
            ot_trial.set_user_attr(TUNE_TRIAL_IDS, list(tune_trial_ids))

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if result.get(STOPPED) or result.get(DIVERGED):  # the last report of a stopped or diverged trial: no value
            return
        step = result.get(TRAINING_ITERATION)
        if step in self._reported.get(trial_id, ()):
            # A retried trial counts Tune's iterations again from Tune's checkpoint of it, which
            # can lag its newest: Optuna keeps a step's first value and would warn on the console
            return
        self._reported.setdefault(trial_id, set()).add(step)
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            # The trial finished just before the driver died, after Tune's last snapshot of the
            # experiment; a resumed Tune hears its last epochs again.
            pass

    def restore(self, checkpoint_path: str) -> None:
        """Restore as OptunaSearch does, then fail the Optuna trials Tune never heard of.

        A driver killed between asking Optuna for a trial and Tune's next snapshot leaves
        that trial RUNNING in the storage; Tune suggests a new one in its place, so the old
        one is marked FAIL (with the reason as a user attribute) rather than left hanging.
        """
        super().restore(checkpoint_path)
        # Private, no public accessor: OptunaSearch keeps its Optuna study and its trials by Tune
        # trial id in _ot_study and _ot_trials.
        study = self._ot_study
        known = {t.number for t in self._ot_trials.values()}
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t.number not in known:
                # Private: Optuna sets a user attribute only through a Trial object or the
                # storage by internal trial id; no public call takes a trial handed out by
                # another process.
                study._storage.set_trial_user_attr(t._trial_id, "fail_reason",
                                                   "the driver stopped before the trial started; re-suggested on "
                                                   "resume")
                study.tell(t.number, state=optuna.trial.TrialState.FAIL)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        stopped = (result or {}).get(STOPPED)
        if ot_trial is not None and not self._finished(ot_trial):
            # Optuna's constraint (> 0: infeasible), which its samplers (TPE, NSGA-II) read to steer
            # later suggestions away from silent and saturated regions
            ot_trial.set_constraint(CONSTRAINT, 1.0 if stopped else 0.0)
            energy = (result or {}).get(ENERGY)
            if self.max_energy_uj is not None and energy is not None and not _nan(energy):
                ot_trial.set_constraint(ENERGY_CONSTRAINT, float(energy) - self.max_energy_uj)  # > 0: over budget
            if stopped:
                ot_trial.set_user_attr(STOPPED, f"{stopped} ({result.get(STOPPED_STAGE)})")
        if stopped:
            result = None  # the firing-rate guard stopped it: PRUNED, at its last intermediate value
        elif result and result.get(DIVERGED):
            result, error = None, True
        elif result and not error and self.epochs and not ran_full_budget(result.get(EPOCH, self.epochs), self.epochs):
            # Stopped early: PRUNED, at its last intermediate value. Tune hands the result that made
            # the scheduler stop it to on_trial_complete only, so it is reported here first.
            step = result.get(TRAINING_ITERATION)
            if step is not None and step not in self._reported.get(trial_id, ()):
                super().on_trial_result(trial_id, result)
            result = None
        elif result and not isinstance(self.metric, list) and _nan(result.get(self.metric)):
            result, error = None, True  # every replicate of a configuration diverged (Repeater's mean)
        # Private (no public accessor): OptunaSearch's trials by Tune trial id. A trial Optuna
        # recorded as finished before the driver died is finished again by a resumed Tune,
        # whose saved state was behind: nothing to tell, and Optuna would refuse it with a warning.
        if ot_trial is not None and self._finished(ot_trial):
            self._ot_trials.pop(trial_id, None)
            return
        super().on_trial_complete(trial_id, result, error)

    def _finished(self, ot_trial) -> bool:
        return self._ot_study.get_trials(deepcopy=False)[ot_trial.number].state.is_finished()


TUNE_TRIAL_IDS = "tune_trial_ids"  # an Optuna trial's user attribute: the Tune trials that ran its configuration
MLFLOW_RUN_IDS = "mlflow_run_ids"  # an Optuna trial's user attribute: their MLflow runs (set by study.tracking)
CONSTRAINT = "firing"  # an Optuna constraint of every trial: 1 for a silent or saturated network, else 0
ENERGY_CONSTRAINT = "energy"  # with an energy budget: the trial's energy_uj minus energy.max_uj (> 0: over it)


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


class SeededRepeater(Repeater):
    """Ray's Repeater: each configuration the searcher suggests runs ``repeat`` times, the
    searcher told the mean; replicate k gets seed ``seed + k``, the same k for every
    configuration, so replicates pair across configurations (same initialisation and data
    order, as far as the architecture allows).

    Args:
        searcher: The searcher whose suggestions are repeated.
        repeat: Replicates per configuration.
        seed: The study's seed: replicate k trains with ``seed + k``.
    """

    def __init__(self, searcher: OptunaSearch, repeat: int, seed: int = 0) -> None:
        super().__init__(searcher, repeat=repeat, set_index=False)
        self.seed = seed
        self._stopped: dict[str, list[str]] = {}  # a group's primary trial id -> its replicates the guard stopped

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            # Private (no public accessor): Repeater's group of this trial, which it was just added to
            group = self._trial_id_to_group[trial_id]
            config["seed"] = self.seed + group.count() - 1
            if trial_id != group.primary_trial_id and isinstance(self.searcher, StudyOptunaSearch):
                self.searcher.link(group.primary_trial_id, list(group._trials))  # private too: the group's trials
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, **kwargs: Any) -> None:
        """As Repeater's, and a configuration whose every replicate the firing-rate guard stopped
        reaches the searcher as stopped (PRUNED and infeasible), not as a NaN mean."""
        group = self._trial_id_to_group.get(trial_id)
        if group is None:  # a trial of a group from before a restore it lacks
            return
        if result and result.get(STOPPED):
            self._stopped.setdefault(group.primary_trial_id, []).append(trial_id)
        if len(self._stopped.get(group.primary_trial_id, ())) == group.max_trials:  # every replicate stopped
            group.report(trial_id, math.nan)
            self.searcher.on_trial_complete(group.primary_trial_id, result=dict(result), **kwargs)
            return
        super().on_trial_complete(trial_id, result, **kwargs)

    # Repeater saves only the searcher it wraps: its groups go into the same file (Tune renames
    # that one file into place), so a resumed study knows which replicates each configuration lacks.
    def save(self, checkpoint_path: str) -> None:
        inner = checkpoint_path + ".searcher"
        self.searcher.save(inner)
        try:
            with open(inner, "rb") as f:
                searcher = f.read()
        finally:
            os.unlink(inner)
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"searcher": searcher, "groups": self.get_state()}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        inner = checkpoint_path + ".searcher"
        with open(inner, "wb") as f:
            f.write(state["searcher"])
        try:
            self.searcher.restore(inner)
        finally:
            os.unlink(inner)
        self.set_state(state["groups"])


class Points(Searcher):
    """Tune's searcher interface over a fixed list of trial configs, each run once, as given
    (the confirm stage). BasicVariantGenerator's ``points_to_evaluate`` only fills in keys
    of a ``param_space``, and the configurations here differ in their keys (a vanilla one has
    no λ₀).

    Args:
        points: The trial configs, in the order they run.
        metric, mode: What the trials are ranked by.
    """

    def __init__(self, points: list[dict[str, Any]], metric: str, mode: str) -> None:
        super().__init__(metric=metric, mode=mode)
        self.points = [dict(p) for p in points]
        self.given: dict[str, int] = {}  # trial id -> index of its point

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id in self.given:
            return dict(self.points[self.given[trial_id]])
        if len(self.given) >= len(self.points):
            return Searcher.FINISHED
        self.given[trial_id] = len(self.given)
        return dict(self.points[self.given[trial_id]])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"points": self.points, "given": self.given}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.points, self.given = state["points"], state["given"]
