"""``snn-study``: a thin command line over :mod:`study` (and :mod:`snn.training` for ``train``).

Each command checks its options, then calls one library function that a Python user
could call too. Failures end with one line on stderr and a non-zero exit: 2 for a bad
spec or bad options (before anything starts or is written), 1 for anything else.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

__all__ = ["main"]

log = logging.getLogger("snn-study")


class _TuneStateWarning(logging.Filter):
    """Drops Tune's advice that the experiment-state saves "may become a bottleneck".

    The study keeps two checkpoints per trial (``num_to_keep=2``), so Tune saves its
    experiment state whenever a trial has checkpointed twice since the last save, so that
    the state never names a pruned checkpoint; with short epochs it then warns each time,
    asking to change settings chosen on purpose.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "may become a bottleneck" not in record.getMessage()


class _ConsoleFormatter(logging.Formatter):
    """The console's records, a traceback as one line naming the file that holds it in full."""

    log_file: Path | None = None  # the study's log, once the command knows its study

    def format(self, record: logging.LogRecord) -> str:
        if not (record.exc_info and record.exc_info[1] is not None):
            return super().format(record)
        error = record.exc_info[1]
        short = logging.makeLogRecord(record.__dict__)  # the other handlers keep the traceback
        short.exc_info, short.exc_text = None, None
        first = (str(error).strip().splitlines() or [""])[0][:200]
        where = f"; the traceback is in {self.log_file}" if self.log_file is not None else ""
        return f"{super().format(short)} ({type(error).__name__}: {first}){where}"


class _StudyLog(logging.Handler):
    """Every record, tracebacks in full, in the study folder's log once that folder exists."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.DEBUG)
        self.path = path
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if not self.path.parent.is_dir():  # a study refused before its folder was made leaves nothing
            return
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(self.format(record) + "\n")
        except OSError:
            self.handleError(record)


LOG_FILE = "driver.log"  # in the study folder


def _log_to(study_dir: Path) -> None:
    """Send every record to the study folder's log as well; the console names it for tracebacks.

    Ray's "ray" logger has a console handler of its own and does not propagate; ``ray.init``
    (with ``configure_logging=False``) then removes that handler, which left Ray's and
    Tune's warnings to Python's last-resort handler, tracebacks and all. Here they go where
    every other record goes: the console's one line, and the study's log in full.
    """
    import ray  # noqa: F401  (sets up the "ray" logger, whose handler is replaced here)

    _ConsoleFormatter.log_file = study_dir / LOG_FILE
    ray_logger = logging.getLogger("ray")
    ray_logger.handlers.clear()
    ray_logger.propagate = True
    logging.getLogger().addHandler(_StudyLog(_ConsoleFormatter.log_file))


class _QuietRay(logging.Filter):
    """Ray's and Tune's own INFO lines stay in the study's log, not on the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith("ray")


def _setup_logging(verbose: int) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO, stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_ConsoleFormatter("%(message)s"))
        if verbose < 1:
            handler.addFilter(_QuietRay())
    for noisy in ("alembic", "mlflow", "urllib3", "filelock", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if verbose < 2:
        logging.getLogger("ray.tune.execution.experiment_state").addFilter(_TuneStateWarning())
    # MLflow prints two "View run/experiment" links each time a run on a server ends, which the
    # driver does for every trial (and again as it logs the trial's model): a thousand-trial
    # study would bury its console under them. The study prints its own link; a user who wants
    # MLflow's sets the variable to false.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def _fail(message: str, code: int = 1) -> None:
    # one line, whatever the message echoes (a path or value may hold a newline or a control character)
    line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    click.echo(f"snn-study: error: {line}", err=True)
    sys.exit(code)


def _overrides(sets: tuple[str, ...]) -> dict[str, Any]:
    from study.spec import SpecError, parse_override

    try:
        return dict(parse_override(s) for s in sets)
    except SpecError as e:
        _fail(str(e), 2)
    return {}


def _load(spec_path: str | None, sets: tuple[str, ...]):
    from study.spec import SpecError, load_spec, quickstart_spec

    try:
        return load_spec(spec_path, _overrides(sets)) if spec_path else quickstart_spec(_overrides(sets))
    except SpecError as e:
        _fail(str(e), 2)


_ADDRESS = click.option("--address", envvar="RAY_ADDRESS", default=None,
                        help="Ray cluster to join, e.g. 'auto' or ray://head:10001 (env RAY_ADDRESS). "
                             "Default: start a local Ray.")
_SET = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                    help="Override a spec key, e.g. --set train.epochs=2 --set trials=3 (repeatable).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More output (-vv for debug logs).")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """Hyperparameter studies of shortcut back-propagation for spiking neural networks
    (Guo et al., NeurIPS 2024) on Ray Tune, Optuna and MLflow."""
    ctx.obj = {"verbose": verbose}
    _setup_logging(verbose)
    from study.tracking import MLFLOW_ENVIRONMENT  # MLflow's retries and progress bars: environment only

    for key, value in MLFLOW_ENVIRONMENT.items():
        os.environ.setdefault(key, value)  # a value the user set is kept


