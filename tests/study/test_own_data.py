"""A user's own data in a study: examples/, 'snn-study check', bad
input before Ray, and each format end to end."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import yaml

from study.cli import main
from study.spec import load_spec

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def _digits(n_classes: int = 10):
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = d.target < n_classes
    return (d.images[keep] * 255 / 16).astype(np.uint8), d.target[keep]


def write_npz(path: Path, n_classes: int = 10) -> None:
    x, y = _digits(n_classes)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=y)


def write_images(folder: Path, n_classes: int = 3, per_class: int = 20, offset: int = 0) -> None:
    """PNGs of digits, one sub-folder per class, at two sizes (the spec resizes them)."""
    from PIL import Image

    x, y = _digits(n_classes)
    for c in range(n_classes):
        (folder / f"class_{c}").mkdir(parents=True, exist_ok=True)
        for k, i in enumerate(np.flatnonzero(y == c)[offset:offset + per_class]):
            img = Image.fromarray(x[i]).resize((16, 16) if k % 2 else (12, 12))
            img.save(folder / f"class_{c}" / f"{k}.png")


def write_events(folder: Path, n_classes: int = 2, per_class: int = 12) -> None:
    """Event recordings (tonic's structured x, y, t, p) of digits, from the event-sensor simulation."""
    from snn.data._events import simulate_saccade_events

    x, y = _digits(n_classes)
    for c in range(n_classes):
        (folder / str(c)).mkdir(parents=True, exist_ok=True)
        for k, i in enumerate(np.flatnonzero(y == c)[:per_class]):
            np.save(folder / str(c) / f"rec{k}.npy", simulate_saccade_events(x[i] / 255.0, seed=int(i)))


def make_data(spec_path: Path, cwd: Path) -> None:
    """Write small data where a user-data example spec expects its files (relative to ``cwd``)."""
    ds = yaml.safe_load(spec_path.read_text())["dataset"]
    train = cwd / ds["train"]
    if ds["format"] == "npz":
        write_npz(train)
        if ds.get("test"):
            write_npz(cwd / ds["test"])
    elif ds["format"] == "imagefolder":
        write_images(train)
        if ds.get("test"):
            write_images(cwd / ds["test"], per_class=5, offset=20)
    else:
        write_events(train)
        if ds.get("test"):
            write_events(cwd / ds["test"], per_class=3)


def _run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    out = capsys.readouterr()
    return exit_.value.code or 0, out.out, out.err


def test_examples_cover_every_table_and_format():
    names = {p.name for p in EXAMPLES}
    for table in ("table1", "table2", "table3", "table4"):
        assert any(n.startswith(table) for n in names), table
    formats = {yaml.safe_load(p.read_text())["dataset"].get("format") for p in EXAMPLES
               if isinstance(yaml.safe_load(p.read_text())["dataset"], dict)}
    assert formats == {"npz", "imagefolder", "events"}
    assert any("laptop" in n for n in names)
    # the accuracy-energy front on a laptop (README, Energy)
    assert any(yaml.safe_load(p.read_text()).get("objective") == "test_acc+energy" and p.name.startswith("laptop")
               for p in EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_check_explains_every_example(example, tmp_path, monkeypatch, capsys):
    """'snn-study check' on each example: valid, the plan printed, nothing started; a paper
    table's data absent here only stops ImageNet (the others would be downloaded)."""
    monkeypatch.chdir(tmp_path)
    spec = load_spec(example)
    own = isinstance(yaml.safe_load(example.read_text())["dataset"], dict)
    if own:
        make_data(example, tmp_path)
    code, out, err = _run_cli(["check", str(example)], capsys)
    assert code in (0, 1), err
    for part in ("valid", "data:", "trial config", "resources:", f"study {spec.name}"):
        assert part in out
    if code == 1:
        assert spec.dataset == "imagenet" and "imagenet" in err and err.count("\n") == 1
    if own:
        assert code == 0 and "classes" in out and "train /" in out and "object store" in out
    assert not (tmp_path / "studies").exists() and not (tmp_path / "mlflow.db").exists()


def test_check_shows_the_search_space_and_concurrency(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, _ = _run_cli(["check", "--set", "trials=1", "--set", "search.fixed.surrogate=atan"], capsys)
    assert code == 0
    assert "lambda0: uniform in [0, 1]" in out and "branches: one of none, 1, 2, 1,2" in out
    assert "surrogate_param: log-uniform in [0.5, 8]" in out  # atan's range, read off the space
    assert "surrogate: atan" in out  # fixed: in the trial config, not searched
    assert "up to 1 trial(s) at once (bound by trials)" in out


def _own_spec(tmp_path: Path, dataset: dict, **extra) -> Path:
    spec = {"name": "mine", "dataset": dataset, "arch": "resnet-tiny", "timesteps": 2,
            "train": {"epochs": 1, "batch_size": 32}, "trials": 2, **extra}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "studies").exists() and not (tmp_path / "mlflow.db").exists()
    assert not list((tmp_path / "data" / "cache").glob("*")) if (tmp_path / "data" / "cache").exists() else True


@pytest.mark.parametrize("case, code, words", [
    ("missing", 1, ["dataset.train", "does not exist"]),
    ("no_y", 2, ["dataset.train", "no array 'y'"]),
    ("one_class", 2, ["dataset.train", "at least two"]),
    ("mixed_sizes", 2, ["dataset.input_size", "differ in size"]),
    ("events_fields", 2, ["x, y, t, p"]),
    ("events_search_t", 2, ["search.dims", "timesteps"]),
    ("both_tests", 2, ["dataset.test", "not both"]),
    ("uri_root", 2, ["data_root", "is a URI"]),
])
def test_bad_data_fails_before_ray_with_one_line(case, code, words, tmp_path, monkeypatch, capsys):
    """Each bad input: one line naming the field, exit 2 for data that can never train,
    exit 1 for missing files, and nothing written (no study, no MLflow store, no cache)."""
    monkeypatch.chdir(tmp_path)
    ds: dict = {"format": "npz", "train": "data/mine.npz", "test_fraction": 0.2}
    extra = {}
    if case == "no_y":
        (tmp_path / "data").mkdir()
        np.savez(tmp_path / "data/mine.npz", x=np.zeros((10, 8, 8), np.uint8))
    elif case == "one_class":
        (tmp_path / "data").mkdir()
        np.savez(tmp_path / "data/mine.npz", x=np.zeros((10, 8, 8), np.uint8), y=np.zeros(10, np.int64))
    elif case == "mixed_sizes":
        write_images(tmp_path / "data/imgs")
        ds = {"format": "imagefolder", "train": "data/imgs", "test_fraction": 0.2}
    elif case == "events_fields":
        (tmp_path / "data/ev/a").mkdir(parents=True)
        (tmp_path / "data/ev/b").mkdir(parents=True)
        for c in "ab":
            np.save(tmp_path / f"data/ev/{c}/0.npy", np.zeros(5, dtype=[("x", "i2"), ("y", "i2"), ("ts", "i8")]))
        ds = {"format": "events", "train": "data/ev", "test_fraction": 0.5}
    elif case == "events_search_t":
        ds = {"format": "events", "train": "data/ev", "test_fraction": 0.5}
        extra = {"search": {"preset": "quick", "dims": ["timesteps"]}}
    elif case == "both_tests":
        ds["test"] = "data/test.npz"
    elif case == "uri_root":
        extra = {"data_root": "s3://bucket/data"}
    spec = _own_spec(tmp_path, ds, **extra)
    got, out, err = _run_cli(["run", str(spec)], capsys)
    assert got == code, err
    assert err.count("\n") == 1 and err.startswith("snn-study: error: ")
    for w in words:
        assert w in err
    _nothing_written(tmp_path)
    got_check, _, err_check = _run_cli(["check", str(spec)], capsys)  # check says the same
    assert got_check == code and err_check == err


@pytest.mark.slow
def test_a_node_without_a_large_datasets_path_fails_at_once_naming_it(ray_session, tmp_path):
    """Data beyond object_store_limit_mb is read from data_root; a node that lacks it says which node and path."""
    import ray

    from trainables._trainable import _user_data

    missing = str(tmp_path / "cache" / "npz-mine-0123")

    @ray.remote
    def trial_start():
        try:
            _user_data(None, missing)
        except OSError as e:
            return str(e)
        return None

    message = ray.get(trial_start.remote())
    assert message is not None and missing in message and socket.gethostname() in message
    assert "object_store_limit_mb" in message and "\n" not in message


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["npz", "imagefolder", "events"])
def test_each_format_runs_a_study_end_to_end(fmt, ray_session, tmp_path):
    """A study on each format trains, searches and is recorded in MLflow under the data's name;
    an npz named after a paper dataset is recorded beside the paper's rows, and one over the
    object-store limit is read by the trials from data_root."""
    from mlflow import MlflowClient

    from study.baselines import rows
    from study.spec import parse_spec
    from study.tuner import run_study

    if fmt == "npz":
        write_npz(tmp_path / "own" / "train.npz")
        ds = {"format": "npz", "train": str(tmp_path / "own/train.npz"), "test_fraction": 0.2, "name": "cifar10",
              "object_store_limit_mb": 0}
    elif fmt == "imagefolder":
        write_images(tmp_path / "own/train")
        write_images(tmp_path / "own/test", per_class=5, offset=20)
        ds = {"format": "imagefolder", "train": str(tmp_path / "own/train"), "test": str(tmp_path / "own/test"),
              "input_size": [16, 16], "augment": True, "name": "shapes"}
    else:
        write_events(tmp_path / "own")
        ds = {"format": "events", "train": str(tmp_path / "own"), "test_fraction": 0.25, "name": "my-events"}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = parse_spec({"name": f"own-{fmt}", "dataset": ds, "data_root": str(tmp_path / "data"), "arch": "resnet-tiny",
                       "timesteps": 2, "train": {"epochs": 1, "batch_size": 16, "max_batches": 4}, "trials": 2,
                       "scheduler": "fifo",
                       "storage": str(tmp_path / "studies"), "mlflow": {"tracking_uri": uri}})
    result = run_study(spec, verbose=0)
    assert result.trials == 2 and result.errored == 0
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(f"own-{fmt}").experiment_id
    trials = c.search_runs([exp], filter_string="tags.kind = 'trial'")
    assert len(trials) == 2
    for r in trials:
        assert r.info.status == "FINISHED" and 0 <= r.data.metrics["test_acc"] <= 1
        assert r.data.tags["dataset"] == ds["name"] and r.data.params["dataset.format"] == fmt
    base = c.search_runs([exp], filter_string="tags.kind = 'baseline'", max_results=1000)
    assert len(base) == (len(rows("cifar10")) if fmt == "npz" else 0)
    # the prepared data was made once, by the driver
    assert len(list((tmp_path / "data" / "cache").iterdir())) == 1
    assert os.path.isabs(yaml.safe_load((result.path / "study.yaml").read_text())["dataset"]["train"])
