"""Section 8 of ``python -m benchmarks``: what counting the operations of an inference costs.

An evaluation pass as ``snn.training.Trainer.evaluate`` runs it, with
:class:`snn.diagnostics.ActivityMonitor` attached (which every evaluation does, for
``energy_uj``, ``synops`` and the firing rates) against the same pass without hooks. To see
where the cost comes from, the monitor is also built up part by part: its hooks doing nothing,
then each LIF's spikes summed per position (what the firing rates need too), then the whole
monitor (its conv and linear hooks: which source a layer reads, MACs bookkeeping; the SOPs
are folded from the LIFs' sums when the counts are read).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import Tensor, nn

from benchmarks._timing import interleaved
from snn.diagnostics import ActivityMonitor

NOTE = ("An evaluation pass as `snn.training.Trainer.evaluate` runs it (`torch.no_grad()`, eval mode, the "
        "trainer's settings: channels-last, autocast where `amp: true` takes it, shortcut heads evaluated too; "
        "the loss summed and the accuracy counted on the device and read back at the end) over fixed batches "
        "of standard-normal inputs (digits: the test split's 360 images at batch 64; CIFAR-sized: one batch "
        "on the CPU, 10 on CUDA), T = 2, untrained weights (what is counted does not change the work of "
        "counting it). `no counting`: no hooks. `ActivityMonitor`: what every evaluation attaches, its "
        "accessors read at the end. Between them the monitor built up part by part, each row adding to the "
        "one above: `hooks only` (its forward hooks on the same layers, doing nothing), `+ spike sums` "
        "(each LIF's spikes summed per position, what the firing rates need too), then the whole monitor "
        "(its conv and linear hooks note which spikes a layer reads and count MACs; the SOPs are folded "
        "from the LIFs' sums when read). `adds` is each row's time less the row above's, as a fraction of "
        "`no counting`. Precision: `bf16 autocast` is `amp: true` on a CPU with native bfloat16 and on "
        "CUDA; `float32` is `amp: false`, or any CPU without bfloat16 (the LIF then runs its fused numba "
        "kernels). Candidates interleaved round by round, medians. The issue's target: counting adds at "
        "most 2 %.")

_NOTHING = lambda *args: None  # noqa: E731  (a hook that does nothing)


class _HooksOnly(ActivityMonitor):
    """The monitor's forward hooks on the same layers, doing nothing."""

    def _lif_hook(self, stage: str):
        return _NOTHING

    def _pool_hook(self, module, args, out) -> None:
        return None

    def _synapse_hook(self, is_stem: bool):
        return _NOTHING


class _SpikeSums(ActivityMonitor):
    """The monitor's spike sums per LIF and position; its conv and linear hooks do nothing."""

    def _synapse_hook(self, is_stem: bool):
        return _NOTHING


# in the order of the rows: each part of the monitor adds to the row above
_PARTS: dict[str, type[ActivityMonitor] | None] = {
    "no counting": None, "hooks only": _HooksOnly, "+ spike sums": _SpikeSums, "ActivityMonitor": ActivityMonitor}


def _counts(mon: ActivityMonitor) -> dict[str, float]:
    """What an evaluation reads from its monitor (the energy from these, per image)."""
    return {"synops": mon.synops_per_image(), "macs": mon.macs_per_image(), "ann_macs": mon.dense_macs_per_image(),
            **{f"rate {k}": v for k, v in mon.firing_rates().items()}}


def _evaluation(model: nn.Module, batches: list[tuple[Tensor, Tensor]], amp: torch.dtype | None,
                monitor: type[ActivityMonitor] | None) -> Callable[[], ActivityMonitor | None]:
    """One evaluation pass as ``Trainer.evaluate`` runs it, with ``monitor`` attached (None: no hooks)."""
    device = batches[0][0].device

    @torch.no_grad()
    def call() -> ActivityMonitor | None:
        model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros(1 + len(model.branch_stages), dtype=torch.int64, device=device)
        with monitor(model) if monitor else contextlib.nullcontext() as mon:
            for x, y in batches:
                with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
                    out = model(x)
                loss_sum += nn.functional.cross_entropy(out.main.float(), y, reduction="sum")
                logits = torch.stack([out.main, *out.branches])  # [1 + branches, B, K]
                correct += (logits.argmax(2) == y).sum(1)
        correct.tolist(), float(loss_sum)  # the evaluation's read-back
        if mon is not None:
            _counts(mon)
        return mon
    return call


