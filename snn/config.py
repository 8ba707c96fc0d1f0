"""One typed model of a trial's parameters, importable without torch.

:class:`TrainConfig` holds every hyperparameter of one trial of Algorithm 1 (Guo et al.,
NeurIPS 2024) with its default, range and allowed values, each written once. Everything
else derives from it: the study spec's ``train:`` section and ``search.fixed``, the search
space's constants, ``snn-study train --set``, the Ray Tune config of a trial and its MLflow
params. A field's name is the hyperparameter's one spelling everywhere.

The allowed names come from :mod:`snn.registry` (plain Python), so a spec is validated
in milliseconds, before Ray or torch start.

The paper's own settings (Table 1: vanilla, shortcut and evolutionary training) live in
one table, :data:`METHODS`; the defaults of :class:`TrainConfig` are its evolutionary row
(Eq. 10 with λ₀ = 0.25) and the paper's CIFAR recipe (section 5.2).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import PurePath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from snn import registry
from snn.energy import Energy
from snn.fidelity import Fidelity, first_target_epoch

__all__ = ["FORMATS", "FiringStop", "HEAD_ONLY", "METHODS", "PAPER_METHOD", "PAPER_NAMES", "PAPER_SURROGATE", "TrainConfig", "UserData",
           "clip_repr", "dataset_name", "default_lr", "first_error", "meaningful", "method_of", "one_line"]


METHODS: dict[str, dict[str, Any]] = {
    # Eq. 10 as published: λ(i) = 0.25·(1 - i/I), a head after every stage but the last.
    "evolutionary": {"lambda0": 0.25, "schedule": "linear", "branches": "all"},
    # Eq. 6: every head added to the output with weight 1 for all of training.
    "shortcut": {"lambda0": 1.0, "schedule": "constant", "branches": "all"},
    # No shortcut heads: plain back-propagation through the whole network.
    "vanilla": {"lambda0": 0.0, "schedule": "constant", "branches": "none"},
}
"""The settings of the paper's ablation (Table 1), the paper's own method first."""

PAPER_NAMES: dict[str, str] = {"evolutionary": "Evolutionary Training", "shortcut": "Shortcut Back-propagation",
                               "vanilla": "Vanilla Training"}
"""What the paper's tables call each of :data:`METHODS`."""

PAPER_METHOD = "evolutionary"
PAPER_SURROGATE = "triangle"  # the surrogate of the paper's experiments (Eq. 4)
_PAPER = METHODS[PAPER_METHOD]


def default_lr(dataset: str) -> float:
    """The paper's AdamW learning rate: 4e-3 on ImageNet, 0.01 on the other datasets."""
    return 4e-3 if dataset == "imagenet" else 0.01


def _one_of(names: tuple[str, ...]) -> AfterValidator:
    def check(value: Any) -> Any:
        if value not in names:
            raise ValueError(f"unknown value {clip_repr(value)}; choose one of {', '.join(names)}")
        return value

    return AfterValidator(check)


def _workers(value: Any) -> int | str:
    return registry.check_workers(value)


def _branches(value: Any) -> str | list[int]:
    if isinstance(value, (list, tuple)):
        if not all(isinstance(b, int) and not isinstance(b, bool) for b in value):
            raise ValueError(f"expected 'all', 'none' or a list of stage numbers, got {clip_repr(value)}")
        return [int(b) for b in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, str):
        return value
    raise ValueError(f"expected 'all', 'none' or a list of stage numbers, got {clip_repr(value)}")


FORMATS: tuple[str, ...] = ("imagefolder", "npz", "events")
"""Formats of a user's own data (:class:`UserData`)."""


