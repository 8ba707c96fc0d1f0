"""Section 1 of ``python -m benchmarks``: a training step of the whole network.

On CPU, images per second and peak memory of each candidate in a fresh worker process
(``benchmarks._worker``): our training defaults, each with one lever switched off (or AMP on),
against spikingjelly's LIF in the same network where it is installed. On CUDA, the same in one
process, timed round by round, with the memory one step allocates on the GPU. Each
configuration first checks that both networks give the same logits on the same weights.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import torch

from benchmarks import ROOT, _sj
from benchmarks._timing import interleaved

NOTE = ("ours: the training defaults (channels-last, fused CPU LIF) with malloc keeping freed memory "
        "(glibc's tunables in the spec's `env_vars`), float32. `+contiguous`, `+tensor-lif` and `+system-malloc` switch one lever off; "
        "`spikingjelly+retain-memory` is spikingjelly with ours's malloc setting, so its ratio shows "
        "what that setting gives spikingjelly; `+amp` trains under bfloat16 autocast, what `amp: true` "
        "does on CPUs with native bf16, and is compared with spikingjelly under the same autocast. "
        "Peak memory is the fresh worker process's VmHWM. The run first checks that both networks "
        "give the same logits on the same weights.")
NOTE_CUDA = ("ours+amp: the training defaults on CUDA (amp: true, which is bfloat16 autocast where the "
             "GPU has it; channels-last; the fused Triton LIF; cuDNN autotuning). `+tensor-lif`, "
             "`+contiguous` and `+cudnn-default` switch one of them off; `ours` is float32. spikingjelly: its "
             "multi-step LIFNode, torch backend, in the same network, under the same autocast (`+amp`) "
             "or in float32. Every candidate steps the Trainer's optimizer (`snn.training.adamw`: AdamW, "
             "fused on CUDA). All candidates live in one process and are timed round by round, 10 steps "
             "a round; step MiB is what one training step allocates on the GPU above what was held "
             "before it. The run first checks that both networks give the same logits on the same "
             "weights (float32, eval).")


def _in_worker(impl: str, arch: str, t: int, batch: int, steps: int, threads: int) -> dict:
    """One candidate measured by ``benchmarks._worker`` in a fresh process: its JSON line."""
    out = subprocess.run([sys.executable, "-m", "benchmarks._worker", impl, arch, str(t), str(batch), str(steps),
                          str(threads)], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_network_fairness(arch: str, t: int, device: str = "cpu") -> float:
    """The largest logit difference between our network and spikingjelly's on the same weights."""
    from snn import models

    torch.manual_seed(0)
    model = models.build(arch, 10, t, surrogate="atan", surrogate_param=2.0, branches="none").to(device)
    x = torch.randn(8, 3, 32, 32, device=device)
    model(x)  # one training-mode pass so BN running statistics are not the initial ones
    flags = torch.backends.cudnn
    saved = flags.allow_tf32, flags.benchmark, flags.deterministic
    # true float32 convolutions with one algorithm per shape: the networks run their stems on
    # different batch sizes (T x B against B), which TF32 or autotuning could round differently
    flags.allow_tf32, flags.benchmark, flags.deterministic = False, False, True
    try:
        return _sj.check_same_spikes(model, _sj.sj_network(model), x)
    finally:
        flags.allow_tf32, flags.benchmark, flags.deterministic = saved


