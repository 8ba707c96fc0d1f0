"""Section 8 of ``python -m benchmarks``: what counting the operations of an inference costs.

An evaluation pass as ``snn.training.Trainer.evaluate`` runs it, with
:class:`snn.diagnostics.ActivityMonitor` attached (which every evaluation does, for
``energy_uj``, ``synops`` and the firing rates) against the same pass without hooks. To see
where the cost comes from, the monitor is also built up part by part: its hooks doing nothing,
then the firing rates, then the per-layer binary check, then the fan-out product (the whole
monitor). Last, a cheaper design, measured here only (:class:`_CountedOnce`): the spikes a LIF
fires summed once per position, and every layer that reads them takes its synaptic operations
from those sums, with no binary check.
"""

from __future__ import annotations

import contextlib
import weakref
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
        "one above: `hooks only` (its forward hooks on the same layers, doing nothing), `+ firing rates` "
        "(each LIF's spikes summed), `+ binary check` (every conv and linear layer but the stem checks "
        "`x == 0 or x == 1` over its input, and counts MACs), then the fan-out product (the input summed "
        "per position and multiplied by the fan-out): the whole monitor. `adds` is each row's time less the "
        "row above's, as a fraction of `no counting`. `proposed`: a design measured here only, not the "
        "project's: each LIF's spikes summed once per position (in half precision over at most 256 channels "
        "in their own dtype first, which is exact), kept per batch and added up when the counts are read; a "
        "layer reading a LIF's output takes its SOPs from those sums, with no binary check (a LIF fires 0 or "
        "1); any other input is counted as the monitor counts it. Its counts are checked against the "
        "monitor's, and the last column says how many layers took their SOPs from a LIF's sums (the others "
        "read no spikes: the stem, and the classifier on averaged spikes). Precision: `bf16 autocast` is "
        "`amp: true` on a CPU with native bfloat16 (this one) and on CUDA; `float32` is `amp: false`, or any "
        "CPU without bfloat16 (the LIF then runs its fused numba kernels). Candidates interleaved round by "
        "round, medians. The issue's target: counting adds at most 2 %.")

_NOTHING = lambda *args: None  # noqa: E731  (a hook that does nothing)


class _HooksOnly(ActivityMonitor):
    """The monitor's forward hooks on the same layers, doing nothing."""

    def _lif_hook(self, stage: str):
        return _NOTHING

    def _synapse_hook(self, is_stem: bool):
        return _NOTHING


class _FiringRates(ActivityMonitor):
    """The monitor's spike counts per stage; its conv and linear hooks do nothing."""

    def _synapse_hook(self, is_stem: bool):
        return _NOTHING


class _BinaryCheck(ActivityMonitor):
    """The monitor without its fan-out product: firing rates, MACs and the binary check, no SOPs."""

    def _synops(self, module: nn.Module, x: Tensor) -> Tensor:
        return torch.zeros((), dtype=torch.float64, device=x.device)


def _root(x: Tensor) -> Tensor:
    """The tensor whose memory ``x`` views (``x`` itself if it is no view)."""
    return x if x._base is None else x._base


