"""Section 6 of ``python -m benchmarks``: the firing-rate guard, silent trials stopped and the
compute it saves.

The same TPE study run twice per seed through ``study.tuner.run_study``, without the guard (the
spec's ``stop`` with ``silent_rate`` and ``saturated_rate`` null) and with its defaults: how
many trials were silent or saturated, how many the guard stopped, the trial-epochs, time and
best accuracy of each arm, and whether the stopped configurations were silent where the
unguarded arm ran them.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks._studies import STUDY_CPUS, LoadSampler, local_ray, snn_study_settings
from snn.config import FiringStop

NOTE = ("The issue's comparison, from the real study path: `study.tuner.run_study`, in a process with "
        "`snn-study`'s settings (`study.cli.process_settings`), on the quick-start spec (digits, resnet-tiny, "
        "T = 2, batch 64, 3 epochs a trial; `search: {preset: quick, dims: [tau, "
        "v_threshold]}`, so τ uniform in [0.05, 1] and the threshold log-uniform in [0.1, 10] besides the "
        "preset's four dimensions; `scheduler: fifo`, so that nothing but the guard stops a trial; 2 trials "
        "at once on a Ray started once with 2 CPUs; MLflow store and study folders in a new temporary "
        "folder). Seeds 0-3, 32 trials a study (--quick: seed 0, 20 trials); each seed runs the same study "
        "twice: (a) without the guard, every trial's `stop: {silent_rate: null, saturated_rate: null}` (the "
        "spec's `stop` key), and (b) with it, `stop`'s defaults: a stage below 1e-3 spikes per neuron "
        "and step, or above 0.9, at 3 consecutive checks (4 an epoch, on training batches) stops the trial, "
        "PRUNED and infeasible in Optuna. TPE, seeded with the study's seed: 10 random start-up trials (trial "
        "0 the paper's setting in the preset's dimensions), so the start-up trials are the same "
        "configurations in both arms; after them TPE's suggestions depend on the results and on which of the "
        "2 running trials ends first, so they differ between the arms and between runs. An untimed study "
        "first loads the driver's modules; the two arms run in turn, the order swapped each seed. Silent, in "
        "both arms alike: stopped as silent by the guard, or a stage's test firing rate at the trial's last "
        "epoch below 1e-3 (saturated: above 0.9); the halves split the trials by Optuna's trial number, the "
        "order TPE suggested them. Trial-epochs: epochs trained, a stopped trial's fraction of its last one "
        "included; trials' own time: each trial's Tune `time_total_s` (its set-up included); study wall: "
        "`run_study` called to returned; load average while it ran: the machine's 1-minute load average "
        "sampled every 2 s during the study (its 2 trials and driver make about 3; the rest is other work on "
        "the machine, whose 2 cores the trials share). Best test_acc: of the trials that trained their full "
        "budget. `/ a`, `- a`: the guarded study against the unguarded one of the same seed (all: summed over "
        "the seeds). The last two columns check the guard's stops: where the unguarded study ran the same "
        "configuration (same seed, so the same training), was that run silent at its end, and, if not, how "
        "well it learned.")

# The rule that calls a trial silent, in both arms: FiringStop's default silent_rate (saturated:
# its saturated_rate), applied to the test firing rate of each stage at the trial's last epoch (the
# guard's own checks read training batches).
_SILENT_RATE, _SATURATED_RATE = FiringStop().silent_rate, FiringStop().saturated_rate
_GUARD_OFF = {"silent_rate": None, "saturated_rate": None}  # the unguarded arm's `stop`


@dataclass
class _GuardTrial:
    """One trial of a guard study, as its folder and the Optuna storage say."""

    number: int  # Optuna's: the order the sampler suggested it
    params: dict  # what the search chose
    stopped: str | None  # the guard's verdict (silent, saturated), None: trained its full budget
    epochs: float  # epochs trained (a stopped trial: the fraction of its last one included)
    seconds: float  # the trial's own time, Tune's time_total_s at its last report (set-up included)
    acc: float | None  # test_acc at the full budget (None: stopped or diverged)
    low: float | None  # the lowest test firing rate of a stage at its last evaluated epoch
    high: float | None  # the highest

    @property
    def silent(self) -> bool:
        return self.stopped == "silent" or (self.stopped is None and self.low is not None and self.low < _SILENT_RATE)

    @property
    def saturated(self) -> bool:
        return self.stopped == "saturated" or (self.stopped is None and self.high is not None
                                               and self.high > _SATURATED_RATE)


@dataclass
class _GuardStudy:
    seed: int
    guarded: bool
    wall: float  # run_study called to returned
    trials: list[_GuardTrial]  # in Optuna's order
    infeasible: int  # Optuna trials with the firing constraint > 0
    load: float  # the machine's 1-minute load average, mean of samples every 2 s while the study ran


def _guard_study(tmp: str, seed: int, guarded: bool, trials: int, epochs: int, max_batches: int | None = None
                 ) -> _GuardStudy:
    """Run one study of the guard section and read it back (trial folders, Optuna storage)."""
    import optuna

    from snn.metrics import EPOCH, STOPPED, TEST_ACC, ran_full_budget
    from study.spec import quickstart_spec
    from study.tracking import read_trial
    from study.tuner import run_study, study_paths

    name = f"guard{seed}{'b' if guarded else 'a'}{trials}"
    over = {"name": name, "dataset": "digits", "arch": "resnet-tiny", "trials": trials, "concurrency": STUDY_CPUS,
            "scheduler": "fifo", "seed": seed, "train.epochs": epochs, "train.batch_size": 64,
            "train.max_batches": max_batches, "search.preset": "quick", "search.dims": ["tau", "v_threshold"],
            "storage": f"{tmp}/studies", "mlflow.tracking_uri": f"sqlite:///{tmp}/mlflow.db",
            "data_root": f"{tmp}/data"}
    spec = quickstart_spec(over if guarded else {**over, "stop": _GUARD_OFF})
    with LoadSampler() as load:
        t0 = time.perf_counter()
        result = run_study(spec, verbose=0)
        wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{study_paths(spec)['optuna']}")
    ot_trials = study.get_trials(deepcopy=False)
    out = []
    for f in sorted(Path(tmp, "studies", name).rglob("result.json")):
        rec = read_trial(f.parent)
        if rec is None:
            continue
        if (rec.config.get("stop") or {}).get("silent_rate") != (None if not guarded else _SILENT_RATE):
            raise RuntimeError(f"guard section: {rec.trial_id} ran with stop={rec.config.get('stop')}")
        match = [t for t in ot_trials if all(rec.config.get(k) == v for k, v in t.params.items())]
        if len(match) != 1:
            raise RuntimeError(f"guard section: trial {rec.trial_id} matches {len(match)} Optuna trials")
        ot, last = match[0], rec.results[-1]
        evaluated = [r for r in rec.results if not r.get(STOPPED) and not r.get("diverged")]
        rates = [v for k, v in (evaluated[-1] if evaluated else {}).items() if k.startswith("firing_rate_")]
        full = not last.get(STOPPED) and not last.get("diverged") and ran_full_budget(last.get(EPOCH), epochs)
        out.append(_GuardTrial(
            ot.number, dict(ot.params), last.get(STOPPED) or None,
            float(last["epochs_done"]) if last.get(STOPPED) else float(len(evaluated)),
            _trial_seconds(f), float(last[TEST_ACC]) if full else None,
            min(rates) if rates else None, max(rates) if rates else None))
    if result.errored or len(out) != trials:
        raise RuntimeError(f"guard section: {result.errored} of {trials} trials errored, {len(out)} read back")
    infeasible = sum(t.constraints.get("firing", 0) > 0 for t in study.get_trials(deepcopy=False))
    return _GuardStudy(seed, guarded, wall, sorted(out, key=lambda t: t.number), infeasible,
                       statistics.mean(load.samples))


def _trial_seconds(result_json: Path) -> float:
    """A trial's own time: Tune's time_total_s at its last report (the checkpoints' records,
    which read_trial prefers, do not carry it)."""
    return max(float(json.loads(line).get("time_total_s", 0.0)) for line in result_json.read_text().splitlines()
               if line.strip())


def bench_guard(quick: bool) -> list[dict]:
    # 3 epochs: after 1, a network's deeper stages can still be silent at test (BatchNorm's running
    # statistics lag its batch statistics) while it fires in training and learns in the next epochs
    seeds, trials, epochs = ((0,), 20, 3) if quick else ((0, 1, 2, 3), 32, 3)
    studies: list[_GuardStudy] = []
    snn_study_settings()
    with local_ray(), tempfile.TemporaryDirectory() as tmp:
        # untimed: the driver's first imports and Ray's pre-started workers
        _guard_study(tmp, 99, True, STUDY_CPUS, 1, max_batches=1)
        for i, seed in enumerate(seeds):  # the two arms in turn, the order swapped each seed
            for guarded in ((False, True) if i % 2 == 0 else (True, False)):
                studies.append(_guard_study(tmp, seed, guarded, trials, epochs))
                s = studies[-1]
                print(f"  seed {seed}, {'guard' if guarded else 'no guard'}: {s.wall:.0f} s, "
                      f"{sum(t.silent for t in s.trials)} silent", flush=True)
    return _guard_rows(studies, epochs)


def _guard_rows(studies: list[_GuardStudy], epochs: int) -> list[dict]:
    def fmt_params(p: dict) -> str:
        return f"tau {p['tau']:.2f}, v_threshold {p['v_threshold']:.2f}"

    def summary(label_seed, arm: str, group: list[_GuardStudy], ref: list[_GuardStudy] | None) -> dict:
        ts = [t for s in group for t in s.trials]
        half = [(t, t.number < len(s.trials) // 2) for s in group for t in s.trials]
        n = len(group[0].trials)
        best = max((t for t in ts if t.acc is not None), key=lambda t: t.acc, default=None)
        ep, sec, wall = sum(t.epochs for t in ts), sum(t.seconds for t in ts), sum(s.wall for s in group)
        vth = lambda first: statistics.median(t.params["v_threshold"] for t, f in half if f == first)  # noqa: E731
        row = {"seed": label_seed, "arm": arm, "trials": len(ts),
               "silent": sum(t.silent for t in ts),
               f"silent, trials 0-{n // 2 - 1}": sum(t.silent for t, f in half if f),
               f"silent, trials {n // 2}-{n - 1}": sum(t.silent for t, f in half if not f),
               "saturated": sum(t.saturated for t in ts),
               "stopped by the guard (infeasible in Optuna)": f"{sum(t.stopped is not None for t in ts)} "
                                                               f"({sum(s.infeasible for s in group)})",
               "median v_threshold, first half / second half": f"{vth(True):.2f} / {vth(False):.2f}",
               "trial-epochs": ep, "trials' own time (s)": sec, "study wall (s)": wall,
               "load average while it ran": statistics.mean(s.load for s in group),
               f"best test_acc at {epochs} epochs": best.acc if best else "",
               "best trial": (f"{best.number}: {fmt_params(best.params)}" if len(group) == 1 else "") if best else ""}
        if ref is not None:
            rts = [t for s in ref for t in s.trials]
            rbest = max((t.acc for t in rts if t.acc is not None), default=None)
            row["trial-epochs / a"] = ep / sum(t.epochs for t in rts)
            row["trials' own time / a"] = sec / sum(t.seconds for t in rts)
            row["study wall / a"] = wall / sum(s.wall for s in ref)
            if best is not None and rbest is not None:
                row["best test_acc - a"] = f"{best.acc - rbest:+.4f}"
            # the guard's stops checked against the unguarded arm's run of the same configuration
            # (same seed: the same training), where the search suggested it too
            twins = {json.dumps(t.params, sort_keys=True): t for t in rts}
            stops = [t for t in ts if t.stopped]
            seen = [twins[k] for t in stops if (k := json.dumps(t.params, sort_keys=True)) in twins]
            row["stops whose configuration a also ran: silent there"] = f"{sum(t.silent for t in seen)} of {len(seen)}"
            learned = [t.acc for t in seen if not t.silent and t.acc is not None]
            row["their best test_acc in a, if not silent"] = f"{max(learned):.4f}" if learned else ""
        return row

    rows = []
    by_seed = {}
    for s in studies:
        by_seed.setdefault(s.seed, {})[s.guarded] = s
    for seed, arms in sorted(by_seed.items()):
        rows.append(summary(seed, "a: no guard", [arms[False]], None))
        rows.append(summary(seed, "b: guard", [arms[True]], [arms[False]]))
    if len(by_seed) > 1:
        a = [arms[False] for arms in by_seed.values()]
        b = [arms[True] for arms in by_seed.values()]
        rows.append(summary("all", "a: no guard", a, None))
        rows.append(summary("all", "b: guard", b, a))
    return rows