def bench_network(quick: bool) -> list[dict]:
    from snn.training import amp_dtype

    threads = torch.get_num_threads()
    configs = [("resnet-tiny", 2), ("resnet-tiny", 4)] if quick else [
        ("resnet-tiny", 2), ("resnet18", 2), ("resnet18", 4)]
    # "ours" is the training defaults in float32; the +options switch one lever off (or AMP on)
    impls = ["ours", "ours+contiguous", "ours+tensor-lif", "ours+system-malloc"] + (
        ["spikingjelly", "spikingjelly+retain-memory"] if _sj.available() else [])
    if amp_dtype(torch.device("cpu")) == torch.bfloat16:  # CPUs with native bf16: what amp: true trains with
        impls += ["ours+amp"] + (["spikingjelly+amp"] if _sj.available() else [])
    rows = []
    for arch, t in configs:
        diff = check_network_fairness(arch, t) if _sj.available() else None
        runs: dict[str, list[dict]] = {k: [] for k in impls}
        for _ in range(2):  # rounds: each implementation once per round, in turn
            for impl in impls:
                runs[impl].append(_in_worker(impl, arch, t, 64, 3, threads))
        med = {k: {m: statistics.median(r[m] for r in v) for m in ("images_per_s", "peak_rss_mib")}
               for k, v in runs.items()}

        for impl in impls:
            ref = "spikingjelly+amp" if impl.endswith("+amp") else "spikingjelly"
            row = {"arch": arch, "T": t, "batch": 64, "impl": impl, "img/s": med[impl]["images_per_s"],
                   "peak MiB": med[impl]["peak_rss_mib"]}
            # a lever is the default with one change; its ratio says what that change does
            row["speed / ours"] = med[impl]["images_per_s"] / med["ours"]["images_per_s"]
            if ref in med and impl != ref:
                row["speed / spikingjelly (same precision)"] = med[impl]["images_per_s"] / med[ref]["images_per_s"]
                row["peak memory / spikingjelly"] = med[impl]["peak_rss_mib"] / med[ref]["peak_rss_mib"]
            if impl == "spikingjelly":
                row["max logit difference"] = diff
            rows.append(row)
    return rows


def bench_network_cuda(quick: bool) -> list[dict]:
    """The network section on a GPU, in one process: candidates interleaved round by round.

    Peak memory is what one training step allocates above what is held before it (the
    model, its optimizer state and the other candidates': the same for all), read from
    torch's CUDA allocator.
    """
    from benchmarks._worker import build_step

    configs = [("resnet-tiny", 2, 64), ("resnet-tiny", 4, 64)] if quick else [
        ("resnet18", 2, 64), ("resnet18", 4, 64), ("resnet18", 4, 256)]
    # "ours+amp" is the training defaults on CUDA (amp: true, channels-last, fused Triton LIF,
    # cuDNN autotuning); the other "ours" candidates switch one of them off.
    impls = ["ours+amp", "ours+amp+tensor-lif", "ours+amp+contiguous", "ours+amp+cudnn-default", "ours"] + (
        ["spikingjelly+amp", "spikingjelly"] if _sj.available() else [])
    n_steps = 5 if quick else 10
    rows = []
    for arch, t, batch in configs:
        diff = check_network_fairness(arch, t, "cuda") if _sj.available() else None
        steps = {k: build_step(k, arch, t, batch, "cuda") for k in impls}
        peak = {}
        for k, step in steps.items():
            step(), step()  # warm-up: cuDNN autotuning, Triton compilation, optimizer state
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            step()
            torch.cuda.synchronize()
            peak[k] = (torch.cuda.max_memory_allocated() - before) / 2**20

        def timed(step):
            def call():
                for _ in range(n_steps):
                    step()
                torch.cuda.synchronize()
            return call

        # two untimed rounds first: without them every candidate of the first configuration (T = 2)
        # can run slower per step than at T = 4 (seen on an H100, cause not established)
        med = interleaved({k: timed(f) for k, f in steps.items()}, rounds=3 if quick else 7, warmup=2)
        ips = {k: batch * n_steps / v for k, v in med.items()}
        for impl in impls:
            ref = "spikingjelly+amp" if "+amp" in impl else "spikingjelly"
            row = {"arch": arch, "T": t, "batch": batch, "impl": impl, "img/s": ips[impl],
                   "step MiB": peak[impl], "speed / ours+amp": ips[impl] / ips["ours+amp"]}
            if ref in ips and impl != ref:
                row["speed / spikingjelly (same precision)"] = ips[impl] / ips[ref]
                row["step memory / spikingjelly"] = peak[impl] / peak[ref]
            if impl == "spikingjelly":
                row["max logit difference"] = diff
            rows.append(row)
        del steps
        torch.cuda.empty_cache()
    return rows
