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

import copy
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator)

from search_spaces import DIMENSIONS, PRESETS, dimension, fixable, optional, perturbed, searched
from snn import registry
from snn.config import TrainConfig, UserData, dataset_name, first_error
from snn.metrics import ENERGY, FIRING_RATE, TEST_ACC
from study.fidelity import refusal as fidelity_refusal
from study.storage_url import RDB_BACKENDS, hide_password, rdb_url, redacted

__all__ = ["MAX_SPEC_BYTES", "POPULATION", "QUICKSTART", "RDB_BACKENDS", "SpecError", "StudySpec",
           "hide_password", "is_tracking_server", "load_spec", "parse_spec", "quickstart_spec", "redacted"]

QUICKSTART: dict[str, Any] = {
    "name": "quickstart",
    "dataset": "digits",
    "arch": "resnet-tiny",
    "timesteps": 2,
    "train": {"epochs": 3, "batch_size": 64},
    "search": {"preset": "quick"},
    "trials": 8,
    # glibc keeps freed activations for the next step instead of faulting them in again:
    # about 1.1x on CPU trials (docs/performance.md)
    "env_vars": {"MALLOC_MMAP_THRESHOLD_": "2147483647", "MALLOC_TRIM_THRESHOLD_": "2147483647"},
}
"""The built-in quick-start study: small enough for a laptop's CPU."""


MAX_SPEC_BYTES = 2**20  # a spec larger than this is refused before it is parsed
# PyYAML's safe loader, in C where libyaml is there (the pure-Python one is about 10x slower)
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class SpecError(ValueError):
    """A study spec is invalid; the message is one line naming the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# Which of the trial's parameters (snn.config.TrainConfig) a spec sets where. Their types,
# defaults, ranges and allowed values are TrainConfig's: copied from it, never restated.
# The top level: the data, the network, the seed; `train:` every other parameter but those a
# full search draws (set in search.fixed) and where the trial runs (the device: a study's
# resources decide it).
_TOP = ("dataset", "data_root", "download", "arch", "arch_kwargs", "timesteps", "seed", "stop", "energy", "fidelity")
_RECIPE = tuple(f for f in TrainConfig.model_fields
                if f not in _TOP and f not in searched() and f not in ("device", "channels_last"))


def _fields(names: tuple[str, ...]) -> dict[str, Any]:
    """``create_model`` fields of TrainConfig's ``names``."""
    out = {}
    for name in names:
        info = copy.copy(TrainConfig.model_fields[name])
        out[name] = (info.annotation, info)
    return out


TrainSpec = create_model("TrainSpec", __base__=_Strict, __module__=__name__, **_fields(_RECIPE))
TrainSpec.__doc__ = "The training recipe: TrainConfig's fields, the paper's CIFAR recipe (section 5.2) by default."

class SearchSpec(_Strict):
    """Which search preset runs, with optional extra dimensions and fixed values, and where Optuna
    keeps the search (``storage``)."""

    preset: str = "quick"
    dims: list[str] = Field(default_factory=list, description="extra dimensions (search_spaces.optional())")
    fixed: dict[str, Any] = Field(default_factory=dict, description="values of dimensions that are not searched "
                                                                    "(search_spaces.fixable()); null: searched")
    storage: str | None = Field(None, description=(
        "Optuna's storage, an RDB as a SQLAlchemy URL (postgresql+psycopg://user@host:5432/optuna, "
        "mysql+pymysql://user@host/optuna, sqlite:////abs/path.db), so that several studies and nodes share one "
        "database server; default: the SQLite file optuna.db in the study folder. A password is better left out "
        "of it: libpq reads PGPASSWORD or ~/.pgpass (the study folder keeps the URL as given; MLflow and the "
        "console show it with the password hidden)"))
    warm_start: list[str] = Field(default_factory=list, description=(
        "earlier studies whose finished trials the search starts from (study.warm_start): each a study folder "
        "(studies/<name>, or its name) or an MLflow experiment in this study's tracking store"))

    @field_validator("preset")
    @classmethod
    def _preset(cls, v: str) -> str:
        return _choose(v, PRESETS)

    @field_validator("dims")
    @classmethod
    def _dims(cls, v: list[str]) -> list[str]:
        for d in v:
            _choose(d, optional())
        return v

    @field_validator("fixed")
    @classmethod
    def _fixed(cls, v: dict[str, Any]) -> dict[str, Any]:
        # the names here; each value is TrainConfig's to check (StudySpec's trial check names it)
        for name in v:
            if name not in fixable():
                raise _FieldError(f"search.fixed.{name}", f"unknown key (a typo?); fix one of {', '.join(fixable())}")
        return {k: value for k, value in v.items() if value is not None}

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str | None) -> str | None:
        return None if v is None else rdb_url(v)

    def fixed_values(self) -> dict[str, Any]:
        """The fixed parameters the spec sets, by name."""
        return dict(self.fixed)


