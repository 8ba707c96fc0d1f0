"""Section 9 of ``python -m benchmarks``: timesteps as a fidelity against a study at the target T.

Per dataset and seed, two studies through ``study.tuner.run_study`` whose specs differ only in
``fidelity``: (a) every trial at the target T throughout, ASHA on epochs; (b) ``fidelity:
{timesteps: [1, 2, 4]}``, ASHA on cost. Read back from their folders: the search's compute
(Σ over its epochs of each epoch's T), the trials' training time and the search's wall time,
each search's best accuracy and, where the spec has a confirm stage, the study's answer (the
confirmed configuration with the best mean over the new seeds) and its accuracy; over the seeds, the ratios (b / a) and the paired difference
of the confirmed accuracies with ``study.analysis``'s interval and sentence, and the report's
rank correlations (:mod:`study.fidelity_report`) of the fidelity arm.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks._studies import STUDY_CPUS, LoadSampler, local_ray, snn_study_settings

FIDELITY = [1, 2, 4]  # the target T last


@dataclass(frozen=True)
class _Setting:
    """One dataset's studies: the spec's overrides beside the quick-start's, and the seeds."""

    dataset: str
    seeds: tuple[int, ...]
    trials: int
    epochs: int
    over: dict
    confirm: bool


_FULL = (_Setting("digits", (0, 1, 2, 3, 4), 8, 8, {"train.batch_size": 64}, True),
         _Setting("digits-dvs", (0, 1), 6, 6, {"arch_kwargs": {"width": 8}, "train.batch_size": 64,
                                               "train.max_batches": 12}, False))
_QUICK = (_Setting("digits", (0,), 4, 4, {"train.batch_size": 64, "train.max_batches": 4}, True),)
_CONFIRM = {"top": 1, "seeds": 3}

_NOTE = ("The issue's benchmark, from the real study path: `study.tuner.run_study` on the quick-start spec (preset "
         "quick: λ₀, schedule, branches, surrogate and its parameter searched; resnet-tiny; TPE seeded with the "
         "study's seed, the paper's setting first; 2 trials at once on a Ray started once with 2 CPUs, 1 CPU a "
         "trial; MLflow store and study folders in a new temporary folder; the process has `snn-study`'s settings). "
         "Per dataset and seed s, two studies with the same trials, sampler seed and everything else: (a) target T: "
         "T = {target} throughout, `scheduler: asha` on epochs (rungs after epoch 1, 2, 4, ...); (b) fidelity: "
         "`fidelity: {{timesteps: {values}}}`, ASHA on cost (rungs at cost 2, 4, 8, ..., T raised at the first two). "
         "{settings} With ≤ 10 trials TPE draws every configuration at random, seeded: both arms try the same ones. "
         "The arms run in turn, the order swapped each seed, after an untimed study that loads the driver's "
         "modules (and bins the event data at every T). Compute: Σ over the search's epochs of each epoch's T "
         "(the trials' last `cost`); training: Σ of the search trials' `epoch_time`; search wall: the search "
         "stage's span in its Optuna storage (first trial started to last one finished), study wall: `run_study` "
         "called to returned (a confirm stage included). Confirm (`confirm: {{top: 1, seeds: 3}}`, every trial at "
         "T = {target}, seeds s + 1..3: the search's first-ranked configuration and the paper's setting, unless they are "
         "one): the study's answer, the confirmed configuration with the best mean over the 3 seeds, and that mean "
         "(evolutionary: the paper's setting; searched: another); over the seeds, b − a paired by seed, its mean, 95 % Student-t interval and p, "
         "and the sentence of `study.analysis`. ρ: the Fidelity section's Spearman correlation of each cheap rung "
         "with the first rung at the target T, over the fidelity arm's trials that reached it (the report's "
         "verdict rule: below 0.5 the fidelity misled).")


def note(quick: bool) -> str:
    """What the section measures, with the sizes ``--quick`` or a full run uses."""
    parts = []
    for s in _QUICK if quick else _FULL:
        batches = s.over.get("train.max_batches")
        parts.append(f"{s.dataset}: {s.trials} trials of {s.epochs} epochs, "
                     f"{f'{batches} training batches' if batches else 'every training batch'} of 64 an epoch "
                     f"(the whole test set evaluated), {'' if s.confirm else 'no confirm stage, '}seeds "
                     f"{', '.join(map(str, s.seeds))}{' (--quick)' if quick else ''}"
                     + (f", arch_kwargs {s.over['arch_kwargs']}" if "arch_kwargs" in s.over else ""))
    return _NOTE.format(target=FIDELITY[-1], values=FIDELITY, settings="; ".join(parts) + ".")