class UserData(BaseModel):
    """A user's own dataset: the ``dataset:`` mapping of a spec, in place of a built-in name.

    * ``imagefolder``: torchvision's ``ImageFolder`` layout, one sub-folder per class, RGB or
      greyscale images;
    * ``npz``: a NumPy file with ``x`` ([N, H, W], [N, C, H, W], or frames [N, T, C, H, W];
      uint8 or float) and ``y`` ([N] integer labels 0..K-1);
    * ``events``: one file per sample (``.npy``/``.npz``, a structured array with fields x, y,
      t, p as tonic writes them) in class sub-folders, binned into T frames with tonic's
      ``ToFrame`` as the paper's CIFAR10-DVS pipeline does (section 5).

    What the files hold (classes, channels, size, sample kind) is read from them by
    :func:`snn.data.prepare`, once, and kept in a cache under the trial's ``data_root``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["imagefolder", "npz", "events"] = Field(description="imagefolder | npz | events")
    train: str = Field(min_length=1, description="the training data: an npz file, or a folder of class folders")
    test: str | None = Field(None, min_length=1, description="the test data, in the same format as train")
    test_fraction: float | None = Field(None, gt=0, lt=1, description="or: hold out this fraction of train, "
                                                                       "stratified by class, seeded by split_seed")
    split_seed: int = Field(0, ge=0, description="seed of the test_fraction split (not the trial's seed: every "
                                                 "trial sees the same split)")
    name: str | None = Field(None, min_length=1, max_length=100, description="shown in MLflow and the report; a "
                                                                             "paper dataset's name adds its baselines")
    input_size: tuple[Annotated[int, Field(ge=1, le=4096)], Annotated[int, Field(ge=1, le=4096)]] | None = Field(
        None, description="[H, W]: resize every sample (needed when image sizes differ)")
    normalize: Literal["auto", "standardize", "none"] = Field(
        "auto", description="auto: images standardized with the training split's channel mean and std, event "
                            "frames left as counts (as on CIFAR10-DVS); standardize: both; none: neither")
    augment: bool = Field(False, description="training augmentation: random crop (padding 1/8 of the size) and "
                                             "flip for images; flip and a roll of up to 5 pixels for frames")
    sensor_size: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] | None = (
        Field(None, description="events: [W, H, P] of the sensor; default: inferred from the training events"))
    object_store_limit_mb: float = Field(1024, ge=0, description="a prepared dataset up to this size travels to the "
                                                                 "trials through Ray's object store; a larger one "
                                                                 "is read from data_root, which every node must see")

    @model_validator(mode="after")
    def _split(self) -> "UserData":
        if (self.test is None) == (self.test_fraction is None):
            raise ValueError("test: give either test (a path in the same format as train) or test_fraction "
                             "(e.g. 0.2), not both" if self.test else
                             "test: give test (a path in the same format as train) or test_fraction (e.g. 0.2)")
        if self.sensor_size is not None and self.format != "events":
            raise ValueError(f"sensor_size: only event data has a sensor; remove it for format {self.format}")
        return self

    @property
    def label(self) -> str:
        """The dataset's name: ``name``, else the training file's or folder's name."""
        return self.name or PurePath(self.train.rstrip("/\\") or "data").stem or "data"


def _dataset(value: Any) -> str | UserData:
    if isinstance(value, (dict, UserData)):
        return UserData.model_validate(value)
    if value not in registry.DATASETS:
        raise ValueError(f"unknown value {clip_repr(value)}; choose one of {', '.join(registry.DATASETS)}, or give "
                         f"a mapping with format: {' | '.join(FORMATS)} for your own data")
    return value


def dataset_name(dataset: Any) -> str:
    """The name a dataset is shown and compared with the paper under: a built-in name, or
    :attr:`UserData.label` (also for the plain dict a config holds)."""
    if isinstance(dataset, dict):
        return UserData.model_validate(dataset).label
    return dataset.label if isinstance(dataset, UserData) else str(dataset)


Dataset = Annotated[str | UserData, BeforeValidator(_dataset)]
Arch = Annotated[str, _one_of(registry.ARCHS)]
Shape = Annotated[str, _one_of(registry.SHAPES)]
Surrogate = Annotated[str, _one_of(registry.SURROGATES)]
LossMode = Annotated[str, _one_of(registry.LOSS_MODES)]
Workers = Annotated[int | str, BeforeValidator(_workers)]
Branches = Annotated[str | list[int], BeforeValidator(_branches)]


