"""A user's own data (:class:`snn.config.UserData`), prepared once into arrays, cached, then
served to training in batches.

:func:`prepare` has the files read (:mod:`snn.data._formats`: an npz, an ``ImageFolder``
tree, or a tree of event recordings), holds out the test split, checks the labels a study
needs, computes the training split's channel mean and standard deviation, and writes the
prepared arrays under ``data_root/cache/`` (whole or not at all). The cache is keyed by the
files' names, sizes and modification times and by the preparation's settings, so the next
study with the same data reads it in a moment. :func:`load_prepared` opens a cache
memory-mapped: trials on one node share its pages.

Samples are kept as stored (uint8 stays uint8) and converted batch by batch
(:class:`ArrayDataset`): scaled to [0, 1], standardized, augmented. A trial holds the
data once, whatever its number of epochs.

Data that can never train (labels that are not 0..K-1, a class without a test sample)
raises :class:`~snn.data.DataError` (a ``ValueError``), one line naming the spec's field
and the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from snn.config import UserData
from snn.data import _formats
from snn.data._errors import DataError, DatasetNotFoundError

__all__ = ["ArrayDataset", "Prepared", "cache_dir", "load_prepared", "prepare"]

_VERSION = 1  # of the cache's layout and of the preparation; a change makes every cache stale
_MAX_ROLL = 5  # pixels: the CIFAR10-DVS augmentation (snn.data._events.MAX_ROLL)


@dataclass(frozen=True)
class Prepared:
    """A user's dataset, prepared: arrays, what they hold, and how to serve them.

    ``x_*`` are [N, C, H, W] (static) or [N, T, C, H, W] (frames), uint8 or float32;
    ``y_*`` are int64 labels 0..K-1. Picklable, so it travels through Ray's object store.
    """

    name: str
    kind: str  # "static" or "frames"
    classes: tuple[str, ...]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    mean: tuple[float, ...]  # per channel, of the training split scaled to [0, 1]
    std: tuple[float, ...]
    path: str  # the cache folder

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.x_train, self.y_train, self.x_test, self.y_test))

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[-3])

    @property
    def input_size(self) -> tuple[int, int]:
        return int(self.x_train.shape[-2]), int(self.x_train.shape[-1])

    def in_memory(self) -> "Prepared":
        """The same data with plain arrays (a view, no copy, of memory-mapped ones): pickled,
        their buffers travel out of band, so Ray's object store hands every trial a shared,
        read-only view instead of a private copy."""
        return replace(self, **{k: np.asarray(getattr(self, k)) for k in _ARRAYS})

    def dataset(self, user: UserData, train: bool) -> "ArrayDataset":
        """The train or test split, served as ``user`` says (normalization, augmentation)."""
        standardize = user.normalize == "standardize" or (user.normalize == "auto" and self.kind == "static")
        x, y = (self.x_train, self.y_train) if train else (self.x_test, self.y_test)
        return ArrayDataset(x, y, mean=self.mean if standardize else None, std=self.std if standardize else None,
                            augment=user.augment and train, kind=self.kind)

    def describe(self) -> str:
        """One line: what the data is and where its prepared arrays are."""
        shape = "x".join(map(str, self.x_train.shape[1:]))
        what = "images" if self.kind == "static" else "frames (T x C x H x W)"
        return (f"{self.name}: {len(self.classes)} classes, {shape} {what} ({self.x_train.dtype}), "
                f"{len(self.y_train):,} train / {len(self.y_test):,} test samples, {self.nbytes / 2**20:.1f} MiB "
                f"prepared in {self.path}")


class ArrayDataset(Dataset):
    """Samples of an array, converted a batch at a time: uint8 scaled to [0, 1], then
    standardized with ``mean``/``std`` (per channel), then, for training, augmented.

    The augmentation is the paper's for each kind (section 5): random crop with zero
    padding of 1/8 of the size and a horizontal flip for images; a horizontal flip and a
    roll of up to 5 pixels in x and y for event frames. It draws from torch's global
    generator, whose state a trial's checkpoint holds.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, *, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, augment: bool = False, kind: str = "static") -> None:
        self.x, self.y, self.augment, self.kind = x, y, augment, kind
        self.scale = 1 / 255 if x.dtype == np.uint8 and kind == "static" else None  # frames: counts
        shape = (-1, 1, 1)
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(shape)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(shape)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        x = torch.from_numpy(np.ascontiguousarray(self.x[indices])).float()  # a copy: the array may be read-only
        if self.scale is not None:
            x.mul_(self.scale)
        if self.mean is not None:
            x.sub_(self.mean).div_(self.std)
        if self.augment:
            x = self._augment(x)
        return list(zip(x.unbind(0), self.y[indices].tolist()))

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        flip = torch.rand(n) < 0.5
        x = torch.where(flip.view(-1, *[1] * (x.dim() - 1)), x.flip(-1), x)
        h, w = x.shape[-2:]
        if self.kind == "frames":
            shifts = torch.randint(-_MAX_ROLL, _MAX_ROLL + 1, (n, 2)).tolist()
            return torch.stack([torch.roll(x[i], shifts=tuple(shifts[i]), dims=(-2, -1)) for i in range(n)])
        pad = max(1, min(h, w) // 8)
        padded = F.pad(x, (pad, pad, pad, pad))
        offsets = torch.randint(0, 2 * pad + 1, (n, 2)).tolist()
        return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])


