"""spikingjelly's counterparts of the project's LIF layer and spiking ResNet.

spikingjelly's ``LIFNode`` with ``decay_input=False``, ``tau=2`` and ``v_reset=0`` charges
``H[t] = V[t-1]·(1 - 1/tau) + X[t] = 0.5·V[t-1] + X[t]``, fires on ``H - V_th`` through its
surrogate and resets hard to 0: Eq. 1-2 with τ = 0.5, V_th = 1 (it fires at ``H >= V_th``,
the paper at ``>``; equality has probability zero on real-valued inputs, and
:func:`check_same_spikes` verifies the outputs match).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from snn.models import SpikingResNet
from snn.neurons import LIF


def available() -> str | None:
    """spikingjelly's version, or None when it is not installed."""
    try:
        from spikingjelly.activation_based import neuron  # noqa: F401
    except ImportError:
        return None
    from importlib.metadata import version

    return version("spikingjelly")


class SJLIF(nn.Module):
    """spikingjelly's multi-step LIF configured as the paper's neuron (atan surrogate, α = 2)."""

    def __init__(self, tau: float = 0.5, v_threshold: float = 1.0, alpha: float = 2.0) -> None:
        super().__init__()
        from spikingjelly.activation_based import neuron, surrogate

        self.node = neuron.LIFNode(tau=1.0 / (1.0 - tau), decay_input=False, v_threshold=v_threshold, v_reset=0.0,
                                   surrogate_function=surrogate.ATan(alpha=alpha), detach_reset=False,
                                   step_mode="m")

    def forward(self, x: Tensor) -> Tensor:
        self.node.reset()  # the membrane starts at 0 for every sample, as in the project's LIF
        return self.node(x)


def sj_network(model: SpikingResNet) -> nn.Module:
    """The same network (same conv, BN and head modules, same weights) with spikingjelly's LIF.

    The input is repeated over T before the first conv, as spikingjelly's CIFAR examples do,
    so the stem runs T times; the project computes it once for a static image.
    """
    net = copy.deepcopy(model)
    for name, module in list(net.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LIF):
                setattr(module, child_name, SJLIF(child.tau, child.v_threshold, child.surrogate.param))
    return _RepeatInput(net, model.timesteps)


class _RepeatInput(nn.Module):
    def __init__(self, net: SpikingResNet, timesteps: int) -> None:
        super().__init__()
        self.net, self.timesteps = net, timesteps

    def forward(self, x: Tensor):
        return self.net(x.unsqueeze(0).repeat(self.timesteps, 1, 1, 1, 1))


def check_same_spikes(ours: nn.Module, theirs: nn.Module, x: Tensor) -> float:
    """Largest difference between the two networks' logits on one batch (eval mode).

    Raises:
        AssertionError: The networks disagree, so a timing comparison would not be fair.
    """
    ours.eval(), theirs.eval()
    with torch.no_grad():
        a, b = ours(x).main, theirs(x).main
    ours.train(), theirs.train()
    diff = float((a - b).abs().max())
    assert diff < 1e-4, f"spikingjelly's network differs from ours by {diff}"
    return diff
