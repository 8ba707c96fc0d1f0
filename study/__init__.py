"""The study service: YAML specs, the Ray Tune + Optuna study, MLflow records, reports and the CLI."""
