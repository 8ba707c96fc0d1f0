"""A finished trial's inference network as an MLflow model, a study's best one in the Model Registry,
and either read back (:func:`read_inference_model`)."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import mlflow.artifacts
import mlflow.pytorch
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities import LoggedModel, LoggedModelOutput, LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.models import Model

import snn
from snn import models
from snn.config import one_line
from snn.metrics import TEST_ACC
from study.folder import StudyFolder
from study.tracking._folders import is_number
from study.tracking._health import check_tracking_uri
from study.tracking._runs import KIND, trial_runs_filter
from trainables.layout import STRIPPED_MODEL_FILE, STRIPPED_SPEC_FILE

__all__ = ["BEST_ALIAS", "MODEL_NAME", "ModelNotFound", "RegisteredModel", "StoredModel", "inference_model",
           "log_inference_model", "read_inference_model", "register_best_model"]

MODEL_NAME = "model"  # the name of every trial's logged model
BEST_ALIAS = "best"  # the registered version of a study's best model: models:/<study>@best


class _NoPickleAdvice(logging.Filter):
    """Drops mlflow.pytorch's advice to save as 'pt2' (torch.export): an exported spiking
    network is fixed to the example's batch size, so the study saves the module itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "serialization_format" not in record.getMessage()


def inference_model(checkpoint: str | os.PathLike) -> tuple[torch.nn.Module, np.ndarray]:
    """The stripped network of a trial's final checkpoint (Algorithm 1, inference part: the
    main branch only, Eq. 7's b_n) with its weights, in eval mode, and an input example of
    one sample (``[1, C, H, W]``; frames ``[T, 1, C, H, W]``, as the network takes them).

    Raises:
        FileNotFoundError: The checkpoint holds no stripped model (not the trial's last epoch).
    """
    checkpoint = Path(checkpoint)
    spec = json.loads((checkpoint / STRIPPED_SPEC_FILE).read_text())
    net = models.strip_shortcuts(models.build(**spec["build"]))
    net.load_state_dict(torch.load(checkpoint / STRIPPED_MODEL_FILE, weights_only=True))
    shape = spec["input_shape"]
    example_shape = [shape[0], 1, *shape[1:]] if spec["kind"] == "frames" else [1, *shape]
    example = np.random.default_rng(0).random(example_shape, dtype=np.float32)  # a fixed, non-trivial input
    return net.eval(), example


def log_inference_model(tracking_uri: str, run_id: str, checkpoint: str | os.PathLike) -> str:
    """Log a finished trial's inference network to its run as an MLflow model (signature and
    input example included); return the model's URI, for ``mlflow.pytorch.load_model``.

    The module is saved whole (``serialization_format="pickle"``) with the ``snn`` package's
    source (``code_paths``), so it loads where the project is not installed; torch.export's
    format would fix the batch size to the example's.

    The model is written through a client of ``tracking_uri``, since ``mlflow.pytorch.log_model``
    writes to the process's tracking URI: created as a logged model of the run (an output of
    the run, with its params), saved by ``mlflow.pytorch.save_model``, uploaded, and finalized
    READY (FAILED where saving or uploading failed). Nothing loads the saved model back, so the
    driver's ``sys.path`` stays as it was: loading a model puts its code folder on it for good.
    """
    net, example = inference_model(checkpoint)
    c = MlflowClient(tracking_uri)
    run = c.get_run(run_id)
    model = c.create_logged_model(run.info.experiment_id, name=MODEL_NAME, source_run_id=run_id,
                                  params=dict(run.data.params))
    advice = _NoPickleAdvice()
    logging.getLogger("mlflow.pytorch").addFilter(advice)
    try:
        c.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / MODEL_NAME
            mlflow.pytorch.save_model(
                net, path, input_example=example, serialization_format="pickle",
                mlflow_model=Model(artifact_path=model.artifact_location, model_uuid=model.model_id, run_id=run_id,
                                   model_id=model.model_id),
                code_paths=[str(Path(snn.__file__).parent)],
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}", "numba"])
            c.log_model_artifacts(model.model_id, str(path))
    except Exception:
        c.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    finally:
        logging.getLogger("mlflow.pytorch").removeFilter(advice)
    c.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    return model.model_uri


