"""The study section's direct baselines: a study's trials run with ``fit()`` in plain processes.

No Ray, Tune, Optuna or MLflow, two ways: one after another in one process (the issue's
ideal is their sum divided by the concurrency), and ``concurrency`` spawned processes at
once (one thread each, as a trial gets one CPU), each warmed up first, taking the trials
one at a time, as Tune's reused actors do. What the study costs beyond the second's wall
time is orchestration; what that wall time costs beyond the ideal is the machine, whose
cores slow each other down when they all train. The second also times how long its
processes take to start (spawn, import torch and the project, train one batch and evaluate
once): about what any study whose trials run in fresh processes pays before its first epoch
(the evaluation, about 0.03 s on digits, is counted in the trials' own time too).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any


def _warm_up(config: dict[str, Any]) -> None:
    import torch

    from snn.training import TrainConfig, fit

    torch.set_num_threads(1)  # what each trial gets: one CPU
    # The process's one-time costs (torch's compiler stack, which the first optimizer pulls
    # in; the dataset's libraries) belong to no trial, and a study pays them in its actors:
    # pay them before the clock starts.
    fit(TrainConfig.from_dict({**config, "epochs": 1, "max_batches": 1}))


def _warm_up_then_signal(ready, config: dict[str, Any]) -> None:
    _warm_up(config)
    ready.put(True)


def _fit(config: dict[str, Any]) -> float:
    from snn.training import TrainConfig, fit

    t0 = time.perf_counter()
    fit(TrainConfig.from_dict(config))
    return time.perf_counter() - t0


def one_after_another(configs: list[dict[str, Any]]) -> list[float]:
    """Seconds of each trial, run one after another in this process once it is warmed up
    (it is left with one torch thread)."""
    _warm_up(configs[0])
    return [_fit(config) for config in configs]


def wall(configs: list[dict[str, Any]], concurrency: int) -> tuple[float, float]:
    """Seconds from spawning ``concurrency`` processes until every one is warmed up, and
    seconds from then until the last trial has ended."""
    ctx = mp.get_context("spawn")
    ready = ctx.Queue()
    t0 = time.perf_counter()
    with ctx.Pool(concurrency, initializer=_warm_up_then_signal, initargs=(ready, configs[0])) as pool:
        for _ in range(concurrency):
            ready.get()
        t1 = time.perf_counter()
        pool.map(_fit, configs, chunksize=1)
        return t1 - t0, time.perf_counter() - t1
