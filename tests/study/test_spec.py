import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from study.spec import QUICKSTART, SpecError, hide_password, load_spec, parse_spec, quickstart_spec, redacted

ROOT = Path(__file__).resolve().parents[2]


def spec(**kw):
    return {"name": "s", **kw}


@pytest.mark.parametrize("data,expected", [
    (spec(dataset="mnist"), "dataset: unknown value 'mnist'; choose one of cifar10, cifar100, imagenet, cifar10-dvs, digits, digits-dvs"),
    (spec(arch="resnet50"), "arch: unknown value 'resnet50'; choose one of resnet18"),
    (spec(search={"fixed": {"surrogate": "tanhh"}}), "search.fixed.surrogate: unknown value 'tanhh'; choose one of atan, rectangle, sigmoid, tanh, triangle"),
    (spec(search={"fixed": {"schedule": "lin"}}), "search.fixed.schedule: unknown value 'lin'; choose one of constant, linear"),
    (spec(search={"fixed": {"lambda0": 1.5}}), "search.fixed.lambda0: Input should be less than or equal to 1, got 1.5"),
    (spec(search={"fixed": {"lambda0": -0.1}}), "search.fixed.lambda0: Input should be greater than or equal to 0, got -0.1"),
    (spec(arch="resnet19", search={"fixed": {"branches": [3]}}), "search.fixed.branches: stage(s) [3] not available; this architecture has stages 1..3"),
    (spec(timesteps=0), "timesteps: Input should be greater than or equal to 1, got 0"),
    (spec(train={"batch_size": 0}), "train.batch_size: Input should be greater than or equal to 1, got 0"),
    (spec(train={"epoch": 3}), "train.epoch: unknown key (a typo?)"),
    (spec(train={"workers": "many"}), "train.workers: expected a count >= 0 or 'auto', got 'many'"),
    (spec(train={"workers": -1}), "train.workers: expected a count >= 0 or 'auto', got -1"),
    (spec(trails=3), "trails: unknown key (a typo?)"),
    (spec(scheduler="hyperband"), "scheduler: Input should be 'fifo', 'asha', 'pbt' or 'pb2'"),
    (spec(search={"preset": "fast"}), "search.preset: unknown value 'fast'; choose one of paper, ablation, full, quick"),
    (spec(search={"dims": ["epochs"]}), "search.dims: unknown value 'epochs'; choose one of timesteps, lr, weight_decay, loss_mode"),
    (spec(resources={"gpu": -1}), "resources.gpu: Input should be greater than or equal to 0"),
    (spec(train={"cuda_graphs": True}), "train.cuda_graphs: true needs GPU trials; set resources.gpu > 0"),
    (spec(arch="resnet18", arch_kwargs={"width": 8}), "arch_kwargs: unknown option(s) ['width'] for resnet18"),
    ({"dataset": "digits"}, "name: Field required"),
    (spec(name="a b"), "name: String should match pattern"),
    (spec(search={"storage": "journal"}), "search.storage: not a database URL; give a SQLAlchemy URL of postgresql, mysql, mariadb or sqlite"),
    (spec(search={"storage": "s3://bucket/optuna"}), "search.storage: 's3://bucket/optuna' is not an RDB storage Optuna can use; give a SQLAlchemy URL"),
    (spec(search={"storage": "postgresql+nodriver://db/optuna"}), "search.storage: 'postgresql+nodriver://db/optuna': SQLAlchemy has no driver 'nodriver' for postgresql"),
    (spec(search={"storage": "sqlite://"}), "search.storage: 'sqlite://' is an in-memory database"),
    (spec(search={"storage": 5432}), "search.storage: Input should be a valid string, got 5432"),
    (spec(scheduler="pbt", trials=4, search={"storage": "sqlite:////tmp/optuna.db"}), "search.storage: scheduler pbt draws and perturbs its population without Optuna, so there is no Optuna storage; remove it"),
    (spec(scheduler="pb2", trials=4, search={"storage": "postgresql+psycopg://db/optuna"}), "search.storage: scheduler pb2 draws"),
    (spec(energy={"preset": "7nm"}), "energy.preset: unknown preset '7nm'; allowed: 45nm-fp32, 45nm-fp16, 45nm-int32, 45nm-int8"),
    (spec(energy={"mac_pj": -4.6, "ac_pj": 0.9}), "energy.mac_pj: Input should be greater than 0, got -4.6"),
    (spec(energy={"max_uj": 0}), "energy.max_uj: Input should be greater than 0, got 0"),
    (spec(objective="test_acc+energy", scheduler="asha"), "scheduler: asha stops trials by one metric, and would cut the test_acc+energy front's low-cost trials short; use fifo"),
    (spec(scheduler="pbt", trials=4, energy={"max_uj": 1.0}), "energy.max_uj: scheduler pbt has no search to constrain"),
    (spec(search={"warm_start": "studies/first"}), "search.warm_start: Input should be a valid list, got 'studies/first'"),
    (spec(search={"warm_start": [{"study": "first"}]}), "search.warm_start.0: Input should be a valid string"),
    (spec(scheduler="pb2", trials=4, search={"warm_start": ["first"]}), "search.warm_start: scheduler pb2 draws its population without Optuna: no search to add earlier trials to; remove it"),
    (spec(search={"preset": "ablation", "warm_start": ["first"]}), "search.warm_start: preset ablation counts its seeds by Optuna's trial number, which earlier trials would shift; use quick or full"),
    (spec(fidelity={"timesteps": [1, 2, 4]}, timesteps=2), "fidelity: its last T, 4, is the target and must equal timesteps (2); leave timesteps out or set it to 4"),
    (spec(fidelity={"timesteps": [1, 2, 4]}, search={"dims": ["timesteps"]}), "search.dims: timesteps cannot be searched beside fidelity, which grows T within each trial to its target 4; remove one of them"),
    (spec(fidelity={"timesteps": [1, 2, 4]}, dataset={"format": "events", "train": "ev", "test_fraction": 0.2}), "fidelity: your event recordings are binned into frames once, for T=4, before the trials start, so T cannot grow on them"),
    (spec(fidelity={"timesteps": [1, 2, 4]}, scheduler="pbt", trials=4), "fidelity: scheduler pbt copies a trial's weights into another that trains at another T, and perturbs on epochs, not on cost; use scheduler: asha"),
    (spec(fidelity={"timesteps": [1, 2, 4]}, scheduler="pb2", trials=4), "fidelity: scheduler pb2 copies"),
    (spec(fidelity={"timesteps": [1, 2, 4]}, scheduler="fifo"), "fidelity: T grows at ASHA's rungs, and scheduler fifo has none; use scheduler: asha"),
    (spec(fidelity={"timesteps": [1, 2, 4]}, seeds=3), "fidelity: seeds > 1 runs every replicate its full budget (scheduler fifo), where no rung raises T"),
    (spec(fidelity={"timesteps": [1, 2, 4]}, objective="test_acc+firing_rate"), "fidelity: objective test_acc+firing_rate runs every trial its full budget (scheduler fifo)"),
    (spec(fidelity={"timesteps": [4, 2, 1]}), "fidelity.timesteps: must rise from the first T to the target, got [4, 2, 1]"),
    (spec(fidelity={"timesteps": [1, 3]}), "fidelity.timesteps: 3 is more than twice 1 in [1, 3]: ASHA's rungs double a trial's cost"),
    (spec(fidelity={"timesteps": [4]}), "fidelity.timesteps: needs two values or more"),
    (spec(fidelity={"timesteps": [1, 2, 4]}, train={"epochs": 3}), "fidelity: T [1, 2, 4] reaches the target 4 at epoch 4, past the budget of 3 epoch(s); give at least 4 epochs"),
    (spec(fidelity={"timesteps": [1, 2], "grace": 1}), "fidelity.grace: unknown key (a typo?)"),
])
def test_bad_specs_name_the_field(data, expected):
    with pytest.raises(SpecError) as e:
        parse_spec(data, "spec.yaml")
    msg = str(e.value)
    assert msg.startswith("spec.yaml: ") and expected in msg, msg
    assert "\n" not in msg


