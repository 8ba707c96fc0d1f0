"""Warm starts (``search.warm_start``): earlier studies' finished trials in a new study's Optuna search.

The fast tests build an earlier study's folder by hand (its spec, its state and an Optuna
storage whose trials a seeded random sampler drew from the earlier space), so the expected
trials, values and skips are read off that study, not off the code under test. The slow test
runs two studies end to end and reads the second one's Optuna storage, MLflow and report.
"""

from __future__ import annotations

import math

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from search_spaces import build_space, paper_setting
from study import tuner
from study._search import SeededRepeater
from study.cli import main
from study.folder import StudyError, StudyFolder, study_paths, write_state
from study.spec import quickstart_spec
from study.warm_start import FROM_PARAM, TRIALS_PARAM, WARM_START, add_trials, check, plan_lines

QUICK_SURROGATES, QUICK_SCHEDULES = ("atan", "sigmoid", "triangle"), ("constant", "linear", "cosine")


def _spec(tmp, name, **over):
    return quickstart_spec({"name": name, "storage": str(tmp / "studies"), "data_root": str(tmp / "data"),
                            "mlflow.tracking_uri": f"sqlite:///{tmp}/mlflow.db", **over})


def _value(params):
    """An earlier trial's test_acc: a function of its drawn values, so each trial's is its own."""
    return 0.5 + 0.4 * params.get("lambda0", 0.0) - 0.1 * (params.get("surrogate") == "sigmoid")


def _earlier(tmp, name="old", trials=12, **over):
    """An earlier study's folder, with ``trials`` COMPLETE trials drawn at random from its space,
    one PRUNED and one FAIL; returns its Optuna study."""
    spec = _spec(tmp, name, **over)
    paths = study_paths(spec)
    paths["dir"].mkdir(parents=True)
    paths["spec"].write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    write_state(paths["state"], {"parent_run_id": "0" * 32, "tracking_uri": spec.mlflow.tracking_uri})
    space = build_space(spec.search.preset, stages=spec.stages, extra=spec.search.dims,
                        fixed=spec.search.fixed_values(), constants={}, seed=spec.seed)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{paths['optuna']}",
                                directions=["maximize" if m == "max" else "minimize" for _, m in spec.objectives()],
                                sampler=optuna.samplers.RandomSampler(seed=len(name)))
    for k in range(trials + 2):
        t = study.ask()
        space(t)
        if k == trials:
            study.tell(t, state=TrialState.PRUNED)
        elif k == trials + 1:
            study.tell(t, state=TrialState.FAIL)
        else:
            acc = _value(t.params)
            study.tell(t, [acc, 10.0 * acc] if len(spec.objectives()) > 1 else acc)
    return study, paths["dir"]


def _new(tmp, name="new", **over):
    """A new study's spec and its searcher (its folder made, as run_study makes it)."""
    spec = _spec(tmp, name, **over)
    study_paths(spec)["dir"].mkdir(parents=True)
    return spec, tuner._searcher(spec)


def _added(searcher):
    return [t for t in searcher._ot_study.get_trials(deepcopy=False) if WARM_START in t.user_attrs]


def test_the_earlier_finished_trials_are_complete_trials_of_the_new_study_with_their_values(tmp_path):
    old, folder = _earlier(tmp_path)
    spec, searcher = _new(tmp_path, **{"search.warm_start": [str(folder)]})
    warm = add_trials(searcher, spec, spec.mlflow.tracking_uri)
    complete = old.get_trials(states=(TrialState.COMPLETE,))
    assert warm.trials == len(complete) == 12
    assert warm.lines == (f"12 of the 12 finished trial(s) of study folder {folder} (its Optuna storage)",)
    added = {t.user_attrs[WARM_START]: t for t in _added(searcher)}
    assert set(added) == {f"{folder} trial {t.number}" for t in complete}  # neither the PRUNED nor the FAIL one
    for t in complete:
        new = added[f"{folder} trial {t.number}"]
        assert new.state == TrialState.COMPLETE and new.values == t.values
        assert new.params == t.params and new.distributions == t.distributions
        assert new.constraints == {"firing": 0.0}
    # built again (a second searcher on the same storage), or a source named twice: nothing twice
    spec = _spec(tmp_path, "new", **{"search.warm_start": [str(folder), str(folder)]})
    again = tuner._searcher(spec)
    assert add_trials(again, spec, spec.mlflow.tracking_uri).trials == 12
    assert len(_added(again)) == 12


def test_a_replicated_study_adds_them_to_the_optuna_study_its_repeater_wraps(tmp_path):
    _, folder = _earlier(tmp_path)
    spec, repeater = _new(tmp_path, seeds=2, **{"search.warm_start": [str(folder)]})
    assert isinstance(repeater, SeededRepeater)
    assert add_trials(repeater, spec, spec.mlflow.tracking_uri).trials == len(_added(repeater.searcher)) == 12