@dataclass(frozen=True)
class RegisteredModel:
    """A study's best model in the Model Registry."""

    name: str
    version: str
    run_id: str
    trial_id: str
    test_acc: float

    @property
    def uri(self) -> str:
        """What ``mlflow.pytorch.load_model`` loads: the study's model by its alias."""
        return f"models:/{self.name}@{BEST_ALIAS}"


def _ready_model(c: MlflowClient, experiment_id: str, run_id: str) -> LoggedModel | None:
    """The run's newest logged model that is READY: a driver killed while it logged a model
    leaves it PENDING, or FAILED where the upload failed, and the sync logs it again beside.
    Filtered here: a SQL store keeps the status as a number, so ``status = 'READY'`` in the
    filter string matches nothing there."""
    models = c.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")  # newest first
    return next((m for m in models if m.status == LoggedModelStatus.READY), None)


def register_best_model(folder: StudyFolder, trial_ids: Iterable[str], why: str) -> RegisteredModel | None:
    """Register, under the study's name, the logged model of the trial among ``trial_ids`` with
    the best final ``test_acc`` (the best configuration's replicates, or the best trial), and
    point the alias :data:`BEST_ALIAS` at it. Idempotent: the same model is not registered twice.

    Args:
        folder: The study.
        trial_ids: The trials to choose from.
        why: The version's description: what made these trials the best.

    Returns:
        The registered version, or None where none of the trials has a READY logged model.
    """
    c = MlflowClient(folder.tracking_uri)
    exp = c.get_experiment_by_name(folder.spec.experiment)
    if exp is None:
        return None
    runs = []
    for trial_id in dict.fromkeys(trial_ids):
        runs += c.search_runs([exp.experiment_id], max_results=1,
                              filter_string=trial_runs_filter(folder.spec.name, trial_id=trial_id))
    runs = sorted((r for r in runs
                   if is_number(r.data.metrics.get(TEST_ACC)) and math.isfinite(r.data.metrics[TEST_ACC])),
                  key=lambda r: -r.data.metrics[TEST_ACC])
    for run in runs:
        model = _ready_model(c, exp.experiment_id, run.info.run_id)
        if model is not None:
            break
    else:
        return None
    name = folder.spec.name
    versions = c.search_model_versions(f"name = '{name}'")
    version = next((v for v in versions if v.source in (model.model_uri, model.artifact_location)), None)
    if version is None:
        if not versions and not c.search_registered_models(f"name = '{name}'"):
            c.create_registered_model(name, description=f"The best model of study {name} (snn-study)")
        # the source is where the model's files are: a local store resolves a models:/ source
        # through the process's tracking URI, not this client's
        version = c.create_model_version(name, model.artifact_location, run_id=run.info.run_id, model_id=model.model_id,
                                         description=why, tags={"trial_id": run.data.tags.get("trial_id", ""),
                                                                TEST_ACC: str(run.data.metrics[TEST_ACC])})
    c.set_registered_model_alias(name, BEST_ALIAS, version.version)
    return RegisteredModel(name, str(version.version), run.info.run_id, run.data.tags.get("trial_id", ""),
                           float(run.data.metrics[TEST_ACC]))


class ModelNotFound(LookupError):
    """The store holds no such run, trial model or registered version, or cannot be read (one line)."""


