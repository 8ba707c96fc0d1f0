"""The names the project's registries accept, importable without torch.

The study spec is validated before Ray (or torch) starts, in milliseconds, so the lists
of valid names and the architectures' stage layouts live here, in plain Python. The
modules that implement them (:mod:`snn.models`, :mod:`snn.surrogates`,
:mod:`snn.losses`, :mod:`snn.data`) read their ``ARCHS``/``NAMES``/``MODES`` from this
module and check at import time that they implement exactly these names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from snn.schedules import SHAPES

__all__ = ["ARCHS", "DATASETS", "LOSS_MODES", "SHAPES", "SURROGATES", "SURROGATE_DEFAULTS", "ArchLayout",
           "arch_options", "check_workers", "layout", "num_stages", "resolve_branches"]

SURROGATES: tuple[str, ...] = ("atan", "rectangle", "sigmoid", "tanh", "triangle")
"""Surrogate gradient names (Eq. 4); see :mod:`snn.surrogates`."""

SURROGATE_DEFAULTS: dict[str, float] = {"atan": 2.0, "rectangle": 1.0, "sigmoid": 4.0, "tanh": 2.0, "triangle": 1.0}
"""Default parameter of each surrogate (α, a, α, k, γ)."""

LOSS_MODES: tuple[str, ...] = ("logit_sum", "deep_supervision")
"""Readings of Eq. 10; see :mod:`snn.losses`."""

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "imagenet", "cifar10-dvs", "digits", "digits-dvs")
"""Dataset names; see :mod:`snn.data`."""


@dataclass(frozen=True)
class ArchLayout:
    """Blocks and channels per stage of a spiking ResNet, and options of its constructor."""

    blocks: tuple[int, ...]
    widths: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)


_LAYOUTS: dict[str, ArchLayout] = {
    # CIFAR forms (3x3 stem, no max-pool), as in the paper's CIFAR tables.
    "resnet18": ArchLayout((2, 2, 2, 2), (64, 128, 256, 512)),
    "resnet34": ArchLayout((3, 4, 6, 3), (64, 128, 256, 512)),
    # ImageNet forms (7x7 stride-2 stem + max-pool), Table 3.
    "resnet18-imagenet": ArchLayout((2, 2, 2, 2), (64, 128, 256, 512), {"stem": "imagenet"}),
    "resnet34-imagenet": ArchLayout((3, 4, 6, 3), (64, 128, 256, 512), {"stem": "imagenet"}),
    # ResNet-19 of tdBN/TET: 128-channel stem, stages of 3, 3, 2 blocks, 256-unit hidden classifier.
    "resnet19": ArchLayout((3, 3, 2), (128, 256, 512), {"head_hidden": 256}),
    # ResNet-20 as in Dspike's CIFAR experiments: He et al.'s CIFAR ResNet-20 (3 x 3 blocks, 16-32-64).
    "resnet20": ArchLayout((3, 3, 3), (16, 32, 64)),
    # Small network for CPU-only machines; `width` and `blocks` are settable.
    "resnet-tiny": ArchLayout((1, 1, 1), (16, 32, 64)),
}

ARCHS: tuple[str, ...] = tuple(_LAYOUTS)
"""Architecture names; see :mod:`snn.models`."""

TINY_OPTIONS = ("width", "blocks")
_OPTIONS = ("detach_reset", "stem", "stem_width", "head_hidden")


def arch_options(arch: str) -> tuple[str, ...]:
    """The ``arch_kwargs`` an architecture accepts (the neuron's tau and threshold are
    trial parameters of their own).

    Raises:
        ValueError: Unknown architecture.
    """
    _check_arch(arch)
    return _OPTIONS + (TINY_OPTIONS if arch == "resnet-tiny" else ())


def _check_arch(arch: str) -> None:
    if arch not in _LAYOUTS:
        raise ValueError(f"arch: unknown name {arch!r}; choose one of {', '.join(ARCHS)}")


def layout(arch: str, width: int = 16, blocks: Sequence[int] | int = (1, 1, 1)) -> ArchLayout:
    """The layout of ``arch``; ``width`` and ``blocks`` apply to ``resnet-tiny`` only.

    Raises:
        ValueError: Unknown architecture or bad ``resnet-tiny`` sizes.
    """
    _check_arch(arch)
    if arch != "resnet-tiny":
        return _LAYOUTS[arch]
    blocks = (int(blocks),) * 3 if isinstance(blocks, int) else tuple(int(b) for b in blocks)
    if int(width) < 1 or not blocks or min(blocks) < 1:
        raise ValueError(f"arch_kwargs: resnet-tiny needs width >= 1 and blocks >= 1, got width={width}, "
                         f"blocks={list(blocks)}")
    return ArchLayout(blocks, tuple(int(width) * 2 ** i for i in range(len(blocks))))


def num_stages(arch: str, **arch_kwargs: Any) -> int:
    """Number of stages n of an architecture (shortcut branches go after stages 1..n-1)."""
    return len(layout(arch, **{k: v for k, v in arch_kwargs.items() if k in TINY_OPTIONS}).blocks)


def resolve_branches(branches: str | Sequence[int] | None, stages: int) -> list[int]:
    """Turn a branch placement into a sorted list of 1-based stage indices.

    Args:
        branches: ``"all"`` (every stage before the last, the paper's setting),
            ``"none"``/``None`` (vanilla training), a list of stage indices in 1..n-1, or
            the same list written as a comma-separated string (``"1,3"``), the form a
            search space and MLflow use.
        stages: n, the number of stages of the architecture.

    Raises:
        ValueError: For an unknown word or an index outside 1..n-1.
    """
    original = branches
    if branches is None or branches == "none" or branches == "":
        return []
    if branches == "all":
        return list(range(1, stages))
    if isinstance(branches, str):
        try:
            branches = [int(b) for b in branches.split(",")]
        except ValueError:
            branches = None
    if branches is None:
        raise ValueError(f"branches: unknown value {original!r}; use 'all', 'none' or a list of stages "
                         f"from 1 to {stages - 1}")
    out = sorted({int(b) for b in branches})
    bad = [b for b in out if not 1 <= b < stages]
    if bad:
        raise ValueError(f"branches: stage(s) {bad} not available; this architecture has stages 1..{stages}, "
                         f"and shortcut branches go after stages 1..{stages - 1}")
    return out


def check_workers(workers: Any) -> int | str:
    """``workers`` itself if it is a DataLoader worker count >= 0 or ``"auto"``.

    Raises:
        ValueError: Anything else (the message does not name the field; callers do).
    """
    if workers == "auto" or (isinstance(workers, int) and not isinstance(workers, bool) and workers >= 0):
        return workers
    raise ValueError(f"expected a count >= 0 or 'auto', got {workers!r}")
