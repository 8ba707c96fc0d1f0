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


def test_more_gpus_than_the_cluster_has(tmp_path):
    r = snn_study("run", "--set", "resources.gpu=1", "--set", f"storage={tmp_path / 'st'}",
                  "--set", f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db", cwd=tmp_path)
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


def test_run_shows_progress_without_a_line_per_checkpoint(ray_session, tmp_path):
    # Tune's status and the summary, but not Ray's "Checkpoint successfully created" for every
    # trial and epoch, nor Tune's warning that forced experiment-state saves (num_to_keep) "may
    # become a bottleneck", which epochs this short trigger
    address = ray_session.get_runtime_context().gcs_address
    r = snn_study("run", "--set", "trials=2", "--set", "train.epochs=4", "--set", "scheduler=fifo",
                  "--set", f"storage={tmp_path / 'st'}", "--set", f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db",
                  "--address", address, cwd=tmp_path, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "Trial status:" in out and "study quickstart: 2 trial(s), 0 errored" in out
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