def test_tpe_draws_its_first_suggestion_from_the_earlier_trials(tmp_path):
    """TPE draws at random until a study holds 10 complete trials: with 12 earlier ones, its first draw
    after the paper's setting is the one a TPE sampler of the same seed makes from those trials
    alone (Optuna's own ask, the independent reference), not the one it makes from nothing."""
    old, folder = _earlier(tmp_path)
    spec, searcher = _new(tmp_path, **{"search.warm_start": [str(folder)]})
    add_trials(searcher, spec, spec.mlflow.tracking_uri)
    cold_spec, cold = _new(tmp_path, "cold")
    drawn = {}
    for key, s in (("warm", searcher), ("cold", cold)):
        assert {k: v for k, v in s.suggest(f"{key}0").items() if k in paper_setting(spec.stages)} \
            == paper_setting(spec.stages)  # the paper's setting is still the first trial
        drawn[key] = s._ot_trials[f"{key}1"].params if s.suggest(f"{key}1") else None
    reference = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=spec.seed))
    reference.add_trials(old.get_trials(states=(TrialState.COMPLETE,)))
    reference.enqueue_trial(paper_setting(spec.stages))
    space = build_space("quick", stages=spec.stages, constants={}, seed=spec.seed)
    for _ in range(2):
        trial = reference.ask()
        space(trial)
    assert drawn["warm"] == trial.params
    assert drawn["warm"] != drawn["cold"]


def test_trials_outside_the_new_space_are_skipped_and_counted(tmp_path):
    """An earlier full search against a quick one: a surrogate or schedule the quick preset lacks
    skips the trial (a vanilla trial draws no schedule); a fixed surrogate skips every other one."""
    old, folder = _earlier(tmp_path, "wide", trials=20, **{"search.preset": "full"})
    complete = old.get_trials(states=(TrialState.COMPLETE,))
    fits = [t for t in complete if t.params["surrogate"] in QUICK_SURROGATES
            and t.params.get("schedule", "linear") in QUICK_SCHEDULES]
    assert 0 < len(fits) < len(complete)
    spec, searcher = _new(tmp_path, **{"search.warm_start": [str(folder)]})
    warm = add_trials(searcher, spec, spec.mlflow.tracking_uri)
    assert warm.trials == len(fits)
    assert {t.user_attrs[WARM_START] for t in _added(searcher)} == {f"{folder} trial {t.number}" for t in fits}
    skipped = warm.lines[0].split(" skipped ")
    assert skipped[0].endswith(f", {len(complete) - len(fits)}")
    assert "surrogate outside this study's choices" in skipped[1] or "schedule outside" in skipped[1]

    atan = [t for t in fits if t.params["surrogate"] == "atan"]
    spec, searcher = _new(tmp_path, "fixed", **{"search.warm_start": [str(folder)], "search.fixed.surrogate": "atan"})
    warm = add_trials(searcher, spec, spec.mlflow.tracking_uri)
    assert warm.trials == len(atan)
    assert all("surrogate" not in t.params for t in _added(searcher))  # fixed: not a dimension of the new space
    assert f"surrogate not this study's fixed value: {len([t for t in complete if t.params['surrogate'] != 'atan'])}" \
        in warm.lines[0]


def test_a_dimension_the_earlier_study_held_constant_enters_at_its_value(tmp_path):
    """The new study also searches lr; the earlier one trained at its spec's lr: inside the new
    range it is the trial's value, outside it skips the trial."""
    old, folder = _earlier(tmp_path, "plain")
    _, outside = _earlier(tmp_path, "fast", **{"train.lr": 0.5})
    spec, searcher = _new(tmp_path, **{"search.warm_start": [str(folder), str(outside)], "search.dims": ["lr"]})
    warm = add_trials(searcher, spec, spec.mlflow.tracking_uri)
    assert warm.trials == 12
    default = spec.trial_config().lr  # the earlier spec's lr: the same default
    for t in _added(searcher):
        assert t.params["lr"] == default and t.distributions["lr"] == optuna.distributions.FloatDistribution(
            1e-3, 3e-2, log=True)
    assert warm.lines[1].endswith("0 of the 12 finished trial(s) of study folder "
                                  f"{outside} (its Optuna storage), 12 skipped (lr outside this study's range: 12)")


def test_a_multi_objective_study_takes_both_values(tmp_path):
    old, folder = _earlier(tmp_path, "front", objective="test_acc+energy")
    spec, searcher = _new(tmp_path, objective="test_acc+energy", **{"search.warm_start": [str(folder)]})
    assert add_trials(searcher, spec, spec.mlflow.tracking_uri).trials == 12
    assert sorted(t.values for t in _added(searcher)) == sorted(t.values for t in old.trials if t.values)
    assert all(math.isclose(t.values[1], 10 * t.values[0]) for t in _added(searcher))


