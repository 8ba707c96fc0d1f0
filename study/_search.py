"""Ray's OptunaSearch, with two additions: a diverged trial is a FAIL in Optuna, and a
trial that Optuna already recorded as finished is left alone after a driver restart."""

from __future__ import annotations

import optuna
from ray.tune.search.optuna import OptunaSearch

from snn.metrics import DIVERGED


class StudyOptunaSearch(OptunaSearch):
    """OptunaSearch that records a diverged trial (NaN loss) as FAIL in the Optuna storage.

    A diverged trial ends with a report whose ``diverged`` is 1 and whose ``test_acc`` is
    NaN; OptunaSearch would try to tell Optuna a NaN value, which Optuna refuses, leaving
    the trial RUNNING in the storage. It is told as failed instead.
    """

    def on_trial_result(self, trial_id: str, result: dict) -> None:
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
        if result and result.get(DIVERGED):
            result, error = None, True
        # Private (no public accessor): OptunaSearch's trials by Tune trial id. A trial Optuna
        # recorded as finished before the driver died is finished again by a resumed Tune,
        # whose saved state was behind: nothing to tell, and Optuna would refuse it with a warning.
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and self._ot_study.get_trials(deepcopy=False)[ot_trial.number].state.is_finished():
            self._ot_trials.pop(trial_id, None)
            return
        super().on_trial_complete(trial_id, result, error)
