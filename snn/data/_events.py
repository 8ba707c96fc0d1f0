"""Event-camera datasets: CIFAR10-DVS (tonic) and digits-dvs, through one frame pipeline.

Section 5 of Guo et al. (NeurIPS 2024): CIFAR10-DVS split 9k train / 1k test; events
binned into T frames (tonic's ``ToFrame``), 2 polarity channels, frames resized to
48x48; training adds a random horizontal flip and a random roll of up to 5 pixels in x
and y; testing only resizes. Binned frames are cached on disk (the cache key holds T and
the size), so only the first epoch pays for binning; augmentation runs after the cache.

``digits-dvs`` turns scikit-learn's digits into event streams with a simulated event
sensor (the image moves along a short saccade path; a pixel emits an ON/OFF event when
its log intensity has changed by more than a threshold since its last event) in tonic's
structured (x, y, t, p) format, then goes through exactly the same pipeline.

Samples are (float32 tensor [T, 2, H, W], int label).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from snn.data._errors import cleanup_on_failure, not_found, write_whole

__all__ = ["EVENT_DTYPE", "MAX_ROLL", "FrameDataset", "build_cifar10_dvs", "build_digits_dvs", "per_class_split",
           "simulate_saccade_events"]

log = logging.getLogger(__name__)

EVENT_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int8)])
"""tonic's structured event format (x, y, t in microseconds, polarity 0/1)."""

MAX_ROLL = 5  # pixels, in x and y (the paper's "random roll within a range of 5 pixels")

EventSource = Callable[[int], tuple[np.ndarray, int]]


class FrameDataset(Dataset):
    """Events -> T frames (tonic ``ToFrame``) -> resize -> disk cache -> augmentation.

    Args:
        events: ``events(i) -> (structured events, label)`` for each index of the source.
        indices: The source indices of this split.
        labels: Their labels (so a split needs no binning to know them).
        sensor_size: (W, H, polarities) of the sensor, as tonic writes it.
        timesteps: T, the number of frames.
        size: (H, W) of the frames after resizing.
        train: Apply the training augmentation (flip, roll).
        cache_dir: Folder for the binned frames; the caller keys it by T and size.
    """

    def __init__(self, events: EventSource, indices: Sequence[int], labels: Sequence[int],
                 sensor_size: tuple[int, int, int], timesteps: int, size: tuple[int, int], train: bool,
                 cache_dir: str | os.PathLike) -> None:
        if timesteps is None or int(timesteps) < 1:
            raise ValueError(f"timesteps: event datasets need timesteps >= 1, got {timesteps!r}")
        self.events, self.indices, self.labels = events, list(indices), [int(y) for y in labels]
        self.sensor_size, self.timesteps, self.size, self.train = sensor_size, int(timesteps), tuple(size), train
        self.cache_dir = Path(cache_dir)
        self.binned = 0  # how many samples this process had to bin (the rest came from the cache)

    def __len__(self) -> int:
        return len(self.indices)

    def _frames(self, i: int) -> torch.Tensor:
        path = self.cache_dir / f"{self.indices[i]}.npy"
        if path.exists():
            return torch.from_numpy(np.load(path))
        import tonic

        events, _ = self.events(self.indices[i])
        frames = tonic.transforms.ToFrame(sensor_size=self.sensor_size, n_time_bins=self.timesteps)(events)
        x = torch.from_numpy(frames.astype(np.float32))  # [T, P, H_s, W_s]
        if x.shape[0] < self.timesteps:  # a very short stream: pad with empty frames
            x = torch.cat([x, x.new_zeros(self.timesteps - x.shape[0], *x.shape[1:])])
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="area")  # [T, P, H, W]; area: averages event counts
        self.binned += 1
        write_whole(path, lambda f: np.save(f, x.numpy()))
        return x

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self._frames(i)  # [T, 2, H, W]
        if self.train:
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
            dy, dx = torch.randint(-MAX_ROLL, MAX_ROLL + 1, (2,)).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
        return x.contiguous(), self.labels[i]


def per_class_split(labels: Sequence[int], train: bool, *, train_per_class: int = 900,
                    test_per_class: int = 100, seed: int = 0) -> list[int]:
    """A deterministic split: per class, a seeded shuffle, then the first ``train_per_class``
    indices for training and the next ``test_per_class`` for testing (9k/1k on CIFAR10-DVS).

    Classes with fewer samples are split in the same 9:1 proportion.
    """
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_train = min(train_per_class, int(round(len(idx) * train_per_class / (train_per_class + test_per_class))))
        out.extend(idx[:n_train] if train else idx[n_train:n_train + test_per_class])
    return sorted(int(i) for i in out)


def _cache_dir(root: str, name: str, train: bool, timesteps: int, size: tuple[int, int], extra: str = "") -> Path:
    key = f"{name}-T{timesteps}-{size[0]}x{size[1]}{extra}"
    return Path(root) / "cache" / key / ("train" if train else "test")


