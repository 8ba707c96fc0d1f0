"""One trial trained without Ray or Tune, through the study's own training loop (``snn-study train``).

:func:`train_config` builds the trial's config (a spec's recipe, a trial's ``config.yaml``,
or a trial's MLflow run read by :func:`trial_of_run`, with overrides last);
:func:`train_trial` trains it, saying what it trains, one line per epoch, and writing its
results folder (:func:`results_dir`) after every epoch, each file whole; for a trial re-run
from its MLflow run, it ends with one line saying whether every recorded epoch was
reproduced exactly. :func:`fit_trial` is the loop itself with its failures as one line,
which ``snn-study gradients`` uses too. Failures raise :class:`~study.folder.StudyError`
(exit code 2 for what can never run as given, 1 for the rest); lines go to the ``echo``
(results) and ``say`` (what is going on) callables the caller passes.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import ValidationError

from search_spaces import DIMENSIONS, searched
from snn import data as snn_data
from snn import training
from snn.config import TrainConfig, UserData, first_error
from snn.models import strip_shortcuts
from study.folder import StudyError
from study.preflight import PrepareProgress

__all__ = ["OUTPUTS", "fit_trial", "results_dir", "train_config", "train_trial", "trial_of_run"]

OUTPUTS = ("checkpoint.pt", "model.pt", "config.yaml", "metrics.csv")  # what a training writes to its folder

Say = Callable[[str], None]


def trial_of_run(tracking_uri: str, run_id: str):
    """The trial of an MLflow run (:func:`study.tracking.read_trial_run`), its failures as one line."""
    from study.tracking import RunNotFound, read_trial_run

    try:
        return read_trial_run(tracking_uri, run_id)
    except (RunNotFound, ConnectionError) as e:  # no such run, or the store does not answer
        raise StudyError(str(e)) from None
    except ValueError as e:  # a run that is not a trial's
        raise StudyError(str(e), exit_code=2) from None


def train_config(overrides: dict[str, Any], *, trial=None, config_file: str | None = None, spec=None) -> TrainConfig:
    """The config to train: a trial run's (``trial``, from :func:`trial_of_run`), a trial's
    ``config.yaml`` (``config_file``), else ``spec``'s trial, with ``overrides`` applied last.

    Raises:
        StudyError: The config file cannot be read (exit 1), or the config is not a valid
            trial's (exit 2).
    """
    try:
        if trial is not None:
            return TrainConfig.model_validate({**trial.config, **overrides})
        if config_file:
            try:
                config = yaml.safe_load(Path(config_file).read_text())
            except (OSError, ValueError, yaml.YAMLError) as e:  # ValueError: not UTF-8, a NUL in the path
                raise StudyError(f"{config_file}: cannot read the trial's config "
                                 f"({getattr(e, 'strerror', None) or e})") from None
            if not isinstance(config, dict):
                raise StudyError(f"{config_file}: a trial's config is a YAML mapping of parameters to values",
                                 exit_code=2)
            return TrainConfig.model_validate({**config, **overrides})
        return spec.trial_config(**overrides)
    except ValidationError as err:
        field, message = first_error(err)
        raise StudyError(f"{field}: {message}", exit_code=2) from None


def results_dir(out: str | None) -> Path:
    """A training's results folder: ``out``, or a new ``runs/train-<date>-<time>`` under the working
    directory. Nothing is made here (a training refused before its first epoch leaves nothing).

    Raises:
        StudyError: ``out`` is a file, or a folder holding a training's results already (exit 2).
    """
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path, n = Path("runs") / f"train-{stamp}", 1
        while path.exists():
            n += 1
            path = Path("runs") / f"train-{stamp}-{n}"
        return path
    if not out or "\x00" in out:
        raise StudyError(f"--out: {out!r} is not a folder's path", exit_code=2)
    path = Path(out)
    try:
        if path.exists() and not path.is_dir():
            raise StudyError(f"--out: {out} is a file; give a folder", exit_code=2)
        held = [name for name in OUTPUTS if (path / name).exists()]
    except OSError as e:
        raise StudyError(f"--out: {out}: {e.strerror or e}", exit_code=2) from None
    if held:
        raise StudyError(f"--out: {out} holds a training's results already ({', '.join(held)}); give another "
                         f"folder", exit_code=2)
    return path


def train_trial(cfg: TrainConfig, out: Path, *, echo: Say, say: Say, trial=None, changed: bool = False) -> None:
    """Train ``cfg`` through the study's loop, writing its results to ``out`` after every epoch.

    Before the first epoch, three lines to ``say`` tell the data, the model and the config;
    each epoch shows its progress on stderr (:class:`_EpochProgress`) and ends with one line
    of metrics to ``echo``; the last line to ``echo`` names the files written.

    Args:
        cfg: The trial's config.
        out: The results folder (:func:`results_dir`).
        echo, say: Where the results' lines and the lines about what is going on go.
        trial: The MLflow run's trial re-run (:func:`trial_of_run`): a last line compares every
            epoch with what it recorded.
        changed: Whether the config was changed from the trial's (by ``--set``).

    Raises:
        StudyError: The data or the results folder cannot be read or written, or training failed.
    """
    results = _Results(out)
    rerun: list[dict[str, float]] = []
    progress = _EpochProgress(cfg.epochs)

    def start(trainer) -> None:
        progress.trainer = trainer
        for line in _describe(trainer):
            say(line)
        results.start(trainer.cfg)

    def report(metrics: dict[str, float], trainer) -> None:
        progress.close()  # the bar gives way to the epoch's line
        rerun.append(dict(metrics))
        echo(f"epoch {int(metrics['epoch'])}/{cfg.epochs}  train_loss={metrics['train_loss']:.4f}  "
             f"train_acc={metrics['train_acc']:.4f}  test_acc={metrics['test_acc']:.4f}  "
             f"lambda={metrics['lambda']:.4f}  firing_rate={metrics['firing_rate']:.4f}  "
             f"energy={metrics['energy_uj']:.3g} µJ  {metrics['images_per_s']:.0f} img/s")
        results.epoch(metrics, trainer)

    prepared = _prepare(cfg, say)
    try:
        fit_trial(cfg, report, progress=progress, start=start, saved=results.saved, data=prepared)
    finally:
        progress.close()
    if results.made:
        echo(results.summary())
    if trial is not None:
        echo(_compare(trial.history, rerun) + ("; the config was changed by --set" if changed else ""))


_TIMING = ("epoch", "epoch_time", "images_per_s")  # not compared: the step itself, and wall-clock measures


def _compare(recorded: dict[int, dict[str, float]], rerun: list[dict[str, float]]) -> str:
    """One line: every metric the run recorded for the re-run's epochs reproduced exactly, or
    the first that differs (epoch, metric, by how much) and how many others do."""
    diffs, values, names = [], 0, set()
    epochs = [int(m["epoch"]) for m in rerun if int(m["epoch"]) in recorded]
    for metrics in rerun:
        epoch = int(metrics["epoch"])
        for key, was in sorted(recorded.get(epoch, {}).items()):
            if key in _TIMING or key not in metrics:
                continue
            now = float(metrics[key])
            values += 1
            names.add(key)
            if not (now == was or (math.isnan(now) and math.isnan(was))):
                diffs.append((epoch, key, was, now))
    missing = sorted(set(recorded) - {int(m["epoch"]) for m in rerun})
    notes = []
    if len(epochs) < len(rerun):
        notes.append(f"{len(rerun) - len(epochs)} re-run epoch(s) the run did not record (stopped early?)")
    if missing:
        notes.append(f"recorded epoch(s) {', '.join(map(str, missing))} not re-run")
    note = "; " + "; ".join(notes) if notes else ""
    if not values:
        return f"nothing to compare: the run records no metrics of the re-run's epochs{note}"
    if not diffs:
        return f"reproduced {len(epochs)} epochs exactly ({values} values of {len(names)} metrics){note}"
    epoch, key, was, now = diffs[0]
    more = f"; {len(diffs) - 1} more of {values} values differ" if len(diffs) > 1 else f" (1 of {values} values)"
    return (f"not reproduced: epoch {epoch} {key} differs by {now - was:+.3g} (recorded {was!r}, "
            f"re-run {now!r}){more}{note}")


def fit_trial(cfg: TrainConfig, report, *, saved: Callable[[], str] | None = None, **hooks) -> None:
    """Train through the study's own loop (``hooks``: :func:`snn.training.fit`'s ``progress``,
    ``start`` and ``data``); its failures as one line each, ending with ``saved()`` (where the
    epochs done so far are) where given.

    Raises:
        StudyError: Training diverged or stopped (exit 1), the data or model refuse a setting
            (exit 2), or the data are missing or unreadable (exit 1).
    """
    def where() -> str:
        return saved() if saved is not None else ""

    try:
        training.fit(cfg, report, **hooks)
    except (training.TrainingDiverged, training.TrainingStopped) as e:
        raise StudyError(str(e) + where()) from None
    except ValueError as e:  # a setting the data or model refuse
        raise StudyError(str(e), exit_code=2) from None
    except OSError as e:  # missing or unreadable data
        raise StudyError(str(e) + where()) from None


def _prepare(cfg: TrainConfig, say: Say):
    """A user's data, prepared (or read from its cache) with its progress to ``say``; None for a
    built-in dataset. Failures as in :func:`fit_trial`."""
    if not isinstance(cfg.dataset, UserData):
        return None
    try:
        snn_data.check_root(cfg.data_root)
        return snn_data.prepare(cfg.dataset, cfg.data_root, cfg.timesteps, log=say, progress=PrepareProgress(say))
    except ValueError as e:  # data that can never train as described
        raise StudyError(str(e), exit_code=2) from None
    except OSError as e:  # missing or unreadable files
        raise StudyError(str(e)) from None


class _Results:
    """What a training writes to its folder (:data:`OUTPUTS`): the config when training starts,
    then the checkpoint, the inference weights and the metrics after every epoch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, float]] = []
        self.made = False

    def _write(self, name: str, write) -> None:
        """``write(file)`` into ``name`` whole or not at all (:func:`snn.data.write_whole`): an
        interrupted training keeps the files of its last finished epoch."""
        try:
            snn_data.write_whole(self.path / name, write)
        except OSError as e:
            raise StudyError(f"--out: cannot write {self.path / name} ({e.strerror or e})") from None

    def start(self, cfg: TrainConfig) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StudyError(f"--out: cannot make the folder {self.path} ({e.strerror or e})") from None
        self.made = True
        text = yaml.safe_dump(cfg.to_dict(), sort_keys=True)  # as a trial's config.yaml artifact
        self._write("config.yaml", lambda f: f.write(text.encode("utf-8")))

    def epoch(self, metrics: dict[str, float], trainer) -> None:
        self.rows.append(dict(metrics))
        weights = {k: v.detach().cpu() for k, v in strip_shortcuts(trainer.model).state_dict().items()}
        self._write("checkpoint.pt", lambda f: torch.save(trainer.state_dict(), f))
        self._write("model.pt", lambda f: torch.save(weights, f))
        self._write("metrics.csv", lambda f: f.write(self._metrics().encode("utf-8")))

    def _metrics(self) -> str:
        """The epochs' metrics as CSV, one row per epoch."""
        keys = list(dict.fromkeys(["epoch", *(k for row in self.rows for k in row)]))
        text = io.StringIO(newline="")
        w = csv.DictWriter(text, keys, restval="")
        w.writeheader()
        w.writerows(self.rows)
        return text.getvalue()

    def saved(self) -> str:
        """For a failure's line: where the epochs done so far are."""
        n = len(self.rows)
        return f"; the {n} epoch(s) done are saved in {self.path}" if n else ""

    def summary(self) -> str:
        p, n = self.path, len(self.rows)
        if not n:
            return f"no epoch trained; the config is in {p / 'config.yaml'}"
        return (f"saved {n} epoch(s) to {p}: checkpoint {p / 'checkpoint.pt'} (the full training state), inference weights "
                f"{p / 'model.pt'} (shortcut branches stripped), config {p / 'config.yaml'}, metrics "
                f"{p / 'metrics.csv'}")


