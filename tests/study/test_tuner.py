"""How a study starts Ray and hands its trials their parameters (study/tuner.py)."""

from __future__ import annotations

import optuna
import pytest

from search_spaces import PRESETS, build_space
from snn.config import TrainConfig
from study import tuner
from study.spec import parse_spec


class _Ray:
    """What _init_ray asks of Ray, recorded."""

    def __init__(self, initialized: bool = False) -> None:
        self.initialized, self.calls = initialized, []

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, **kwargs) -> None:
        self.calls.append(kwargs)


def test_the_specs_env_vars_reach_the_trials_through_rays_runtime_env(monkeypatch):
    fake = _Ray()
    monkeypatch.setattr(tuner, "ray", fake)
    spec = parse_spec({"name": "s", "env_vars": {"MALLOC_TRIM_THRESHOLD_": "2147483647"}})
    tuner._init_ray(spec, None)
    assert fake.calls[0]["runtime_env"] == {"env_vars": {"MALLOC_TRIM_THRESHOLD_": "2147483647"}}
    assert fake.calls[0]["address"] == "local" and fake.calls[0]["dashboard_host"] == "127.0.0.1"


def test_a_local_ray_gets_no_runtime_env_unless_the_spec_asks(monkeypatch):
    fake = _Ray()
    monkeypatch.setattr(tuner, "ray", fake)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    tuner._init_ray(parse_spec({"name": "s"}), None)
    assert fake.calls[0]["runtime_env"] is None


def test_a_joined_cluster_gets_the_project_on_its_path(monkeypatch):
    fake = _Ray()
    monkeypatch.setattr(tuner, "ray", fake)
    tuner._init_ray(parse_spec({"name": "s", "env_vars": {"PYTHONPATH": "/opt/mine"}}), "auto")
    env = fake.calls[0]["runtime_env"]["env_vars"]
    assert env["PYTHONPATH"].split(":") == [tuner._project_root(), "/opt/mine"]


def test_a_running_ray_is_joined_as_it_is(monkeypatch, caplog):
    fake = _Ray(initialized=True)
    monkeypatch.setattr(tuner, "ray", fake)
    tuner._init_ray(parse_spec({"name": "s", "env_vars": {"A": "1"}}), None)
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