@dataclass(frozen=True)
class StoredModel:
    """A trial's inference network read back from MLflow (:func:`read_inference_model`)."""

    net: torch.nn.Module  # the stripped network (snn.models.strip_shortcuts), in eval mode
    input_shape: tuple[int, ...]  # one sample: [C, H, W], or an event sample's [T, C, H, W]
    kind: str  # "static" or "frames" (snn.data.DatasetInfo.kind)
    run_id: str  # the trial's run, which logged the model
    uri: str  # where it was read: the logged model's or the registered version's URI


def read_inference_model(tracking_uri: str, *, run_id: str | None = None, model_uri: str | None = None) -> StoredModel:
    """Read back the inference network that :func:`log_inference_model` logged: a trial run's
    (``run_id``: its newest READY logged model) or a registered version's (``model_uri``,
    ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``).

    The model's files are downloaded and loaded by ``mlflow.pytorch``; the code folder that
    loading puts first on ``sys.path`` is taken off again (the process's own ``snn`` is the one
    the network's classes come from either way).

    Raises:
        ModelNotFound: No such run, trial model or version, or the store cannot be read.
        ValueError: The run is not a trial's, or ``model_uri`` is not a ``models:/`` URI.
    """
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        raise ModelNotFound(f"--tracking-uri: no MLflow store at {tracking_uri} (the file does not exist)")
    try:
        check_tracking_uri(tracking_uri)
    except ConnectionError as e:
        raise ModelNotFound(str(e)) from None
    c = MlflowClient(tracking_uri)
    try:
        if model_uri is not None:
            uri, source, run_id = _registered_version(c, model_uri)
        else:
            uri, source = _trial_model(c, run_id)
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp, tracking_uri=tracking_uri)
            path = list(sys.path)
            try:
                net = mlflow.pytorch.load_model(local, map_location="cpu")
            finally:
                sys.path[:] = path
            signature = Model.load(local).signature
    except MlflowException as e:
        raise ModelNotFound(f"{model_uri or run_id}: cannot be read from the MLflow store at {tracking_uri} "
                            f"({one_line(e.message)})") from None
    shape = tuple(int(n) for n in signature.inputs.inputs[0].shape)  # [-1, C, H, W] or frames [T, -1, C, H, W]
    if len(shape) == 5:
        return StoredModel(net.eval(), (net.net.timesteps, *shape[2:]), "frames", run_id, uri)
    return StoredModel(net.eval(), shape[1:], "static", run_id, uri)


def _registered_version(c: MlflowClient, model_uri: str) -> tuple[str, str, str]:
    """(the URI, where its files are, its run) of a registered version named by ``models:/NAME@ALIAS``
    or ``models:/NAME/VERSION``."""
    rest = model_uri.removeprefix("models:/")
    name, at, alias = rest.partition("@")
    if rest == model_uri or not name or (not at and not rest.rpartition("/")[2].isdigit()):
        raise ValueError(f"{model_uri}: expected a registered model as models:/NAME@ALIAS or models:/NAME/VERSION")
    try:
        version = (c.get_model_version_by_alias(name, alias) if at else
                   c.get_model_version(*rest.rsplit("/", 1)))
    except MlflowException as e:
        raise ModelNotFound(f"{model_uri}: no such registered model version ({one_line(e.message)})") from None
    return model_uri, version.source, version.run_id


def _trial_model(c: MlflowClient, run_id: str) -> tuple[str, str]:
    """(the URI, where its files are) of a trial run's newest READY logged model."""
    try:
        run = c.get_run(run_id)
    except MlflowException as e:
        raise ModelNotFound(f"{run_id}: no such run ({one_line(e.message)})") from None
    if run.data.tags.get(KIND) != "trial":
        raise ValueError(f"{run_id}: run is not a trial's (its tag {KIND} is {run.data.tags.get(KIND)!r}); give a "
                         f"trial's run, a study folder or a models:/ URI")
    model = _ready_model(c, run.info.experiment_id, run_id)
    if model is None:
        raise ModelNotFound(f"{run_id}: the trial has no finished model (it logs one when it trains its last epoch)")
    return model.model_uri, model.artifact_location
