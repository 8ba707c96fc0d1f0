"""The Ray Tune function trainable: one trial of Algorithm 1.

It follows Ray's function-trainable pattern: turn Tune's ``config`` dict into a
:class:`snn.config.TrainConfig` once, resume from ``tune.get_checkpoint()`` if there is
one, and after every epoch make one ``tune.report(metrics, checkpoint=...)`` call. The
checkpoint holds everything :meth:`snn.training.Trainer.state_dict` returns, so a trial
restarted from epoch k continues exactly as if it had not stopped, and the trial's record
(its config and every epoch's metrics, :data:`trainables.layout.RECORD_FILE`), so the
trial folder alone says what the trial did. The trainable knows nothing of MLflow: the
study projects what it reports.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from snn import models
from snn.config import TrainConfig
from snn.metrics import DIVERGED, EPOCH, TEST_ACC
from snn.training import Trainer, TrainingDiverged, fit
from trainables.layout import FIRST_GRAD_FILE, NODE_ID, RECORD_FILE, STATE_FILE, STRIPPED_MODEL_FILE, read_record

__all__ = ["load_state", "train_snn"]

log = logging.getLogger(__name__)


def load_state(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
    """Load a trial's training state from a checkpoint directory (safe: ``weights_only=True``)."""
    return torch.load(Path(checkpoint_dir) / STATE_FILE, map_location="cpu", weights_only=True)


def _threads() -> None:
    # Give torch as many threads as the trial was given CPUs, so concurrent trials don't oversubscribe.
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU") if ray.is_initialized() else None
    if cpus:
        torch.set_num_threads(max(1, int(cpus)))


def _node_id() -> str:
    # The Ray node's id, not only its IP, which several nodes on one host share.
    return ray.get_runtime_context().get_node_id()


class _Reporter:
    """Reports each epoch to Tune with a checkpoint that carries the state and the trial record."""

    def __init__(self, cfg: TrainConfig, history: list[dict[str, Any]]) -> None:
        self.cfg, self.history = cfg, history

    def __call__(self, metrics: dict[str, float], trainer: Trainer) -> None:
        result = {**metrics, NODE_ID: _node_id()}
        self.history.append({**result, "hostname": socket.gethostname(), "node_ip": ray.util.get_node_ip_address(),
                             "timestamp": time.time()})
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(trainer.state_dict(), Path(tmp) / STATE_FILE)
            (Path(tmp) / RECORD_FILE).write_text(json.dumps({"config": self.cfg.to_dict(), "history": self.history}))
            if trainer.first_grad is not None:
                torch.save(trainer.first_grad, Path(tmp) / FIRST_GRAD_FILE)
            if trainer.epoch >= trainer.cfg.epochs:
                torch.save(models.strip_shortcuts(trainer.model).state_dict(), Path(tmp) / STRIPPED_MODEL_FILE)
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))


def train_snn(config: dict[str, Any]) -> None:
    """Train one trial for ``config["epochs"]`` epochs, reporting and checkpointing every epoch.

    Args:
        config: The trial's hyperparameters: the fields of :class:`snn.config.TrainConfig`.
    """
    _threads()
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
    try:
        fit(cfg, _Reporter(cfg, history), state=state)
    except TrainingDiverged as e:
        # Retrying would diverge again from the same checkpoint: end the trial now, marked as
        # diverged; the study records it as FAILED in MLflow and Optuna.
        log.warning("trial diverged: %s", e)
        tune.report({DIVERGED: 1.0, TEST_ACC: float("nan"), EPOCH: e.epoch, "error": str(e), NODE_ID: _node_id()})