class ConfirmSpec(_Strict):
    """The confirm stage: after the search, its best configurations (and the paper's setting)
    run again with new seeds; the study's answer is the best confirmed configuration."""

    top: int = Field(3, ge=1, description="how many of the search's best configurations to confirm")
    seeds: int = Field(5, ge=2, description="new seeds of each (paired across configurations)")


POPULATION: tuple[str, ...] = ("pbt", "pb2")
"""Schedulers that train a population and perturb its hyperparameters during training."""


class PopulationSpec(_Strict):
    """Population-based training (``scheduler: pbt`` or ``pb2``): how the population is perturbed."""

    interval: int = Field(1, ge=1, description="epochs between perturbations: a trial in the bottom quantile "
                                               "copies a top trial's checkpoint and perturbs its λ (and lr)")
    quantile: float = Field(0.25, gt=0, le=0.5, description="the fraction of the population that copies, and "
                                                            "the fraction copied from")
    synch: bool = Field(False, description="true: every trial waits at each perturbation until all have reached "
                                           "it, and the whole population is ranked at once (Ray's synchronous PBT)")


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


def _choose(value: Any, allowed: tuple[str, ...] | list[str]) -> str:
    if value not in allowed:
        raise ValueError(f"unknown value {value!r}; choose one of {', '.join(map(str, allowed))}")
    return value


