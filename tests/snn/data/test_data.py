import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from snn import data
from snn.data._events import MAX_ROLL, FrameDataset, per_class_split, simulate_saccade_events

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from fakes import accept_fake_cifar, make_fake_cifar  # noqa: E402


# Classes, channels, input size (H, W) and sample kind of each dataset, from the datasets
# themselves and section 5 of the paper (CIFAR10-DVS binned into frames of 48x48).
INFO = {
    "cifar10": (10, 3, (32, 32), "static"),
    "cifar100": (100, 3, (32, 32), "static"),
    "imagenet": (1000, 3, (224, 224), "static"),
    "cifar10-dvs": (10, 2, (48, 48), "frames"),
    "digits": (10, 1, (8, 8), "static"),
    "digits-dvs": (10, 2, (32, 32), "frames"),
}
OFFLINE = ("digits", "digits-dvs")  # built from scikit-learn's bundled digits: nothing to download
NEEDS_FILES = [n for n in data.NAMES if n not in OFFLINE]


def test_every_dataset_has_a_reference():
    assert set(data.NAMES) == set(INFO)
    assert set(OFFLINE) <= set(data.NAMES)


@pytest.mark.parametrize("name", data.NAMES)
def test_info(name):
    got = data.info(name)
    assert got.name == name
    assert (got.num_classes, got.in_channels, got.input_size, got.kind) == INFO[name]


def test_unknown_name_lists_valid_names():
    valid = re.escape(", ".join(data.NAMES))
    with pytest.raises(ValueError, match=f"^dataset: unknown name 'mnist'; choose one of {valid}$"):
        data.info("mnist")


def test_digits_split_and_normalisation():
    tr, te = data.build("digits", "unused", True), data.build("digits", "unused", False)
    assert (len(tr), len(te)) == (1437, 360)
    x = torch.stack([tr[i][0] for i in range(len(tr))])
    assert x.shape == (1437, 1, 8, 8) and x.dtype == torch.float32
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-2
    labels = [int(tr[i][1]) for i in range(len(tr))]
    assert sorted(set(labels)) == list(range(10))
    from sklearn.datasets import load_digits

    full = np.bincount(load_digits().target)
    assert np.all(np.abs(np.bincount(labels) - 0.8 * full) <= 1)  # stratified: 80% of every class


@pytest.mark.slow  # two fresh processes
def test_fresh_processes_read_the_digits_split_from_the_cache(tmp_path):
    code = "import sys; from snn.data._static import build_digits; build_digits(True); print('sklearn' in sys.modules)"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert [r.strip() for r in runs] == ["True", "False"]  # the second process did not import scikit-learn
    (cached,) = (tmp_path / "snn-study").iterdir()  # and no temporary file is left beside it
    assert cached.name.startswith("digits-split-sklearn-")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    xtr, xte, ytr, yte = train_test_split(d.images, d.target, test_size=0.2, random_state=0, stratify=d.target)
    with np.load(cached) as f:
        for key, want in {"xtr": xtr, "xte": xte, "ytr": ytr, "yte": yte}.items():
            np.testing.assert_array_equal(f[key], want)


def test_digits_split_is_scikit_learns_from_a_fresh_damaged_or_unwritable_cache(tmp_path, monkeypatch):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from snn.data import _static

    d = load_digits()
    want = train_test_split(d.images, d.target, test_size=0.2, random_state=0, stratify=d.target)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _static._digits_split_arrays.cache_clear()
    _static.digits_split(True)  # computed, and written to the empty cache
    (cached,) = (tmp_path / "snn-study").iterdir()  # and no temporary file is left beside it
    assert cached.name.startswith("digits-split-sklearn-")
    for damage in (lambda: None, lambda: cached.write_bytes(cached.read_bytes()[:1000])):  # a file cut short
        damage()
        _static._digits_split_arrays.cache_clear()
        (xtr, ytr), (xte, yte) = _static.digits_split(True), _static.digits_split(False)
        for got, expected in zip((xtr, xte, ytr, yte), want):
            np.testing.assert_array_equal(got, expected)
    assert len(np.load(cached)["xtr"]) == 1437  # made again, whole

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))  # the cache cannot be written: computed all the same
    _static._digits_split_arrays.cache_clear()
    np.testing.assert_array_equal(_static.digits_split(False)[1], want[3])
    _static._digits_split_arrays.cache_clear()