@cli.command()
@click.argument("spec", required=False, type=click.Path(dir_okay=False))
@_SET
@_ADDRESS
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None,
              help="MLflow tracking URI, e.g. http://127.0.0.1:5000 (env MLFLOW_TRACKING_URI). "
                   "Default: the spec's (sqlite:///mlflow.db in the working directory).")
@click.pass_context
def run(ctx: click.Context, spec: str | None, sets: tuple[str, ...], address: str | None,
        tracking_uri: str | None) -> None:
    """Run the study in SPEC (a YAML file); without SPEC, the built-in quick-start study."""
    s = _load(spec, sets)
    _log_to(s.study_dir())
    from study.folder import StudyError
    from study.tuner import run_study

    try:
        result = run_study(s, address=address, tracking_uri=tracking_uri, verbose=1 + ctx.obj["verbose"])
    except StudyError as e:
        _fail(str(e), e.exit_code)
    _summary(result)


@cli.command()
@click.argument("spec", required=False, type=click.Path(dir_okay=False))
@_SET
def check(spec: str | None, sets: tuple[str, ...]) -> None:
    """Check SPEC and print what 'snn-study run SPEC' would do, starting nothing.

    Prints the trial config, the search's dimensions and ranges, the data (a user's data is
    read, checked and prepared here, once, for the run to reuse), the resources per trial
    and the concurrency to expect. Exits 2 for a spec or data that can never run, 1 for
    data files that are missing here.
    """
    s = _load(spec, sets)
    from study.folder import StudyError
    from study.preflight import plan, prepare_data

    prepared, missing, notes = None, None, []
    try:
        prepared = prepare_data(s, say=notes.append, fetch=False)
    except StudyError as e:
        if e.exit_code != 1 or s.trial_config().dataset_name != s.dataset:  # a user's data: its own check
            _fail(str(e), e.exit_code)
        missing = str(e)  # a built-in dataset absent here: the rest of the plan still holds
    click.echo(f"{spec or 'the quick-start'}: valid")
    absent = next((n for n in notes if "the run downloads it" in n), None)
    for line in plan(s, prepared, "NOT FOUND here (the run would stop): " + missing if missing else
                     absent and "not here yet; the run downloads them (download: true)"):
        click.echo(line)
    if missing:
        _fail(missing)


def _summary(result) -> None:
    recovered = f" ({result.recovered} recovered from a failure by a retry)" if result.recovered else ""
    stopped = f", {result.stopped} stopped early by ASHA" if result.stopped else ""
    confirmed = f", then {result.confirmed} in the confirm stage" if result.confirmed else ""
    click.echo(f"\nstudy {result.name}: {result.trials} trial(s){confirmed}, {result.errored} errored{recovered}"
               f"{stopped}; folder {result.path}")
    for line in result.answer:
        click.echo(line)
    if result.best:
        acc = result.best["metrics"].get("test_acc")
        keys = ("lambda0", "schedule", "branches", "surrogate", "surrogate_param")
        cfg = ", ".join(f"{k}={result.best['config'].get(k)}" for k in keys)
        click.echo(f"best trial {result.best['trial_id']}: test_acc={acc:.4f} ({cfg})")
    if result.model is not None:
        click.echo(f"best model: {result.model.uri} (trial {result.model.trial_id}); load it with "
                   f"mlflow.pytorch.load_model('{result.model.uri}')")
    from study.spec import is_tracking_server

    uri, shown = result.tracking_uri, _shown(result.tracking_uri)
    if not is_tracking_server(uri):  # a file store: the ui command serves it
        where = f"{uri} (snn-study ui {result.path})"
    else:  # the address a person opens; the one the driver writes to where it differs (docker compose)
        where = shown if shown == uri else f"{shown} (the driver writes to {uri})"
    click.echo(f"MLflow: experiment '{result.experiment}' at {where}; report: snn-study report {result.path}")


