"""One network measurement in a fresh process, so that its peak memory is its own.

    python -m benchmarks._worker IMPL ARCH T BATCH STEPS THREADS

IMPL is ``ours`` (the training defaults: channels-last, fused CPU LIF, freed memory kept by
malloc) or ``spikingjelly``, optionally followed by ``+contiguous`` (no channels-last),
``+tensor-lif`` (the LIF's tensor-op path instead of the fused kernels), ``+system-malloc``
(malloc left as it is), ``+retain-memory`` (spikingjelly with ours's malloc setting) and
``+amp`` (bfloat16 autocast, as ``amp: true`` trains on CPUs with native bf16). Prints one
JSON line: seconds per training step (median), images/s and peak RSS in MiB.
"""

from __future__ import annotations

import json
import statistics
import sys
import time


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


def main(impl: str, arch: str, timesteps: int, batch: int, steps: int, threads: int) -> dict:
    import os

    base, *options = impl.split("+")
    unknown = set(options) - {"contiguous", "tensor-lif", "amp", "system-malloc", "retain-memory"}
    if base not in ("ours", "spikingjelly") or unknown:
        raise SystemExit(f"IMPL: unknown {impl!r}")
    if "tensor-lif" in options:
        os.environ["SNN_FUSED_LIF"] = "0"
    import torch
    import torch.nn.functional as F

    from benchmarks import _sj
    from snn import _malloc, models

    # What the Trainer does on CPU (ours by default); spikingjelly gets it only when asked.
    if ("retain-memory" in options or base == "ours") and "system-malloc" not in options:
        _malloc.retain_freed_memory()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = models.build(arch, 10, timesteps, surrogate="atan", surrogate_param=2.0, branches="none")
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    if base == "spikingjelly":
        net = _sj.sj_network(model)
    else:
        net = model
        if "contiguous" not in options:
            net = net.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.02)
    amp = "amp" in options

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits = net(x).main
        F.cross_entropy(logits.float(), y).backward()
        opt.step()

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
