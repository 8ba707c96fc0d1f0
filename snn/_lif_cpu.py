"""Fused CPU kernels for the LIF layer of :mod:`snn.neurons` (Eq. 1-2 forward, BPTT backward).

On a CPU, the time loop of a LIF layer written with tensor operations is bound by memory
traffic: every step reads and writes whole [B, ...] buffers several times, and the backward
pass adds as many passes again. These kernels, compiled by numba, make one pass over the
data in each direction: each thread takes a block of neurons and runs all T steps on it
while the block is in cache. Forward reads the input current and writes the spikes;
backward reads the current (saved instead of the potential, which it recomputes in cache)
and the spike gradient, and writes the current gradient. They compute exactly the recursion of
``_LIFFunction`` and are checked against it and against ``lif_reference`` by the tests.

Only float32/float64 CPU tensors take this path; CUDA tensors take :mod:`snn._lif_cuda`, and
half precision on CPUs the tensor-op implementation. A layer built with ``fused=False``
(:class:`snn.neurons.LIF`) never takes them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from snn import registry

__all__ = ["available", "backward", "dense_time_major", "forward"]

# Surrogate codes of ``_sg``, whose formulas are those of snn.surrogates (Eq. 4); a surrogate
# added there must be added here too (the tests compare every one with the tensor-op path).
_CODES = {"triangle": 0, "rectangle": 1, "tanh": 2, "sigmoid": 3, "atan": 4}
assert set(_CODES) == set(registry.SURROGATES)
_BLOCK = 2048  # neurons per block: T rows of a block stay in L1/L2 cache between steps
# Fast-math flags that keep IEEE results for finite inputs: fused multiply-add and fast
# reciprocals/transcendentals for the surrogates, but no assumptions about NaN or infinities.
_FLAGS = {"contract", "arcp", "afn"}

try:  # numba ships with the project's dependencies; a broken install falls back, it does not fail
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - numba missing, or built for another numpy
    numba = None


def available(x: Tensor) -> bool:
    """Whether the fused kernels can take ``x`` (a CPU float tensor, numba loaded)."""
    return numba is not None and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)


if numba is not None:

    def _jit(**options):
        """numba.njit with an on-disk cache (compiled once per machine), or none where no cache
        folder is writable (numba raises at decoration time then)."""
        def decorate(fn):
            try:
                return njit(cache=True, **options)(fn)
            except RuntimeError:  # pragma: no cover - read-only package and home folders
                return njit(**options)(fn)
        return decorate

    @_jit(inline="always", fastmath=_FLAGS)
    def _sg(x, code, k1, k2, one, zero):
        # g'(x) of snn.surrogates, x = u_pre - V_th, with the constants k1, k2 of _constants()
        # in the tensors' dtype, so that float32 tensors are computed in float32 throughout.
        if code == 0:  # triangle: gamma * max(0, 1 - |x|)
            return k1 * max(zero, one - abs(x))
        if code == 1:  # rectangle: (1/a) * 1[|x| < a/2]
            return k1 if abs(x) < k2 else zero
        if code == 2:  # tanh: (k/2) * (1 - tanh(kx)^2)
            th = math.tanh(k1 * x)
            return k2 * (one - th * th)
        if code == 3:  # sigmoid: alpha * s * (1 - s), s = sigma(alpha x)
            s = one / (one + math.exp(-k1 * x))
            return k1 * s * (one - s)
        # atan: (alpha/2) / (1 + (pi/2 * alpha * x)^2)
        z = k2 * x
        return k1 / (one + z * z)

    @_jit(inline="always", fastmath=_FLAGS)
    def _charge(c, tau, vth, t, i, prev):
        # Eq. 1 with the hard reset of Eq. 2: u_pre(t) = tau * u(t-1) + c(t), u(t-1) = 0 after a spike.
        # tau and vth come in the tensors' dtype and no float literal enters the arithmetic, so the
        # potential is rounded to that dtype before it meets the threshold, as in torch.
        h = c[t, i] + tau * prev
        if prev > vth:
            h = c[t, i]
        return h

    @_jit(parallel=True, fastmath=_FLAGS)
    def _forward(c, tau, vth, spikes):  # pragma: no cover - compiled
        steps, n = c.shape
        for b in prange((n + _BLOCK - 1) // _BLOCK):
            lo = b * _BLOCK
            hi = min(lo + _BLOCK, n)
            u = np.empty(hi - lo, dtype=c.dtype)  # u_pre(t-1) of the block
            for i in range(lo, hi):
                h = c[0, i]  # u(-1) = 0
                u[i - lo] = h
                spikes[0, i] = h > vth
            for t in range(1, steps):
                for i in range(lo, hi):
                    h = _charge(c, tau, vth, t, i, u[i - lo])
                    u[i - lo] = h
                    spikes[t, i] = h > vth

    @_jit(parallel=True, fastmath=_FLAGS)
    def _backward(c, grad_spikes, tau, vth, code, k1, k2, one, zero, detach_reset, grad_c):  # pragma: no cover
        # u_pre is recomputed block by block from the saved current (cheap, in cache) instead of
        # being stored by the forward pass: one T x N buffer less to allocate and to stream.
        steps, n = c.shape
        for b in prange((n + _BLOCK - 1) // _BLOCK):
            lo = b * _BLOCK
            hi = min(lo + _BLOCK, n)
            u = np.empty((steps, hi - lo), dtype=c.dtype)
            for i in range(lo, hi):
                u[0, i - lo] = c[0, i]
            for t in range(1, steps):
                for i in range(lo, hi):
                    u[t, i - lo] = _charge(c, tau, vth, t, i, u[t - 1, i - lo])
            last = steps - 1
            for i in range(lo, hi):
                grad_c[last, i] = grad_spikes[last, i] * _sg(u[last, i - lo] - vth, code, k1, k2, one, zero)
            for t in range(last - 1, -1, -1):
                for i in range(lo, hi):
                    h = u[t, i - lo]
                    x = h - vth
                    sg = _sg(x, code, k1, k2, one, zero)
                    keep = one if x <= zero else zero
                    coef = keep if detach_reset else keep - h * sg
                    grad_c[t, i] = grad_spikes[t, i] * sg + tau * coef * grad_c[t + 1, i]


def _flat(x: Tensor) -> np.ndarray:
    """A [T, N] numpy view of ``x`` in memory order; ``x`` must pass :func:`dense_time_major`."""
    if not x.is_contiguous():  # channels-last and other dense layouts: walk the storage in order
        x = x.permute(0, *_inner_order(x))
    return x.detach().view(x.shape[0], -1).numpy()


def _inner_order(x: Tensor) -> list[int]:
    return sorted(range(1, x.dim()), key=lambda d: -x.stride(d))


def dense_time_major(x: Tensor) -> bool:
    """True when T is the outermost axis of a dense, non-overlapping ``x``.

    The kernels are elementwise within a step, so the order of neurons inside a step does not
    matter, only that each step is one contiguous slab (true of contiguous and channels-last
    activations folded as [T, B, ...]).
    """
    return x.is_contiguous() or (x.stride(0) == x[0].numel() and x.permute(0, *_inner_order(x)).is_contiguous())


def _threads() -> None:
    """Run the kernels on as many threads as torch has, and leave torch's count as it was.

    numba's OpenMP layer shares torch's libgomp, and starting its thread pool (at the first
    call in a process) sets the calling thread's OpenMP count to the pool's size, every core
    of the machine: torch's ``get_num_threads()`` would then answer that, and its operators
    use it, whatever the trial was given. The count is put back.
    """
    threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _scalar(x: Tensor, value: float):
    return (np.float32 if x.dtype == torch.float32 else np.float64)(value)


def _constants(name: str, p: float) -> tuple[float, float]:
    """The two constants k1, k2 that ``_sg`` uses for surrogate ``name`` with parameter ``p``."""
    return {"triangle": (p, 0.0), "rectangle": (1.0 / p, p / 2.0), "tanh": (p, p / 2.0), "sigmoid": (p, 0.0),
            "atan": (p / 2.0, math.pi / 2.0 * p)}[name]


def forward(current: Tensor, tau: float, v_threshold: float) -> tuple[Tensor, Tensor]:
    """Spikes o(t) of Eq. 1-2 for ``current`` [T, B, ...], and the tensor backward takes.

    ``current`` must pass :func:`dense_time_major` (``_LIFFunction`` lays it out so). The
    spikes have its memory layout; the tensor for backward is ``current`` itself (backward
    recomputes u_pre from it).
    """
    spikes = torch.empty_like(current)  # empty_like keeps the strides of a dense tensor
    _threads()
    _forward(_flat(current), _scalar(current, tau), _scalar(current, v_threshold), _flat(spikes))
    return spikes, current


def backward(current: Tensor, grad_spikes: Tensor, tau: float, v_threshold: float, surrogate_name: str,
             surrogate_param: float, detach_reset: bool) -> Tensor:
    """dL/dc(t) from dL/do(t) by the BPTT recursion documented in ``_LIFFunction``.

    ``current`` is the tensor :func:`forward` returned for backward; the result has its layout.
    """
    if grad_spikes.stride() != current.stride() or grad_spikes.dtype != current.dtype:
        grad_spikes = torch.empty_like(current).copy_(grad_spikes)
    grad_c = torch.empty_like(current)
    _threads()
    k1, k2 = _constants(surrogate_name, float(surrogate_param))
    _backward(_flat(current), _flat(grad_spikes), *(_scalar(current, v) for v in (tau, v_threshold)),
              _CODES[surrogate_name], *(_scalar(current, v) for v in (k1, k2, 1.0, 0.0)), bool(detach_reset),
              _flat(grad_c))
    return grad_c