def _g(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _describe(trainer) -> list[str]:
    """What is about to be trained, as the trainer built it: the data, the model, the config."""
    cfg, info, prepared, model = trainer.cfg, trainer.info, trainer.data, trainer.model
    if prepared is not None:
        user = cfg.dataset
        test = user.test if user.test is not None else (f"{user.test_fraction:g} of it held out, "
                                                        f"split_seed {user.split_seed}")
        source = f"{user.format} data from {user.train}, test: {test}; prepared in {prepared.path}"
    elif snn_data.info(cfg.dataset).bundled:
        source = "bundled"
    else:
        source = f"files under {cfg.data_root}"
    shape = "x".join(map(str, (info.in_channels, *info.input_size)))
    kind = "images" if info.kind == "static" else f"frames of T={cfg.timesteps}"
    batches, used = len(trainer.train_loader), trainer.steps_per_epoch
    capped = f" ({used} an epoch: max_batches)" if used < batches else ""
    lines = [f"data: {info.name} ({source}): {info.num_classes} classes, {shape} {kind}, "
             f"{len(trainer.train_loader.dataset):,} train / {len(trainer.test_loader.dataset):,} test samples; "
             f"{batches} train batches of {cfg.batch_size}{capped}, {len(trainer.test_loader)} test batches"]
    total = sum(p.numel() for p in model.parameters())
    heads = sum(p.numel() for p in model.shortcuts.parameters())
    options = " (" + ", ".join(f"{k}={v}" for k, v in cfg.arch_kwargs.items()) + ")" if cfg.arch_kwargs else ""
    stages = ", ".join(map(str, model.branch_stages))
    branches = (f"{heads:,} in {len(model.branch_stages)} shortcut branch(es) at stage(s) {stages}, for training "
                f"only (stripped for inference)" if model.branch_stages else "no shortcut branches")
    lines.append(f"model: {cfg.arch}{options}, T={cfg.timesteps}: {total - heads:,} parameters in the main network, "
                 f"{branches}")
    amp = f" ({str(trainer.amp_dtype).removeprefix('torch.')} autocast)" if trainer.amp else ""
    config = cfg.to_params()  # a vanilla trial has no λ₀: not shown
    dims = ", ".join(f"{k}={_g(DIMENSIONS[k].value(config))}" for k in searched() if k in config)
    lines.append(f"config ({cfg.method()}): {dims}, epochs={cfg.epochs}, batch_size={cfg.batch_size}, "
                 f"lr={cfg.lr:g}, seed={cfg.seed}, device={trainer.device}{amp}, "
                 f"{torch.get_num_threads()} torch thread(s)")
    return lines


class _EpochProgress:
    """A training's progress within each epoch, as :class:`snn.training.Trainer`'s ``progress`` hook.

    On a terminal: a tqdm bar on stderr per epoch, over its training batches and then its
    test pass, redrawn at most once a second and erased when the epoch's line is printed.
    Elsewhere (a log, a pipe): a plain line on stderr every ``every`` seconds of an epoch,
    none for a shorter one, so a log shows how a slow epoch goes without a line per batch.
    """

    def __init__(self, epochs: int, stream=None, every: float = 30.0) -> None:
        self.epochs, self.every = epochs, every
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty()) if isatty is not None else False
        self.trainer = None  # set once built: the epoch's number and its test batches
        self.bar = None
        self.epoch, self.train_total, self.total = 0, 0, 0
        self.t0 = self.last = 0.0

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase == "train" and done == 0:  # an epoch starts
            self.close()
            self.epoch = self.trainer.epoch + 1 if self.trainer is not None else self.epoch + 1
            self.train_total = total
            self.total = total + (len(self.trainer.test_loader) if self.trainer is not None else 0)
            self.t0 = self.last = time.monotonic()
            if self.tty:
                from tqdm import tqdm

                self.bar = tqdm(total=self.total, desc=f"epoch {self.epoch}/{self.epochs} train", unit="batch",
                                file=self.stream, leave=False, mininterval=1.0, dynamic_ncols=True)
            return
        at = done if phase == "train" else self.train_total + done
        if self.bar is not None:
            if done == 0:
                self.bar.set_description(f"epoch {self.epoch}/{self.epochs} {phase}", refresh=False)
            self.bar.update(at - self.bar.n)
            return
        now = time.monotonic()
        if not self.tty and now - self.last >= self.every:
            self.last = now
            print(f"progress: epoch {self.epoch}/{self.epochs}, {phase} batch {done}/{total}, "
                  f"{now - self.t0:.0f} s into the epoch", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
