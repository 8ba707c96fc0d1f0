import re

import optuna
import pytest

from search_spaces import (
    DIMENSIONS, METHODS, PRESETS, branch_choices, build_space, first_points, method_setting, optional, paper_setting,
)
from snn import registry

SURROGATE_RANGES = DIMENSIONS["surrogate_param"].ranges

optuna.logging.set_verbosity(optuna.logging.WARNING)


def full_point(**kw):
    p = {"lambda0": 0.4, "schedule": "cosine", "branches": "2", "surrogate": "sigmoid", "surrogate_param": 5.0}
    p.update(kw)
    return p


def test_branch_choices_are_all_subsets_of_valid_stages():
    ch = branch_choices(4)
    assert ch[0] == "none" and len(ch) == 8  # 2^(4-1) subsets of {1, 2, 3}
    for c in ch[1:]:
        assert registry.resolve_branches(c, 4)  # every choice is valid for the architecture
    assert "1,2,3" in ch and all("4" not in c for c in ch)


def test_full_space_returns_constants_and_searches_four_dims():
    space = build_space("full", stages=4, constants={"dataset": "digits", "epochs": 3})
    trial = optuna.trial.FixedTrial(full_point())
    assert space(trial) == {"dataset": "digits", "epochs": 3}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        t = study.ask()
        space(t)
        study.tell(t, 0.5)
    params = [t.params for t in study.trials]
    assert {p["branches"] for p in params} == set(branch_choices(4))
    for p in params:  # λ₀ and the schedule only where there is a shortcut head (conditional dimensions)
        heads = p["branches"] != "none"
        assert set(p) == {"branches", "surrogate", "surrogate_param"} | ({"lambda0", "schedule"} if heads else set())
    params = [p for p in params if p["branches"] != "none"]
    assert all(0.0 <= p["lambda0"] <= 1.0 for p in params)
    for p in params:  # the parameter's range is conditional on the surrogate
        lo, hi = SURROGATE_RANGES[p["surrogate"]]
        assert lo <= p["surrogate_param"] <= hi
        assert p["branches"] in branch_choices(4)
    # the full space reaches every registered shape and surrogate, and every placement
    assert {p["schedule"] for p in params} == set(registry.SHAPES)
    assert {p["surrogate"] for p in params} == set(registry.SURROGATES)


def test_vanilla_is_reachable():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    space = build_space("quick", stages=3)
    for _ in range(40):
        t = study.ask()
        space(t)
        study.tell(t, 0.0)
    assert any(t.params["branches"] == "none" for t in study.trials)
    space(optuna.trial.FixedTrial(full_point(lambda0=0.0, branches="none")))  # 0 is inside the range


def test_a_vanilla_trial_samples_no_lambda0_schedule_or_loss_mode():
    """No shortcut head: λ₀, the schedule and the loss's reading of the heads mean nothing, so
    they are neither sampled nor left in the trial's config as a constant."""
    constants = {"lambda0": 0.25, "schedule": "linear", "loss_mode": "logit_sum", "epochs": 3}
    space = build_space("full", stages=3, extra=["loss_mode"], constants=constants)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    seen = set()
    for _ in range(40):
        t = study.ask()
        out = space(t)
        study.tell(t, 0.0)
        heads = t.params["branches"] != "none"
        seen.add(heads)
        assert ({"lambda0", "schedule", "loss_mode"} <= set(t.params)) == heads
        assert not {"lambda0", "schedule", "loss_mode"} & set(t.params) or heads
        assert out == {"epochs": 3}  # constants of the searched dimensions never ride along
    assert seen == {True, False}
    fixed_vanilla = build_space("full", stages=3, fixed={"branches": "none"}, constants=constants)
    t = optuna.create_study().ask()
    assert fixed_vanilla(t) == {"epochs": 3, "branches": "none"} and set(t.params) == {"surrogate", "surrogate_param"}


def test_fixed_values_are_not_searched():
    space = build_space("full", stages=4, fixed={"surrogate": "atan", "schedule": "linear"})
    out = space(optuna.trial.FixedTrial({"lambda0": 0.3, "branches": "1", "surrogate_param": 1.0}))
    assert out == {"surrogate": "atan", "schedule": "linear"}


