"""Reading a study's runs back from MLflow: the tags that tell runs apart, the filter that selects
a study's trial runs, a metric's newest value per epoch, and what re-running a trial needs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from snn.config import TrainConfig, one_line
from study.params import config_of_params
from study.tracking._health import check_tracking_uri
from trainables.layout import TORCH_THREADS

__all__ = ["CONFIG_ARTIFACT", "KIND", "RunNotFound", "TrialRun", "metric_per_epoch", "newest_per_epoch",
           "read_trial_run", "trial_runs_filter"]

KIND = "kind"  # tag: study | trial | baseline
CONFIG_ARTIFACT = "config.yaml"  # a trial run's artifact: its config, with exact types


def trial_runs_filter(study: str | None = None, *, trial_id: str | None = None, status: str | None = None) -> str:
    """MLflow's filter string for the trial runs of ``study`` (of every study for None), only
    the run of ``trial_id`` and only runs in ``status`` (``RUNNING``, ...) where given."""
    parts = [f"tags.{KIND} = 'trial'"]
    if study is not None:
        parts.insert(0, f"tags.study = '{study}'")
    if trial_id is not None:
        parts.append(f"tags.trial_id = '{trial_id}'")
    if status is not None:
        parts.append(f"attributes.status = '{status}'")
    return " and ".join(parts)


def newest_per_epoch(history: Iterable[Metric]) -> dict[int, Metric]:
    """A metric's history as epoch (its step) -> the epoch's newest value: an epoch logged again
    (PBT's exploit replaces a trial's epochs with the donor's) counts as its newest logging."""
    return {int(m.step): m for m in sorted(history, key=lambda m: m.timestamp)}


def metric_per_epoch(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    """A run's metric as (epoch, value) pairs in order, each epoch's newest value (:func:`newest_per_epoch`)."""
    newest = newest_per_epoch(client.get_metric_history(run_id, key))
    return [(step, newest[step].value) for step in sorted(newest)]


@dataclass
class TrialRun:
    """What a trial's MLflow run says about how to re-run it, and what it recorded."""

    run_id: str
    study: str | None
    trial_id: str | None
    config: dict[str, Any]
    source: str  # where the config came from: the config.yaml artifact, or the params
    threads: int | None  # torch's CPU threads in the trial (its torch_threads tag)
    history: dict[int, dict[str, float]]  # epoch -> metric -> value, as recorded
    tags: dict[str, str] = field(default_factory=dict)


class RunNotFound(LookupError):
    """The tracking store has no such run, or cannot be read."""


def read_trial_run(tracking_uri: str, run_id: str) -> TrialRun:
    """Read a trial's run: its config (the ``config.yaml`` artifact, exact types, where the run
    has it; else its params), its thread count and its metrics of every epoch.

    Raises:
        RunNotFound: No such run in the store, or the store cannot be read (one line).
        ValueError: The run is not a trial's (a baseline, a study's parent run), or its
            config cannot be read (one line).
    """
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        raise RunNotFound(f"--tracking-uri: no MLflow store at {tracking_uri} (the file does not exist)")
    check_tracking_uri(tracking_uri)
    c = MlflowClient(tracking_uri)
    try:
        run = c.get_run(run_id)
    except MlflowException as e:
        raise RunNotFound(f"--run-id: no run {run_id} in the MLflow store at {tracking_uri} "
                          f"({one_line(e.message)})") from None
    tags, kind = run.data.tags, run.data.tags.get(KIND)
    if kind == "baseline":
        raise ValueError(f"--run-id: run {run_id} is a result published in the paper ({tags.get('baseline')}), "
                         f"not a trial: there is nothing to re-run")
    if kind == "study":
        raise ValueError(f"--run-id: run {run_id} is the parent run of study {tags.get('study')}, not a trial: "
                         f"give the run of one of its trials (its nested runs)")
    if kind != "trial":
        raise ValueError(f"--run-id: run {run_id} is not a trial of an snn-study study (it has no tag {KIND}=trial)")
    source, config = "params", None
    try:
        if CONFIG_ARTIFACT in {a.path for a in c.list_artifacts(run_id)}:
            with tempfile.TemporaryDirectory() as tmp:
                config = yaml.safe_load(Path(c.download_artifacts(run_id, CONFIG_ARTIFACT, tmp)).read_text())
            source = CONFIG_ARTIFACT
        if not isinstance(config, dict):
            # where the data was is not a param: read it under this machine's default data root
            source, config = "params", config_of_params(run.data.params, TrainConfig.model_fields["data_root"].default)
        history: dict[int, dict[str, float]] = {}
        for key in sorted(run.data.metrics):
            for step, value in metric_per_epoch(c, run_id, key):
                history.setdefault(step, {})[key] = value
    except (MlflowException, OSError, yaml.YAMLError) as e:
        raise RunNotFound(f"--run-id: cannot read run {run_id} from {tracking_uri} ({type(e).__name__}: "
                          f"{one_line(e)})") from None
    if not config:
        raise ValueError(f"--run-id: run {run_id} records no config (neither {CONFIG_ARTIFACT} nor params)")
    threads = tags.get(TORCH_THREADS)
    return TrialRun(run_id, tags.get("study"), tags.get("trial_id"), config, source,
                    int(threads) if threads and threads.isdigit() else None, history, dict(tags))
