"""The random number generators of a trial: seeded once at its start, and their states as a
checkpoint holds them (tensors and lists only, so it loads with ``torch.load(weights_only=True)``).

Four generators draw during training: Python's ``random``, NumPy's global one, torch's (CPU
and every CUDA device), and the training loader's shuffling generator.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["rng_state", "seed_everything", "set_rng_state"]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(loader: torch.Generator | None) -> dict[str, Any]:
    """Every generator's state, ``loader`` (the training loader's generator) included."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": [version, list(internal), py_gauss],
        "loader": loader.get_state() if loader is not None else None,
    }


def set_rng_state(state: dict[str, Any], loader: torch.Generator | None) -> None:
    """Restore an :func:`rng_state`; ``loader`` takes the loader's state where both have one."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    s = state["numpy"]
    np.random.set_state((s["kind"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if state["loader"] is not None and loader is not None:
        loader.set_state(state["loader"])
