"""The paper's published results (Tables 1-4) as MLflow runs tagged ``kind=baseline``, beside a
study's trials and with the same ``test_acc`` metric (a fraction).
"""

from __future__ import annotations

import dataclasses

from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from snn.metrics import TEST_ACC
from study.baselines import rows
from study.tracking._parent import experiment_id
from study.tracking._runs import KIND

__all__ = ["BASELINE_ARTIFACT", "log_baselines"]

BASELINE_ARTIFACT = "baseline.json"  # every baseline run's artifact: the row as the paper gives it


def log_baselines(tracking_uri: str, experiment: str, dataset: str | None) -> int:
    """Log the paper's rows for ``dataset`` (all rows for None) as ``kind=baseline`` runs.

    Each run carries the row's full setting as params (:meth:`Baseline.setting`: the same
    names and values as a trial's params, so it lands on the trials' axes in MLflow's
    charts), ``test_acc`` (a fraction, and its std where the paper gives one), and the row
    as an artifact (:data:`BASELINE_ARTIFACT`), so that no view of it has an empty artifact
    section. Idempotent: a row already in the experiment is not logged again; one that lacks
    params of the setting or the artifact is completed with them.

    Returns:
        The number of runs created.
    """
    c = MlflowClient(tracking_uri)
    exp_id = experiment_id(c, experiment)
    existing = {r.data.tags.get("baseline"): r for r in c.search_runs(
        [exp_id], filter_string=f"tags.{KIND} = 'baseline'", max_results=5000)}
    created = 0
    for row in rows(dataset):
        name = row.run_name()
        params = {k: str(v) for k, v in row.setting().items()}
        run = existing.get(name)
        if run is None:
            run = c.create_run(exp_id, run_name=name, tags={
                KIND: "baseline", "baseline": name, "table": str(row.table), "dataset": row.dataset,
                "method": row.method_tag, "paper_method": row.method, "citation": row.citation,
                "arch": row.architecture, "timesteps": str(row.timesteps),
                MLFLOW_RUN_NOTE: f"Table {row.table} of Guo et al., NeurIPS 2024: {row.method}"
                                 f"{f' ({row.citation})' if row.citation else ''}, {row.architecture}, "
                                 f"T={row.timesteps} on {row.dataset}"})
            metrics = [Metric(TEST_ACC, row.accuracy, 0, 0)]
            if row.std is not None:
                metrics.append(Metric(f"{TEST_ACC}_std", row.std, 0, 0))
            c.log_batch(run.info.run_id, metrics=metrics)
            created += 1
        have = run.data.params if name in existing else {}
        missing = [Param(k, v) for k, v in params.items() if k not in have]
        if missing:
            c.log_batch(run.info.run_id, params=missing)
        if name not in existing or BASELINE_ARTIFACT not in {a.path for a in c.list_artifacts(run.info.run_id)}:
            c.log_dict(run.info.run_id, {**dataclasses.asdict(row), "setting": row.setting()}, BASELINE_ARTIFACT)
        if name not in existing:
            c.set_terminated(run.info.run_id, "FINISHED")
    return created