class _Study(_Strict):
    """A whole study: data, network, recipe, search, resources, storage and tracking."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    train: TrainSpec = Field(default_factory=TrainSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    trials: int = Field(8, ge=1, description="configurations the search tries")
    seeds: int = Field(1, ge=1, description="replicates of every configuration, seed + 0..seeds-1, paired across "
                                            "configurations")
    confirm: ConfirmSpec | None = Field(None, description="re-run the best configurations with new seeds")
    concurrency: int | None = Field(None, ge=1, description="trials at once; default: as resources allow")
    scheduler: Literal["fifo", "asha", "pbt", "pb2"] = Field(
        "asha", description="asha (early stopping); fifo (every trial its full budget; the default with seeds > 1); "
                            "pbt or pb2 (population-based training: λ learned during training)")
    pbt: PopulationSpec | None = Field(None, description="scheduler pbt or pb2: the perturbation interval, "
                                                         "quantile and synch (default: every epoch, 0.25, "
                                                         "asynchronous)")
    objective: Literal["test_acc", "test_acc+firing_rate", "test_acc+energy"] = Field(
        "test_acc", description="test_acc; or two objectives, accuracy up and firing rate or energy_uj (µJ per "
                                "inference, energy:) down: the answer is their Pareto front")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    env_vars: dict[str, str] = Field(default_factory=dict, description="environment of the trial processes "
                                                                       "(Ray's runtime_env)")
    storage: str = Field("studies", description="local folder or URI (s3://, gs://) for Tune's results")
    local_dir: str = Field(".snn-study", min_length=1, description="storage on a URI: the local folder under which "
                                                                   "the study keeps <name>/ (its spec, Optuna storage, "
                                                                   "driver log); the CLI's default: $SNN_STUDY_LOCAL")
    max_failures: int = Field(2, ge=0, description="retries of a trial whose worker died")
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec)

    @model_validator(mode="after")
    def _trial_checks(self) -> "_Study":
        if self.fidelity is not None and "timesteps" not in self.model_fields_set:
            self.timesteps = self.fidelity.target  # a fidelity's last T is the target
        if (refused := fidelity_refusal(self)) is not None:
            raise _FieldError(*refused)
        try:
            self.trial_config()
        except ValidationError as err:  # a combination TrainConfig refuses: name the spec's own key
            field, message = first_error(err)
            raise _FieldError(self._spec_key(field), message) from None
        if "://" not in self.data_root and Path(self.data_root).expanduser().is_file():  # never a dataset folder
            raise _FieldError("data_root", f"{Path(self.data_root).expanduser().resolve()} is a file; give the "
                                           f"folder that holds the dataset's files (or will, with download)")
        if isinstance(self.dataset, UserData) and "://" in self.data_root:
            raise _FieldError("data_root", f"{self.data_root} is a URI; your own data is prepared into a folder "
                                           f"(data_root/cache), give a local or shared path")
        binned = [d for d in self.search.dims if dimension(d).binned]
        if isinstance(self.dataset, UserData) and self.dataset.format == "events" and binned:
            raise _FieldError("search.dims", f"{binned[0]} cannot be searched on event data: the recordings are "
                                             f"binned into frames once, for the spec's {binned[0]}")
        if self.scheduler in POPULATION:
            self._population()
        elif self.pbt is not None:
            raise _FieldError("pbt", f"only with scheduler: pbt or pb2 (this spec's scheduler is {self.scheduler}); "
                                     f"remove it, or set the scheduler")
        if self.search.warm_start and (self.scheduler in POPULATION or self.search.preset in ("paper", "ablation")):
            raise _FieldError("search.warm_start", (
                f"scheduler {self.scheduler} draws its population without Optuna: no search to add earlier trials "
                f"to; remove it") if self.scheduler in POPULATION else (f"preset {self.search.preset} counts its seeds "
                f"by Optuna's trial number, which earlier trials would shift; use quick or full"))
        if self.seeds > 1 or self.confirm:
            self._replicates()
        if len(self.objectives()) > 1 and self.scheduler == "asha":
            # ASHA ranks a rung by one metric: it would stop the cheap, slower-learning trials the
            # front is made of. Every trial of a multi-objective study runs its budget.
            if "scheduler" in self.model_fields_set:
                raise _FieldError("scheduler", f"asha stops trials by one metric, and would cut the {self.objective} "
                                               f"front's low-cost trials short; use fifo with two objectives")
            self.scheduler = "fifo"
        if self.energy.max_uj is not None and self.scheduler in POPULATION:
            raise _FieldError("energy.max_uj", f"scheduler {self.scheduler} has no search to constrain; remove it")
        if self.train.cuda_graphs and not self.resources.gpu:
            # checked here, not in each trial: a CPU trial's Trainer would refuse the setting
            raise _FieldError("train.cuda_graphs", "true needs GPU trials; set resources.gpu > 0 or cuda_graphs: false")
        return self

    def objectives(self) -> list[tuple[str, str]]:
        """The study's objectives as (metric, mode): test_acc, maximised, then the cost minimised
        where ``objective`` names one (a multi-objective search, answered by its Pareto front)."""
        cost = {"test_acc+firing_rate": FIRING_RATE, "test_acc+energy": ENERGY}.get(self.objective)
        return [(TEST_ACC, "max")] + ([(cost, "min")] if cost else [])

    def _replicates(self) -> None:
        """Replicated configurations compare full runs of a single objective."""
        if self.seeds > 1 and self.scheduler == "asha":
            if "scheduler" in self.model_fields_set:
                raise _FieldError("scheduler", "asha stops replicates early, and their mean needs every seed's full "
                                                "run; use fifo with seeds > 1")
            self.scheduler = "fifo"
        if self.objective != "test_acc":
            raise _FieldError("objective", "replicates and the confirm stage compare test_acc; use objective: "
                                           "test_acc with seeds > 1 or confirm")
        if self.confirm and self.search.preset in ("paper", "ablation"):
            raise _FieldError("confirm", f"preset {self.search.preset} searches nothing to confirm; replicate it "
                                         f"with seeds: N instead")

    def _population(self) -> None:
        """Population-based training learns λ (and lr) during training: nothing else is searched,
        and a trial's configuration changes as it trains."""
        how = f"scheduler {self.scheduler}"
        if self.search.storage is not None:
            raise _FieldError("search.storage", f"{how} draws and perturbs its population without Optuna, so there "
                                                f"is no Optuna storage; remove it")
        if self.seeds > 1:
            raise _FieldError("seeds", f"{how} trains one population whose members copy each other's weights, so "
                                       f"there are no replicates of a configuration; use seeds: 1")
        if self.confirm:
            raise _FieldError("confirm", f"{how}: a trial's λ changes while it trains, so there is no configuration "
                                         f"to re-run with new seeds; remove confirm")
        if self.objective != "test_acc":
            raise _FieldError("objective", f"{how} ranks the population by test_acc alone; use objective: test_acc")
        if self.search.preset in ("paper", "ablation"):
            raise _FieldError("search.preset", f"{self.search.preset} fixes λ to the paper's schedules, which leaves "
                                               f"{how} nothing to learn; use quick or full")
        other = [d for d in self.search.dims if not dimension(d).perturbed]
        if other:
            always = ", ".join(DIMENSIONS[d].title for d in perturbed())
            listed = [n for n, d in DIMENSIONS.items() if d.perturbed and not d.searched]
            raise _FieldError("search.dims", f"{how} perturbs {always} and, where listed, {', '.join(listed)} during "
                                             f"training; {', '.join(other)} cannot change mid-training (allowed: "
                                             f"{', '.join(listed)})")
        fixed = self.search.fixed_values()
        learned = [d for d in perturbed() if d in fixed]
        if learned:
            dim = DIMENSIONS[learned[0]]
            raise _FieldError(f"search.fixed.{dim.name}", f"{how} learns {dim.title}; remove it (the population starts from "
                                                          f"{dim.title} {dim.describe(self.stages)})")
        if fixed.get("schedule", "constant") != "constant":
            raise _FieldError("search.fixed.schedule", f"{how} holds λ constant between perturbations; remove it "
                                                       f"or set constant")
        both = [d for d in self.search.dims if d in fixed]
        if both:
            raise _FieldError(f"search.fixed.{both[0]}", f"{both[0]} is in search.dims, so it is perturbed; fix it "
                                                         f"or list it, not both")
        if not registry.resolve_branches(self.trial_config().branches, self.stages):
            raise _FieldError("search.fixed.branches", f"none has no shortcut head, so λ weighs nothing and {how} "
                                                       f"has nothing to learn; keep heads")
        if self.trials < 2:
            raise _FieldError("trials", f"{how} needs a population of at least 2 trials (4 or more is sensible)")
        interval = self.population.interval
        if interval >= self.train.epochs:
            raise _FieldError("pbt.interval", f"{interval} epoch(s) leave no perturbation within train.epochs "
                                              f"{self.train.epochs}; use fewer epochs than that")

    @property
    def population(self) -> PopulationSpec:
        """The population's settings (scheduler pbt or pb2): the spec's ``pbt``, else the defaults."""
        return self.pbt or PopulationSpec()

    def population_config(self) -> dict[str, Any]:
        """A population trial's parameters as plain data, before Tune draws λ₀ (and lr): the spec's
        with the paper's setting in every other searched dimension, and λ constant between
        perturbations (``schedule: constant``)."""
        return self.trial_config(schedule="constant").to_dict()

    def _spec_key(self, field: str) -> str:
        name = field.split(".")[0]
        if name in self.search.fixed_values():
            return f"search.fixed.{field}"
        return f"train.{field}" if name in _RECIPE else field

    # -- derived values ---------------------------------------------------------------------
    @property
    def stages(self) -> int:
        return registry.num_stages(self.arch, **self.arch_kwargs)

    @property
    def dataset_name(self) -> str:
        """The dataset's name: a built-in one, or the user's data's ``name`` (or file name)."""
        return dataset_name(self.dataset)

    @property
    def experiment(self) -> str:
        return self.mlflow.experiment or self.name

    def storage_uri(self) -> str:
        """Tune's storage path: an absolute local path, or the URI as given."""
        return self.storage if "://" in self.storage else str(Path(self.storage).expanduser().resolve())

    def study_dir(self) -> Path:
        """The local folder that holds the spec, the Optuna storage and Tune's results."""
        if "://" in self.storage:
            return Path(self.local_dir).expanduser().resolve() / self.name
        return Path(self.storage_uri()) / self.name

    def trial_config(self, **overrides: Any) -> TrainConfig:
        """The trial this spec describes: its top-level keys, ``train:`` and ``search.fixed``
        over TrainConfig's defaults (the paper's setting in every searched dimension).

        Raises:
            pydantic.ValidationError: A combination TrainConfig refuses.
        """
        values = {k: getattr(self, k) for k in _TOP}
        if "://" not in self.data_root:  # trials run elsewhere: the folder as the spec's reader meant it
            values["data_root"] = str(Path(self.data_root).expanduser().resolve())
        if isinstance(self.dataset, UserData):  # so are the user's files
            values["dataset"] = self.dataset.model_copy(update={
                k: str(Path(v).expanduser().resolve()) for k in ("train", "test") if (v := getattr(self.dataset, k))})
        values.update(self.train.model_dump(exclude_unset=False))
        values.update(self.search.fixed_values())
        values.update(overrides)
        return TrainConfig.model_validate(values)

    def train_constants(self) -> dict[str, Any]:
        """The trial's parameters as plain data (Tune's config before the search adds its own)."""
        return self.trial_config().to_dict()