def test_a_multi_objective_study_runs_every_trial_its_budget_unless_told_otherwise():
    assert parse_spec(spec(objective="test_acc+energy")).scheduler == "fifo"
    assert parse_spec(spec(objective="test_acc+energy")).objectives() == [("test_acc", "max"), ("energy_uj", "min")]
    assert parse_spec(spec()).scheduler == "asha" and parse_spec(spec()).objectives() == [("test_acc", "max")]


def test_a_fidelitys_target_is_the_spec_s_timesteps_and_every_trial_s_schedule():
    s = parse_spec(spec(fidelity={"timesteps": [1, 2, 4]}, train={"epochs": 6}))
    assert s.timesteps == 4 and s.scheduler == "asha"  # left out: the target
    assert s.train_constants()["fidelity"] == {"timesteps": [1, 2, 4]} and s.train_constants()["timesteps"] == 4
    assert parse_spec(spec(fidelity={"timesteps": [2, 4]}, timesteps=4, confirm={"top": 1})).timesteps == 4
    assert parse_spec(spec(dataset="digits-dvs", fidelity={"timesteps": [1, 2]})).timesteps == 2  # binned per T


def test_a_storage_url_error_never_shows_its_password():
    for url in ("s3://snn:hunter2@bucket/optuna", "postgresql+nodriver://snn:hunter2@db/optuna", "http://snn:hunter2@"):
        with pytest.raises(SpecError) as e:
            parse_spec(spec(search={"storage": url}))
        assert "search.storage: " in str(e.value) and "hunter2" not in str(e.value), str(e.value)