# -- the cache -------------------------------------------------------------------------------

def _files(user: UserData, timesteps: int) -> tuple[str, list[tuple[str, int, int]]]:
    """The preparation's key: its settings and every file it reads, with size and mtime."""
    listing = []
    for field in ("train", "test"):
        where = getattr(user, field)
        if where is None:
            continue
        root = _formats.existing(where, field, folder=user.format != "npz")
        if user.format == "npz":
            st = root.stat()
            listing.append((str(root), st.st_size, st.st_mtime_ns))
            continue
        for path, _ in _formats.class_files(root, field, user.format):
            st = path.stat()
            listing.append((str(path), st.st_size, st.st_mtime_ns))
    settings = {"version": _VERSION, "format": user.format, "test_fraction": user.test_fraction,
                "split_seed": user.split_seed, "input_size": user.input_size, "sensor_size": user.sensor_size,
                "timesteps": timesteps if user.format == "events" else None}
    return json.dumps(settings, sort_keys=True), listing


def cache_dir(user: UserData, root: str | os.PathLike, timesteps: int) -> Path:
    """Where :func:`prepare` keeps ``user``'s prepared arrays under ``root``."""
    settings, listing = _files(user, timesteps)
    digest = hashlib.sha256(json.dumps([settings, listing]).encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in user.label)[:60]
    return Path(root).expanduser().resolve() / "cache" / f"{user.format}-{safe}-{digest}"


