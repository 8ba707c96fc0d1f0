"""Section 3 of ``python -m benchmarks``: the study's own cost, from the real study path.

Quick-start studies run through ``study.tuner.run_study`` on a local Ray, as ``snn-study`` runs
them, in pairs that differ only in epochs per trial, and read back from their folders and from
what the driver heard: (a) the fixed cost per trial and (b) the cost per epoch that the study
adds to a trial's own work, against their targets, (b) again with Tune's TensorBoard logger,
and what they come to over a study of realistic size.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks._studies import STUDY_CPUS, LoadSampler, local_ray, snn_study_settings

NOTE = ("The study's two costs, from the real study path: `study.tuner.run_study` on the quick-start spec "
        "(digits, resnet-tiny, one training batch an epoch so that an epoch's own work is short, "
        "`scheduler: fifo`, 2 trials at once on a Ray started once with 2 CPUs, MLflow store and study "
        "folder in a new temporary folder), in a process with `snn-study`'s settings "
        "(`study.cli.process_settings`: Tune's JSON and CSV loggers, not its TensorBoard one). Two studies "
        "differ only in epochs per trial, E1 and E2 (same N trials, same seed, so the same configurations); "
        "a third, of E2 epochs, runs with `TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=0`, so that Tune adds its "
        "TensorBoard logger, as for a study run from Python without those settings. The three run in turn, "
        "the order reversed each round; a "
        "first, untimed study loads the driver's modules and takes Ray's pre-started worker processes, so "
        "every timed trial slot starts a process of its own that imports torch, which its N / 2 trials "
        "then share (`reuse_actors`). A trial's own work is the `epoch_time` it reports for each epoch "
        "(training and evaluation), its first epoch counted as the median of its later ones, as a warm "
        "process would train it (what the first takes above that is a process's or a trial's start, "
        "e.g. torch's compiler stack imported at the first step); CPU that the driver takes from a "
        "running epoch counts as that epoch's. (b): the gap between consecutive results of a trial as "
        "the driver hears them (`time.time()` in `on_trial_result` of a Tune callback of the benchmark's "
        "own, `benchmarks._driver_results`, named in `RAY_TUNE_CALLBACKS`), less the later one's "
        "`epoch_time`, averaged over every epoch but a trial's first and last: the trial's wait in "
        "`tune.report`, the driver's handling of the result and the checkpoint written; of which in the "
        "trial: its `time_this_iter_s` less `epoch_time`. (a): the study's Optuna storage says when Tune "
        "asked for its first trial and when its last completed; the time outside that span is the study's "
        "own start and end (MLflow store and baselines, Optuna storage, Tune's set-up and finish), counted "
        "in neither cost. Inside it, 2 x the span less the trials' own work is N fixed costs plus N x E "
        "per-epoch costs (plus a slot idle at the end): less N x E x (b), divided by N, averaged over the "
        "E1 and E2 studies, it is (a), which covers Tune asking for a trial, the trial's process or its "
        "reuse, its set-up up to the first training step, and its end up to its completion on the driver. "
        "Check: (b) from the two studies' difference, (2 x span2 - own2 - 2 x span1 + own1) / (N (E2 - E1)); "
        "the spread of the trials' fixed costs makes it much the noisier. Load average: the machine's "
        "1-minute load average sampled every 2 s during the round's three studies (their 2 trials and "
        "driver make up to about 3; the rest is other work on the machine). The projection assumes a study of "
        "32 trials (the spec's default) of 10 epochs of 60 s each, 2 at once: (a + 10 x (b) + the study's "
        "own start and end x 2 / 32 + 600 s) / 600 s, where 600 s, a trial's own work, is what the ideal "
        "(own work only, divided by the concurrency) gives it.")

# The projected study: the spec's default number of trials, each 10 epochs of 60 s of its own work.
_REAL_TRIALS, _REAL_EPOCHS, _REAL_EPOCH_S = 32, 10, 60.0


@dataclass
class _Study:
    """One timed study: its wall time and what its folder says about its trials (seconds)."""

    trials: int
    epochs: int  # per trial
    wall: float  # run_study called to returned
    load: list[float]  # the machine's 1-minute load average, sampled while it ran
    span: float | None  # Tune asking for the first trial to the last one's completion (None: no Optuna storage)
    own: float = 0.0  # the trials' own work: epoch_time summed, a first epoch counted as its later ones' median
    warm_up: list[float] = field(default_factory=list)  # per trial: its first epoch above that median
    first: list[float] = field(default_factory=list)  # per trial: first iteration's time_this_iter_s less epoch_time
    last: list[float] = field(default_factory=list)  # per trial: the same for its last iteration
    in_trial: list[float] = field(default_factory=list)  # per middle epoch: time_this_iter_s less epoch_time
    cycle: list[float] = field(default_factory=list)  # per middle epoch: the driver's gap since the previous
    # result of the trial, less epoch_time (middle: neither a trial's first epoch nor its last)


def _driver_times(trial_dir: Path) -> dict[int, float]:
    """When the driver heard each result of a trial (training_iteration -> time.time(), its first
    hearing), from the benchmarks' :class:`~benchmarks._driver_results.DriverResults`."""
    from benchmarks._driver_results import DriverResults

    first = json.loads((trial_dir / "result.json").read_text().splitlines()[0])
    times: dict[int, float] = {}
    for t, r in DriverResults.heard.get(first["trial_id"], []):
        times.setdefault(int(r["training_iteration"]), t)
    return times