UI_URL_ENV = "MLFLOW_UI_URL"


def _shown(tracking_uri: str) -> str:
    """The address a person opens a tracking server at: ``$MLFLOW_UI_URL`` where it differs from
    the one the driver writes to (in docker compose the driver writes to http://mlflow:5000,
    which only resolves inside the stack; the host's browser opens http://127.0.0.1:5000)."""
    return os.environ.get(UI_URL_ENV) or tracking_uri


@cli.command()
@click.argument("study")
@_ADDRESS
@click.pass_context
def resume(ctx: click.Context, study: str, address: str | None) -> None:
    """Resume the interrupted study in folder STUDY (or named STUDY under ./studies)."""
    from study.folder import StudyError, open_study

    try:
        _log_to(open_study(study).path)  # a missing or unreadable study fails here, before Ray or MLflow
    except StudyError as e:
        _fail(str(e), e.exit_code)
    from study.tuner import resume_study

    try:
        result = resume_study(study, address=address, verbose=1 + ctx.obj["verbose"])
    except StudyError as e:
        _fail(str(e), e.exit_code)
    _summary(result)


@cli.command()
@click.argument("study")
def sync(study: str) -> None:
    """Write into MLflow whatever the trial folders of STUDY hold and MLflow lacks.

    Idempotent: nothing is written twice. Use it after the tracking server was down, or
    after a driver died: the trials' checkpoints record every epoch they finished.
    """
    from study.folder import StudyError, open_study

    try:
        folder = open_study(study)
    except StudyError as e:
        _fail(str(e), e.exit_code)
    _reap(folder.path)
    from study.tracking import sync_study

    try:
        summary = sync_study(folder)
    except Exception as e:  # the store refused or is down: one line, nothing half-claimed
        _fail(f"mlflow.tracking_uri: could not write to {folder.tracking_uri} ({type(e).__name__}: "
              f"{str(e)[:200]}); nothing is lost, run 'snn-study sync {study}' again once it answers")
    click.echo(f"synced {summary.trials} trial(s) of {folder.spec.name} to {folder.tracking_uri}: "
               f"{summary.epochs} epoch(s) written, {summary.closed} run(s) closed")
    if summary.failed:  # each was named in a warning above, with why
        _fail(f"{len(summary.failed)} trial(s) could not be written: {', '.join(sorted(summary.failed))}")


def _reap(study_dir: Path) -> None:
    """Stop what a killed driver of this study left of its local Ray (nothing while it runs)."""
    from study import local_ray

    stopped, _ = local_ray.stop(study_dir)
    if stopped:
        click.echo(f"stopped {stopped} process(es) of the local Ray that the study's previous driver left", err=True)


@cli.command()
@click.argument("study")
def stop(study: str) -> None:
    """Stop the study in folder STUDY: its driver (which saves Tune's state, for 'resume') and the
    processes of the local Ray it started, including any a killed driver left behind."""
    from study import local_ray
    from study.folder import StudyError, open_study

    try:
        folder = open_study(study)
    except StudyError as e:
        _fail(str(e), e.exit_code)
    stopped, running = local_ray.stop(folder.path, driver_too=True)
    if running:
        _fail(f"{study}: the study's driver did not stop within a minute; stop it yourself (Ctrl-C where it runs)")
    click.echo(f"stopped study {folder.spec.name}: {stopped} process(es) of its local Ray stopped; "
               f"'snn-study resume {study}' continues it")


@cli.command()
@click.argument("spec", required=False, type=click.Path(dir_okay=False))
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="A trial's config.yaml (from its MLflow artifacts) to train exactly that trial.")
@click.option("--run-id", default=None, metavar="RUN_ID",
              help="Re-run the trial of this MLflow run (its config and thread count) and compare every epoch "
                   "with the metrics it recorded.")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default="sqlite:///mlflow.db", show_default=True,
              help="The MLflow store of --run-id (env MLFLOW_TRACKING_URI).")
@_SET
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch CPU threads; set it to the trial's CPUs to reproduce a trial bit for bit "
                   "(with --run-id: the run's torch_threads unless given).")
