"""A trained spiking ResNet as a NIR graph (the Neuromorphic Intermediate Representation).

NIR (Pedersen et al., Nature Communications 2024; packages ``nir``/``nirtorch``) is the
format that neuromorphic toolchains (Lava for Loihi 2, SpiNNaker2, Rockpool for Xylo,
Sinabs for Speck, BrainScaleS-2) and simulators (snnTorch, Norse, Spyx) read. This module
writes the inference network of a :class:`~snn.models.SpikingResNet`, its shortcut branches
removed (Algorithm 1, inference part), as one NIR graph:

* each convolution with the BatchNorm after it folded in: a ``Conv2d`` node with a bias;
* each LIF layer of Eq. 1-2 a ``LIF`` node (an ``IF`` node for τ = 1) whose forward-Euler
  discretisation with the time step :data:`DT` is Eq. 1-2 exactly (:func:`lif_node`);
* each residual addition two edges into the block's second LIF node: NIR sums a node's inputs;
* the classifier's global average pooling as ``SumPool2d`` over the last stage's H x W (its
  1/(H·W) in the next weights), then ``Flatten`` and ``Affine`` nodes (the ResNet-19 head:
  ``Affine``, ``LIF``, ``Affine``);
* what NIR has no node for, in the graph's metadata: the time step, T, the input's encoding
  (the analog image as input current at each of the T steps, or one event frame per step) and
  the readout (the mean of the output over the T steps, Eq. 6's average over time).

The ImageNet stem's max-pooling has no NIR node: such a network is refused with a one-line
``ValueError`` that names the layer and what to choose in the study instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import nir
import numpy as np
import torch
from torch import nn

from snn.models import SpikingResNet
from snn.neurons import LIF

__all__ = ["DT", "INPUT_NODE", "OUTPUT_NODE", "fold_batchnorm", "lif_node", "to_nir", "write_nir"]

DT = 1e-4
"""The time step (seconds) of the exported neurons: one step of Eq. 1-2 is DT of NIR's
continuous-time LIF. snnTorch's importer discretises with this step, fixed; importers that take
a time step as an argument (Norse's ``dt``) are given the graph's ``dt`` metadata."""

INPUT_NODE, OUTPUT_NODE = "input", "output"

_NEURON = ("Eq. 1-2 of Guo et al. (NeurIPS 2024): u_pre(t) = beta * u(t-1) + c(t), spike if u_pre(t) > v_threshold "
           "(strictly), then u(t) = 0 (hard reset); the LIF nodes' forward-Euler step with dt (decay 1 - dt/tau, "
           "input gain r * dt / tau = 1) is this recursion exactly; beta = 1 is an IF node (gain r * dt = 1)")
_READOUT = ("the mean of the output over the T steps (the classifier is affine: equal to the network's logits); "
            "its argmax is the class")
_ENCODING = {
    "static": "direct: the analog image, as input current, at each of the T steps (no spike encoding)",
    "frames": "event frames: frame t of the sample's T frames at step t",
}
_STEMS = "resnet18, resnet34, resnet19, resnet20, resnet-tiny"


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """The weight and bias of ``conv`` followed by ``bn`` in eval mode, as one convolution.

    ``bn(conv(x)) = s * (W*x + b - μ) + β`` with ``s = γ / sqrt(σ² + ε)`` per output channel,
    so the folded convolution has weight ``s·W`` and bias ``β + s·(b - μ)``. Computed in
    float64 and rounded once to float32.

    Returns:
        (weight [C_out, C_in, kH, kW], bias [C_out]), float32.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{bn}: a BatchNorm without running statistics cannot be folded into its convolution")
    w = conv.weight.detach().double().cpu()
    b = conv.bias.detach().double().cpu() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    gamma = bn.weight.detach().double().cpu() if bn.weight is not None else torch.ones_like(b)
    beta = bn.bias.detach().double().cpu() if bn.bias is not None else torch.zeros_like(b)
    scale = gamma / torch.sqrt(bn.running_var.detach().double().cpu() + bn.eps)
    weight = w * scale[:, None, None, None]
    bias = beta + scale * (b - bn.running_mean.detach().double().cpu())
    return weight.float().numpy(), bias.float().numpy()


def lif_node(neuron: LIF, shape: Sequence[int]) -> nir.NIRNode:
    """The NIR neuron node of a LIF layer of ``shape`` (C, H, W or features), whose forward-Euler
    step of :data:`DT` is Eq. 1-2.

    NIR's LIF is ``τ dv/dt = (v_leak - v) + R·I``; a forward-Euler step of ``dt`` gives
    ``v ← (1 - dt/τ)·v + (R·dt/τ)·I``. With ``τ = dt / (1 - β)`` and ``R = τ / dt`` that is
    Eq. 1, ``u = β·u + c``, with ``v_leak = 0``, the threshold ``V_th`` (spike where
    ``v > V_th``) and ``v_reset = 0`` (Eq. 2's hard reset). The parameters are float32, and τ is
    the float32 value near ``dt / (1 - β)`` for which ``1 - dt/τ`` in float32 is nearest the
    layer's β in float32 (the dtype the layer computes in): β exactly for β >= 0.5, within
    2^-25 below. β = 1 (no leak) is NIR's IF neuron, ``dv/dt = R·I``, with ``R = 1/dt``.
    """
    shape = tuple(int(s) for s in shape)
    beta = np.float32(neuron.tau)
    threshold = np.full(shape, neuron.v_threshold, dtype=np.float32)
    zeros = np.zeros(shape, dtype=np.float32)
    if beta == np.float32(1.0):
        return nir.IF(r=np.full(shape, 1.0 / DT, dtype=np.float32), v_threshold=threshold, v_reset=zeros)
    tau = _euler_tau(beta)
    return nir.LIF(tau=np.full(shape, tau, dtype=np.float32), r=np.full(shape, tau / np.float32(DT), dtype=np.float32),
                   v_leak=zeros, v_threshold=threshold, v_reset=zeros.copy())


def _euler_tau(beta: np.float32) -> np.float32:
    """The float32 τ near ``DT / (1 - β)`` whose float32 decay ``1 - DT/τ`` is nearest β: β itself
    for β >= 0.5 (every float32 there is 1 minus a float32); below, within 2^-25 of it (1 - x
    for x in [0.5, 1] lies on a grid of 2^-24)."""
    dt = np.float32(DT)
    tau = np.float32(DT / (1.0 - float(beta)))
    candidates = [tau]
    up = down = tau
    for _ in range(16):  # the nearest decay is a few float32 steps of τ away
        up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(0))
        candidates += [up, down]
    return min(candidates, key=lambda t: abs(float(np.float32(1) - dt / t) - float(beta)))


