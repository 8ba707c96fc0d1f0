"""The views' commands, links and errors; no browser.

What a browser sees is in ``test_browser.py`` (slow); here: one MLflow server with one worker
and no job runners, bound to 127.0.0.1 unless asked, its link to the classic ML view, the
dashboard's refusal of a study without Optuna storage, and a view stopped with what it started.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.parse
from pathlib import Path

import psutil
import pytest
import yaml
from procs import free_port

from study import views
from study.folder import OPTUNA_FILE, SPEC_FILE, STATE_FILE, open_study
from study.spec import quickstart_spec


def _after(cmd: list[str], option: str) -> str:
    return cmd[cmd.index(option) + 1]


def _study(root: Path, **overrides) -> Path:
    """A study folder as ``snn-study run`` leaves it (its spec and state; no Optuna storage yet)."""
    spec = quickstart_spec({"storage": str(root), **overrides})
    d = spec.study_dir()
    d.mkdir(parents=True)
    (d / SPEC_FILE).write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True)))
    (d / STATE_FILE).write_text(json.dumps({"parent_run_id": "r", "tracking_uri": f"sqlite:///{root}/mlflow.db"}))
    return d


def test_the_ui_is_one_mlflow_server_with_one_worker_on_localhost():
    cmd = views.mlflow_ui_command("sqlite:////s/mlflow.db")
    assert cmd[:4] == [sys.executable, "-m", "mlflow", "server"]  # not `mlflow ui`
    assert _after(cmd, "--backend-store-uri") == "sqlite:////s/mlflow.db"
    assert (_after(cmd, "--host"), _after(cmd, "--port"), _after(cmd, "--workers")) == ("127.0.0.1", "5000", "1")
    assert _after(views.mlflow_ui_command("sqlite:///m.db", "0.0.0.0", 5123), "--port") == "5123"


def test_the_ui_runs_no_job_runners_and_keeps_the_users_warning_filters(monkeypatch):
    from mlflow.environment_variables import MLFLOW_SERVER_ENABLE_JOB_EXECUTION

    env = views.mlflow_ui_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true", "PYTHONWARNINGS": "error"})
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"])
    assert MLFLOW_SERVER_ENABLE_JOB_EXECUTION.get() is False  # as MLflow reads it
    assert env["PYTHONWARNINGS"].startswith("error,")
    assert views.mlflow_ui_env({})["PYTHONWARNINGS"] == views._STARLETTE_NOTICE


def test_the_ui_env_silences_starlettes_notice_only():
    code = ("import warnings\n"
            "warnings.warn('starlette.middleware.wsgi is deprecated and will be removed', UserWarning)\n"
            "warnings.warn('another notice', UserWarning)\n")
    run = subprocess.run([sys.executable, "-c", code], env=views.mlflow_ui_env(), capture_output=True, text=True)
    assert "starlette" not in run.stderr and "another notice" in run.stderr


def test_the_study_link_opens_the_classic_runs_table_in_the_study_view():
    link = views.study_link("7", port=5001)
    base, fragment = link.split("#")
    assert base == "http://127.0.0.1:5001/"
    route, query = fragment.split("?")
    assert route == "/experiments/7/runs"
    # no sort in the link: the UI ignores a saved view where the link sorts or filters too
    assert dict(urllib.parse.parse_qsl(query)) == {"workflowType": "machine_learning",
                                                   "viewStateShareKey": views.STUDY_VIEW.key}
    ranked = dict(urllib.parse.parse_qsl(views.study_link("7", view=None).split("?")[1]))
    assert ranked == {"workflowType": "machine_learning", "orderByKey": "metrics.`test_acc`", "orderByAsc": "false"}
    unranked = "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
    assert views.study_link("7", rank_by=None, view=None) == unranked
    assert views.study_link("7", "0.0.0.0").startswith("http://127.0.0.1:5000/#")  # a wildcard: this machine
    assert views.base_url("::1", 5000) == "http://[::1]:5000"


def test_the_study_view_shows_the_dimensions_accuracy_and_energy_ranked_under_a_stable_key():
    view = views.STUDY_VIEW
    envelope = json.loads(view.tag_value(now_ms=5))
    assert envelope == {"name": "snn-study: trials", "createdAt": 5, "updatedAt": 5, "state": envelope["state"]}
    state = json.loads(envelope["state"])  # a JSON string in the envelope, as the UI's "Save view" writes it
    columns = ["metrics.`test_acc`", "metrics.`energy_uj`", *(f"params.`{p}`" for p in ("lambda0", "schedule", "branches", "surrogate",
                                                                  "surrogate_param")), "tags.`method`"]
    assert state["selectedColumns"] == columns and state["columnOrder"] == ["attributes.`Run Name`", *columns]
    assert set(state["columnWidths"]) == set(state["columnOrder"])
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`test_acc`", False)  # every trial a row
    assert "runsExpanded" not in state  # the UI drops it from a saved view
    assert view.tag == f"mlflow.sharedViewState.{view.key}" and len(view.tag_value()) < 5000  # MLflow's limit
    assert views.SavedView().key == view.key == views.SavedView(name="other").key  # the key is the state's hash
    assert views.SavedView(rank_by=None).key != view.key and views.SavedView(columns=columns[:1]).key != view.key


def test_the_compare_link_names_runs_and_experiments_as_the_ui_writes_them():
    link = views.compare_link(["b", "a"], ["2", "1", "1"], port=5002)
    assert link.startswith("http://127.0.0.1:5002/#/compare-runs?")
    query = dict(urllib.parse.parse_qsl(link.split("?", 1)[1]))
    assert json.loads(query["runs"]) == ["b", "a"] and json.loads(query["experiments"]) == ["1", "2"]
    assert query["workflowType"] == "machine_learning"


def test_the_dashboard_is_one_process_on_localhost():
    cmd = views.dashboard_command("sqlite:////s/optuna.db")
    assert Path(cmd[0]).name == "optuna-dashboard" and cmd[1] == "sqlite:////s/optuna.db"
    assert (_after(cmd, "--host"), _after(cmd, "--port"), _after(cmd, "--server")) == ("127.0.0.1", "8080", "wsgiref")
    assert views.dashboard_link(port=8081, study_id=3) == "http://127.0.0.1:8081/dashboard/studies/3"


def test_the_dashboard_refuses_a_population_study_and_says_why(tmp_path):
    from click.testing import CliRunner

    from study.cli import cli

    folder = _study(tmp_path, scheduler="pbt")
    (folder / OPTUNA_FILE).touch()  # even a stray file: PBT's trials are not Optuna's
    with pytest.raises(views.ViewError, match="scheduler pbt .* no Optuna storage"):
        views.optuna_storage(open_study(folder))
    result = CliRunner().invoke(cli, ["dashboard", str(folder)])
    assert result.exit_code == 1
    assert result.output.startswith("snn-study: error: quickstart: scheduler pbt") and result.output.count("\n") == 1


def test_the_dashboard_refuses_a_study_whose_search_has_not_started(tmp_path):
    folder = open_study(_study(tmp_path))
    with pytest.raises(views.ViewError, match="no Optuna storage at .*has not started"):
        views.optuna_storage(folder)
    (folder.path / OPTUNA_FILE).touch()
    assert views.optuna_storage(folder) == f"sqlite:///{folder.path / OPTUNA_FILE}"


def test_a_port_in_use_or_a_foreign_host_is_refused_before_starting():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(views.ViewError, match="^--port: .* cannot be used"):
            views.check_port("127.0.0.1", s.getsockname()[1])
    with pytest.raises(views.ViewError, match="^--host: "):
        views.check_port("no-such-host.invalid", 5000)


def test_the_experiment_is_tagged_for_the_classic_view_and_the_study_view_once(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("s")
    older = views.SavedView(columns=("metrics.`test_acc`",))  # an earlier study view: replaced
    mine = views.SavedView(columns=("params.`lr`",), name="mine")  # a user's own: kept
    for view in (older, mine):
        views.save_view(client, experiment_id, view)
    assert views.classic_experiment(uri, "s") == experiment_id
    tags = client.get_experiment(experiment_id).tags
    assert tags[views.EXPERIMENT_KIND_TAG] == views.EXPERIMENT_KIND
    assert sorted(k for k in tags if k.startswith("mlflow.sharedViewState.")) == sorted([views.STUDY_VIEW.tag, mine.tag])
    assert views.classic_experiment(uri, "s") == experiment_id
    assert client.get_experiment(experiment_id).tags == tags  # written once: the same value, the same time
    assert views.classic_experiment(uri, "nowhere") is None


def _server_with_a_child(port: int) -> list[str]:
    """A server that starts one of its own, as ``mlflow server`` starts uvicorn."""
    child = f"[sys.executable, '-m', 'http.server', '--bind', '127.0.0.1', '{port}']"
    return [sys.executable, "-c", f"import subprocess, sys; subprocess.Popen({child}).wait()"]


def test_a_view_is_stopped_with_what_it_started(tmp_path):
    port = free_port()
    with views.serving(_server_with_a_child(port), f"http://127.0.0.1:{port}/", log=tmp_path / "log") as proc:
        started = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        assert len(started) == 2
    _, left = psutil.wait_procs(started, timeout=5)
    assert not left


def test_ctrl_c_stops_the_view_and_the_command_ends_well():
    port, said = free_port(), []

    def echo(line: str) -> None:  # the user presses Ctrl-C as soon as the link is printed
        said.append(line)
        raise KeyboardInterrupt

    code = views.run_view(_server_with_a_child(port), f"http://127.0.0.1:{port}/", "http://link", echo=echo)
    assert code == 0 and said == ["open http://link"]
    with pytest.raises(ConnectionRefusedError):  # nothing serves there any more
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_a_server_that_ends_before_answering_is_one_line_naming_its_log(tmp_path):
    log = tmp_path / "ui.log"
    cmd = [sys.executable, "-c", "import sys; print('address already in use'); sys.exit(3)"]
    with pytest.raises(views.ViewError, match=r"exited with code 3 before it answered \(its log: .*\): address"):
        with views.serving(cmd, f"http://127.0.0.1:{free_port()}/", log=log):
            pass


@pytest.mark.parametrize("uri, ui_url, shown", [
    # docker compose's driver writes to the stack's address; the host's browser opens another
    ("http://mlflow:5000", "http://127.0.0.1:5000", "at http://127.0.0.1:5000 (the driver writes to http://mlflow:5000);"),
    ("http://mlflow:5000", None, "at http://mlflow:5000;"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000", "at http://127.0.0.1:5000;"),
    ("sqlite:///mlflow.db", "http://127.0.0.1:5000", "at sqlite:///mlflow.db (snn-study ui "),  # the ui command serves it
])
def test_a_study_names_the_mlflow_address_a_person_opens(monkeypatch, tmp_path, uri, ui_url, shown):
    from click.testing import CliRunner

    import study.tuner
    from study.cli import cli
    from study.tuner import StudyResult

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(study.tuner, "run_study", lambda *a, **k: StudyResult(
        "quickstart", tmp_path / "studies" / "quickstart", "quickstart", uri, "r", 8, 0, None))
    if ui_url:
        monkeypatch.setenv("MLFLOW_UI_URL", ui_url)
    else:
        monkeypatch.delenv("MLFLOW_UI_URL", raising=False)
    out = CliRunner().invoke(cli, ["run"]).output
    (line,) = [x for x in out.splitlines() if x.startswith("MLflow: experiment")]
    assert shown in line, line