class _CountedOnce(ActivityMonitor):
    """The cheaper design this section proposes (not the project's): one pass per spike tensor.

    A LIF's hook sums its spikes per position, [T, B, C, H, W] -> [H, W] (a LIF of a linear
    layer: the total), kept until the evaluation's counts are read. In half precision
    the channels are summed first in the spikes' own dtype, at most 256 at a time, which is
    exact (bfloat16 holds every integer up to 256) and on a CPU several times faster than a
    sum to float32, which takes the rest. A conv or linear layer whose input is a whole LIF
    output (a view of it: the blocks fold T into B) only notes which LIF it reads: no binary
    check (a LIF fires only 0 or 1), no operation on the device. Its SOPs
    (the LIF's sums × the fan-out) and the stages' spike counts are worked out once, when an
    accessor first reads them. Any other input (the stem's images, averaged spikes, a
    max-pool's output) is counted as the monitor counts it.
    """

    def reset(self) -> None:
        super().reset()
        self._fired: dict[int, tuple[weakref.ref, nn.Module]] = {}  # id of a LIF's output -> (it, the LIF)
        self._sums: dict[nn.Module, list[Tensor]] = {}  # LIF -> its spikes per position, one entry a batch
        self._stage: dict[nn.Module, str] = {}
        self._reads: dict[nn.Module, nn.Module] = {}  # conv or linear layer -> the LIF whose output it reads
        self._sizes: dict[nn.Module, tuple[int, ...]] = {}
        self._folded = True
        self.checked: set[nn.Module] = set()  # the layers counted as the monitor counts them

    def _count_images(self, module: nn.Module, args: tuple) -> None:
        self._fired.clear()  # a new forward pass: the last one's LIF outputs are gone
        super()._count_images(module, args)

    def _lif_hook(self, stage: str):
        def hook(module: nn.Module, args: tuple, out: Tensor) -> None:
            o = out.detach() if out.requires_grad else out  # one dispatch fewer in an evaluation
            dims = (0, 1, 2) if o.dim() == 5 else tuple(range(o.dim()))  # [T, B, C, H, W] -> [H, W], or the total
            if o.dtype in (torch.float32, torch.float64):
                sums = o.sum(dim=dims)
            elif o.shape[2 if o.dim() == 5 else -1] <= 256:  # half precision: exact over <= 256 channels
                sums = o.sum(dim=2 if o.dim() == 5 else -1).sum(dim=dims[:-1], dtype=torch.float32)
            else:
                sums = sum(part.sum(dim=2 if o.dim() == 5 else -1).sum(dim=dims[:-1], dtype=torch.float32)
                           for part in o.split(256, dim=2 if o.dim() == 5 else -1))
            self._sums.setdefault(module, []).append(sums)  # added up when first read: no dispatch here
            self._stage[module] = stage
            self._neurons[stage] += out.numel()
            self._folded = False
            root = _root(out)
            if root.numel() == out.numel():
                self._fired[id(root)] = (weakref.ref(root), module)
        return hook

    def _synapse_hook(self, is_stem: bool):
        monitors = super()._synapse_hook(is_stem)

        def hook(module: nn.Conv2d | nn.Linear, args: tuple, out: Tensor) -> None:
            x = args[0]
            root = _root(x)
            fired = None if is_stem else self._fired.get(id(root))
            if (fired is None or fired[0]() is not root or root.numel() != x.numel()
                    or self._reads.get(module, fired[1]) is not fired[1]):
                self.checked.add(module)
                return monitors(module, args, out)
            self._reads[module] = fired[1]
            self._sizes[module] = tuple(x.shape[-2:])
            if isinstance(module, nn.Conv2d):  # the monitor's MAC bookkeeping, for the ratio (host only)
                kh, kw = module.kernel_size
                macs = out.numel() * (module.in_channels // module.groups) * kh * kw
                steps = out.shape[0] / self._batch
            else:
                macs = out.numel() * module.in_features
                steps = out.numel() / (module.out_features * self._batch)
            self._dense_macs += macs / steps
        return hook

    def _fold(self) -> None:
        """The SOPs of the layers that read a LIF and the stages' spikes, from the LIFs' sums."""
        if self._folded:
            return
        total = {lif: torch.stack(each).sum(0) for lif, each in self._sums.items()}
        for layer, lif in self._reads.items():
            sums = total[lif]
            if isinstance(layer, nn.Conv2d):
                fanout = self._fanout(layer, self._sizes[layer], sums.device)
                sops = (sums * fanout).sum() * (layer.out_channels // layer.groups)
            else:
                sops = sums.sum() * layer.out_features
            self._sops = self._sops + sops.double()
        for lif, sums in total.items():
            self._spikes[self._stage[lif]] = self._spikes[self._stage[lif]] + sums.sum().double()
        self._sums.clear()
        self._folded = True

    def synops_per_image(self) -> float:
        self._fold()
        return super().synops_per_image()

    def firing_rates(self) -> dict[str, float]:
        self._fold()
        return super().firing_rates()

    def mean_firing_rate(self) -> float:
        self._fold()
        return super().mean_firing_rate()

    @property
    def from_lif(self) -> int:
        """How many layers took their SOPs from a LIF's sums."""
        return len(self._reads)


# in the order of the rows: each part of the monitor adds to the row above
_PARTS: dict[str, type[ActivityMonitor] | None] = {
    "no counting": None, "hooks only": _HooksOnly, "+ firing rates": _FiringRates,
    "+ binary check": _BinaryCheck, "ActivityMonitor": ActivityMonitor, "proposed": _CountedOnce}


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
        reference, proposed = _counts(calls["ActivityMonitor"]()), calls["proposed"]()
    finally:
        torch.backends.cudnn.benchmark = saved
    agree = max(abs(v - reference[k]) / max(abs(reference[k]), 1e-30) for k, v in _counts(proposed).items())
    where = f"cuda ({torch.cuda.get_device_name()})" if device == "cuda" else device
    base, rows, above = med["no counting"], [], None
    for k in _PARTS:
        row = {"device": where, "arch": arch, "input": "x".join(map(str, (info.in_channels, *info.input_size))),
               "batch": batch, "images a pass": sum(sizes), "precision": precision, "candidate": k,
               "ms a pass": med[k] * 1e3, "overhead (%)": (med[k] / base - 1) * 100}
        if above is not None and k != "proposed":
            row["adds (% of no counting)"] = (med[k] - med[above]) / base * 100
        if k == "ActivityMonitor":
            row["target <= 2 %"] = "met" if med[k] / base - 1 <= 0.02 else "not met"
        if k == "proposed":
            row["proposed vs monitor: counts, max relative difference"] = agree
            row["layers counted from their LIF's sums"] = (f"{proposed.from_lif} of "
                                                           f"{proposed.from_lif + len(proposed.checked)}")
        rows.append(row)
        above = k
    return rows