@click.option("--out", default=None, metavar="DIR",
              help="Folder for the results: checkpoint.pt, model.pt, config.yaml, metrics.csv (default: a new "
                   "runs/train-YYYYmmdd-HHMMSS under the working directory). One that holds results is refused.")
@click.pass_context
def train(ctx: click.Context, spec: str | None, config_file: str | None, run_id: str | None, tracking_uri: str,
          sets: tuple[str, ...], threads: int | None, out: str | None) -> None:
    """Train one trial without Ray, through the same training loop as the study.

    The hyperparameters are the spec's recipe with the paper's setting for the searched
    dimensions, the --config file's, or both, with --set KEY=VALUE applied last (keys
    are trial config names: lambda0, schedule, branches, surrogate, surrogate_param,
    epochs, lr, seed, ...).

    Before the first epoch three lines on stderr say what it trains: the data, the model
    (parameters of the main network and of the shortcut branches) and the config. Each
    epoch then shows a progress bar on stderr (on a terminal; in a log or a pipe, a line
    every 30 s of a long epoch instead) and ends with one line of metrics on stdout.

    After every epoch the results are written to the --out folder (default: a new
    runs/train-YYYYmmdd-HHMMSS under the working directory), each file whole or not at
    all (written under a temporary name, then renamed), so an interrupted training keeps
    its last finished epoch:

    \b
      checkpoint.pt  the trainer's state (model, optimizer, LR schedule, RNG): Trainer.load_state_dict takes it
      model.pt       the inference weights, shortcut branches stripped; they load into
                     snn.models.strip_shortcuts(snn.models.build(...))
      config.yaml    the trial's config: 'train --config DIR/config.yaml' trains it again
      metrics.csv    one row per epoch

    A line on stdout names them at the end.

    With --run-id, the trial of that MLflow run is trained again from the run alone (its
    config.yaml, else its params; torch threads as the trial had them) and, at the end, one
    line says whether every epoch's recorded metrics were reproduced exactly, or which
    differs and by how much.
    """
    import yaml
    from pydantic import ValidationError

    from snn.config import TrainConfig, first_error

    if run_id is not None and (spec or config_file):
        raise click.UsageError("give --run-id, or a SPEC or --config, not both")
    if run_id is None and ctx.get_parameter_source("tracking_uri") == click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("--tracking-uri goes with --run-id")
    if spec and config_file:
        raise click.UsageError("give a SPEC or --config, not both")
    results = _Results(_out_dir(out))
    overrides = _overrides(sets)
    trial = _trial_run(tracking_uri, run_id) if run_id is not None else None
    try:
        if trial is not None:
            cfg = TrainConfig.model_validate({**trial.config, **overrides})
        elif config_file:
            try:
                config = yaml.safe_load(Path(config_file).read_text())
            except (OSError, ValueError, yaml.YAMLError) as e:  # ValueError: not UTF-8, a NUL in the path
                _fail(f"{config_file}: cannot read the trial's config ({getattr(e, 'strerror', None) or e})")
            if not isinstance(config, dict):
                _fail(f"{config_file}: a trial's config is a YAML mapping of parameters to values", 2)
            cfg = TrainConfig.model_validate({**config, **overrides})
        else:
            cfg = _load(spec, ()).trial_config(**overrides)
    except ValidationError as err:
        field, message = first_error(err)
        _fail(f"{field}: {message}", 2)
    import torch

    if trial is not None and not threads:
        threads = trial.threads
    if threads:
        torch.set_num_threads(threads)
    if trial is not None:
        unknown = "" if threads else " (the run records no torch_threads: float sums may differ)"
        changed = f", changed by --set {' '.join(sets)}" if sets else ""
        click.echo(f"re-running trial {trial.trial_id} of study {trial.study} (run {trial.run_id}) from its "
                   f"{trial.source}{changed}, {torch.get_num_threads()} torch thread(s){unknown}")
    rerun: list[dict[str, float]] = []
    progress = _EpochProgress(cfg.epochs)

    def start(trainer) -> None:
        progress.trainer = trainer
        for line in _describe(trainer):
            click.echo(line, err=True)
        results.start(trainer.cfg)

    def report(metrics: dict[str, float], trainer) -> None:
        progress.close()  # the bar gives way to the epoch's line
        rerun.append(dict(metrics))
        click.echo(f"epoch {int(metrics['epoch'])}/{cfg.epochs}  train_loss={metrics['train_loss']:.4f}  "
                   f"train_acc={metrics['train_acc']:.4f}  test_acc={metrics['test_acc']:.4f}  "
                   f"lambda={metrics['lambda']:.4f}  firing_rate={metrics['firing_rate']:.4f}  "
                   f"{metrics['images_per_s']:.0f} img/s")
        results.epoch(metrics, trainer)

    prepared = _prepare(cfg)
    try:
        _fit(cfg, report, progress=progress, start=start, saved=results.saved, data=prepared)
    finally:
        progress.close()
    if results.made:
        click.echo(results.summary())
    if trial is not None:
        line = _compare(trial.history, rerun)
        click.echo(line + ("; the config was changed by --set" if sets else ""))


