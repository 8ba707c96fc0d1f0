"""A user's own data (:class:`snn.config.UserData`): read and checked once, prepared into
arrays, cached, then served to training in batches.

:func:`prepare` reads the files (an npz, an ``ImageFolder`` tree, or a tree of event
recordings), checks what a study needs of them, and writes the prepared arrays under
``data_root/cache/`` (whole or not at all): samples resized to ``input_size``, event
recordings binned into T frames with tonic's ``ToFrame`` as the paper's CIFAR10-DVS
pipeline does (section 5), the test split held out, and the training split's channel mean
and standard deviation. The cache is keyed by the files' names, sizes and modification
times and by the preparation's settings, so the next study with the same data reads it
in a moment. :func:`load_prepared` opens a cache memory-mapped: trials on one node share
its pages.

Samples are kept as stored (uint8 stays uint8) and converted batch by batch
(:class:`ArrayDataset`): scaled to [0, 1], standardized, augmented. A trial holds the
data once, whatever its number of epochs.

A path that is missing or unreadable raises :class:`~snn.data.DatasetNotFoundError` (an
``OSError``); data that can never train (no ``y``, labels that are not 0..K-1, a class
without a test sample, mixed image sizes without ``input_size``, events without x, y, t,
p) raises :class:`DataError` (a ``ValueError``). Each is one line naming the spec's field
and the file. Pickled content is never loaded (``allow_pickle=False``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from snn.config import UserData
from snn.data._errors import DatasetNotFoundError

__all__ = ["ArrayDataset", "DataError", "Prepared", "cache_dir", "load_prepared", "prepare"]

_VERSION = 1  # of the cache's layout and of the preparation; a change makes every cache stale
_EVENT_FIELDS = ("x", "y", "t", "p")
_EVENT_SUFFIXES = (".npy", ".npz")
_MAX_ROLL = 5  # pixels: the CIFAR10-DVS augmentation (snn.data._events.MAX_ROLL)


class DataError(ValueError):
    """A user's data can never train as the spec describes it."""


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
        root = _existing(where, field, folder=user.format != "npz")
        if user.format == "npz":
            st = root.stat()
            listing.append((str(root), st.st_size, st.st_mtime_ns))
            continue
        for path, _ in _class_files(root, field, user.format):
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
        arrays, classes, kind = _read_npz(user, timesteps)
    elif user.format == "imagefolder":
        arrays, classes, kind = _read_images(user, say, progress)
    else:
        arrays, classes, kind = _read_events(user, timesteps, say, progress)
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


# -- reading each format ---------------------------------------------------------------------

def _existing(where: str, field: str, *, folder: bool) -> Path:
    path = Path(where).expanduser().resolve()
    if not path.exists():
        raise DatasetNotFoundError(f"dataset.{field}: {path} does not exist")
    if folder and not path.is_dir():
        raise DataError(f"dataset.{field}: {path} is a file; this format reads a folder with one sub-folder "
                        f"per class")
    if not folder and path.is_dir():
        raise DataError(f"dataset.{field}: {path} is a folder; format npz reads one .npz file with arrays x and y")
    if not os.access(path, os.R_OK | (os.X_OK if folder else 0)):
        raise DatasetNotFoundError(f"dataset.{field}: {path} is not readable (permission denied)")
    return path


def _class_files(root: Path, field: str, fmt: str) -> list[tuple[Path, str]]:
    """(file, class name) of every sample under ``root``'s class folders, sorted."""
    try:
        classes = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
    except OSError as e:
        raise DatasetNotFoundError(f"dataset.{field}: {root}: {e.strerror or e}") from None
    if fmt == "imagefolder":
        from torchvision.datasets.folder import IMG_EXTENSIONS as suffixes
    else:
        suffixes = _EVENT_SUFFIXES
    out = []
    for c in classes:
        for dirpath, _, names in sorted(os.walk(root / c, followlinks=True)):
            out.extend((Path(dirpath) / n, c) for n in sorted(names)
                       if n.lower().endswith(tuple(suffixes)) and not n.startswith("."))
    if not out:
        what = ", ".join(sorted({s.lower() for s in suffixes}))
        raise DataError(f"dataset.{field}: {root} has no class sub-folders holding {what} files; expected "
                        f"{root}/<class>/<sample> (one sub-folder per class)")
    return out


