"""Section 7 of ``python -m benchmarks``: λ learned by population-based training against the
paper's linear decay, at equal compute.

Per seed, two studies through ``study.tuner.run_study`` that buy the same trial-epochs: the
paper's setting repeated over a population of seeds (``scheduler: fifo``) and a PBT population
of that size that perturbs λ₀; their best and mean final test_acc, the epochs and training time
they spent, the λ their trials trained with, and over the seeds the paired difference with
``study.analysis``'s interval and sentence.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks._studies import STUDY_CPUS, LoadSampler, local_ray, snn_study_settings

# seeds, the population P (and the linear arm's trials), epochs a trial, training batches an epoch
_PBT_FULL: tuple[tuple[int, ...], int, int, int] = (tuple(range(16)), 4, 6, 10)
_PBT_QUICK: tuple[tuple[int, ...], int, int, int] = ((0,), 4, 2, 2)

_NOTE = ("The issue's second comparison, from the real study path: `study.tuner.run_study` on the quick-start spec "
         "(digits, resnet-tiny, T = 2, batch 64; 2 trials at once on a Ray started once with 2 CPUs, 1 CPU a trial; "
         "MLflow store and study folders in a new temporary folder; the process has `snn-study`'s settings, "
         "`study.cli.process_settings`), P = {P} trials of E = {E} epochs of {B} "
         "training batches each (`train.max_batches: {B}`; the whole test set every epoch) in both arms, so each arm "
         "buys P x E = {PE} trial-epochs. (a) the paper's linear decay: `search: {{preset: paper}}` (λ₀ = 0.25, "
         "λ(i) = λ₀ (1 - i/I) over the trial's I = E x {B} iterations, a head after every stage, the triangle "
         "surrogate), `scheduler: fifo`, trials seeded 100 s + 0..P-1. (b) PBT-learned λ: `scheduler: pbt`, "
         "`trials: P` (the population), `pbt: {{interval: 1, quantile: 0.25}}`, `seed: 100 s`: every member starts "
         "from the same spec (paper's setting but λ constant between perturbations, λ₀ drawn uniform in [0, 1] by "
         "Tune, seeded) and trains with seed 100 s; after every epoch but the last, the bottom quarter by test_acc "
         "continues from a top quarter's checkpoint with its λ₀ × 0.8 or × 1.2 (or a new draw). Seeds s = "
         "{seeds}{quick}; the two arms run in turn, the order swapped each seed, after an untimed study that loads the "
         "driver's modules. Per seed: best final test_acc, the best of the arm's P trials at its full budget (the best "
         "model the budget bought; for PBT, along its lineage of copied weights), and the mean over the P; epochs "
         "trained: every distinct (epoch, epoch_time) of the study's trials: the results the driver heard (recorded "
         "by a Tune callback of the benchmark's own, `benchmarks._driver_results`, as PBT pauses and resumes trials), "
         "each trial's result.json and its lineage in its newest checkpoint, a result seen twice counted once (a "
         "trial that PBT paused may train an epoch again); training time: the sum of their epoch_time; λ: what each "
         "epoch reports (λ at its last iteration), along the trial's lineage; exploits: lines "
         "of Tune's `pbt_global.txt`. Over the seeds: b − a paired by seed, its mean, 95 % Student-t interval and "
         "p (`scipy.stats.ttest_rel`), and the sentence of `study.analysis` (its `_difference`, the replicated "
         "comparison of the study's answer; \"seeds needed\" is for a 1-point difference at 80 % power).")


def note(quick: bool) -> str:
    """What the section measures, with the sizes ``--quick`` or a full run uses."""
    seeds, pop, epochs, batches = _PBT_QUICK if quick else _PBT_FULL
    return _NOTE.format(P=pop, E=epochs, B=batches, PE=pop * epochs, seeds=", ".join(map(str, seeds)),
                        quick=" (--quick)" if quick else "")


@dataclass
class _ArmTrial:
    """One trial of a section-7 study, from its folder."""

    trial_id: str
    acc: float | None  # final test_acc at the full budget (None: short of it, diverged or stopped)
    lambdas: list[float]  # λ at each epoch's last iteration, along the trial's lineage (a donor's after an exploit)
    start_lambda0: float  # the λ₀ it started with (its first result's config, else its record's)


@dataclass
class _ArmStudy:
    seed: int
    arm: str  # "linear" or "pbt"
    wall: float  # run_study called to returned
    trials: list[_ArmTrial]
    exploits: int  # PBT's exploits (lines of Tune's pbt_global.txt); 0 for the linear arm
    trained: dict[tuple[int, float], float]  # every epoch trained in the study: (epoch, epoch_time) -> epoch_time
    load: float  # the machine's 1-minute load average while it ran

    @property
    def full(self) -> list[_ArmTrial]:
        return [t for t in self.trials if t.acc is not None]

    @property
    def best(self) -> _ArmTrial | None:
        return max(self.full, key=lambda t: t.acc, default=None)


def _trained_epochs(trial_dir: Path) -> dict[tuple[int, float], float]:
    """Every epoch a trial trained, as the driver heard of it: (epoch, epoch_time) -> epoch_time.

    Read from what the benchmarks' :class:`~benchmarks._driver_results.DriverResults` heard of
    the trial on the driver and from its ``result.json``, which alone does not do (a trial that
    PBT pauses and resumes starts it again from its checkpoint's copy). A result heard twice
    (replayed after a resume, or in both) carries the same epoch_time and counts once.
    """
    from benchmarks._driver_results import DriverResults

    out: dict[tuple[int, float], float] = {}
    lines = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]
    heard = [r for _, r in DriverResults.heard.get(lines[0]["trial_id"], [])] if lines else []
    for r in lines + heard:
        if isinstance(r.get("epoch"), (int, float)) and isinstance(r.get("epoch_time"), (int, float)):
            out[(int(r["epoch"]), float(r["epoch_time"]))] = float(r["epoch_time"])
    return out


def _arm_study(tmp: str, seed: int, arm: str, population: int, epochs: int, max_batches: int) -> _ArmStudy:
    """One study of section 7: the paper's setting repeated over ``population`` seeds (fifo), or a
    PBT population of that size, on the quick-start data and network; read back from its folder."""
    from benchmarks._driver_results import DriverResults
    from snn.metrics import EPOCH, LAMBDA, TEST_ACC
    from study.spec import quickstart_spec
    from study.tracking import read_trial
    from study.tuner import run_study

    name = f"pbt{seed}{arm}{population}x{epochs}"
    over = {"name": name, "dataset": "digits", "arch": "resnet-tiny", "timesteps": 2, "trials": population,
            "concurrency": STUDY_CPUS, "seed": seed, "train.epochs": epochs, "train.batch_size": 64,
            "train.max_batches": max_batches, "storage": f"{tmp}/studies",
            "mlflow.tracking_uri": f"sqlite:///{tmp}/mlflow.db", "data_root": f"{tmp}/data"}
    if arm == "pbt":
        over.update({"scheduler": "pbt", "pbt": {"interval": 1, "quantile": 0.25}})
    else:
        over.update({"scheduler": "fifo", "search.preset": "paper"})
    spec = quickstart_spec(over)
    DriverResults.clear()
    with LoadSampler() as load:
        t0 = time.perf_counter()
        result = run_study(spec, verbose=0)
        wall = time.perf_counter() - t0
    trials, trained = [], {}
    for f in sorted(Path(tmp, "studies", name).rglob("result.json")):
        rec = read_trial(f.parent)
        if rec is None:
            continue
        lines = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        last = rec.results[-1] if rec.results else {}
        full = (not last.get("diverged") and not last.get("stopped") and int(last.get(EPOCH, 0)) >= epochs
                and isinstance(last.get(TEST_ACC), (int, float)))
        first_config = (lines[0].get("config") or {}) if lines else {}
        trained.update(_trained_epochs(f.parent))
        for r in rec.results:  # its lineage: a donor's epochs have the donor's epoch_time, counted once
            if isinstance(r.get(EPOCH), (int, float)) and isinstance(r.get("epoch_time"), (int, float)):
                trained.setdefault((int(r[EPOCH]), float(r["epoch_time"])), float(r["epoch_time"]))
        trials.append(_ArmTrial(rec.trial_id, float(last[TEST_ACC]) if full else None,
                                [float(r[LAMBDA]) for r in rec.results if LAMBDA in r],
                                float(first_config.get("lambda0", rec.config.get("lambda0", float("nan"))))))
    if result.errored or len(trials) != population:
        raise RuntimeError(f"pbt section: {result.errored} of {population} trials errored, {len(trials)} read back")
    log = Path(tmp, "studies", name, "pbt_global.txt")
    exploits = sum(1 for line in log.read_text().splitlines() if line.strip()) if log.exists() else 0
    return _ArmStudy(seed, arm, wall, trials, exploits, trained, statistics.mean(load.samples))


def bench_pbt(quick: bool) -> list[dict]:
    # P trials of E epochs of B batches in each arm: the same trial-epochs, the same batches
    seeds, population, epochs, max_batches = _PBT_QUICK if quick else _PBT_FULL
    studies: list[_ArmStudy] = []
    snn_study_settings()
    with local_ray(), tempfile.TemporaryDirectory() as tmp:
        # untimed: the driver's first imports, Ray's pre-started workers, the data downloaded once
        _arm_study(tmp, 99, "linear", STUDY_CPUS, 1, 1)
        for i, seed in enumerate(seeds):  # the two arms in turn, the order swapped each seed
            # one seed base for both arms: the linear arm's seeds are 100 s + 0..P-1, every PBT
            # member trains with 100 s (the spec's seed; Tune's draw of λ₀ is seeded with it too)
            for arm in (("linear", "pbt") if i % 2 == 0 else ("pbt", "linear")):
                s = _arm_study(tmp, 100 * seed, arm, population, epochs, max_batches)
                studies.append(s)
                print(f"  seed {100 * seed}, {arm}: {s.wall:.0f} s, best {s.best.acc if s.best else None}, "
                      f"{s.exploits} exploits", flush=True)
    return _pbt_rows(studies, population, epochs, max_batches)


def _pbt_rows(studies: list[_ArmStudy], population: int, epochs: int, max_batches: int) -> list[dict]:
    from study.replicates import configuration as _configuration
    from study.replicates import paired_difference as _difference

    mean = statistics.mean
    by_seed: dict[int, dict[str, _ArmStudy]] = {}
    for s in studies:
        by_seed.setdefault(s.seed, {})[s.arm] = s
    label = {"linear": "a: linear decay (paper)", "pbt": "b: PBT-learned λ"}
    rows = []
    for seed, arms in sorted(by_seed.items()):
        for arm in ("linear", "pbt"):
            s = arms[arm]
            best = s.best
            full = s.full
            rows.append({
                "seed": seed, "arm": label[arm], "trials at full budget": f"{len(full)} of {len(s.trials)}",
                "epochs trained": len(s.trained),
                "trials' training time, sum of epoch_time (s)": sum(s.trained.values()),
                "study wall (s)": s.wall, "load average": s.load,
                "best final test_acc": best.acc if best else "",
                "mean final test_acc": mean(t.acc for t in full) if full else "",
                "best trial: λ by epoch": ", ".join(f"{v:.3g}" for v in best.lambdas) if best else "",
                "best trial: final λ": best.lambdas[-1] if best and best.lambdas else "",
                "best trial: mean λ over epochs": mean(best.lambdas) if best and best.lambdas else "",
                "population: mean λ over epochs": mean(mean(t.lambdas) for t in s.trials if t.lambdas),
                "exploits": s.exploits if arm == "pbt" else ""})
    # over the seeds: PBT - linear, paired by seed, with study.analysis's interval and sentence
    paired = [arms for arms in by_seed.values() if all(a in arms and arms[a].full for a in ("linear", "pbt"))]
    for what, pick in (("best final test_acc", lambda s: s.best.acc),
                       ("mean final test_acc", lambda s: mean(t.acc for t in s.full))):
        conf = {arm: _configuration("bench", arm if arm == "linear" else "PBT", arm, {},
                                    {str(a[arm].seed): pick(a[arm]) for a in paired}, ())
                for arm in ("linear", "pbt")}
        d = _difference("bench", conf["pbt"], conf["linear"])
        rows.append({"seed": f"all ({d.n})", "arm": f"b − a, {what} (points)",
                     what: "" if d.mean is None else (
                         f"{100 * d.mean:+.2f}" + ("" if d.ci is None else
                                                   f" [{100 * d.ci[0]:+.2f}, {100 * d.ci[1]:+.2f}] (95 % CI), "
                                                   f"p {d.p:.3g}")),
                     "verdict": d.sentence})
    for arm in ("linear", "pbt"):
        ss = [arms[arm] for arms in by_seed.values() if arm in arms and arms[arm].best]
        lam0 = mean(t.start_lambda0 for s in ss for t in s.trials)
        rows.append({"seed": "all", "arm": label[arm] + ", λ over the seeds",
                     "best trial: λ by epoch": ", ".join(f"{mean(v):.3g}" for v in zip(*(s.best.lambdas for s in ss))),
                     "best trial: final λ": mean(s.best.lambdas[-1] for s in ss),
                     "best trial: mean λ over epochs": mean(mean(s.best.lambdas) for s in ss),
                     "population: mean λ over epochs": mean(mean(t.lambdas) for s in ss for t in s.trials
                                                            if t.lambdas),
                     "verdict": (f"the linear decay's mean over training, λ₀ / 2: {lam0 / 2:.4g} (λ₀ {lam0:g}, its "
                                 f"trials' config); its mean over epochs is of λ at each epoch's last iteration"
                                 ) if arm == "linear" else "means over the seeds of each seed's best trial (λ by "
                                                           "epoch: epoch by epoch) and of every trial's lineage"})
    return rows
