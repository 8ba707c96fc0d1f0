"""Section 4 of ``python -m benchmarks``: the LIF layer alone, forward and backward over T.

Ours (``snn.neurons.LIF``: fused numba kernels on CPU, Triton on CUDA) against autograd over a
plain loop in T (``lif_reference``), spikingjelly's multi-step ``LIFNode`` where it is installed
and, on CUDA, the same layer with its fused kernels off; nanoseconds per element and their
ratios, after checking that every candidate gives the same spikes and gradients.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from benchmarks import _sj
from benchmarks._timing import interleaved

NOTE = ("ours: `snn.neurons.LIF` (fused numba kernels on CPU); plain loop: `lif_reference`, autograd over "
        "a loop in T; spikingjelly: its multi-step `LIFNode`, torch backend. Atan surrogate, float32. All "
        "three run in one process whose malloc keeps freed memory, as CPU trials run with glibc's malloc "
        "tunables in the spec's `env_vars`. The run first checks that all three give the same spikes and "
        "gradients.")
NOTE_CUDA = ("ours: `snn.neurons.LIF` (fused Triton kernels on CUDA); ours, tensor ops: the same layer with "
             "`fused=False`; plain loop: `lif_reference`, autograd over a loop in T; spikingjelly: its "
             "multi-step `LIFNode`, torch backend. Atan surrogate, float32, [T, 64, 64, 32, 32] (a ResNet-18 "
             "first stage at batch 64). The run first checks that all give the same spikes and gradients "
             "(spikingjelly fires at a potential exactly on the threshold, the paper does not: such ties, "
             "about one neuron in 10**7, are left out of its check).")


def bench_lif(quick: bool, device: str = "cpu") -> list[dict]:
    from snn import surrogates
    from snn.neurons import LIF, lif_reference

    rows = []
    shape = (16, 64, 16, 16) if quick else (32, 64, 32, 32)
    if device == "cuda":
        shape = (64, 64, 32, 32)  # a ResNet-18 first stage at batch 64
    atan = surrogates.get("atan", 2.0)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for t in (2, 4, 8):
        torch.manual_seed(t)
        x = (torch.randn(t, *shape, device=device) * 1.5 + 0.5).requires_grad_()
        g = torch.randn(t, *shape, device=device)
        ours = LIF(surrogate="atan", surrogate_param=2.0)
        impls: dict[str, Callable[[Tensor], Tensor]] = {
            "ours": ours,
            "plain loop": lambda c: lif_reference(c, surrogate=atan),
        }
        if device == "cuda":  # the fused Triton kernels against the tensor ops they replace
            impls["ours, tensor ops"] = LIF(surrogate="atan", surrogate_param=2.0, fused=False)
        if _sj.available():
            impls["spikingjelly"] = _sj.SJLIF()
        # fairness: same spikes and the same gradient from every implementation
        outs = {}
        for k, f in impls.items():
            x.grad = None
            y = f(x)
            y.backward(g)
            outs[k] = (y.detach(), x.grad.clone())
        for k, (y, gx) in outs.items():
            # spikingjelly fires at u_pre >= V_th, the paper at >: a neuron whose potential lands
            # exactly on the threshold (about one in 10**7 in float32) may differ, nothing else
            tie = (y != outs["ours"][0]).any(dim=0)
            assert tie.float().mean() < (1e-6 if k == "spikingjelly" else 1e-12), f"{k}: spikes differ"
            assert torch.allclose(gx[:, ~tie], outs["ours"][1][:, ~tie], atol=1e-5), f"{k}: gradients differ"

        def run(f):
            def call():
                x.grad = None
                f(x).backward(g)
                sync()
            return call

        med = interleaved({k: run(f) for k, f in impls.items()}, rounds=5 if quick else 15)
        n = x.numel()
        row = {"T": t, "elements": n, **{f"{k} ns/elem": med[k] / n * 1e9 for k in impls}}
        row["plain loop / ours"] = med["plain loop"] / med["ours"]
        if "ours, tensor ops" in med:
            row["tensor ops / ours"] = med["ours, tensor ops"] / med["ours"]
        if "spikingjelly" in med:
            row["spikingjelly / ours"] = med["spikingjelly"] / med["ours"]
        rows.append(row)
    return rows
