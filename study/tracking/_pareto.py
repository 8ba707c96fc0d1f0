"""A multi-objective study's Pareto front in MLflow: its trial runs tagged, the set on the parent run.

The front itself is :mod:`study.pareto`'s; this module writes what it is told, so that
recording it again (``snn-study report``, a resumed study's end) leaves MLflow as one
recording would: each run on the front carries ``pareto=true`` once, a run of an earlier
front that is no longer on it loses the tag, and the parent run's artifact and tag are
replaced.
"""

from __future__ import annotations

from collections.abc import Collection

from mlflow import MlflowClient

from study.tracking._runs import trial_runs_filter

__all__ = ["PARETO_ARTIFACT", "PARETO_SIZE_TAG", "PARETO_TAG", "log_pareto_set", "tag_pareto_front"]

PARETO_TAG = "pareto"  # on a trial run of the front: "true" (other runs do not carry it)
PARETO_SIZE_TAG = "pareto_size"  # on the parent run: the number of trials on the front
PARETO_ARTIFACT = "pareto.json"  # on the parent run: the front, one record per trial


def tag_pareto_front(tracking_uri: str, parent_run_id: str, study: str,
                     trial_ids: Collection[str]) -> dict[str, str]:
    """Tag the study's trial runs of ``trial_ids`` :data:`PARETO_TAG` ``=true``, and no other
    run of the study; return the tagged runs' ids by trial id.

    Raises:
        Exception: Whatever the tracking store raised (it is down, or the run is gone).
    """
    c = MlflowClient(tracking_uri)
    experiment = c.get_run(parent_run_id).info.experiment_id
    on = set(trial_ids)
    tagged = {}
    for r in c.search_runs([experiment], filter_string=trial_runs_filter(study), max_results=10000):
        run_id, tags = r.info.run_id, r.data.tags
        if tags.get("trial_id") in on:
            tagged[tags["trial_id"]] = run_id
            if tags.get(PARETO_TAG) != "true":
                c.set_tag(run_id, PARETO_TAG, "true")
        elif PARETO_TAG in tags:  # on the front an earlier recording saw, not on this one
            c.delete_tag(run_id, PARETO_TAG)
    return tagged


def log_pareto_set(tracking_uri: str, parent_run_id: str, text: str, size: int) -> None:
    """Log the front on the study's parent run: ``text`` as :data:`PARETO_ARTIFACT` (replacing
    an earlier one) and ``size`` as the tag :data:`PARETO_SIZE_TAG`.

    Raises:
        Exception: Whatever the tracking store raised.
    """
    c = MlflowClient(tracking_uri)
    c.log_text(parent_run_id, text, PARETO_ARTIFACT)
    c.set_tag(parent_run_id, PARETO_SIZE_TAG, str(size))
