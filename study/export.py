"""``snn-study export``: a trained model as a file for neuromorphic toolchains (NIR).

:func:`export_model` takes a study (its folder, or its name under ./studies: the study's best
model, ``models:/<study>@best``), a trial's MLflow run id, or a registered model's URI
(``models:/NAME@ALIAS``, ``models:/NAME/VERSION``); reads that trial's inference network back
from MLflow (:func:`study.tracking.read_inference_model`), writes its NIR graph
(:func:`snn.export.write_nir`) and logs the file to the trial's run as the artifact
:data:`NIR_ARTIFACT`. Failures raise :class:`~study.folder.StudyError` with one line: exit
code 2 for a model that can never be exported (a layer NIR cannot express), 1 for the rest.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from snn.config import one_line
from snn.export import write_nir
from study.folder import SPEC_FILE, StudyError, open_study
from study.tracking import BEST_ALIAS, BEST_RUN_TAG, ModelNotFound, read_inference_model

__all__ = ["FORMATS", "NIR_ARTIFACT", "Exported", "export_model"]

FORMATS = ("nir",)
NIR_ARTIFACT = "model.nir"  # the exported graph, on the MLflow run of the trial it comes from
_RUN_ID = re.compile(r"[0-9a-f]{32}")  # MLflow's run ids


@dataclass(frozen=True)
class Exported:
    """What :func:`export_model` wrote."""

    path: Path
    source: str  # the model exported: a models:/ URI or a trial's logged model
    run_id: str  # the trial's MLflow run, which holds the file as NIR_ARTIFACT
    nodes: int  # NIR nodes in the graph
    neurons: int  # LIF/IF nodes among them

    def summary(self) -> str:
        return (f"exported {self.source} to {self.path}: a NIR graph of {self.nodes} nodes ({self.neurons} spiking "
                f"layers); logged as {NIR_ARTIFACT} of run {self.run_id}")


def export_model(source: str, out: str | os.PathLike, *, fmt: str = "nir",
                 tracking_uri: str = "sqlite:///mlflow.db") -> Exported:
    """Export a trained model to a file (NIR), and log the file to the MLflow run of its trial.

    Args:
        source: A study folder (or the name of one under ./studies): its best model,
            ``models:/<study>@best`` in its own MLflow store, else the run its parent run names as
            the best; a trial's MLflow run id; or ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION``.
        out: The file to write (replaced where it exists).
        fmt: The format: one of :data:`FORMATS`.
        tracking_uri: The MLflow store of a run id or ``models:/`` URI (a study names its own).

    Returns:
        What was written and where it was logged.

    Raises:
        StudyError: No such study, run or model, a study without a finished model, a layer the
            format cannot express (exit 2, naming the layer and what to choose in the study), or
            the file cannot be written or logged.
    """
    if fmt not in FORMATS:
        raise StudyError(f"--format: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}", exit_code=2)
    tracking_uri, run_id, model_uri = _resolve(source, tracking_uri)
    try:
        model = read_inference_model(tracking_uri, run_id=run_id, model_uri=model_uri)
    except ModelNotFound as e:
        raise StudyError(str(e)) from None
    except ValueError as e:  # a run that is not a trial's, a malformed models:/ URI
        raise StudyError(str(e), exit_code=2) from None
    out = Path(out)
    meta = {"mlflow_run_id": model.run_id, "mlflow_model": model.uri}
    with tempfile.TemporaryDirectory() as tmp:
        written = Path(tmp) / NIR_ARTIFACT
        try:
            graph = write_nir(model.net, written, model.input_shape, kind=model.kind, metadata=meta)
        except ValueError as e:  # a layer the format cannot express
            raise StudyError(f"{source}: cannot export to NIR: {e}", exit_code=2) from None
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            part = out.with_name(out.name + ".part")
            shutil.copyfile(written, part)
            part.replace(out)  # whole or not at all
        except OSError as e:
            raise StudyError(f"-o: cannot write {out} ({e.strerror or e})") from None
        try:
            MlflowClient(tracking_uri).log_artifact(model.run_id, str(written))
        except Exception as e:  # the store refused or is down: the file is written all the same
            raise StudyError(f"{out} is written, but could not be logged to run {model.run_id} at {tracking_uri} "
                             f"({type(e).__name__}: {one_line(e)})") from None
    neurons = sum(type(n).__name__ in ("LIF", "IF") for n in graph.nodes.values())
    return Exported(out, model.uri, model.run_id, len(graph.nodes), neurons)


def _resolve(source: str, tracking_uri: str) -> tuple[str, str | None, str | None]:
    """(tracking URI, run id, models:/ URI) of what ``source`` names; exactly one of the last two is set.

    Raises:
        StudyError: A study without a finished model, or a source that is none of the three.
    """
    if source.startswith("models:/"):
        return tracking_uri, None, source
    if (Path(source) / SPEC_FILE).is_file() or (Path("studies") / source / SPEC_FILE).is_file():
        return _best_of_study(source)
    if _RUN_ID.fullmatch(source):
        return tracking_uri, source, None
    raise StudyError(f"{source}: no study folder, MLflow run id or models:/ URI (no such folder, and not a run id "
                     f"of 32 hex digits)")


def _best_of_study(study: str) -> tuple[str, str | None, str | None]:
    """The best model of a study: its registered ``models:/<name>@best``, else the best run its parent
    run names (a store without a model registry)."""
    folder = open_study(study)
    c = MlflowClient(folder.tracking_uri)
    name = folder.spec.name
    try:
        c.get_model_version_by_alias(name, BEST_ALIAS)
        return folder.tracking_uri, None, f"models:/{name}@{BEST_ALIAS}"
    except MlflowException:
        pass  # none registered: the parent run's record, where the study finished
    try:
        best = c.get_run(folder.parent_run_id).data.tags.get(BEST_RUN_TAG)
    except MlflowException as e:
        raise StudyError(f"{study}: the study's MLflow store at {folder.tracking_uri} cannot be read "
                         f"({one_line(e.message)})") from None
    if not best:
        raise StudyError(f"{study}: the study has no finished model yet (no models:/{name}@{BEST_ALIAS}, no best run "
                         f"on its parent run); export it once it has finished, or export a finished trial by its run id")
    return folder.tracking_uri, best, None
