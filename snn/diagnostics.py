"""What a study logs about a spiking network besides accuracy.

* Gradient norms per layer, the first conv above all, and a histogram of the first
  layer's gradients: the quantity of the paper's Fig. 2 and of Eq. 8-9, which claim that
  shallow-layer gradients vanish without shortcut branches.
* Firing rates per stage, and the operations of one inference for its energy
  (:mod:`snn.energy`): a layer whose input is binary spikes does one accumulate per input
  spike and outgoing synapse (SOPs = Σ spikes × fan-out); a layer whose input is not
  spikes (the stem on analog images, a classifier on averaged spikes) does a
  multiply-accumulate per synapse (MACs).
"""

from __future__ import annotations

import weakref
from collections import defaultdict

import numpy as np
import torch
from torch import Tensor, nn

from snn.energy import OpCosts, energy_uj
from snn.neurons import LIF

__all__ = ["ActivityMonitor", "first_conv", "grad_histogram", "grad_norm_vector", "grad_norms", "stage_of"]


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The network's first convolution (the stem conv, W1 of Eq. 8-9)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m
    raise ValueError("model has no Conv2d layer")


def stage_of(name: str) -> str | None:
    """Map a parameter or module name to its stage: ``stem``, ``stage<i>``, ``head``, or None for branches."""
    name = name.removeprefix("net.")
    if name.startswith("shortcuts"):
        return None
    if name.startswith("layer"):
        return "stage" + name.split(".")[0].removeprefix("layer")
    if name.startswith("head"):
        return "head"
    return "stem"


def grad_norms(model: nn.Module) -> dict[str, float]:
    """L2 norm of the gradient of every conv and linear weight, by parameter name.

    Call after ``backward()``. Layers with no gradient are left out.
    """
    names, norms = grad_norm_vector(model)
    return dict(zip(names, norms.tolist()))


def grad_norm_vector(model: nn.Module) -> tuple[tuple[str, ...], Tensor]:
    """The norms of :func:`grad_norms` as one tensor on the gradients' device, with their names.

    Nothing is read back to the host, so a training step on a GPU that calls this does not
    wait for the GPU; the norms come from one multi-tensor kernel.
    """
    names, grads = [], []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.grad is not None:
            names.append(f"{name}.weight")
            grads.append(m.weight.grad.detach())
    if not grads:
        return (), torch.zeros(0)
    return tuple(names), torch.stack(torch._foreach_norm(grads))


