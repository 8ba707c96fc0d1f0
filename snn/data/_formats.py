"""Reading a user's own data in each format (:class:`snn.config.UserData`): an npz file, an
``ImageFolder`` tree of images, or a tree of event recordings binned into T frames.

Each reader returns the arrays of the splits the spec names (``x_train``, ``y_train`` and,
where given, ``x_test``, ``y_test``), the class names and the sample kind (``"static"`` or
``"frames"``); :func:`snn.data._user.prepare` splits, checks and caches them. A path that is
missing or unreadable raises :class:`~snn.data.DatasetNotFoundError`, content that can never
train :class:`~snn.data.DataError`, each one line naming the spec's field and the file.
Pickled content is never loaded (``allow_pickle=False``).
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from snn.config import UserData
from snn.data._errors import DataError, DatasetNotFoundError

__all__ = ["class_files", "existing", "read_events", "read_images", "read_npz"]

_EVENT_FIELDS = ("x", "y", "t", "p")
_EVENT_SUFFIXES = (".npy", ".npz")

Say = Callable[[str], None]  # a line of progress
Progress = Callable[[str, int, int], None] | None  # (phase, done, total), as prepare's progress
Read = tuple[dict[str, np.ndarray], tuple[str, ...], str]  # (arrays, class names, sample kind)


def existing(where: str, field: str, *, folder: bool) -> Path:
    """The spec's path ``where`` (of ``dataset.<field>``), resolved, once it is a readable
    folder (``folder``) or file."""
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


def class_files(root: Path, field: str, fmt: str) -> list[tuple[Path, str]]:
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


def read_npz(user: UserData, timesteps: int) -> Read:
    """The npz files' samples (``x``) and labels (``y``); the classes are 0..K-1 of the training labels."""
    arrays, kinds = {}, set()
    for field in ("train", "test"):
        if getattr(user, field) is None:
            continue
        path = existing(getattr(user, field), field, folder=False)
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
            listed[field] = class_files(existing(getattr(user, field), field, folder=True), field, user.format)
    classes = tuple(sorted({c for _, c in listed["train"]}))
    if "test" in listed:
        extra = sorted({c for _, c in listed["test"]} - set(classes))
        if extra:
            raise DataError(f"dataset.test: class folder(s) {extra} have no counterpart in dataset.train "
                            f"({user.train}); the classes are the training folder's")
    return listed, classes, {c: i for i, c in enumerate(classes)}


def read_images(user: UserData, say: Say, progress: Progress = None) -> Read:
    """The class folders' images, decoded to uint8 (greyscale where every image is, else RGB)."""
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


def read_events(user: UserData, timesteps: int, say: Say, progress: Progress = None) -> Read:
    """The class folders' event recordings, binned into ``timesteps`` frames with tonic's ``ToFrame``."""
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
