"""``snn-study``: a thin command line over :mod:`study`.

Each command checks its options, then calls one library function that a Python user
could call too. Failures end with one line on stderr and a non-zero exit: 2 for a bad
spec or bad options (before anything starts or is written), 1 for anything else.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from study import console

__all__ = ["main", "process_settings"]


# Tune's JSON and CSV loggers: each trial's result.json and progress.csv, which the study reads
_TUNE_LOGGERS = ("ray.tune.logger.JsonLoggerCallback", "ray.tune.logger.CSVLoggerCallback")


def process_settings() -> None:
    """Settings of the ``snn-study`` process for the libraries it drives, made through the
    environment variables they read (none has another switch); a value the user set is kept.
    Every command makes them first; a program that runs studies as ``snn-study`` does calls it."""
    # MLflow prints two "View run/experiment" links each time a run on a server ends, which the
    # driver does for every trial (and again as it logs the trial's model): a thousand-trial
    # study would bury its console under them. The study prints its own link; a user who wants
    # MLflow's sets the variable to false.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # Tune adds a TensorBoard logger to every run, a cost on the driver at every result that MLflow
    # makes redundant (docs/performance.md); only this variable leaves it out, with Tune's JSON and
    # CSV loggers, which the study keeps by naming them in RAY_TUNE_CALLBACKS (read by every Tune
    # run, a resumed study's too, whose restored RunConfig names no logger). A user who sets
    # TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=0 gets all three.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] == "1":
        named = [c.strip() for c in os.environ.get("RAY_TUNE_CALLBACKS", "").split(",") if c.strip()]
        os.environ["RAY_TUNE_CALLBACKS"] = ",".join(named + [c for c in _TUNE_LOGGERS if c not in named])
    # MLflow's HTTP retries and artifact progress bars (docs/reliability.md)
    from study.tracking import MLFLOW_ENVIRONMENT

    for key, value in MLFLOW_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


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

    overrides = _overrides(sets)
    if os.environ.get("SNN_STUDY_LOCAL"):  # the local folder of studies on remote storage, unless --set
        overrides.setdefault("local_dir", os.environ["SNN_STUDY_LOCAL"])
    try:
        return load_spec(spec_path, overrides) if spec_path else quickstart_spec(overrides)
    except SpecError as e:
        _fail(str(e), 2)


def _open(study: str):
    """The study in folder STUDY (or named STUDY under ./studies), or the one line why not."""
    from study.folder import StudyError, open_study

    try:
        return open_study(study)
    except StudyError as e:
        _fail(str(e), e.exit_code)


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
    process_settings()
    console.setup(verbose)


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
    console.log_to(s.study_dir())
    from study.folder import StudyError
    from study.tuner import run_study

    try:
        result = run_study(s, address=address, tracking_uri=tracking_uri, verbose=1 + ctx.obj["verbose"])
    except StudyError as e:
        _fail(str(e), e.exit_code)
    console.summary(result, s.search.dims)


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
    from study.preflight import check_spec, plan

    prepared, missing, notes = None, None, []
    try:
        prepared = check_spec(s, say=notes.append, fetch=False)
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


@cli.command()
@click.argument("study")
@_ADDRESS
@click.pass_context
def resume(ctx: click.Context, study: str, address: str | None) -> None:
    """Resume the interrupted study in folder STUDY (or named STUDY under ./studies)."""
    folder = _open(study)  # a missing or unreadable study fails here, before Ray or MLflow
    console.log_to(folder.path)
    from study.folder import StudyError
    from study.tuner import resume_study

    try:
        result = resume_study(study, address=address, verbose=1 + ctx.obj["verbose"])
    except StudyError as e:
        _fail(str(e), e.exit_code)
    console.summary(result, folder.spec.search.dims)


@cli.command()
@click.argument("study")
def sync(study: str) -> None:
    """Write into MLflow whatever the trial folders of STUDY hold and MLflow lacks.

    Idempotent: nothing is written twice. Use it after the tracking server was down, or
    after a driver died: the trials' checkpoints record every epoch they finished.
    """
    folder = _open(study)
    _reap(folder.path)
    from snn.config import one_line
    from study.tracking import sync_study

    try:
        summary = sync_study(folder)
    except Exception as e:  # the store refused or is down: one line, nothing half-claimed
        _fail(f"mlflow.tracking_uri: could not write to {folder.tracking_uri} ({type(e).__name__}: "
              f"{one_line(e)}); nothing is lost, run 'snn-study sync {study}' again once it answers")
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

    folder = _open(study)
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
    are trial config names, the fields of snn.config.TrainConfig: lambda0, epochs, lr,
    seed, ...).

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
    if run_id is not None and (spec or config_file):
        raise click.UsageError("give --run-id, or a SPEC or --config, not both")
    if run_id is None and ctx.get_parameter_source("tracking_uri") == click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("--tracking-uri goes with --run-id")
    if spec and config_file:
        raise click.UsageError("give a SPEC or --config, not both")
    from study import single_trial
    from study.folder import StudyError

    try:
        folder = single_trial.results_dir(out)
        overrides = _overrides(sets)
        trial = single_trial.trial_of_run(tracking_uri, run_id) if run_id is not None else None
        cfg = single_trial.train_config(overrides, trial=trial, config_file=config_file,
                                        spec=None if trial is not None or config_file else _load(spec, ()))
        import torch

        if trial is not None and not threads:
            threads = trial.threads
        if threads:  # the process's torch threads: the command's own setting
            torch.set_num_threads(threads)
        if trial is not None:
            unknown = "" if threads else " (the run records no torch_threads: float sums may differ)"
            changed = f", changed by --set {' '.join(sets)}" if sets else ""
            click.echo(f"re-running trial {trial.trial_id} of study {trial.study} (run {trial.run_id}) from its "
                       f"{trial.source}{changed}, {torch.get_num_threads()} torch thread(s){unknown}")
        single_trial.train_trial(cfg, folder, trial=trial, changed=bool(sets), echo=click.echo,
                                 say=lambda line: click.echo(line, err=True))
    except StudyError as e:
        _fail(str(e), e.exit_code)


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
    _reap(_open(study).path)
    from study.folder import StudyError
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
    from study.spec import is_tracking_server

    folder = None
    if study:
        folder = _open(study)
        _reap(folder.path)
    tracking_uri = tracking_uri or (folder.tracking_uri if folder else "sqlite:///mlflow.db")
    if is_tracking_server(tracking_uri):
        click.echo(f"the store is a server already: open {console.shown_uri(tracking_uri)}")
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

    folder = _open(study)
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
@click.argument("source")
@click.option("--format", "fmt", default="nir", show_default=True,
              help="nir: the Neuromorphic Intermediate Representation (Lava, Rockpool, Sinabs, snnTorch, ...).")
@click.option("-o", "--out", default="model.nir", show_default=True, type=click.Path(dir_okay=False),
              help="The file to write, e.g. -o best.nir.")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default="sqlite:///mlflow.db", show_default=True,
              help="The MLflow store of a RUN_ID or models:/ SOURCE (env MLFLOW_TRACKING_URI); a study names its own.")
def export(source: str, fmt: str, out: str, tracking_uri: str) -> None:
    """Export a trained network, shortcut branches stripped, for neuromorphic hardware (docs/nir.md).

    SOURCE is a study (folder or name: its best model), a trial's MLflow run id, or a registered
    model, models:/NAME@ALIAS. The file is also logged to the trial's MLflow run."""
    from study.export import export_model
    from study.folder import StudyError

    try:
        click.echo(export_model(source, out, fmt=fmt, tracking_uri=tracking_uri).summary())
    except StudyError as e:
        _fail(str(e), e.exit_code)


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
    from study.folder import StudyError
    from study.single_trial import fit_trial

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

        try:
            fit_trial(cfg, report)
        except StudyError as e:
            _fail(str(e), e.exit_code)


def _traceback_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "snn-study" / "last-error.txt"


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``snn-study`` console script.

    Every failure ends as one line on stderr: click's usage errors too (exit 2), and an
    unexpected exception, whose traceback goes to a file the line names (exit 1).
    """
    try:
        code = cli.main(args=argv, prog_name="snn-study", standalone_mode=False)
    except click.ClickException as e:  # a bad option or argument
        from snn.config import one_line

        _fail(one_line(e.format_message(), None), e.exit_code)
    except (click.Abort, KeyboardInterrupt):
        _fail("interrupted", 130)
    except Exception as e:  # a bug: one line here, the traceback where it can be read and reported
        import traceback

        from snn.config import one_line

        path = _traceback_file()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(traceback.format_exc())
            where = f"; the traceback is in {path}"
        except OSError:
            where = ""
        _fail(f"internal error (a bug; please report it) {type(e).__name__}: {one_line(e, 300)}{where}")
    else:
        sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
