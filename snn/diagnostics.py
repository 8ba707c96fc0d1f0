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


class ActivityMonitor:
    """Forward hooks that count spikes per stage and the operations of an inference per image.

    Shortcut branches are left out: they do not exist at inference. The stem conv reads the
    input (analog images, or event counts), so its operations are MACs. Every other conv and
    linear layer is checked on each batch: binary input (spikes) gives SOPs, exact per input
    position (a spike at a border or between strided outputs reaches fewer synapses), any
    other input (an average of spikes, a membrane potential) gives MACs. The checks and sums
    stay on the device and are read back by the accessors only.

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
        # Spike counts and operations are summed on the activations' device, as tensors, and
        # read back only by the accessors: a GPU evaluation is not held up after every layer.
        self._spikes: dict[str, Tensor | float] = defaultdict(float)
        self._neurons: dict[str, float] = defaultdict(float)
        self._sops: Tensor | float = 0.0
        self._macs: Tensor | float = 0.0  # of the layers that read non-spike input
        self._stem_macs = 0.0
        self._dense_macs = 0.0  # every layer as a non-spiking network's, one time step
        self._images = 0
        self._batch = 1

    def __enter__(self) -> "ActivityMonitor":
        stem = first_conv(self.model)
        self._handles.append(self.model.register_forward_pre_hook(self._count_images))
        for name, m in self.model.named_modules():
            stage = stage_of(name)
            if stage is None:
                continue
            if isinstance(m, LIF):
                self._handles.append(m.register_forward_hook(self._lif_hook(stage)))
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                self._handles.append(m.register_forward_hook(self._synapse_hook(m is stem)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _count_images(self, module: nn.Module, args: tuple) -> None:
        x = args[0]
        self._batch = int(x.shape[0] if x.dim() == 4 else x.shape[1])
        self._images += self._batch

    def _lif_hook(self, stage: str):
        def hook(module: nn.Module, args: tuple, out: Tensor) -> None:
            # summed in float32 whatever the dtype (a bfloat16 sum rounds), accumulated in float64
            self._spikes[stage] = self._spikes[stage] + out.detach().sum(dtype=torch.float32).double()
            self._neurons[stage] += out.numel()
        return hook

    def _synapse_hook(self, is_stem: bool):
        def hook(module: nn.Conv2d | nn.Linear, args: tuple, out: Tensor) -> None:
            x = args[0].detach()
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                macs = out.numel() * (module.in_channels // module.groups) * kh * kw
                steps = out.shape[0] / self._batch
            else:
                macs = out.numel() * module.in_features
                steps = out.numel() / (module.out_features * self._batch)
            self._dense_macs += macs / steps
            if is_stem:
                self._stem_macs += macs
                self._macs = self._macs + macs
                return
            spikes = torch.logical_or(x == 0, x == 1).all()
            sops = self._synops(module, x)
            self._sops = self._sops + sops * spikes
            self._macs = self._macs + (~spikes).double() * macs
        return hook

    def _synops(self, module: nn.Conv2d | nn.Linear, x: Tensor) -> Tensor:
        """Σ over the input of its value × its fan-out (one accumulate per spike and synapse)."""
        if isinstance(module, nn.Linear):
            return x.sum(dtype=torch.float32).double() * module.out_features
        per_position = x.sum(dim=(0, 1), dtype=torch.float32)  # [H, W]: spikes of every image and channel
        fanout = self._fanout(module, tuple(x.shape[-2:]), x.device)
        return (per_position * fanout).sum().double() * (module.out_channels // module.groups)

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
        return {k: float(self._spikes[k]) / self._neurons[k] for k in self._neurons if self._neurons[k]}

    def mean_firing_rate(self) -> float:
        """Mean spikes per neuron and time step over the whole network."""
        n = sum(self._neurons.values())
        return sum(float(v) for v in self._spikes.values()) / n if n else 0.0

    def synops_per_image(self) -> float:
        """Synaptic operations (accumulates) per image, summed over the T time steps."""
        return float(self._sops) / self._images if self._images else 0.0

    def macs_per_image(self) -> float:
        """Multiply-accumulates per image of the layers that read non-spike input (the stem,
        a classifier on averaged spikes), summed over the time steps they run."""
        return float(self._macs) / self._images if self._images else 0.0

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
