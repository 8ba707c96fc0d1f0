"""The Ray Tune function trainable: one trial of Algorithm 1.

It follows Ray's function-trainable pattern: turn Tune's ``config`` dict into a
:class:`snn.training.TrainConfig` once, resume from ``tune.get_checkpoint()`` if there is
one, and after every epoch make one ``tune.report(metrics, checkpoint=...)`` call. The
checkpoint holds everything :meth:`snn.training.Trainer.state_dict` returns, so a trial
restarted from epoch k continues exactly as if it had not stopped. The trainable knows
nothing of MLflow: the driver's callback records what it reports.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from snn import models
from snn.training import DIVERGED, EPOCH, TEST_ACC, Trainer, TrainConfig, TrainingDiverged, fit

__all__ = ["FIRST_GRAD_FILE", "STATE_FILE", "STRIPPED_MODEL_FILE", "load_state", "train_snn"]

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"  # Trainer.state_dict(), loaded with weights_only=True
FIRST_GRAD_FILE = "first_grad.pt"  # dL/dW1 at the epoch's last iteration (Fig. 2)
STRIPPED_MODEL_FILE = "model_stripped.pt"  # final checkpoint only: inference weights, no branches
FIRST_GRAD_PLOT = "first_layer_grad_hist.png"  # final checkpoint only: the histogram of FIRST_GRAD_FILE
NODE_ID = "node_id"  # result key: the Ray node that trained the epoch


def load_state(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
    """Load a trial's training state from a checkpoint directory (safe: ``weights_only=True``)."""
    return torch.load(Path(checkpoint_dir) / STATE_FILE, map_location="cpu", weights_only=True)


def _threads() -> None:
    # Give torch as many threads as the trial was given CPUs, so concurrent trials don't oversubscribe.
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # not inside a Ray worker (e.g. a direct call in tests)
        cpus = None
    if cpus:
        torch.set_num_threads(max(1, int(cpus)))


def _report(trainer: Trainer, metrics: dict[str, float]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(trainer.state_dict(), Path(tmp) / STATE_FILE)
        if trainer.first_grad is not None:
            torch.save(trainer.first_grad, Path(tmp) / FIRST_GRAD_FILE)
        if trainer.epoch >= trainer.cfg.epochs:
            stripped = models.strip_shortcuts(trainer.model)
            torch.save(stripped.state_dict(), Path(tmp) / STRIPPED_MODEL_FILE)
            if trainer.first_grad is not None:
                # Plotted here, on the trial's own CPU, not in the driver's event loop.
                from study.report import plot_grad_histogram

                plot_grad_histogram(trainer.first_grad, Path(tmp) / FIRST_GRAD_PLOT,
                                    title=tune.get_context().get_trial_name() or "")
        # The Ray node's id (not only its IP, which several nodes on one host share) lets the
        # driver tag each MLflow run with where it trained.
        tune.report({**metrics, NODE_ID: ray.get_runtime_context().get_node_id()},
                    checkpoint=tune.Checkpoint.from_directory(tmp))


def train_snn(config: dict[str, Any]) -> None:
    """Train one trial for ``config["epochs"]`` epochs, reporting and checkpointing every epoch.

    Args:
        config: The trial's hyperparameters: the fields of :class:`snn.training.TrainConfig`.
    """
    _threads()
    # Ray logs "Checkpoint successfully created at: ..." for every report, one console line per
    # trial and epoch; the status table and the trial folder say the same
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    cfg = TrainConfig.from_dict(config)
    state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = load_state(d)
    try:
        fit(cfg, lambda metrics, trainer: _report(trainer, metrics), state=state)
    except TrainingDiverged as e:
        # Retrying would diverge again from the same checkpoint: end the trial now, marked as
        # diverged; the driver records it as FAILED in MLflow and Optuna.
        log.warning("trial diverged: %s", e)
        tune.report({DIVERGED: 1.0, TEST_ACC: float("nan"), EPOCH: e.epoch, "error": str(e)})