@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_reads_real_format(tmp_path, monkeypatch, name, classes):
    make_fake_cifar(tmp_path, name)
    accept_fake_cifar(monkeypatch)
    tr, te = data.build(name, str(tmp_path), True), data.build(name, str(tmp_path), False)
    assert (len(tr), len(te)) == (60, 20)
    x, y = te[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y < classes
    # test split: normalisation only, so it is deterministic and inverts to the stored uint8 pixels
    mean, std = {"cifar10": (0.4914, 0.2470), "cifar100": (0.5071, 0.2673)}[name]
    raw = torch.from_numpy(te.data[0]).permute(2, 0, 1)[0].float() / 255
    torch.testing.assert_close(x[0] * std + mean, raw, atol=1e-5, rtol=0)
    torch.testing.assert_close(te[0][0], te[0][0])


def test_imagenet_folder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for c in ("n01", "n02"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.random.RandomState(i).randint(0, 255, (300, 260, 3), dtype=np.uint8)).save(d / f"{i}.png")
    tr, va = data.build("imagenet", str(tmp_path), True), data.build("imagenet", str(tmp_path), False)
    assert len(tr) == len(va) == 4
    assert tr[0][0].shape == va[0][0].shape == (3, 224, 224)
    assert {va[i][1] for i in range(4)} == {0, 1}


@pytest.mark.parametrize("name", NEEDS_FILES)
def test_offline_error_is_clear_and_writes_nothing(tmp_path, name):
    root = tmp_path / "root"
    with pytest.raises(data.DatasetNotFoundError) as e:
        data.build(name, str(root), True, timesteps=4)
    msg = str(e.value)
    assert f"dataset {name!r}" in msg and str(root.resolve()) in msg and "download=True" in msg and "\n" not in msg
    assert not root.exists()


def test_failed_download_leaves_nothing(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    def broken_download(self):
        Path(self.root, "cifar-10-python.tar.gz").write_bytes(b"partial")
        raise OSError("network unreachable")

    monkeypatch.setattr(cifar.CIFAR10, "download", broken_download)
    root = tmp_path / "r"
    root.mkdir()
    with pytest.raises(data.DatasetNotFoundError, match="download failed: OSError: network unreachable"):
        data.build("cifar10", str(root), True, download=True)
    assert list(root.iterdir()) == []


def test_frame_datasets_need_timesteps(tmp_path):
    with pytest.raises(ValueError, match="timesteps"):
        data.build("digits-dvs", str(tmp_path), True)


def fake_events(i):
    rng = np.random.RandomState(i)
    ev = np.zeros(500, dtype=[("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int8)])
    ev["x"], ev["y"] = rng.randint(0, 128, 500), rng.randint(0, 128, 500)
    ev["t"], ev["p"] = np.sort(rng.randint(0, 1_000_000, 500)), rng.randint(0, 2, 500)
    return ev, i % 10


def test_frame_pipeline_shapes_counts_and_cache(tmp_path):
    ds = FrameDataset(fake_events, range(6), [i % 10 for i in range(6)], (128, 128, 2), 10, (48, 48), False, tmp_path / "c")
    x, y = ds[3]
    assert x.shape == (10, 2, 48, 48) and x.dtype == torch.float32 and y == 3
    ev, _ = fake_events(3)
    # area resizing averages the counts: the total scales by (48/128)^2, up to the uneven 128->48 windows
    assert float(x.sum()) == pytest.approx(len(ev) * (48 / 128) ** 2, rel=0.05)
    native = FrameDataset(fake_events, [3], [3], (128, 128, 2), 10, (128, 128), False, tmp_path / "n")[0][0]
    # every event lands in one frame, pixel and polarity (tonic's time bins leave out the very last event)
    assert len(ev) - 1 <= float(native.sum()) <= len(ev)
    per_frame = native.sum(dim=(1, 2, 3))
    assert per_frame.min() > 0.5 * len(ev) / 10  # uniform random times: every bin holds about a tenth
    on = np.zeros((128, 128))
    np.add.at(on, (ev["y"][ev["p"] == 1], ev["x"][ev["p"] == 1]), 1)
    assert np.abs(native[:, 1].sum(0).numpy() - on).sum() <= 1  # channel 1 is ON, indexed [y, x]
    for i in range(6):
        ds[i]
    assert ds.binned == 6
    for i in range(6):
        ds[i]
    assert ds.binned == 6  # second epoch: all from the cache
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [f"{i}.npy" for i in range(6)]


def test_training_roll_stays_within_5_pixels(tmp_path):
    def one_pixel(i):
        ev = np.zeros(2, dtype=[("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int8)])
        ev["x"], ev["y"], ev["t"], ev["p"] = 24, 20, [0, 100], 1  # tonic drops the last event
        return ev, 0

    ds = FrameDataset(one_pixel, [0], [0], (48, 48, 2), 1, (48, 48), True, tmp_path)
    torch.manual_seed(0)
    seen = set()
    for _ in range(300):
        x, _ = ds[0]
        (t, p, yy, xx) = [int(v) for v in torch.nonzero(x)[0]]
        dx = xx - 24 if abs(xx - 24) <= MAX_ROLL else (47 - xx) - 24  # undo a flip
        assert abs(yy - 20) <= MAX_ROLL and abs(dx) <= MAX_ROLL
        seen.add((yy - 20, dx))
    assert len(seen) > 40  # it does roll, in both axes


def test_per_class_split_is_9k_1k_and_deterministic():
    labels = np.repeat(np.arange(10), 1000)
    tr, te = per_class_split(labels, True), per_class_split(labels, False)
    assert len(tr) == 9000 and len(te) == 1000 and not set(tr) & set(te)
    assert np.bincount(labels[tr]).tolist() == [900] * 10 and np.bincount(labels[te]).tolist() == [100] * 10
    assert per_class_split(labels, True) == tr


def test_saccade_events_are_real_events():
    img = np.zeros((8, 8))
    img[2:6, 3:5] = 1.0
    ev = simulate_saccade_events(img, seed=0)
    assert ev.dtype.names == ("x", "y", "t", "p") and len(ev) > 20
    assert set(np.unique(ev["p"])) == {0, 1} and np.all(np.diff(ev["t"]) >= 0)
    assert ev["x"].max() < 32 and ev["y"].max() < 32
    assert len(simulate_saccade_events(np.zeros((8, 8)))) == 0  # a blank image moving emits nothing
    np.testing.assert_array_equal(simulate_saccade_events(img, seed=1), simulate_saccade_events(img, seed=1))


def test_digits_dvs_end_to_end(tmp_path):
    tr = data.build("digits-dvs", str(tmp_path), True, timesteps=4)
    te = data.build("digits-dvs", str(tmp_path), False, timesteps=4)
    assert (len(tr), len(te)) == (1437, 360)
    x, y = te[0]
    assert x.shape == (4, 2, 32, 32) and x.min() >= 0 and x.sum() > 0 and 0 <= y < 10
    torch.testing.assert_close(te[0][0], x)  # test split: deterministic


def test_loaders_are_seeded():
    a, _ = data.loaders("digits", "unused", 32, seed=3)
    b, _ = data.loaders("digits", "unused", 32, seed=3)
    c, _ = data.loaders("digits", "unused", 32, seed=4)
    ya, yb, yc = (next(iter(l))[1] for l in (a, b, c))
    assert torch.equal(ya, yb) and not torch.equal(ya, yc)
