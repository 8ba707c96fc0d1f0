"""GPU probe: what the shortcut heads cost a ResNet-18 step (T = 2) on a GPU.

Variants of the head: `main`, the code as it is (float32 head, the mean's gradient as a broadcast
view); `cur`, autograd's mean under autocast (as before the heads' changes); `new`, the
broadcast-view gradient alone; `pool` and `hw`, other orders of the average.
Run on a CUDA machine:
  python -m benchmarks._probe_heads graphs    # replayed as CUDA graphs (GPU time only; a process per candidate)
  python -m benchmarks._probe_heads eager     # eager steps, interleaved
  python -m benchmarks._probe_heads profile   # GPU time per kernel name, all branches minus none
What it measured is quoted in docs/performance.md."""
from __future__ import annotations

import os, subprocess, sys, statistics
import torch
import torch.nn.functional as F
from snn import models

sync = torch.cuda.synchronize


def gap(variant, x):
    if variant == "cur":
        return x.mean(dim=(0, 3, 4))
    if variant == "new":
        return models._SpikeMean.apply(x)
    if variant == "pool":
        t, b, c = x.shape[:3]
        return F.adaptive_avg_pool2d(x.flatten(0, 1), 1).view(t, b, c).mean(0)
    if variant == "hw":
        return x.mean(dim=(3, 4)).mean(0)
    raise ValueError(variant)


_MAIN_FORWARD = models._Head.forward


def patch(variant):
    if variant == "main":
        models._Head.forward = _MAIN_FORWARD
        return

    def forward(self, x):
        return self.fc(gap(variant, x))
    models._Head.forward = forward


def build(b, batch):
    from snn import losses
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device="cuda")
    net = models.build("resnet18", 10, 2, surrogate="atan", branches=b).cuda().to(memory_format=torch.channels_last)
    return x, y, net, losses


def graph_one(variant, b, batch):
    patch(variant)
    x, y, net, losses = build(b, batch)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, capturable=True)
    def body():
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            out = net(x)
            loss = losses.shortcut_loss(out, y, 0.25) if b == "all" else F.cross_entropy(out.main, y)
        loss.backward()
        opt.step()
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            opt.zero_grad(set_to_none=True); body()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(g):
        body()
    for _ in range(5):
        g.replay()
    sync()
    ts = []
    for _ in range(5):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(40):
            g.replay()
        e1.record(); sync()
        ts.append(e0.elapsed_time(e1) / 40)
    print(f"{statistics.median(ts):.4f}")


def eager_step(b, batch):
    """One eager training step (bfloat16 autocast, fused AdamW) of a fresh network with branches ``b``."""
    x, y, net, losses = build(b, batch)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=True)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = net(x)
            loss = losses.shortcut_loss(out, y, 0.25) if b == "all" else F.cross_entropy(out.main, y)
        loss.backward()
        opt.step()
    return step


def eager():
    from benchmarks._timing import interleaved
    fns = {}
    for variant in ("main", "cur", "pool", "hw"):
        for b in ("all", "none"):
            step = eager_step(b, 64)

            def call(variant=variant, step=step):
                patch(variant)
                step()
                sync()
            fns[f"{variant}-{b}"] = call
    med = interleaved(fns, rounds=40)
    for v in ("main", "cur", "pool", "hw"):
        print(f"eager fused-adamw b64 {v}: all {med[v+'-all']*1e3:.2f} none {med[v+'-none']*1e3:.2f} overhead {med[v+'-all']/med[v+'-none']-1:+.3f}")


def profile(batch: int = 64, steps: int = 20) -> None:
    """Sum of each kernel's GPU time over eager steps, per step, for all branches and for none."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    patch("main")
    per = {}
    for b in ("all", "none"):
        step = eager_step(b, batch)
        for _ in range(5):
            step()
        sync()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                step()
            sync()
        per[b] = {e.key: (e.device_time_total / steps, e.count / steps) for e in prof.key_averages()
                  if e.device_time_total > 0}
    total = {b: sum(t for t, _ in v.values()) for b, v in per.items()}
    print(f"batch {batch}: GPU time per step, all {total['all']:.0f} us, none {total['none']:.0f} us, "
          f"+{total['all'] / total['none'] - 1:.3f}")
    keys = set(per["all"]) | set(per["none"])
    diff = sorted(keys, key=lambda k: -(per["all"].get(k, (0, 0))[0] - per["none"].get(k, (0, 0))[0]))
    for k in diff[:20]:
        a, n = per["all"].get(k, (0, 0)), per["none"].get(k, (0, 0))
        print(f"  {a[0] - n[0]:+8.1f} us  calls {a[1] - n[1]:+5.1f}  {k[:110]}")


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "graphs":
        for variant, batch in (("cur", 64), ("main", 64), ("cur", 256), ("main", 256)):
            res = {}
            for b in ("all", "none"):
                r = subprocess.run([sys.executable, "-m", "benchmarks._probe_heads", "graph_one", variant, b, str(batch)],
                                   capture_output=True, text=True, timeout=120)
                try:
                    res[b] = float(r.stdout.strip().splitlines()[-1])
                except Exception:
                    print(variant, b, r.stdout[-300:], r.stderr[-600:]); res[b] = float("nan")
            print(f"graph b{batch} {variant}: all {res['all']:.3f} none {res['none']:.3f} overhead {res['all']/res['none']-1:+.3f}", flush=True)
    elif what == "profile":
        for batch in (64, 256):
            profile(batch)
    elif what == "graph_one":
        graph_one(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        globals()[what]()
