"""Comparisons with confidence and which dimension matters (study/analysis.py, study/replicates.py,
study/importance.py), on hand-made MLflow runs in a SQLite store and a hand-made Optuna
storage: no Ray, no training."""

from __future__ import annotations

import json
import math

import numpy as np
import optuna
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator, get_param_importances
from optuna.trial import TrialState, create_trial
from scipy import stats

from search_spaces import DIMENSIONS, branch_choices
from study.analysis import COMPARISON_CSV, COMPARISON_MD, analyse, record_analysis
from study.folder import OPTUNA_FILE, StudyFolder, study_paths, write_state
from study.importance import MIN_IMPORTANCE_TRIALS
from study.replicates import seeds_needed
from study.report import write_report
from study.spec import parse_spec

SURROGATE_RANGES = DIMENSIONS["surrogate_param"].ranges

EPOCHS = 3
SEEDS = (0, 1, 2, 3, 4)
# final test_acc per seed: evolutionary clearly above vanilla; shortcut about level with vanilla, noisily
VANILLA = np.array([0.80, 0.82, 0.79, 0.81, 0.83])
ACC = {"vanilla": VANILLA,
       "shortcut": VANILLA + np.array([0.02, -0.015, 0.01, -0.012, 0.005]),
       "evolutionary": VANILLA + np.array([0.012, 0.015, 0.010, 0.013, 0.011])}
SETTINGS = {"evolutionary": {"lambda0": "0.25", "schedule": "linear", "branches": "1,2,3"},
            "shortcut": {"lambda0": "1.0", "schedule": "constant", "branches": "1,2,3"},
            "vanilla": {"branches": "none"}}  # a vanilla run has no λ₀ or schedule


