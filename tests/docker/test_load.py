"""Under load on a cluster: many trials at once (32 where memory allows) on a three-node Ray
cluster logging to one MLflow server on PostgreSQL, with a second study beside them sent with
``ray job submit`` (the compose stack's commands, run as processes on loopback); a whole
worker node killed under that load, and the server SIGKILLed and started again.

One run of the scenario (``_load.run_load``, faults on) serves every test here: a cluster of
up to 34 trial processes takes minutes to start on a small machine, and each test asserts its own
guarantee on what that run left.

What it needs: memory for 34 trial processes of about 0.5 GiB each (their anonymous memory
with PyTorch's CUDA build, whose libraries initialise even on a CPU), about 3 GiB for the
cluster (PostgreSQL, MLflow's server, Ray's head and two worker nodes) and 2 GiB for the
drivers, and 10% of the machine's memory as headroom, all below the line where Ray's memory
monitor kills workers (95% of memory, the machine's other programs counted): about 28 GB
with nothing else running for 32 trials at once, where a 24 GB machine holds about 28
trials. So the scenario first measures one trial and its driver (a one-trial study on the
cluster), then runs as many trials as fit in the memory free (printed, and a warning below
32); fewer than 8 fit and the tests skip, saying what was measured.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest
from _cluster import LocalCluster, pg_bin
from _load import B_TRIALS, EPOCHS, TRIALS, WORKER_CPUS, TooLittleMemory, results, run_load

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def load():
    if pg_bin() is None:
        pytest.skip("PostgreSQL server binaries not found (Debian: apt-get install postgresql; `make test` does it)")
    work = Path(tempfile.mkdtemp(prefix="snn-load-", dir="/tmp"))
    cluster = LocalCluster(work, worker_cpus=WORKER_CPUS)
    try:
        try:
            run = run_load(cluster, faults=True, measure=False)  # the measures are the benchmark's (benchmarks.load)
        except TooLittleMemory as e:
            pytest.skip(str(e))
        print("\nload scenario:", run.events, run.measures)
        if run.trials < TRIALS:
            warnings.warn(f"load scenario: {run.trials} trials at once, not {TRIALS}: {run.sizing.text()}",
                          stacklevel=1)
        yield run
    finally:
        cluster.stop()
        if not os.environ.get("SNN_STUDY_KEEP_LOAD"):  # kept: to read the logs of a failed run
            shutil.rmtree(work, ignore_errors=True)


def _driver_traceback(out: str) -> bool:
    """Whether the driver itself printed a traceback (lines forwarded from Ray's worker
    processes, tagged "(name pid=N)", are theirs)."""
    return any("Traceback" in line for line in out.splitlines() if "pid=" not in line)


def _mlflow_trials(uri: str, study: str):
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(study)
    return c, c.search_runs([exp.experiment_id], "tags.kind = 'trial'", max_results=1000)


def _optuna_trials(run, study: str):
    import optuna

    return optuna.load_study(study_name=study, storage=run.cluster.database_url("optuna")).get_trials(deepcopy=False)


def test_all_trials_at_once_on_one_server_record_every_epoch_exactly_once(load):
    assert load.rc == {"load": 0, "load-b": 0}, {k: v[-3000:] for k, v in load.out.items()}
    assert load.measures["most trials at once"] >= load.trials, load.measures
    for study, n in (("load", load.trials), ("load-b", B_TRIALS)):
        c, runs = _mlflow_trials(load.cluster.uri, study)
        assert len(runs) == n and all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
        for r in runs:
            steps = sorted(m.step for m in c.get_metric_history(r.info.run_id, "test_acc"))
            assert steps == list(range(1, EPOCHS + 1)), (study, r.data.tags["trial_id"], steps)
        trials = _optuna_trials(load, study)
        assert len(trials) == n and all(t.state.is_finished() for t in trials), [t.state for t in trials]


def test_a_worker_node_lost_its_trials_resume_elsewhere_from_their_checkpoints(load):
    moved = {}  # trial -> (its last epoch on the lost node, its first epoch after)
    for d in sorted((load.studies / "load").glob("trial_*")):
        rs = results(d)
        on_lost = [i for i, r in enumerate(rs) if r["node_id"] == load.killed_node]
        if on_lost and on_lost[-1] + 1 < len(rs):
            moved[d.name] = (rs[on_lost[-1]]["epoch"], rs[on_lost[-1] + 1]["epoch"])
    assert moved, "no trial of the killed node went on elsewhere"
    assert len({r["node_id"] for d in (load.studies / "load").glob("trial_*") for r in results(d)}) == 2
    # each resumed from its last checkpoint (every reported epoch has one): none trained twice or skipped
    assert all(after == before + 1 for before, after in moved.values()), moved
    c, runs = _mlflow_trials(load.cluster.uri, "load")
    assert all(r.info.status == "FINISHED" and "error" not in r.data.tags for r in runs)
    # the console says it in one line per trial, the tracebacks are in the study's log
    out = load.out["load"]
    assert out.count("; Tune retries it from its last checkpoint (epoch ") >= len(moved), out[-4000:]
    assert "recovered from a failure by a retry" in out and not _driver_traceback(out), out[-4000:]
    assert "Traceback" in (load.studies / "load" / "driver.log").read_text()


def test_the_tracking_server_killed_under_load_loses_nothing(load):
    out = load.out["load"]
    assert "MLflow: " in out and "training goes on" in out, out[-3000:]  # the outage was reported
    assert "View run" not in out  # nor buried under MLflow's two links per trial
    c, runs = _mlflow_trials(load.cluster.uri, "load")
    for r in runs:  # every epoch once, the outage's included (asserted per epoch in the first test too)
        assert len(c.get_metric_history(r.info.run_id, "test_acc")) == EPOCHS


def test_two_studies_on_one_cluster_and_server_do_not_mix(load):
    assert "succeeded" in load.out["load-b"], load.out["load-b"][-3000:]  # `ray job submit` of compose's command
    ids = {}
    for study in ("load", "load-b"):
        c, runs = _mlflow_trials(load.cluster.uri, study)
        assert {r.data.tags["study"] for r in runs} == {study}
        folders = {d.name.removeprefix("trial_") for d in (load.studies / study).glob("trial_*")}
        ids[study] = {r.data.tags["trial_id"] for r in runs}
        assert ids[study] == folders
        numbers = {t.number for t in _optuna_trials(load, study)}
        assert {int(r.data.tags["optuna_trial_number"]) for r in runs if "optuna_trial_number" in r.data.tags} <= numbers
        parent = c.search_runs([runs[0].info.experiment_id], "tags.kind = 'study'")
        assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert not ids["load"] & ids["load-b"]