_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def load_prepared(path: str | os.PathLike, *, mmap: bool = True) -> Prepared:
    """Open the prepared arrays in cache folder ``path`` (memory-mapped unless ``mmap=False``).

    Raises:
        DatasetNotFoundError: ``path`` is not a complete cache folder.
    """
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
        arrays = {k: np.load(path / f"{k}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
                  for k in _ARRAYS}
    except (OSError, ValueError) as e:
        raise DatasetNotFoundError(f"dataset: no prepared data in {path} ({getattr(e, 'strerror', None) or e})") from None
    return Prepared(meta["name"], meta["kind"], tuple(meta["classes"]), **arrays, mean=tuple(meta["mean"]),
                    std=tuple(meta["std"]), path=str(path))


def prepare(user: UserData, root: str | os.PathLike, timesteps: int, *, log=None, progress=None) -> Prepared:
    """Read, check and prepare ``user``'s data once; later calls read the cache under ``root``.

    Args:
        user: The spec's ``dataset:`` mapping.
        root: The ``data_root`` whose ``cache/`` folder keeps the prepared arrays.
        timesteps: T: event recordings are binned into T frames; npz frames must have T.
        log: Called with a line of progress while a preparation runs (it can take minutes
            on a large image folder); None: quiet.
        progress: Called as ``progress(phase, done, total)`` while a phase that reads file by
            file runs (image folders, event recordings): ``done`` is 0 when it starts, then the
            files read so far; ``phase`` names it (``"decoding train images"``, ...). None: no calls.

    Raises:
        DatasetNotFoundError: A path is missing or unreadable.
        DataError: The data can never train as described (one line naming field and file).
    """
    where = cache_dir(user, root, timesteps)
    if (where / "meta.json").exists():
        try:
            return load_prepared(where)
        except DatasetNotFoundError:  # damaged (a disk error, a hand edit): prepare it again
            shutil.rmtree(where, ignore_errors=True)
    if log:
        log(f"preparing {user.format} data {user.label!r} into {where}")
    say = log or (lambda _: None)
    if user.format == "npz":
        arrays, classes, kind = _formats.read_npz(user, timesteps)
    elif user.format == "imagefolder":
        arrays, classes, kind = _formats.read_images(user, say, progress)
    else:
        arrays, classes, kind = _formats.read_events(user, timesteps, say, progress)
    arrays = _split(arrays, user, classes)
    _check_labels(arrays, classes, user)
    mean, std = _stats(arrays["x_train"], scaled=kind == "static")
    meta = {"name": user.label, "kind": kind, "classes": list(classes), "mean": mean, "std": std,
            "settings": json.loads(_files(user, timesteps)[0]), "train": user.train, "test": user.test}
    _write_cache(where, arrays, meta)
    return load_prepared(where)


def _write_cache(where: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write the cache folder under a temporary name, then rename it into place: a concurrent
    or failed preparation leaves a whole cache or none."""
    where.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=where.parent, prefix=f".{where.name}.", suffix=".tmp"))
    tmp.chmod(0o755)  # mkdtemp makes it private; trials of another user (a container) read it too
    try:
        for k in _ARRAYS:
            np.save(tmp / f"{k}.npy", arrays[k])
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, where)
        except OSError:
            if not (where / "meta.json").exists():  # not a concurrent preparation that won: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _split(arrays: dict[str, np.ndarray], user: UserData, classes: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Hold out ``test_fraction`` of each class (seeded by ``split_seed``) when no test set is given."""
    if user.test_fraction is None:
        return arrays
    x, y = arrays["x_train"], arrays["y_train"]
    rng = np.random.RandomState(user.split_seed)
    test = []
    for c in range(len(classes)):
        idx = np.flatnonzero(y == c)
        n = int(round(len(idx) * user.test_fraction))
        if len(idx) and n == 0 and len(idx) >= 2:
            n = 1
        if n >= len(idx) and len(idx):
            n = len(idx) - 1
        test.extend(idx[rng.permutation(len(idx))][:n])
    mask = np.zeros(len(y), dtype=bool)
    mask[np.asarray(test, dtype=np.int64)] = True
    return {"x_train": x[~mask], "y_train": y[~mask], "x_test": x[mask], "y_test": y[mask]}


def _check_labels(arrays: dict[str, np.ndarray], classes: tuple[str, ...], user: UserData) -> None:
    ytr, yte = arrays["y_train"], arrays["y_test"]
    train = f"dataset.train: {Path(user.train).expanduser().resolve()}"
    test = (f"dataset.test: {Path(user.test).expanduser().resolve()}" if user.test is not None else
            f"dataset.test: the {user.test_fraction:g} held out of {Path(user.train).expanduser().resolve()}")
    for where, y in ((train, ytr), (test, yte)):
        if len(y) and int(y.min()) < 0:
            raise DataError(f"{where}: labels must be 0..K-1, found {int(y.min())}")
    k = len(classes)
    if k < 2:
        raise DataError(f"{train}: {k} class{'es' if k != 1 else ''} ({', '.join(classes) or 'none'}); a "
                        f"classifier needs at least two")
    if len(yte) and int(yte.max()) >= k:
        raise DataError(f"{test}: label {int(yte.max())} is not a class of the training data (0..{k - 1})")
    counts_tr, counts_te = np.bincount(ytr, minlength=k), np.bincount(yte, minlength=k)
    empty = [classes[i] for i in np.flatnonzero(counts_tr == 0)]
    if empty:
        raise DataError(f"{train}: labels must be 0..K-1 with every class present; {_classes(empty)} of 0..{k - 1} "
                        f"{'has' if len(empty) == 1 else 'have'} no training sample")
    untested = [classes[i] for i in np.flatnonzero(counts_te == 0)]
    if untested:
        raise DataError(f"{test}: {_classes(untested)} {'has' if len(untested) == 1 else 'have'} no test sample"
                        + ("; give more samples of them, or a larger test_fraction" if user.test_fraction else ""))


def _classes(names: list[str]) -> str:
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return f"class {shown}" if len(names) == 1 else f"classes {shown}"


def _stats(x: np.ndarray, *, scaled: bool, chunk_bytes: int = 32 * 2**20) -> tuple[list[float], list[float]]:
    """Channel mean and std of ``x`` (scaled to [0, 1] if uint8 and ``scaled``: images, not
    frames of counts), in float64, a chunk of about ``chunk_bytes`` at a time."""
    c = x.shape[-3]
    axes = tuple(i for i in range(x.ndim) if i != x.ndim - 3)  # all but the channel's
    step = max(1, chunk_bytes // (8 * max(1, int(np.prod(x.shape[1:])))))
    total, sq, n = np.zeros(c), np.zeros(c), 0
    for i in range(0, len(x), step):
        a = np.asarray(x[i:i + step], dtype=np.float64)
        if scaled and x.dtype == np.uint8:
            a /= 255.0
        total += a.sum(axis=axes)
        np.square(a, out=a)
        sq += a.sum(axis=axes)
        n += a.size // c
    mean = total / n
    std = np.sqrt(np.maximum(sq / n - mean * mean, 0.0))
    return mean.tolist(), [float(s) if s > 1e-8 else 1.0 for s in std]