def _read_npz(user: UserData, timesteps: int) -> tuple[dict[str, np.ndarray], tuple[str, ...], str]:
    arrays, kinds = {}, set()
    for field in ("train", "test"):
        if getattr(user, field) is None:
            continue
        path = _existing(getattr(user, field), field, folder=False)
        x, y = _npz_arrays(path, field)
        x, kind = _npz_samples(x, path, field, timesteps)
        arrays[f"x_{field}"], arrays[f"y_{field}"] = _resize(x, user.input_size, kind), y
        kinds.add(kind)
    if len(kinds) > 1 or (user.test and arrays["x_train"].shape[1:-2] != arrays["x_test"].shape[1:-2]):
        raise DataError(f"dataset.test: its samples are {_shape(arrays['x_test'])}, the training samples "
                        f"{_shape(arrays['x_train'])}; they must match (but for the image size, with input_size)")
    if user.test and arrays["x_train"].shape[-2:] != arrays["x_test"].shape[-2:]:
        raise DataError(f"dataset.test: its images are {_hw(arrays['x_test'])}, the training images "
                        f"{_hw(arrays['x_train'])}; set dataset.input_size: [H, W] to resize both")
    k = int(arrays["y_train"].max()) + 1  # the classes are the training data's; a test label beyond is an error
    return arrays, tuple(str(i) for i in range(k)), kinds.pop()


def _npz_arrays(path: Path, field: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise DataError(f"dataset.{field}: {path} is a single .npy array; format npz reads an .npz file with "
                            f"arrays x and y (np.savez(path, x=..., y=...))")
        with f:
            missing = [k for k in ("x", "y") if k not in f.files]
            if missing:
                raise DataError(f"dataset.{field}: {path} has no array {' or '.join(map(repr, missing))} (it has: "
                                f"{', '.join(f.files) or 'nothing'}); expected x (samples) and y (labels)")
            x, y = f["x"], f["y"]
    except DataError:
        raise
    except PermissionError as e:
        raise DatasetNotFoundError(f"dataset.{field}: {path} is not readable ({e.strerror})") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        why = "it holds Python objects, which are never unpickled" if "allow_pickle" in str(e) else str(e)
        raise DataError(f"dataset.{field}: {path} is not a readable .npz file ({why})") from None
    if x.dtype != np.uint8 and x.dtype.kind != "f":
        raise DataError(f"dataset.{field}: {path}: x has dtype {x.dtype}; expected uint8 (0..255) or float")
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"dataset.{field}: {path}: y must be integer class labels of shape [N], got {y.dtype} "
                        f"of shape {list(y.shape)}")
    if len(x) != len(y):
        raise DataError(f"dataset.{field}: {path}: x has {len(x)} samples but y has {len(y)} labels")
    if len(y) == 0:
        raise DataError(f"dataset.{field}: {path} holds no samples")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DataError(f"dataset.{field}: {path}: x holds NaN or infinite values")
    return (x if x.dtype == np.uint8 else x.astype(np.float32, copy=False)), y.astype(np.int64)


def _npz_samples(x: np.ndarray, path: Path, field: str, timesteps: int) -> tuple[np.ndarray, str]:
    if x.ndim == 3:
        return x[:, None], "static"  # [N, H, W] -> [N, 1, H, W]
    if x.ndim == 4:
        return x, "static"
    if x.ndim == 5:
        if x.shape[1] != timesteps:
            raise DataError(f"dataset.{field}: {path} holds frames with T={x.shape[1]} ([N, T, C, H, W] = "
                            f"{list(x.shape)}), but timesteps is {timesteps}; set timesteps: {x.shape[1]}")
        return x, "frames"
    raise DataError(f"dataset.{field}: {path}: x has shape {list(x.shape)}; expected [N, H, W], [N, C, H, W] or "
                    f"frames [N, T, C, H, W]")


def _shape(x: np.ndarray) -> str:
    return "x".join(map(str, x.shape[1:]))


def _hw(x: np.ndarray) -> str:
    return f"{x.shape[-2]}x{x.shape[-1]}"


