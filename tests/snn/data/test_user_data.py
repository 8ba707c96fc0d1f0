"""A user's own data (``dataset: {format: npz | imagefolder | events, ...}``): the checks on
bad input, the prepared arrays, the cache, serving to training, and one short training run.

Expected values are computed here, independently of :mod:`snn.data._user`: NumPy's mean
and standard deviation, PIL's decoding of the files, tonic's ``ToFrame`` on the events.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from snn import data
from snn.config import UserData
from snn.data import _formats
from snn.data._events import simulate_saccade_events


# -- helpers -----------------------------------------------------------------------------------

def save_npz(path: Path, **arrays: Any) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return str(path)


def digits(n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's real 8x8 digits as uint8 [N, 8, 8] (0..255) and int labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255 / 16)).astype(np.uint8)
    return (x, d.target) if n is None else (x[:n], d.target[:n])


def no_cache(root: Path) -> None:
    """Nothing (not even a hidden temporary folder) was written under ``root/cache``."""
    cache = root / "cache"
    assert not cache.exists() or list(cache.iterdir()) == []


def load_all(ds, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sample of ``ds`` through a DataLoader (which calls ``__getitems__``), in order."""
    xs, ys = zip(*DataLoader(ds, batch_size=batch_size, shuffle=False))
    return torch.cat(xs), torch.cat(ys)


def write_png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array)
    (im.convert(mode) if mode else im).save(path)


