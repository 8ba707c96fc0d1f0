"""The command line fuzzed: whatever the arguments and spec files, one line or success, never a traceback.

The commands run in this process (``study.cli.main``), with the work behind them replaced
by stand-ins (a study, a resume, a sync, a report, training, the UI's server): what is
fuzzed is how the command line reads its arguments, options and files, which is all that
happens before that work starts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from study import cli
from study.spec import QUICKSTART

SEEN = {"tried": 0, "ok": 0, "failed": 0}

_COMMANDS = ["run", "resume", "sync", "stop", "train", "baselines", "report", "ui", "dashboard", "gradients", "export"]
_OPTIONS = ["--set", "--address", "--tracking-uri", "--config", "--threads", "--out", "-o", "--format", "--host", "--port", "--arch",
            "--epochs", "--timesteps", "--dataset", "--max-batches", "--experiment", "-v", "-vv", "--", "-x"]
_SPEC_KEYS = sorted(QUICKSTART) + ["train.epochs", "train.batch_size", "search.preset", "search.fixed.lambda0",
                                   "search.fixed.branches", "lambda0", "schedule", "branches", "epochs", "bogus.key"]
_yaml_values = st.one_of(st.integers(-3, 10**6).map(str), st.floats(allow_nan=True).map(str),
                         st.sampled_from(["all", "none", "[1, 2]", "{a: 1}", "null", "true", "linear", "'x'", "[",
                                          "resnet18", "cifar10", "quick", "!!python/name:os.system", "9" * 400]),
                         st.text(max_size=12))
_set = st.builds(lambda k, v: f"{k}={v}", st.sampled_from(_SPEC_KEYS), _yaml_values) | st.text(max_size=12)
_spec_docs = st.one_of(
    st.dictionaries(st.sampled_from(sorted(QUICKSTART) + ["train", "search", "bogus"]),
                    st.recursive(st.none() | st.booleans() | st.integers(-5, 50) | st.text(max_size=6),
                                 lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                                 max_leaves=5), max_size=5).map(lambda d: yaml.safe_dump({**QUICKSTART, **d})),
    st.sampled_from(["", "- a\n- b\n", "name: [\n", "name: !!python/object/apply:os.system ['true']\n", "\x00\xff"]),
    st.text(max_size=40))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Files the fuzzer points at: spec files, a study folder, a trial config, a plain file."""
    root = tmp_path_factory.mktemp("fuzz")
    study = root / "studies" / "s"
    study.mkdir(parents=True)
    (study / "study.yaml").write_text(yaml.safe_dump({**QUICKSTART, "name": "s"}))
    (study / "study.json").write_text(json.dumps({"parent_run_id": "r", "tracking_uri": f"sqlite:///{root}/m.db"}))
    (root / "config.yaml").write_text(yaml.safe_dump({"epochs": 1, "lambda0": 0.5}))
    (root / "plain.txt").write_text("not a study\n")
    return root, study


@pytest.fixture
def stand_ins(monkeypatch, world):
    """The work behind the commands, replaced by calls that return at once."""
    import subprocess

    import snn.training
    import study.report
    import study.tracking
    import study.tuner
    from study.tracking import SyncSummary
    from study.tuner import StudyResult

    def result(*args, **kwargs):
        return StudyResult("s", world[1], "s", "sqlite:///m.db", "r", 1, 0, None)

    monkeypatch.setattr(study.tuner, "run_study", result)
    monkeypatch.setattr(study.tuner, "resume_study", result)
    monkeypatch.setattr(study.tracking, "sync_study", lambda *a, **k: SyncSummary())
    monkeypatch.setattr(study.tracking, "log_baselines", lambda *a, **k: 0)
    monkeypatch.setattr(study.report, "write_report",
                        lambda d, out=None, **k: study.report.Report(Path(d), [], [], None))
    monkeypatch.setattr(snn.training, "fit", lambda cfg, report=None, **k: {})
    monkeypatch.setattr(subprocess, "call", lambda *a, **k: 0)
    import study.views

    monkeypatch.setattr(study.views, "run_view", lambda *a, **k: 0)  # no server: ui and dashboard return at once
    monkeypatch.setattr(study.views, "classic_experiment", lambda *a, **k: "1")


def _arguments(world):
    """(command, arguments, spec text): options mostly with values of their own kind, in any order."""
    from snn.registry import ARCHS, DATASETS

    root, study = world
    paths = st.sampled_from([str(study), "s", str(root / "config.yaml"), str(root / "plain.txt"), str(root / "nowhere"),
                             str(root), "", "-", "studies/s"])
    number = st.integers(-2, 70000).map(str)
    junk = st.text(max_size=10)
    values = {"--set": _set, "--config": paths, "--out": paths, "-o": paths, "--format": st.sampled_from(["nir"]) | junk, "--threads": number, "--port": number,
              "--epochs": number, "--timesteps": number, "--max-batches": number,
              "--arch": st.sampled_from(ARCHS) | junk, "--dataset": st.sampled_from(DATASETS) | junk,
              "--tracking-uri": st.sampled_from(["sqlite:///fuzz.db", "http://127.0.0.1:1", "file:///nowhere"]) | junk,
              "--address": junk, "--host": st.sampled_from(["127.0.0.1", "0.0.0.0"]) | junk, "--experiment": junk}
    option = st.sampled_from(sorted(values)).flatmap(lambda o: st.tuples(st.just(o), values[o] | junk).map(list))
    loose = (st.sampled_from(_OPTIONS) | paths | number | junk).map(lambda t: [t])
    rest = st.lists(option | loose, max_size=4).map(lambda groups: [t for g in groups for t in g])
    return st.tuples(st.sampled_from(_COMMANDS) | st.text(max_size=6), rest, _spec_docs)


def test_fuzz_the_command_line(world, stand_ins, capsys, monkeypatch):
    root, _ = world
    monkeypatch.chdir(root)
    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "cache"))
    for name in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)

    @settings(max_examples=400, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(_arguments(world))
    def one(args):
        command, rest, spec_text = args
        spec_file = root / "fuzzed.yaml"
        spec_file.write_bytes(spec_text.encode("utf-8", "surrogateescape") if isinstance(spec_text, str) else spec_text)
        argv = [command, *[str(spec_file) if t == "-" else t for t in rest]]
        SEEN["tried"] += 1
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        out, err = capsys.readouterr()
        assert e.value.code in (0, 1, 2, 130), (argv, e.value.code, err)
        assert "Traceback" not in out + err, (argv, err)
        if e.value.code:
            lines = [line for line in err.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("snn-study: error: "), (argv, err)
            assert "internal error" not in lines[0], (argv, lines[0])  # a bug that main() only contained
            SEEN["failed"] += 1
        else:
            SEEN["ok"] += 1

    one()
    print(f"command line fuzzed with {SEEN['tried']} argument lists: {SEEN['ok']} ran, {SEEN['failed']} refused")
    assert SEEN["ok"] > 0 and SEEN["failed"] > 0