def _trial_run(tracking_uri: str, run_id: str):
    """The trial of an MLflow run (:func:`study.tracking.read_trial_run`), its failures as one line."""
    from study.tracking import RunNotFound, read_trial_run

    try:
        return read_trial_run(tracking_uri, run_id)
    except (RunNotFound, ConnectionError) as e:  # no such run, or the store does not answer
        _fail(str(e))
    except ValueError as e:  # a run that is not a trial's
        _fail(str(e), 2)


_TIMING = ("epoch", "epoch_time", "images_per_s")  # not compared: the step itself, and wall-clock measures


def _compare(recorded: dict[int, dict[str, float]], rerun: list[dict[str, float]]) -> str:
    """One line: every metric the run recorded for the re-run's epochs reproduced exactly, or
    the first that differs (epoch, metric, by how much) and how many others do."""
    import math

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


def _fit(cfg, report, *, saved=None, **hooks) -> None:
    """Train through the study's own loop (``hooks``: :func:`snn.training.fit`'s ``progress``
    and ``start``); its failures as one line each, ending with ``saved()`` (where the epochs
    done so far are) where given."""
    from snn.training import TrainingDiverged, TrainingStopped, fit

    def where() -> str:
        return saved() if saved is not None else ""

    try:
        fit(cfg, report, **hooks)
    except (TrainingDiverged, TrainingStopped) as e:
        _fail(str(e) + where())
    except ValueError as e:  # a setting the data or model refuse
        _fail(str(e), 2)
    except OSError as e:  # missing or unreadable data
        _fail(str(e) + where())


def _prepare(cfg):
    """A user's data, prepared (or read from its cache) with its progress on stderr; None for a
    built-in dataset. Failures as in :func:`_fit`."""
    from snn import data
    from snn.config import UserData
    from study.preflight import PrepareProgress

    if not isinstance(cfg.dataset, UserData):
        return None

    def say(line: str) -> None:
        click.echo(line, err=True)

    try:
        data.check_root(cfg.data_root)
        return data.prepare(cfg.dataset, cfg.data_root, cfg.timesteps, log=say, progress=PrepareProgress(say))
    except ValueError as e:  # data that can never train as described
        _fail(str(e), 2)
    except OSError as e:  # missing or unreadable files
        _fail(str(e))


_OUTPUTS = ("checkpoint.pt", "model.pt", "config.yaml", "metrics.csv")  # what train writes to its folder


def _out_dir(out: str | None) -> Path:
    """``train``'s results folder: --out, or a new ``runs/train-<date>-<time>`` under the working
    directory. Nothing is made here (a training refused before its first epoch leaves nothing);
    a file, or a folder holding a training's results already, is refused (exit 2)."""
    if out is None:
        import time

        stamp = time.strftime("%Y%m%d-%H%M%S")
        path, n = Path("runs") / f"train-{stamp}", 1
        while path.exists():
            n += 1
            path = Path("runs") / f"train-{stamp}-{n}"
        return path
    if not out or "\x00" in out:
        _fail(f"--out: {out!r} is not a folder's path", 2)
    path = Path(out)
    try:
        if path.exists() and not path.is_dir():
            _fail(f"--out: {out} is a file; give a folder", 2)
        held = [name for name in _OUTPUTS if (path / name).exists()]
    except OSError as e:
        _fail(f"--out: {out}: {e.strerror or e}", 2)
    if held:
        _fail(f"--out: {out} holds a training's results already ({', '.join(held)}); give another folder", 2)
    return path