def _resize(x: np.ndarray, size: tuple[int, int] | None, kind: str, chunk: int = 1024) -> np.ndarray:
    """``x`` resized to ``size`` (H, W): bilinear with antialiasing for images, area
    averaging for event frames (it keeps their counts' mean); uint8 stays uint8."""
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    out = np.empty((*x.shape[:-2], *size), dtype=x.dtype)
    for i in range(0, len(x), chunk):
        t = torch.from_numpy(np.ascontiguousarray(x[i:i + chunk])).float()
        lead = t.shape[:-3]
        t = t.reshape(-1, *t.shape[-3:])
        if kind == "frames":
            r = F.interpolate(t, size=size, mode="area")
        else:
            r = F.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)
        r = r.reshape(*lead, *r.shape[-3:])
        out[i:i + chunk] = (r.round().clamp(0, 255).to(torch.uint8) if x.dtype == np.uint8 else r).numpy()
    return out


def _class_folders(user: UserData) -> tuple[dict[str, list[tuple[Path, str]]], tuple[str, ...], dict[str, int]]:
    """The samples of each split's class folders, the classes (the training folder's, sorted)
    and each class's label."""
    listed = {}
    for field in ("train", "test"):
        if getattr(user, field) is not None:
            listed[field] = _class_files(_existing(getattr(user, field), field, folder=True), field, user.format)
    classes = tuple(sorted({c for _, c in listed["train"]}))
    if "test" in listed:
        extra = sorted({c for _, c in listed["test"]} - set(classes))
        if extra:
            raise DataError(f"dataset.test: class folder(s) {extra} have no counterpart in dataset.train "
                            f"({user.train}); the classes are the training folder's")
    return listed, classes, {c: i for i, c in enumerate(classes)}


def _read_images(user: UserData, say, progress=None) -> tuple[dict[str, np.ndarray], tuple[str, ...], str]:
    from PIL import Image, UnidentifiedImageError

    listed, classes, index = _class_folders(user)

    def header(item: tuple[Path, str]) -> tuple[tuple[int, int], int]:
        try:
            with Image.open(item[0]) as im:
                return (im.height, im.width), 1 if im.mode in _GREY else 3
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DataError(f"dataset: {item[0]} is not a readable image ({e})") from None

    heads = {f: _map(header, items, progress, f"reading {f} image headers") for f, items in listed.items()}
    everything = [(p, h) for f in listed for (p, _), h in zip(listed[f], heads[f])]
    channels = 1 if all(bands == 1 for _, (_, bands) in everything) else 3
    sizes = {size for _, (size, _) in everything}
    if len(sizes) > 1 and user.input_size is None:
        (a, (sa, _)), (b, (sb, _)) = everything[0], next(e for e in everything if e[1][0] != everything[0][1][0])
        raise DataError(f"dataset.input_size: the images differ in size ({sa[0]}x{sa[1]} {a}, {sb[0]}x{sb[1]} {b}); "
                        f"set input_size: [H, W] to resize them all")
    h, w = user.input_size or sizes.pop()
    mode = "L" if channels == 1 else "RGB"

    def decode(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as im:
                if im.mode in _WIDE:  # 16-bit (or wider) greyscale: scaled to 8 bits, not clipped
                    im = Image.fromarray(np.round(np.asarray(im, dtype=np.float64) * (255 / _WIDE[im.mode]))
                                         .clip(0, 255).astype(np.uint8))
                im = im.convert(mode)
                if im.size != (w, h):
                    im = im.resize((w, h), Image.Resampling.BILINEAR)
                a = np.asarray(im, dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DataError(f"dataset: {path} is not a readable image ({e})") from None
        return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)

    arrays = {}
    for field, items in listed.items():
        say(f"decoding {len(items):,} {field} images")
        arrays[f"x_{field}"] = np.stack(_map(decode, [p for p, _ in items], progress, f"decoding {field} images"))
        arrays[f"y_{field}"] = np.array([index[c] for _, c in items], dtype=np.int64)
    return arrays, classes, "static"


_GREY = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}  # PIL modes of greyscale images
_WIDE = {"I": 65535, "I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "F": 1.0}  # their full scale


def _map(fn, items: list, progress=None, phase: str = "") -> list:
    """``fn`` over ``items`` in threads: PIL and NumPy release the GIL while they decode and read.

    ``progress(phase, done, len(items))`` is called at the start and after each item, if given.
    """
    if progress is None:
        if len(items) < 64:
            return [fn(i) for i in items]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            return list(pool.map(fn, items, chunksize=64))
    total = len(items)
    progress(phase, 0, total)
    out: list = []
    with contextlib.ExitStack() as stack:
        if total < 64:
            results = map(fn, items)
        else:
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)))
            results = pool.map(fn, items, chunksize=64)
        for r in results:
            out.append(r)
            progress(phase, len(out), total)
    return out


