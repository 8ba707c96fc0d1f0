"""System metrics of a trial's node, per epoch, measured by MLflow's own monitors.

MLflow's system-metrics logging (``mlflow.system_metrics``) samples the machine (CPU,
memory, disk, network, and NVIDIA or AMD GPUs where present) in a thread and logs each
aggregate to a run as ``system/<name>``, which the MLflow UI shows in the run's "System
metrics" tab. A trial does not write to MLflow itself (the study projects its record,
:mod:`study.tracking`), so it runs MLflow's monitors the same way and hands each epoch's
averages to the study with the epoch's result, under the same ``system/`` names: they are
kept in the trial's checkpoints like every other metric, and reach MLflow at the epoch's
step.

The trainable does not import MLflow: the study hands it :class:`SystemSampler` as the
factory of its sampler (``train_snn``'s ``system_metrics``, through ``tune.with_parameters``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from mlflow.environment_variables import MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL

from trainables.layout import SYSTEM_PREFIX

__all__ = ["SystemSampler"]

log = logging.getLogger(__name__)


def _monitors() -> list[Any]:
    """MLflow's monitors: CPU and memory, disk, network, and the GPU's where one answers."""
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor
    from mlflow.system_metrics.metrics.rocm_monitor import ROCMMonitor

    monitors: list[Any] = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
    for gpu in (GPUMonitor, ROCMMonitor):  # as MLflow's SystemMetricsMonitor picks one: NVIDIA first
        try:
            monitors.append(gpu())
            break
        except Exception as e:  # no GPU, or no driver library: the rest is still measured
            log.debug("system metrics: no %s (%s)", gpu.__name__, e)
    return monitors


class SystemSampler:
    """Samples MLflow's system monitors every ``interval`` seconds in a daemon thread.

    Args:
        interval: Seconds between samples (MLflow's ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``
            overrides it, as for MLflow's own logging).
    """

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.get() or interval
        self._monitors = _monitors()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="snn-system-metrics")
        self._thread.start()

    def _collect(self) -> None:
        with self._lock:
            for m in self._monitors:
                try:
                    m.collect_metrics()
                except Exception as e:  # a sensor that fails once (a GPU reset) skips that sample
                    log.debug("system metrics: %s failed (%s)", type(m).__name__, e)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._collect()

    def epoch(self) -> dict[str, float]:
        """The averages since the last call (one sample taken now, so a short epoch has one),
        as ``system/<name>`` result keys; the samples start again from here."""
        self._collect()
        out: dict[str, float] = {}
        with self._lock:
            for m in self._monitors:
                out.update({SYSTEM_PREFIX + k: float(v) for k, v in m.aggregate_metrics().items()})
                m.clear_metrics()
        return out

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