class _Results:
    """What ``train`` writes to its folder (:data:`_OUTPUTS`): the config when training starts,
    then the checkpoint, the inference weights and the metrics after every epoch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, float]] = []
        self.made = False

    def _write(self, name: str, write) -> None:
        """``write(file)`` into ``name`` whole or not at all (:func:`snn.data.write_whole`): an
        interrupted training keeps the files of its last finished epoch."""
        from snn.data import write_whole

        try:
            write_whole(self.path / name, write)
        except OSError as e:
            _fail(f"--out: cannot write {self.path / name} ({e.strerror or e})")

    def start(self, cfg) -> None:
        import yaml

        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            _fail(f"--out: cannot make the folder {self.path} ({e.strerror or e})")
        self.made = True
        text = yaml.safe_dump(cfg.to_dict(), sort_keys=True)  # as a trial's config.yaml artifact
        self._write("config.yaml", lambda f: f.write(text.encode("utf-8")))

    def epoch(self, metrics: dict[str, float], trainer) -> None:
        import torch

        from snn.models import strip_shortcuts

        self.rows.append(dict(metrics))
        weights = {k: v.detach().cpu() for k, v in strip_shortcuts(trainer.model).state_dict().items()}
        self._write("checkpoint.pt", lambda f: torch.save(trainer.state_dict(), f))
        self._write("model.pt", lambda f: torch.save(weights, f))
        self._write("metrics.csv", lambda f: f.write(self._metrics().encode("utf-8")))

    def _metrics(self) -> str:
        """The epochs' metrics as CSV, one row per epoch."""
        import csv
        import io

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


def _describe(trainer) -> list[str]:
    """What ``train`` is about to train, as the trainer built it: the data, the model, the config."""
    import torch

    from snn import data as snn_data

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
    param = "default" if cfg.surrogate_param is None else f"{cfg.surrogate_param:g}"
    amp = f" ({str(trainer.amp_dtype).removeprefix('torch.')} autocast)" if trainer.amp else ""
    lines.append(f"config ({cfg.method()}): lambda0={cfg.lambda0:g}, schedule={cfg.schedule}, branches={cfg.branches}, "
                 f"surrogate={cfg.surrogate} (param {param}), epochs={cfg.epochs}, batch_size={cfg.batch_size}, "
                 f"lr={cfg.lr:g}, seed={cfg.seed}, device={trainer.device}{amp}, "
                 f"{torch.get_num_threads()} torch thread(s)")
    return lines


class _EpochProgress:
    """``train``'s progress within each epoch, as :class:`snn.training.Trainer`'s ``progress`` hook.

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
        import time

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


@cli.command()
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default="sqlite:///mlflow.db", show_default=True,
              help="MLflow tracking URI (env MLFLOW_TRACKING_URI).")
@click.option("--experiment", default="paper-baselines", show_default=True)
def baselines(tracking_uri: str, experiment: str) -> None:
    """Log every row of the paper's Tables 1-4 to an MLflow experiment (idempotent)."""
    from study.tracking import check_tracking_uri, log_baselines

    try:
        check_tracking_uri(tracking_uri)
    except ConnectionError as e:
        _fail(str(e))
    n = log_baselines(tracking_uri, experiment, None)
    click.echo(f"logged {n} new baseline run(s) to experiment '{experiment}' at {tracking_uri}")


@cli.command()
@click.argument("study")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Folder (default: STUDY/report).")
def report(study: str, out: str | None) -> None:
    """Write a table of trials and baselines, the best config and plots for STUDY."""
    from study.folder import StudyError, open_study

    try:
        _reap(open_study(study).path)
    except StudyError as e:
        _fail(str(e), e.exit_code)
    from study.report import write_report

    try:
        r = write_report(study, out)
    except StudyError as e:
        _fail(str(e), e.exit_code)
    click.echo(f"{len(r.trials)} trial(s); report written to {r.path / 'report.md'}")
    if not r.baselines:
        click.echo("the paper has no results on this dataset: no baselines to compare with")


