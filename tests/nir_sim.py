"""Running an exported NIR graph in an independent simulator (snnTorch's NIR importer), and the
project's own network beside it, counting the spikes of every spiking layer.

snnTorch is a test dependency (pyproject's ``test`` extra). Its importer (``snntorch.import_nir``,
through ``nirtorch``) builds a ``torch.fx`` module that runs one time step per call; its neurons
(``snn.Leaky``, ``init_hidden=True``) keep their membrane between calls, so each sample starts
from reset membranes and runs T calls. Samples run one at a time: the importer maps NIR's
``Flatten`` (dimensions counted without the batch, as NIR writes them) to ``torch.nn.Flatten``
with the same dimensions, which would fold a batch of more than one sample into the features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class Run:
    """Logits [N, K] (averaged over T) and spike counts per layer (NIR node name -> [N] per sample)."""

    logits: Tensor
    spikes: dict[str, Tensor]


def import_snntorch(graph) -> nn.Module:
    """snnTorch's module of a NIR graph (or the path of a .nir file)."""
    import nir
    from snntorch.import_nir import import_from_nir

    if not isinstance(graph, nir.NIRGraph):
        graph = nir.read(graph)
    return import_from_nir(graph)


def run_snntorch(module: nn.Module, x: Tensor, timesteps: int, *, frames: bool = False) -> Run:
    """Run snnTorch's module on samples ``x`` ([N, C, H, W] images, fed at each of the T steps,
    or [T, N, C, H, W] frames, one per step), each from reset membranes."""
    import snntorch as snn

    # nirtorch names a module after its node, "." replaced by "_" (no node name here has a "_")
    leaky = {name.replace("_", "."): m for name, m in module.named_modules() if isinstance(m, snn.Leaky)}
    n = x.shape[1] if frames else x.shape[0]
    counts = {name: torch.zeros(n) for name in leaky}
    latest: dict[str, Tensor] = {}
    hooks = [m.register_forward_hook(lambda m, i, out, name=name: latest.__setitem__(name, out))
             for name, m in leaky.items()]
    logits = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one sample's small tensors: more threads only add overhead
    try:
        with torch.no_grad():
            for i in range(n):
                for m in leaky.values():
                    m.reset_mem()
                out = 0.0
                for t in range(timesteps):
                    y, _ = module(x[t, i:i + 1] if frames else x[i:i + 1])
                    out = out + y
                    for name in leaky:
                        counts[name][i] += latest[name].sum()
                logits.append((out / timesteps).reshape(-1))
    finally:
        torch.set_num_threads(threads)
        for h in hooks:
            h.remove()
    return Run(torch.stack(logits), counts)


def run_project(model: nn.Module, x: Tensor) -> Run:
    """The project's network (stripped) on ``x``, with the spike count of each LIF layer per sample,
    named as the NIR graph names its nodes (``layer1.0.lif2``)."""
    from snn.neurons import LIF

    counts: dict[str, Tensor] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, LIF):
            key = name.removeprefix("net.")

            def keep(m, inputs, output, key=key):
                counts[key] = output.flatten(2).sum((0, 2)).float()  # [T, B, ...] -> [B]

            hooks.append(m.register_forward_hook(keep))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    return Run(logits, counts)
