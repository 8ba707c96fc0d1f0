"""GPU probe: where the host time of one LIF layer's forward + backward goes (CUDA).

Run: `python -m benchmarks._probe_lif_cpu` on a CUDA machine; what it measured is quoted in
docs/performance.md.
"""
from __future__ import annotations

import statistics
import time

import torch

from snn import _lif_cuda, neurons
from snn.neurons import LIF


def per_call(fn, n=1000):
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        ts.append((time.perf_counter() - t0) / n)
        torch.cuda.synchronize()
    return statistics.median(ts) * 1e6


class Ident(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g


def main():
    x = torch.randn(8, 1, 1024, device="cuda").requires_grad_()
    g = torch.randn_like(x)
    ours = LIF(surrogate="atan", surrogate_param=2.0)
    spent = {"LIF backward (python)": 0.0, "_lif_cuda.backward": 0.0, "calls": 0}
    inner, outer = _lif_cuda.backward, neurons._LIFFunction.backward

    def timed_inner(*a, **k):
        t0 = time.perf_counter()
        r = inner(*a, **k)
        spent["_lif_cuda.backward"] += time.perf_counter() - t0
        return r

    def timed_outer(ctx, gs):
        t0 = time.perf_counter()
        r = outer(ctx, gs)
        spent["LIF backward (python)"] += time.perf_counter() - t0
        spent["calls"] += 1
        return r

    def fwd_bwd():
        x.grad = None
        ours(x).backward(g)

    def fwd_grad():
        ours(x)

    def ident():
        x.grad = None
        Ident.apply(x).backward(g)

    def grad_api():
        torch.autograd.grad(ours(x), x, g)

    for k, fn in {"ours fwd+bwd": fwd_bwd, "ours fwd (grad on)": fwd_grad, "identity fwd+bwd": ident,
                  "ours via autograd.grad": grad_api}.items():
        print(f"{k}: {per_call(fn):.1f} us/call host", flush=True)
    _lif_cuda.backward, neurons._LIFFunction.backward = timed_inner, staticmethod(timed_outer)
    try:
        total = per_call(fwd_bwd)
    finally:
        _lif_cuda.backward, neurons._LIFFunction.backward = inner, staticmethod(outer)
    n = spent.pop("calls")
    print(f"patched fwd+bwd {total:.1f} us/call; per call: " + ", ".join(f"{k} {v / n * 1e6:.1f} us" for k, v in spent.items()))
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(200):
            fwd_bwd()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=18, max_name_column_width=60))


if __name__ == "__main__":
    main()