def _load_events(path: Path, field: str) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
        if isinstance(a, np.lib.npyio.NpzFile):
            with a:
                keys = a.files
                key = "events" if "events" in keys else keys[0] if len(keys) == 1 else None
                if key is None:
                    raise DataError(f"dataset.{field}: {path} holds {len(keys)} arrays ({', '.join(keys)}); an event file "
                                    f"holds one (or one named 'events')")
                a = a[key]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        why = "it holds Python objects, which are never unpickled" if "allow_pickle" in str(e) else str(e)
        raise DataError(f"dataset.{field}: {path} is not a readable NumPy event file ({why})") from None
    names = a.dtype.names or ()
    if not set(_EVENT_FIELDS) <= set(names) or a.ndim != 1:
        raise DataError(f"dataset.{field}: {path} holds {'fields ' + ', '.join(names) if names else f'a plain {a.dtype} array'}"
                        f"; event files hold a structured array with fields x, y, t, p (tonic's layout)")
    return a


def _read_events(user: UserData, timesteps: int, say,
                 progress=None) -> tuple[dict[str, np.ndarray], tuple[str, ...], str]:
    import tonic

    listed, classes, index = _class_folders(user)
    sensor = user.sensor_size
    if sensor is None:  # one pass to find the sensor's extent (and check every file)
        say("reading the events to infer the sensor size")

        def extent(item: tuple[Path, str]) -> tuple[int, int, int]:
            e = _load_events(*item)
            return ((int(e["x"].max()), int(e["y"].max()), int((e["p"] > 0).max())) if len(e) else (0, 0, 0))

        ext = np.array(_map(extent, [(p, f) for f in listed for p, _ in listed[f]], progress,
                            "reading the events for the sensor size"))
        sensor = (int(ext[:, 0].max()) + 1, int(ext[:, 1].max()) + 1, 2 if ext[:, 2].max() > 0 else 1)
    w, h, polarities = sensor
    size = user.input_size or (h, w)
    to_frame = tonic.transforms.ToFrame(sensor_size=tuple(sensor), n_time_bins=timesteps)

    def frames(item: tuple[Path, str]) -> np.ndarray:
        path, field = item
        e = _load_events(path, field)
        if len(e) and (e["x"].min() < 0 or e["y"].min() < 0 or e["x"].max() >= w or e["y"].max() >= h):
            raise DataError(f"dataset.sensor_size: {path} has events at x in [{e['x'].min()}, {e['x'].max()}], "
                            f"y in [{e['y'].min()}, {e['y'].max()}], outside the {w}x{h} sensor")
        ev = np.empty(len(e), dtype=[("x", np.int64), ("y", np.int64), ("t", np.int64), ("p", np.int64)])
        ev["x"], ev["y"], ev["t"] = e["x"], e["y"], e["t"]
        ev["p"] = (e["p"] > 0) if polarities > 1 else 0  # polarity as 0/1 (some recorders write -1/1)
        ev = ev[np.argsort(ev["t"], kind="stable")]
        x = torch.zeros(timesteps, polarities, h, w)
        if len(ev):
            f = torch.from_numpy(to_frame(ev).astype(np.float32))  # [T', P, H, W]
            x[:min(timesteps, len(f))] = f[:timesteps]
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="area")
        return x.numpy()

    arrays = {}
    for field, items in listed.items():
        say(f"binning {len(items):,} {field} recordings into {timesteps} frames")
        arrays[f"x_{field}"] = np.stack(_map(frames, [(p, field) for p, _ in items], progress,
                                             f"binning {field} recordings"))
        arrays[f"y_{field}"] = np.array([index[c] for _, c in items], dtype=np.int64)
    return arrays, classes, "frames"


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
