"""Datasets of the paper's tables (section 5 of Guo et al., NeurIPS 2024) and offline defaults.

* ``cifar10``, ``cifar100``, ``imagenet``: torchvision, with the paper's preprocessing;
* ``cifar10-dvs``: tonic's CIFAR10-DVS binned into T frames of 48x48;
* ``digits``: scikit-learn's bundled 8x8 digits (never downloads), the quick-start's data;
* ``digits-dvs``: digits turned into event streams by a simulated event sensor, through
  the CIFAR10-DVS pipeline, so the neuromorphic path runs offline;
* a user's own data (:class:`snn.config.UserData`: an npz, an image folder, event
  recordings), read and checked once by :func:`prepare`, which keeps the prepared arrays
  in a cache under ``data_root``.

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
from snn.config import UserData
from snn.data._errors import DataError, DatasetNotFoundError, write_whole
from snn.data._user import Prepared, load_prepared, prepare

__all__ = ["NAMES", "DataError", "DatasetInfo", "DatasetNotFoundError", "Prepared", "build", "check_root", "info",
           "load_prepared", "loaders", "prepare", "write_whole"]

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


def info(name: str | UserData, prepared: Prepared | None = None) -> DatasetInfo:
    """Classes, channels, input size and sample kind of dataset ``name``, or of a user's
    data as ``prepared`` (:func:`prepare`) found it.

    Raises:
        ValueError: Unknown name (the message lists the valid ones), or a user's data
            without its ``prepared`` arrays.
    """
    if isinstance(name, UserData):
        if prepared is None:
            raise ValueError("dataset: a user's data is known once prepared; pass prepare()'s result")
        return DatasetInfo(prepared.name, len(prepared.classes), prepared.in_channels, prepared.input_size,
                           prepared.kind)  # type: ignore[arg-type]
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


def build(name: str | UserData, root: str, train: bool, timesteps: int | None = None, download: bool = False,
          *, prepared: Prepared | None = None, **opts: Any) -> Dataset:
    """The train or test split of dataset ``name``.

    Args:
        name: One of :data:`NAMES`, or a user's data (with its ``prepared`` arrays, else
            they are prepared, or read from the cache, under ``root``).
        root: Folder holding the dataset's files (ignored by ``digits``; ``digits-dvs``
            keeps its frame cache there).
        train: The training split (with augmentation) or the test split.
        timesteps: T; required by the frame datasets, ignored by static ones.
        download: Let torchvision/tonic download missing files.
        prepared: A user's data as :func:`prepare` returned it.
        **opts: Not used by any dataset yet; an unknown option is an error.

    Raises:
        ValueError: Unknown name or option, or missing ``timesteps`` for frames
            (:class:`DataError` for a user's data that can never train).
        DatasetNotFoundError: The files are missing (and download is off or failed).
    """
    check_root(root)
    if isinstance(name, UserData):
        if opts:
            raise ValueError(f"dataset options: unknown option(s) {sorted(opts)}")
        if prepared is None:
            prepared = prepare(name, root, int(timesteps or 1))
        return prepared.dataset(name, train)
    kind = info(name).kind
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


def loaders(name: str | UserData, root: str, batch_size: int, timesteps: int | None = None, workers: int = 0, *,
            download: bool = False, seed: int = 0, pin_memory: bool | None = None,
            prepared: Prepared | None = None) -> tuple[DataLoader, DataLoader]:
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
    train = DataLoader(build(name, root, True, timesteps, download, prepared=prepared), batch_size, shuffle=True,
                       generator=gen, **common)
    test = DataLoader(build(name, root, False, timesteps, download, prepared=prepared), batch_size, shuffle=False,
                      **common)
    return train, test