# -- building a study by hand ----------------------------------------------------------------------
class _Store:
    """One SQLite MLflow store (created once: it takes seconds), many studies in it."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.uri = f"sqlite:///{tmp}/mlflow.db"
        self.client = MlflowClient(self.uri)
        self.count = 0

    def study(self, name: str, preset: str = "ablation") -> StudyFolder:
        spec = parse_spec({"name": name, "storage": str(self.tmp / "studies"), "train": {"epochs": EPOCHS},
                           "search": {"preset": preset}, "mlflow": {"tracking_uri": self.uri}})
        exp = self.client.create_experiment(name, artifact_location=(self.tmp / "artifacts" / name).as_uri())
        parent = self.client.create_run(exp, run_name=name, tags={"kind": "study", "study": name}).info.run_id
        self.client.set_terminated(parent, "FINISHED")  # the analysis is recorded on a finished study
        paths = study_paths(spec)
        paths["dir"].mkdir(parents=True)
        paths["spec"].write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
        write_state(paths["state"], {"parent_run_id": parent, "tracking_uri": self.uri})
        return StudyFolder(paths["dir"].resolve(), spec, parent, self.uri)

    def trial(self, folder: StudyFolder, method: str, seed: int, curve, *, status: str = "FINISHED",
              stage: str | None = None, extra: dict[str, str] | None = None, tags: dict[str, str] | None = None) -> str:
        self.count += 1
        c = self.client
        exp = c.get_experiment_by_name(folder.spec.experiment).experiment_id
        all_tags = {"kind": "trial", "study": folder.spec.name, "trial_id": f"t{self.count:03d}", "method": method,
                    "mlflow.parentRunId": folder.parent_run_id, **({"stage": stage} if stage else {}), **(tags or {})}
        run = c.create_run(exp, tags=all_tags).info.run_id
        params = {"epochs": str(EPOCHS), "seed": str(seed), "surrogate": "triangle", "dataset": "digits",
                  **SETTINGS.get(method, {}), **(extra or {})}
        c.log_batch(run, params=[Param(k, v) for k, v in params.items()],
                    metrics=[Metric("test_acc", float(v), 1_700_000_000_000 + e, e) for e, v in enumerate(curve, 1)])
        c.set_terminated(run, status)
        return run


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return _Store(tmp_path_factory.mktemp("analysis"))


@pytest.fixture(scope="module")
def ablation(store):
    """3 methods x 5 seeds that trained their 3 epochs, and runs that must not count."""
    folder = store.study("abl")
    for method, accs in ACC.items():
        for seed, acc in zip(SEEDS, accs):
            store.trial(folder, method, seed, [acc - 0.2, acc - 0.1, acc])
    # stopped by ASHA after epoch 1, with the best accuracy of all
    store.trial(folder, "evolutionary", 5, [0.99], tags={"stopped_early": "true", "last_epoch": "1"})
    store.trial(folder, "vanilla", 6, [0.5, 0.98])  # FINISHED, no tag, but short of its 3 epochs
    store.trial(folder, "evolutionary", 7, [0.5, 0.6, 0.97], status="FAILED")
    store.trial(folder, "shortcut", 8, [0.5, 0.96], status="RUNNING")
    return folder


def _sentence(analysis, a, b):
    return next(d for d in analysis.differences if (d.a, d.b) == (a, b))


# -- comparisons -----------------------------------------------------------------------------------
def test_configurations_have_scipys_mean_sd_and_interval(ablation):
    analysis = analyse(ablation)
    assert analysis.stage == "search" and len(analysis.run_ids) == 15
    assert {c.method: c.n for c in analysis.configurations} == {"evolutionary": 5, "shortcut": 5, "vanilla": 5}
    for c in analysis.configurations:
        x = ACC[c.method]
        assert c.label == c.method and c.seeds == [str(s) for s in SEEDS]
        assert c.mean == pytest.approx(x.mean()) and c.sd == pytest.approx(x.std(ddof=1))
        lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
        assert c.ci == pytest.approx((lo, hi))
        assert "seed" not in c.params and c.params["epochs"] == "3"
    assert analysis.best.method == "evolutionary"


def test_stopped_early_and_short_runs_are_left_out(ablation):
    analysis = analyse(ablation)
    assert analysis.left_out == {"stopped early": 1, "short of its budget": 1, "not finished": 2}
    assert all(set(c.seeds) == {"0", "1", "2", "3", "4"} for c in analysis.configurations)
    assert max(c.mean for c in analysis.configurations) < 0.9  # the 0.99 of the stopped trial is nowhere


def test_a_final_epoch_logged_again_counts_at_its_newest_value(store):
    """PBT's exploit logs a trial's epochs again, newer, with the donor's values: the final value
    is the last epoch's newest logging, and a run whose newest final value is NaN is left out."""
    folder = store.study("relogged")
    relogged = store.trial(folder, "vanilla", 0, [0.5, 0.6, 0.7])
    store.client.log_metric(relogged, "test_acc", 0.9, timestamp=1_700_000_001_000, step=EPOCHS)
    nan = store.trial(folder, "vanilla", 1, [0.5, 0.6, 0.7])
    store.client.log_metric(nan, "test_acc", float("nan"), timestamp=1_700_000_001_000, step=EPOCHS)
    analysis = analyse(folder)
    assert analysis.run_ids == {relogged}
    assert analysis.left_out == {"without a finite final test_acc": 1}
    assert [c.acc for c in analysis.configurations] == [{"0": pytest.approx(0.9)}]


def test_paired_differences_equal_scipys_paired_t_test(ablation):
    analysis = analyse(ablation)
    assert [(d.a, d.b) for d in analysis.differences] == [("evolutionary", "vanilla"), ("evolutionary", "shortcut"),
                                                          ("shortcut", "vanilla")]
    for d in analysis.differences:
        res = stats.ttest_rel(ACC[d.a], ACC[d.b])
        ci = res.confidence_interval(0.95)
        assert d.n == 5 and d.mean == pytest.approx((ACC[d.a] - ACC[d.b]).mean())
        assert d.ci == pytest.approx((ci.low, ci.high)) and d.p == pytest.approx(res.pvalue)


def test_a_detected_difference_is_one_plain_sentence(ablation):
    d = _sentence(analyse(ablation), "evolutionary", "vanilla")
    diff = ACC["evolutionary"] - ACC["vanilla"]
    ci = stats.ttest_rel(ACC["evolutionary"], ACC["vanilla"]).confidence_interval(0.95)
    assert ci.low > 0
    assert d.sentence == (f"evolutionary beats vanilla by {100 * diff.mean():.1f} points "
                          f"[{100 * ci.low:.1f}, {100 * ci.high:.1f}] over 5 paired seeds")
    assert d.seeds_needed is None


def _power_nct(n: int, effect: float, sd: float) -> float:
    df, nc = n - 1, effect / sd * math.sqrt(n)
    crit = stats.t.ppf(0.975, df)
    return stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)


