"""Every result of a trial as the study's driver hears it, stamped with the time it arrived: a
Tune callback of the benchmarks' own, which :func:`benchmarks._studies.snn_study_settings` names
in ``RAY_TUNE_CALLBACKS`` (Tune builds it in each run from that path), so that the sections that
run studies through ``study.tuner.run_study`` read the driver's side of each result without any
logger's files."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from ray.tune import Callback

PATH = f"{__name__}.DriverResults"  # what RAY_TUNE_CALLBACKS names
_KEPT = ("training_iteration", "epoch", "epoch_time")  # what the sections read of a result


class DriverResults(Callback):
    """Records ``time.time()`` and a few keys of each result in ``on_trial_result``, on the driver.

    Tune builds a new instance for every run; what they hear goes to one table of the class,
    ``heard`` (trial id -> (time, kept keys) in the order heard), which :meth:`clear` empties
    before a study and the section reads after it.
    """

    heard: ClassVar[dict[str, list[tuple[float, dict[str, Any]]]]] = {}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.heard.setdefault(trial.trial_id, []).append((time.time(), {k: result.get(k) for k in _KEPT}))

    @classmethod
    def clear(cls) -> None:
        cls.heard.clear()