def _conv_out(size: Sequence[int], conv: nn.Conv2d) -> tuple[int, int]:
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in  # type: ignore[return-value]
                 zip(size, conv.padding, conv.dilation, conv.kernel_size, conv.stride))


class _Graph:
    """NIR nodes and edges as the network's layers add them, tracking each node's output shape."""

    def __init__(self) -> None:
        self.nodes: dict[str, nir.NIRNode] = {}
        self.edges: list[tuple[str, str]] = []
        self.shapes: dict[str, tuple[int, ...]] = {}

    def add(self, name: str, node: nir.NIRNode, shape: Sequence[int], *sources: str) -> str:
        self.nodes[name] = node
        self.shapes[name] = tuple(int(s) for s in shape)
        self.edges += [(s, name) for s in sources]
        return name

    def conv(self, name: str, conv: nn.Conv2d, bn: nn.BatchNorm2d, source: str) -> str:
        c, h, w = self.shapes[source]
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"{name}: padding {conv.padding!r} ({conv.padding_mode}) has no NIR form here; "
                             f"only zero padding by a number of pixels is exported")
        weight, bias = fold_batchnorm(conv, bn)
        node = nir.Conv2d(input_shape=(h, w), weight=weight, stride=tuple(conv.stride), padding=tuple(conv.padding),
                          dilation=tuple(conv.dilation), groups=conv.groups, bias=bias)
        return self.add(name, node, (conv.out_channels, *_conv_out((h, w), conv)), source)

    def lif(self, name: str, neuron: nn.Module, *sources: str) -> str:
        if not isinstance(neuron, LIF):
            raise ValueError(f"{name}: {type(neuron).__name__} is not the project's LIF neuron; NIR export maps "
                             f"only snn.neurons.LIF")
        shape = self.shapes[sources[0]]
        return self.add(name, lif_node(neuron, shape), shape, *sources)


def _block(g: _Graph, name: str, block: nn.Module, source: str) -> str:
    """A basic block: conv1+bn1 -> lif1 -> conv2+bn2 -> lif2, the shortcut into lif2 as a second edge."""
    y = g.conv(f"{name}.conv1", block.conv1, block.bn1, source)
    y = g.lif(f"{name}.lif1", block.lif1, y)
    y = g.conv(f"{name}.conv2", block.conv2, block.bn2, y)
    shortcut = source
    if block.downsample is not None:
        conv, bn = block.downsample
        shortcut = g.conv(f"{name}.downsample", conv, bn, source)
    return g.lif(f"{name}.lif2", block.lif2, y, shortcut)