def test_no_difference_says_how_many_seeds_would_detect_one_point(ablation):
    d = _sentence(analyse(ablation), "shortcut", "vanilla")
    diff = ACC["shortcut"] - ACC["vanilla"]
    sd = diff.std(ddof=1)
    # brute force: the first n at which the paired t-test reaches 80 % power for a 1-point difference
    need = next(n for n in range(2, 10_000) if _power_nct(n, 0.01, sd) >= 0.8)
    assert need > 5 and d.seeds_needed == need == seeds_needed(sd)
    assert d.sentence == (f"no difference detected between shortcut and vanilla at 5 paired seeds; about {need} seeds "
                          f"would detect a 1-point difference at the observed spread (80 % power, two-sided 5 %)")
    # and by simulation: paired differences of that spread around 1 point are found about 80 % of the time
    rng = np.random.default_rng(0)
    sims = rng.normal(0.01, sd, size=(20_000, need))
    assert (stats.ttest_1samp(sims, 0, axis=1).pvalue < 0.05).mean() == pytest.approx(0.8, abs=0.015)


def test_too_few_paired_seeds_and_zero_spread_say_so(store):
    folder = store.study("few-seeds")
    store.trial(folder, "evolutionary", 0, [0.5, 0.6, 0.7])
    store.trial(folder, "evolutionary", 1, [0.5, 0.6, 0.8])
    store.trial(folder, "vanilla", 0, [0.5, 0.6, 0.6])
    store.trial(folder, "vanilla", 2, [0.5, 0.6, 0.65])
    for seed in (0, 1):  # the same accuracy as evolutionary, seed for seed
        store.trial(folder, "shortcut", seed, [0.5, 0.6, (0.7, 0.8)[seed]])
    analysis = analyse(folder)
    d = _sentence(analysis, "evolutionary", "vanilla")
    assert d.n == 1 and d.ci is None
    assert d.sentence == ("evolutionary and vanilla share 1 paired seed: a confidence interval needs at least 2, so "
                          "replicates are needed (`seeds: N` in the spec, N >= 2)")
    z = _sentence(analysis, "evolutionary", "shortcut")
    assert z.n == 2 and z.ci is None and z.seeds_needed is None
    assert "observed spread is 0" in z.sentence and z.sentence.startswith("evolutionary and shortcut reach the same")
    assert "diff_evolutionary_minus_vanilla" not in analysis.metrics()
    assert analysis.metrics()["diff_evolutionary_minus_vanilla_n"] == 1


def test_the_confirm_stage_is_the_answer(store):
    folder = store.study("conf", preset="quick")
    for i, lam in enumerate(("0.1", "0.5", "0.9")):  # the search: one seed each
        store.trial(folder, "searched", 0, [0.5, 0.6, 0.7 + i / 100], extra={"lambda0": lam, "schedule": "cosine"})
    for seed in (10, 11, 12):  # confirm: the best two with new seeds
        store.trial(folder, "searched", seed, [0.5, 0.6, 0.72 + seed / 1000], stage="confirm",
                    extra={"lambda0": "0.9", "schedule": "cosine"})
        store.trial(folder, "searched", seed, [0.5, 0.6, 0.70 + seed / 1000], stage="confirm",
                    extra={"lambda0": "0.5", "schedule": "cosine"})
    analysis = analyse(folder)
    assert analysis.stage == "confirm" and analysis.stages() == ["confirm", "search"]
    assert [(c.stage, c.label, c.n) for c in analysis.configurations] == [
        ("confirm", "lambda0=0.9", 3), ("confirm", "lambda0=0.5", 3),
        ("search", "lambda0=0.9", 1), ("search", "lambda0=0.5", 1), ("search", "lambda0=0.1", 1)]
    best = analysis.best
    assert best.stage == "confirm" and best.params["lambda0"] == "0.9"
    x = 0.72 + np.array([10, 11, 12]) / 1000
    assert best.ci == pytest.approx(tuple(stats.ttest_1samp(x, 0).confidence_interval(0.95)))
    text = analysis.markdown()
    assert "The answer comes from the confirm stage" in text and "### Search stage" in text
    assert "3 of 3 configuration(s) ran with a single seed" in text