@dataclass
class _Arm:
    dataset: str
    seed: int
    arm: str  # "target" or "fidelity"
    trials: int
    full: int  # trials at their full budget
    cost: float  # Σ of each search epoch's T
    trained_s: float  # Σ epoch_time of the search trials
    search_wall: float
    study_wall: float
    load: float
    best_acc: float | None  # the search's best final test_acc at the full budget
    answer: str | None  # the confirm stage's best configuration (seed and fidelity left out), as JSON
    confirmed: dict[str, float]  # its test_acc by confirm seed
    stopped_at: dict[int, int]  # T -> trials ASHA stopped there
    rho: list[str]  # the Fidelity section's ρ per cheap rung


def _config_key(config: dict) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in ("seed", "fidelity")}, sort_keys=True, default=str)


def _search_wall(study_dir: Path) -> float:
    import optuna

    from study.folder import OPTUNA_FILE

    study = optuna.load_study(study_name=study_dir.name, storage=f"sqlite:///{study_dir / OPTUNA_FILE}")
    times = [(t.datetime_start, t.datetime_complete) for t in study.trials if t.datetime_complete]
    return (max(e for _, e in times) - min(s for s, _ in times)).total_seconds() if times else float("nan")


def _study(tmp: str, setting: _Setting, seed: int, arm: str) -> _Arm:
    from snn.metrics import COST, EPOCH, TEST_ACC, TIMESTEPS
    from study.fidelity_report import analyse
    from study.spec import quickstart_spec
    from study.tracking import read_trial
    from study.tuner import run_study

    name = f"fid-{setting.dataset}-{seed}-{arm}"
    over = {"name": name, "dataset": setting.dataset, "timesteps": FIDELITY[-1], "trials": setting.trials,
            "concurrency": STUDY_CPUS, "seed": seed, "train.epochs": setting.epochs, "storage": f"{tmp}/studies",
            "mlflow.tracking_uri": f"sqlite:///{tmp}/mlflow.db", "data_root": f"{tmp}/data", **setting.over}
    if setting.confirm:
        over["confirm"] = _CONFIRM
    if arm == "fidelity":
        over["fidelity"] = {"timesteps": FIDELITY}
    spec = quickstart_spec(over)
    with LoadSampler() as load:
        t0 = time.perf_counter()
        result = run_study(spec, verbose=0)
        wall = time.perf_counter() - t0
    study_dir = Path(tmp, "studies", name)
    search = [r for r in map(read_trial, sorted(study_dir.glob("trial_*"))) if r is not None]
    if result.errored or len(search) != setting.trials:
        raise RuntimeError(f"fidelity section: {name}: {result.errored} trials errored, {len(search)} read back")
    full = [r for r in search if r.complete and isinstance(r.results[-1].get(TEST_ACC), float)]
    best = max(full, key=lambda r: r.results[-1][TEST_ACC], default=None)
    groups: dict[str, dict[str, float]] = {}  # the confirm stage's configurations: test_acc by seed
    for r in map(read_trial, sorted(study_dir.glob("confirm/trial_*"))):
        if r is not None and r.complete:
            groups.setdefault(_config_key(r.config), {})[str(r.config["seed"])] = float(r.results[-1][TEST_ACC])
    answer = max(groups, key=lambda k: statistics.mean(groups[k].values()), default=None)
    stopped_at: dict[int, int] = {}
    for r in search:
        if not r.complete and r.results and TIMESTEPS in r.results[-1]:
            stopped_at[int(r.results[-1][TIMESTEPS])] = stopped_at.get(int(r.results[-1][TIMESTEPS]), 0) + 1
    rho = []
    if arm == "fidelity":
        from study.fidelity_report import TrialCurve

        curves = [TrialCurve(r.trial_id, [int(x[TIMESTEPS]) for x in r.results], [x[COST] for x in r.results],
                             [float(x.get(TEST_ACC, float("nan"))) for x in r.results], not r.complete)
                  for r in search]
        rho = [f"T={k.timesteps}: " + ("—" if k.rho is None else f"{k.rho:+.2f} (n {k.n})")
               for k in analyse(curves, tuple(FIDELITY), setting.epochs).rankings]
    return _Arm(setting.dataset, seed, arm, len(search), len(full),
                sum(float(x[TIMESTEPS]) for r in search for x in r.results if EPOCH in x),
                sum(float(x["epoch_time"]) for r in search for x in r.results if "epoch_time" in x),
                _search_wall(study_dir), wall, statistics.mean(load.samples),
                None if best is None else float(best.results[-1][TEST_ACC]), answer,
                {} if answer is None else groups[answer], stopped_at, rho)


