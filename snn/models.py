"""Spiking ResNets with shortcut back-propagation branches (Guo et al., NeurIPS 2024, Eq. 6-10).

A network is a stem, ``n`` stages (``layer1`` .. ``layerN``) of spiking basic blocks,
and a classifier on the last stage, b_n(x). Shortcut branches b_l(x), l < n, are
global average pooling + a linear classifier after stage l (Eq. 6-7); they exist only
for training and :func:`strip_shortcuts` removes them for inference (Algorithm 1).

Conventions:

* Time first: spikes are [T, B, C, H, W]. Conv and BN run on T·B folded into the
  batch, so BN statistics are shared over time (tdBN-style).
* A static image [B, C, H, W] is fed directly: the first conv + BN runs once and its
  output is repeated over T. Event frames arrive as [T, B, C, H, W].
* Logits are averaged over T.
* Stages are numbered from 1, as in the paper's Fig. 1 (Stage 1 .. Stage 4).

Registry in the style of timm: :data:`ARCHS` lists the names, :func:`build` makes one, and
:func:`build_args` gives its arguments for a trial's config (the one way a config becomes a
network).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor, nn

from snn import registry
from snn.neurons import LIF
from snn.registry import num_stages, resolve_branches

if TYPE_CHECKING:
    from snn.config import TrainConfig
    from snn.data import DatasetInfo

__all__ = ["ARCHS", "ModelOutput", "SpikingResNet", "build", "build_args", "num_stages", "resolve_branches",
           "strip_shortcuts"]


class ModelOutput(NamedTuple):
    """Logits of one forward pass: ``main`` is b_n(x), ``branches`` the b_l(x), l < n."""

    main: Tensor  # [B, K]
    branches: list[Tensor]  # each [B, K]; empty for a vanilla model
    branch_stages: tuple[int, ...] = ()  # stage index of each branch, same order


@dataclass(frozen=True)
class NeuronConfig:
    """Neuron settings shared by every LIF layer of a network."""

    tau: float = 0.5
    v_threshold: float = 1.0
    surrogate: str = "triangle"
    surrogate_param: float | None = None
    detach_reset: bool = False
    fused: bool = True  # the LIF's fused kernels where they take the input (snn.neurons.LIF)

    def make(self) -> LIF:
        return LIF(self.tau, self.v_threshold, self.surrogate, self.surrogate_param,
                   detach_reset=self.detach_reset, fused=self.fused)


class _Seq(nn.Module):
    """Apply a stateless module (conv, BN, pooling) to [T, B, ...] by folding T into B."""

    def __init__(self, *modules: nn.Module) -> None:
        super().__init__()
        self.module = modules[0] if len(modules) == 1 else nn.Sequential(*modules)

    def forward(self, x: Tensor) -> Tensor:
        t, b = x.shape[:2]
        y = self.module(x.flatten(0, 1))  # [T*B, ...]
        return y.view(t, b, *y.shape[1:])  # [T, B, ...]


class BasicBlock(nn.Module):
    """Spiking basic block: LIF(BN(conv(LIF(BN(conv(x))))) + downsample(x)), spikes in and out."""

    def __init__(self, in_planes: int, planes: int, stride: int, neuron: NeuronConfig) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.lif1 = neuron.make()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.lif2 = neuron.make()
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        t, b = x.shape[:2]
        xf = x.flatten(0, 1)  # [T*B, C, H, W]
        y = self.bn1(self.conv1(xf))
        y = self.lif1(y.view(t, b, *y.shape[1:])).flatten(0, 1)
        y = self.bn2(self.conv2(y))
        y = y + (xf if self.downsample is None else self.downsample(xf))
        return self.lif2(y.view(t, b, *y.shape[1:]))  # [T, B, C', H', W']


class _SpikeMean(torch.autograd.Function):
    """The mean of [T, B, C, H, W] spikes over T, H and W, whose gradient stays a broadcast view.

    The gradient of a mean is the same value for every averaged element. Autograd's own mean
    writes it out as a dense tensor of the input's size, which a shortcut head's stage output
    then adds to the gradient from the next stage. Returned as a view instead, it is added
    in place into that gradient (in the gradient's memory format), and nothing of the
    stage's size is written for the head.

    The mean is taken and returned in at least float32 (a spike rate k/(T H W) is not rounded
    to bfloat16), and its gradient is rounded to the spikes' dtype before it is broadcast, so
    that the broadcast stays a view.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.shape, ctx.dtype = x.shape, x.dtype
        return x.mean(dim=(0, 3, 4), dtype=torch.promote_types(x.dtype, torch.float32))  # [B, C]

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        t, _, _, h, w = ctx.shape
        return (grad / (t * h * w)).to(ctx.dtype)[None, :, :, None, None].expand(ctx.shape)


class _Head(nn.Module):
    """Global average pooling + linear classifier on spikes, averaged over T (Eq. 6)."""

    def __init__(self, in_features: int, num_classes: int, hidden: int | None = None,
                 neuron: NeuronConfig | None = None) -> None:
        super().__init__()
        if hidden:
            self.fc1: nn.Module | None = nn.Linear(in_features, hidden)
            self.lif: nn.Module | None = (neuron or NeuronConfig()).make()
            in_features = hidden
        else:
            self.fc1 = self.lif = None
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if self.fc1 is None:
            # Eq. 6 averages fc(GAP(s_t)) over T; fc is affine, so fc of the average over (T, H, W)
            # is the same, with one reduction and a T times smaller matmul: fewer kernels forward
            # and backward, what a GPU step at small batches is bound by (README, Performance).
            # For the same reason it runs in float32 outside autocast: a [B, C] x [C, K] product
            # gains nothing from bfloat16, and autocast's casts of the weight, the bias and their
            # gradients would be 4 more kernels per head and step.
            with torch.autocast(x.device.type, enabled=False):  # in the classifier's own dtype
                return self.fc(_SpikeMean.apply(x).to(self.fc.weight.dtype))  # [B, K]
        z = self.lif(self.fc1(x.mean(dim=(3, 4))))  # [T, B, hidden]: the LIF needs every step
        return self.fc(z).mean(0)  # [B, K]


class SpikingResNet(nn.Module):
    """Spiking ResNet with optional shortcut branches (Eq. 6-10).

    Args:
        blocks: Number of basic blocks in each stage.
        widths: Channels of each stage.
        num_classes: Output classes K.
        timesteps: T, the number of time steps a static image is repeated over.
        in_channels: Input channels (3 for RGB, 2 for event polarities, 1 for digits).
        stem: ``"cifar"`` (3x3 conv, stride 1, no max-pool) or ``"imagenet"`` (7x7 conv,
            stride 2, then 3x3 max-pool, stride 2).
        stem_width: Channels of the stem conv (default: ``widths[0]``).
        head_hidden: Hidden width of a two-layer main classifier (ResNet-19); None for
            one linear layer.
        neuron: LIF settings (τ, V_th, surrogate).
        branches: Stages after which a shortcut head is placed (1-based, each < n).
    """

    def __init__(self, blocks: Sequence[int], widths: Sequence[int], num_classes: int, timesteps: int,
                 *, in_channels: int = 3, stem: str = "cifar", stem_width: int | None = None,
                 head_hidden: int | None = None, neuron: NeuronConfig = NeuronConfig(),
                 branches: Sequence[int] = ()) -> None:
        super().__init__()
        if len(blocks) != len(widths) or not blocks:
            raise ValueError(f"blocks and widths must have the same non-zero length, got {blocks} and {widths}")
        if timesteps < 1:
            raise ValueError(f"timesteps: must be >= 1, got {timesteps}")
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem: unknown value {stem!r}; choose one of cifar, imagenet")
        self.timesteps = int(timesteps)
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        stem_width = stem_width or widths[0]
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, stem_width, 3, 1, 1, bias=False)
            self.maxpool: nn.Module | None = None
        else:
            self.conv1 = nn.Conv2d(in_channels, stem_width, 7, 2, 3, bias=False)
            self.maxpool = _Seq(nn.MaxPool2d(3, 2, 1))
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.lif1 = neuron.make()
        in_planes = stem_width
        self.stage_names: list[str] = []
        for i, (n, w) in enumerate(zip(blocks, widths), start=1):
            stride = 1 if i == 1 else 2
            layers = []
            for j in range(n):
                layers.append(BasicBlock(in_planes, w, stride if j == 0 else 1, neuron))
                in_planes = w
            setattr(self, f"layer{i}", nn.Sequential(*layers))
            self.stage_names.append(f"layer{i}")
        self.stage_widths = tuple(widths)
        self.head = _Head(in_planes, num_classes, head_hidden, neuron)
        self.branch_stages = tuple(resolve_branches(branches, len(blocks)))
        self.shortcuts = nn.ModuleDict(
            {str(s): _Head(widths[s - 1], num_classes) for s in self.branch_stages})
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def num_stages(self) -> int:
        return len(self.stage_names)

    def _stem(self, x: Tensor) -> Tensor:
        if x.dim() == 4:  # static image [B, C, H, W]: conv + BN once, then repeat over T
            self._check_channels(x.shape[1], x)
            y = self.bn1(self.conv1(x))  # [B, C, H, W]
            y = y.unsqueeze(0).expand(self.timesteps, *y.shape)  # [T, B, C, H, W]
        elif x.dim() == 5:  # event frames [T, B, C, H, W]
            self._check_channels(x.shape[2], x)
            t, b = x.shape[:2]
            y = self.bn1(self.conv1(x.flatten(0, 1)))  # [T*B, C, H, W]
            y = y.view(t, b, *y.shape[1:])  # [T, B, C, H, W]
        else:
            raise ValueError(
                f"input: expected a static batch [B, C, H, W] or event frames [T, B, C, H, W], "
                f"got shape {tuple(x.shape)}")
        s = self.lif1(y)
        return s if self.maxpool is None else self.maxpool(s)

    def _check_channels(self, c: int, x: Tensor) -> None:
        if c != self.in_channels:
            raise ValueError(f"input: expected {self.in_channels} channels, got shape {tuple(x.shape)}")

    def forward(self, x: Tensor) -> ModelOutput:
        """Return the main logits b_n(x) and the shortcut logits b_l(x) (Eq. 6-7)."""
        s = self._stem(x)
        branches = []
        for i, name in enumerate(self.stage_names, start=1):
            s = getattr(self, name)(s)
            key = str(i)
            if key in self.shortcuts:
                branches.append(self.shortcuts[key](s))
        return ModelOutput(self.head(s), branches, self.branch_stages)


