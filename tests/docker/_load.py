"""Two studies at once on a three-node Ray cluster, one MLflow server and one PostgreSQL: the
scenario the load tests assert on and ``benchmarks.load`` measures.

Study ``load`` runs up to 32 tiny trials at once (digits, resnet-tiny, one batch an epoch, one
logical CPU each on two worker nodes of 17), its driver joined to the cluster from this
machine (``--address``); study ``load-b`` runs 2 beside it, sent with ``ray job submit`` and the
command of compose's ``study`` service (its driver on the head). Both log to the same
MLflow server and keep their Optuna studies in the same PostgreSQL database
(``search.storage``), their Tune folders under one folder every node reads, as a shared file
system on a cluster. With ``faults``, once all of ``load``'s trials train at once a whole
worker node is killed (its trials wait for slots on the other), and the MLflow server is
SIGKILLed, then started again once the other node's trials have trained on without it.

Memory, not CPUs, bounds how many trials run at once: each trial is a Ray worker process
that imports PyTorch (about half a GiB of anonymous memory with PyTorch's CUDA build, whose
libraries initialise even on a CPU), and the three nodes share the machine, with whatever
else runs on it, under one line of Ray's memory monitor (95% of memory). So once the
cluster is up, a one-trial study of the same trial measures the most a trial process and a
driver hold, and study ``load`` runs as many trials as fit in the memory free then, 10% of
the machine's memory kept as headroom (``_memory.size``), up to 32; fewer than
``LEAST_TRIALS`` and it raises :class:`TooLittleMemory` saying what it measured.

While it runs, a probe logs one metric to the server every half second (the latency a client
sees under this load), PostgreSQL's count of metric rows is read every second (the server's
write rate), and the memory used, the trial processes' and the driver's, every two seconds.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from _cluster import BIN, ROOT, LocalCluster, compose_command
from _memory import MIB, MemorySampler, Sizing, kill_line, node_memory, size, trial_workers
from procs import wait_for

TRIALS, EPOCHS = 32, 18
B_TRIALS = 2
WORKER_CPUS = 17  # trial slots per worker node: 34, one for each trial of both studies
# Fewer trials than this at once, and the scenario is no longer many trials on one server
# with a node's worth of them lost: skipped rather than run smaller
LEAST_TRIALS = 8
SIZING_EPOCHS = 3  # the one-trial study that measures a trial's memory


class TooLittleMemory(RuntimeError):
    """Not even ``LEAST_TRIALS`` trials fit in the memory free now; the message says what was measured."""


@dataclass
class LoadRun:
    """What the scenario left: the cluster (still up), the studies' folders, drivers' outputs and measures."""

    cluster: LocalCluster
    studies: Path
    out: dict[str, str]  # study name -> its driver's console output
    rc: dict[str, int]
    trials: int = TRIALS  # trials of study `load`, all at once
    sizing: Sizing | None = None  # what set `trials`, where the memory free did
    killed_node: str | None = None  # the Ray node id of the worker node killed
    measures: dict[str, float] = field(default_factory=dict)
    events: list[tuple[float, str]] = field(default_factory=list)  # (seconds since start, what happened)


def _spec(work: Path, name: str, trials: int, cluster: LocalCluster, epochs: int = EPOCHS,
          storage: str = "studies") -> Path:
    p = work / f"{name}.yaml"
    p.write_text(yaml.safe_dump({
        "name": name, "dataset": "digits", "arch": "resnet-tiny", "trials": trials, "concurrency": trials,
        "scheduler": "fifo", "search": {"preset": "quick", "storage": cluster.database_url("optuna")},
        "train": {"epochs": epochs, "batch_size": 32, "max_batches": 1, "workers": 0},
        "resources": {"cpu": 1}, "max_failures": 3, "storage": str(work / storage),
        "data_root": str(work / "data")}))
    return p


def _driver(cluster: LocalCluster, name: str, spec: Path) -> subprocess.Popen:
    """``snn-study run spec`` on this machine, joined to the cluster (``--address``)."""
    log = open(cluster.work / f"driver-{name}.log", "w")
    p = subprocess.Popen(
        [sys.executable, "-m", "study.cli", "run", str(spec), "--address", cluster.gcs_address,
         "--tracking-uri", cluster.uri],
        cwd=cluster.work, env=cluster.env | {"PYTHONPATH": str(ROOT)}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    p.log_path = log.name
    return p


def _size(cluster: LocalCluster) -> Sizing:
    """Size study `load` on this machine: a one-trial study of the scenario's trial
    (``SIZING_EPOCHS`` epochs) shows the most a trial process and its driver hold; the memory
    free is read once it has ended."""
    driver = _driver(cluster, "load-sizing", _spec(cluster.work, "load-sizing", 1, cluster, epochs=SIZING_EPOCHS,
                                                    storage="sizing"))
    sampler = MemorySampler(cluster, [driver.pid], interval=0.5)
    sampler.start()
    try:
        driver.wait(timeout=600)
    finally:
        sampler.stop()
        if driver.poll() is None:
            os.killpg(driver.pid, 9)
            driver.wait()
    assert driver.returncode == 0 and sampler.most_trial, \
        f"the sizing study exited with {driver.returncode}:\n{Path(driver.log_path).read_text()[-3000:]}"
    end = time.monotonic() + 60  # the trial's process gone too (Ray ends a job's workers after its driver)
    while trial_workers([cluster.node_processes(i) for i in range(len(cluster.workers))]) and time.monotonic() < end:
        time.sleep(1.0)
    return size(TRIALS, B_TRIALS, sampler.most_trial, sampler.most_driver, cluster.env)


def results(trial_dir: Path) -> list[dict]:
    """Every result Tune wrote for the trial, in order (a resumed trial's too)."""
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def most_at_once(study_dir: Path) -> int:
    """The most trials of the study that trained at the same moment, from their results' times
    (a trial trains from its first epoch's start to its last result)."""
    spans = []
    for d in study_dir.glob("trial_*"):
        rs = results(d)
        if rs:
            spans.append((rs[0]["timestamp"] - rs[0].get("time_this_iter_s", 0.0), rs[-1]["timestamp"]))
    return max((sum(1 for s, e in spans if s <= t <= e) for t, _ in spans), default=0)


def _leaders_epoch(work: Path) -> int:
    """The most epochs a trial of study ``load`` has reported."""
    return max((rs[-1].get("epoch", 0) for d in (work / "studies" / "load").glob("trial_*") if (rs := results(d))),
               default=0)


def _epochs_done(work: Path) -> int:
    return sum(len(results(d)) for d in (work / "studies").glob("*/trial_*"))


class _Probe(threading.Thread):
    """Logs a metric to the server's REST API every half second, once each (no retries); keeps
    each write's seconds (None: it failed, the server being down)."""

    def __init__(self, uri: str) -> None:
        super().__init__(daemon=True)
        from mlflow import MlflowClient

        client = MlflowClient(uri)
        self.run_id = client.create_run(client.create_experiment("load-probe")).info.run_id
        self.url = f"{uri}/api/2.0/mlflow/runs/log-metric"
        self.times: list[float | None] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        step = 0
        while not self.stopped.wait(0.5):
            body = json.dumps({"run_id": self.run_id, "key": "probe", "value": 1.0, "step": step,
                               "timestamp": int(time.time() * 1000)}).encode()
            request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
            t0 = time.perf_counter()
            try:
                urllib.request.urlopen(request, timeout=30).read()
                self.times.append(time.perf_counter() - t0)
            except OSError:
                self.times.append(None)
            step += 1


class _RowRate(threading.Thread):
    """PostgreSQL's count of MLflow metric rows, every second: the server's write rate."""

    def __init__(self, cluster: LocalCluster) -> None:
        super().__init__(daemon=True)
        self.cluster, self.counts, self.stopped = cluster, [], threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(1.0):
            try:
                self.counts.append((time.monotonic(), int(self.cluster.query("select count(*) from metrics"))))
            except Exception:
                pass


def run_load(cluster: LocalCluster, faults: bool, measure: bool = True, timeout_s: float = 900.0,
             trials: int | None = None) -> LoadRun:
    """Start ``cluster`` (made with ``worker_cpus=WORKER_CPUS``) and run both studies to their end
    (see the module's text), with the probe and the row count if ``measure``; the caller stops
    the cluster, also when this raises.

    Args:
        trials: Trials of study `load`; None: as many as fit in the memory free, up to ``TRIALS``
            (see the module's text).

    Raises:
        TooLittleMemory: Not even ``LEAST_TRIALS`` fit; nothing of the studies was started.
    """
    work = cluster.work
    run = LoadRun(cluster, work / "studies", {}, {})
    t0 = time.monotonic()

    def event(what: str) -> None:
        run.events.append((round(time.monotonic() - t0, 1), what))

    cluster.start_postgres(databases=("mlflow", "optuna"))
    cluster.start_mlflow()
    cluster.start_ray(workers=2)
    event("cluster up")
    if trials is None:
        run.sizing = _size(cluster)
        event(f"sized: {run.sizing.text()}")
        if run.sizing.trials < LEAST_TRIALS:
            raise TooLittleMemory(f"fewer than {LEAST_TRIALS} trials of the load scenario fit in the memory free: "
                                  f"{run.sizing.text()}")
        trials = run.sizing.trials
    run.trials = trials
    started = time.monotonic()
    drivers = {}
    # study `load`: a driver on this machine joined to the cluster (snn-study run --address)
    drivers["load"] = _driver(cluster, "load", _spec(work, "load", trials, cluster))
    # study `load-b`: sent as a Ray job, with the command of compose's `study` service
    study_cmd = compose_command("study", cluster.env | {"STUDY_SPEC": str(_spec(work, "load-b", B_TRIALS, cluster))},
                                {"ray-head:6379": cluster.gcs_address, "http://mlflow:5000": cluster.uri})
    log = open(work / "driver-load-b.log", "w")
    drivers["load-b"] = subprocess.Popen(
        [str(BIN / "ray"), "job", "submit", f"--address={cluster.dashboard}", "--",
         *study_cmd[study_cmd.index("snn-study"):]],  # after `ray start ... && exec`: the head is the node here
        cwd=work, env=cluster.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    drivers["load-b"].log_path = log.name
    probe, rate = (_Probe(cluster.uri), _RowRate(cluster)) if measure else (None, None)
    memory = MemorySampler(cluster, [drivers["load"].pid])
    samplers = [s for s in (probe, rate, memory) if s is not None]
    for sampler in samplers:
        sampler.start()
    try:
        # from the results so far: a trial counts once it has reported after the last one started.
        # Measured now, while they train: at the end, the result.json of a trial restored on the
        # other node may no longer span what it did, and count one trial fewer at once
        def at_once() -> bool:
            seen.append(most_at_once(work / "studies" / "load"))
            return seen[-1] >= trials

        seen: list[int] = []
        wait_for(at_once, timeout_s / 2, f"{trials} trials training at once", [drivers["load"]], interval=1.0)
        run.measures["most trials at once"] = max(seen)
        event(f"{trials} trials training (the leaders at epoch {_leaders_epoch(work)} of {EPOCHS})")
        if faults:
            # the worker node that trains the most of the study's trials now, killed whole
            running = [rs[-1]["node_id"] for d in (work / "studies" / "load").glob("trial_*")
                       if (rs := results(d)) and rs[-1].get("epoch", 0) < EPOCHS]
            nodes = {_node_of_worker(cluster, i): i for i in range(len(cluster.workers))}
            node = max(nodes, key=running.count)
            cluster.kill_worker(nodes[node])
            run.killed_node = node
            event(f"worker node {nodes[node]} killed ({running.count(node)} trials of 'load' on it)")
            # and the tracking server, while the other node trains on and the lost trials wait for slots
            cluster.kill_mlflow()
            event("MLflow server SIGKILLed")
            at = _epochs_done(work)
            wait_for(lambda: _epochs_done(work) >= at + trials // 4, 300, "training to go on without the server",
                     [drivers["load"]], interval=1.0)
            cluster.start_mlflow()
            event("MLflow server started again")
        for name, d in drivers.items():
            d.wait(timeout=max(1.0, timeout_s - (time.monotonic() - started)))
            run.rc[name] = d.returncode
            run.out[name] = Path(d.log_path).read_text()
            event(f"study {name} ended ({d.returncode})")
    finally:
        for sampler in samplers:
            sampler.stopped.set()
        for d in drivers.values():
            if d.poll() is None:
                os.killpg(d.pid, 9)
                d.wait()
            run.out.setdefault(next(k for k, v in drivers.items() if v is d), Path(d.log_path).read_text())
    memory.join()
    run.measures |= {"most memory used GiB": round(memory.most_used / 2**30, 2),
                     "Ray's kill line GiB": round(kill_line(node_memory()[1], cluster.env) / 2**30, 2),
                     "most per trial process MiB": round(memory.most_trial / MIB),
                     "most all trial processes GiB": round(memory.most_trials / 2**30, 2),
                     "most study driver MiB": round(memory.most_driver / MIB)}
    writes = [t for t in probe.times if t is not None] if probe else []
    if writes:
        run.measures |= {"probe writes": len(writes), "probe write median s": statistics.median(writes),
                         "probe write max s": max(writes)}
    if rate and len(rate.counts) > 2:
        rates = [(c1 - c0) / (t1 - t0) for (t0, c0), (t1, c1) in zip(rate.counts, rate.counts[1:])]
        run.measures |= {"metric rows": rate.counts[-1][1], "metric rows/s mean":
                         (rate.counts[-1][1] - rate.counts[0][1]) / (rate.counts[-1][0] - rate.counts[0][0]),
                         "metric rows/s max": max(rates)}
    run.measures["most trials at once"] = max(run.measures.get("most trials at once", 0),
                                              most_at_once(work / "studies" / "load"))
    run.measures["wall s"] = time.monotonic() - t0
    return run


def _node_of_worker(cluster: LocalCluster, i: int) -> str | None:
    """The Ray node id of worker node ``i`` (its raylet's --node_id argument)."""
    for p in cluster.node_processes(i):
        try:
            args = p.cmdline()
        except Exception:
            continue
        for a in args:
            if a.startswith("--node_id="):
                return a.split("=", 1)[1]
    return None