def test_optional_dims():
    space = build_space("quick", stages=3, extra=["timesteps", "lr", "loss_mode"], fixed={"branches": "1,2"})
    study = optuna.create_study()
    t = study.ask()
    space(t)
    assert {"timesteps", "lr", "loss_mode"} <= set(t.params)
    assert t.params["loss_mode"] in registry.LOSS_MODES
    with pytest.raises(ValueError, match="search.dims: unknown dimension"):
        build_space("quick", stages=3, extra=["epochs"])
    assert set(optional()) == {"timesteps", "lr", "weight_decay", "loss_mode", "tau", "v_threshold"}


def test_the_neuron_dimensions_reach_silent_networks():
    """tau and v_threshold: their ranges include thresholds no input reaches."""
    space = build_space("quick", stages=3, extra=["tau", "v_threshold"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        t = study.ask()
        space(t)
        study.tell(t, 0.0)
    taus = [t.params["tau"] for t in study.trials]
    thresholds = [t.params["v_threshold"] for t in study.trials]
    assert all(DIMENSIONS["tau"].low <= v <= DIMENSIONS["tau"].high for v in taus)
    assert min(thresholds) < 1.0 < 4.0 < max(thresholds)  # the default, and a threshold where digits' network is silent


def test_paper_point_is_enqueued_first_and_is_the_papers_setting():
    assert paper_setting(4) == {"lambda0": 0.25, "schedule": "linear", "branches": "1,2,3",
                                "surrogate": "triangle", "surrogate_param": 1.0}
    pts = first_points("full", stages=4)
    study = optuna.create_study()
    for p in pts:
        study.enqueue_trial(p)
    t = study.ask()
    build_space("full", stages=4)(t)
    assert t.params == paper_setting(4)
    assert first_points("paper", stages=4) == [] and first_points("ablation", stages=4) == []


def test_ablation_cycles_table_1_methods_with_new_seeds():
    space = build_space("ablation", stages=4, seed=7)
    outs = [space(optuna.trial.FixedTrial({}, number=i)) for i in range(6)]
    assert [o["branches"] for o in outs[:3]] == ["1,2,3", "1,2,3", "none"]
    assert [(o.get("lambda0"), o.get("schedule")) for o in outs[:3]] == [(0.25, "linear"), (1.0, "constant"),
                                                                          (None, None)]  # vanilla: no λ
    assert [o["seed"] for o in outs] == [7, 7, 7, 8, 8, 8]
    assert METHODS[0] == "evolutionary"
    with pytest.raises(ValueError, match="method"):
        method_setting("foo", 4)


def test_paper_preset_replicates_with_seeds():
    space = build_space("paper", stages=3, seed=3)
    outs = [space(optuna.trial.FixedTrial({}, number=i)) for i in range(3)]
    assert [o["seed"] for o in outs] == [3, 4, 5]
    assert all(o["lambda0"] == 0.25 and o["schedule"] == "linear" and o["branches"] == "1,2" for o in outs)


@pytest.mark.parametrize("name", registry.SURROGATES)
def test_surrogate_param_range_is_around_the_default(name):
    lo, hi = SURROGATE_RANGES[name]
    assert 0 < lo < registry.SURROGATE_DEFAULTS[name] < hi


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("stages", [3, 4])
def test_every_preset_gives_complete_valid_trials_starting_from_the_papers(preset, stages):
    # what a trial receives: the space's constants and Optuna's suggestions, as OptunaSearch merges them
    space = build_space(preset, stages=stages, seed=5)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    for p in first_points(preset, stages=stages):
        study.enqueue_trial(p)
    configs = []
    for _ in range(12):
        t = study.ask()
        configs.append({**space(t), **t.params})
        study.tell(t, 0.5)
    for c in configs:
        heads = c["branches"] != "none"  # a vanilla trial has no λ₀ nor schedule; TrainConfig's defaults stand in
        assert {"branches", "surrogate", "surrogate_param"} | ({"lambda0", "schedule"} if heads else set()) <= set(c), c
        assert not heads or (0.0 <= c["lambda0"] <= 1.0 and c["schedule"] in registry.SHAPES)
        assert c["branches"] in branch_choices(stages)
        lo, hi = SURROGATE_RANGES[c["surrogate"]]
        assert lo <= c["surrogate_param"] <= hi
    assert {k: configs[0][k] for k in paper_setting(stages)} == paper_setting(stages)  # the paper's point first


def test_unknown_preset():
    valid = re.escape(", ".join(PRESETS))
    with pytest.raises(ValueError, match=f"^search.preset: unknown name 'fast'; choose one of {valid}$"):
        build_space("fast", stages=3)
    assert {"paper", "ablation", "full", "quick"} <= set(PRESETS)  # the presets the README names
