"""Datasets of the paper's tables (section 5 of Guo et al., NeurIPS 2024) and offline defaults.

* ``cifar10``, ``cifar100``, ``imagenet``: torchvision, with the paper's preprocessing;
* ``cifar10-dvs``: tonic's CIFAR10-DVS binned into T frames of 48x48;
* ``digits``: scikit-learn's bundled 8x8 digits (never downloads), the quick-start's data;
* ``digits-dvs``: digits turned into event streams by a simulated event sensor, through
  the CIFAR10-DVS pipeline, so the neuromorphic path runs offline.

Static samples are (float32 [C, H, W], label); frame samples are (float32 [T, C, H, W],
label). A missing dataset raises :class:`DatasetNotFoundError` naming the dataset, the
folder searched and what to place there.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from snn import registry
from snn.data._errors import DatasetNotFoundError

__all__ = ["NAMES", "DatasetInfo", "DatasetNotFoundError", "build", "check_root", "info", "loaders"]

NAMES: tuple[str, ...] = registry.DATASETS
"""Valid dataset names."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset."""

    name: str
    num_classes: int
    in_channels: int
    input_size: tuple[int, int]  # (H, W)
    kind: Literal["static", "frames"]  # static: [C, H, W] samples; frames: [T, C, H, W]
    bundled: bool = False  # shipped inside an installed package: nothing under data_root can be missing


_INFO = {
    "cifar10": DatasetInfo("cifar10", 10, 3, (32, 32), "static"),
    "cifar100": DatasetInfo("cifar100", 100, 3, (32, 32), "static"),
    "imagenet": DatasetInfo("imagenet", 1000, 3, (224, 224), "static"),
    "cifar10-dvs": DatasetInfo("cifar10-dvs", 10, 2, (48, 48), "frames"),
    "digits": DatasetInfo("digits", 10, 1, (8, 8), "static", bundled=True),
    "digits-dvs": DatasetInfo("digits-dvs", 10, 2, (32, 32), "frames"),
}
assert set(_INFO) == set(NAMES)


def info(name: str) -> DatasetInfo:
    """Classes, channels, input size and sample kind of dataset ``name``.

    Raises:
        ValueError: Unknown name (the message lists the valid ones).
    """
    if name not in _INFO:
        raise ValueError(f"dataset: unknown name {name!r}; choose one of {', '.join(NAMES)}")
    return _INFO[name]


def check_root(root: str) -> None:
    """Refuse a ``data_root`` that is a file: datasets are read from (and downloaded into) folders.

    Raises:
        ValueError: One line naming ``data_root`` and the file.
    """
    if "://" not in str(root) and Path(root).is_file():
        raise ValueError(f"data_root: {root} is a file; give the folder that holds the dataset's files "
                         f"(or will, with download)")


def build(name: str, root: str, train: bool, timesteps: int | None = None, download: bool = False,
          **opts: Any) -> Dataset:
    """The train or test split of dataset ``name``.

    Args:
        name: One of :data:`NAMES`.
        root: Folder holding the dataset's files (ignored by ``digits``; ``digits-dvs``
            keeps its frame cache there).
        train: The training split (with augmentation) or the test split.
        timesteps: T; required by the frame datasets, ignored by static ones.
        download: Let torchvision/tonic download missing files.
        **opts: Not used by any dataset yet; an unknown option is an error.

    Raises:
        ValueError: Unknown name or option, or missing ``timesteps`` for frames.
        DatasetNotFoundError: The files are missing (and download is off or failed).
    """
    kind = info(name).kind
    check_root(root)
    if opts:
        raise ValueError(f"dataset options: unknown option(s) {sorted(opts)} for {name!r}")
    if kind == "frames" and (timesteps is None or int(timesteps) < 1):
        raise ValueError(f"timesteps: {name} is an event dataset and needs timesteps >= 1, got {timesteps!r}")
    if name in ("cifar10", "cifar100"):
        from snn.data._static import build_cifar

        return build_cifar(name, root, train, download)
    if name == "imagenet":
        from snn.data._static import build_imagenet

        return build_imagenet(root, train, download)
    if name == "digits":
        from snn.data._static import build_digits

        return build_digits(train)
    from snn.data import _events

    if name == "cifar10-dvs":
        return _events.build_cifar10_dvs(root, train, int(timesteps), download)
    return _events.build_digits_dvs(root, train, int(timesteps))


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; numpy and random follow it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def loaders(name: str, root: str, batch_size: int, timesteps: int | None = None, workers: int = 0, *,
            download: bool = False, seed: int = 0, pin_memory: bool | None = None) -> tuple[DataLoader, DataLoader]:
    """Train and test loaders of dataset ``name``.

    The training loader shuffles with a generator seeded by ``seed`` (its state is part
    of a checkpoint, so a resumed trial sees the same batches); the test loader keeps the
    order. Pinned memory by default when CUDA is present; persistent, seeded workers when
    ``workers > 0``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    common: dict[str, Any] = dict(num_workers=workers, pin_memory=pin, persistent_workers=workers > 0,
                                  worker_init_fn=_seed_worker if workers > 0 else None)
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(build(name, root, True, timesteps, download), batch_size, shuffle=True, generator=gen,
                       **common)
    test = DataLoader(build(name, root, False, timesteps, download), batch_size, shuffle=False, **common)
    return train, test
