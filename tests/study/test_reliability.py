"""Faults injected for real: the driver killed again and again, resumed each time; killed
during a tracking outage, then synced; a killed driver's own Ray; a driver interrupted (SIGINT),
then resumed.

The drivers are real ``snn-study`` processes joined to the test session's Ray cluster, as a
driver joins a cluster with ``--address``: killing a driver leaves the cluster up. Trial
workers killed (with their whole node) and the tracking server killed mid-study are in
``tests/docker/test_load.py``, under the load of 32 trials at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from procs import free_port, http_ok, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _spec(tmp: Path, name: str, trials: int, epochs: int, batch_size: int = 64) -> Path:
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump({
        "name": name, "dataset": "digits", "arch": "resnet-tiny",
        "train": {"epochs": epochs, "batch_size": batch_size},
        "search": {"preset": "quick"}, "trials": trials, "scheduler": "fifo", "concurrency": 2,
        "storage": str(tmp / "studies"), "mlflow": {"tracking_uri": f"sqlite:///{tmp}/mlflow.db"}}))
    return p


def _snn_study(args: list[str], address: str, cwd: Path) -> subprocess.Popen:
    # mlflow.set_tracking_uri() in this process exports MLFLOW_TRACKING_URI, which the CLI reads
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "study.cli", *args, "--address", address], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _runs(tmp: Path, experiment: str):
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id], filter_string="tags.kind = 'trial'")
    return c, runs


def _driver_traceback(out: str) -> bool:
    """Whether the driver itself printed a traceback (lines forwarded from Ray's worker
    processes, tagged "(name pid=N)", are theirs: a worker SIGTERMed at shutdown may print one)."""
    return any("Traceback" in line for line in out.splitlines() if "pid=" not in line)


def _mlflow_server(tmp: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp}/server.db",
                             "--artifacts-destination", str(tmp / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], cwd=tmp, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)

    wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/health"), 120, "the MLflow server", [proc])
    return proc


def _epochs_in_folders(study_dir: Path) -> dict[str, list[int]]:
    """Epochs each trial has finished, as its folder records them (checkpoints and result.json)."""
    from study.tracking import read_trial

    out = {}
    for d in sorted(study_dir.glob("trial_*")):
        record = read_trial(d)
        if record is not None:
            out[record.trial_id] = [int(r["epoch"]) for r in record.results]
    return out


def _mlflow_epochs(uri: str, experiment: str) -> dict[str, list[int]]:
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    return {r.data.tags["trial_id"]: sorted(int(m.step) for m in c.get_metric_history(r.info.run_id, "test_acc"))
            for r in c.search_runs([exp.experiment_id], "tags.kind = 'trial'")}


def test_driver_killed_during_a_tracking_outage_then_sync_restores_every_epoch(ray_session, tmp_path):
    """The server dies, then the driver too: nothing of the outage reached MLflow, and no driver
    is left to send it. `snn-study sync` writes it from the trial folders, once and only once."""
    address = ray_session.get_runtime_context().gcs_address
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _mlflow_server(tmp_path, port)
    spec = _spec(tmp_path, "gap", trials=2, epochs=12, batch_size=32)
    proc = _snn_study(["run", str(spec), "--tracking-uri", uri], address, tmp_path)
    study_dir = tmp_path / "studies" / "gap"
    try:
        def logged_epoch_one() -> bool:
            try:
                return any(_mlflow_epochs(uri, "gap").values())
            except Exception:
                return False

        wait_for(logged_epoch_one, 300, "a trial's first epoch in MLflow")
        os.killpg(server.pid, signal.SIGKILL)  # the tracking server vanishes mid-study
        server.wait()
        at_outage = sum(map(len, _epochs_in_folders(study_dir).values()))
        wait_for(lambda: sum(map(len, _epochs_in_folders(study_dir).values())) >= at_outage + 3, 300,
                 "training to go on while the server is down")
        os.kill(proc.pid, signal.SIGKILL)  # and now the driver dies, with the outage's epochs unsent
        proc.wait()
        time.sleep(2)  # its trials stop with it
        in_folders = _epochs_in_folders(study_dir)
        server = _mlflow_server(tmp_path, port)  # back, with the same store
        before = _mlflow_epochs(uri, "gap")
        assert sum(map(len, before.values())) < sum(map(len, in_folders.values()))  # the gap is real

        sync = subprocess.run([sys.executable, "-m", "study.cli", "sync", str(study_dir)], cwd=tmp_path,
                              env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
                              | {"PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
        assert sync.returncode == 0, sync.stderr
        assert "Traceback" not in sync.stderr
        after = _mlflow_epochs(uri, "gap")
        for trial_id, epochs in in_folders.items():  # every epoch a trial finished, once
            assert after[trial_id] == sorted(set(epochs)) == list(range(1, max(epochs) + 1)), (trial_id, after)
        again = subprocess.run([sys.executable, "-m", "study.cli", "sync", str(study_dir)], cwd=tmp_path,
                               env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
                               | {"PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0 and " 0 epoch(s) written" in again.stdout, again.stdout + again.stderr
        assert _mlflow_epochs(uri, "gap") == after
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def _trained_at(study_dir: Path) -> dict[str, dict[int, float]]:
    """When each epoch of each trial was trained, as its newest checkpoint records it."""
    from study.tracking import read_trial

    out = {}
    for d in sorted(study_dir.glob("trial_*")):
        record = read_trial(d)
        if record is not None:
            out[record.trial_id] = {int(r["epoch"]): r["timestamp"] for r in record.results if "timestamp" in r
                                    and isinstance(r["timestamp"], float)}
    return out


def test_a_driver_killed_again_and_again_loses_nothing_and_trains_nothing_twice(ray_session, tmp_path):
    """Kill the driver at three points of one study, the last just after a trial finished, and
    resume after each: every trial finishes; every epoch a trial finished is trained once (its
    record keeps the time it was trained); a finished trial's MLflow record is kept as it was;
    Optuna and MLflow agree; a point Tune never recorded (asked for just before a kill) is failed
    with the reason and re-suggested; no resume prints a traceback."""
    import optuna

    address = ray_session.get_runtime_context().gcs_address
    # Epochs of about a second (batches of 16). With sub-second epochs a known Tune race shows:
    # checkpoints are pruned (num_to_keep=2) before the experiment state that still names the
    # pruned one is saved, and a driver killed in between leaves a trial that cannot be restored
    # (docs/reliability.md). Real epochs are far longer than the state's 2 s save period.
    spec = _spec(tmp_path, "again", trials=4, epochs=8, batch_size=16)
    study_dir = tmp_path / "studies" / "again"

    def trained(target: int):
        return lambda: (study_dir / "study.json").exists() and sum(map(len, _trained_at(study_dir).values())) >= target

    def a_run_finished() -> bool:
        if not (tmp_path / "mlflow.db").exists() or not (study_dir / "study.json").exists():
            return False
        try:
            return any(r.info.status == "FINISHED" for r in _runs(tmp_path, "again")[1])
        except Exception:
            return False

    def history(c, run_id):
        return sorted((m.step, m.value) for m in c.get_metric_history(run_id, "test_acc"))

    proc = _snn_study(["run", str(spec)], address, tmp_path)
    seen: dict[str, dict[int, float]] = {}  # trial -> epoch -> when it was trained, at each kill
    finished_before: dict[str, list] = {}  # trial -> its MLflow history, once its run was FINISHED at a kill
    outputs = []
    for what, ready in (("3 epochs trained", trained(3)), ("10 epochs trained", trained(10)),
                        ("a finished trial", a_run_finished)):
        wait_for(ready, 300, what)
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies mid-study
        proc.wait()
        outputs.append(proc.stdout.read())
        time.sleep(1)  # the trials stop with their driver
        for trial, epochs in _trained_at(study_dir).items():
            seen.setdefault(trial, {}).update(epochs)
        c, runs = _runs(tmp_path, "again")
        finished_before |= {r.data.tags["trial_id"]: history(c, r.info.run_id) for r in runs
                            if r.info.status == "FINISHED"}
        proc = _snn_study(["resume", str(study_dir)], address, tmp_path)
    assert finished_before
    out, _ = proc.communicate(timeout=500)
    outputs.append(out)
    assert proc.returncode == 0, out[-3000:]
    print(out[-3000:])  # shown if an assertion below fails: what the last resumed driver said
    for text in outputs[1:]:  # the resumes (the first run's output ends where it was killed)
        assert not _driver_traceback(text), text[-4000:]
    final = _trained_at(study_dir)
    for trial, epochs in seen.items():
        for epoch, when in epochs.items():
            assert final[trial][epoch] == when, (trial, epoch, "trained again")
    c, runs = _runs(tmp_path, "again")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    print(f"killed driver: {len(runs)} trial runs, {len(finished)} finished")  # the rest: started, then orphaned
    assert len(finished) == 4
    for r in runs:  # a trial started just before a kill, which Tune had not yet recorded
        assert r.info.status == "FINISHED" or (
            r.info.status == "FAILED" and "re-suggested" in r.data.tags["error"]), (r.info.status, r.data.tags)
    for r in finished:
        assert [step for step, _ in history(c, r.info.run_id)] == list(range(1, 9)), r.data.tags["trial_id"]
        if r.data.tags["trial_id"] in finished_before:  # a finished trial's record is kept as it was
            assert history(c, r.info.run_id) == finished_before[r.data.tags["trial_id"]]
    study = optuna.load_study(study_name="again", storage=f"sqlite:///{study_dir}/optuna.db")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(round(t.value, 6) for t in done) == sorted(round(r.data.metrics["test_acc"], 6) for r in finished)
    for t in study.trials:  # any other trial was asked for but never started: failed, with the reason
        assert t.state == optuna.trial.TrialState.COMPLETE or (
            t.state == optuna.trial.TrialState.FAIL and "re-suggested" in t.user_attrs["fail_reason"])
    # every run MLflow closed as FAILED is one of the points Optuna failed and re-suggested
    assert len(study.trials) - len(done) >= len(runs) - len(finished)


def test_stop_leaves_nothing_of_a_killed_drivers_local_ray(tmp_path):
    """A driver that started its own Ray is SIGKILLed: `snn-study stop` ends every process of
    that Ray which outlived it (the study folder recorded them), and nothing else."""
    import json
    import re

    import psutil

    spec = _spec(tmp_path, "orphans", trials=2, epochs=40)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    proc = subprocess.Popen([sys.executable, "-m", "study.cli", "run", str(spec)], cwd=tmp_path,
                            env=env | {"PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    study_dir = tmp_path / "studies" / "orphans"
    try:
        wait_for(lambda: any(study_dir.glob("trial_*/checkpoint_000000")), 300, "the first checkpoint", [proc])
        recorded = json.loads((study_dir / "local_ray.json").read_text())
        assert recorded["driver"][0] == proc.pid and recorded["processes"]
        os.kill(proc.pid, signal.SIGKILL)  # the driver alone
        proc.wait()
        time.sleep(5)

        def alive() -> list[int]:
            out = []
            for pid, started, _ in recorded["processes"]:
                try:
                    p = psutil.Process(pid)
                    if abs(p.create_time() - started) < 1e-3 and p.status() != psutil.STATUS_ZOMBIE:
                        out.append(pid)
                except psutil.Error:
                    pass
            return out

        left = alive()
        print(f"{len(left)} of the local Ray's {len(recorded['processes'])} processes outlived the driver")
        r = subprocess.run([sys.executable, "-m", "study.cli", "stop", str(study_dir)], cwd=tmp_path,
                           env=env | {"PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        stopped = re.search(r"stopped study orphans: (\d+) process\(es\) of its local Ray stopped", r.stdout)
        assert stopped and int(stopped.group(1)) <= len(left), r.stdout  # (one may have ended by itself meanwhile)
        assert alive() == []
        assert not (study_dir / "local_ray.json").exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_an_interrupted_study_says_so_exits_130_and_resumes_to_the_end(ray_session, tmp_path):
    """Ctrl-C (SIGINT) stops `snn-study run`, and then `snn-study resume`, part way: each says the
    study stopped early (how many trials finished, of how many) and how to resume it, writes no
    report, and exits 130, so `snn-study run spec && next-step` stops there. MLflow holds every
    epoch the trials finished; the last resume finishes the study. Tune's JSON logger writes
    each trial's result.json, its TensorBoard logger nothing."""
    import re

    address = ray_session.get_runtime_context().gcs_address
    spec = _spec(tmp_path, "ctrlc", trials=6, epochs=8, batch_size=16)
    study_dir = tmp_path / "studies" / "ctrlc"

    def trained() -> int:
        return sum(map(len, _epochs_in_folders(study_dir).values())) if (study_dir / "study.json").exists() else 0

    def a_run_finished() -> bool:
        try:
            return any(r.info.status == "FINISHED" for r in _runs(tmp_path, "ctrlc")[1])
        except Exception:
            return False

    at = 0  # epochs trained when the driver was last interrupted
    proc = _snn_study(["run", str(spec)], address, tmp_path)
    try:
        for command, ready in (("run", a_run_finished), ("resume", lambda: trained() >= at + 4)):
            wait_for(ready, 300, f"{command}: a point to interrupt it", [proc])
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the driver's terminal
            out, _ = proc.communicate(timeout=300)
            assert proc.returncode == 130, out[-3000:]
            assert not _driver_traceback(out), out[-4000:]
            stopped = re.search(r"snn-study: error: study ctrlc stopped early: (\d+) of 6 trial\(s\) finished; .*"
                                r"resume it with 'snn-study resume (.+)'$", out.strip().splitlines()[-1])
            assert stopped and Path(stopped[2]) == study_dir and int(stopped[1]) < 6, out[-3000:]
            print(out[-1500:])  # shown if an assertion below fails: how the interrupted driver ended
            assert not any(line.startswith(("study ctrlc:", "best trial")) for line in out.splitlines())
            assert not (study_dir / "report").exists()
            at = trained()
            in_mlflow = {t: e for t, e in _mlflow_epochs(f"sqlite:///{tmp_path}/mlflow.db", "ctrlc").items() if e}
            assert {t: sorted(set(e)) for t, e in _epochs_in_folders(study_dir).items()} == in_mlflow
            # a run closed FINISHED trained its budget: the runs of the trials Ctrl-C caught training stay open
            assert all(in_mlflow.get(r.data.tags["trial_id"]) == list(range(1, 9)) for r in _runs(tmp_path, "ctrlc")[1]
                       if r.info.status == "FINISHED"), out[-1500:]
            proc = _snn_study(["resume", str(study_dir)], address, tmp_path)
        out, _ = proc.communicate(timeout=500)
        assert proc.returncode == 0, out[-3000:]
        assert "study ctrlc: 6 trial(s), 0 errored" in out and (study_dir / "report" / "report.md").exists()
        assert all(epochs == list(range(1, 9)) for epochs in
                   _mlflow_epochs(f"sqlite:///{tmp_path}/mlflow.db", "ctrlc").values())
        # a FIFO study: no trial was stopped early; those Ctrl-C caught training trained on, in their runs
        runs = _runs(tmp_path, "ctrlc")[1]
        assert len(runs) == 6 and all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
        assert not [r.data.tags["trial_id"] for r in runs if "stopped_early" in r.data.tags]
        trials = sorted(study_dir.glob("trial_*"))
        assert len(trials) == 6 and all((t / "result.json").stat().st_size for t in trials)
        assert not list(study_dir.glob("trial_*/events.out.tfevents.*"))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
