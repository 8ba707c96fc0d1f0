"""Ray's OptunaSearch, with one addition: a diverged trial is a FAIL in Optuna."""

from __future__ import annotations

from ray.tune.search.optuna import OptunaSearch

from snn.training import DIVERGED


class StudyOptunaSearch(OptunaSearch):
    """OptunaSearch that records a diverged trial (NaN loss) as FAIL in the Optuna storage.

    A diverged trial ends with a report whose ``diverged`` is 1 and whose ``test_acc`` is
    NaN; OptunaSearch would try to tell Optuna a NaN value, which Optuna refuses, leaving
    the trial RUNNING in the storage. It is told as failed instead.
    """

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and result.get(DIVERGED):
            result, error = None, True
        super().on_trial_complete(trial_id, result, error)