def write_events(path: Path, events: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        np.savez(path, events=events)
    else:
        np.save(path, events)


# -- 1. bad input: one line, the right class, the field and the file, no cache --------------------

@dataclass
class Case:
    spec: dict[str, Any]
    exc: type[Exception]
    field: str  # "dataset.train", ...
    file: str  # the file (or folder) the message must name
    needles: tuple[str, ...] = ()  # more the message must say
    timesteps: int = 2


def _static_pair(tmp: Path, n: int = 30, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(0)
    return rng.randint(0, 256, (n, 8, 8)).astype(np.uint8), np.arange(n) % k


def case_missing_train(tmp: Path) -> Case:
    p = tmp / "nope.npz"
    return Case({"format": "npz", "train": str(p), "test_fraction": 0.2}, data.DatasetNotFoundError,
                "dataset.train", str(p))


def case_missing_test(tmp: Path) -> Case:
    x, y = _static_pair(tmp)
    p = tmp / "missing-test.npz"
    return Case({"format": "npz", "train": save_npz(tmp / "tr.npz", x=x, y=y), "test": str(p)},
                data.DatasetNotFoundError, "dataset.test", str(p))


def case_missing_folder(tmp: Path) -> Case:
    p = tmp / "no-such-folder"
    return Case({"format": "imagefolder", "train": str(p), "test_fraction": 0.2}, data.DatasetNotFoundError,
                "dataset.train", str(p))


def case_npz_without_x(tmp: Path) -> Case:
    x, y = _static_pair(tmp)
    p = save_npz(tmp / "nox.npz", images=x, y=y)
    return Case({"format": "npz", "train": p, "test_fraction": 0.2}, data.DataError, "dataset.train", p,
                ("images", "'x'"))


def case_npz_without_y(tmp: Path) -> Case:
    x, y = _static_pair(tmp)
    p = save_npz(tmp / "noy.npz", x=x, labels=y)
    return Case({"format": "npz", "train": p, "test_fraction": 0.2}, data.DataError, "dataset.train", p,
                ("labels", "'y'"))


def case_lengths_differ(tmp: Path) -> Case:
    x, y = _static_pair(tmp)
    p = save_npz(tmp / "len.npz", x=x, y=y[:-1])
    return Case({"format": "npz", "train": p, "test_fraction": 0.2}, data.DataError, "dataset.train", p,
                (str(len(x)), str(len(y) - 1)))


def case_negative_label(tmp: Path) -> Case:
    x, y = _static_pair(tmp)
    y = y.copy()
    y[4] = -1
    p = save_npz(tmp / "neg.npz", x=x, y=y)
    return Case({"format": "npz", "train": p, "test_fraction": 0.2}, data.DataError, "dataset.train", p, ("-1",))


def case_label_gap(tmp: Path) -> Case:
    x, _ = _static_pair(tmp)
    y = np.where(np.arange(len(x)) % 2 == 0, 0, 2)  # labels {0, 2}: class 1 missing
    p = save_npz(tmp / "gap.npz", x=x, y=y)
    return Case({"format": "npz", "train": p, "test_fraction": 0.2}, data.DataError, "dataset.train", p, ("1",))


def case_one_class(tmp: Path) -> Case:
    x, _ = _static_pair(tmp)
    p = save_npz(tmp / "one.npz", x=x, y=np.zeros(len(x), dtype=np.int64))
    return Case({"format": "npz", "train": p, "test_fraction": 0.2}, data.DataError, "dataset.train", p,
                ("two",))


def case_test_file_lacks_a_class(tmp: Path) -> Case:
    x, y = _static_pair(tmp)
    te = save_npz(tmp / "te.npz", x=x[y < 2], y=y[y < 2])  # no sample of class 2
    return Case({"format": "npz", "train": save_npz(tmp / "tr.npz", x=x, y=y), "test": te}, data.DataError,
                "dataset.test", te, ("2",))


def case_single_sample_class_with_test_fraction(tmp: Path) -> Case:
    x, _ = _static_pair(tmp, n=21)
    y = np.array([0] * 10 + [1] * 10 + [2])  # class 2: one sample, nothing to hold out
    p = save_npz(tmp / "single.npz", x=x, y=y)
    return Case({"format": "npz", "train": p, "test_fraction": 0.2}, data.DataError, "dataset.test", p, ("2",))


def case_mixed_image_sizes(tmp: Path) -> Case:
    root = tmp / "mixed"
    rng = np.random.RandomState(0)
    for c in ("a", "b"):
        write_png(root / c / "0.png", rng.randint(0, 256, (8, 8, 3)).astype(np.uint8))
    write_png(root / "a" / "1.png", rng.randint(0, 256, (8, 8, 3)).astype(np.uint8))
    odd = root / "b" / "1.png"
    write_png(odd, rng.randint(0, 256, (10, 12, 3)).astype(np.uint8))
    return Case({"format": "imagefolder", "train": str(root), "test_fraction": 0.5}, data.DataError,
                "dataset.input_size", str(odd), ("input_size",))


def case_events_without_fields(tmp: Path) -> Case:
    root = tmp / "ev"
    good = simulate_saccade_events(digits(1)[0][0] / 255.0, seed=0)
    write_events(root / "a" / "0.npy", good)
    write_events(root / "a" / "1.npy", good)
    bad = np.zeros(5, dtype=[("col", np.int16), ("row", np.int16), ("ts", np.int64), ("pol", np.int8)])
    write_events(root / "b" / "0.npy", bad)
    write_events(root / "b" / "1.npy", good)
    return Case({"format": "events", "train": str(root), "test_fraction": 0.5}, data.DataError, "dataset.train",
                str(root / "b" / "0.npy"), ("col", "x, y, t, p"))


def case_npy_for_npz(tmp: Path) -> Case:
    p = tmp / "plain.npy"
    np.save(p, np.zeros((10, 8, 8), dtype=np.uint8))
    return Case({"format": "npz", "train": str(p), "test_fraction": 0.2}, data.DataError, "dataset.train", str(p),
                (".npy",))


def case_frames_with_other_t(tmp: Path) -> Case:
    rng = np.random.RandomState(0)
    x = rng.randint(0, 3, (12, 3, 2, 8, 8)).astype(np.float32)  # [N, T=3, C, H, W]
    p = save_npz(tmp / "frames.npz", x=x, y=np.arange(12) % 2)
    return Case({"format": "npz", "train": p, "test_fraction": 0.5}, data.DataError, "dataset.train", p,
                ("set timesteps: 3",), timesteps=2)


def case_folder_for_npz(tmp: Path) -> Case:
    d = tmp / "a-folder"
    d.mkdir()
    return Case({"format": "npz", "train": str(d), "test_fraction": 0.2}, data.DataError, "dataset.train", str(d),
                ("folder",))


def case_file_for_imagefolder(tmp: Path) -> Case:
    x, y = _static_pair(tmp)
    p = save_npz(tmp / "images.npz", x=x, y=y)
    return Case({"format": "imagefolder", "train": p, "test_fraction": 0.2}, data.DataError, "dataset.train", p,
                ("file",))


def case_file_for_events(tmp: Path) -> Case:
    p = tmp / "one-recording.npy"
    np.save(p, simulate_saccade_events(digits(1)[0][0] / 255.0))
    return Case({"format": "events", "train": str(p), "test_fraction": 0.2}, data.DataError, "dataset.train",
                str(p), ("file",))



CASES: dict[str, Callable[[Path], Case]] = {
    "missing train file": case_missing_train,
    "missing test file": case_missing_test,
    "missing folder": case_missing_folder,
    "npz without x": case_npz_without_x,
    "npz without y": case_npz_without_y,
    "x and y lengths differ": case_lengths_differ,
    "negative label": case_negative_label,
    "labels with a gap": case_label_gap,
    "one class": case_one_class,
    "test file lacks a class": case_test_file_lacks_a_class,
    "test_fraction, single-sample class": case_single_sample_class_with_test_fraction,
    "mixed image sizes": case_mixed_image_sizes,
    "events without x, y, t, p": case_events_without_fields,
    "npy given for npz": case_npy_for_npz,
    "frames with another T": case_frames_with_other_t,
    "folder given for npz": case_folder_for_npz,
    "file given for imagefolder": case_file_for_imagefolder,
    "file given for events": case_file_for_events,
}

def _params() -> list:
    return [pytest.param(name, id=name) for name in CASES]


@pytest.mark.parametrize("name", _params())
def test_bad_input_is_one_line_naming_the_field_and_writes_no_cache(tmp_path, name):
    (tmp_path / "in").mkdir()
    case = CASES[name](tmp_path / "in")
    root = tmp_path / "root"
    with pytest.raises(case.exc) as e:
        data.prepare(UserData(**case.spec), root, case.timesteps)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(case.field + ":"), msg
    for needle in case.needles:
        assert needle in msg, (needle, msg)
    if case.exc is data.DatasetNotFoundError:
        assert isinstance(e.value, OSError) and isinstance(e.value, FileNotFoundError)
    else:
        assert isinstance(e.value, ValueError) and not isinstance(e.value, OSError)
    no_cache(root)


@pytest.mark.parametrize("name", _params())
def test_bad_input_names_the_file(tmp_path, name):
    (tmp_path / "in").mkdir()
    case = CASES[name](tmp_path / "in")
    with pytest.raises(case.exc) as e:
        data.prepare(UserData(**case.spec), tmp_path / "root", case.timesteps)
    assert str(Path(case.file).resolve()) in str(e.value) or case.file in str(e.value), str(e.value)


def test_events_file_error_names_the_field(tmp_path):
    (tmp_path / "in").mkdir()
    case = case_events_without_fields(tmp_path / "in")
    with pytest.raises(data.DataError, match=r"^dataset\.train: "):
        data.prepare(UserData(**case.spec), tmp_path / "root", 2)


def test_test_label_outside_the_training_classes_names_dataset_test(tmp_path):
    x, y = _static_pair(tmp_path)
    tr = save_npz(tmp_path / "tr.npz", x=x, y=y)  # classes 0, 1, 2
    te = save_npz(tmp_path / "te.npz", x=x[:4], y=np.array([0, 1, 2, 5]))
    with pytest.raises(data.DataError, match=r"^dataset\.test: "):
        data.prepare(UserData(format="npz", train=tr, test=te), tmp_path / "root", 2)


def test_mixed_image_sizes_pass_with_input_size(tmp_path):
    (tmp_path / "in").mkdir()
    case = case_mixed_image_sizes(tmp_path / "in")
    p = data.prepare(UserData(**case.spec, input_size=(9, 7)), tmp_path / "root", 2)
    assert p.x_train.shape[1:] == (3, 9, 7) and p.x_test.shape[1:] == (3, 9, 7)
    assert len(p.y_train) + len(p.y_test) == 4


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
@pytest.mark.parametrize("fmt", ["npz", "imagefolder"])
def test_unreadable_path(tmp_path, fmt):
    if fmt == "npz":
        x, y = _static_pair(tmp_path)
        target = Path(save_npz(tmp_path / "locked.npz", x=x, y=y))
    else:
        target = tmp_path / "locked"
        write_png(target / "a" / "0.png", np.zeros((8, 8), np.uint8))
        write_png(target / "b" / "0.png", np.zeros((8, 8), np.uint8))
    target.chmod(0)
    try:
        with pytest.raises(data.DatasetNotFoundError) as e:
            data.prepare(UserData(format=fmt, train=str(target), test_fraction=0.5), tmp_path / "root", 2)
    finally:
        target.chmod(0o755)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("dataset.train:") and str(target.resolve()) in msg
    no_cache(tmp_path / "root")


@pytest.mark.parametrize("fmt", ["npz", "imagefolder"])
def test_unreadable_path_as_seen_by_os_access(tmp_path, monkeypatch, fmt):
    """The same check where the tests run as root: the path reported unreadable by os.access."""
    if fmt == "npz":
        x, y = _static_pair(tmp_path)
        target = Path(save_npz(tmp_path / "locked.npz", x=x, y=y))
    else:
        target = tmp_path / "locked"
        write_png(target / "a" / "0.png", np.zeros((8, 8), np.uint8))
        write_png(target / "b" / "0.png", np.zeros((8, 8), np.uint8))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == target.resolve()
                        else real_access(p, mode, **kw))
    with pytest.raises(data.DatasetNotFoundError) as e:
        data.prepare(UserData(format=fmt, train=str(target), test_fraction=0.5), tmp_path / "root", 2)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("dataset.train:") and str(target.resolve()) in msg
    no_cache(tmp_path / "root")


class _Trap:
    """Unpickling this creates ``marker``: proof that pickled content was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("key", ["x", "y"])
def test_pickled_npz_is_refused_and_never_unpickled(tmp_path, key):
    marker = tmp_path / "unpickled"
    objects = np.empty(20, dtype=object)
    objects[:] = [_Trap(marker)] * 20
    x, y = _static_pair(tmp_path, n=20, k=2)
    arrays = {"x": x, "y": y, key: objects}
    p = save_npz(tmp_path / "pickled.npz", **arrays)
    root = tmp_path / "root"
    with pytest.raises(data.DataError) as e:
        data.prepare(UserData(format="npz", train=p, test_fraction=0.5), root, 2)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("dataset.train:") and p in msg
    assert not marker.exists()
    no_cache(root)
    with np.load(p, allow_pickle=True) as f:  # the trap is live: loading with pickles does create the marker
        f[key]
    assert marker.exists()


def test_pickled_event_file_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    root = tmp_path / "ev"
    good = simulate_saccade_events(digits(1)[0][0] / 255.0)
    for c in ("a", "b"):
        write_events(root / c / "0.npy", good)
        write_events(root / c / "1.npy", good)
    objects = np.empty(3, dtype=object)
    objects[:] = [_Trap(marker)] * 3
    np.save(root / "b" / "2.npy", objects, allow_pickle=True)
    with pytest.raises(data.DataError) as e:
        data.prepare(UserData(format="events", train=str(root), test_fraction=0.5), tmp_path / "root", 2)
    assert "\n" not in str(e.value) and str(root / "b" / "2.npy") in str(e.value)
    assert not marker.exists()
    no_cache(tmp_path / "root")


# -- 2. correct preparation ----------------------------------------------------------------------

def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) std of x [N, (T,) C, H, W], scaled to [0, 1] if uint8."""
    a = x.astype(np.float64) / (255.0 if x.dtype == np.uint8 else 1.0)
    axes = tuple(i for i in range(a.ndim) if i != a.ndim - 3)
    return a.mean(axis=axes), a.std(axis=axes)


def test_npz_uint8_greyscale(tmp_path):
    x, y = digits(400)
    tr = save_npz(tmp_path / "train.npz", x=x[:300], y=y[:300])
    te = save_npz(tmp_path / "test.npz", x=x[300:], y=y[300:])
    p = data.prepare(UserData(format="npz", train=tr, test=te), tmp_path / "root", 2)
    assert p.kind == "static" and p.classes == tuple(str(i) for i in range(10)) and p.name == "train"
    assert p.x_train.shape == (300, 1, 8, 8) and p.x_train.dtype == np.uint8
    assert p.x_test.shape == (100, 1, 8, 8) and p.x_test.dtype == np.uint8
    np.testing.assert_array_equal(p.x_train[:, 0], x[:300])
    np.testing.assert_array_equal(p.x_test[:, 0], x[300:])
    assert p.y_train.dtype == np.int64 and p.y_test.dtype == np.int64
    np.testing.assert_array_equal(p.y_train, y[:300])
    np.testing.assert_array_equal(p.y_test, y[300:])
    mean, std = x[:300].astype(np.float64).mean() / 255, (x[:300].astype(np.float64) / 255).std()
    np.testing.assert_allclose(p.mean, [mean], rtol=1e-9)
    np.testing.assert_allclose(p.std, [std], rtol=1e-9)
    assert Path(p.path).parent == (tmp_path / "root" / "cache").resolve()
    assert "10 classes" in p.describe() and "\n" not in p.describe()


def test_npz_rgb_stats_are_per_channel(tmp_path):
    rng = np.random.RandomState(1)
    x = rng.randint(0, 256, (90, 3, 6, 5)).astype(np.uint8)
    x[:, 0] //= 4  # channels with different means and spreads
    x[:, 2] = 200 + x[:, 2] // 8
    p = data.prepare(UserData(format="npz", train=save_npz(tmp_path / "rgb.npz", x=x, y=np.arange(90) % 3),
                              test_fraction=0.2), tmp_path / "root", 2)
    assert p.x_train.shape[1:] == (3, 6, 5) and p.in_channels == 3 and p.input_size == (6, 5)
    want_mean, want_std = _channel_stats(np.asarray(p.x_train))
    np.testing.assert_allclose(p.mean, want_mean, rtol=1e-9)
    np.testing.assert_allclose(p.std, want_std, rtol=1e-9)
    assert len(set(np.round(p.mean, 3))) == 3


def _split_of(tmp_path: Path, root: str, seed: int, x: np.ndarray, y: np.ndarray, fraction: float):
    path = tmp_path / "split.npz"
    if not path.exists():
        save_npz(path, x=x, y=y)
    return data.prepare(UserData(format="npz", train=str(path), test_fraction=fraction, split_seed=seed),
                        tmp_path / root, 2)


def test_test_fraction_split_is_stratified_whole_and_seeded(tmp_path):
    counts = [40, 13, 7, 2]
    y = np.repeat(np.arange(4), counts)
    rng = np.random.RandomState(0)
    y = y[rng.permutation(len(y))]
    n = len(y)
    x = np.zeros((n, 4, 4), dtype=np.uint8)
    x[:, 0, 0] = np.arange(n)  # each sample carries its index
    fraction = 0.25
    a = _split_of(tmp_path, "root-a", 0, x, y, fraction)
    ids_tr, ids_te = a.x_train[:, 0, 0, 0].astype(int), a.x_test[:, 0, 0, 0].astype(int)
    assert sorted([*ids_tr, *ids_te]) == list(range(n))  # every sample exactly once
    np.testing.assert_array_equal(a.y_train, y[ids_tr])  # labels travel with their samples
    np.testing.assert_array_equal(a.y_test, y[ids_te])
    per_class = np.bincount(a.y_test, minlength=4)
    assert np.all(per_class >= 1) and np.all(np.bincount(a.y_train, minlength=4) >= 1)
    assert np.all(np.abs(per_class - fraction * np.array(counts)) <= 1), per_class
    assert per_class[0] == 10  # 25% of 40
    again = _split_of(tmp_path, "root-b", 0, x, y, fraction)  # a fresh preparation, same seed
    np.testing.assert_array_equal(again.x_test, a.x_test)
    np.testing.assert_array_equal(again.x_train, a.x_train)
    other = _split_of(tmp_path, "root-c", 1, x, y, fraction)
    assert set(other.x_test[:, 0, 0, 0].tolist()) != set(ids_te.tolist())
    assert np.bincount(other.y_test, minlength=4).tolist() == per_class.tolist()
    assert other.path != a.path  # the seed is part of the cache's key


def test_input_size_resizes_and_float_stays_float32(tmp_path):
    values = np.arange(20, dtype=np.uint8) * 12
    x = np.broadcast_to(values[:, None, None], (20, 8, 8)).copy()  # constant images
    p = data.prepare(UserData(format="npz", train=save_npz(tmp_path / "u8.npz", x=x, y=np.arange(20) % 2),
                              test_fraction=0.2, input_size=(12, 5)), tmp_path / "root", 2)
    assert p.x_train.shape[1:] == (1, 12, 5) and p.x_test.shape[1:] == (1, 12, 5) and p.x_train.dtype == np.uint8
    for xs in (p.x_train, p.x_test):  # a constant image resizes to the same constant
        assert np.all(xs == xs[:, :, :1, :1])
    assert sorted([*p.x_train[:, 0, 0, 0], *p.x_test[:, 0, 0, 0]]) == sorted(values.tolist())

    rng = np.random.RandomState(0)
    xf = rng.normal(3.0, 2.0, (20, 2, 8, 8))  # float64 in the file
    f = data.prepare(UserData(format="npz", train=save_npz(tmp_path / "f.npz", x=xf, y=np.arange(20) % 2),
                              test_fraction=0.2), tmp_path / "root", 2)
    assert f.x_train.dtype == np.float32 and f.x_test.dtype == np.float32
    got = np.concatenate([f.x_train, f.x_test])
    want = xf.astype(np.float32)
    assert sorted(map(bytes, got)) == sorted(map(bytes, want))  # the same samples, exactly
    want_mean, want_std = _channel_stats(np.asarray(f.x_train))  # not divided by 255
    np.testing.assert_allclose(f.mean, want_mean, rtol=1e-6)
    np.testing.assert_allclose(f.std, want_std, rtol=1e-6)
    r = data.prepare(UserData(format="npz", train=str(tmp_path / "f.npz"), test_fraction=0.2, input_size=(4, 6)),
                     tmp_path / "root", 2)
    assert r.x_train.dtype == np.float32 and r.x_train.shape[1:] == (2, 4, 6)


def _image_tree(root: Path, classes: dict[str, list[tuple[np.ndarray, str | None]]]) -> list[tuple[Path, str]]:
    """Write PNGs (array, PIL mode) under root/<class>/<i>.png; return (file, class) in ImageFolder order."""
    out = []
    for c, images in classes.items():
        for i, (a, mode) in enumerate(images):
            path = root / c / f"{i}.png"
            write_png(path, a, mode)
            out.append((path, c))
    return sorted(out, key=lambda pc: (pc[1], pc[0].name))


@pytest.mark.parametrize("colour", [True, False], ids=["rgb", "greyscale"])
def test_image_folder(tmp_path, colour):
    from PIL import Image

    rng = np.random.RandomState(0)
    names = ["zebra", "ant", "Moth"]  # sorted: Moth, ant, zebra

    def img(h, w):
        return (rng.randint(0, 256, (h, w, 3)).astype(np.uint8), None) if colour else (
            rng.randint(0, 256, (h, w)).astype(np.uint8), None)

    train = {c: [img(10, 12), img(10, 12), img(7, 9)] for c in names}
    if colour:
        train["ant"].append((rng.randint(0, 256, (10, 12)).astype(np.uint8), None))  # one greyscale among RGB
    test = {c: [img(10, 12)] for c in names}
    files_tr = _image_tree(tmp_path / "train", train)
    files_te = _image_tree(tmp_path / "test", test)
    p = data.prepare(UserData(format="imagefolder", train=str(tmp_path / "train"), test=str(tmp_path / "test"),
                              input_size=(10, 12)), tmp_path / "root", 2)
    channels = 3 if colour else 1
    assert p.classes == ("Moth", "ant", "zebra")
    assert p.kind == "static" and p.x_train.dtype == np.uint8
    assert p.x_train.shape == (len(files_tr), channels, 10, 12) and p.x_test.shape == (3, channels, 10, 12)
    mode = "RGB" if colour else "L"
    for xs, ys, files in ((p.x_train, p.y_train, files_tr), (p.x_test, p.y_test, files_te)):
        assert ys.tolist() == [p.classes.index(c) for _, c in files]
        for got, (path, _) in zip(xs, files):
            with Image.open(path) as im:
                im = im.convert(mode)
                if im.size != (12, 10):
                    im = im.resize((12, 10), Image.Resampling.BILINEAR)
                want = np.asarray(im)
            want = want[None] if want.ndim == 2 else want.transpose(2, 0, 1)
            np.testing.assert_array_equal(got, want, err_msg=str(path))
    info = data.info(UserData(format="imagefolder", train=str(tmp_path / "train"), test=str(tmp_path / "test"),
                              input_size=(10, 12)), p)
    assert (info.num_classes, info.in_channels, info.input_size, info.kind) == (3, channels, (10, 12), "static")


def test_image_folder_keeps_colour_of_palette_images(tmp_path):
    rng = np.random.RandomState(0)
    for c in ("a", "b"):
        for i in range(2):
            write_png(tmp_path / "tr" / c / f"{i}.png", rng.randint(0, 256, (8, 8, 3)).astype(np.uint8), "P")
    p = data.prepare(UserData(format="imagefolder", train=str(tmp_path / "tr"), test_fraction=0.5),
                     tmp_path / "root", 2)
    assert p.in_channels == 3


def test_image_folder_16_bit_greyscale_is_not_saturated(tmp_path):
    rng = np.random.RandomState(0)
    for c in ("a", "b"):
        for i in range(2):
            write_png(tmp_path / "tr" / c / f"{i}.png", rng.randint(0, 65536, (8, 8)).astype(np.uint16))
    p = data.prepare(UserData(format="imagefolder", train=str(tmp_path / "tr"), test_fraction=0.5),
                     tmp_path / "root", 2)
    assert np.mean(np.concatenate([p.x_train, p.x_test]) == 255) < 0.5


def _event_tree(root: Path, which: dict[str, list[int]], images: np.ndarray, npz_first: bool = False):
    """One recording per digit image under root/<class>/; (file, class, events) in sorted order."""
    out = []
    for c, idx in which.items():
        for j, i in enumerate(idx):
            ev = simulate_saccade_events(images[i] / 255.0, seed=int(i))
            assert len(ev) > 0
            path = root / c / f"{j:02d}{'.npz' if npz_first and j == 0 else '.npy'}"
            write_events(path, ev)
            out.append((path, c, ev))
    return sorted(out, key=lambda r: (r[1], r[0].name))


@pytest.mark.parametrize("sensor", [None, (40, 36, 2)], ids=["inferred-sensor", "explicit-sensor"])
def test_events_are_binned_as_tonic_does(tmp_path, sensor):
    import tonic

    x, y = digits(60)
    zeros, ones = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    tr = _event_tree(tmp_path / "train", {"zero": zeros[:3].tolist(), "one": ones[:3].tolist()}, x, npz_first=True)
    te = _event_tree(tmp_path / "test", {"zero": zeros[3:5].tolist(), "one": ones[3:5].tolist()}, x)
    T = 3
    user = UserData(format="events", train=str(tmp_path / "train"), test=str(tmp_path / "test"),
                    sensor_size=sensor)
    p = data.prepare(user, tmp_path / "root", T)
    if sensor is None:
        everything = [e for _, _, e in tr + te]
        sensor = (max(int(e["x"].max()) for e in everything) + 1, max(int(e["y"].max()) for e in everything) + 1, 2)
    w, h, _ = sensor
    assert p.kind == "frames" and p.classes == ("one", "zero")
    assert p.x_train.shape == (6, T, 2, h, w) and p.x_test.shape == (4, T, 2, h, w)
    to_frame = tonic.transforms.ToFrame(sensor_size=sensor, n_time_bins=T)
    for xs, ys, files in ((p.x_train, p.y_train, tr), (p.x_test, p.y_test, te)):
        assert ys.tolist() == [p.classes.index(c) for _, c, _ in files]
        for got, (path, _, ev) in zip(xs, files):
            np.testing.assert_array_equal(got, to_frame(ev).astype(np.float32), err_msg=str(path))
    info = data.info(user, p)
    assert (info.num_classes, info.in_channels, info.input_size, info.kind) == (2, 2, (h, w), "frames")


def test_events_outside_the_sensor_name_sensor_size(tmp_path):
    x, y = digits(60)
    _event_tree(tmp_path / "train", {"zero": np.flatnonzero(y == 0)[:2].tolist(),
                                     "one": np.flatnonzero(y == 1)[:2].tolist()}, x)
    with pytest.raises(data.DataError) as e:
        data.prepare(UserData(format="events", train=str(tmp_path / "train"), test_fraction=0.5,
                              sensor_size=(10, 10, 2)), tmp_path / "root", 2)
    assert str(e.value).startswith("dataset.sensor_size:") and "\n" not in str(e.value)
    no_cache(tmp_path / "root")


# -- 3. the cache --------------------------------------------------------------------------------

def _npz_user(tmp_path: Path, **kw) -> UserData:
    x, y = digits(200)
    if not (tmp_path / "d.npz").exists():
        save_npz(tmp_path / "d.npz", x=x, y=y)
    return UserData(format="npz", train=str(tmp_path / "d.npz"), test_fraction=0.25, **kw)


def test_second_prepare_reads_the_cache(tmp_path, monkeypatch):
    user, root = _npz_user(tmp_path), tmp_path / "root"
    first = data.prepare(user, root, 2)

    def no_reading(*a, **k):
        raise AssertionError("read the npz again")

    monkeypatch.setattr(_formats, "read_npz", no_reading)
    second = data.prepare(user, root, 2)
    assert second.path == first.path
    for k in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(second, k), getattr(first, k))
    assert (second.mean, second.std, second.classes) == (first.mean, first.std, first.classes)
    assert [p.name for p in (root / "cache").iterdir()] == [Path(first.path).name]  # no temporary left


