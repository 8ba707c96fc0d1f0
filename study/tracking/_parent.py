"""The study's experiment and its parent run: created at the study's start, and at its end given
the study's answer (the best full-budget trial) and closed.
"""

from __future__ import annotations

import time
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE

from snn.metrics import TEST_ACC
from study.tracking._folders import is_number
from study.tracking._runs import KIND
from study.views import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

__all__ = ["BEST_CONFIG_ARTIFACT", "BEST_RUN_TAG", "SPEC_ARTIFACT", "experiment_id", "finish_parent_run", "start_parent_run"]

SPEC_ARTIFACT = "spec.yaml"  # on the parent run: the study's resolved spec
BEST_CONFIG_ARTIFACT = "best_trial_config.yaml"  # on the parent run: the best full-budget trial's config
BEST_RUN_TAG = "best_run_id"  # on the parent run: the best full-budget trial's run


def experiment_id(c: MlflowClient, name: str) -> str:
    """The experiment's id; a new one is created as a model-training experiment (MLflow 3's UI
    opens those on the runs table, not on the GenAI traces page)."""
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except Exception:  # another study or process created it meanwhile
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def start_parent_run(tracking_uri: str, experiment: str, study: str, spec: dict[str, Any],
                     run_id: str | None = None) -> str:
    """Create (or, with ``run_id``, reopen) the study's parent run; return its id."""
    c = MlflowClient(tracking_uri)
    if run_id is not None:
        c.update_run(run_id, status="RUNNING")
        return run_id
    exp_id = experiment_id(c, experiment)
    if EXPERIMENT_KIND_TAG not in c.get_experiment(exp_id).tags:  # an experiment made by hand, or by another tool
        c.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    run = c.create_run(exp_id, run_name=study, tags={KIND: "study", "study": study})
    c.log_text(run.info.run_id, yaml.safe_dump(spec, sort_keys=False), SPEC_ARTIFACT)
    return run.info.run_id


def finish_parent_run(tracking_uri: str, run_id: str, best: dict[str, Any] | None, status: str = "FINISHED",
                      note: str | None = None) -> None:
    """Record the study's best full-budget trial on its parent run, and close the run.

    The parent run holds the study's answer, not a copy of a trial's internals: the metric
    ``best_test_acc`` (that trial's final test accuracy), the tags ``best_trial_id`` and
    ``best_run_id`` (its run), the artifact :data:`BEST_CONFIG_ARTIFACT` (its config), and
    ``note``, the answer in a few lines, as the run's description. The comparison of the
    configurations and the importance of each dimension are recorded by
    :func:`study.analysis.record_analysis`, the report's plots by :func:`study.report.write_report`.
    """
    c = MlflowClient(tracking_uri)
    tags = [RunTag(MLFLOW_RUN_NOTE, note)] if note else []
    if best:
        tags.append(RunTag("best_trial_id", best["trial_id"]))
        run = c.get_run(run_id)
        found = c.search_runs([run.info.experiment_id], max_results=1, filter_string=(
            f"tags.{MLFLOW_PARENT_RUN_ID} = '{run_id}' and tags.trial_id = '{best['trial_id']}'"))
        if found:
            tags.append(RunTag(BEST_RUN_TAG, found[0].info.run_id))
        acc = best["metrics"].get(TEST_ACC)
        metrics = [Metric("best_test_acc", float(acc), int(time.time() * 1000), 0)] if is_number(acc) else []
        c.log_batch(run_id, metrics=metrics, tags=tags)
        c.log_text(run_id, yaml.safe_dump(best["config"], sort_keys=True), BEST_CONFIG_ARTIFACT)
    elif tags:
        c.log_batch(run_id, tags=tags)
    c.set_terminated(run_id, status)
