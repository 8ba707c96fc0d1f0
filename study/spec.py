"""The YAML study spec, validated with pydantic before Ray (or torch) starts.

A spec names the data, the network, the training recipe, the search, the resources and
where results go. Every allowed value is read from the project's registries
(:mod:`snn.registry`, :mod:`search_spaces`), never copied. A bad spec raises
:class:`SpecError` with one line naming the field, the value and what is allowed.

Example (the built-in quick-start, ``snn-study run`` with no file)::

    name: quickstart
    dataset: digits
    arch: resnet-tiny
    timesteps: 2
    train: {epochs: 3, batch_size: 64}
    search: {preset: quick}
    trials: 8
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from search_spaces import OPTIONAL, PRESETS, SURROGATE_RANGES
from snn import registry

__all__ = ["QUICKSTART", "SpecError", "StudySpec", "is_tracking_server", "load_spec", "parse_spec", "quickstart_spec"]

QUICKSTART: dict[str, Any] = {
    "name": "quickstart",
    "dataset": "digits",
    "arch": "resnet-tiny",
    "timesteps": 2,
    "train": {"epochs": 3, "batch_size": 64},
    "search": {"preset": "quick"},
    "trials": 8,
    "scheduler": "asha",
}
"""The built-in quick-start study: a few minutes on a 2-core laptop CPU."""


class SpecError(ValueError):
    """A study spec is invalid; the message is one line naming the field."""


def _choose(field: str, value: Any, allowed: tuple[str, ...] | list[str]) -> str:
    if value not in allowed:
        raise ValueError(f"unknown value {value!r}; choose one of {', '.join(map(str, allowed))}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class TrainSpec(_Strict):
    """Training recipe; the defaults are the paper's CIFAR recipe (section 5.2)."""

    epochs: int = Field(300, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float | None = Field(None, gt=0, description="None: 0.01, or 4e-3 for ImageNet (the paper's)")
    weight_decay: float = Field(0.02, ge=0)
    loss_mode: str = "logit_sum"
    tau: float = Field(0.5, gt=0, le=1)
    v_threshold: float = Field(1.0, gt=0)
    workers: int | str = Field("auto", description="DataLoader workers per trial; auto: the trial's "
                                          "CPUs but one on a GPU, none on a CPU")
    amp: bool = True
    cuda_graphs: bool = Field(False, description="replay each full batch's forward and backward as a captured "
                                                 "CUDA graph (GPU trials only)")
    max_batches: int | None = Field(None, ge=1, description="cap on training batches per epoch")

    @field_validator("loss_mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        return _choose("loss_mode", v, registry.LOSS_MODES)

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, v: Any) -> int | str:
        return registry.check_workers(v)


class SearchSpec(_Strict):
    """Which search preset runs, with optional extra dimensions and fixed values."""

    preset: str = "quick"
    dims: list[str] = Field(default_factory=list, description=f"extra dimensions: {', '.join(OPTIONAL)}")
    fixed: dict[str, Any] = Field(default_factory=dict, description="values that are not searched")

    @field_validator("preset")
    @classmethod
    def _preset(cls, v: str) -> str:
        return _choose("preset", v, PRESETS)

    @field_validator("dims")
    @classmethod
    def _dims(cls, v: list[str]) -> list[str]:
        for d in v:
            _choose("dims", d, OPTIONAL)
        return v


class ResourcesSpec(_Strict):
    """Resources of one trial (fractions allowed, as in Ray)."""

    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


def is_tracking_server(tracking_uri: str) -> bool:
    """Whether ``tracking_uri`` names an MLflow server (http or https) rather than a local store."""
    return tracking_uri.startswith(("http://", "https://"))


class MlflowSpec(_Strict):
    """Where MLflow records the study."""

    tracking_uri: str = Field("sqlite:///mlflow.db", description="a SQLite file in the working directory, "
                                                                 "or http://host:5000")
    experiment: str | None = Field(None, description="default: the study's name")


_FIXABLE = {"lambda0", "schedule", "branches", "surrogate", "surrogate_param", "timesteps", "lr",
            "weight_decay", "loss_mode"}


class StudySpec(_Strict):
    """A whole study: data, network, recipe, search, resources, storage and tracking."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    dataset: str = "digits"
    data_root: str = "data"
    download: bool = False
    arch: str = "resnet-tiny"
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    timesteps: int = Field(2, ge=1)
    train: TrainSpec = Field(default_factory=TrainSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    trials: int = Field(8, ge=1)
    concurrency: int | None = Field(None, ge=1, description="trials at once; default: as resources allow")
    scheduler: Literal["fifo", "asha"] = "asha"
    objective: Literal["test_acc", "test_acc+firing_rate"] = "test_acc"
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    seed: int = Field(0, ge=0)
    storage: str = Field("studies", description="local folder or URI (s3://, gs://) for Tune's results")
    max_failures: int = Field(2, ge=0, description="retries of a trial whose worker died")
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec)

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        return _choose("dataset", v, registry.DATASETS)

    @field_validator("arch")
    @classmethod
    def _arch(cls, v: str) -> str:
        return _choose("arch", v, registry.ARCHS)

    @model_validator(mode="after")
    def _cross_checks(self) -> "StudySpec":
        allowed = {"tau", "v_threshold", "detach_reset", "stem", "stem_width", "head_hidden"}
        if self.arch == "resnet-tiny":
            allowed |= set(registry.TINY_OPTIONS)
        unknown = sorted(set(self.arch_kwargs) - allowed)
        if unknown:
            raise _FieldError("arch_kwargs", f"unknown option(s) {unknown} for {self.arch}; allowed: "
                                             f"{', '.join(sorted(allowed))}")
        try:
            stages = registry.num_stages(self.arch, **self.arch_kwargs)
        except ValueError as e:
            raise _FieldError("arch_kwargs", str(e).split(": ", 1)[-1]) from None
        fixed = self.search.fixed
        bad = sorted(set(fixed) - _FIXABLE)
        if bad:
            raise _FieldError("search.fixed", f"unknown key(s) {bad}; allowed: {', '.join(sorted(_FIXABLE))}")
        _check_fixed(fixed, stages)
        if self.train.cuda_graphs and not self.resources.gpu:
            # checked here, not in each trial: a CPU trial's Trainer would refuse the setting
            raise _FieldError("train.cuda_graphs", "true needs GPU trials; set resources.gpu > 0 or cuda_graphs: false")
        return self

    # -- derived values ---------------------------------------------------------------------
    @property
    def stages(self) -> int:
        return registry.num_stages(self.arch, **self.arch_kwargs)

    @property
    def experiment(self) -> str:
        return self.mlflow.experiment or self.name

    def storage_uri(self) -> str:
        """Tune's storage path: an absolute local path, or the URI as given."""
        return self.storage if "://" in self.storage else str(Path(self.storage).expanduser().resolve())

    def study_dir(self) -> Path:
        """The local folder that holds the spec, the Optuna storage and Tune's results."""
        if "://" in self.storage:
            return Path(os.environ.get("SNN_STUDY_LOCAL", ".snn-study")).resolve() / self.name
        return Path(self.storage_uri()) / self.name

    def train_constants(self) -> dict[str, Any]:
        """The fields of :class:`snn.training.TrainConfig` that the search does not choose."""
        t = self.train
        lr = t.lr if t.lr is not None else (4e-3 if self.dataset == "imagenet" else 0.01)
        data_root = self.data_root if "://" in self.data_root else str(Path(self.data_root).expanduser().resolve())
        return {
            "dataset": self.dataset, "data_root": data_root, "download": self.download, "arch": self.arch,
            "arch_kwargs": dict(self.arch_kwargs), "timesteps": self.timesteps, "epochs": t.epochs,
            "batch_size": t.batch_size, "lr": lr, "weight_decay": t.weight_decay, "loss_mode": t.loss_mode,
            "tau": t.tau, "v_threshold": t.v_threshold, "workers": t.workers, "amp": t.amp,
            "cuda_graphs": t.cuda_graphs, "max_batches": t.max_batches, "seed": self.seed,
        }


class _FieldError(ValueError):
    """A cross-field check failed on ``field``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _check_fixed(fixed: dict[str, Any], stages: int) -> None:
    f = "search.fixed"
    if "lambda0" in fixed:
        v = fixed["lambda0"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            raise _FieldError(f"{f}.lambda0", f"must be a number in [0, 1], got {v!r}")
    if "schedule" in fixed and fixed["schedule"] not in registry.SHAPES:
        raise _FieldError(f"{f}.schedule", f"unknown value {fixed['schedule']!r}; choose one of "
                                           f"{', '.join(registry.SHAPES)}")
    if "branches" in fixed:
        try:
            registry.resolve_branches(fixed["branches"], stages)
        except (ValueError, TypeError) as e:
            raise _FieldError(f"{f}.branches", str(e).split(": ", 1)[-1]) from None
    if "surrogate" in fixed and fixed["surrogate"] not in SURROGATE_RANGES:
        raise _FieldError(f"{f}.surrogate", f"unknown value {fixed['surrogate']!r}; choose one of "
                                            f"{', '.join(registry.SURROGATES)}")
    if "surrogate_param" in fixed:
        v = fixed["surrogate_param"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
            raise _FieldError(f"{f}.surrogate_param", f"must be a number > 0, got {v!r}")
    if "timesteps" in fixed and not (isinstance(fixed["timesteps"], int) and fixed["timesteps"] >= 1):
        raise _FieldError(f"{f}.timesteps", f"must be an integer >= 1, got {fixed['timesteps']!r}")
    if "loss_mode" in fixed and fixed["loss_mode"] not in registry.LOSS_MODES:
        raise _FieldError(f"{f}.loss_mode", f"unknown value {fixed['loss_mode']!r}; choose one of "
                                            f"{', '.join(registry.LOSS_MODES)}")
    for k in ("lr", "weight_decay"):
        if k in fixed:
            v = fixed[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (k == "lr" and v == 0):
                raise _FieldError(f"{f}.{k}", f"must be a number {'> 0' if k == 'lr' else '>= 0'}, got {v!r}")


def _one_line(err: ValidationError, source: str) -> str:
    e = err.errors()[0]
    ctx_err = (e.get("ctx") or {}).get("error")
    loc = ".".join(str(p) for p in e["loc"])
    if isinstance(ctx_err, _FieldError):
        loc, msg = ctx_err.field, str(ctx_err)
    elif e["type"] == "extra_forbidden":
        msg = "unknown key (a typo?)"
    elif isinstance(ctx_err, ValueError):
        msg = str(ctx_err)
    else:
        msg = e["msg"]
        if "input" in e and e["type"] != "missing":
            msg += f", got {e['input']!r}"
    msg = msg.removeprefix("Value error, ")
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {loc or 'spec'}: {msg}{more}".replace("\n", " ")


def parse_spec(data: Any, source: str = "spec") -> StudySpec:
    """Validate a spec given as a dict (already parsed YAML).

    Raises:
        SpecError: One line naming the source, the field and what is allowed.
    """
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the spec must be a YAML mapping of keys to values, got {type(data).__name__}")
    try:
        return StudySpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_one_line(err, source)) from None


def load_spec(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> StudySpec:
    """Read and validate a YAML study spec (safe loader), with optional dotted-key overrides.

    Raises:
        SpecError: Missing file, YAML syntax error, or an invalid field.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(f"{p}: cannot read the spec ({e.strerror or e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise SpecError(f"{p}: YAML syntax error{where}: {problem}") from None
    if overrides:
        data = apply_overrides(data if isinstance(data, dict) else {}, overrides)
    return parse_spec(data, str(p))


def quickstart_spec(overrides: dict[str, Any] | None = None) -> StudySpec:
    """The built-in quick-start study, with optional dotted-key overrides."""
    return parse_spec(apply_overrides(QUICKSTART, overrides or {}), "quickstart")


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``data`` with ``{"train.epochs": 2}``-style overrides applied."""
    out = yaml.safe_load(yaml.safe_dump(data))  # deep copy of plain data
    for key, value in overrides.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` (value in YAML: ``train.epochs=2``, ``branches=[1,2]``)."""
    if "=" not in text:
        raise SpecError(f"--set {text!r}: expected key=value, e.g. train.epochs=2")
    key, raw = text.split("=", 1)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key.strip()):
        raise SpecError(f"--set {text!r}: {key!r} is not a key like train.epochs")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise SpecError(f"--set {text!r}: the value is not valid YAML") from None
    return key.strip(), value
