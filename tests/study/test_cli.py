"""The CLI's one-line errors and exit codes, run as a user runs it (a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from procs import free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # every test here runs snn-study as a process


def snn_study(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "study.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def error_line(r: subprocess.CompletedProcess) -> str:
    lines = [l for l in r.stderr.strip().splitlines() if l.startswith("snn-study: error:")]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def test_missing_data_is_one_line_before_anything_starts(tmp_path):
    r = snn_study("run", "--set", "dataset=cifar10", "--set", f"data_root={tmp_path / 'nodata'}", cwd=tmp_path)
    assert r.returncode == 1
    line = error_line(r)
    assert "dataset 'cifar10': files not found in" in line and "nodata" in line and "download=True" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no studies/, no mlflow.db


def test_unreachable_tracking_server_fails_fast(tmp_path):
    port = free_port()  # nothing listens there
    r = snn_study("run", "--tracking-uri", f"http://127.0.0.1:{port}", cwd=tmp_path)
    assert r.returncode == 1
    assert f"cannot reach the MLflow server at http://127.0.0.1:{port}" in error_line(r)
    assert list(tmp_path.iterdir()) == []


def test_more_gpus_than_the_cluster_has(ray_session, tmp_path):
    address = ray_session.get_runtime_context().gcs_address  # a cluster without GPUs
    r = snn_study("run", "--set", "resources.gpu=1", "--set", f"storage={tmp_path / 'st'}",
                  "--set", f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db", "--address", address, cwd=tmp_path)
    assert r.returncode == 2
    assert "resources.gpu: 1 per trial requested, but the Ray cluster has 0 GPU(s)" in error_line(r)
    assert not (tmp_path / "st").exists() and not (tmp_path / "m.db").exists()
    assert not list(tmp_path.glob(".m.db*"))  # nor the store MLflow set up while Ray started


def test_train_prints_one_line_per_epoch(tmp_path):
    r = snn_study("train", "--set", "epochs=2", "--set", "max_batches=3", "--set", "lambda0=0.5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if l.startswith("epoch ")]
    assert [l.split()[1] for l in lines] == ["1/2", "2/2"] and "test_acc=" in lines[0]


def test_train_rejects_unknown_keys(tmp_path):
    r = snn_study("train", "--set", "lamda0=0.5", cwd=tmp_path)
    assert r.returncode == 2 and "lamda0: unknown key (a typo?)" in error_line(r)


@pytest.mark.parametrize("args, expected", [
    (["resume", "nowhere"], "nowhere: no study found there"),
    (["sync", "nowhere"], "nowhere: no study found there"),
    (["report", "nowhere"], "nowhere: no study found there"),
])
def test_commands_on_a_missing_study_fail_in_one_line(tmp_path, args, expected):
    r = snn_study(*args, cwd=tmp_path)
    assert r.returncode == 1 and expected in error_line(r)


@pytest.mark.parametrize("objective, columns", [("test_acc", ["test_acc"]),
                                               ("test_acc+energy", ["test_acc", "energy_uj"])])
def test_run_shows_progress_without_a_line_per_checkpoint(ray_session, tmp_path, objective, columns):
    # Tune's status, its table with the study's objectives, and the summary, but not Ray's
    # "Checkpoint successfully created" for every trial and epoch, nor Tune's warning that forced
    # experiment-state saves (num_to_keep) "may become a bottleneck", which epochs this short trigger
    address = ray_session.get_runtime_context().gcs_address
    r = snn_study("run", "--set", "trials=2", "--set", "train.epochs=4", "--set", "scheduler=fifo",
                  "--set", f"objective={objective}",
                  "--set", f"storage={tmp_path / 'st'}", "--set", f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db",
                  "--address", address, cwd=tmp_path, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "Trial status:" in out and "study quickstart: 2 trial(s), 0 errored" in out
    # the table's header once trials have results: Trial name, status, iter, total time (s), then metrics
    headers = [line.strip("│ ").split() for line in out.splitlines()
               if line.startswith("│ Trial name") and "iter" in line]
    assert headers and all(h[h.index("(s)") + 1:][:len(columns)] == columns for h in headers), headers
    assert "Checkpoint successfully created" not in out
    assert "Experiment state snapshotting" not in out


@pytest.mark.parametrize("command", ["run", "train"])
@pytest.mark.parametrize("dataset,download", [("digits", "false"), ("cifar10", "false"), ("cifar10", "true")])
def test_a_data_root_that_is_a_file_is_one_line_before_anything_starts(tmp_path, command, dataset, download):
    (tmp_path / "afile").write_text("")
    r = snn_study(command, "--set", f"dataset={dataset}", "--set", f"download={download}",
                  "--set", f"data_root={tmp_path / 'afile'}", cwd=tmp_path)
    assert r.returncode == 2
    assert f"data_root: {tmp_path / 'afile'} is a file" in error_line(r)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # no studies/, no mlflow.db


def test_train_says_what_it_trains_and_writes_its_results_whole(tmp_path):
    import csv

    import torch
    import yaml

    from snn.config import TrainConfig
    from snn.models import build, strip_shortcuts

    r = snn_study("train", "--set", "epochs=2", "--set", "max_batches=3", "--set", "lambda0=0.5",
                  "--set", "branches=[1]", "--out", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    said = {l.split(" ")[0]: l for l in r.stderr.splitlines()}
    assert said["data:"].startswith("data: digits (bundled): 10 classes, 1x8x8 images, 1,437 train / 360 test samples")
    assert "(3 an epoch: max_batches)" in said["data:"]
    assert said["model:"].startswith("model: resnet-tiny, T=2: ") and "in 1 shortcut branch(es) at stage(s) 1" in said["model:"]
    for words in ("lambda0=0.5", "schedule=linear", "branches=[1]", "surrogate=triangle", "epochs=2", "batch_size=",
                  "lr=0.01", "seed=0", "device=cpu", "torch thread(s)"):
        assert words in said["config"], words
    assert not [l for l in r.stderr.splitlines() if l.startswith("progress:")]  # a short epoch, not a terminal
    out = tmp_path / "out"
    lines = r.stdout.strip().splitlines()
    assert [l.split()[1] for l in lines[:2]] == ["1/2", "2/2"]
    assert lines[-1].startswith("saved 2 epoch(s) to out: ")
    for name in ("checkpoint.pt", "model.pt", "config.yaml", "metrics.csv"):
        assert str(Path("out") / name) in lines[-1]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.yaml", "metrics.csv", "model.pt"]

    cfg = TrainConfig.model_validate(yaml.safe_load((out / "config.yaml").read_text()))
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert cfg.lambda0 == 0.5 and cfg.epochs == 2 and cfg.branches == [1] and cfg.to_dict() == state["config"]
    assert state["epoch"] == 2 and state["step"] == 6
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert [f"{float(row['test_acc']):.4f}" for row in rows] == [l.split("test_acc=")[1].split()[0] for l in lines[:2]]
    net = strip_shortcuts(build(cfg.arch, 10, cfg.timesteps, in_channels=1, branches=cfg.branches, **cfg.arch_kwargs))
    weights = torch.load(out / "model.pt", weights_only=True)
    net.load_state_dict(weights)  # strict: every weight of the inference network, and nothing else
    trained = {k: v for k, v in state["model"].items() if not k.startswith("shortcuts.")}
    assert {f"net.{k}" for k in trained} == set(weights)
    assert all(torch.equal(weights[f"net.{k}"], v) for k, v in trained.items())

    again = snn_study("train", "--set", "epochs=1", "--out", "out", cwd=tmp_path)  # results are never overwritten
    assert again.returncode == 2 and "--out: out holds a training's results already" in error_line(again)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 2


def test_train_writes_to_a_new_runs_folder_by_default_and_prepares_a_users_data_aloud(tmp_path):
    from PIL import Image

    for c in range(2):
        (tmp_path / "imgs" / f"c{c}").mkdir(parents=True)
        for k in range(10):
            Image.new("L", (8, 8), color=40 * c + k).save(tmp_path / "imgs" / f"c{c}" / f"{k}.png")
    r = snn_study("train", "--set", "epochs=1", "--set", "batch_size=4",
                  "--set", "dataset={format: imagefolder, train: imgs, test_fraction: 0.2}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    err = r.stderr.splitlines()
    assert any(l.startswith("preparing imagefolder data 'imgs' into ") for l in err), r.stderr
    assert "decoding 20 train images" in err
    data = next(l for l in err if l.startswith("data: "))
    assert data.startswith("data: imgs (imagefolder data from imgs, test: 0.2 of it held out, split_seed 0; prepared in ")
    assert "2 classes, 1x8x8 images, 16 train / 4 test samples" in data
    (folder,) = (tmp_path / "runs").iterdir()
    assert folder.name.startswith("train-") and r.stdout.strip().splitlines()[-1].startswith(
        f"saved 1 epoch(s) to {Path('runs') / folder.name}: ")
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt", "config.yaml", "metrics.csv", "model.pt"]


def test_the_epoch_progress_is_a_bar_on_a_terminal_and_sparse_lines_elsewhere():
    import io
    from types import SimpleNamespace

    from study.single_trial import _EpochProgress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    def epoch(progress) -> None:
        progress("train", 0, 3)
        for b in range(1, 4):
            progress("train", b, 3)
        for b in range(3):
            progress("test", b, 2)
        progress.close()

    tty = Terminal()
    bar = _EpochProgress(2, stream=tty)
    bar.trainer = SimpleNamespace(epoch=0, test_loader=[0, 0])
    epoch(bar)
    assert "epoch 1/2 train:   0%" in tty.getvalue() and "0/5 " in tty.getvalue()
    quiet = io.StringIO()
    epoch(_EpochProgress(2, stream=quiet))  # a log: nothing for an epoch shorter than 30 s
    assert quiet.getvalue() == ""
    log = io.StringIO()
    every = _EpochProgress(2, stream=log, every=0)
    every.trainer = SimpleNamespace(epoch=1, test_loader=[0, 0])
    epoch(every)
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("progress: epoch 2/2, train batch 1/3, ") and lines[-1].startswith(
        "progress: epoch 2/2, test batch 2/2, ") and len(lines) == 6


def test_a_long_data_preparation_says_how_far_it_got(tmp_path):
    from PIL import Image

    from snn.config import UserData
    from snn.data import prepare
    from study.preflight import PrepareProgress

    now = [0.0]
    said: list[str] = []
    p = PrepareProgress(said.append, every=10, clock=lambda: now[0])
    for t, done in [(0, 0), (4, 100), (11, 200), (15, 300), (22, 400), (30, 1000)]:
        now[0] = t
        p("decoding train images", done, 1000)
    assert said == ["  decoding train images: 200 of 1,000 (20%) after 11 s",
                    "  decoding train images: 400 of 1,000 (40%) after 22 s",
                    "  decoding train images: all 1,000 done in 30 s"]
    said.clear()
    for t, done in [(40, 0), (45, 5), (46, 10)]:  # a short phase: nothing
        now[0] = t
        p("binning train recordings", done, 10)
    assert said == []

    # what a real preparation reports: each file-by-file phase from 0 to its total
    for c in range(2):
        (tmp_path / "imgs" / f"c{c}").mkdir(parents=True)
        for k in range(40):  # 80 files: read by the thread pool
            Image.new("L", (8, 8), color=k).save(tmp_path / "imgs" / f"c{c}" / f"{k}.png")
    calls: list[tuple[str, int, int]] = []
    user = UserData(format="imagefolder", train=str(tmp_path / "imgs"), test_fraction=0.25)
    prepared = prepare(user, tmp_path / "root", 2, progress=lambda *a: calls.append(a))
    assert len(prepared.y_train) == 60
    for phase in ("reading train image headers", "decoding train images"):
        assert [c for c in calls if c[0] == phase] == [(phase, n, 80) for n in range(81)]
    assert {c[0] for c in calls} == {"reading train image headers", "decoding train images"}
