"""The report's plots and YAML (study.report, study.figures, study.optuna_figures), on synthetic
trial rows and a synthetic Optuna study: no Ray, no training. A real tiny study's report:
tests/study/test_e2e.py."""

from __future__ import annotations

import logging

import matplotlib
import pytest
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection

from study import figures, optuna_figures, report, trial_rows
from study.analysis import Analysis
from study.folder import OPTUNA_FILE, StudyFolder
from study.importance import Importance
from study.replicates import Configuration
from study.spec import quickstart_spec

PNG = b"\x89PNG"


def _row(trial_id: str, final: float | None, outcome: str = trial_rows.FULL, epochs: int = 3, budget: int = 3,
         **params: str) -> dict:
    """A row as study.trial_rows.read_rows makes it."""
    p = {"lambda0": "0.25", "schedule": "linear", "branches": "1,2", "surrogate": "triangle",
         "surrogate_param": "1.0", "epochs": str(budget), **params}
    curve = [(e, final - 0.02 * (epochs - e)) for e in range(1, epochs + 1)] if final is not None else []
    return {"trial_id": trial_id, "method": "searched", "status": "FINISHED", "outcome": outcome, "run_id": trial_id,
            "curve": curve, "final": final, "best": final, "epochs": len(curve), "budget": budget, "params": p,
            "stopped": None, "saved": 0.0, **{c: p.get(c, "") for c in trial_rows.columns()}}


def _mixed_rows() -> list[dict]:
    return [_row("full1", 0.95, lambda0="0.1", schedule="cosine"), _row("full2", 0.93, lambda0="0.5"),
            _row("full3", 0.91, lambda0="0.9", schedule="constant"),
            _row("early1", 0.80, trial_rows.STOPPED, epochs=1, lambda0="0.3"),
            _row("early2", 0.70, trial_rows.STOPPED, epochs=1, lambda0="0.7", schedule="cosine"),
            _row("boom", None, trial_rows.FAILED, lambda0="0.6")]


def _points(ax) -> dict[str, PathCollection]:
    return {c.get_label(): c for c in ax.collections if isinstance(c, PathCollection)}


def _draw(fig):
    FigureCanvasAgg(fig).draw()
    return fig


def test_stopped_trials_are_hollow_grey_and_named_failed_ones_counted_not_drawn():
    fig = _draw(figures.dimension_figure(_mixed_rows(), ["lambda0", "schedule"]))
    numeric, categorical = fig.axes[:2]
    for ax in (numeric, categorical):
        points = _points(ax)
        assert set(points) == {trial_rows.FULL, "stopped early (1 of 3 epochs)"}
        assert len(points[trial_rows.FULL].get_offsets()) == 3
        early = points["stopped early (1 of 3 epochs)"]
        assert len(early.get_offsets()) == 2  # the failed trial is not drawn
        assert all(a == 0 for *_, a in early.get_facecolor())  # hollow
        assert all(a > 0 for *_, a in points[trial_rows.FULL].get_facecolor())  # filled
        assert tuple(early.get_edgecolor()[0][:3]) == pytest.approx(matplotlib.colors.to_rgb(figures._PARTIAL_COLOR))
    assert sorted(y for _, y in _points(numeric)["stopped early (1 of 3 epochs)"].get_offsets()) == [0.70, 0.80]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["full budget (3 epochs)",
                                                                  "stopped early (1 of 3 epochs)"]
    assert "1 failed or diverged not shown" in fig._suptitle.get_text()
    assert categorical.get_xlabel() == "schedule"
    assert [t.get_text() for t in categorical.get_xticklabels()] == ["constant", "cosine", "linear"]


def test_surrogate_param_is_drawn_relative_to_its_surrogates_default():
    rows = [_row("a", 0.9, surrogate="atan", surrogate_param="4.0"),  # atan's default: 2
            _row("b", 0.8, surrogate="triangle", surrogate_param="None"),  # the default
            _row("c", 0.7, surrogate="sigmoid", surrogate_param="1.0")]  # sigmoid's default: 4
    assert [trial_rows.dim_value(r, "surrogate_param") for r in rows] == [2.0, 1.0, 0.25]
    ax = _draw(figures.dimension_figure(rows, ["surrogate_param"])).axes[0]
    assert ax.get_xscale() == "log" and "default" in ax.get_xlabel()
    assert sorted(x for x, _ in _points(ax)[trial_rows.FULL].get_offsets()) == [0.25, 1.0, 2.0]


