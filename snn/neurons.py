"""The leaky integrate-and-fire neuron of Eq. 1-2 (Guo et al., NeurIPS 2024), multi-step.

The whole time loop of one LIF layer is a single autograd node: the forward pass runs
the recursion over T and saves only the pre-spike membrane potential; the backward pass
runs the back-propagation-through-time recursion by hand. :func:`lif_reference` is the
plain per-step loop that autograd differentiates, kept as the independent reference the
tests compare against.

Time is the first dimension: inputs are [T, B, ...].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from snn import _lif_cpu
from snn import surrogates as _surrogates
from snn.surrogates import Surrogate

__all__ = ["LIF", "lif_reference"]


def _check_params(tau: float, v_threshold: float) -> None:
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tau: must lie in (0, 1], got {tau!r}")
    if not v_threshold > 0.0:
        raise ValueError(f"v_threshold: must be > 0, got {v_threshold!r}")


def _empty_steps(x: Tensor) -> Tensor:
    """An empty tensor shaped like ``x`` [T, ...]: T outermost and dense, each step in the
    memory layout of ``x[0]`` (contiguous where ``x[0]`` is not dense).

    A static image's stem output repeated over T arrives expanded (stride 0 in T), each step
    channels-last. ``empty_like`` would lay such a tensor out contiguously, so the spikes
    would be NCHW and the next channels-last convolution would reorder them back, forward
    and backward (docs/performance.md).
    """
    step = torch.empty_like(x[0])  # keeps the strides of a dense x[0], else contiguous
    return torch.empty_strided((x.shape[0], *step.shape), (step.numel(), *step.stride()), dtype=x.dtype,
                               device=x.device)


def _fused_kernels(x: Tensor, enabled: bool = True):
    """The module of fused kernels that takes ``x`` (:mod:`snn._lif_cpu` or :mod:`snn._lif_cuda`), or None
    where none does, ``enabled`` is False (the layer's ``fused=False``) or ``torch.compile`` is
    tracing the model.

    Both modules offer ``forward(current, tau, v_threshold) -> (spikes, saved)`` and
    ``backward(saved, grad_spikes, ...)``. Triton is imported only for CUDA tensors: CPU
    trials do not pay for its import.
    """
    if not enabled or torch.compiler.is_compiling():
        return None  # torch.compile traces the tensor ops (dynamo cannot trace into numba's kernels)
    if _lif_cpu.available(x):
        return _lif_cpu
    if x.is_cuda:
        from snn import _lif_cuda

        if _lif_cuda.available(x):
            return _lif_cuda
    return None


class _LIFFunction(torch.autograd.Function):
    """All T steps of Eq. 1-2 in one node, with the BPTT recursion in backward.

    Forward, for t = 0..T-1 with u(-1) = 0:
        u_pre(t) = tau * u(t-1) + c(t)                       (Eq. 1)
        o(t)     = 1[u_pre(t) > V_th]                        (Eq. 2)
        u(t)     = u_pre(t) * (1 - o(t))                     (Eq. 2, hard reset)

    Backward, with s(t) = g'(u_pre(t) - V_th) the surrogate derivative and
    gu(t) = dL/du(t) = tau * dL/du_pre(t+1) (zero at t = T-1):
        dL/du_pre(t) = dL/do(t) * s(t) + gu(t) * (1 - o(t) - u_pre(t) * s(t))
    where the term ``- u_pre(t) * s(t)`` is the gradient through the reset, dropped
    when ``detach_reset`` is set. dL/dc(t) = dL/du_pre(t).

    On CPUs both directions run as fused numba kernels (:mod:`snn._lif_cpu`), one pass over
    the data each, saving the input current; on CUDA as fused Triton kernels
    (:mod:`snn._lif_cuda`), one launch each, saving u_pre; elsewhere (or with ``fused``
    False), as the tensor operations below, saving u_pre. Either way one
    [T, B, ...] tensor is kept for backward.
    """

    @staticmethod
    def forward(ctx, current: Tensor, tau: float, v_threshold: float, surrogate: Surrogate,
                detach_reset: bool, fused: bool) -> Tensor:  # type: ignore[override]
        ctx.tau, ctx.v_threshold, ctx.surrogate, ctx.detach_reset = tau, v_threshold, surrogate, detach_reset
        ctx.fused = _fused_kernels(current, fused)
        if ctx.fused is not None:
            if not _lif_cpu.dense_time_major(current):
                current = _empty_steps(current).copy_(current)
            spikes, saved = ctx.fused.forward(current, tau, v_threshold)  # saved: the current (CPU) or u_pre
            ctx.save_for_backward(saved)
            return spikes
        u_pre = _empty_steps(current)  # [T, B, ...]
        keep = _empty_steps(current)  # 1 - o(t), then turned into the spikes o(t) in place
        u = torch.zeros_like(current[0])
        for t in range(current.shape[0]):
            torch.add(current[t], u, alpha=tau, out=u_pre[t])
            torch.le(u_pre[t], v_threshold, out=keep[t])
            u = u_pre[t] * keep[t]  # hard reset (measured faster than masked_fill / where)
        ctx.save_for_backward(u_pre)
        return keep.neg_().add_(1.0)

    @staticmethod
    def backward(ctx, grad_spikes: Tensor):  # type: ignore[override]
        (saved,) = ctx.saved_tensors
        tau, vth = ctx.tau, ctx.v_threshold
        if ctx.fused is not None:
            grad_current = ctx.fused.backward(saved, grad_spikes, tau, vth, ctx.surrogate.name, ctx.surrogate.param,
                                              ctx.detach_reset)
            return grad_current, None, None, None, None, None
        u_pre = saved
        # Everything that does not depend on the recursion is computed for all T at once:
        #   a(t) = dL/do(t) * s(t)   and   c(t) = tau * (1 - o(t) - u_pre(t) * s(t)),
        # so that the recursion is one fused multiply-add per step:
        #   dL/du_pre(t) = a(t) + c(t) * dL/du_pre(t+1).
        # Few fresh buffers: on CPUs, first-touching large new tensors costs as much as the math.
        x = u_pre - vth
        sg = ctx.surrogate.grad(x)
        keep = x <= 0  # 1 - o(t), as bool
        coef = x  # reuse the buffer: c(t)
        if ctx.detach_reset:
            coef.copy_(keep)
        else:
            torch.mul(u_pre, sg, out=coef).neg_().add_(keep)
        coef.mul_(tau)
        grad_current = sg.mul_(grad_spikes)  # a(t), then overwritten step by step with the result
        for t in range(u_pre.shape[0] - 2, -1, -1):
            grad_current[t].addcmul_(coef[t], grad_current[t + 1])
        return grad_current, None, None, None, None, None


def lif_reference(current: Tensor, *, tau: float = 0.5, v_threshold: float = 1.0,
                  surrogate: Surrogate | None = None, detach_reset: bool = False) -> Tensor:
    """Eq. 1-2 as a plain loop over T that autograd differentiates step by step.

    Slow but obviously correct; :class:`LIF` must agree with it in value and gradient.

    Args:
        current: Input current c, shape [T, B, ...].
        tau: Membrane leak factor τ in (0, 1].
        v_threshold: Firing threshold V_th.
        surrogate: Surrogate used in backward (default: triangle, γ = 1).
        detach_reset: Treat o(t) in the reset u = u_pre·(1 - o) as a constant.

    Returns:
        Spikes o, shape [T, B, ...], with values in {0, 1}.
    """
    surrogate = surrogate or _surrogates.get("triangle")
    u = torch.zeros_like(current[0])
    out = []
    for t in range(current.shape[0]):
        u_pre = tau * u + current[t]
        o = surrogate(u_pre - v_threshold)
        u = u_pre * (1.0 - (o.detach() if detach_reset else o))
        out.append(o)
    return torch.stack(out)


class LIF(nn.Module):
    """Multi-step LIF neuron layer (Eq. 1-2), with hard reset and a surrogate backward (Eq. 4).

    ``u_pre(t) = τ·u(t-1) + c(t)``, ``u(0) = 0``; ``o(t) = 1`` if ``u_pre(t) > V_th``
    (strictly: a potential exactly at the threshold does not fire);
    ``u(t) = u_pre(t)·(1 - o(t))``. The layer keeps no state between calls: the
    membrane starts at zero in every forward pass.

    Args:
        tau: Leak factor τ in (0, 1]; 0.5 in the paper, 1 gives an IF neuron.
        v_threshold: Threshold V_th > 0; 1.0 in the paper.
        surrogate: A name from :data:`snn.surrogates.NAMES`.
        surrogate_param: Its parameter; ``None`` for the default.
        detach_reset: Stop the gradient through the reset term.
        fused: Run both directions as the fused kernels (numba on CPUs, Triton on CUDA) where
            they take the input; False: always as tensor operations. Spikes are the same either
            way; gradients agree to the dtype's precision.

    Shape:
        input [T, B, ...] of currents, output [T, B, ...] of spikes in {0, 1}.
    """

    fused: bool = True  # for an instance that lacks the attribute (a module pickled without it)

    def __init__(self, tau: float = 0.5, v_threshold: float = 1.0, surrogate: str = "triangle",
                 surrogate_param: float | None = None, *, detach_reset: bool = False, fused: bool = True) -> None:
        super().__init__()
        _check_params(tau, v_threshold)
        self.tau = float(tau)
        self.v_threshold = float(v_threshold)
        self.surrogate = _surrogates.get(surrogate, surrogate_param)
        self.detach_reset = bool(detach_reset)
        self.fused = bool(fused)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2:
            raise ValueError(f"LIF: input must be [T, B, ...], got shape {tuple(x.shape)}")
        return _LIFFunction.apply(x, self.tau, self.v_threshold, self.surrogate, self.detach_reset, self.fused)

    def extra_repr(self) -> str:
        return (f"tau={self.tau}, v_threshold={self.v_threshold}, surrogate={self.surrogate.name}"
                f"({self.surrogate.param}), detach_reset={self.detach_reset}"
                + ("" if self.fused else ", fused=False"))
