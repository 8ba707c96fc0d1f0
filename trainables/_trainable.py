"""The Ray Tune function trainable: one trial of Algorithm 1.

It follows Ray's function-trainable pattern: turn Tune's ``config`` dict into a
:class:`snn.config.TrainConfig` once, resume from ``tune.get_checkpoint()`` if there is
one, and after every epoch make one ``tune.report(metrics, checkpoint=...)`` call. The
checkpoint holds everything :meth:`snn.training.Trainer.state_dict` returns, so a trial
restarted from epoch k continues exactly as if it had not stopped, and the trial's record
(its config and every epoch's metrics, :data:`trainables.layout.RECORD_FILE`), so the
trial folder alone says what the trial did. The trainable knows nothing of MLflow: the
study projects what it reports, and hands it the sampler of its node's system metrics
(``system_metrics``) to run beside the training.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import ray
import torch
from ray import tune

from snn import models
from snn import data as snn_data
from snn.data import DatasetNotFoundError, Prepared, load_prepared
from snn.config import TrainConfig
from snn.metrics import DIVERGED, EPOCH, STOPPED, STOPPED_STAGE, TEST_ACC
from snn.training import Trainer, TrainingDiverged, TrainingStopped, fit
from trainables.layout import (FIRST_GRAD_FILE, NODE_ID, RECORD_FILE, STATE_FILE, STRIPPED_MODEL_FILE,
                               STRIPPED_SPEC_FILE, TORCH_THREADS, read_record)

__all__ = ["SystemMetrics", "load_state", "stripped_spec", "train_snn"]

log = logging.getLogger(__name__)


def load_state(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
    """Load a trial's training state from a checkpoint directory (safe: ``weights_only=True``)."""
    return torch.load(Path(checkpoint_dir) / STATE_FILE, map_location="cpu", weights_only=True)


class SystemMetrics(Protocol):
    """What the trainable asks of the sampler of its node's system metrics."""

    def epoch(self) -> dict[str, float]:
        """The epoch's averages, as result keys (``system/<name>``)."""

    def stop(self) -> None:
        """Stop sampling."""


def _threads() -> int:
    """Give torch as many threads as the trial's resources have CPUs (at least one), and return it.

    The count is the trial's own request as Tune holds it (``get_trial_resources()``), not
    what the worker process was assigned: concurrent trials on a node must not oversubscribe
    its cores, and the thread count changes float sums, so a trial's result depends on it.
    Outside a Tune trial torch keeps its default, and a warning says so.
    """
    resources = tune.get_context().get_trial_resources()
    if resources is None:
        log.warning("no Tune trial: torch keeps its default of %d threads", torch.get_num_threads())
        return torch.get_num_threads()
    threads = max(1, int(resources.required_resources.get("CPU", 0)))
    torch.set_num_threads(threads)
    return threads


def _node_id() -> str:
    # The Ray node's id, not only its IP, which several nodes on one host share.
    return ray.get_runtime_context().get_node_id()


def stripped_spec(cfg: TrainConfig, prepared: Prepared | None) -> dict[str, Any]:
    """What builds the network of the stripped weights (:func:`snn.models.build`'s arguments,
    no branches) and the shape of one input sample: the trial's inference model, rebuilt
    wherever its weights are read (:data:`trainables.layout.STRIPPED_SPEC_FILE`)."""
    info = snn_data.info(cfg.dataset, prepared)
    sample = [info.in_channels, *info.input_size]
    return {"build": models.build_args(cfg, info, branches="none"),
            "kind": info.kind, "input_shape": [cfg.timesteps, *sample] if info.kind == "frames" else sample}


class _Reporter:
    """Reports each epoch to Tune with a checkpoint that carries the state and the trial record,
    and the epoch's system metrics (:class:`SystemMetrics`); the metrics named in ``first`` lead
    the result (Tune's progress table shows the first four metrics a trial reports)."""

    def __init__(self, cfg: TrainConfig, history: list[dict[str, Any]], prepared: Prepared | None = None,
                 system: SystemMetrics | None = None, first: Sequence[str] = ()) -> None:
        self.cfg, self.history, self.prepared, self.system, self.first = cfg, history, prepared, system, first

    def __call__(self, metrics: dict[str, float], trainer: Trainer) -> None:
        system = self.system.epoch() if self.system is not None else {}
        result = {**{k: metrics[k] for k in self.first if k in metrics}, **metrics, **system, NODE_ID: _node_id(),
                  TORCH_THREADS: torch.get_num_threads()}
        self.history.append({**result, "hostname": socket.gethostname(), "node_ip": ray.util.get_node_ip_address(),
                             "timestamp": time.time()})
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(trainer.state_dict(), Path(tmp) / STATE_FILE)
            (Path(tmp) / RECORD_FILE).write_text(json.dumps({"config": self.cfg.to_params(), "history": self.history}))
            if trainer.first_grad is not None:
                torch.save(trainer.first_grad, Path(tmp) / FIRST_GRAD_FILE)
            if trainer.epoch >= trainer.cfg.epochs:
                torch.save(models.strip_shortcuts(trainer.model).state_dict(), Path(tmp) / STRIPPED_MODEL_FILE)
                (Path(tmp) / STRIPPED_SPEC_FILE).write_text(json.dumps(stripped_spec(self.cfg, self.prepared)))
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))


