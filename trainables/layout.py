"""What a trial leaves in its Tune folder: the names the trainable writes and the study reads.

Each epoch's checkpoint (``checkpoint_<n>/`` in the trial folder, written by the trial's
own process before Tune's driver hears of the epoch) holds the training state and the
trial's record: its config and the metrics of every epoch so far. That record is what
the study projects into MLflow, so a driver that dies loses nothing the trial finished.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["FIRST_GRAD_FILE", "NODE_ID", "RECORD_FILE", "STATE_FILE", "STRIPPED_MODEL_FILE", "STRIPPED_SPEC_FILE",
           "SYSTEM_PREFIX", "TORCH_THREADS", "read_record"]

STATE_FILE = "state.pt"  # Trainer.state_dict(), loaded with weights_only=True
RECORD_FILE = "trial.json"  # {"config": {...}, "history": [metrics of epoch 1, 2, ...]}
FIRST_GRAD_FILE = "first_grad.pt"  # dL/dW1 at the epoch's last iteration (Fig. 2)
STRIPPED_MODEL_FILE = "model_stripped.pt"  # final checkpoint only: inference weights, no branches
# final checkpoint only: how to build the network those weights fit (snn.models.build's arguments,
# "build"), and the shape of one input sample ("input_shape", "kind": static [C, H, W] or frames [T, C, H, W])
STRIPPED_SPEC_FILE = "model_stripped.json"
SYSTEM_PREFIX = "system/"  # result keys: MLflow's system metrics of the trial's node, averaged over the epoch
NODE_ID = "node_id"  # result key: the Ray node that trained the epoch
TORCH_THREADS = "torch_threads"  # result key: torch's CPU threads in the epoch (float sums depend on it)


def read_record(checkpoint_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The trial record of a checkpoint folder, or None where it has none."""
    path = Path(checkpoint_dir) / RECORD_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
