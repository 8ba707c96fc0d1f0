"""What a study checks before Ray starts, and the plan ``snn-study check`` prints.

:func:`prepare_data` opens the spec's dataset on the driver: a built-in one's files are
looked for (or downloaded), a user's data is read, checked and prepared once for all
trials (:func:`snn.data.prepare`). :func:`check_spec` adds the earlier studies a warm start
names (:func:`study.warm_start.check`) for ``snn-study check``. :func:`plan` says what a run
of the spec would do: the trial's config, the search's dimensions and ranges, the trials a
warm start adds, the data, the resources and the concurrency to expect. None starts Ray,
writes a study folder or writes to MLflow (a warm start's experiment is read).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from search_spaces import build_space, describe, perturbed
from snn import data
from snn.config import UserData
from snn.fidelity import budget_cost, epoch_timesteps
from study import baselines, warm_start
from study.folder import StudyError
from study.spec import POPULATION, StudySpec, hide_password

__all__ = ["PrepareProgress", "check_spec", "plan", "prepare_data"]

log = logging.getLogger(__name__)


def prepare_data(spec: StudySpec, *, say=None, fetch: bool = True) -> data.Prepared | None:
    """Open the spec's dataset once on the driver, so a missing or bad file fails before Ray
    starts; a user's data is prepared (or read from its cache) here, once for all trials.

    Args:
        spec: A validated spec.
        say: Called with each line about the data (default: the log, at INFO); a long
            preparation of a user's data adds a line of its progress every 10 s.
        fetch: Download a built-in dataset's missing files where the spec says ``download:
            true``; False only looks for them (and passes when they would be downloaded).

    Returns:
        The user's data, prepared; None for a built-in dataset.

    Raises:
        StudyError: Missing or unreadable files (exit 1); data that can never train as the
            spec describes it (exit 2).
    """
    say = say or log.info
    cfg = spec.trial_config()
    root = cfg.data_root
    try:
        data.check_root(root)
        if isinstance(cfg.dataset, UserData):
            prepared = data.prepare(cfg.dataset, root, cfg.timesteps, log=say, progress=PrepareProgress(say))
            if prepared.kind == "frames" and "timesteps" in spec.search.dims:
                raise StudyError(f"search.dims: timesteps cannot be searched: {spec.dataset_name} holds frames of "
                                 f"T={spec.timesteps}, prepared once", exit_code=2)
            if prepared.kind == "frames" and spec.fidelity is not None:  # T grows within each trial
                raise StudyError(f"fidelity: {spec.dataset_name} holds frames of T={spec.timesteps}, prepared once, "
                                 f"so T cannot grow on them; remove fidelity", exit_code=2)
            say(f"dataset {prepared.describe()}")
            return prepared
        if not data.info(spec.dataset).bundled:  # a bundled one has nothing to find
            data.build(spec.dataset, root, train=False, timesteps=spec.timesteps, download=spec.download and fetch)
    except data.DatasetNotFoundError as e:
        if not fetch and spec.download and spec.dataset != "imagenet":
            say(f"dataset {spec.dataset}: not under {root} yet; the run downloads it (download: true)")
            return None
        raise StudyError(str(e)) from None
    except ValueError as e:  # a data_root, or data, that can never work as given
        raise StudyError(str(e), exit_code=2) from None
    except OSError as e:  # unreadable
        raise StudyError(f"data_root: {root}: {e.strerror or e}") from None
    return None


def check_spec(spec: StudySpec, *, say=None, fetch: bool = True) -> data.Prepared | None:
    """What ``snn-study check`` checks before it prints the plan: the earlier studies of
    ``search.warm_start`` in the spec's tracking store (:func:`study.warm_start.check`), then the
    data (:func:`prepare_data`, whose arguments and return value these are).

    Raises:
        StudyError: A warm start's study is missing, unreadable or shares no dimension (exit 2),
            or as :func:`prepare_data`.
    """
    warm_start.check(spec, spec.mlflow.tracking_uri)
    return prepare_data(spec, say=say, fetch=fetch)


class PrepareProgress:
    """A user's data being prepared (:func:`snn.data.prepare`'s ``progress``), as lines for ``say``.

    A phase that reads file by file (decoding images, binning recordings) says how far it
    got every ``every`` seconds, and when it ends, how long it took; a phase shorter than
    ``every`` says nothing, so a small dataset's preparation stays at its one line per phase.
    """

    def __init__(self, say, every: float = 10.0, clock=time.monotonic) -> None:
        self.say, self.every, self.clock = say, every, clock
        self.start = self.last = clock()
        self.said = False

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = self.clock()
        if done == 0:
            self.start = self.last = now
            self.said = False
        elif done >= total:
            if self.said:
                self.say(f"  {phase}: all {total:,} done in {now - self.start:.0f} s")
        elif now - self.last >= self.every:
            self.last, self.said = now, True
            self.say(f"  {phase}: {done:,} of {total:,} ({done / total:.0%}) after {now - self.start:.0f} s")


def _machine() -> tuple[int, int]:
    """CPUs and GPUs this machine offers a local Ray."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    import torch

    return cpus, torch.cuda.device_count()