def _configs(quick: bool, device: str) -> list[tuple[str, str, int, int]]:
    """(dataset, arch, batch, batches a pass) of each measured network."""
    if device == "cuda":
        return [("digits", "resnet-tiny", 64, 6), ("cifar10", "resnet18", 128, 10)] + (
            [] if quick else [("cifar10", "resnet18", 256, 10), ("cifar10", "resnet19", 128, 10)])
    return [("digits", "resnet-tiny", 64, 6)] + ([] if quick else [("cifar10", "resnet18", 128, 1)])


def bench_energy(quick: bool, devices: tuple[str, ...] | None = None) -> list[dict]:
    """The section's rows: each network, precision and candidate, on the CPU and on CUDA where
    torch sees a GPU (``devices`` None); a row saying so where it does not."""
    if devices is None:
        devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    rows = []
    for device in devices:
        for dataset, arch, batch, n in _configs(quick, device):
            for precision in (("bf16 autocast",) if device == "cuda" or quick else ("bf16 autocast", "float32")):
                rows += _rows(device, dataset, arch, batch, n, precision, quick)
    if "cuda" not in devices and not torch.cuda.is_available():
        print("energy: CUDA skipped, torch sees no CUDA GPU here", flush=True)
        rows.append({"device": "cuda", "candidate": "skipped: torch sees no CUDA GPU on this machine"})
    return rows


def _rows(device: str, dataset: str, arch: str, batch: int, n: int, precision: str, quick: bool) -> list[dict]:
    from snn import data as snn_data
    from snn import models
    from snn.config import TrainConfig
    from snn.training import amp_dtype

    amp = amp_dtype(torch.device(device)) if precision == "bf16 autocast" else None
    if precision == "bf16 autocast" and amp != torch.bfloat16:
        return [{"device": device, "arch": arch, "precision": precision,
                 "candidate": f"skipped: amp: true here is {amp}, not bfloat16"}]
    info = snn_data.info(dataset)
    cfg = TrainConfig(dataset=dataset, arch=arch, timesteps=2, batch_size=batch, device=device, amp=amp is not None)
    torch.manual_seed(0)
    model = models.build(**models.build_args(cfg, info)).to(device).to(memory_format=torch.channels_last)
    sizes = [batch] * n if dataset != "digits" else [min(batch, 360 - i) for i in range(0, 360, batch)]
    batches = [(torch.randn(b, info.in_channels, *info.input_size, device=device).contiguous(
        memory_format=torch.channels_last), torch.randint(0, info.num_classes, (b,), device=device)) for b in sizes]
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device == "cuda"  # as the Trainer sets it on a GPU
    try:
        calls = {k: _evaluation(model, batches, amp, m) for k, m in _PARTS.items()}
        cheap = dataset == "digits" or device == "cuda"
        med = interleaved(calls, rounds=(10 if quick else 30) if cheap else 5, warmup=2)
    finally:
        torch.backends.cudnn.benchmark = saved
    where = f"cuda ({torch.cuda.get_device_name()})" if device == "cuda" else device
    base, rows, above = med["no counting"], [], None
    for k in _PARTS:
        row = {"device": where, "arch": arch, "input": "x".join(map(str, (info.in_channels, *info.input_size))),
               "batch": batch, "images a pass": sum(sizes), "precision": precision, "candidate": k,
               "ms a pass": med[k] * 1e3, "overhead (%)": (med[k] / base - 1) * 100}
        if above is not None:
            row["adds (% of no counting)"] = (med[k] - med[above]) / base * 100
        if k == "ActivityMonitor":
            row["target <= 2 %"] = "met" if med[k] / base - 1 <= 0.02 else "not met"
        rows.append(row)
        above = k
    return rows