def test_learning_curves_have_integer_epochs_dashed_stopped_trials_and_a_legend_outside():
    rows = [_row(f"t{i}", 0.9 - 0.01 * i) for i in range(4)] + [_row("early", 0.6, trial_rows.STOPPED, epochs=2)]
    fig = _draw(figures.curves_figure(rows))
    ax = fig.axes[0]
    styles = {line.get_label(): line.get_linestyle() for line in ax.get_lines()}
    assert styles["early  0.6000, stopped early (2 of 3 epochs)"] == "--"  # accuracies to 4 decimals, as the tables
    assert styles["t0  0.9000"] == "-"
    assert all(float(t).is_integer() for t in ax.get_xticks())
    legend = ax.get_legend()
    renderer = fig.canvas.get_renderer()
    assert legend.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1  # outside, right
    assert "dashed: short of its budget" in [t.get_text() for t in legend.get_texts()]


def test_a_one_epoch_study_has_one_whole_epoch_tick():
    row = _row("t0", 0.7)
    row["curve"] = [(1, 0.7)]
    ax = _draw(figures.curves_figure([row])).axes[0]
    visible = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert visible == [1.0]


def test_learning_curves_name_the_best_ten_and_grey_the_rest():
    rows = [_row(f"t{i:02d}", 0.99 - 0.01 * i) for i in range(14)]
    ax = _draw(figures.curves_figure(rows)).axes[0]
    named = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert [line.get_label().split()[0] for line in named] == [f"t{i:02d}" for i in range(figures.TOP_CURVES)]
    assert len(ax.get_lines()) == 14
    assert "4 other trial(s)" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_best_configuration_yaml_has_types_not_strings():
    text = report._yaml({"max_batches": "None", "branches": "2", "lambda0": "0.25", "epochs": "3", "amp": "True",
                         "surrogate_param": "None", "data_root": "007", "arch_kwargs": "{'width': 4}"})
    config = yaml.safe_load(text)
    assert "max_batches: null" in text
    assert config == {"max_batches": None, "branches": [2], "lambda0": 0.25, "epochs": 3, "amp": True,
                      "surrogate_param": None, "data_root": "007", "arch_kwargs": {"width": 4}}
    assert yaml.safe_load(report._yaml({"branches": "1,3"}))["branches"] == [1, 3]
    assert yaml.safe_load(report._yaml({"branches": "all"}))["branches"] == "all"
    assert yaml.safe_load(report._yaml({"branches": "none"}))["branches"] == "none"


def test_the_trial_table_rounds_each_value_to_what_it_means():
    row = _row("t1", 0.975, lambda0="0.9883738380592262", surrogate_param="0.9846632831701378")
    row["energy"] = 0.21360318204
    lines = report._trial_lines([row], ["lambda0", "schedule", "branches", "surrogate_param"])
    assert lines[0].endswith("| best test_acc | energy_uj (µJ) | status |")
    assert lines[2] == "| t1 | searched | 0.988 | linear | 1,2 | 0.985 | 3 | 0.9750 | 0.9750 | 0.214 | FINISHED |"
    del row["energy"]  # a run from before the energy estimate
    assert report._trial_lines([row], [])[2] == "| t1 | searched | 3 | 0.9750 | 0.9750 |  | FINISHED |"


def _config(method: str, label: str, acc: dict[str, float]) -> Configuration:
    import numpy as np
    from scipy import stats

    x = np.array(list(acc.values()))
    ci = stats.ttest_1samp(x, 0).confidence_interval(0.95)
    return Configuration("search", method, label, {}, acc, tuple(acc), len(x), float(x.mean()), float(x.std(ddof=1)),
                         (float(ci.low), float(ci.high)))


def test_forest_plot_of_replicated_configurations_names_the_papers_methods():
    configs = (_config("evolutionary", "evolutionary", {"0": 0.93, "1": 0.94, "2": 0.92}),
               _config("vanilla", "vanilla", {"0": 0.90, "1": 0.91, "2": 0.89}),
               Configuration("search", "searched", "lambda0=0.5", {}, {"0": 0.5}, ("x",), 1, 0.5, None, None))
    analysis = Analysis("search", configs, (), Importance(), frozenset(), {})
    ax = _draw(figures.replicates_figure(analysis)).axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["vanilla — Vanilla Training (n=3)", "evolutionary — Evolutionary Training (n=3)"]
    lo, hi = configs[0].ci
    assert ax.lines[0].get_xdata()[0] == pytest.approx(configs[1].mean)  # the bottom row: vanilla's mean
    numbers = [t.get_text() for t in ax.child_axes[0].get_yticklabels()]  # the right axis: mean [CI]
    assert numbers[1] == f"{configs[0].mean:.4f} [{lo:.4f}, {hi:.4f}]"
    single = Analysis("search", configs[2:], (), Importance(), frozenset(), {})
    assert figures.replicates_figure(single) is None


def _folder(tmp_path) -> StudyFolder:
    spec = quickstart_spec({"storage": str(tmp_path)})
    return StudyFolder(tmp_path, spec, "no-such-run", f"file://{tmp_path}/mlruns")


