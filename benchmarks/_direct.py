"""The study section's direct baseline: a study's trials run with ``fit()`` in plain processes.

No Ray, Tune, Optuna or MLflow: ``concurrency`` spawned processes (one thread each, as a
trial gets one CPU), each warmed up first, take the trials one at a time, as Tune's
reused actors do. What the study costs beyond this wall time is orchestration; what this
wall time costs beyond the trials' sum divided by the concurrency is the machine, whose
cores slow each other down when they all train.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any


def _warm_up(ready, config: dict[str, Any]) -> None:
    import torch

    from snn.training import TrainConfig, fit

    torch.set_num_threads(1)
    # The process's one-time costs (torch's compiler stack, which the first optimizer pulls
    # in; the dataset's libraries) belong to no trial: pay them before the clock starts.
    fit(TrainConfig.from_dict({**config, "epochs": 1, "max_batches": 1}))
    ready.put(True)


def _fit(config: dict[str, Any]) -> None:
    from snn.training import TrainConfig, fit

    fit(TrainConfig.from_dict(config))


def wall(configs: list[dict[str, Any]], concurrency: int) -> float:
    """Seconds from the moment every process is warmed up until the last trial has ended."""
    ctx = mp.get_context("spawn")
    ready = ctx.Queue()
    with ctx.Pool(concurrency, initializer=_warm_up, initargs=(ready, configs[0])) as pool:
        for _ in range(concurrency):
            ready.get()
        t0 = time.perf_counter()
        pool.map(_fit, configs, chunksize=1)
        return time.perf_counter() - t0
