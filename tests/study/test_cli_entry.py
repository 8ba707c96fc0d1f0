"""What ``snn-study``'s entry point reads and sets for the libraries it drives (in this process):
environment variables are read there and passed down, and the process settings it makes do
what they are there for."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

_SETTINGS = ("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "RAY_TUNE_CALLBACKS", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")


@pytest.fixture
def clean_env(monkeypatch):
    """The settings unset, and put back as they were after the test (the CLI writes os.environ)."""
    for name in _SETTINGS:
        monkeypatch.setenv(name, "")  # recorded, so that the teardown restores it
        monkeypatch.delenv(name)
    return monkeypatch


def test_tune_runs_with_its_json_and_csv_loggers_and_without_tensorboards(clean_env):
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback
    from ray.tune.utils.callback import _create_default_callbacks

    from study.cli import process_settings

    process_settings()
    process_settings()  # twice, as two commands in one process: nothing named twice
    kinds = [type(c) for c in _create_default_callbacks([], metric="test_acc", mode="max")]
    assert kinds.count(JsonLoggerCallback) == 1 and kinds.count(CSVLoggerCallback) == 1
    assert TBXLoggerCallback not in kinds


def test_a_users_tune_settings_are_kept(clean_env):
    import os

    from ray.tune.logger import JsonLoggerCallback, TBXLoggerCallback
    from ray.tune.utils.callback import _create_default_callbacks

    from study.cli import process_settings

    clean_env.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")  # the user wants TensorBoard's files
    process_settings()
    kinds = [type(c) for c in _create_default_callbacks([], metric="test_acc", mode="max")]
    assert TBXLoggerCallback in kinds and kinds.count(JsonLoggerCallback) == 1
    assert "RAY_TUNE_CALLBACKS" not in os.environ


@pytest.mark.parametrize("command", ["run", "resume"])
@pytest.mark.parametrize("env, args, expected", [
    ({"RAY_ADDRESS": "10.0.0.7:6379"}, [], "10.0.0.7:6379"),
    ({"RAY_ADDRESS": "10.0.0.7:6379"}, ["--address", "auto"], "auto"),
    ({}, [], None),
])
def test_run_and_resume_read_ray_address_at_the_entry_point(clean_env, tmp_path, command, env, args, expected):
    import json

    import yaml

    import study.tuner
    from study.cli import cli
    from study.spec import QUICKSTART
    from study.tuner import StudyResult

    clean_env.chdir(tmp_path)
    clean_env.delenv("RAY_ADDRESS", raising=False)
    folder = tmp_path / "studies" / "s"
    folder.mkdir(parents=True)
    (folder / "study.yaml").write_text(yaml.safe_dump({**QUICKSTART, "name": "s"}))
    (folder / "study.json").write_text(json.dumps({"parent_run_id": "r", "tracking_uri": "sqlite:///m.db"}))
    seen = []

    def stand_in(*a, **k):
        seen.append(k["address"])
        return StudyResult("s", folder, "s", "sqlite:///m.db", "r", 1, 0, None)

    clean_env.setattr(study.tuner, "run_study", stand_in)
    clean_env.setattr(study.tuner, "resume_study", stand_in)
    r = CliRunner().invoke(cli, [command, *(["studies/s"] if command == "resume" else []), *args], env=env)
    assert r.exit_code == 0, r.output
    assert seen == [expected]


def test_the_library_starts_a_local_ray_whatever_ray_address_says(monkeypatch):
    from study import startup
    from study.spec import parse_spec

    calls = []

    class _Ray:
        def is_initialized(self) -> bool:
            return False

        def init(self, **kwargs) -> None:
            calls.append(kwargs)

    monkeypatch.setattr(startup, "ray", _Ray())
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.7:6379")  # read by the CLI, which passes it as --address
    assert startup.start_ray(parse_spec({"name": "s"}), None) is True
    assert calls[0]["address"] == "local"