def test_configuration_labels_round_to_the_digits_that_tell_them_apart(store):
    folder = store.study("labels", preset="quick")
    for lam, surrogate_param in (("0.9883738380592262", "0.9846632831701378"),
                                 ("0.359507900573786", "1.4296928040878032"),
                                 ("0.9884123456789012", "0.9846632831701378")):
        store.trial(folder, "searched", 0, [0.5, 0.6, 0.7], extra={"lambda0": lam, "surrogate_param": surrogate_param})
    labels = sorted(c.label for c in analyse(folder).configurations)
    # 0.98837... and 0.98841... agree to 4 digits: their labels take 5; surrogate_param 3
    assert labels == ["lambda0=0.35951 surrogate_param=1.4297", "lambda0=0.98837 surrogate_param=0.98466",
                      "lambda0=0.98841 surrogate_param=0.98466"]
    folder = store.study("labels3", preset="quick")
    for lam in ("0.9883738380592262", "0.359507900573786"):
        store.trial(folder, "searched", 0, [0.5, 0.6, 0.7], extra={"lambda0": lam})
    assert sorted(c.label for c in analyse(folder).configurations) == ["lambda0=0.36", "lambda0=0.988"]


# -- which dimension matters -----------------------------------------------------------------------
def _optuna_study(folder: StudyFolder, shortcut: int, vanilla: int = 0, pruned: int = 0, failed: int = 0):
    """A quick-preset search in the study's Optuna storage: accuracy driven by λ₀, vanilla
    trials without λ₀ or schedule, surrogate_param over the drawn surrogate's range."""
    study = optuna.create_study(study_name=folder.spec.name, storage=f"sqlite:///{folder.path / OPTUNA_FILE}",
                                direction="maximize")
    rng = np.random.default_rng(1)
    surrogates = ("atan", "sigmoid", "triangle")
    for i in range(shortcut + vanilla + pruned + failed):
        heads = i < shortcut or i >= shortcut + vanilla
        surrogate = surrogates[i % 3]
        dists = {"branches": CategoricalDistribution(branch_choices(4)),
                 "surrogate": CategoricalDistribution(surrogates),
                 "surrogate_param": FloatDistribution(*SURROGATE_RANGES[surrogate], log=True)}
        params = {"branches": "1,2,3" if heads else "none", "surrogate": surrogate,
                  "surrogate_param": float(rng.uniform(*SURROGATE_RANGES[surrogate]))}
        if heads:
            dists |= {"lambda0": FloatDistribution(0.0, 1.0),
                      "schedule": CategoricalDistribution(("constant", "linear", "cosine"))}
            params |= {"lambda0": float(rng.uniform()), "schedule": ("constant", "linear", "cosine")[i % 3]}
        value = 0.7 + 0.2 * params.get("lambda0", 0.0) + float(rng.normal(0, 0.005))
        state = TrialState.COMPLETE if i < shortcut + vanilla else \
            TrialState.PRUNED if i < shortcut + vanilla + pruned else TrialState.FAIL
        study.add_trial(create_trial(params=params, distributions=dists, state=state,
                                     value=value if state == TrialState.COMPLETE else None))
    return study


def test_importance_is_optunas_over_the_trials_with_shortcut_branches(store):
    folder = store.study("full", preset="quick")
    study = _optuna_study(folder, shortcut=14, vanilla=4, pruned=2, failed=1)
    imp = analyse(folder).importance
    assert (imp.complete, imp.pruned, imp.failed, imp.trials) == (18, 2, 1, 14)
    assert imp.sentence == ("Importances rest on the study's 18 complete trials (2 pruned and 1 failed left out): "
                            "fANOVA over 14 trials with shortcut branches; PED-ANOVA over all 18, conditional "
                            "dimensions included.")
    # surrogate_param's range depends on the surrogate: fANOVA cannot take it, and says so
    assert set(imp.fanova) == {"branches", "lambda0", "schedule", "surrogate"}
    assert any("`surrogate_param` is left out of fANOVA" in n for n in imp.notes)
    loaded = optuna.load_study(study_name="full", storage=f"sqlite:///{folder.path / OPTUNA_FILE}")
    expected = get_param_importances(loaded, evaluator=FanovaImportanceEvaluator(seed=0),
                                     params=["branches", "lambda0", "schedule", "surrogate"])
    assert imp.fanova == pytest.approx(expected)
    assert max(imp.fanova, key=imp.fanova.get) == "lambda0"
    assert imp.ped_anova == pytest.approx(get_param_importances(loaded, evaluator=PedAnovaImportanceEvaluator()))
    # the same as Optuna's default on a study of only the trials with shortcut branches
    only = optuna.create_study(direction="maximize")
    only.add_trials([create_trial(params={k: v for k, v in t.params.items() if k != "surrogate_param"},
                                  distributions={k: v for k, v in t.distributions.items() if k != "surrogate_param"},
                                  value=t.value) for t in study.trials if t.state == TrialState.COMPLETE
                     and "lambda0" in t.params])
    assert imp.fanova == pytest.approx(get_param_importances(only, evaluator=FanovaImportanceEvaluator(seed=0)))
    metrics = record_analysis(folder).metrics()
    assert metrics["importance_trials"] == 14
    assert metrics["importance_lambda0"] == pytest.approx(imp.fanova["lambda0"])