def test_the_optuna_storage_is_the_study_folders_file_unless_the_spec_names_a_server(tmp_path, monkeypatch):
    assert parse_spec(spec()).search.storage is None  # the default: optuna.db in the study folder, as before
    url = "postgresql+psycopg://snn:hunter2@db:5432/optuna"
    given = parse_spec(spec(search={"storage": url}))
    assert given.search.storage == url  # kept as given: the study folder's copy is what a resume opens
    monkeypatch.chdir(tmp_path)  # a relative SQLite file: made absolute, so a resume elsewhere opens the same
    assert parse_spec(spec(search={"storage": "sqlite:///shared.db"})).search.storage == f"sqlite:///{tmp_path}/shared.db"


def test_what_leaves_the_study_folder_has_no_password():
    data = parse_spec(spec(search={"storage": "postgresql+psycopg://snn:hunter2@db:5432/optuna"})).model_dump(mode="json")
    shown = redacted(data)
    assert shown["search"]["storage"] == "postgresql+psycopg://snn:***@db:5432/optuna"
    assert data["search"]["storage"] == "postgresql+psycopg://snn:hunter2@db:5432/optuna"  # the original is untouched
    assert redacted(parse_spec(spec()).model_dump(mode="json"))["search"]["storage"] is None
    assert hide_password("postgresql+psycopg://snn@db/optuna") == "postgresql+psycopg://snn@db/optuna"  # PGPASSWORD


def test_quickstart_is_valid_and_small():
    s = quickstart_spec()
    assert (s.dataset, s.arch, s.search.preset, s.trials) == ("digits", "resnet-tiny", "quick", 8)
    assert quickstart_spec({"trials": 3, "train.epochs": 2}).train.epochs == 2
    assert s.trial_config().lr == 0.01
    assert parse_spec(spec(dataset="imagenet")).trial_config().lr == 4e-3  # the paper's ImageNet lr


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ntrain: {epochs: 3\n")
    with pytest.raises(SpecError, match=r"bad.yaml: YAML syntax error at line \d+"):
        load_spec(p)
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")
    p.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="must be a YAML mapping"):
        load_spec(p)


def test_hostile_specs_are_refused_in_one_short_line(tmp_path):
    from study.spec import MAX_SPEC_BYTES

    big = tmp_path / "big.yaml"
    big.write_text("name: x\nbogus:\n" + "- 1\n" * (MAX_SPEC_BYTES // 4 + 1))  # over the limit, a valid YAML list
    with pytest.raises(SpecError, match=r"big.yaml: the spec is larger than 1 MiB"):
        load_spec(big)
    for data in ({"name": "x" * 5_000_000}, {"name": "s", "dataset": "d" * 5_000_000},
                 {"name": "s", "search": {"fixed": {"branches": "9," * 1_000_000}}}):
        with pytest.raises(SpecError) as e:
            parse_spec(data, "spec.yaml")
        assert len(str(e.value)) < 800 and "\n" not in str(e.value), str(e.value)[:2000]
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SpecError, match="latin1.yaml: the spec is not UTF-8 text"):
        load_spec(tmp_path / "latin1.yaml")


def test_yaml_is_loaded_safely(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(SpecError, match="YAML syntax error"):
        load_spec(p)


@pytest.mark.slow  # runs snn-study as a process
def test_cli_bad_spec_exits_2_fast_and_writes_nothing(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"name": "x", "dataset": "digits", "arch": "resnet-tiny",
                                 "search": {"fixed": {"surrogate": "tanhh"}}, "storage": str(tmp_path / "st")}))
    before = set(tmp_path.iterdir())
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "study.cli", "run", str(p)], cwd=tmp_path, capture_output=True,
                       text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    elapsed = time.perf_counter() - t
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"snn-study: error: {p}: search.fixed.surrogate: unknown value 'tanhh'; choose one of atan, rectangle, "
        "sigmoid, tanh, triangle"]
    assert set(tmp_path.iterdir()) == before  # nothing written: no storage folder, no mlflow.db
    print(f"bad spec rejected in {elapsed:.2f}s")


# -- fuzzing: whatever the YAML holds, the loader either returns a spec or raises one SpecError line --
_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 400) | st.floats(allow_nan=True)
                       | st.text(max_size=8), lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                       max_leaves=6)
_keys = st.sampled_from(list(QUICKSTART) + ["train", "search", "resources", "mlflow", "arch_kwargs", "seed", "bogus"])
FUZZ = {"tried": 0}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(st.dictionaries(_keys, _values, max_size=6))
def _fuzz(data):
    FUZZ["tried"] += 1
    data = {**QUICKSTART, **data}
    try:
        s = parse_spec(data)
    except SpecError as e:
        assert "\n" not in str(e) and str(e).startswith("spec: ")
    else:
        assert s.timesteps >= 1 and s.trials >= 1 and s.train.batch_size >= 1


def test_fuzz_spec_loader():
    FUZZ["tried"] = 0
    _fuzz()
    print(f"spec loader fuzzed with {FUZZ['tried']} specs")  # shown with pytest -s; see README
    assert FUZZ["tried"] >= 300