def _optuna_span(db: Path, name: str, trials: int) -> float | None:
    """Seconds from Optuna's first trial start (Tune asking the searcher) to its last completion."""
    import optuna

    if not db.exists():
        return None
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    done = [t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
    if len(done) != trials:
        return None
    return (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()


def _timed_study(trials: int, epochs: int, tensorboard: bool = False) -> _Study:
    """Run a quick-start study of ``trials`` x ``epochs`` (one training batch an epoch) and read it
    back; ``tensorboard``: with Tune's TensorBoard logger, which the process's settings leave out."""
    from benchmarks._driver_results import DriverResults
    from snn.metrics import EPOCH_TIME
    from study.spec import quickstart_spec
    from study.tuner import run_study, study_paths

    switch = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"
    setting = os.environ.get(switch)
    with tempfile.TemporaryDirectory() as tmp:
        spec = quickstart_spec({"name": "bench", "trials": trials, "concurrency": STUDY_CPUS, "scheduler": "fifo",
                                "train.epochs": epochs, "train.max_batches": 1, "storage": f"{tmp}/studies",
                                "mlflow.tracking_uri": f"sqlite:///{tmp}/mlflow.db"})
        DriverResults.clear()
        os.environ[switch] = "0" if tensorboard else "1"  # read by Tune as the run starts
        try:
            with LoadSampler() as load:
                t0 = time.perf_counter()
                result = run_study(spec, verbose=0)
                wall = time.perf_counter() - t0
        finally:
            if setting is None:
                os.environ.pop(switch)
            else:
                os.environ[switch] = setting
        timed = _Study(trials, epochs, wall, load.samples,
                       _optuna_span(study_paths(spec)["optuna"], spec.name, trials))
        folders = sorted(p.parent for p in Path(tmp, "studies").rglob("result.json"))
        if result.errored or len(folders) != trials:
            raise RuntimeError(f"study section: {result.errored} of {trials} trials errored, {len(folders)} "
                               f"have results; see {tmp} while the section runs")
        events = [f for f in folders if any(f.glob("events.out.tfevents.*"))]
        if len(events) != (trials if tensorboard else 0):
            raise RuntimeError(f"study section: {len(events)} of {trials} trials have TensorBoard event files, "
                               f"asked {'with' if tensorboard else 'without'} Tune's TensorBoard logger")
        for folder in folders:
            lines = (folder / "result.json").read_text().splitlines()
            res = {r["training_iteration"]: r for r in map(json.loads, lines)}  # a re-run epoch: its last result
            if sorted(res) != list(range(1, epochs + 1)):
                raise RuntimeError(f"study section: {folder.name} reported iterations {sorted(res)}, not 1-{epochs}")
            own = {i: r[EPOCH_TIME] for i, r in res.items()}
            extra = {i: r["time_this_iter_s"] - own[i] for i, r in res.items()}
            logged = _driver_times(folder)
            if sorted(logged) != sorted(res):
                raise RuntimeError(f"study section: the driver heard iterations {sorted(logged)} of {folder.name}, "
                                   f"not 1-{epochs} (is benchmarks._driver_results named in RAY_TUNE_CALLBACKS?)")
            middle = range(2, epochs)
            # A warm process's epoch, which is what the ideal gets: one-time costs of the first (a
            # process's first step imports torch's compiler stack, for one) belong to the fixed cost.
            warm = statistics.median(own[i] for i in range(2, epochs + 1))
            timed.own += warm + sum(own[i] for i in range(2, epochs + 1))
            timed.warm_up.append(own[1] - warm)
            timed.first.append(extra[1])
            timed.last.append(extra[epochs])
            timed.in_trial += [extra[i] for i in middle]
            timed.cycle += [logged[i] - logged[i - 1] - own[i] for i in middle]
        return timed


def bench_study(quick: bool) -> list[dict]:
    trials, (e1, e2), rounds = (4, (2, 22), 1) if quick else (8, (2, 42), 2)
    snn_study_settings()
    studies = ((e1, False), (e2, False), (e2, True))  # the last with Tune's TensorBoard logger
    with local_ray():
        _timed_study(STUDY_CPUS, 2)  # untimed: the driver's first imports, and Ray's pre-started workers
        pairs, with_tensorboard, load = [], [], []
        for r in range(rounds):  # the studies in turn, the order reversed each round so drift hits all alike
            done = {s: _timed_study(trials, *s) for s in (studies if r % 2 == 0 else studies[::-1])}
            pairs.append((done[studies[0]], done[studies[1]]))
            with_tensorboard.append(done[studies[2]])
            load.append(statistics.mean(x for s in done.values() for x in s.load))
    return _study_rows(pairs, with_tensorboard, load)


def _study_rows(pairs: list[tuple[_Study, _Study]], with_tensorboard: list[_Study], load: list[float]) -> list[dict]:
    """The two costs from each round's pair of studies (E1 and E2 epochs, same trials), (b) with
    Tune's TensorBoard logger as well, and the projection."""
    c = STUDY_CPUS
    mean = statistics.mean

    def rest(s: _Study) -> float:
        """Slot time inside the study's span less its trials' own work: N fixed costs, N x E per-epoch
        costs and a slot left idle at the end (no Optuna timeline: the study's own start and end too)."""
        return c * (s.wall if s.span is None else s.span) - s.own

    # (b) as each trial sees it: the driver's gap between its results, less its epoch (precise, one
    # sample an epoch); the two studies' difference checks it, but every trial's fixed cost varies by
    # more than the extra epochs' costs add up to, so it is the noisier of the two.
    difference = [(rest(b) - rest(a)) / (a.trials * (b.epochs - a.epochs)) for a, b in pairs]
    per_epoch = [mean(y.cycle) for _, y in pairs]
    tensorboard = [mean(t.cycle) for t in with_tensorboard]
    fixed = [mean(rest(s) / s.trials - s.epochs * p for s in pair) for pair, p in zip(pairs, per_epoch)]
    own_start_end = [mean(s.wall - s.span for s in pair) if None not in (pair[0].span, pair[1].span) else 0.0
                     for pair in pairs]
    real = _REAL_EPOCHS * _REAL_EPOCH_S
    overhead = [(f + _REAL_EPOCHS * p + s * c / _REAL_TRIALS + real) / real
                for f, p, s in zip(fixed, per_epoch, own_start_end)]
    a, b = pairs[0]

    def row(quantity: str, values: list[float], target: float | None = None, scale: float = 1.0,
            fmt: str = "{:.3g}") -> dict:
        values = [v * scale for v in values]
        r: dict = {"quantity": quantity, "value": fmt.format(mean(values))}
        if target is not None:
            r["target"] = f"<= {target:g}"
            r["met"] = "yes" if mean(values) <= target else "no"
        if len(values) > 1:
            r["per round"] = ", ".join(fmt.format(v) for v in values)
        return r

    rows = [row(f"study wall, {a.trials} trials x {a.epochs} epochs (s)", [x.wall for x, _ in pairs]),
            row(f"study wall, {b.trials} trials x {b.epochs} epochs (s)", [y.wall for _, y in pairs]),
            row("a trial's own work per epoch, epoch_time (ms)", [y.own / (y.trials * y.epochs) for _, y in pairs],
                scale=1e3),
            row("the study's own start and end (s)" if all(own_start_end) else
                "the study's own start and end (s): no Optuna timeline, counted in (a)", own_start_end),
            row("(a) fixed cost per trial (s)", fixed, target=3.0),
            row("  of which in the trial's first iteration, besides its epoch (s)",
                [mean(x.first + y.first) for x, y in pairs]),
            row("  of which in the trial's first epoch, above its later ones (s)",
                [mean(x.warm_up + y.warm_up) for x, y in pairs]),
            row("  of which in the trial's last iteration, besides its epoch (s)",
                [mean(x.last + y.last) for x, y in pairs]),
            row("(b) cost per epoch (ms)", per_epoch, target=30.0, scale=1e3),
            row("  of which in the trial: time_this_iter_s less epoch_time (ms)",
                [mean(y.in_trial) for _, y in pairs], scale=1e3),
            row("  check: (b) from the two studies' difference (ms)", difference, scale=1e3),
            row(f"(b) with Tune's TensorBoard logger as well, {b.trials} trials x {b.epochs} epochs (ms)",
                tensorboard, scale=1e3),
            row("  of which in the trial: time_this_iter_s less epoch_time (ms)",
                [mean(t.in_trial) for t in with_tensorboard], scale=1e3),
            row("(b) / (b) with Tune's TensorBoard logger", [p / t for p, t in zip(per_epoch, tensorboard)]),
            row(f"study of {_REAL_TRIALS} trials x {_REAL_EPOCHS} epochs of {_REAL_EPOCH_S:g} s / ideal",
                overhead, fmt="{:.3f}", target=1.02),
            row("load average while the round's studies ran", load, fmt="{:.2f}")]
    return rows