def test_optuna_plots_are_skipped_with_a_note_without_a_storage(tmp_path):
    files, notes = optuna_figures.optuna_plots(_folder(tmp_path), Importance(), tmp_path)
    assert files == [] and len(notes) == 1
    assert "left out: the study folder has no Optuna storage" in notes[0]


def _optuna_study(folder: StudyFolder, complete: int, pruned: int = 0):
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import TrialState, create_trial

    study = optuna.create_study(study_name=folder.spec.name, storage=f"sqlite:///{folder.path / OPTUNA_FILE}",
                                direction="maximize")
    dists = {"lambda0": FloatDistribution(0, 1), "schedule": CategoricalDistribution(("linear", "cosine")),
             "surrogate_param": FloatDistribution(0.25, 4, log=True)}
    for i in range(complete + pruned):
        params = {"lambda0": i / 10, "schedule": ("linear", "cosine")[i % 2], "surrogate_param": 0.5 + i / 4}
        state = TrialState.COMPLETE if i < complete else TrialState.PRUNED
        study.add_trial(create_trial(params=params, distributions=dists, state=state,
                                     value=0.9 + i / 100 if state == TrialState.COMPLETE else None,
                                     intermediate_values={1: 0.5}))
    return study


def test_optuna_plots_leave_no_pyplot_figure_nor_style_behind(tmp_path):
    import matplotlib.pyplot as plt

    folder = _folder(tmp_path)
    _optuna_study(folder, complete=5, pruned=2)
    before, style = plt.get_fignums(), dict(matplotlib.rcParams)
    with optuna_quiet():
        files, notes = optuna_figures.optuna_plots(folder, Importance(), tmp_path)
    assert [f.name for f in files] == [optuna_figures.PARALLEL_PLOT_FILE, optuna_figures.SLICE_PLOT_FILE, optuna_figures.CONTOUR_PLOT_FILE]
    assert all(f.read_bytes()[:4] == PNG for f in files)
    assert plt.get_fignums() == before
    assert dict(matplotlib.rcParams) == style  # Optuna's ggplot style sheet did not leak
    assert notes == ["Optuna's plots show its 5 COMPLETE trials; 2 pruned (stopped early), failed or running are "
                     "not in them."]


def test_optuna_plots_needing_two_trials_are_skipped_with_their_reason(tmp_path):
    folder = _folder(tmp_path)
    _optuna_study(folder, complete=1)
    with optuna_quiet():
        files, notes = optuna_figures.optuna_plots(folder, Importance(), tmp_path)
    assert [f.name for f in files] == [optuna_figures.SLICE_PLOT_FILE]
    assert notes == [f"Optuna's {what} is left out: it needs at least 2 complete trial(s), the study has 1."
                     for what in ("parallel coordinates", "contour plot")]


def test_the_contour_plot_leaves_out_a_dimension_of_one_value_without_optunas_warnings(tmp_path):
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import create_trial

    folder = _folder(tmp_path)
    study = optuna.create_study(study_name=folder.spec.name, storage=f"sqlite:///{folder.path / OPTUNA_FILE}",
                                direction="maximize")
    dists = {"lambda0": FloatDistribution(0, 1), "schedule": CategoricalDistribution(("linear", "cosine")),
             "tau": FloatDistribution(0.05, 1.0)}
    for i in range(6):  # every trial drew schedule=linear
        study.add_trial(create_trial(params={"lambda0": i / 10, "schedule": "linear", "tau": 0.1 + i / 8},
                                     distributions=dists, value=0.9 + i / 100))
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # Optuna logs through its own logger, which does not propagate
    logging.getLogger("optuna").addHandler(handler)
    try:
        files, notes = optuna_figures.optuna_plots(folder, Importance(), tmp_path)
    finally:
        logging.getLogger("optuna").removeHandler(handler)
    assert [r.getMessage() for r in records] == []
    assert optuna_figures.CONTOUR_PLOT_FILE in [f.name for f in files]
    assert notes == ["Optuna's contour plot leaves out `schedule` (a single value in the complete trials)."]


def test_a_store_refusing_the_report_is_a_warning(tmp_path, caplog):
    (tmp_path / report.REPORT_FILE).write_text("# report\n")
    with caplog.at_level(logging.WARNING, logger="study.report"):
        report._log_report(_folder(tmp_path), [tmp_path / report.REPORT_FILE])
    assert "could not be logged on the parent run no-such-run" in caplog.text


def optuna_quiet():
    import optuna

    class _Quiet:
        def __enter__(self):
            self.level = optuna.logging.get_verbosity()
            optuna.logging.set_verbosity(optuna.logging.WARNING)

        def __exit__(self, *exc):
            optuna.logging.set_verbosity(self.level)

    return _Quiet()