def _prebin(tmp: str, setting: _Setting) -> None:
    """Bin an event dataset's every sample at every T of the fidelity, untimed: the cache that
    the first study to need a T would otherwise fill inside its wall time."""
    from snn import data

    if data.info(setting.dataset).kind != "frames":
        return
    for t in FIDELITY:
        for train in (True, False):
            ds = data.build(setting.dataset, f"{tmp}/data", train, t)
            for i in range(len(ds)):
                ds[i]


def bench_fidelity(quick: bool) -> list[dict]:
    arms: list[_Arm] = []
    snn_study_settings()
    with local_ray(), tempfile.TemporaryDirectory() as tmp:
        for setting in _QUICK if quick else _FULL:
            _prebin(tmp, setting)
            warm = _Setting(setting.dataset, (99,), STUDY_CPUS, len(FIDELITY) + 1, setting.over, False)
            _study(tmp, warm, 99, "fidelity")  # untimed: the driver's imports, Ray's workers
            for i, seed in enumerate(setting.seeds):
                for arm in (("target", "fidelity") if i % 2 == 0 else ("fidelity", "target")):
                    a = _study(tmp, setting, seed, arm)
                    arms.append(a)
                    print(f"  {a.dataset} seed {seed}, {arm}: cost {a.cost:g}, search {a.search_wall:.0f} s, study "
                          f"{a.study_wall:.0f} s, best {a.best_acc}, answer {a.answer and _paper_or_searched(a.answer)} "
                          f"{a.confirmed}", flush=True)
    return _rows(arms)


def _confirmed_any(pairs: list[dict[str, _Arm]]) -> bool:
    return any(p["target"].confirmed for p in pairs)


def _paper_or_searched(answer: str) -> str:
    from snn.config import method_of

    c = json.loads(answer)
    return method_of(float(c.get("lambda0", 0.0)), c.get("schedule", ""), c.get("branches", "none"))


def _rows(arms: list[_Arm]) -> list[dict]:
    from study.replicates import configuration as _configuration
    from study.replicates import paired_difference as _difference

    rows = []
    for a in arms:
        mean = statistics.mean(a.confirmed.values()) if a.confirmed else None
        rows.append({"dataset": a.dataset, "seed": a.seed, "arm": a.arm,
                     "full budget": f"{a.full} of {a.trials}",
                     "stopped at T": ", ".join(f"{t}: {n}" for t, n in sorted(a.stopped_at.items())),
                     "compute Σ epochs × T": a.cost, "training Σ epoch_time (s)": a.trained_s,
                     "search wall (s)": a.search_wall, "study wall (s)": a.study_wall, "load": a.load,
                     "best in search": "" if a.best_acc is None else a.best_acc,
                     "answer": "" if a.answer is None else _paper_or_searched(a.answer),
                     "its confirmed test_acc": "" if mean is None else mean, "ρ (fidelity)": "; ".join(a.rho)})
    for dataset in dict.fromkeys(a.dataset for a in arms):
        pairs = {}
        for a in arms:
            if a.dataset == dataset:
                pairs.setdefault(a.seed, {})[a.arm] = a
        both = [p for p in pairs.values() if len(p) == 2]
        ratio = lambda key: [getattr(p["fidelity"], key) / getattr(p["target"], key) for p in both]  # noqa: E731
        same = sum(p["fidelity"].answer == p["target"].answer for p in both if p["target"].answer)
        row = {"dataset": dataset, "seed": f"all ({len(both)})", "arm": "b / a (mean, min–max over seeds)"}
        for key, col in (("cost", "compute Σ epochs × T"), ("trained_s", "training Σ epoch_time (s)"),
                         ("search_wall", "search wall (s)"), ("study_wall", "study wall (s)")):
            r = ratio(key)
            row[col] = f"{statistics.mean(r):.2f} ({min(r):.2f}–{max(r):.2f})" if r else ""
        row["answer"] = f"the same configuration in {same} of {len(both)} seeds" if _confirmed_any(both) else ""
        rows.append(row)
        confirmed = [p for p in both if p["fidelity"].confirmed and p["target"].confirmed]
        if confirmed:
            conf = {arm: _configuration("bench", arm, arm, {}, {str(p[arm].seed): statistics.mean(
                p[arm].confirmed.values()) for p in confirmed}, ()) for arm in ("target", "fidelity")}
            d = _difference("bench", conf["fidelity"], conf["target"])
            rows.append({"dataset": dataset, "seed": f"all ({d.n})", "arm": "b − a, confirmed test_acc (points)",
                         "its confirmed test_acc": "" if d.mean is None else (
                             f"{100 * d.mean:+.2f}" + ("" if d.ci is None else
                                                       f" [{100 * d.ci[0]:+.2f}, {100 * d.ci[1]:+.2f}] (95 % CI), "
                                                       f"p {d.p:.3g}")),
                         "ρ (fidelity)": d.sentence})
    return rows
