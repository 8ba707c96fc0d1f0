"""Memory of the load scenario, counted as Ray's memory monitor counts it, and how many trials
fit in what is free (``tests/docker/_load.py`` sizes the scenario with it).

Ray's raylet kills a worker once its node's used memory passes ``RAY_memory_usage_threshold``
(0.95) of the node's total (``src/ray/common/memory_monitor_utils.cc``): the total is
/proc/meminfo's MemTotal, or the memory cgroup's limit where one is set below it; the used
memory is MemTotal - MemAvailable, or the cgroup's usage less its file cache under such a
limit. The scenario's three nodes share one machine, so they, and whatever else runs on it,
count against that one line. What one process adds to it is its anonymous memory: the pages
it maps from files (PyTorch's libraries, some 0.5 GiB) are page cache, which MemAvailable
counts as available.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import psutil

MIB = 2**20
# Kept free below Ray's line, as a share of the machine's memory, for what the estimate does
# not see: other programs that grow while the scenario runs, and the server and drivers
# growing under load.
HEADROOM = 0.10


def _cgroup_limit() -> tuple[Path, int] | None:
    """The memory cgroup's folder and limit (v2, then v1), or None without a numeric one."""
    for folder, name in ((Path("/sys/fs/cgroup"), "memory.max"),
                         (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes")):
        try:
            text = (folder / name).read_text().strip()
        except OSError:
            continue
        return (folder, int(text)) if text.isdigit() and int(text) > 0 else None
    return None


def node_memory() -> tuple[int, int]:
    """(used, total) bytes of this machine, as Ray's memory monitor reads them."""
    vm = psutil.virtual_memory()
    used, total = vm.total - vm.available, vm.total
    cgroup = _cgroup_limit()
    if cgroup is not None and cgroup[1] <= total:
        folder, total = cgroup
        v2 = (folder / "memory.current").exists()
        usage = int((folder / ("memory.current" if v2 else "memory.usage_in_bytes")).read_text())
        stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines())
        used = max(0, usage - int(stat["inactive_file" if v2 else "total_inactive_file"])
                   - int(stat["active_file" if v2 else "total_active_file"]))
    return used, total


def kill_line(total: int, env: dict[str, str]) -> int:
    """The used bytes past which Ray's memory monitor kills workers, with the cluster's ``env``."""
    line = int(total * float(env.get("RAY_memory_usage_threshold", "0.95")))
    free = int(env.get("RAY_min_memory_free_bytes", "-1"))
    return max(line, total - free) if free >= 0 else line


def anonymous(pid: int) -> int:
    """The process's anonymous bytes (its heap, stacks and libraries' written data), 0 when gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    return sum(int(line.split()[1]) * 1024 for line in text.splitlines() if line.startswith("Anonymous:"))


def trial_workers(nodes: list[list[psutil.Process]]) -> list[psutil.Process]:
    """The Ray worker processes (trials, and workers starting up to become one) among the
    processes of worker nodes; Ray's agents (``ray::DashboardAgent``, ...) are not."""
    found = []
    for procs in nodes:
        for p in procs:
            try:
                title = p.cmdline()
            except psutil.Error:
                continue
            if title and title[0].startswith("ray::") and not title[0].split()[0].endswith("Agent"):
                found.append(p)
    return found


class MemorySampler(threading.Thread):
    """Every ``interval`` s: the machine's used memory (as Ray reads it), and the anonymous
    memory of each trial worker of the cluster's worker nodes and of each process in
    ``drivers``; keeps the most of each."""

    def __init__(self, cluster, drivers: list[int] = (), interval: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.cluster, self.drivers, self.interval = cluster, list(drivers), interval
        self.most_used = 0
        self.most_trial = 0  # the most one trial process held
        self.most_trials = 0  # the most all trial processes held together
        self.most_driver = 0
        self.stopped = threading.Event()

    def sample(self) -> None:
        self.most_used = max(self.most_used, node_memory()[0])
        nodes = [self.cluster.node_processes(i) for i in range(len(self.cluster.workers))]
        trials = [anonymous(p.pid) for p in trial_workers(nodes)]
        self.most_trial = max([self.most_trial, *trials])
        self.most_trials = max(self.most_trials, sum(trials))
        self.most_driver = max([self.most_driver, *(anonymous(pid) for pid in self.drivers)])

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self.stopped.set()
        self.join()


@dataclass
class Sizing:
    """How many trials of a study fit, from what was measured (bytes).

    Each trial process (``beside`` of them belong to another study) holds ``trial``, and the
    drivers hold ``drivers`` together; the cluster itself and everything else on the machine
    are in ``used``. All of it must stay ``headroom`` below Ray's ``kill_line``.
    """

    want: int  # trials the study asks for
    beside: int
    trial: int
    drivers: int
    used: int
    kill_line: int
    total: int
    headroom: int

    def need(self, trials: int) -> int:
        """The used bytes ``trials`` trials at once would make, headroom included."""
        return self.used + self.drivers + (trials + self.beside) * self.trial + self.headroom

    @property
    def trials(self) -> int:
        """The most trials at once, up to ``want``, whose need stays within Ray's line."""
        room = self.kill_line - self.used - self.drivers - self.headroom
        return max(0, min(self.want, room // self.trial - self.beside))

    def text(self) -> str:
        gib = 2**30
        return (f"{self.want} trials at once need {self.need(self.want) / gib:.1f} GiB of memory used against the "
                f"{self.kill_line / gib:.1f} of {self.total / gib:.1f} GiB where Ray's memory monitor kills workers: "
                f"{self.trial / MIB:.0f} MiB per trial process ({self.want} + {self.beside} of the other study), "
                f"{self.drivers / MIB:.0f} MiB for the drivers, {self.used / gib:.1f} GiB used before them (the "
                f"cluster and everything else on the machine), {self.headroom / gib:.1f} GiB headroom; "
                f"{self.trials} fit")


def size(want: int, beside: int, trial: int, driver: int, env: dict[str, str]) -> Sizing:
    """Size a study on the memory free now, from a measured ``trial`` and ``driver`` (bytes).

    The drivers count as three times ``driver``: the study's own, the other study's, and the
    job that runs the latter (``ray job submit``'s client and Ray's job supervisor).
    """
    used, total = node_memory()
    return Sizing(want=want, beside=beside, trial=trial, drivers=3 * driver, used=used,
                  kill_line=kill_line(total, env), total=total, headroom=int(HEADROOM * total))