def test_rewritten_source_gets_a_new_cache(tmp_path, monkeypatch):
    user, root = _npz_user(tmp_path), tmp_path / "root"
    first = data.prepare(user, root, 2)
    src = tmp_path / "d.npz"
    st = src.stat()
    x, y = digits(200)
    np.savez(src, x=255 - x, y=y)  # the same shapes, hence the same size: new content
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert src.stat().st_size == st.st_size
    second = data.prepare(user, root, 2)
    assert second.path != first.path
    np.testing.assert_array_equal(np.asarray(second.x_train), 255 - np.asarray(first.x_train))
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))  # only touched: prepared again too
    monkeypatch.setattr(_formats, "read_npz", lambda *a: (_ for _ in ()).throw(RuntimeError("read")))
    with pytest.raises(RuntimeError, match="read"):
        data.prepare(user, root, 2)


def test_load_prepared_is_memory_mapped_and_prepared_pickles(tmp_path):
    p = data.prepare(_npz_user(tmp_path), tmp_path / "root", 2)
    loaded = data.load_prepared(p.path)
    for k in ("x_train", "y_train", "x_test", "y_test"):
        assert isinstance(getattr(loaded, k), np.memmap), k
        assert isinstance(getattr(p, k), np.memmap), k  # prepare() returns the cache, mapped
    back = pickle.loads(pickle.dumps(p))
    assert isinstance(back, data.Prepared)
    assert (back.name, back.kind, back.classes, back.mean, back.std, back.path) == (
        p.name, p.kind, p.classes, p.mean, p.std, p.path)
    for k in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(np.asarray(getattr(back, k)), np.asarray(getattr(p, k)))
    user = _npz_user(tmp_path)
    torch.testing.assert_close(load_all(back.dataset(user, False))[0], load_all(p.dataset(user, False))[0])


