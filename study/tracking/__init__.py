"""MLflow records of a study: a projection of Tune's trial folders.

Each trial's folder is the study's durable record (:mod:`study.tracking._folders`). MLflow
shows that record:

* a parent run for the study (``_parent``), one nested run per trial (``_projection``), its
  inference model as a logged model and the study's best one in the Model Registry, each read
  back for export (``_models``), and the paper's Tables 1-4 as runs tagged ``kind=baseline``
  with the same ``test_acc`` metric (``_baselines``); a multi-objective study's Pareto front,
  tagged on its trial runs and logged on the parent run (``_pareto``);
* written live by :class:`StudyTracker`, a Tune callback on the driver (``_tracker``), on a
  best-effort basis through MLflow's own client and its retries (``_environment``), after
  asking the server whether it answers (``_health``);
* and completed by :func:`sync_study` (``_sync``), which writes whatever MLflow lacks and
  nothing twice;
* read back (``_runs``): the filter that selects a study's trial runs, a metric's newest value
  per epoch, and what re-running a trial needs (``snn-study train --run-id``).

The names below load their module on first use, so that ``snn-study`` reads
:data:`MLFLOW_ENVIRONMENT` at its start without importing MLflow, Ray and torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOMES = {  # private module -> the public names it holds
    "_baselines": ("BASELINE_ARTIFACT", "log_baselines"),
    "_environment": ("MLFLOW_ENVIRONMENT",),
    "_folders": ("TrialRecord", "read_trial", "trial_ended"),
    "_health": ("check_tracking_uri", "reachable"),
    "_models": ("BEST_ALIAS", "MODEL_NAME", "ModelNotFound", "RegisteredModel", "StoredModel", "inference_model",
                "log_inference_model", "read_inference_model", "register_best_model"),
    "_parent": ("BEST_CONFIG_ARTIFACT", "BEST_RUN_TAG", "SPEC_ARTIFACT", "finish_parent_run", "start_parent_run"),
    "_pareto": ("PARETO_ARTIFACT", "PARETO_SIZE_TAG", "PARETO_TAG", "log_pareto_set", "tag_pareto_front"),
    "_projection": ("OPTUNA_TRIAL_TAG",),
    "_runs": ("KIND", "RunNotFound", "TrialRun", "metric_per_epoch", "newest_per_epoch", "read_trial_run",
              "trial_runs_filter"),
    "_sync": ("SyncSummary", "sync_study"),
    "_tracker": ("StudyTracker",),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = sorted(_HOME_OF)


def __getattr__(name: str) -> Any:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # loaded once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:
    from study.tracking._baselines import BASELINE_ARTIFACT, log_baselines
    from study.tracking._environment import MLFLOW_ENVIRONMENT
    from study.tracking._folders import TrialRecord, read_trial, trial_ended
    from study.tracking._health import check_tracking_uri, reachable
    from study.tracking._models import (BEST_ALIAS, MODEL_NAME, ModelNotFound, RegisteredModel, StoredModel,
                                        inference_model, log_inference_model, read_inference_model,
                                        register_best_model)
    from study.tracking._parent import BEST_CONFIG_ARTIFACT, BEST_RUN_TAG, SPEC_ARTIFACT, finish_parent_run, start_parent_run
    from study.tracking._pareto import (PARETO_ARTIFACT, PARETO_SIZE_TAG, PARETO_TAG, log_pareto_set,
                                        tag_pareto_front)
    from study.tracking._projection import OPTUNA_TRIAL_TAG
    from study.tracking._runs import (KIND, RunNotFound, TrialRun, metric_per_epoch, newest_per_epoch, read_trial_run,
                                      trial_runs_filter)
    from study.tracking._sync import SyncSummary, sync_study
    from study.tracking._tracker import StudyTracker
