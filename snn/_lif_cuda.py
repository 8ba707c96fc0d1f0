"""Fused GPU kernels for the LIF layer of :mod:`snn.neurons` (Eq. 1-2 forward, BPTT backward).

On a GPU, a LIF layer written with tensor operations launches several kernels per time step,
forward and backward, and for the small activations of a CIFAR network the launches cost
more than the arithmetic. These kernels, written in Triton, launch once per direction: each
program takes a block of neurons and runs all T steps on it in registers.

Forward reads the input current and writes the spikes and the pre-spike potential u_pre
(saved for backward, in the input's dtype); backward reads u_pre and the spike gradient and
writes the current gradient. They compute the recursion documented in ``_LIFFunction``:

* the potential is rounded to the tensors' dtype before it meets the threshold, as the
  tensor operations do under autocast, so both paths give the same spikes;
* backward carries dL/du_pre(t+1) from step to step in float32, where the tensor path
  rounds it to the tensors' dtype at every step (the two agree exactly in float32 and to
  rounding in float16/bfloat16).

Float16, bfloat16 and float32 CUDA tensors take this path when Triton is installed, unless the
layer was built with ``fused=False`` (:class:`snn.neurons.LIF`). The tests run the same kernels on the CPU
through Triton's interpreter (``TRITON_INTERPRET=1``) against the tensor-op path.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from snn._lif_cpu import _CODES, _constants

try:  # Triton comes with CUDA builds of torch; without it the tensor-op path runs
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only torch builds
    triton = None

__all__ = ["available", "backward", "forward"]

_BLOCK = 1024  # neurons per program
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def available(x: Tensor) -> bool:
    """Whether the fused kernels can take ``x`` (a float CUDA tensor, Triton loaded)."""
    return triton is not None and x.is_cuda and x.dtype in _DTYPES


if triton is not None:

    @triton.jit
    def _sg(x, CODE: tl.constexpr, k1, k2):
        # g'(x) of snn.surrogates (Eq. 4), x = u_pre - V_th, in float32, with the surrogate codes
        # and constants k1, k2 of snn._lif_cpu (_CODES, _constants).
        if CODE == 0:  # triangle: gamma * max(0, 1 - |x|)
            g = k1 * tl.maximum(1.0 - tl.abs(x), 0.0)
        elif CODE == 1:  # rectangle: (1/a) * 1[|x| < a/2]
            g = tl.where(tl.abs(x) < k2, k1, 0.0)
        elif CODE == 2:  # tanh: (k/2) * (1 - tanh(kx)^2), tanh(y) = 2 sigma(2y) - 1
            th = 2.0 * tl.sigmoid(2.0 * k1 * x) - 1.0
            g = k2 * (1.0 - th * th)
        elif CODE == 3:  # sigmoid: alpha * s * (1 - s), s = sigma(alpha x)
            s = tl.sigmoid(k1 * x)
            g = k1 * s * (1.0 - s)
        else:  # atan: (alpha/2) / (1 + (pi/2 * alpha * x)^2)
            z = k2 * x
            g = k1 / (1.0 + z * z)
        return g

    @triton.jit
    def _forward_kernel(c_ptr, spikes_ptr, u_pre_ptr, n, steps, tau, vth, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        c_ptr += offs  # pointers step by n, a step's size: offsets past 2**31 stay exact
        spikes_ptr += offs
        u_pre_ptr += offs
        u = tl.zeros([BLOCK], dtype=tl.float32)  # u(t-1), after the reset
        for _ in range(steps):
            c = tl.load(c_ptr, mask=mask, other=0.0).to(tl.float32)
            # Eq. 1, rounded to the tensors' dtype to nearest even, as torch's ops round
            h = (c + tau * u).to(u_pre_ptr.dtype.element_ty, fp_downcast_rounding="rtne")
            tl.store(u_pre_ptr, h, mask=mask)
            h = h.to(tl.float32)
            fire = h > vth  # Eq. 2
            tl.store(spikes_ptr, tl.where(fire, 1.0, 0.0).to(spikes_ptr.dtype.element_ty), mask=mask)
            u = tl.where(fire, 0.0, h)  # hard reset
            c_ptr += n
            spikes_ptr += n
            u_pre_ptr += n

    @triton.jit
    def _backward_kernel(u_pre_ptr, grad_spikes_ptr, grad_c_ptr, n, steps, last, tau, vth, k1, k2,
                         CODE: tl.constexpr, DETACH_RESET: tl.constexpr, BLOCK: tl.constexpr):
        # last = (T - 1) * n, the offset of the last step; the loop walks back from it
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        u_pre_ptr += offs + last
        grad_spikes_ptr += offs + last
        grad_c_ptr += offs + last
        g_next = tl.zeros([BLOCK], dtype=tl.float32)  # dL/du_pre(t+1), zero after the last step
        for _ in range(steps):
            h = tl.load(u_pre_ptr, mask=mask, other=0.0).to(tl.float32)
            x = h - vth
            sg = _sg(x, CODE, k1, k2)
            keep = tl.where(x <= 0.0, 1.0, 0.0)  # 1 - o(t)
            if DETACH_RESET:
                coef = keep
            else:
                coef = keep - h * sg  # through the reset u = u_pre (1 - o)
            gs = tl.load(grad_spikes_ptr, mask=mask, other=0.0).to(tl.float32)
            g = gs * sg + tau * coef * g_next
            tl.store(grad_c_ptr, g.to(grad_c_ptr.dtype.element_ty), mask=mask)
            g_next = g
            u_pre_ptr -= n
            grad_spikes_ptr -= n
            grad_c_ptr -= n


@functools.lru_cache(maxsize=None)
def _threshold(dtype: torch.dtype, v_threshold: float) -> float:
    # the threshold as the tensor ops compare with it: rounded to the tensors' dtype (cached:
    # building a tensor costs host time twice per layer and step of a launch-bound loop)
    return float(torch.tensor(v_threshold, dtype=dtype))


def _step_size(x: Tensor) -> int:
    return x.numel() // x.shape[0] if x.shape[0] else 0  # neurons per time step, without a view


def _grid(n: int) -> tuple[int]:
    return (triton.cdiv(n, _BLOCK),)


def forward(current: Tensor, tau: float, v_threshold: float) -> tuple[Tensor, Tensor]:
    """Spikes o(t) and potentials u_pre(t) of Eq. 1-2 for ``current`` [T, B, ...]; backward takes u_pre.

    ``current`` must be dense with T outermost (``snn._lif_cpu.dense_time_major``); both
    results have its memory layout and dtype.
    """
    spikes, u_pre = torch.empty_like(current), torch.empty_like(current)
    n = _step_size(current)
    if n:
        _forward_kernel[_grid(n)](current, spikes, u_pre, n, current.shape[0], float(tau),
                                  _threshold(current.dtype, v_threshold), BLOCK=_BLOCK)
    return spikes, u_pre


def backward(u_pre: Tensor, grad_spikes: Tensor, tau: float, v_threshold: float, surrogate_name: str,
             surrogate_param: float, detach_reset: bool) -> Tensor:
    """dL/dc(t) from dL/do(t) by the BPTT recursion documented in ``_LIFFunction``.

    ``u_pre`` is what :func:`forward` returned; the result has its layout and dtype.
    """
    if grad_spikes.stride() != u_pre.stride() or grad_spikes.dtype != u_pre.dtype:
        grad_spikes = torch.empty_like(u_pre).copy_(grad_spikes)
    grad_c = torch.empty_like(u_pre)
    n = _step_size(u_pre)
    if n:
        k1, k2 = _constants(surrogate_name, float(surrogate_param))
        _backward_kernel[_grid(n)](u_pre, grad_spikes, grad_c, n, u_pre.shape[0], (u_pre.shape[0] - 1) * n,
                                   float(tau), _threshold(u_pre.dtype, v_threshold), k1, k2, CODE=_CODES[surrogate_name],
                                   DETACH_RESET=bool(detach_reset), BLOCK=_BLOCK)
    return grad_c