def _newer_checkpoint(trial_dir: Path, history: list[dict[str, Any]], handed: str | None = None) -> Path | None:
    """The newest checkpoint in the trial's own folder that continues ``history`` with more epochs.

    A driver killed after a trial checkpointed, and before Tune saved its experiment state,
    leaves that state naming an older checkpoint, or none; on resume Tune restores the trial
    from it, or starts it afresh. The trial folder still has the newer ones. (A trial that
    PBT paused may also have trained one epoch ahead of what the driver heard of.)

    Args:
        trial_dir: The trial's own folder, ``study_dir/trial_<id>``.
        history: The epochs of the checkpoint Tune handed over (empty: none).
        handed: Where that checkpoint is. Another trial's (PBT's exploit: this trial continues
            a top trial's training with perturbed hyperparameters) means the trial's own newer
            checkpoints are of the training it gave up: none is taken. Nor is one whose first
            epochs are not ``history``'s, a lineage the trial left at an earlier exploit.
    """
    if handed is not None and not _inside(handed, trial_dir):
        return None
    newest, most = None, len(history)
    for d in trial_dir.glob("checkpoint_*"):
        try:
            record = read_record(d)
        except (OSError, ValueError):  # a folder half written when the driver died
            continue
        done = (record or {}).get("history", [])
        if len(done) > most and done[:len(history)] == history and (d / STATE_FILE).exists():
            newest, most = d, len(done)
    return newest