def _head(g: _Graph, head: nn.Module, source: str) -> str:
    """Global average pooling, flatten and the classifier (with the ResNet-19 head's hidden LIF).

    The pooling is a ``SumPool2d`` over the whole H x W map, its 1/(H·W) in the weights of the
    ``Affine`` node after it: toolchains read sum pooling (Lava, Norse, Sinabs, SpiNNaker2, Spyx),
    average pooling hardly any (docs/nir.md).
    """
    c, h, w = g.shapes[source]
    y = g.add("head.pool", nir.SumPool2d(kernel_size=np.array([h, w]), stride=np.array([h, w]),
                                         padding=np.array([0, 0])), (c, 1, 1), source)
    y = g.add("head.flatten", nir.Flatten(input_type={"input": np.array([c, 1, 1])}, start_dim=0, end_dim=-1), (c,), y)
    first = head.fc1 if head.fc1 is not None else head.fc
    y = g.add(f"head.{'fc1' if head.fc1 is not None else 'fc'}", _affine(first, 1.0 / (h * w)),
              (first.out_features,), y)
    if head.fc1 is not None:
        y = g.lif("head.lif", head.lif, y)
        y = g.add("head.fc", _affine(head.fc), (head.fc.out_features,), y)
    return y


def _affine(fc: nn.Linear, scale: float = 1.0) -> nir.NIRNode:
    """``fc`` as an Affine node (Linear without a bias), its weight times ``scale`` (in float64,
    rounded once to float32)."""
    weight = (fc.weight.detach().double().cpu() * scale).float().numpy()
    if fc.bias is None:
        return nir.Linear(weight=weight)
    return nir.Affine(weight=weight, bias=fc.bias.detach().float().cpu().numpy())


def _network(model: nn.Module) -> SpikingResNet:
    net = getattr(model, "net", model)  # snn.models.strip_shortcuts wraps the network
    if not isinstance(net, SpikingResNet):
        raise ValueError(f"model: NIR export takes a SpikingResNet or its strip_shortcuts() form, got "
                         f"{type(model).__name__}")
    return net


def to_nir(model: nn.Module, input_shape: Sequence[int], *, kind: str = "static",
           metadata: dict[str, Any] | None = None) -> nir.NIRGraph:
    """The NIR graph of a spiking ResNet's inference network (its shortcut branches left out).

    Args:
        model: A :class:`~snn.models.SpikingResNet` or :func:`~snn.models.strip_shortcuts` of one,
            with trained BatchNorm statistics (they are folded into the convolutions).
        input_shape: One sample's shape at one step, [C, H, W] (an event sample's [T, C, H, W]
            is accepted: its T leading).
        kind: ``"static"`` (an image, fed at every step) or ``"frames"`` (one event frame per step).
        metadata: More entries for the graph's metadata (strings and numbers).

    Returns:
        The graph: an ``input`` node of [C, H, W], an ``output`` node of [K] per step, and the
        metadata ``dt``, ``timesteps``, ``input_encoding``, ``readout`` and ``neuron``.

    Raises:
        ValueError: A layer NIR cannot express (named, with what to choose instead), or a model
            that is not a spiking ResNet.
    """
    net = _network(model)
    if kind not in _ENCODING:
        raise ValueError(f"kind: unknown input kind {kind!r}; choose one of {', '.join(_ENCODING)}")
    if net.maxpool is not None:
        raise ValueError(f"maxpool (the imagenet stem's 3x3 max-pooling): NIR has no max-pooling node; choose an "
                         f"arch with the CIFAR stem ({_STEMS}) or arch_kwargs stem: cifar")
    shape = tuple(int(s) for s in input_shape)[-3:]
    if len(shape) != 3 or shape[0] != net.in_channels:
        raise ValueError(f"input_shape: expected [C, H, W] with C = {net.in_channels}, got {list(input_shape)}")
    g = _Graph()
    y = g.add(INPUT_NODE, nir.Input(input_type={"input": np.array(shape)}), shape)
    y = g.conv("conv1", net.conv1, net.bn1, y)
    y = g.lif("lif1", net.lif1, y)
    for stage in net.stage_names:
        for i, block in enumerate(getattr(net, stage)):
            y = _block(g, f"{stage}.{i}", block, y)
    y = _head(g, net.head, y)
    g.add(OUTPUT_NODE, nir.Output(output_type={"output": np.array(g.shapes[y])}), g.shapes[y], y)
    meta = {"dt": DT, "timesteps": net.timesteps, "input_encoding": _ENCODING[kind], "readout": _READOUT,
            "neuron": _NEURON, "source": "snn-shortcut-study: a SpikingResNet with its shortcut branches stripped, "
                                        "BatchNorm folded into the convolutions", **(metadata or {})}
    return nir.NIRGraph(nodes=g.nodes, edges=g.edges, metadata=meta)


def write_nir(model: nn.Module, path: str | os.PathLike, input_shape: Sequence[int], *, kind: str = "static",
              metadata: dict[str, Any] | None = None) -> nir.NIRGraph:
    """Write :func:`to_nir`'s graph of ``model`` to ``path`` (HDF5, ``nir.read`` reads it) and return it.

    Raises:
        ValueError: As :func:`to_nir`.
        OSError: ``path`` cannot be written.
    """
    graph = to_nir(model, input_shape, kind=kind, metadata=metadata)
    nir.write(path, graph)
    return graph