def test_load_prepared_of_a_non_cache_folder(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as e:
        data.load_prepared(tmp_path)
    assert "\n" not in str(e.value) and str(tmp_path) in str(e.value)


# -- 4. serving ----------------------------------------------------------------------------------

def _rgb_user(tmp_path: Path, **kw) -> tuple[UserData, np.ndarray]:
    rng = np.random.RandomState(3)
    x = rng.randint(0, 256, (150, 3, 8, 8)).astype(np.uint8)
    x[:, 1] //= 3
    path = tmp_path / "rgb.npz"
    if not path.exists():
        save_npz(path, x=x, y=np.arange(150) % 3)
    return UserData(format="npz", train=str(path), test_fraction=0.2, **kw), x


def test_auto_normalization_standardizes_static_data(tmp_path):
    user, _ = _rgb_user(tmp_path)
    p = data.prepare(user, tmp_path / "root", 2)
    xtr, ytr = load_all(p.dataset(user, train=True))
    assert xtr.shape == (len(p.y_train), 3, 8, 8) and xtr.dtype == torch.float32
    assert ytr.tolist() == p.y_train.tolist()
    per = xtr.double().transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(per.mean(1), torch.zeros(3, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(per.std(1, unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)
    # the test split is standardized with the training split's statistics
    mean, std = _channel_stats(np.asarray(p.x_train))
    xte, _ = load_all(p.dataset(user, train=False))
    want = (np.asarray(p.x_test) / 255.0 - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(xte.numpy(), want, atol=1e-5)


def test_normalize_none_scales_uint8_to_unit_range(tmp_path):
    user, _ = _rgb_user(tmp_path, normalize="none")
    p = data.prepare(user, tmp_path / "root", 2)
    xtr, _ = load_all(p.dataset(user, train=True))
    assert float(xtr.min()) >= 0 and float(xtr.max()) <= 1 and float(xtr.max()) > 0.99
    np.testing.assert_allclose(xtr.numpy(), np.asarray(p.x_train) / 255.0, atol=1e-7)


def _event_user(tmp_path: Path, **kw) -> UserData:
    x, y = digits(60)
    if not (tmp_path / "ev").exists():
        _event_tree(tmp_path / "ev", {"zero": np.flatnonzero(y == 0)[:4].tolist(),
                                      "one": np.flatnonzero(y == 1)[:4].tolist()}, x)
    return UserData(format="events", train=str(tmp_path / "ev"), test_fraction=0.25, **kw)


def test_frames_stay_counts_with_auto_and_standardize_on_request(tmp_path):
    user = _event_user(tmp_path)
    p = data.prepare(user, tmp_path / "root", 3)
    for train, stored in ((True, p.x_train), (False, p.x_test)):
        got, _ = load_all(p.dataset(user, train=train))
        np.testing.assert_array_equal(got.numpy(), np.asarray(stored))
    assert float(np.asarray(p.x_train).max()) >= 1  # counts, not scaled
    std_user = _event_user(tmp_path, normalize="standardize")
    got, _ = load_all(p.dataset(std_user, train=True))
    per = got.double().transpose(0, 2).reshape(2, -1)  # [T, N, C, ...] -> per channel
    torch.testing.assert_close(per.mean(1), torch.zeros(2, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(per.std(1, unbiased=False), torch.ones(2, dtype=torch.float64), atol=1e-4, rtol=0)


def test_npz_float_frames(tmp_path):
    rng = np.random.RandomState(0)
    x = rng.poisson(1.0, (16, 2, 2, 6, 6)).astype(np.float32)  # [N, T=2, C=2, H, W] counts
    user = UserData(format="npz", train=save_npz(tmp_path / "fr.npz", x=x, y=np.arange(16) % 2), test_fraction=0.25)
    p = data.prepare(user, tmp_path / "root", 2)
    assert p.kind == "frames" and p.x_train.shape[1:] == (2, 2, 6, 6) and p.in_channels == 2
    got, _ = load_all(p.dataset(user, train=True))
    np.testing.assert_array_equal(got.numpy(), np.asarray(p.x_train))


@pytest.mark.parametrize("kind", ["static", "frames"])
def test_augmentation_changes_training_samples_only_and_is_seeded(tmp_path, kind):
    if kind == "static":
        user, _ = _rgb_user(tmp_path, augment=True)
        plain_user, _ = _rgb_user(tmp_path)
        p = data.prepare(user, tmp_path / "root", 2)
    else:
        user, plain_user = _event_user(tmp_path, augment=True), _event_user(tmp_path)
        p = data.prepare(user, tmp_path / "root", 3)
    plain = load_all(p.dataset(plain_user, train=True))[0]
    torch.manual_seed(0)
    a = load_all(p.dataset(user, train=True))[0]
    torch.manual_seed(0)
    b = load_all(p.dataset(user, train=True))[0]
    torch.manual_seed(1)
    c = load_all(p.dataset(user, train=True))[0]
    assert a.shape == plain.shape
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    changed = [not torch.equal(a[i], plain[i]) for i in range(len(a))]
    assert sum(changed) > len(a) // 4
    torch.manual_seed(2)
    test_aug = load_all(p.dataset(user, train=False))[0]
    torch.testing.assert_close(test_aug, load_all(p.dataset(plain_user, train=False))[0], rtol=0, atol=0)
    if kind == "frames":  # flips and rolls move counts, never change them
        torch.testing.assert_close(a.sum(dim=(-2, -1)), plain.sum(dim=(-2, -1)))


def test_info_and_loaders(tmp_path):
    user, _ = _rgb_user(tmp_path)
    p = data.prepare(user, tmp_path / "root", 2)
    info = data.info(user, p)
    assert (info.name, info.num_classes, info.in_channels, info.input_size, info.kind) == (
        "rgb", 3, 3, (8, 8), "static")
    with pytest.raises(ValueError, match="prepare"):
        data.info(user)
    train, test = data.loaders(user, str(tmp_path / "root"), 64, 2)  # prepared from the cache
    xb, yb = next(iter(train))
    assert xb.shape == (64, 3, 8, 8) and yb.dtype == torch.int64
    assert len(test.dataset) == len(p.y_test) == 30


# -- 5. training through it ---------------------------------------------------------------------

def test_fit_trains_on_a_users_npz(tmp_path):
    from snn.config import TrainConfig
    from snn.training import fit

    x, y = digits(300)
    path = save_npz(tmp_path / "digits.npz", x=x, y=y)
    cfg = TrainConfig(dataset={"format": "npz", "train": path, "test_fraction": 0.2}, data_root=str(tmp_path / "data"),
                      epochs=1, batch_size=64, arch="resnet-tiny", timesteps=2, max_batches=3, device="cpu")
    metrics = fit(cfg)
    assert np.isfinite(metrics["test_acc"]) and 0 <= metrics["test_acc"] <= 1
    assert len(list((tmp_path / "data" / "cache").iterdir())) == 1


def test_in_memory_pickles_its_arrays_out_of_band(tmp_path):
    """What the study ships through Ray's object store: plain arrays whose buffers pickle out of
    band (Ray stores them once; trials get a shared read-only view), unlike the memory maps
    of the cache, which pickle their bytes inline and unpickle as a private copy in each trial."""
    import pickle

    x, y = _static_pair(tmp_path)
    p = data.prepare(UserData(format="npz", train=save_npz(tmp_path / "d.npz", x=x, y=y), test_fraction=0.5),
                     tmp_path / "root", 2)
    out_of_band: list = []
    pickle.dumps(p.in_memory(), protocol=5, buffer_callback=out_of_band.append)
    assert len(out_of_band) == 4 and sum(memoryview(b).nbytes for b in out_of_band) == p.nbytes
    inline: list = []
    pickle.dumps(p, protocol=5, buffer_callback=inline.append)
    assert inline == []
    np.testing.assert_array_equal(p.in_memory().x_train, p.x_train)
