"""How a study starts Ray, hands its trials their parameters and tells a finished run from an interrupted one
(study/tuner.py, study/startup.py, study/finish.py)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from procs import free_port
from search_spaces import PRESETS, build_space
from snn.config import TrainConfig
from snn.metrics import EPOCH, TEST_ACC
from study import startup, tuner, views
from study._search import TUNE_TRIAL_IDS
from study.folder import OPTUNA_FILE, StudyError, StudyFolder, optuna_url, study_paths
from study.importance import importances as _importance
from study.spec import parse_spec


class _Ray:
    """What start_ray asks of Ray, recorded."""

    def __init__(self, initialized: bool = False) -> None:
        self.initialized, self.calls = initialized, []

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, **kwargs) -> None:
        self.calls.append(kwargs)


def test_the_specs_env_vars_reach_the_trials_through_rays_runtime_env(monkeypatch):
    fake = _Ray()
    monkeypatch.setattr(startup, "ray", fake)
    spec = parse_spec({"name": "s", "env_vars": {"MALLOC_TRIM_THRESHOLD_": "2147483647"}})
    startup.start_ray(spec, None)
    assert fake.calls[0]["runtime_env"] == {"env_vars": {"MALLOC_TRIM_THRESHOLD_": "2147483647"}}
    assert fake.calls[0]["address"] == "local" and fake.calls[0]["dashboard_host"] == "127.0.0.1"


def test_a_local_ray_gets_no_runtime_env_unless_the_spec_asks(monkeypatch):
    fake = _Ray()
    monkeypatch.setattr(startup, "ray", fake)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    startup.start_ray(parse_spec({"name": "s"}), None)
    assert fake.calls[0]["runtime_env"] is None


def test_a_joined_cluster_gets_the_project_on_its_path(monkeypatch):
    fake = _Ray()
    monkeypatch.setattr(startup, "ray", fake)
    startup.start_ray(parse_spec({"name": "s", "env_vars": {"PYTHONPATH": "/opt/mine"}}), "auto")
    env = fake.calls[0]["runtime_env"]["env_vars"]
    assert env["PYTHONPATH"].split(":") == [startup._project_root(), "/opt/mine"]


def test_a_running_ray_is_joined_as_it_is(monkeypatch, caplog):
    fake = _Ray(initialized=True)
    monkeypatch.setattr(startup, "ray", fake)
    startup.start_ray(parse_spec({"name": "s", "env_vars": {"A": "1"}}), None)
    assert fake.calls == [] and "without A" in caplog.text


@pytest.mark.parametrize("preset", PRESETS)
def test_every_trial_config_the_search_makes_is_a_valid_train_config(preset):
    # The searcher's define-by-run space returns the spec's trial parameters; with the values
    # it suggests, each must be a TrainConfig as the trainable will build it, and fixed values win.
    spec = parse_spec({"name": "s", "search": {"preset": preset, "dims": ["lr", "loss_mode"],
                                              "fixed": {"weight_decay": 0.05}}})
    space = build_space(preset, stages=spec.stages, extra=spec.search.dims, fixed=spec.search.fixed_values(),
                        constants=spec.train_constants(), seed=spec.seed)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(6):
        trial = study.ask()
        config = {**space(trial), **trial.params}
        cfg = TrainConfig.from_dict(config)
        assert cfg.weight_decay == 0.05 and cfg.epochs == spec.train.epochs
        study.tell(trial, 0.5)


# -- the Optuna storage: the study folder's SQLite file, or the spec's search.storage ---------------------
def test_the_default_optuna_storage_is_the_study_folders_file(tmp_path):
    spec = parse_spec({"name": "s", "storage": str(tmp_path)})
    assert optuna_url(spec) == f"sqlite:///{tmp_path / 's' / OPTUNA_FILE}" == f"sqlite:///{study_paths(spec)['optuna']}"
    folder = StudyFolder(tmp_path / "moved", spec, "run", "sqlite:///m.db")  # a folder opened where it lies now
    assert folder.optuna_url == f"sqlite:///{tmp_path / 'moved' / OPTUNA_FILE}"
    assert folder.optuna_shown == str(tmp_path / "moved" / OPTUNA_FILE)
    with pytest.raises(FileNotFoundError):
        folder.optuna_study()


def test_a_search_storage_holds_the_searchs_trials_and_the_folder_reads_them_from_it(tmp_path):
    # another SQLite file stands in for a database server: the searcher writes there, not in the folder
    server = tmp_path / "server.db"
    spec = parse_spec({"name": "s", "storage": str(tmp_path / "studies"), "train": {"epochs": 2},
                       "search": {"storage": f"sqlite:///{server}"}})
    folder = StudyFolder(spec.study_dir(), spec, "run", "sqlite:///m.db")
    assert optuna_url(spec) == folder.optuna_url == f"sqlite:///{server}"
    with pytest.raises(KeyError):  # the storage holds no study of this name yet
        folder.optuna_study()
    searcher = tuner._searcher(spec)
    for i, acc in enumerate((0.5, 0.7)):
        assert isinstance(searcher.suggest(f"t{i}"), dict)
        searcher.on_trial_complete(f"t{i}", {TEST_ACC: acc, EPOCH: 2, "training_iteration": 2})
    study = folder.optuna_study()
    assert [(t.state, t.value) for t in study.trials] == [(TrialState.COMPLETE, 0.5), (TrialState.COMPLETE, 0.7)]
    assert study.trials[0].user_attrs[TUNE_TRIAL_IDS] == ["t0"]
    assert len(optuna.load_study(study_name="s", storage=f"sqlite:///{server}").trials) == 2
    assert not folder.optuna_path.exists() and not study_paths(spec)["optuna"].exists()
    assert views.optuna_storage(folder) == f"sqlite:///{server}"  # what `snn-study dashboard` opens


def test_a_new_study_refuses_a_name_its_shared_storage_holds(tmp_path):
    url = f"sqlite:///{tmp_path / 'server.db'}"
    optuna.create_study(study_name="s", storage=url)  # another study's search, of the same name
    spec = parse_spec({"name": "s", "storage": str(tmp_path / "studies"), "search": {"storage": url}})
    with pytest.raises(StudyError, match=r"search.storage: .*server.db already holds an Optuna study named 's'"):
        startup.check_optuna(spec, new=True)
    startup.check_optuna(spec, new=False)  # a resume: that study is its own
    startup.check_optuna(parse_spec({"name": "t", "search": {"storage": url}}), new=True)


def test_a_storage_that_is_mlflows_database_is_refused_with_the_reason(tmp_path):
    from mlflow import MlflowClient

    url = f"sqlite:///{tmp_path / 'tracking.db'}"
    MlflowClient(url).search_experiments()  # MLflow's backend store: its tables, its alembic_version
    spec = parse_spec({"name": "s", "storage": str(tmp_path / "studies"), "search": {"storage": url}})
    with pytest.raises(StudyError, match=r"search.storage: .*tracking.db holds MLflow's tables .* database of its own"):
        startup.check_optuna(spec, new=True)
    other = f"sqlite:///{tmp_path / 'optuna.db'}"  # a database of its own: opened
    startup.check_optuna(parse_spec({"name": "s", "storage": str(tmp_path / "studies"), "search": {"storage": other}}),
                        new=True)


def test_a_storage_that_does_not_answer_is_named_without_its_password(tmp_path):
    url = f"postgresql+psycopg://snn:hunter2@127.0.0.1:{free_port()}/optuna"  # nothing listens there
    spec = parse_spec({"name": "s", "storage": str(tmp_path), "search": {"storage": url}})
    with pytest.raises(StudyError) as e:
        startup.check_optuna(spec, new=True)
    shown = f"postgresql+psycopg://snn:***@127.0.0.1:{url.rsplit(':', 1)[1]}"
    assert str(e.value).startswith(f"search.storage: cannot open the Optuna storage {shown}")
    assert "hunter2" not in str(e.value)
    folder = StudyFolder(tmp_path / "s", spec, "run", "sqlite:///m.db")
    assert folder.optuna_shown == shown and folder.optuna_url == url
    sentence = _importance(folder).sentence  # the analysis, which goes to MLflow
    assert sentence.startswith(f"The Optuna storage `{shown}` cannot be read") and "hunter2" not in sentence


def test_mlflow_records_the_spec_without_the_storages_password(tmp_path):
    from mlflow import MlflowClient

    url = "postgresql+psycopg://snn:hunter2@db:5432/optuna"
    spec = parse_spec({"name": "s", "storage": str(tmp_path / "studies"), "search": {"storage": url}})
    study_paths(spec)["dir"].mkdir(parents=True)
    uri = f"sqlite:///{tmp_path}/m.db"
    run_id = tuner._record_spec(spec, uri)
    recorded = MlflowClient(uri).download_artifacts(run_id, "spec.yaml", str(tmp_path))
    assert yaml.safe_load(Path(recorded).read_text())["search"]["storage"] == "postgresql+psycopg://snn:***@db:5432/optuna"
    assert "hunter2" not in Path(recorded).read_text()
    kept = study_paths(spec)["spec"]  # the study folder's copy: what `snn-study resume` opens
    assert parse_spec(yaml.safe_load(kept.read_text())).search.storage == url


def test_trials_killed_by_rays_memory_monitor_end_the_study_with_what_to_do(tmp_path):
    """Ray Tune stops a whole run when Ray's memory monitor kills a trial (an OutOfMemoryError,
    which it does not retry): the study says so, names the node and how to go on, instead of
    an internal error."""
    import ray.exceptions

    from study.folder import StudyError, StudyFolder
    from study.spec import quickstart_spec
    from study.tuner import _memory_kills

    folder = StudyFolder(tmp_path / "q", quickstart_spec(), "run", "sqlite:///m.db")
    oom = ray.exceptions.OutOfMemoryError(
        "Task was killed due to the node running low on memory.\nMemory on the node (IP: 10.0.0.7, ID: "
        "4f052dc0a3b0a4d7427435b9) was 22.43GB used / 23.54GB limit (0.952631)")
    with pytest.raises(StudyError) as e:
        with _memory_kills(folder):
            raise RuntimeError(f"Caught unexpected exception: {oom}") from oom
    assert "10.0.0.7 (4f052dc0: 22.43GB used / 23.54GB limit)" in str(e.value)
    assert f"snn-study resume {folder.path}" in str(e.value) and "concurrency" in str(e.value)
    with pytest.raises(RuntimeError, match="another"):  # any other error of Tune's is left as it is
        with _memory_kills(folder):
            raise RuntimeError("another")


class _Results(list):
    """What check_finished reads of Tune's ResultGrid: its results, and how many errored."""

    @property
    def num_errors(self) -> int:
        return sum(1 for r in self if r.error is not None)


