"""Section 2 of ``python -m benchmarks``: what the shortcut heads cost.

A training step with a shortcut head after every stage against one with none (seconds and the
aten operators each dispatches), and inference of ``strip_shortcuts(model)`` against a vanilla
model; on CUDA also a step of ``snn.training.Trainer`` replayed as a CUDA graph, with and
without the heads.
"""

from __future__ import annotations

from typing import Callable

import torch

from benchmarks._timing import interleaved

NOTE = ("Training step with a shortcut head after every stage against none; inference of "
        "`strip_shortcuts(model)` against a vanilla model. On CUDA both run as training does there "
        "(channels-last, autocast). Ops per step: the aten operators one training step dispatches "
        "(a count, the same on every run), which is what a step bound by launching kernels follows. "
        "On CUDA, `cuda_graphs` columns: a step of `snn.training.Trainer` with `cuda_graphs: true` "
        "(its loader replaced by 20 fixed batches of 32x32 single-channel inputs), where the "
        "replayed graph leaves the GPU's own time, not the host's launches, to compare.")


def bench_shortcuts(quick: bool, device: str = "cpu") -> list[dict]:
    cuda = device == "cuda"
    # on a GPU, batch 64 is bound by kernel launches, where every extra op of the heads counts;
    # batch 256 gives the GPU enough work per launch
    return [_shortcut_row("resnet-tiny" if quick else "resnet18", batch, quick, device)
            for batch in ((64, 256) if cuda else (64,))]


def _shortcut_row(arch: str, batch: int, quick: bool, device: str) -> dict:
    import torch.nn.functional as F

    from snn import losses, models
    from snn.training import adamw, amp_dtype

    t = 2
    torch.manual_seed(0)
    x, y = torch.randn(batch, 3, 32, 32, device=device), torch.randint(0, 10, (batch,), device=device)
    nets = {b: models.build(arch, 10, t, surrogate="atan", branches=b).to(device) for b in ("all", "none")}
    opts = {b: adamw(n.parameters(), 1e-3, 0.01, torch.device(device)) for b, n in nets.items()}
    cuda = device == "cuda"
    if cuda:  # the training defaults there: channels-last under autocast
        nets = {b: n.to(memory_format=torch.channels_last) for b, n in nets.items()}
        x = x.contiguous(memory_format=torch.channels_last)
    amp = amp_dtype(torch.device(device)) if cuda else None
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def train(b):
        def step():
            opts[b].zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=amp or torch.bfloat16, enabled=amp is not None):
                out = nets[b](x)
                loss = losses.shortcut_loss(out, y, 0.25) if b == "all" else F.cross_entropy(out.main, y)
            loss.backward()
            opts[b].step()
            sync()
        return step

    med = interleaved({b: train(b) for b in nets}, rounds=5 if quick else (30 if cuda else 10))
    ops = {b: _count_ops(train(b)) for b in nets}
    stripped = models.strip_shortcuts(nets["all"]).eval()
    vanilla = nets["none"].eval()

    def infer(m, main: bool):
        def call():
            with torch.no_grad(), torch.autocast(device, dtype=amp or torch.bfloat16, enabled=amp is not None):
                m(x) if not main else m(x).main
            sync()
        return call

    inf = interleaved({"stripped": infer(stripped, False), "vanilla": infer(vanilla, True)},
                       rounds=10 if quick else (100 if cuda else 30))
    row = {"device": device, "arch": arch, "T": t, "batch": batch, "train step, all branches (s)": med["all"],
           "train step, vanilla (s)": med["none"], "training overhead": med["all"] / med["none"] - 1,
           "ops per step, all branches": ops["all"], "ops per step, vanilla": ops["none"]}
    if cuda:
        row.update(_graphed_overhead(arch, batch, quick))
    return {**row, "inference, stripped (s)": inf["stripped"], "inference, vanilla (s)": inf["vanilla"],
            "stripped / vanilla (inference)": inf["stripped"] / inf["vanilla"]}


def _graphed_overhead(arch: str, batch: int, quick: bool) -> dict:
    """A step of ``snn.training.Trainer`` with ``cuda_graphs: true``, all branches against none.

    Replayed as a CUDA graph, a step no longer waits on the host launching its kernels, so
    what the heads add here is GPU time.
    """
    steps = 20
    med = trainer_steps({"all": {"branches": "all", "cuda_graphs": True},
                         "none": {"branches": "none", "cuda_graphs": True}}, arch, batch, steps,
                        rounds=3 if quick else 10)
    return {"Trainer step, cuda_graphs, all branches (s)": med["all"],
            "Trainer step, cuda_graphs, vanilla (s)": med["none"],
            "training overhead, cuda_graphs": med["all"] / med["none"] - 1}


def trainer_steps(candidates: dict[str, dict], arch: str, batch: int, steps: int, rounds: int) -> dict[str, float]:
    """Median seconds per training step of ``snn.training.Trainer`` on CUDA, one Trainer per candidate
    (``TrainConfig`` fields beyond the shared ones), interleaved epoch by epoch.

    Each Trainer trains on the same ``steps`` fixed batches (T = 2, 32x32 single-channel inputs, its
    loader replaced); its first epoch goes to cuDNN's and Triton's warm-up and any capture.
    """
    from snn.training import TrainConfig, Trainer

    torch.manual_seed(0)
    data = [(torch.randn(batch, 1, 32, 32).pin_memory(), torch.randint(0, 10, (batch,)).pin_memory())
            for _ in range(steps)]
    trainers = {}
    for name, options in candidates.items():
        tr = Trainer(TrainConfig(dataset="digits", arch=arch, batch_size=batch, epochs=10_000, device="cuda",
                                 workers=0, seed=0, **options))
        tr.train_loader, tr.steps_per_epoch = data, steps
        tr.train_epoch()
        trainers[name] = tr

    def epoch(tr):
        def call():
            tr.train_epoch()
            torch.cuda.synchronize()
        return call

    med = interleaved({name: epoch(tr) for name, tr in trainers.items()}, rounds=rounds, warmup=0)
    return {name: t / steps for name, t in med.items()}


def _count_ops(fn: Callable[[], None]) -> int:
    """How many aten operators one call of ``fn`` dispatches (views included): on a GPU at small
    batches, where a step waits on launching its kernels rather than on running them, each costs
    about as much as the next, so this count is what the step time follows there."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    with Count() as count:
        fn()
    return count.n
