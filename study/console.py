"""What ``snn-study`` shows on the console, and the study folder's log that keeps the rest.

:func:`setup` configures Python's logging for a command: records on stderr, one line each
(a traceback as one line naming the file that holds it in full), Ray's, Tune's and Optuna's
INFO lines only with ``-v``, and Tune's advice that does not apply to a study left out unless
``-vv``. :func:`log_to` adds the study folder's log (:data:`LOG_FILE`), which keeps every
record, tracebacks in full, once the command knows its study. :func:`summary` prints a
study's closing lines. Only the command line calls
these: library code logs through ``logging.getLogger(__name__)`` and configures nothing.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

__all__ = ["LOG_FILE", "UI_URL_ENV", "log_to", "setup", "shown_uri", "summary"]

LOG_FILE = "driver.log"  # in the study folder

# Tune's advice that does not apply to a study, left out unless -vv: logger -> words of the record
_TUNE_ADVICE = {
    # The study keeps two checkpoints per trial (num_to_keep=2), so Tune saves its experiment
    # state whenever a trial has checkpointed twice since the last save, so that the state never
    # names a pruned checkpoint; with short epochs it then warns each time that the saves "may
    # become a bottleneck", asking to change settings chosen on purpose.
    "ray.tune.execution.experiment_state": "may become a bottleneck",
    # Tune fetches a trial's result.json whenever it restarts the trial (PBT's exploit, a retry)
    # and warns of each one not synced yet: the trial restarts from its checkpoint all the same.
    "ray.tune.logger.logger": "Remote file not found",
    # An interrupted Tune run names Tuner.restore(...) to resume it: the study's own last line
    # names 'snn-study resume', which also syncs MLflow and restarts the study's confirm stage.
    "ray.tune.tune": "Resume experiment with",
}


class _Drop(logging.Filter):
    """Drops the records whose message holds ``words``."""

    def __init__(self, words: str) -> None:
        super().__init__()
        self.words = words

    def filter(self, record: logging.LogRecord) -> bool:
        return self.words not in record.getMessage()


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


def log_to(study_dir: Path) -> None:
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


def setup(verbose: int) -> None:
    """Configure logging for a command; ``verbose``: the count of ``-v``."""
    logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO, stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_ConsoleFormatter("%(message)s"))
        if verbose < 1:
            handler.addFilter(_QuietRay())
    for noisy in ("alembic", "mlflow", "urllib3", "filelock", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Optuna logs through a handler of its own, at INFO ("A new study created in RDB ..."): its
    # records go where every other record goes instead, its INFO lines only with -v
    import optuna.logging

    optuna.logging.set_verbosity(logging.INFO if verbose else logging.WARNING)
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    if verbose < 2:
        for name, words in _TUNE_ADVICE.items():
            logging.getLogger(name).addFilter(_Drop(words))


def _show(value: Any) -> str:
    """A value for a console line: numbers to 4 significant digits (0.1234, 2.5e-05)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary(result, extra: list[str]) -> None:
    """The closing lines of ``snn-study run`` and ``resume``: the trials, the study's answer, the
    best trial's value of each dimension searched (a full search's and ``extra``) or, with two
    objectives, the Pareto front's trials, the best model and where to look."""
    recovered = f" ({result.recovered} recovered from a failure by a retry)" if result.recovered else ""
    stopped = f", {result.stopped} stopped early by ASHA" if result.stopped else ""
    if result.guarded:
        stopped += f", {result.guarded} stopped by the firing-rate guard (silent or saturated)"
    confirmed = f", then {result.confirmed} in the confirm stage" if result.confirmed else ""
    click.echo(f"\nstudy {result.name}: {result.trials} trial(s){confirmed}, {result.errored} errored{recovered}"
               f"{stopped}; folder {result.path}")
    for line in result.answer:  # with two objectives, the Pareto front (study.pareto) in place of a best trial
        click.echo(line)
    if result.best and result.front is None:
        acc = result.best["metrics"].get("test_acc")
        from search_spaces import DIMENSIONS, searched

        config = result.best["config"]  # a full search's dimensions and the spec's extra ones
        shown = [k for k in DIMENSIONS if (k in searched() or k in extra) and k in config]
        cfg = ", ".join(f"{k}={_show(DIMENSIONS[k].value(config))}" for k in shown)
        click.echo(f"best trial {result.best['trial_id']}: test_acc={acc:.4f} ({cfg})")
    if result.model is not None:
        click.echo(f"best model: {result.model.uri} (trial {result.model.trial_id}); load it with "
                   f"mlflow.pytorch.load_model('{result.model.uri}')")
    from study.spec import is_tracking_server

    uri, shown = result.tracking_uri, shown_uri(result.tracking_uri)
    if not is_tracking_server(uri):  # a file store: the ui command serves it
        where = f"{uri} (snn-study ui {result.path})"
    else:  # the address a person opens; the one the driver writes to where it differs (docker compose)
        where = shown if shown == uri else f"{shown} (the driver writes to {uri})"
    click.echo(f"MLflow: experiment '{result.experiment}' at {where}; report: snn-study report {result.path}")


UI_URL_ENV = "MLFLOW_UI_URL"


def shown_uri(tracking_uri: str) -> str:
    """The address a person opens a tracking server at: ``$MLFLOW_UI_URL`` where it differs from
    the one the driver writes to (in docker compose the driver writes to http://mlflow:5000,
    which only resolves inside the stack; the host's browser opens http://127.0.0.1:5000)."""
    return os.environ.get(UI_URL_ENV) or tracking_uri