def test_fewer_than_ten_complete_trials_give_a_sentence(store):
    folder = store.study("small", preset="quick")
    _optuna_study(folder, shortcut=4, pruned=3)
    imp = analyse(folder).importance
    assert MIN_IMPORTANCE_TRIALS == 10 and not imp.fanova and not imp.ped_anova
    assert imp.sentence == "Importance needs at least 10 complete trials; this study has 4 (3 pruned left out)."
    assert not any(k.startswith("importance_") for k in analyse(folder).metrics())


def test_a_preset_that_searches_nothing_says_so(ablation):
    study = optuna.create_study(study_name="abl", storage=f"sqlite:///{ablation.path / OPTUNA_FILE}",
                                direction="maximize")
    study.add_trials([create_trial(params={}, distributions={}, value=0.8 + i / 100) for i in range(12)])
    imp = analyse(ablation).importance
    assert imp.sentence == "The search preset `ablation` searches no dimension: there is nothing to rank."
    assert imp.complete == 12 and not imp.fanova


# -- recorded on the parent run, and in the report -------------------------------------------------
def test_record_analysis_writes_metrics_and_tables_to_the_finished_parent_run(store, ablation, tmp_path):
    c = store.client
    first = record_analysis(ablation)
    again = record_analysis(ablation)  # idempotent: the same values again, no error
    assert first.metrics() == again.metrics()
    run = c.get_run(ablation.parent_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["analysis_stage"] == "search"
    metrics = run.data.metrics
    for d in first.differences:
        assert metrics[d.key] == pytest.approx(d.mean) and metrics[f"{d.key}_n"] == 5
        assert (metrics[f"{d.key}_ci_low"], metrics[f"{d.key}_ci_high"]) == pytest.approx(d.ci)
        assert metrics[f"{d.key}_p"] == pytest.approx(d.p)
    assert metrics["evolutionary_test_acc_mean"] == pytest.approx(ACC["evolutionary"].mean())
    assert metrics["vanilla_n"] == 5 and metrics["best_config_n"] == 5
    assert metrics["full_budget_runs"] == 15 and metrics["left_out_runs"] == 4
    assert {a.path for a in c.list_artifacts(ablation.parent_run_id)} >= {COMPARISON_MD, COMPARISON_CSV}
    md = (tmp_path / COMPARISON_MD)
    c.download_artifacts(ablation.parent_run_id, COMPARISON_MD, str(tmp_path))
    text = md.read_text()
    assert "## Comparison" in text and _sentence(first, "evolutionary", "vanilla").sentence in text
    c.download_artifacts(ablation.parent_run_id, COMPARISON_CSV, str(tmp_path))
    rows = (tmp_path / COMPARISON_CSV).read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("stage,configuration,method,n,")


def test_report_has_the_comparison_and_importance_sections(store, ablation):
    rep = write_report(ablation.path)
    text = (rep.path / "report.md").read_text()
    assert "## Comparison" in text and "## Which dimension matters" in text
    assert "| evolutionary | evolutionary | 5 |" in text
    assert _sentence(rep.analysis, "evolutionary", "vanilla").sentence in text
    assert "stopped early (epoch 1 of 3)" in text
    # the best trial trained its full budget; the best configuration (mean, CI) comes first
    best = rep.best
    assert best["run_id"] in rep.analysis.run_ids and best["final"] == pytest.approx(ACC["evolutionary"].max())
    section = text.split("## Best trial")[1]
    assert section.index("Best configuration") < section.index("Best single trial")
    lo, hi = rep.analysis.best.ci
    assert f"[{lo:.4f}, {hi:.4f}] over 5 seeds" in section
    assert "comparison.md" in {a.path for a in store.client.list_artifacts(ablation.parent_run_id)}
    json.dumps(rep.analysis.metrics())  # plain floats