# -- CIFAR10-DVS ---------------------------------------------------------------------------

CIFAR10_DVS_SIZE = (48, 48)


def build_cifar10_dvs(root: str, train: bool, timesteps: int, download: bool) -> FrameDataset:
    """CIFAR10-DVS through ``tonic.datasets.CIFAR10DVS`` (files in ``root/CIFAR10DVS``)."""
    import tonic

    cls = tonic.datasets.CIFAR10DVS
    where = Path(root) / cls.__name__
    present = (where / cls.filename).exists() and sum(1 for _ in where.glob("**/*.aedat4")) >= 1000
    what = (f"{cls.filename} and its extracted class folders ({', '.join(cls.classes)}) of .aedat4 files "
            f"(in {cls.__name__}/)")
    if not present and not download:
        raise not_found("cifar10-dvs", root, what)
    try:
        with cleanup_on_failure(where):
            source = cls(save_to=root)
    except Exception as e:
        raise not_found("cifar10-dvs", root, what, e) from None
    indices = per_class_split(source.targets, train)

    def events(i: int) -> tuple[np.ndarray, int]:
        return source[i]

    return FrameDataset(events, indices, [source.targets[i] for i in indices], cls.sensor_size, timesteps,
                        CIFAR10_DVS_SIZE, train, _cache_dir(root, "cifar10-dvs", train, timesteps, CIFAR10_DVS_SIZE))


# -- digits-dvs ----------------------------------------------------------------------------

DIGITS_DVS_SENSOR = (32, 32, 2)  # (W, H, P): the 8x8 digit upsampled 3x to 24x24, centred with a margin
DIGITS_DVS_SIZE = (32, 32)
_SACCADE = ((0, 0), (1, 0), (2, 1), (2, 2), (1, 3), (0, 2), (-1, 1), (-1, 0), (0, 0))  # (dx, dy) per step
_STEP_US = 10_000  # microseconds between two saccade positions
_THRESHOLD = 0.25  # log-intensity change that fires an event


def simulate_saccade_events(image: np.ndarray, *, seed: int = 0, threshold: float = _THRESHOLD) -> np.ndarray:
    """Simulate an event sensor watching ``image`` move along a short saccade path.

    Args:
        image: A grey image in [0, 1] of at most 32x32 after 3x upsampling (an 8x8 digit).
        seed: Seeds the sub-step jitter of the timestamps.
        threshold: The log-intensity change since a pixel's last event that fires it.

    Returns:
        Events in :data:`EVENT_DTYPE`, sorted by time: p = 1 (ON) for brighter, 0 (OFF) for darker.
    """
    w, h, _ = DIGITS_DVS_SENSOR
    up = np.kron(np.asarray(image, dtype=np.float64), np.ones((3, 3)))  # 24x24
    canvas = np.zeros((h, w))
    oy, ox = (h - up.shape[0]) // 2 - 1, (w - up.shape[1]) // 2 - 1
    rng = np.random.RandomState(seed)
    eps = 0.05

    def render(dx: int, dy: int) -> np.ndarray:
        c = canvas.copy()
        c[oy + dy:oy + dy + up.shape[0], ox + dx:ox + dx + up.shape[1]] = up
        return np.log(c + eps)

    ref = render(*_SACCADE[0])
    chunks = []
    for step, (dx, dy) in enumerate(_SACCADE[1:], start=1):
        cur = render(dx, dy)
        diff = cur - ref
        for p, mask in ((1, diff > threshold), (0, diff < -threshold)):
            ys, xs = np.nonzero(mask)
            ev = np.empty(len(xs), dtype=EVENT_DTYPE)
            ev["x"], ev["y"], ev["p"] = xs, ys, p
            ev["t"] = step * _STEP_US + rng.randint(0, _STEP_US // 2, len(xs))
            chunks.append(ev)
        fired = np.abs(diff) > threshold
        ref[fired] = cur[fired]
    events = np.concatenate(chunks) if chunks else np.empty(0, dtype=EVENT_DTYPE)
    return events[np.argsort(events["t"], kind="stable")]


def build_digits_dvs(root: str, train: bool, timesteps: int) -> FrameDataset:
    """Event streams simulated from scikit-learn's digits, through the CIFAR10-DVS pipeline."""
    from snn.data._static import digits_split

    images, labels = digits_split(train)
    offset = 0 if train else 100_000  # distinct seeds and cache files for the two splits

    def events(i: int) -> tuple[np.ndarray, int]:
        return simulate_saccade_events(images[i] / 16.0, seed=offset + i), int(labels[i])

    tag = "-" + hashlib.sha1(repr((_SACCADE, _STEP_US, _THRESHOLD)).encode()).hexdigest()[:8]
    return FrameDataset(events, range(len(labels)), labels, DIGITS_DVS_SENSOR, timesteps, DIGITS_DVS_SIZE, train,
                        _cache_dir(root, "digits-dvs", train, timesteps, DIGITS_DVS_SIZE, tag))