class _Stripped(nn.Module):
    """Inference wrapper: the main branch only, returning the logits tensor."""

    def __init__(self, net: SpikingResNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).main


def strip_shortcuts(model: nn.Module) -> nn.Module:
    """Remove all shortcut branches for inference (Algorithm 1, inference part).

    Args:
        model: A :class:`SpikingResNet` (with or without branches); left untouched.

    Returns:
        A copy with no branch modules and no branch parameters, whose ``forward(x)``
        returns the main logits b_n(x) as a Tensor, equal bit for bit to
        ``model(x).main``.
    """
    if isinstance(model, _Stripped):
        return copy.deepcopy(model)
    if not isinstance(model, SpikingResNet):
        raise TypeError(f"strip_shortcuts: expected a SpikingResNet, got {type(model).__name__}")
    net = copy.deepcopy(model)
    net.shortcuts = nn.ModuleDict()
    net.branch_stages = ()
    return _Stripped(net)


ARCHS: tuple[str, ...] = registry.ARCHS
"""Valid architecture names."""


def build(arch: str, num_classes: int, timesteps: int, in_channels: int = 3, surrogate: str = "triangle",
          surrogate_param: float | None = None, branches: str | Sequence[int] = "all", *,
          fused_lif: bool = True, **arch_kwargs) -> SpikingResNet:
    """Build a spiking ResNet by name.

    Args:
        arch: One of :data:`ARCHS`.
        num_classes: Number of classes K.
        timesteps: T.
        in_channels: Input channels.
        surrogate: Surrogate name (:data:`snn.surrogates.NAMES`).
        surrogate_param: Its parameter (None: default).
        branches: ``"all"``, ``"none"`` or a list of stages for shortcut heads (Eq. 10).
        fused_lif: The LIF layers' fused kernels (``fused`` of :class:`snn.neurons.LIF`);
            False: their tensor operations.
        **arch_kwargs: ``tau``, ``v_threshold``, ``detach_reset`` for the neurons;
            ``width`` and ``blocks`` for ``resnet-tiny``; ``stem`` to override the stem.

    Returns:
        A :class:`SpikingResNet` whose forward returns a :class:`ModelOutput`.

    Raises:
        ValueError: Unknown arch, surrogate or branch stage, or bad sizes.
    """
    kw = dict(arch_kwargs)
    neuron = NeuronConfig(tau=kw.pop("tau", 0.5), v_threshold=kw.pop("v_threshold", 1.0),
                          surrogate=surrogate, surrogate_param=surrogate_param,
                          detach_reset=kw.pop("detach_reset", False), fused=fused_lif)
    tiny = {k: kw.pop(k) for k in registry.TINY_OPTIONS if k in kw and arch == "resnet-tiny"}
    spec = registry.layout(arch, **tiny)
    blocks, widths = spec.blocks, spec.widths
    options = {**spec.options, **kw}
    unknown = set(kw) - set(registry.arch_options(arch))
    if unknown:
        raise ValueError(f"arch_kwargs: unknown option(s) {sorted(unknown)} for {arch!r}; allowed: tau, "
                         f"v_threshold, {', '.join(registry.arch_options(arch))}")
    if num_classes < 1:
        raise ValueError(f"num_classes: must be >= 1, got {num_classes}")
    return SpikingResNet(blocks, widths, num_classes, timesteps, in_channels=in_channels, neuron=neuron,
                         branches=resolve_branches(branches, len(blocks)), **options)


def build_args(cfg: TrainConfig, info: DatasetInfo, *, branches: str | Sequence[int] | None = None) -> dict[str, Any]:
    """:func:`build`'s arguments for the network of a trial's config, as plain data (JSON).

    The one place a config becomes a network: the trainer builds its model from these, and a
    trial's inference model is rebuilt from them wherever its weights are read.

    Args:
        cfg: The trial's configuration.
        info: What the dataset holds (:func:`snn.data.info`): classes and input channels.
        branches: Shortcut heads other than ``cfg.branches`` (``"none"``: the inference network).

    Returns:
        Keyword arguments of :func:`build`.
    """
    return {"arch": cfg.arch, "num_classes": info.num_classes, "timesteps": cfg.timesteps,
            "in_channels": info.in_channels, "surrogate": cfg.surrogate, "surrogate_param": cfg.surrogate_param,
            "branches": cfg.branches if branches is None else branches, "fused_lif": cfg.fused_lif, "tau": cfg.tau,
            "v_threshold": cfg.v_threshold, **cfg.arch_kwargs}