@cli.command()
@click.argument("study", required=False)
@click.option("--tracking-uri", default=None, help="Tracking store to show (default: the study's).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; anything but 127.0.0.1 exposes the UI to the network.")
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
def ui(study: str | None, tracking_uri: str | None, host: str, port: int) -> None:
    """Serve MLflow's UI on a study's tracking store (one server, on 127.0.0.1 unless asked
    otherwise) and print the link to the study's runs table."""
    from study import views
    from study.folder import StudyError, open_study
    from study.spec import is_tracking_server

    folder = None
    if study:
        try:
            folder = open_study(study)
        except StudyError as e:
            _fail(str(e), e.exit_code)
        _reap(folder.path)
    tracking_uri = tracking_uri or (folder.tracking_uri if folder else "sqlite:///mlflow.db")
    if is_tracking_server(tracking_uri):
        click.echo(f"the store is a server already: open {_shown(tracking_uri)}")
        return
    try:
        views.check_port(host, port)
        experiment_id = views.classic_experiment(tracking_uri, folder.spec.experiment) if folder else None
        link = (views.study_link(experiment_id, host, port) if experiment_id is not None
                else views.base_url(host, port))
        sys.exit(views.run_view(views.mlflow_ui_command(tracking_uri, host, port),
                                views.base_url(host, port) + views.UI_HEALTH, link, env=views.mlflow_ui_env(),
                                log=folder.path / "ui.log" if folder else None, echo=click.echo))
    except views.ViewError as e:
        _fail(str(e))


@cli.command()
@click.argument("study")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; anything but 127.0.0.1 exposes the dashboard to the network.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
def dashboard(study: str, host: str, port: int) -> None:
    """Serve optuna-dashboard on a study's Optuna storage (one process, on 127.0.0.1 unless asked
    otherwise) and print the link to the study's page."""
    from study import views
    from study.folder import StudyError, open_study

    try:
        folder = open_study(study)
    except StudyError as e:
        _fail(str(e), e.exit_code)
    try:
        storage = views.optuna_storage(folder)
        views.check_port(host, port)
        link = views.dashboard_link(host, port, views.optuna_study_id(storage, folder.spec.name))
        sys.exit(views.run_view(views.dashboard_command(storage, host, port),
                                views.base_url(host, port) + views.DASHBOARD_HEALTH, link,
                                log=folder.path / "dashboard.log", echo=click.echo))
    except views.ViewError as e:
        _fail(str(e))


@cli.command()
@click.option("--arch", default="resnet34", show_default=True)
@click.option("--dataset", default="digits", show_default=True)
@click.option("--epochs", default=3, show_default=True, type=int)
@click.option("--timesteps", default=2, show_default=True, type=int)
@click.option("--max-batches", default=None, type=int, help="Cap on batches per epoch.")
def gradients(arch: str, dataset: str, epochs: int, timesteps: int, max_batches: int | None) -> None:
    """Train with and without shortcut branches and print per-stage gradient norms per epoch.

    Measures the claim of the paper's Fig. 2 (shallow-layer gradients vanish without
    shortcuts) during real training rather than assuming it.
    """
    from pydantic import ValidationError

    from snn.config import METHODS, TrainConfig, first_error

    for method in ("vanilla", "evolutionary"):
        try:
            cfg = TrainConfig(dataset=dataset, arch=arch, timesteps=timesteps, epochs=epochs, batch_size=64,
                              max_batches=max_batches, **METHODS[method])
        except ValidationError as err:
            field, message = first_error(err)
            _fail(f"--{field.replace('_', '-')}: {message}", 2)
        click.echo(f"== {arch} on {dataset}, {method} (branches={cfg.branches})")

        def report(metrics: dict[str, float], trainer) -> None:
            norms = "  ".join(f"{k.removeprefix('grad_norm_')}={v:.3e}" for k, v in sorted(metrics.items())
                              if k.startswith("grad_norm_"))
            click.echo(f"epoch {int(metrics['epoch'])}: test_acc={metrics['test_acc']:.4f}  {norms}")

        _fit(cfg, report)


def _traceback_file() -> Path:
    import os

    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "snn-study" / "last-error.txt"


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``snn-study`` console script.

    Every failure ends as one line on stderr: click's usage errors too (exit 2), and an
    unexpected exception, whose traceback goes to a file the line names (exit 1).
    """
    try:
        code = cli.main(args=argv, prog_name="snn-study", standalone_mode=False)
    except click.ClickException as e:  # a bad option or argument
        _fail(" ".join(e.format_message().split()), e.exit_code)
    except (click.Abort, KeyboardInterrupt):
        _fail("interrupted", 130)
    except Exception as e:  # a bug: one line here, the traceback where it can be read and reported
        import traceback

        path = _traceback_file()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(traceback.format_exc())
            where = f"; the traceback is in {path}"
        except OSError:
            where = ""
        _fail(f"internal error (a bug; please report it) {type(e).__name__}: {' '.join(str(e).split())[:300]}{where}")
    else:
        sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
