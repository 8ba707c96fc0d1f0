"""The training loss of shortcut back-propagation (Guo et al., NeurIPS 2024, Eq. 10).

Two readings of Eq. 10 are offered so a study can compare them:

* ``logit_sum`` (the paper's form): o_final = b_n(x) + λ·Σ_l b_l(x) and
  L = CE(o_final, y). The gradient reaches stage l through its own head (Eq. 9).
* ``deep_supervision``: L = CE(b_n, y) + λ·Σ_l CE(b_l, y), one loss per head.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from snn import registry
from snn.models import ModelOutput

__all__ = ["MODES", "shortcut_loss"]

MODES: tuple[str, ...] = registry.LOSS_MODES
"""Valid loss modes."""


def shortcut_loss(output: ModelOutput, target: Tensor, lam: float | Tensor, mode: str = "logit_sum") -> Tensor:
    """Cross-entropy loss of Eq. 10 over the main and shortcut logits.

    Args:
        output: The model's :class:`~snn.models.ModelOutput` (``main`` [B, K], ``branches``).
        target: Class labels [B].
        lam: The balance coefficient λ(i) (see :func:`snn.schedules.balance`), or a scalar
            tensor holding it (what a captured CUDA graph reads at every replay).
        mode: ``"logit_sum"`` (Eq. 10 as printed) or ``"deep_supervision"``.

    Returns:
        The scalar loss. With no branches, or λ = 0, both modes equal CE(b_n, y).

    Raises:
        ValueError: For an unknown mode.
    """
    if mode == "logit_sum":
        if not output.branches:
            return F.cross_entropy(output.main, target)
        # b_n + λ·Σ b_l: the branches summed first, then one scaled add (λ as alpha), so
        # n ops forward for n branches instead of 2n: fewer kernels on a GPU
        branch_sum = functools.reduce(torch.add, output.branches)
        if isinstance(lam, Tensor):
            return F.cross_entropy(output.main + branch_sum * lam, target)
        return F.cross_entropy(torch.add(output.main, branch_sum, alpha=lam), target)
    if mode == "deep_supervision":
        loss = F.cross_entropy(output.main, target)
        for b in output.branches:
            loss = loss + lam * F.cross_entropy(b, target)
        return loss
    raise ValueError(f"loss_mode: unknown mode {mode!r}; choose one of {', '.join(MODES)}")
