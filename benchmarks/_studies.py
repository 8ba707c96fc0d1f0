"""What the sections that run real studies share (the study's own cost, a user's data, the
firing-rate guard, PBT): the local Ray they run on, the machine's load sampled beside them, and
the trials' TensorBoard event files they read back."""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STUDY_CPUS = 2  # the targets' machine: 2 cores, one trial on each


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


def tensorboard_events(path: Path) -> Iterator[Any]:
    """The events of one of the TensorBoard event files that Tune's TBX logger writes on the
    driver as each result arrives (``tensorboardX``'s ``Event`` messages, in order)."""
    from tensorboardX.proto.event_pb2 import Event

    data, i = path.read_bytes(), 0
    while i + 12 <= len(data):  # TFRecord: uint64 length, uint32 CRC, payload, uint32 CRC
        (n,) = struct.unpack_from("<Q", data, i)
        yield Event.FromString(data[i + 12:i + 12 + n])
        i += 16 + n