def _inside(path: str | os.PathLike, folder: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def _with_lr(state: dict[str, Any], lr: float) -> dict[str, Any]:
    """``state`` trained on with the config's learning rate, where PBT perturbed it since.

    The optimizer's and the cosine schedule's rates are scaled by new / old: with the schedule's
    floor at 0 every later step follows lr·(1 + cos(πi/I))/2 from the new lr.
    """
    old = float(state["config"]["lr"])
    if old == lr:
        return state
    ratio = lr / old
    for group in state["optimizer"]["param_groups"]:
        group["lr"] = group["lr"] * ratio
        if "initial_lr" in group:
            group["initial_lr"] = group["initial_lr"] * ratio
    schedule = state["lr_schedule"]
    for key in ("base_lrs", "_last_lr"):
        if key in schedule:
            schedule[key] = [v * ratio for v in schedule[key]]
    state["config"] = {**state["config"], "lr": lr}
    return state


def _keep_prunable(restored: Path) -> None:
    """Put an empty folder where Tune's stale state names a checkpoint that is gone.

    Tune keeps two checkpoints per trial and deletes the older one when a new one comes,
    without checking it still exists (``ray.train._internal.storage._delete_fs_path``). The
    driver that died had deleted it already, once the newer checkpoints came, so the first
    checkpoint reported after the resume would print Tune's traceback. An empty folder in
    its place is deleted instead.
    """
    index = int(restored.name.rsplit("_", 1)[-1])
    before = restored.with_name(f"checkpoint_{index - 1:06d}")
    if index > 0 and not before.exists():
        before.mkdir()


_WHERE = ("hostname", "node_ip", "timestamp")  # what the record adds to a result; Tune sets its own


def _replay(newest: Path, history: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Report to Tune the epochs ``newest`` holds beyond ``history``, as they were recorded,
    the last one with ``newest`` as its checkpoint; return that checkpoint's state and record."""
    done = read_record(newest)["history"]
    log.info("resuming from %s: epochs %d-%d were trained before the driver stopped", newest.name,
             len(history) + 1, len(done))
    for entry in done[len(history):-1]:
        tune.report({k: v for k, v in entry.items() if k not in _WHERE})
    with tempfile.TemporaryDirectory() as tmp:
        for f in newest.iterdir():
            if f.is_file():
                (Path(tmp) / f.name).write_bytes(f.read_bytes())
        tune.report({k: v for k, v in done[-1].items() if k not in _WHERE},
                    checkpoint=tune.Checkpoint.from_directory(tmp))
    return load_state(newest), list(done)


def _user_data(data: Prepared | None, data_path: str | None) -> Prepared | None:
    """The user's data: as the object store brought it, else opened (memory-mapped) at
    ``data_path``, which a dataset too large for the object store must be at on every node."""
    if data is not None or data_path is None:
        return data
    try:
        return load_prepared(data_path)
    except DatasetNotFoundError:
        raise DatasetNotFoundError(
            f"dataset: node {socket.gethostname()} ({ray.util.get_node_ip_address()}, Ray node {_node_id()[:12]}) "
            f"cannot read the prepared data at {data_path}: a dataset larger than dataset.object_store_limit_mb "
            f"is read from data_root, which every node must see at the same path (a shared file system); or "
            f"raise object_store_limit_mb to send it through Ray's object store") from None


def train_snn(config: dict[str, Any], study_dir: str | None = None, data: Prepared | None = None,
              data_path: str | None = None, system_metrics: Callable[[], SystemMetrics] | None = None,
              objectives: Sequence[str] = ()) -> None:
    """Train one trial for ``config["epochs"]`` epochs, reporting and checkpointing every epoch.

    Args:
        config: The trial's hyperparameters: the fields of :class:`snn.config.TrainConfig`.
        study_dir: The study's folder on local or shared storage (``tune.with_parameters``),
            where the trial looks for checkpoints newer than the one Tune hands it; None on
            remote storage.
        data: A user's data, prepared by the driver and brought by Ray's object store
            (``tune.with_parameters`` puts it there once for all trials).
        data_path: The folder of a user's prepared data, read when ``data`` is None.
        system_metrics: Makes the sampler of the node's system metrics, started with the
            training and stopped after it; each epoch's result carries its averages. None:
            no system metrics.
        objectives: The study's objectives (metric names), reported first in each epoch's
            result: Tune's progress table shows the first four metrics a trial reports
            (docs/decisions.md), so its columns are the objectives, then the training's loss and
            accuracy.
    """
    _threads()
    prepared = _user_data(data, data_path)  # first: a node without the data fails at once
    # Ray logs "Checkpoint successfully created at: ..." for every report, one console line per
    # trial and epoch; the status table and the trial folder say the same
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    cfg = TrainConfig.from_dict(config)
    state, history = None, []
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = load_state(d)
            history = (read_record(d) or {}).get("history", [])[: int(state["epoch"])]
    newer = None
    if study_dir is not None:
        trial_dir = Path(study_dir) / f"trial_{tune.get_context().get_trial_id()}"
        handed = checkpoint.path if checkpoint is not None else None
        newer = _newer_checkpoint(trial_dir, history, handed)
        if handed is not None and not _inside(handed, trial_dir):  # PBT's exploit: the donor's record goes on
            log.info("continuing %s at epoch %d with lambda0=%g, lr=%g", Path(handed).parent.name,
                     int(state["epoch"]), cfg.lambda0, cfg.lr)
    if newer is not None:  # Tune's saved state is behind what the trial did: catch it up, train nothing twice
        if checkpoint is not None and checkpoint.filesystem.type_name == "local":
            _keep_prunable(Path(checkpoint.path))
        state, history = _replay(newer, history)
    if state is not None:
        state = _with_lr(state, cfg.lr)
    system = system_metrics() if system_metrics is not None else None
    # a trial's last report when it ends without a value: NaN for every objective, which Tune
    # requires of each result and the searcher records as FAIL or PRUNED
    no_value = {m: float("nan") for m in dict.fromkeys((TEST_ACC, *objectives))}
    try:
        fit(cfg, _Reporter(cfg, history, prepared, system, objectives), state=state, data=prepared)
    except TrainingDiverged as e:
        # Retrying would diverge again from the same checkpoint: end the trial now, marked as
        # diverged; the study records it as FAILED in MLflow and Optuna.
        log.warning("trial diverged: %s", e)
        tune.report({DIVERGED: 1.0, **no_value, EPOCH: e.epoch, "error": str(e), NODE_ID: _node_id(),
                     TORCH_THREADS: torch.get_num_threads()})
    except TrainingStopped as e:
        # A silent (or saturated) network cannot learn: the trial ends here, its compute saved;
        # the study records it as stopped (MLflow) and PRUNED (Optuna), and steers the search away.
        log.info("trial stopped: %s", e)
        tune.report({STOPPED: e.verdict.kind, STOPPED_STAGE: e.verdict.stage, "stopped_rate": e.verdict.rate,
                     "epochs_done": e.epochs_done, **no_value, EPOCH: e.epoch, NODE_ID: _node_id(),
                     TORCH_THREADS: torch.get_num_threads()})
    finally:
        if system is not None:
            system.stop()
