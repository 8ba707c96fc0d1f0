"""Section 5 of ``python -m benchmarks``: a user's own data, ready in a trial.

An npz of the size the budget is set for, prepared by the driver (the first time and with its
cache found), shipped to trials by both routes a study uses (Ray's object store, a
memory-mapped path), and timed in real Tune trials from the trial's start to its first training
batch in hand, against the budget; then the training loader's throughput alone.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from benchmarks import ROOT
from benchmarks._studies import local_ray

NOTE = ("A user's own data, the issue's case: an npz of 10,000 random 28x28 uint8 images of 10 classes "
        "(fixed seed), `test_fraction: 0.2`, read as a study reads it. Driver: `snn.data.prepare` into a new "
        "data_root in a fresh process, as a study's driver prepares once (imports not counted): the first "
        "time (the npz just written and synced, so read from the page cache; split, channel statistics, cache written) "
        "and again (the cache found and opened memory-mapped), 3 rounds (2 with --quick); then "
        "`tune.with_parameters` with the prepared data, which puts it in Ray's object store. Trials: a real "
        "Tune run on a Ray started once with 2 CPUs, its trainable built as `study.tuner._trainable` builds "
        "it (`tune.with_parameters(..., data=prepared.in_memory() or None, data_path=prepared.path)`, 1 CPU a trial) "
        "and taking its data as `train_snn` does (`trainables._trainable._user_data`: the object store's "
        "`data`, else `snn.data.load_prepared(data_path)`, memory-mapped), for both routes, one trial at a "
        "time with `reuse_actors`, so a run's first trial starts in a new process and the next ones reuse "
        "it. A trial's clock starts before `tune.with_parameters` fetches its parameters from the object "
        "store; data in hand: `_user_data` returned; first training batch in hand: `snn.data.loaders` built "
        "as `Trainer` builds them on CPU (no workers, batch 128) and `next(iter(train_loader))` returned. "
        "Then each trial iterates the training loader alone for one epoch (no model), as it is and with "
        "`augment: true`. Arrays in the trial: how the trial holds `x_train`. Two rounds, the routes' order "
        "swapped, of 3 trials a route (one round of 2 with --quick). Medians, each round's or trial's "
        "value listed; met: every trial had its first batch within the budget.")

# The case: a 10,000-image 28x28 uint8 npz of 10 classes, 0.2 held out for testing, ready
# (its first training batch in hand) within 2 s of a trial's start.
_USER_N, _USER_HW, _USER_CLASSES, _USER_TEST_FRACTION = 10_000, 28, 10, 0.2
_USER_BATCH, _USER_T = 128, 4
_READY_BUDGET_S = 2.0


def _user_npz(path: Path) -> Path:
    """The benchmark's npz: random uint8 images and labels, from a fixed seed."""
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (_USER_N, _USER_HW, _USER_HW), dtype=np.uint8),
             y=rng.integers(0, _USER_CLASSES, _USER_N))
    os.sync()  # written back now, not during the first round's prepare
    return path


_PREPARE = """
import json, sys, time
from snn.config import UserData
from snn.data import prepare
user = UserData.model_validate_json(sys.argv[1])
t0 = time.perf_counter()
prepare(user, sys.argv[2], int(sys.argv[3]))
t1 = time.perf_counter()
prepare(user, sys.argv[2], int(sys.argv[3]))
print(json.dumps({"cold": t1 - t0, "hot": time.perf_counter() - t1}))
"""