def _concurrency(spec: StudySpec, cpus: int, gpus: int) -> tuple[int, str]:
    """Trials at once on this machine, and what bounds it."""
    bounds = [(spec.trials, "trials"), (int(cpus // spec.resources.cpu), f"{cpus} CPUs")]
    if spec.resources.gpu:
        bounds.append((int(gpus // spec.resources.gpu), f"{gpus} GPUs"))
    if spec.concurrency:
        bounds.append((spec.concurrency, "concurrency"))
    n, why = min(bounds)
    return n, why


def plan(spec: StudySpec, prepared: data.Prepared | None, data_error: str | None = None) -> list[str]:
    """What ``snn-study run`` of ``spec`` would do, as lines for a person to read.

    Args:
        spec: A validated spec.
        prepared: The user's data as :func:`prepare_data` returned it (None: built-in).
        data_error: Why a built-in dataset's files cannot be opened here, if they cannot.
    """
    cfg = spec.trial_config()
    space = build_space(spec.search.preset, stages=spec.stages, extra=spec.search.dims,
                        fixed=spec.search.fixed_values(), constants={}, seed=spec.seed)
    dims = describe(space)
    out = [f"study {spec.name}: {spec.trials} configuration(s) x {spec.seeds} seed(s) = {spec.trials * spec.seeds} "
           f"trial(s), search preset {spec.search.preset}, scheduler {spec.scheduler}, objective {spec.objective}"]
    if spec.seeds > 1:
        out.append(f"  replicates: seeds {spec.seed}..{spec.seed + spec.seeds - 1}, the same for every configuration "
                   f"(paired); Optuna learns from each configuration's mean")
    if spec.confirm:
        out.append(f"  then a confirm stage: the {spec.confirm.top} best configuration(s) and the paper's setting, "
                   f"{spec.confirm.seeds} new seeds each (up to {(spec.confirm.top + 1) * spec.confirm.seeds} trials)")
    if spec.fidelity is not None:
        ts, epochs = spec.fidelity.timesteps, spec.train.epochs
        seq = epoch_timesteps(ts, epochs)
        out.append(f"  timesteps as a fidelity: every trial starts at T={ts[0]}, and T grows at ASHA's rungs on cost "
                   f"(Σ epochs × T) to {ts[-1]} (a full budget: T = {', '.join(map(str, seq))}; cost "
                   f"{budget_cost(ts, epochs)} against {epochs * ts[-1]} at T={ts[-1]} throughout)")
    stop = cfg.stop
    if stop.silent_rate is not None or stop.saturated_rate is not None:
        out.append(f"  firing-rate guard: a stage firing below {stop.silent_rate} or above {stop.saturated_rate} "
                   f"spikes/neuron/step at {stop.patience} checks in a row ({stop.checks_per_epoch} an epoch) stops "
                   f"its trial")
    out.append("data:")
    if prepared is not None:
        small = prepared.nbytes <= cfg.dataset.object_store_limit_mb * 2**20
        out.append(f"  {prepared.describe()}")
        out.append("  to the trials through Ray's object store (at most dataset.object_store_limit_mb = "
                   f"{cfg.dataset.object_store_limit_mb:g} MiB)" if small else
                   f"  read by each trial from {prepared.path}: larger than dataset.object_store_limit_mb "
                   f"({cfg.dataset.object_store_limit_mb:g} MiB), so every node must see that path")
    else:
        info = data.info(spec.dataset)
        kind = "images" if info.kind == "static" else f"frames of T={spec.timesteps}"
        out.append(f"  {info.name}: {info.num_classes} classes, {info.in_channels}x{info.input_size[0]}x"
                   f"{info.input_size[1]} {kind}; files: "
                   + ("bundled" if info.bundled else data_error or f"present under {cfg.data_root}"))
    rows = baselines.rows(spec.dataset_name)
    out.append(f"  the paper's rows to compare with: {len(rows)}" if rows else
               f"  the paper has no rows on {spec.dataset_name}: the study is recorded without baselines")
    if spec.scheduler in POPULATION:  # no Optuna: Tune draws the population, the scheduler perturbs it
        cfg = spec.trial_config(schedule="constant")
        dims = {k: d.describe(spec.stages) for k, d in perturbed(spec.search.dims).items()}
        out.append(f"population ({spec.scheduler}, no Optuna): {spec.trials} trials drawn by Tune; every "
                   f"{spec.population.interval} epoch(s) its bottom {spec.population.quantile:.0%} continue from a top "
                   f"trial's checkpoint, perturbed (λ constant in between):")
    elif dims:
        out.append("search (Optuna TPE, the paper's setting first):")
    else:
        out.append("search: nothing searched")
    if spec.scheduler in POPULATION:
        pass
    elif spec.search.preset == "paper":
        out.append(f"  the paper's setting, repeated with seeds {spec.seed}, {spec.seed + 1}, ...")
    elif spec.search.preset == "ablation":
        out.append("  evolutionary, shortcut and vanilla training (Table 1) in turn, a new seed each round")
    out += [f"  {k}: {v}" for k, v in dims.items()]
    out += warm_start.plan_lines(spec, spec.mlflow.tracking_uri)
    out.append("trial config:" if spec.scheduler in POPULATION else
               "trial config (searched keys: the paper's value, which the first trial tries):")
    out += [f"  {k}: {_show(v)}" for k, v in cfg.to_dict().items() if k not in dims]
    cpus, gpus = _machine()
    n, bound = _concurrency(spec, cpus, gpus)
    out.append(f"resources: {spec.resources.cpu:g} CPU and {spec.resources.gpu:g} GPU per trial")
    if n < 1:
        out.append(f"  this machine ({cpus} CPUs, {gpus} GPUs) cannot hold one trial: run on a cluster with "
                   f"--address, or lower resources")
    else:
        out.append(f"  on this machine: up to {n} trial(s) at once (bound by {bound}); on a cluster, as its "
                   f"resources allow")
    out.append(f"results: {spec.study_dir()}; MLflow: {spec.mlflow.tracking_uri}, experiment {spec.experiment}")
    if spec.search.storage is not None:
        out.append(f"  Optuna's storage: {hide_password(spec.search.storage)}")
    return out


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items() if v is not None) + "}"
    return str(value)