@pytest.mark.parametrize("case,expected", [
    ("missing", "search.warm_start: studies/nowhere: neither a study folder (none at"),
    ("no study", "no study found there (expected study.yaml and study.json in the folder)"),
    ("empty", "search.warm_start: an empty entry"),
    ("nothing shared", "it searched timesteps, this study searches lambda0, schedule, branches, surrogate, "
                       "surrogate_param: no dimension in common"),
    ("population", "a pbt study: its trials' λ changed while they trained"),
    ("a metric Optuna lacks", "its MLflow experiment old is not in sqlite:///"),
])
def test_bad_warm_starts_fail_in_one_line_before_anything_starts(tmp_path, monkeypatch, case, expected):
    monkeypatch.chdir(tmp_path)
    entry, over = str(tmp_path / "studies" / "old"), {}
    if case == "missing":
        entry = "studies/nowhere"
    elif case == "no study":
        (tmp_path / "studies" / "old").mkdir(parents=True)
    elif case == "empty":
        entry = " "
    elif case == "nothing shared":
        _earlier(tmp_path, trials=1, **{"search.fixed": {d: paper_setting(2)[d] for d in paper_setting(2)},
                                        "search.dims": ["timesteps"]})
    elif case == "population":
        _earlier(tmp_path, trials=1)
        spec = _spec(tmp_path, "old", scheduler="pbt", trials=4)
        (tmp_path / "studies" / "old" / "study.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    else:  # a multi-objective study after a single-objective one reads the earlier runs: no MLflow store here
        _earlier(tmp_path, trials=1)
        over = {"objective": "test_acc+energy"}
    spec = _spec(tmp_path, "new", **{"search.warm_start": [entry], **over})
    with pytest.raises(StudyError) as e:
        check(spec, spec.mlflow.tracking_uri)
    assert expected in str(e.value) and "\n" not in str(e.value) and e.value.exit_code == 2
    assert plan_lines(spec, spec.mlflow.tracking_uri) == [f"warm start: {e.value}"]
    assert not (tmp_path / "mlflow.db").exists()  # an experiment looked for, no store made


def _cli(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    out = capsys.readouterr()
    return exit_.value.code or 0, out.out, out.err


def test_snn_study_check_shows_the_warm_start_or_its_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _earlier(tmp_path, "first")
    over = ["--set", f"storage={tmp_path / 'studies'}", "--set", "name=second"]
    code, out, err = _cli(["check", *over, "--set", "search.warm_start=[first]"], capsys)  # its name under ./studies
    assert code == 0, err
    assert (f"warm start (added to Optuna as COMPLETE trials before its first suggestion):\n  first: 12 of the 12 "
            f"finished trial(s) of study folder {(tmp_path / 'studies' / 'first').resolve()} (its Optuna "
            f"storage)") in out
    code, out, err = _cli(["check", *over, "--set", "search.warm_start=[frist]"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("snn-study: error: search.warm_start: frist: neither a study folder")
    assert not (tmp_path / "studies" / "second").exists() and not (tmp_path / "mlflow.db").exists()


# -- end to end ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_study_starts_from_the_first_ones_trials(ray_session, tmp_path):
    """Two studies on digits: the second one's Optuna study holds the first one's trials as
    COMPLETE with their values before its own, its parent run says how many, its report says
    from where; the first study's MLflow experiment gives the same trials as its folder."""
    from mlflow import MlflowClient

    from study.report import write_report

    first = _spec(tmp_path, "first", trials=3, scheduler="fifo", **{"train.epochs": 1})
    tuner.run_study(first, verbose=0)
    old = optuna.load_study(study_name="first", storage=f"sqlite:///{study_paths(first)['optuna']}")
    assert [t.state for t in old.trials] == [TrialState.COMPLETE] * 3

    folder = str(study_paths(first)["dir"])
    second = _spec(tmp_path, "second", trials=1, scheduler="fifo", **{"train.epochs": 1, "search.warm_start": [folder]})
    result = tuner.run_study(second, verbose=0)
    new = optuna.load_study(study_name="second", storage=f"sqlite:///{study_paths(second)['optuna']}")
    # the paper's setting, enqueued when the searcher was made, then the first study's trials
    assert [t.user_attrs.get(WARM_START) for t in new.trials] == [None] + [f"{folder} trial {n}" for n in range(3)]
    for t, was in zip(new.trials[1:], old.trials):
        assert t.state == TrialState.COMPLETE and t.values == was.values and t.params == was.params
    assert new.trials[0].state == TrialState.COMPLETE and new.trials[0].params == paper_setting(second.stages)
    parent = MlflowClient(second.mlflow.tracking_uri).get_run(result.parent_run_id)
    assert parent.data.params[TRIALS_PARAM] == "3"
    assert parent.data.params[FROM_PARAM] == (f"3 of the 3 finished trial(s) of study folder {folder} (its Optuna "
                                              f"storage)")
    report = (write_report(study_paths(second)["dir"]).path / "report.md").read_text()
    assert f"Optuna's search started from 3 trial(s) of earlier studies (`search.warm_start`): 3 of the 3 " \
           f"finished trial(s) of study folder {folder}" in report

    # the first study's MLflow experiment: its trial runs give the same configurations and accuracies
    third, searcher = _new(tmp_path, "third", **{"search.warm_start": ["first"]})
    assert add_trials(searcher, third, third.mlflow.tracking_uri).trials == 3
    from_runs = sorted((sorted(t.params.items()), t.value) for t in _added(searcher))
    assert from_runs == sorted((sorted(t.params.items()), t.value) for t in old.trials)