def _prepare_in_driver(user, root: str) -> dict:
    """``prepare`` twice into a new ``root``, in a fresh process as a study's driver calls it
    once (this process's malloc setting, and its earlier rounds, would spare it page faults)."""
    out = subprocess.run([sys.executable, "-c", _PREPARE, user.model_dump_json(), root, str(_USER_T)], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _arrival(x) -> str:
    """How a trial holds the training images it was given."""
    import numpy as np

    if isinstance(x, np.memmap) and getattr(x, "filename", None):
        return "memory-mapped from the cache file"
    if not x.flags.writeable:
        return "zero-copy view of the object store"
    return f"a private copy ({type(x).__module__.split('.')[0]}.{type(x).__name__}, unpickled)"


def _ready_trial(user, root: str, user_data: Callable, loaders: Callable, threads: Callable, report: Callable):
    """The function a benchmark trial runs, taking its data as ``train_snn`` does
    (``tune.with_parameters`` brings ``data`` and ``data_path``; ``user_data`` is the
    trainable's ``_user_data``, ``threads`` its ``_threads``) and building the loaders as
    ``Trainer`` does on CPU (no workers), then timing an epoch of the training loader alone."""
    def trial(config: dict, data=None, data_path: str | None = None) -> None:
        t0 = config["start"]  # set before with_parameters fetched `data`: see _started
        threads()
        prepared = user_data(data, data_path)
        t_data = time.perf_counter()
        train, _ = loaders(user, root, _USER_BATCH, _USER_T, 0, seed=0, prepared=prepared)
        next(iter(train))
        t_batch = time.perf_counter()
        rates = {}
        for augment in (False, True):
            loader = train if not augment else loaders(user.model_copy(update={"augment": True}), root, _USER_BATCH,
                                                       _USER_T, 0, seed=0, prepared=prepared)[0]
            t = time.perf_counter()
            n = sum(len(y) for _, y in loader)
            rates[augment] = n / (time.perf_counter() - t)
        report({"pid": os.getpid(), "started": config["wall"], "data_s": t_data - t0, "ready_s": t_batch - t0,
                "epoch_images": n, "epoch_img_s": rates[False], "epoch_augmented_img_s": rates[True],
                "threads": torch.get_num_threads(), "arrival": _arrival(prepared.x_train)})
    return trial


def _started(fn: Callable[[dict], None]) -> Callable[[dict], None]:
    """``fn`` (what ``tune.with_parameters`` returns) told when the trial function started: before
    it fetches its parameters from the object store, which is part of a trial getting its data."""
    def user_data_trial(config: dict) -> None:
        return fn({**config, "start": time.perf_counter(), "wall": time.time()})
    return user_data_trial


def bench_user_data(quick: bool) -> list[dict]:
    from ray import tune

    from snn.config import UserData
    from snn.data import loaders, prepare
    from trainables._trainable import _threads, _user_data

    rounds, trials, prepares = (1, 2, 2) if quick else (2, 3, 3)
    with tempfile.TemporaryDirectory() as tmp:
        user = UserData(format="npz", train=str(_user_npz(Path(tmp, "images.npz"))),
                        test_fraction=_USER_TEST_FRACTION)
        # (a) the driver: the first prepare in a data_root writes its cache, the next reads it
        driver = [_prepare_in_driver(user, str(Path(tmp, f"data{r}"))) for r in range(prepares)]
        cold, hot = [d["cold"] for d in driver], [d["hot"] for d in driver]
        root = str(Path(tmp, "data0"))
        prepared = prepare(user, root, _USER_T)  # the cache of the first round: what the study ships
        n_train = len(prepared.y_train)

        # (b, c, d) in trials of a Tune run, one at a time on one actor (reuse_actors): its first trial
        # runs in a new process, the next ones reuse it
        put: list[float] = []
        seen: dict[tuple[str, bool], list[dict]] = {}  # (route, in a process that ran a trial before) -> trials
        pids: set[int] = set()
        with local_ray():
            trial = _ready_trial(user, root, _user_data, loaders, _threads, tune.report)
            for r in range(rounds):
                for route in (("object store", "memory-mapped path") if r % 2 == 0 else
                              ("memory-mapped path", "object store")):
                    t = time.perf_counter()
                    # as study.tuner._trainable ships a small dataset, and a large one
                    shipped = tune.with_parameters(trial, data=prepared.in_memory() if route == "object store" else None,
                                                   data_path=prepared.path)
                    if route == "object store":
                        put.append(time.perf_counter() - t)
                    tuner = tune.Tuner(
                        tune.with_resources(_started(shipped), {"cpu": 1}),
                        param_space={"i": tune.grid_search(list(range(trials)))},
                        tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=1),
                        run_config=tune.RunConfig(name=f"ready{r}{route[0]}", storage_path=str(Path(tmp, "tune")),
                                                  verbose=0))
                    grid = tuner.fit()
                    if grid.errors:
                        raise RuntimeError(f"user-data section: {len(grid.errors)} trials failed: {grid.errors[0]}")
                    for m in sorted((res.metrics for res in grid), key=lambda m: m["started"]):
                        seen.setdefault((route, m["pid"] in pids), []).append(m)
                        pids.add(m["pid"])
    return _user_data_rows(cold, hot, put, seen, n_train)


def _user_data_rows(cold: list[float], hot: list[float], put: list[float], seen: dict[tuple[str, bool], list[dict]],
                    n_train: int) -> list[dict]:
    median = statistics.median

    def row(quantity: str, values: list[float], fmt: str = "{:.3g}", budget: bool = False, **extra) -> dict:
        r: dict = {"quantity": quantity, "value": fmt.format(median(values)),
                   "each round or trial": ", ".join(map(fmt.format, values))}
        if budget:
            r[f"of the {_READY_BUDGET_S:g} s budget"] = f"{median(values) / _READY_BUDGET_S:.2g}x"
            r["met"] = "yes" if max(values) <= _READY_BUDGET_S else "no"
        return {**r, **extra}

    rows = [row("driver: prepare, first time: reads the npz, splits, writes the cache (s)", cold),
            row("driver: prepare again, the cache found (s)", hot),
            row("driver: tune.with_parameters, the prepared data put in the object store (s)", put)]
    for route in ("object store", "memory-mapped path"):
        for reused in (False, True):
            ms = seen.get((route, reused), [])
            if not ms:
                continue
            who = f"trial, {'a reused actor' if reused else 'first in its process'}, {route}"
            arrival = sorted({m["arrival"] for m in ms})
            rows.append(row(f"{who}: data in hand (s)", [m["data_s"] for m in ms],
                            **{"arrays in the trial": "; ".join(arrival)}))
            rows.append(row(f"{who}: first training batch in hand (s)", [m["ready_s"] for m in ms], budget=True))
        ms = seen.get((route, False), []) + seen.get((route, True), [])
        if ms:
            rows.append(row(f"trial, {route}: an epoch of the training loader alone, {n_train:,} images at batch "
                            f"{_USER_BATCH}, torch threads {ms[0]['threads']} (img/s)", [m["epoch_img_s"] for m in ms],
                            fmt="{:.0f}"))
            rows.append(row("  the same with augment: true (img/s)", [m["epoch_augmented_img_s"] for m in ms],
                            fmt="{:.0f}"))
    return rows