def _result(metrics: dict, error: Exception | None = None):
    from types import SimpleNamespace

    return SimpleNamespace(error=error, metrics=metrics)


def test_a_study_tune_ended_before_its_trials_says_how_far_it_got_and_how_to_resume(tmp_path):
    """On SIGINT Tune returns its results as after a finished run: the trials that were running
    read TERMINATED but have neither Tune's done flag nor a last report that ends them (their
    budget, a divergence, the firing-rate guard), the ones not asked for yet are missing. The
    study says so, and its parent run in MLflow is closed KILLED (resume reopens it)."""
    from mlflow import MlflowClient

    from study.finish import StudyInterrupted, check_finished
    from study.folder import CONFIRM
    from study.tracking import start_parent_run

    uri = f"sqlite:///{tmp_path}/m.db"
    spec = parse_spec({"name": "s", "storage": str(tmp_path / "studies"), "train": {"epochs": 8}})
    folder = StudyFolder(spec.study_dir(), spec, start_parent_run(uri, "s", "s", {}), uri)
    ended = [_result({"done": True, "epoch": 2}),  # stopped by the scheduler
             _result({"epoch": 8}),  # trained its budget (restored from Tune's state without the done flag)
             _result({"epoch": 3, "diverged": 1.0}), _result({"epoch": 2, "stopped": "silent"}),
             _result({"epoch": 1}, RuntimeError("x"))]
    check_finished(folder, _Results(ended), 5)  # all ended: nothing to say
    assert MlflowClient(uri).get_run(folder.parent_run_id).info.status == "RUNNING"
    with pytest.raises(StudyInterrupted) as e:
        check_finished(folder, _Results([*ended, _result({"epoch": 3}), _result({})]), 75)
    assert e.value.exit_code == 130 and (e.value.finished, e.value.total) == (5, 75)
    assert str(e.value).startswith("study s stopped early: 5 of 75 trial(s) finished;")
    assert str(e.value).endswith(f"resume it with 'snn-study resume {folder.path}'")
    assert MlflowClient(uri).get_run(folder.parent_run_id).info.status == "KILLED"
    with pytest.raises(StudyInterrupted, match="stopped early in its confirm stage: 1 of 2 trial"):
        check_finished(folder, _Results([_result({"epoch": 8}), _result({"epoch": 7})]), 2, CONFIRM)


def test_a_recovered_trial_gets_one_console_line_with_its_error_and_where_it_restarts(tmp_path, caplog):
    """Tune retries a trial whose worker died: the console says which trial, the error's first
    sentence (from the trial folder's error.txt) and the checkpoint it restarts from."""
    from types import SimpleNamespace

    from study.tuner import _FaultLines

    (tmp_path / "error.txt").write_text("Traceback ...\n\nActorDiedError: The actor died. It was on node 2.\n")
    trial = SimpleNamespace(trial_id="abc123", local_path=str(tmp_path), path=None, last_result={"epoch": 4})
    with caplog.at_level("WARNING", logger="study.tuner"):
        _FaultLines().on_trial_recover(iteration=1, trials=[trial], trial=trial)
    assert caplog.messages == ["trial abc123 failed (ActorDiedError: The actor died); Tune retries it from its "
                               "last checkpoint (epoch 4)"]