class FiringStop(BaseModel):
    """When a trial stops because a stage of its network is silent or saturated
    (:mod:`snn.guard`): checked ``checks_per_epoch`` times an epoch on a training batch."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    silent_rate: float | None = Field(1e-3, ge=0, le=1, description="a stage firing less than this is silent; "
                                                                    "null: never stop a silent trial")
    saturated_rate: float | None = Field(0.9, gt=0, le=1, description="a stage firing more than this is "
                                                                     "saturated; null: never stop for it")
    patience: int = Field(3, ge=1, description="consecutive checks a stage must stay out of range")
    checks_per_epoch: int = Field(4, ge=1, description="checks per epoch: a silent trial stops within its "
                                                       "first epoch")


class TrainConfig(BaseModel):
    """Everything one trial needs; defaults are the paper's setting and CIFAR recipe.

    Validation checks each field (ranges, names from :mod:`snn.registry`) and the fields
    together (branch stages against the architecture, its options). ``lr=None`` becomes
    the paper's rate for the dataset (:func:`default_lr`) once validated.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True)

    # -- data ------------------------------------------------------------------------------
    dataset: Dataset = Field("digits", description="a name from snn.data.NAMES, or a user's own data "
                                                   "(UserData: format, train, test, ...)")
    data_root: str = Field("data", description="folder (or URI) holding the dataset's files")
    download: bool = Field(False, description="download missing dataset files")
    # -- network ---------------------------------------------------------------------------
    arch: Arch = Field("resnet-tiny", description="a name from snn.models.ARCHS")
    arch_kwargs: dict[str, Any] = Field(default_factory=dict,
                                        description="options of the architecture, e.g. width/blocks of resnet-tiny")
    timesteps: int = Field(2, ge=1, description="T, simulation time steps")
    fidelity: Fidelity | None = Field(None, description="T as a fidelity (snn.fidelity): the values T grows "
                                                        "through at successive halving's rungs, timesteps last; "
                                                        "None: every epoch at timesteps")
    tau: float = Field(0.5, gt=0, le=1, description="LIF membrane time constant factor (Eq. 1)")
    v_threshold: float = Field(1.0, gt=0, description="LIF firing threshold (Eq. 2)")
    surrogate: Surrogate = Field(PAPER_SURROGATE, description="surrogate gradient of the spike (Eq. 4)")
    surrogate_param: float | None = Field(None, gt=0, description="its parameter; None: the surrogate's default")
    # -- shortcut back-propagation (Eq. 6-10) ------------------------------------------------
    branches: Branches = Field(_PAPER["branches"], description="stages with a shortcut head: 'all', 'none', "
                                                               "a list or a comma-separated string ('1,3')")
    lambda0: float = Field(_PAPER["lambda0"], ge=0, le=1, description="λ₀, the balance coefficient of Eq. 10")
    schedule: Shape = Field(_PAPER["schedule"], description="shape of λ(i); linear is Eq. 10")
    loss_mode: LossMode = Field("logit_sum", description="Eq. 10 as printed, or deep_supervision")
    stop: FiringStop = Field(default_factory=FiringStop, description="stop a trial whose network is silent or "
                                                                     "saturated (Firmin et al., 2024)")
    energy: Energy = Field(default_factory=Energy, description="energies per operation of the estimate of one "
                                                               "inference (snn.energy): a preset or your own")
    # -- recipe (section 5.2) ----------------------------------------------------------------
    epochs: int = Field(300, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float | None = Field(None, gt=0, description="AdamW, cosine decay to 0; None: 0.01, or 4e-3 on ImageNet")
    weight_decay: float = Field(0.02, ge=0)
    seed: int = Field(0, ge=0)
    # -- how it runs (no effect on the result beyond floating-point rounding) -----------------
    workers: Workers = Field("auto", description="DataLoader workers; auto: the trial's CPUs but one on a GPU, "
                                                 "none on a CPU")
    amp: bool = Field(True, description="mixed precision where native: CUDA, CPUs with bfloat16 units")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    max_batches: int | None = Field(None, ge=1, description="cap on training batches per epoch")
    channels_last: bool = Field(True, description="NHWC convolutions")
    cuda_graphs: bool = Field(False, description="replay each full batch's forward and backward as a captured "
                                                 "CUDA graph (GPU trials only)")
    fused_lif: bool = Field(True, description="the LIF layers' fused kernels (numba on CPUs, Triton on CUDA) "
                                              "where they take the input; false: their tensor operations")

    @model_validator(mode="after")
    def _together(self) -> "TrainConfig":
        allowed = registry.arch_options(self.arch)
        unknown = sorted(set(self.arch_kwargs) - set(allowed))
        if unknown:
            raise ValueError(f"arch_kwargs: unknown option(s) {unknown} for {self.arch}; allowed: "
                             f"{', '.join(allowed)}")
        stages = registry.num_stages(self.arch, **self.arch_kwargs)
        try:
            registry.resolve_branches(self.branches, stages)
        except ValueError as e:
            raise ValueError(str(e)) from None  # "branches: ..." names the field
        if self.lr is None:
            self.lr = default_lr(dataset_name(self.dataset))
        if self.fidelity is not None:
            self._fidelity(self.fidelity)
        return self

    def _fidelity(self, fidelity: Fidelity) -> None:
        if fidelity.target != self.timesteps:
            raise ValueError(f"fidelity: its last T, {fidelity.target}, is the target and must equal timesteps "
                             f"({self.timesteps}); leave timesteps out or set it to {fidelity.target}")
        first = first_target_epoch(fidelity.timesteps)
        if first > self.epochs:
            raise ValueError(f"fidelity: T {list(fidelity.timesteps)} reaches the target {fidelity.target} at epoch "
                             f"{first}, past the budget of {self.epochs} epoch(s); give at least {first} epochs")

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "TrainConfig":
        """Validate a flat dict such as Tune's ``config``.

        Raises:
            ValueError: One line naming the first bad field and what is allowed.
        """
        try:
            return cls.model_validate(dict(config))
        except ValidationError as err:
            field, message = first_error(err)
            raise ValueError(f"{field}: {message}") from None

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (Tune's config, a checkpoint)."""
        return self.model_dump(mode="json")

    def to_params(self) -> dict[str, Any]:
        """The config as a trial's record and MLflow params: :meth:`to_dict` without what the
        setting ignores (:func:`meaningful`)."""
        return meaningful(self.to_dict())

    @property
    def dataset_name(self) -> str:
        """The dataset's name (:func:`dataset_name`)."""
        return dataset_name(self.dataset)

    def method(self) -> str:
        """The paper's name for this setting (:data:`METHODS`), else ``searched``."""
        return method_of(self.lambda0, self.schedule, self.branches)


HEAD_ONLY: tuple[str, ...] = ("lambda0", "schedule", "loss_mode")
"""Parameters that act only through shortcut heads (Eq. 6-10): meaningless without one."""


def _no_heads(branches: Any) -> bool:
    return branches in ("none", "", [], None)


def meaningful(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` without the parameters its setting ignores: :data:`HEAD_ONLY` when there is
    no shortcut head (vanilla training), so no analysis of λ₀ sees a value that did nothing."""
    if not _no_heads(config.get("branches", "all")):
        return dict(config)
    return {k: v for k, v in config.items() if k not in HEAD_ONLY}


def method_of(lambda0: float, schedule: str, branches: Any) -> str:
    """The row of :data:`METHODS` a setting is, else ``searched``.

    No heads, or λ₀ = 0, is ``vanilla`` whatever the schedule; otherwise λ₀ and the
    schedule decide, on any branch placement.
    """
    if _no_heads(branches) or lambda0 == 0:
        return "vanilla"
    for name, setting in METHODS.items():
        if name != "vanilla" and (lambda0, schedule) == (setting["lambda0"], setting["schedule"]):
            return name
    return "searched"


def first_error(err: ValidationError) -> tuple[str, str]:
    """The first error of a validation as (dotted field name, message of one line).

    A check of several fields (a model validator) says which field it concerns as the
    prefix of its message (``"branches: ..."``); that field is returned.
    """
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    ctx = (e.get("ctx") or {}).get("error")
    if e["type"] == "extra_forbidden":
        msg = "unknown key (a typo?)"
    elif isinstance(ctx, ValueError):
        msg = str(ctx)
    else:
        msg = e["msg"]
        if "input" in e and e["type"] != "missing":
            msg += f", got {clip_repr(e['input'])}"
    named = re.match(r"([A-Za-z_][A-Za-z0-9_]*): ", msg)  # a check of several fields names the one it concerns
    if named and e["type"] == "value_error" and named[1] != loc.rsplit(".", 1)[-1]:
        loc, msg = (f"{loc}.{named[1]}" if loc else named[1]), msg[named.end():]
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    msg = one_line(msg, _LONGEST, clipped=" [...]")  # a value echoed in full could be megabytes
    return clip_repr(loc, _LONGEST).strip("'") if len(loc) > _LONGEST else loc, msg + more


_LONGEST = 300  # characters of a message, or of a field's name, shown in an error


def clip_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: an error line stays readable."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def one_line(error: object, limit: int | None = 200, *, clipped: str = "") -> str:
    """The text of ``error`` (an exception, or any text) as one line: each run of whitespace,
    newlines included, as one space, cut to ``limit`` characters (None: all of it) with
    ``clipped`` appended where it was cut. An error quoted in a message or a log record stays
    one readable line, however long or multi-line the library's text."""
    text = " ".join(str(error).split())
    return text if limit is None or len(text) <= limit else text[:limit] + clipped
