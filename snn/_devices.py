"""What the training loop uses of the machine it runs on: the device, the optimizer's form
for it, the autocast dtype that pays there, and the DataLoader's worker processes.

:mod:`snn.training` re-exports the public names (``adamw``, ``amp_dtype``, ``data_workers``,
``MAX_AUTO_WORKERS``); import them from there.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from snn import registry

__all__ = ["MAX_AUTO_WORKERS", "adamw", "amp_dtype", "data_workers", "device"]


def device(name: str) -> torch.device:
    """The device a config's ``device`` names; ``"auto"``: CUDA where present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def adamw(params: Iterable[Tensor], lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """The optimizer of Algorithm 1's update step: AdamW, in its fused form on CUDA.

    A foreach AdamW steps every parameter with a dozen multi-tensor kernels; the fused one
    with one. A GPU step at small batches is bound by launching kernels, so fewer of them pay
    (docs/performance.md). Elsewhere torch's default is kept.
    The update is the same either way (``tests/snn/test_training.py`` checks it on CUDA).
    """
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True if device.type == "cuda" else None)


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``amp: true`` uses on ``device``, or None where it would not pay.

    CUDA: bfloat16 where supported, else float16 (with gradient scaling). CPU: bfloat16 when
    oneDNN has native bf16 kernels (AVX512-BF16 or AMX), where it trains faster than float32
    (docs/performance.md); elsewhere bf16 is emulated and slower, so the CPU trains in float32.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        try:
            native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a torch build without oneDNN
            native = False
        return torch.bfloat16 if native else None
    return None


MAX_AUTO_WORKERS = 8


def data_workers(workers: int | str, device: torch.device) -> int:
    """DataLoader worker processes for ``workers``: a count, or ``"auto"``.

    ``"auto"`` sizes them to the CPUs this process may use, which a Ray trial sets to what
    it was given (``torch.get_num_threads()``): on CUDA, all of them but one, which feeds the
    GPU (at most 8), so decoding and augmentation keep up with the device; on CPU, none,
    because the training step itself keeps every given core busy and loading a batch in the
    same process is small beside the step.

    Raises:
        ValueError: ``workers`` is neither a count >= 0 nor ``"auto"``.
    """
    try:
        registry.check_workers(workers)
    except ValueError as e:
        raise ValueError(f"workers: {e}") from None
    if workers != "auto":
        return workers
    if device.type != "cuda":
        return 0
    return min(MAX_AUTO_WORKERS, max(0, torch.get_num_threads() - 1))
