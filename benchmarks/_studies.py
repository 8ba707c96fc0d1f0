"""What the sections that run real studies share (the study's own cost, a user's data, the
firing-rate guard, PBT): the process settings their studies run under, the local Ray they run
on, and the machine's load sampled beside them."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

STUDY_CPUS = 2  # the targets' machine: 2 cores, one trial on each


def snn_study_settings() -> None:
    """Run this process's studies as ``snn-study`` runs them, and hear their results on the driver.

    The CLI's process settings (:func:`study.cli.process_settings`: Tune's JSON and CSV loggers,
    not its TensorBoard one; MLflow's retries), and the benchmarks' own
    :class:`benchmarks._driver_results.DriverResults` named in ``RAY_TUNE_CALLBACKS``, which
    Tune reads at every run. Idempotent.
    """
    from benchmarks._driver_results import PATH
    from study.cli import process_settings

    process_settings()
    named = [c.strip() for c in os.environ.get("RAY_TUNE_CALLBACKS", "").split(",") if c.strip()]
    os.environ["RAY_TUNE_CALLBACKS"] = ",".join(named + [PATH] * (PATH not in named))


@contextlib.contextmanager
def local_ray() -> Iterator[None]:
    """A Ray of ``STUDY_CPUS`` CPUs started in this process for the block, quiet, then shut down."""
    import logging

    import ray

    ray.init(address="local", num_cpus=STUDY_CPUS, include_dashboard=False, configure_logging=False,
             log_to_driver=False, logging_level=logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()


class LoadSampler:
    """Samples the machine's 1-minute load average in a thread: what else ran beside a study."""

    def __init__(self, every: float = 2.0) -> None:
        import threading

        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> "LoadSampler":
        self.samples.append(os.getloadavg()[0])
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])