StudySpec = create_model("StudySpec", __base__=_Study, __module__=__name__, **_fields(_TOP))
StudySpec.__doc__ = _Study.__doc__


class _FieldError(ValueError):
    """A cross-field check failed on ``field``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _one_line(err: ValidationError, source: str) -> str:
    e = err.errors()[0]
    ctx_err = (e.get("ctx") or {}).get("error")
    if isinstance(ctx_err, _FieldError):
        loc, msg = ctx_err.field, str(ctx_err)
    else:
        loc, msg = first_error(err)
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 and " more)" not in msg else ""
    return f"{source}: {loc or 'spec'}: {msg.removeprefix('Value error, ')}{more}".replace("\n", " ")


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
    """Read and validate a YAML study spec (safe loader, at most :data:`MAX_SPEC_BYTES`), with
    optional dotted-key overrides.

    Raises:
        SpecError: Missing file, YAML syntax error, or an invalid field.
    """
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)  # never more: a spec is a page of YAML
        if len(raw) > MAX_SPEC_BYTES:
            raise SpecError(f"{p}: the spec is larger than {MAX_SPEC_BYTES // 2**20} MiB; a study spec is a short "
                            f"YAML file (see the README's spec reference)")
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{p}: the spec is not UTF-8 text (byte {e.start})") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        raise SpecError(f"{p}: cannot read the spec ({getattr(e, 'strerror', None) or e})") from None
    try:
        data = yaml.load(text, Loader=_SAFE_LOADER)
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
