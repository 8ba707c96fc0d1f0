"""One network measurement in a fresh process, so that its peak memory is its own.

    python -m benchmarks._worker IMPL ARCH T BATCH STEPS THREADS

IMPL is ``ours`` (the training defaults: channels-last, fused CPU LIF; freed memory kept by
malloc, as the glibc tunables in a spec's ``env_vars`` set it) or ``spikingjelly``, optionally
followed by ``+contiguous`` (no channels-last), ``+tensor-lif`` (the LIF's tensor-op path
instead of the fused kernels), ``+system-malloc`` (malloc left as it is), ``+retain-memory``
(spikingjelly with ours's malloc setting) and ``+amp`` (bfloat16 autocast, as ``amp: true``
trains on CPUs with native bf16). Prints one JSON line: seconds per training step (median),
images/s and peak RSS in MiB.

:func:`build_step` is also what the CUDA network benchmark times, in one process.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _rss_mib() -> float:
    return _status_mib("VmRSS")


def _peak_rss_mib() -> float:
    # VmHWM, the high-water mark of this process's own memory. Not getrusage's ru_maxrss: that
    # survives exec, so a worker started by a big parent would report the parent's peak.
    return _status_mib("VmHWM")


OPTIONS = {"contiguous", "tensor-lif", "amp", "system-malloc", "retain-memory", "cudnn-default"}


def build_step(impl: str, arch: str, timesteps: int, batch: int, device: str = "cpu") -> Callable[[], None]:
    """One training step (forward, backward, AdamW step) of candidate ``impl`` on fixed data.

    ``device="cuda"``: the model and data on the GPU, ``+amp`` autocasts to what ``amp: true``
    trains with there (bfloat16 where supported), and ``+cudnn-default`` turns off the cuDNN
    autotuning that the Trainer turns on. Malloc options only apply to CPU processes.
    """
    base, *options = impl.split("+")
    if base not in ("ours", "spikingjelly") or set(options) - OPTIONS:
        raise SystemExit(f"IMPL: unknown {impl!r}")
    import torch
    import torch.nn.functional as F

    from benchmarks import _malloc, _sj
    from snn import models
    from snn.training import adamw, amp_dtype

    dev = torch.device(device)
    # What a CPU trial gets from the glibc tunables in env_vars (ours by default); spikingjelly
    # gets it only when asked.
    if dev.type == "cpu" and ("retain-memory" in options or base == "ours") and "system-malloc" not in options:
        _malloc.retain_freed_memory()
    fused = "tensor-lif" not in options
    torch.manual_seed(0)
    model = models.build(arch, 10, timesteps, surrogate="atan", surrogate_param=2.0, branches="none",
                         fused_lif=fused)
    x = torch.randn(batch, 3, 32, 32).to(dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    if base == "spikingjelly":
        net = _sj.sj_network(model).to(dev)
    else:
        net = model.to(dev)
        if "contiguous" not in options:
            net = net.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
    opt = adamw(net.parameters(), 1e-3, 0.02, dev)  # the Trainer's optimizer, for every candidate
    dtype = (amp_dtype(dev) or torch.bfloat16) if "amp" in options else None
    autotune = "cudnn-default" not in options

    def step() -> None:
        torch.backends.cudnn.benchmark = autotune
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            logits = net(x).main
        F.cross_entropy(logits.float(), y).backward()
        opt.step()

    return step


def main(impl: str, arch: str, timesteps: int, batch: int, steps: int, threads: int) -> dict:
    """Time ``steps`` CPU training steps of ``impl`` in this (fresh) process."""
    import torch

    torch.set_num_threads(threads)
    step = build_step(impl, arch, timesteps, batch)
    step()  # warm-up: allocator, optimizer state
    steady = _rss_mib()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = _peak_rss_mib()
    s = statistics.median(times)
    return {"impl": impl, "arch": arch, "T": timesteps, "batch": batch, "step_s": s, "images_per_s": batch / s,
            "peak_rss_mib": peak, "steady_rss_mib": steady}


if __name__ == "__main__":
    a = sys.argv[1:]
    print(json.dumps(main(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), int(a[5]))))
