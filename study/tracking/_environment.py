"""MLflow's settings that it reads only from environment variables, which ``snn-study`` sets once.

MLflow's client takes its HTTP retries and its progress bars from the environment, with no
argument on :class:`mlflow.MlflowClient`: the CLI's entry point sets these before anything
starts, and a Python user who wants the same sets them before starting a study.
"""

from __future__ import annotations

__all__ = ["MLFLOW_ENVIRONMENT"]

MLFLOW_ENVIRONMENT = {
    # MLflow retries a failed request with a back-off of minutes by default. A write that fails
    # loses nothing (the trial folders keep every result, the next live write catches up, and
    # `snn-study sync` writes what is left), so a write gives up after about 15 s, and the live
    # writer writes again within seconds of a server's return rather than minutes after.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    # MLflow draws a progress bar for every download, one small file or not (a run's config.yaml).
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # MLflow sets its loggers' level from the environment when it is imported, after the CLI's
    # logging is set up: at INFO a new store prints "Creating initial MLflow database tables...".
    "MLFLOW_LOGGING_LEVEL": "WARNING",
}