def grad_histogram(grads: Tensor | np.ndarray, bins: int = 50,
                   value_range: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of gradient values (Fig. 2 of the paper plots it for the first layer).

    Returns:
        ``(counts, edges)`` as from :func:`numpy.histogram`.
    """
    values = grads.detach().float().cpu().numpy().ravel() if isinstance(grads, Tensor) else np.ravel(grads)
    return np.histogram(values, bins=bins, range=value_range)


def _root(x: Tensor) -> Tensor:
    """The tensor whose memory ``x`` views (``x`` itself if it is no view)."""
    return x if x._base is None else x._base


_EXACT_HALF = 256  # bfloat16 and float16 hold every integer up to 256: a sum of that many spikes is exact


def _spikes_per_position(out: Tensor) -> Tensor:
    """Spikes summed over all but the positions, in float32: [T, B, C, H, W] or [T·B, C, H, W] ->
    [H, W]; a LIF of a linear layer, [T, B, N]: the total. In half precision the channels are
    summed first in the spikes' own dtype, at most :data:`_EXACT_HALF` at a time (exact), which
    on a CPU is several times faster than a sum to float32 of the whole tensor."""
    spatial = out.dim() >= 4
    channel = out.dim() - 3 if spatial else out.dim() - 1
    rest = tuple(range(channel)) if spatial else None  # what is left to sum after the channels
    if out.dtype in (torch.float32, torch.float64):
        return out.sum(dim=(*range(channel), channel)) if spatial else out.sum()
    return sum(p.sum(dim=channel).sum(dim=rest, dtype=torch.float32) for p in out.split(_EXACT_HALF, dim=channel))


class ActivityMonitor:
    """Forward hooks that count spikes per stage and the operations of an inference per image.

    Shortcut branches are left out: they do not exist at inference. What a layer reads decides
    how it is counted:

    * a LIF's output (or a view of it: the blocks fold T into B; or a max-pool of it, also
      spikes): SOPs, one accumulate per spike and synapse, exact per input position (a spike
      at a border or between strided outputs reaches fewer synapses);
    * anything else (the stem's analog images or event counts, a classifier on averaged
      spikes, a membrane potential): MACs, one per synapse.

    Each LIF's spikes are summed once per position, on the device, and kept per batch; the
    layers that read them take their SOPs from those sums when an accessor first reads the
    counts, so counting adds one reduction per spike tensor to an evaluation (the firing
    rates need it anyway) and no pass over any layer's input.

    Example:
        >>> with ActivityMonitor(model) as mon:
        ...     model(x)
        >>> mon.firing_rates(), mon.synops_per_image(), mon.energy_uj(PRESETS["45nm-fp32"])
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._handles: list = []
        self._fanouts: dict[tuple, Tensor] = {}
        self.reset()

    def reset(self) -> None:
        self._sums: dict[nn.Module, list[Tensor]] = defaultdict(list)  # a spike source -> its sums, one a batch
        self._stage: dict[nn.Module, str] = {}  # a LIF -> its stage
        self._fired: dict[int, tuple[weakref.ref, nn.Module]] = {}  # id of this forward's spike tensors -> source
        self._reads: dict[nn.Module, tuple[nn.Module, tuple[int, ...]]] = {}  # layer -> (its source, input H, W)
        self._spikes: dict[str, Tensor | float] = defaultdict(float)
        self._neurons: dict[str, float] = defaultdict(float)
        self._sops: Tensor | float = 0.0
        self._macs = 0.0  # of the layers that read non-spike input
        self._stem_macs = 0.0
        self._dense_macs = 0.0  # every layer as a non-spiking network's, one time step
        self._images = 0
        self._batch = 1
        self._folded = True

    def __enter__(self) -> "ActivityMonitor":
        stem = first_conv(self.model)
        self._handles.append(self.model.register_forward_pre_hook(self._count_images))
        for name, m in self.model.named_modules():
            stage = stage_of(name)
            if stage is None:
                continue
            if isinstance(m, LIF):
                self._handles.append(m.register_forward_hook(self._lif_hook(stage)))
            elif isinstance(m, nn.MaxPool2d):
                self._handles.append(m.register_forward_hook(self._pool_hook))
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                self._handles.append(m.register_forward_hook(self._synapse_hook(m is stem)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._fired.clear()

    def _count_images(self, module: nn.Module, args: tuple) -> None:
        x = args[0]
        self._fired.clear()  # a new forward pass: the last one's spike tensors are gone
        self._batch = int(x.shape[0] if x.dim() == 4 else x.shape[1])
        self._images += self._batch

    def _fire(self, source: nn.Module, out: Tensor) -> None:
        """Note ``out`` as spikes of ``source``, summed per position."""
        self._sums[source].append(_spikes_per_position(out.detach()))
        self._folded = False
        root = _root(out)
        if root.numel() == out.numel():
            self._fired[id(root)] = (weakref.ref(root), source)

    def _source(self, x: Tensor) -> nn.Module | None:
        """The LIF (or pool of a LIF) whose whole output ``x`` is, if it is one."""
        root = _root(x)
        fired = self._fired.get(id(root))
        if fired is None or fired[0]() is not root or root.numel() != x.numel():
            return None
        return fired[1]

    def _lif_hook(self, stage: str):
        def hook(module: nn.Module, args: tuple, out: Tensor) -> None:
            self._stage[module] = stage
            self._neurons[stage] += out.numel()
            self._fire(module, out)
        return hook

    def _pool_hook(self, module: nn.MaxPool2d, args: tuple, out: Tensor) -> None:
        if self._source(args[0]) is not None:  # the max of spikes is a spike
            self._fire(module, out)

    def _synapse_hook(self, is_stem: bool):
        def hook(module: nn.Conv2d | nn.Linear, args: tuple, out: Tensor) -> None:
            x = args[0]
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                macs = out.numel() * (module.in_channels // module.groups) * kh * kw
                steps = out.shape[0] / self._batch
            else:
                macs = out.numel() * module.in_features
                steps = out.numel() / (module.out_features * self._batch)
            self._dense_macs += macs / steps
            source = None if is_stem else self._source(x)
            if is_stem:
                self._stem_macs += macs
            if source is None:
                self._macs += macs
            elif self._reads.setdefault(module, (source, tuple(x.shape[-2:])))[0] is not source:
                raise RuntimeError(f"{type(module).__name__} reads the spikes of two layers; the monitor counts "
                                   f"a layer that reads one")
        return hook

    def _fold(self) -> None:
        """The SOPs of the layers that read spikes, and the stages' spike counts, from the sums."""
        if self._folded:
            return
        total = {source: torch.stack(each).sum(0) for source, each in self._sums.items()}
        for layer, (source, size) in self._reads.items():
            sums = total[source]
            if isinstance(layer, nn.Conv2d):
                sops = (sums * self._fanout(layer, size, sums.device)).sum() * (layer.out_channels // layer.groups)
            else:
                sops = sums.sum() * layer.out_features
            self._sops = self._sops + sops.double()
        for source, sums in total.items():
            if source in self._stage:
                self._spikes[self._stage[source]] = self._spikes[self._stage[source]] + sums.sum().double()
        self._sums.clear()
        self._reads.clear()
        self._folded = True

    def _fanout(self, conv: nn.Conv2d, size: tuple[int, int], device: torch.device) -> Tensor:
        """How many of ``conv``'s output positions read each input position (per output channel):
        the gradient of the summed output of a ones-kernel conv with ``conv``'s geometry."""
        key = (size, conv.kernel_size, conv.stride, conv.padding, conv.dilation, device)
        if key not in self._fanouts:
            with torch.enable_grad():
                ones = torch.ones(1, 1, *size, requires_grad=True)
                kernel = torch.ones(1, 1, *conv.kernel_size)
                torch.nn.functional.conv2d(ones, kernel, stride=conv.stride, padding=conv.padding,
                                           dilation=conv.dilation).sum().backward()
            self._fanouts[key] = ones.grad[0, 0].to(device)
        return self._fanouts[key]

    def firing_rates(self) -> dict[str, float]:
        """Mean spikes per neuron and time step, for each stage (``stem``, ``stage1``, ...)."""
        self._fold()
        return {k: float(self._spikes[k]) / self._neurons[k] for k in self._neurons if self._neurons[k]}

    def mean_firing_rate(self) -> float:
        """Mean spikes per neuron and time step over the whole network."""
        self._fold()
        n = sum(self._neurons.values())
        return sum(float(v) for v in self._spikes.values()) / n if n else 0.0

    def synops_per_image(self) -> float:
        """Synaptic operations (accumulates) per image, summed over the T time steps."""
        self._fold()
        return float(self._sops) / self._images if self._images else 0.0

    def macs_per_image(self) -> float:
        """Multiply-accumulates per image of the layers that read non-spike input (the stem,
        a classifier on averaged spikes), summed over the time steps they run."""
        return self._macs / self._images if self._images else 0.0

    def stem_macs_per_image(self) -> float:
        """Multiply-accumulates of the stem conv per image (it reads the analog input)."""
        return self._stem_macs / self._images if self._images else 0.0

    def dense_macs_per_image(self) -> float:
        """Multiply-accumulates per image of the same network run as a non-spiking one: every
        conv and linear layer, for one time step."""
        return self._dense_macs / self._images if self._images else 0.0

    def energy_uj(self, costs: OpCosts) -> float:
        """The estimate of :mod:`snn.energy` per image, µJ: E_MAC × MACs + E_AC × SOPs."""
        return energy_uj(self.macs_per_image(), self.synops_per_image(), costs)

    def dense_energy_uj(self, costs: OpCosts) -> float:
        """The non-spiking network's energy per image, µJ: E_MAC × its MACs."""
        return energy_uj(self.dense_macs_per_image(), 0.0, costs)
