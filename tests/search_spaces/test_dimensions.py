"""The dimension registry (search_spaces._dims): one declaration per searched hyperparameter.

A dimension declared in one place, here by the test itself, is searched by Optuna, checked in
the spec, recorded in MLflow, shown in MLflow's study view and drawn in the report, with no
other file edited.
"""

from __future__ import annotations

import optuna
import pytest

from search_spaces import (DIMENSIONS, Dimension, build_space, describe, dimension, fixable, optional, perturbed,
                           searched)
from snn import registry
from snn.config import HEAD_ONLY, TrainConfig
from study.spec import SpecError, quickstart_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)

# TrainConfig has a batch size; no preset searches it: a new dimension a user might add
BATCH = Dimension("batch_size", "int", 16, 64, log=True, unit="images", help="images per training step")


@pytest.fixture
def batch_dim(monkeypatch):
    monkeypatch.setitem(DIMENSIONS, BATCH.name, BATCH)
    return BATCH


def test_every_dimension_is_a_trial_parameter_with_a_range_the_trial_accepts():
    for name, dim in DIMENSIONS.items():
        assert name == dim.name and name in TrainConfig.model_fields
        if dim.kind == "categorical":
            values = dim.options(3)  # resnet-tiny, TrainConfig's default: 3 stages
        elif dim.depends_on is not None:
            values = [v for pair in dim.ranges.values() for v in pair]
        else:
            values = [dim.low, dim.high]
        for v in values:  # every choice and both ends of every range make a valid trial
            TrainConfig.from_dict({name: v, **({dim.depends_on: next(iter(dim.ranges))} if dim.depends_on else {})})
    assert {n for n, d in DIMENSIONS.items() if d.heads_only} == set(HEAD_ONLY)
    assert set(DIMENSIONS["surrogate_param"].ranges) == set(registry.SURROGATES)
    assert set(searched()) | set(optional()) == set(fixable()) == set(DIMENSIONS)


def test_a_dimension_that_is_not_a_trial_parameter_is_refused():
    with pytest.raises(ValueError, match="'epoch_count': not a trial parameter"):
        Dimension("epoch_count", "int", 1, 3)
    with pytest.raises(ValueError, match="'surrogate': a categorical dimension needs choices"):
        Dimension("surrogate", "categorical")
    with pytest.raises(ValueError, match="unknown dimension 'lamda0'; choose one of lambda0, "):
        dimension("lamda0")


def test_population_based_training_perturbs_what_the_registry_marks():
    assert set(perturbed()) == {"lambda0"} and set(perturbed(["lr"])) == {"lambda0", "lr"}
    assert not perturbed(["tau"]).keys() - {"lambda0"}


def test_a_new_dimension_is_validated_and_searched_from_its_one_declaration(batch_dim):
    assert "batch_size" in optional() and "batch_size" in fixable()
    spec = quickstart_spec({"search.dims": ["batch_size"]})
    assert spec.search.dims == ["batch_size"]
    with pytest.raises(SpecError, match=r"search.fixed.batch_size: Input should be greater than or equal to 1, got 0"):
        quickstart_spec({"search.fixed.batch_size": 0})
    with pytest.raises(SpecError, match=r"search.fixed.batch_sizes: unknown key \(a typo\?\); fix one of .*batch_size"):
        quickstart_spec({"search.fixed.batch_sizes": 32})
    space = build_space("quick", stages=spec.stages, extra=["batch_size"], constants=spec.train_constants())
    assert describe(space)["batch_size"] == "integer log-uniform in [16, 64]"
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = []
    for _ in range(20):
        t = study.ask()
        config = {**space(t), **t.params}  # as OptunaSearch merges them
        assert "batch_size" in t.params and config["batch_size"] == t.params["batch_size"]
        assert TrainConfig.from_dict(config).batch_size == t.params["batch_size"]
        drawn.append(t.params["batch_size"])
        study.tell(t, 0.5)
    assert all(16 <= b <= 64 for b in drawn) and len(set(drawn)) > 5
    assert isinstance(study.trials[0].distributions["batch_size"], optuna.distributions.IntDistribution)
    assert study.trials[0].distributions["batch_size"].log


@pytest.mark.slow
def test_a_new_dimension_reaches_mlflow_the_view_and_the_report(batch_dim, ray_session, tmp_path):
    """A real study: the drawn batch size is each trial's MLflow param (as Optuna drew it), the
    study's MLflow view has its column, the report's trial table has it and its panel is drawn."""
    from mlflow import MlflowClient

    from study import figures, trial_rows, views
    from study.folder import open_study
    from study.report import REPORT_FILE, write_report
    from study.tuner import run_study

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = quickstart_spec({"trials": 3, "train.epochs": 1, "train.max_batches": 2, "scheduler": "fifo",
                            "search.dims": ["batch_size"], "storage": str(tmp_path / "studies"),
                            "mlflow.tracking_uri": uri, "data_root": str(tmp_path / "data")})
    result = run_study(spec, verbose=0)
    assert result.trials == 3 and result.errored == 0
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(spec.experiment)
    runs = c.search_runs([exp.experiment_id], "tags.kind = 'trial'")
    optuna_study = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{result.path}/optuna.db")
    by_number = {str(t.number): t.params["batch_size"] for t in optuna_study.trials}
    for r in runs:
        assert int(r.data.params["batch_size"]) == by_number[r.data.tags["optuna_trial_number"]]
    assert "params.`batch_size`" in views.study_columns(spec.search.dims)
    report = write_report(result.path)
    text = (report.path / REPORT_FILE).read_text()
    header = next(line for line in text.splitlines() if line.startswith("| trial |"))
    assert "batch_size" in [cell.strip() for cell in header.split("|")[3:-4]]
    rows = trial_rows.read_rows(c, exp.experiment_id, spec.name)
    dims = trial_rows.dimensions(open_study(result.path).spec, rows)
    assert "batch_size" in dims
    fig = figures.dimension_figure(rows, dims)
    assert "batch_size (images)" in [ax.get_xlabel() for ax in fig.axes]
