"""Run every benchmark and write ``benchmarks/RESULTS.md``.

    python -m benchmarks [--quick] [--device cuda] [--out benchmarks/RESULTS.md]

(``make bench`` installs spikingjelly and runs this; ``make bench-cuda`` the GPU sections.)
Each comparison interleaves its candidates round by round and reports the ratio of medians.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch import Tensor

import torch

from benchmarks import _malloc, _sj
from benchmarks._worker import fused_lif

ROOT = Path(__file__).resolve().parents[1]


def _interleaved(fns: dict[str, Callable[[], None]], rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each function, timed in turns so drift hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


# -- 4. the LIF layer alone ---------------------------------------------------------------------
def _tensor_ops(f: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """``f`` with the fused LIF kernels switched off; the other candidates run as the process was started."""
    def call(c: Tensor) -> Tensor:
        with fused_lif(False):
            return f(c)
    return call


def bench_lif(quick: bool, device: str = "cpu") -> list[dict]:
    from snn import surrogates
    from snn.neurons import LIF, lif_reference

    rows = []
    shape = (16, 64, 16, 16) if quick else (32, 64, 32, 32)
    if device == "cuda":
        shape = (64, 64, 32, 32)  # a ResNet-18 first stage at batch 64
    atan = surrogates.get("atan", 2.0)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for t in (2, 4, 8):
        torch.manual_seed(t)
        x = (torch.randn(t, *shape, device=device) * 1.5 + 0.5).requires_grad_()
        g = torch.randn(t, *shape, device=device)
        ours = LIF(surrogate="atan", surrogate_param=2.0)
        impls: dict[str, Callable[[Tensor], Tensor]] = {
            "ours": ours,
            "plain loop": lambda c: lif_reference(c, surrogate=atan),
        }
        if device == "cuda":  # the fused Triton kernels against the tensor ops they replace
            impls["ours, tensor ops"] = _tensor_ops(ours)
        if _sj.available():
            impls["spikingjelly"] = _sj.SJLIF()
        # fairness: same spikes and the same gradient from every implementation
        outs = {}
        for k, f in impls.items():
            x.grad = None
            y = f(x)
            y.backward(g)
            outs[k] = (y.detach(), x.grad.clone())
        for k, (y, gx) in outs.items():
            # spikingjelly fires at u_pre >= V_th, the paper at >: a neuron whose potential lands
            # exactly on the threshold (about one in 10**7 in float32) may differ, nothing else
            tie = (y != outs["ours"][0]).any(dim=0)
            assert tie.float().mean() < (1e-6 if k == "spikingjelly" else 1e-12), f"{k}: spikes differ"
            assert torch.allclose(gx[:, ~tie], outs["ours"][1][:, ~tie], atol=1e-5), f"{k}: gradients differ"

        def run(f):
            def call():
                x.grad = None
                f(x).backward(g)
                sync()
            return call

        med = _interleaved({k: run(f) for k, f in impls.items()}, rounds=5 if quick else 15)
        n = x.numel()
        row = {"T": t, "elements": n, **{f"{k} ns/elem": med[k] / n * 1e9 for k in impls}}
        row["plain loop / ours"] = med["plain loop"] / med["ours"]
        if "ours, tensor ops" in med:
            row["tensor ops / ours"] = med["ours, tensor ops"] / med["ours"]
        if "spikingjelly" in med:
            row["spikingjelly / ours"] = med["spikingjelly"] / med["ours"]
        rows.append(row)
    return rows


# -- 1. whole network: training step throughput and peak memory --------------------------------
def _worker(impl: str, arch: str, t: int, batch: int, steps: int, threads: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks._worker", impl, arch, str(t), str(batch), str(steps),
                          str(threads)], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_network_fairness(arch: str, t: int, device: str = "cpu") -> float:
    from snn import models

    torch.manual_seed(0)
    model = models.build(arch, 10, t, surrogate="atan", surrogate_param=2.0, branches="none").to(device)
    x = torch.randn(8, 3, 32, 32, device=device)
    model(x)  # one training-mode pass so BN running statistics are not the initial ones
    flags = torch.backends.cudnn
    saved = flags.allow_tf32, flags.benchmark, flags.deterministic
    # true float32 convolutions with one algorithm per shape: the networks run their stems on
    # different batch sizes (T x B against B), which TF32 or autotuning could round differently
    flags.allow_tf32, flags.benchmark, flags.deterministic = False, False, True
    try:
        return _sj.check_same_spikes(model, _sj.sj_network(model), x)
    finally:
        flags.allow_tf32, flags.benchmark, flags.deterministic = saved


def bench_network(quick: bool) -> list[dict]:
    from snn.training import amp_dtype

    threads = torch.get_num_threads()
    configs = [("resnet-tiny", 2), ("resnet-tiny", 4)] if quick else [
        ("resnet-tiny", 2), ("resnet18", 2), ("resnet18", 4)]
    # "ours" is the training defaults in float32; the +options switch one lever off (or AMP on)
    impls = ["ours", "ours+contiguous", "ours+tensor-lif", "ours+system-malloc"] + (
        ["spikingjelly", "spikingjelly+retain-memory"] if _sj.available() else [])
    if amp_dtype(torch.device("cpu")) == torch.bfloat16:  # CPUs with native bf16: what amp: true trains with
        impls += ["ours+amp"] + (["spikingjelly+amp"] if _sj.available() else [])
    rows = []
    for arch, t in configs:
        diff = check_network_fairness(arch, t) if _sj.available() else None
        runs: dict[str, list[dict]] = {k: [] for k in impls}
        for _ in range(2):  # rounds: each implementation once per round, in turn
            for impl in impls:
                runs[impl].append(_worker(impl, arch, t, 64, 3, threads))
        med = {k: {m: statistics.median(r[m] for r in v) for m in ("images_per_s", "peak_rss_mib")}
               for k, v in runs.items()}

        for impl in impls:
            ref = "spikingjelly+amp" if impl.endswith("+amp") else "spikingjelly"
            row = {"arch": arch, "T": t, "batch": 64, "impl": impl, "img/s": med[impl]["images_per_s"],
                   "peak MiB": med[impl]["peak_rss_mib"]}
            # a lever is the default with one change; its ratio says what that change does
            row["speed / ours"] = med[impl]["images_per_s"] / med["ours"]["images_per_s"]
            if ref in med and impl != ref:
                row["speed / spikingjelly (same precision)"] = med[impl]["images_per_s"] / med[ref]["images_per_s"]
                row["peak memory / spikingjelly"] = med[impl]["peak_rss_mib"] / med[ref]["peak_rss_mib"]
            if impl == "spikingjelly":
                row["max logit difference"] = diff
            rows.append(row)
    return rows


def bench_network_cuda(quick: bool) -> list[dict]:
    """The network section on a GPU, in one process: candidates interleaved round by round.

    Peak memory is what one training step allocates above what is held before it (the
    model, its optimizer state and the other candidates': the same for all), read from
    torch's CUDA allocator.
    """
    from benchmarks._worker import build_step

    configs = [("resnet-tiny", 2, 64), ("resnet-tiny", 4, 64)] if quick else [
        ("resnet18", 2, 64), ("resnet18", 4, 64), ("resnet18", 4, 256)]
    # "ours+amp" is the training defaults on CUDA (amp: true, channels-last, fused Triton LIF,
    # cuDNN autotuning); the other "ours" candidates switch one of them off.
    impls = ["ours+amp", "ours+amp+tensor-lif", "ours+amp+contiguous", "ours+amp+cudnn-default", "ours"] + (
        ["spikingjelly+amp", "spikingjelly"] if _sj.available() else [])
    n_steps = 5 if quick else 10
    rows = []
    for arch, t, batch in configs:
        diff = check_network_fairness(arch, t, "cuda") if _sj.available() else None
        steps = {k: build_step(k, arch, t, batch, "cuda") for k in impls}
        peak = {}
        for k, step in steps.items():
            step(), step()  # warm-up: cuDNN autotuning, Triton compilation, optimizer state
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            step()
            torch.cuda.synchronize()
            peak[k] = (torch.cuda.max_memory_allocated() - before) / 2**20

        def timed(step):
            def call():
                for _ in range(n_steps):
                    step()
                torch.cuda.synchronize()
            return call

        # two untimed rounds first: in the first H100 run every candidate of the first configuration
        # (T = 2) ran slower per step than at T = 4, cause not established
        med = _interleaved({k: timed(f) for k, f in steps.items()}, rounds=3 if quick else 7, warmup=2)
        ips = {k: batch * n_steps / v for k, v in med.items()}
        for impl in impls:
            ref = "spikingjelly+amp" if "+amp" in impl else "spikingjelly"
            row = {"arch": arch, "T": t, "batch": batch, "impl": impl, "img/s": ips[impl],
                   "step MiB": peak[impl], "speed / ours+amp": ips[impl] / ips["ours+amp"]}
            if ref in ips and impl != ref:
                row["speed / spikingjelly (same precision)"] = ips[impl] / ips[ref]
                row["step memory / spikingjelly"] = peak[impl] / peak[ref]
            if impl == "spikingjelly":
                row["max logit difference"] = diff
            rows.append(row)
        del steps
        torch.cuda.empty_cache()
    return rows


# -- 2. shortcut overhead -----------------------------------------------------------------------
def bench_shortcuts(quick: bool, device: str = "cpu") -> list[dict]:
    cuda = device == "cuda"
    # on a GPU, batch 64 is bound by kernel launches, where every extra op of the heads counts;
    # batch 256 gives the GPU enough work per launch
    return [_shortcut_row("resnet-tiny" if quick else "resnet18", batch, quick, device)
            for batch in ((64, 256) if cuda else (64,))]


def _shortcut_row(arch: str, batch: int, quick: bool, device: str) -> dict:
    import torch.nn.functional as F

    from snn import losses, models
    from snn.training import adamw, amp_dtype

    t = 2
    torch.manual_seed(0)
    x, y = torch.randn(batch, 3, 32, 32, device=device), torch.randint(0, 10, (batch,), device=device)
    nets = {b: models.build(arch, 10, t, surrogate="atan", branches=b).to(device) for b in ("all", "none")}
    opts = {b: adamw(n.parameters(), 1e-3, 0.01, torch.device(device)) for b, n in nets.items()}
    cuda = device == "cuda"
    if cuda:  # the training defaults there: channels-last under autocast
        nets = {b: n.to(memory_format=torch.channels_last) for b, n in nets.items()}
        x = x.contiguous(memory_format=torch.channels_last)
    amp = amp_dtype(torch.device(device)) if cuda else None
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def train(b):
        def step():
            opts[b].zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=amp or torch.bfloat16, enabled=amp is not None):
                out = nets[b](x)
                loss = losses.shortcut_loss(out, y, 0.25) if b == "all" else F.cross_entropy(out.main, y)
            loss.backward()
            opts[b].step()
            sync()
        return step

    med = _interleaved({b: train(b) for b in nets}, rounds=5 if quick else (30 if cuda else 10))
    ops = {b: _count_ops(train(b)) for b in nets}
    stripped = models.strip_shortcuts(nets["all"]).eval()
    vanilla = nets["none"].eval()

    def infer(m, main: bool):
        def call():
            with torch.no_grad(), torch.autocast(device, dtype=amp or torch.bfloat16, enabled=amp is not None):
                m(x) if not main else m(x).main
            sync()
        return call

    inf = _interleaved({"stripped": infer(stripped, False), "vanilla": infer(vanilla, True)},
                       rounds=10 if quick else (100 if cuda else 30))
    row = {"device": device, "arch": arch, "T": t, "batch": batch, "train step, all branches (s)": med["all"],
           "train step, vanilla (s)": med["none"], "training overhead": med["all"] / med["none"] - 1,
           "ops per step, all branches": ops["all"], "ops per step, vanilla": ops["none"]}
    if cuda:
        row.update(_graphed_overhead(arch, batch, quick))
    return {**row, "inference, stripped (s)": inf["stripped"], "inference, vanilla (s)": inf["vanilla"],
            "stripped / vanilla (inference)": inf["stripped"] / inf["vanilla"]}


def _graphed_overhead(arch: str, batch: int, quick: bool) -> dict:
    """A step of ``snn.training.Trainer`` with ``cuda_graphs: true``, all branches against none.

    Replayed as a CUDA graph, a step no longer waits on the host launching its kernels, so
    what the heads add here is GPU time.
    """
    steps = 20
    med = trainer_steps({"all": {"branches": "all", "cuda_graphs": True},
                         "none": {"branches": "none", "cuda_graphs": True}}, arch, batch, steps,
                        rounds=3 if quick else 10)
    return {"Trainer step, cuda_graphs, all branches (s)": med["all"],
            "Trainer step, cuda_graphs, vanilla (s)": med["none"],
            "training overhead, cuda_graphs": med["all"] / med["none"] - 1}


def trainer_steps(candidates: dict[str, dict], arch: str, batch: int, steps: int, rounds: int) -> dict[str, float]:
    """Median seconds per training step of ``snn.training.Trainer`` on CUDA, one Trainer per candidate
    (``TrainConfig`` fields beyond the shared ones), interleaved epoch by epoch.

    Each Trainer trains on the same ``steps`` fixed batches (T = 2, 32x32 single-channel inputs, its
    loader replaced); its first epoch goes to cuDNN's and Triton's warm-up and any capture.
    """
    from snn.training import TrainConfig, Trainer

    torch.manual_seed(0)
    data = [(torch.randn(batch, 1, 32, 32).pin_memory(), torch.randint(0, 10, (batch,)).pin_memory())
            for _ in range(steps)]
    trainers = {}
    for name, options in candidates.items():
        tr = Trainer(TrainConfig(dataset="digits", arch=arch, batch_size=batch, epochs=10_000, device="cuda",
                                 workers=0, seed=0, **options))
        tr.train_loader, tr.steps_per_epoch = data, steps
        tr.train_epoch()
        trainers[name] = tr

    def epoch(tr):
        def call():
            tr.train_epoch()
            torch.cuda.synchronize()
        return call

    med = _interleaved({name: epoch(tr) for name, tr in trainers.items()}, rounds=rounds, warmup=0)
    return {name: t / steps for name, t in med.items()}


def _count_ops(fn: Callable[[], None]) -> int:
    """How many aten operators one call of ``fn`` dispatches (views included): on a GPU at small
    batches, where a step waits on launching its kernels rather than on running them, each costs
    about as much as the next, so this count is what the step time follows there."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    with Count() as count:
        fn()
    return count.n


# -- 3. study orchestration overhead ------------------------------------------------------------
_STUDY_CPUS = 2  # the targets' machine: 2 cores, one trial on each
# The projected study: the spec's default number of trials, each 10 epochs of 60 s of its own work.
_REAL_TRIALS, _REAL_EPOCHS, _REAL_EPOCH_S = 32, 10, 60.0


@dataclass
class _Study:
    """One timed study: its wall time and what its folder says about its trials (seconds)."""

    trials: int
    epochs: int  # per trial
    wall: float  # run_study called to returned
    span: float | None  # Tune asking for the first trial to the last one's completion (None: no Optuna storage)
    own: float = 0.0  # the trials' own work: epoch_time summed, a first epoch counted as its later ones' median
    warm_up: list[float] = field(default_factory=list)  # per trial: its first epoch above that median
    first: list[float] = field(default_factory=list)  # per trial: first iteration's time_this_iter_s less epoch_time
    last: list[float] = field(default_factory=list)  # per trial: the same for its last iteration
    in_trial: list[float] = field(default_factory=list)  # per middle epoch: time_this_iter_s less epoch_time
    cycle: list[float] = field(default_factory=list)  # per middle epoch: the driver's gap since the previous
    # result of the trial, less epoch_time (middle: neither a trial's first epoch nor its last)


def _driver_times(trial_dir: Path) -> dict[int, float]:
    """When the driver logged each result of a trial (training_iteration -> time.time()).

    Read from the trial's TensorBoard event files, which Tune's default TBX logger writes on
    the driver as each result arrives, stamping every scalar with the time; {} without them.
    """
    try:
        from tensorboardX.proto.event_pb2 import Event
    except ImportError:
        return {}
    times: dict[int, float] = {}
    for f in trial_dir.glob("events.out.tfevents.*"):
        data, i = f.read_bytes(), 0
        while i + 12 <= len(data):  # TFRecord: uint64 length, uint32 CRC, payload, uint32 CRC
            (n,) = struct.unpack_from("<Q", data, i)
            event = Event.FromString(data[i + 12:i + 12 + n])
            i += 16 + n
            if event.HasField("summary"):  # a result's scalars (the file's first event has none)
                times[event.step] = min(times.get(event.step, event.wall_time), event.wall_time)
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


def _timed_study(trials: int, epochs: int) -> _Study:
    """Run a quick-start study of ``trials`` x ``epochs`` (one training batch an epoch) and read it back."""
    from snn.metrics import EPOCH_TIME
    from study.spec import quickstart_spec
    from study.tuner import run_study, study_paths

    with tempfile.TemporaryDirectory() as tmp:
        spec = quickstart_spec({"name": "bench", "trials": trials, "concurrency": _STUDY_CPUS, "scheduler": "fifo",
                                "train.epochs": epochs, "train.max_batches": 1, "storage": f"{tmp}/studies",
                                "mlflow.tracking_uri": f"sqlite:///{tmp}/mlflow.db"})
        t0 = time.perf_counter()
        result = run_study(spec, verbose=0)
        wall = time.perf_counter() - t0
        timed = _Study(trials, epochs, wall, _optuna_span(study_paths(spec)["optuna"], spec.name, trials))
        folders = sorted(p.parent for p in Path(tmp, "studies").rglob("result.json"))
        if result.errored or len(folders) != trials:
            raise RuntimeError(f"study section: {result.errored} of {trials} trials errored, {len(folders)} "
                               f"have results; see {tmp} while the section runs")
        for folder in folders:
            lines = (folder / "result.json").read_text().splitlines()
            res = {r["training_iteration"]: r for r in map(json.loads, lines)}  # a re-run epoch: its last result
            if sorted(res) != list(range(1, epochs + 1)):
                raise RuntimeError(f"study section: {folder.name} reported iterations {sorted(res)}, not 1-{epochs}")
            own = {i: r[EPOCH_TIME] for i, r in res.items()}
            extra = {i: r["time_this_iter_s"] - own[i] for i, r in res.items()}
            logged = _driver_times(folder)
            middle = range(2, epochs)
            # A warm process's epoch, which is what the ideal gets: one-time costs of the first (a
            # process's first step imports torch's compiler stack, for one) belong to the fixed cost.
            warm = statistics.median(own[i] for i in range(2, epochs + 1))
            timed.own += warm + sum(own[i] for i in range(2, epochs + 1))
            timed.warm_up.append(own[1] - warm)
            timed.first.append(extra[1])
            timed.last.append(extra[epochs])
            timed.in_trial += [extra[i] for i in middle]
            timed.cycle += [logged[i] - logged[i - 1] - own[i] for i in middle if i in logged and i - 1 in logged]
        return timed


def bench_study(quick: bool) -> list[dict]:
    import logging

    import ray

    trials, (e1, e2), rounds = (4, (2, 22), 1) if quick else (8, (2, 42), 2)
    ray.init(address="local", num_cpus=_STUDY_CPUS, include_dashboard=False, configure_logging=False,
             log_to_driver=False, logging_level=logging.WARNING)
    try:
        _timed_study(_STUDY_CPUS, 2)  # untimed: the driver's first imports, and Ray's pre-started workers
        pairs = []
        for r in range(rounds):  # the two sizes in turn, the order swapped each round so drift hits both alike
            done = {e: _timed_study(trials, e) for e in ((e1, e2) if r % 2 == 0 else (e2, e1))}
            pairs.append((done[e1], done[e2]))
    finally:
        ray.shutdown()
    return _study_rows(pairs)


def _study_rows(pairs: list[tuple[_Study, _Study]]) -> list[dict]:
    """The two costs from each pair of studies (E1 and E2 epochs, same trials), and the projection."""
    c = _STUDY_CPUS
    mean = statistics.mean

    def rest(s: _Study) -> float:
        """Slot time inside the study's span less its trials' own work: N fixed costs, N x E per-epoch
        costs and a slot left idle at the end (no Optuna timeline: the study's own start and end too)."""
        return c * (s.wall if s.span is None else s.span) - s.own

    # (b) as each trial sees it: the driver's gap between its results, less its epoch (precise, one
    # sample an epoch); the two studies' difference checks it, but every trial's fixed cost varies by
    # more than the extra epochs' costs add up to, so it is the noisier of the two.
    difference = [(rest(b) - rest(a)) / (a.trials * (b.epochs - a.epochs)) for a, b in pairs]
    direct = [mean(y.cycle) for _, y in pairs] if all(y.cycle for _, y in pairs) else None
    per_epoch = direct or difference
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
            row("(b) cost per epoch (ms)" if direct else "(b) cost per epoch, from the two studies' difference (ms)",
                per_epoch, target=30.0, scale=1e3),
            row("  of which in the trial: time_this_iter_s less epoch_time (ms)",
                [mean(y.in_trial) for _, y in pairs], scale=1e3)]
    if direct:
        rows.append(row("  check: (b) from the two studies' difference (ms)", difference, scale=1e3))
    rows.append(row(f"study of {_REAL_TRIALS} trials x {_REAL_EPOCHS} epochs of {_REAL_EPOCH_S:g} s / ideal",
                    overhead, target=1.02, fmt="{:.3f}"))
    return rows


# -- 5. a user's data: ready in a trial ---------------------------------------------------------
# The case: a 10,000-image 28x28 uint8 npz of 10 classes, 0.2 held out for testing, ready
# (its first training batch in hand) within 2 s of a trial's start.
_USER_N, _USER_HW, _USER_CLASSES, _USER_TEST_FRACTION = 10_000, 28, 10, 0.2
_USER_BATCH, _USER_T = 128, 4
_READY_BUDGET_S = 2.0


def _user_npz(path: Path) -> Path:
    """The benchmark's npz: random uint8 images and labels, from a fixed seed."""
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (_USER_N, _USER_HW, _USER_HW), dtype=np.uint8),
             y=rng.integers(0, _USER_CLASSES, _USER_N))
    os.sync()  # written back now, not during the first round's prepare
    return path


_PREPARE = """
import json, sys, time
from snn.config import UserData
from snn.data import prepare
user = UserData.model_validate_json(sys.argv[1])
t0 = time.perf_counter()
prepare(user, sys.argv[2], int(sys.argv[3]))
t1 = time.perf_counter()
prepare(user, sys.argv[2], int(sys.argv[3]))
print(json.dumps({"cold": t1 - t0, "hot": time.perf_counter() - t1}))
"""


def _prepare_in_driver(user, root: str) -> dict:
    """``prepare`` twice into a new ``root``, in a fresh process as a study's driver calls it
    once (this process's malloc setting, and its earlier rounds, would spare it page faults)."""
    out = subprocess.run([sys.executable, "-c", _PREPARE, user.model_dump_json(), root, str(_USER_T)], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _arrival(x) -> str:
    """How a trial holds the training images it was given."""
    import numpy as np

    if isinstance(x, np.memmap) and getattr(x, "filename", None):
        return "memory-mapped from the cache file"
    if not x.flags.writeable:
        return "zero-copy view of the object store"
    return f"a private copy ({type(x).__module__.split('.')[0]}.{type(x).__name__}, unpickled)"


def _ready_trial(user, root: str, user_data: Callable, loaders: Callable, threads: Callable, report: Callable):
    """The function a benchmark trial runs, taking its data as ``train_snn`` does
    (``tune.with_parameters`` brings ``data`` and ``data_path``; ``user_data`` is the
    trainable's ``_user_data``, ``threads`` its ``_threads``) and building the loaders as
    ``Trainer`` does on CPU (no workers), then timing an epoch of the training loader alone."""
    def trial(config: dict, data=None, data_path: str | None = None) -> None:
        t0 = config["start"]  # set before with_parameters fetched `data`: see _started
        threads()
        prepared = user_data(data, data_path)
        t_data = time.perf_counter()
        train, _ = loaders(user, root, _USER_BATCH, _USER_T, 0, seed=0, prepared=prepared)
        next(iter(train))
        t_batch = time.perf_counter()
        rates = {}
        for augment in (False, True):
            loader = train if not augment else loaders(user.model_copy(update={"augment": True}), root, _USER_BATCH,
                                                       _USER_T, 0, seed=0, prepared=prepared)[0]
            t = time.perf_counter()
            n = sum(len(y) for _, y in loader)
            rates[augment] = n / (time.perf_counter() - t)
        report({"pid": os.getpid(), "started": config["wall"], "data_s": t_data - t0, "ready_s": t_batch - t0,
                "epoch_images": n, "epoch_img_s": rates[False], "epoch_augmented_img_s": rates[True],
                "threads": torch.get_num_threads(), "arrival": _arrival(prepared.x_train)})
    return trial


def _started(fn: Callable[[dict], None]) -> Callable[[dict], None]:
    """``fn`` (what ``tune.with_parameters`` returns) told when the trial function started: before
    it fetches its parameters from the object store, which is part of a trial getting its data."""
    def user_data_trial(config: dict) -> None:
        return fn({**config, "start": time.perf_counter(), "wall": time.time()})
    return user_data_trial


def bench_user_data(quick: bool) -> list[dict]:
    import logging

    import ray
    from ray import tune

    from snn.config import UserData
    from snn.data import loaders, prepare
    from trainables._trainable import _threads, _user_data

    rounds, trials, prepares = (1, 2, 2) if quick else (2, 3, 3)
    with tempfile.TemporaryDirectory() as tmp:
        user = UserData(format="npz", train=str(_user_npz(Path(tmp, "images.npz"))),
                        test_fraction=_USER_TEST_FRACTION)
        # (a) the driver: the first prepare in a data_root writes its cache, the next reads it
        driver = [_prepare_in_driver(user, str(Path(tmp, f"data{r}"))) for r in range(prepares)]
        cold, hot = [d["cold"] for d in driver], [d["hot"] for d in driver]
        root = str(Path(tmp, "data0"))
        prepared = prepare(user, root, _USER_T)  # the cache of the first round: what the study ships
        n_train = len(prepared.y_train)

        # (b, c, d) in trials of a Tune run, one at a time on one actor (reuse_actors): its first trial
        # runs in a new process, the next ones reuse it
        ray.init(address="local", num_cpus=_STUDY_CPUS, include_dashboard=False, configure_logging=False,
                 log_to_driver=False, logging_level=logging.WARNING)
        put: list[float] = []
        seen: dict[tuple[str, bool], list[dict]] = {}  # (route, in a process that ran a trial before) -> trials
        pids: set[int] = set()
        try:
            trial = _ready_trial(user, root, _user_data, loaders, _threads, tune.report)
            for r in range(rounds):
                for route in (("object store", "memory-mapped path") if r % 2 == 0 else
                              ("memory-mapped path", "object store")):
                    t = time.perf_counter()
                    # as study.tuner._trainable ships a small dataset, and a large one
                    shipped = tune.with_parameters(trial, data=prepared.in_memory() if route == "object store" else None,
                                                   data_path=prepared.path)
                    if route == "object store":
                        put.append(time.perf_counter() - t)
                    tuner = tune.Tuner(
                        tune.with_resources(_started(shipped), {"cpu": 1}),
                        param_space={"i": tune.grid_search(list(range(trials)))},
                        tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=1),
                        run_config=tune.RunConfig(name=f"ready{r}{route[0]}", storage_path=str(Path(tmp, "tune")),
                                                  verbose=0))
                    grid = tuner.fit()
                    if grid.errors:
                        raise RuntimeError(f"user-data section: {len(grid.errors)} trials failed: {grid.errors[0]}")
                    for m in sorted((res.metrics for res in grid), key=lambda m: m["started"]):
                        seen.setdefault((route, m["pid"] in pids), []).append(m)
                        pids.add(m["pid"])
        finally:
            ray.shutdown()
    return _user_data_rows(cold, hot, put, seen, n_train)


def _user_data_rows(cold: list[float], hot: list[float], put: list[float], seen: dict[tuple[str, bool], list[dict]],
                    n_train: int) -> list[dict]:
    median = statistics.median

    def row(quantity: str, values: list[float], fmt: str = "{:.3g}", budget: bool = False, **extra) -> dict:
        r: dict = {"quantity": quantity, "value": fmt.format(median(values)),
                   "each round or trial": ", ".join(map(fmt.format, values))}
        if budget:
            r[f"of the {_READY_BUDGET_S:g} s budget"] = f"{median(values) / _READY_BUDGET_S:.2g}x"
            r["met"] = "yes" if max(values) <= _READY_BUDGET_S else "no"
        return {**r, **extra}

    rows = [row("driver: prepare, first time: reads the npz, splits, writes the cache (s)", cold),
            row("driver: prepare again, the cache found (s)", hot),
            row("driver: tune.with_parameters, the prepared data put in the object store (s)", put)]
    for route in ("object store", "memory-mapped path"):
        for reused in (False, True):
            ms = seen.get((route, reused), [])
            if not ms:
                continue
            who = f"trial, {'a reused actor' if reused else 'first in its process'}, {route}"
            arrival = sorted({m["arrival"] for m in ms})
            rows.append(row(f"{who}: data in hand (s)", [m["data_s"] for m in ms],
                            **{"arrays in the trial": "; ".join(arrival)}))
            rows.append(row(f"{who}: first training batch in hand (s)", [m["ready_s"] for m in ms], budget=True))
        ms = seen.get((route, False), []) + seen.get((route, True), [])
        if ms:
            rows.append(row(f"trial, {route}: an epoch of the training loader alone, {n_train:,} images at batch "
                            f"{_USER_BATCH}, torch threads {ms[0]['threads']} (img/s)", [m["epoch_img_s"] for m in ms],
                            fmt="{:.0f}"))
            rows.append(row("  the same with augment: true (img/s)", [m["epoch_augmented_img_s"] for m in ms],
                            fmt="{:.0f}"))
    return rows


# -- 6. firing-rate guard: silent trials stopped, compute saved -------------------------------------
# The rule that calls a trial silent, in both arms: FiringStop's default silent_rate, applied to the
# test firing rate of each stage at the trial's last epoch (the guard's own checks read training batches).
_SILENT_RATE, _SATURATED_RATE = 1e-3, 0.9
_GUARD_OFF = {"silent_rate": None, "saturated_rate": None}


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


class _LoadSampler:
    """Samples the machine's 1-minute load average in a thread: what else ran beside a study."""

    def __init__(self, every: float = 2.0) -> None:
        import threading

        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> "_LoadSampler":
        self.samples.append(os.getloadavg()[0])
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])


def _guard_study(tmp: str, seed: int, guarded: bool, trials: int, epochs: int, max_batches: int | None = None
                 ) -> _GuardStudy:
    """Run one study of the guard section and read it back (trial folders, Optuna storage)."""
    from unittest import mock

    import optuna

    from snn.metrics import EPOCH, STOPPED, TEST_ACC
    from study.spec import SpecError, StudySpec, quickstart_spec
    from study.tracking import read_trial
    from study.tuner import run_study, study_paths

    name = f"guard{seed}{'b' if guarded else 'a'}{trials}"
    over = {"name": name, "dataset": "digits", "arch": "resnet-tiny", "trials": trials, "concurrency": _STUDY_CPUS,
            "scheduler": "fifo", "seed": seed, "train.epochs": epochs, "train.batch_size": 64,
            "train.max_batches": max_batches, "search.preset": "quick", "search.dims": ["tau", "v_threshold"],
            "storage": f"{tmp}/studies", "mlflow.tracking_uri": f"sqlite:///{tmp}/mlflow.db",
            "data_root": f"{tmp}/data"}
    off = contextlib.nullcontext()
    if not guarded:
        try:
            spec = quickstart_spec({**over, "train.stop": _GUARD_OFF})
        except SpecError:
            # The study spec has no key for it: every trial's config starts from the spec's
            # train_constants (the Optuna space's constants), so the guard is switched off there.
            spec = quickstart_spec(over)
            constants = StudySpec.train_constants
            off = mock.patch.object(StudySpec, "train_constants",
                                    lambda self: {**constants(self), "stop": {**constants(self)["stop"], **_GUARD_OFF}})
    else:
        spec = quickstart_spec(over)
    with off, _LoadSampler() as load:
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
        full = not last.get(STOPPED) and not last.get("diverged") and int(last.get(EPOCH, 0)) >= epochs
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
    import logging

    import ray

    # 3 epochs: after 1, a network's deeper stages can still be silent at test (BatchNorm's running
    # statistics lag its batch statistics) while it fires in training and learns in the next epochs
    seeds, trials, epochs = ((0,), 20, 3) if quick else ((0, 1, 2, 3), 32, 3)
    ray.init(address="local", num_cpus=_STUDY_CPUS, include_dashboard=False, configure_logging=False,
             log_to_driver=False, logging_level=logging.WARNING)
    studies: list[_GuardStudy] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # untimed: the driver's first imports and Ray's pre-started workers
            _guard_study(tmp, 99, True, _STUDY_CPUS, 1, max_batches=1)
            for i, seed in enumerate(seeds):  # the two arms in turn, the order swapped each seed
                for guarded in ((False, True) if i % 2 == 0 else (True, False)):
                    studies.append(_guard_study(tmp, seed, guarded, trials, epochs))
                    s = studies[-1]
                    print(f"  seed {seed}, {'guard' if guarded else 'no guard'}: {s.wall:.0f} s, "
                          f"{sum(t.silent for t in s.trials)} silent", flush=True)
    finally:
        ray.shutdown()
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


# -- 7. learned λ (PBT) against the paper's linear decay, at equal compute ---------------------------
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

    Read from the trial's TensorBoard event files, one a (re)start of the trial, which Tune's
    TBX logger writes on the driver as each result arrives, and its ``result.json``, which alone
    does not do (a trial that PBT pauses and resumes starts it again; an event file's last
    results may not be flushed when the study ends). A result heard twice (replayed after a
    resume, or in both files) carries the same epoch_time (compared in float32, as the event
    files hold it) and counts once.
    """
    import numpy as np
    from tensorboardX.proto.event_pb2 import Event

    out: dict[tuple[int, float], float] = {}
    for line in (trial_dir / "result.json").read_text().splitlines():
        r = json.loads(line) if line.strip() else {}
        if isinstance(r.get("epoch"), (int, float)) and isinstance(r.get("epoch_time"), (int, float)):
            out[(int(r["epoch"]), float(np.float32(r["epoch_time"])))] = float(r["epoch_time"])
    for f in trial_dir.glob("events.out.tfevents.*"):
        data, i, steps = f.read_bytes(), 0, {}
        while i + 12 <= len(data):  # TFRecord: uint64 length, uint32 CRC, payload, uint32 CRC
            (n,) = struct.unpack_from("<Q", data, i)
            event = Event.FromString(data[i + 12:i + 12 + n])
            i += 16 + n
            for v in event.summary.value if event.HasField("summary") else ():
                steps.setdefault(event.step, {})[v.tag] = v.simple_value
        for values in steps.values():
            if "ray/tune/epoch" in values and "ray/tune/epoch_time" in values:
                out.setdefault((int(values["ray/tune/epoch"]), values["ray/tune/epoch_time"]),
                               values["ray/tune/epoch_time"])
    return out


def _arm_study(tmp: str, seed: int, arm: str, population: int, epochs: int, max_batches: int) -> _ArmStudy:
    """One study of section 7: the paper's setting repeated over ``population`` seeds (fifo), or a
    PBT population of that size, on the quick-start data and network; read back from its folder."""
    import numpy as np

    from snn.metrics import EPOCH, LAMBDA, TEST_ACC
    from study.spec import quickstart_spec
    from study.tracking import read_trial
    from study.tuner import run_study

    name = f"pbt{seed}{arm}{population}x{epochs}"
    over = {"name": name, "dataset": "digits", "arch": "resnet-tiny", "timesteps": 2, "trials": population,
            "concurrency": _STUDY_CPUS, "seed": seed, "train.epochs": epochs, "train.batch_size": 64,
            "train.max_batches": max_batches, "storage": f"{tmp}/studies",
            "mlflow.tracking_uri": f"sqlite:///{tmp}/mlflow.db", "data_root": f"{tmp}/data"}
    if arm == "pbt":
        over.update({"scheduler": "pbt", "pbt": {"interval": 1, "quantile": 0.25}})
    else:
        over.update({"scheduler": "fifo", "search.preset": "paper"})
    spec = quickstart_spec(over)
    with _LoadSampler() as load:
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
                trained.setdefault((int(r[EPOCH]), float(np.float32(r["epoch_time"]))), float(r["epoch_time"]))
        trials.append(_ArmTrial(rec.trial_id, float(last[TEST_ACC]) if full else None,
                                [float(r[LAMBDA]) for r in rec.results if LAMBDA in r],
                                float(first_config.get("lambda0", rec.config.get("lambda0", float("nan"))))))
    if result.errored or len(trials) != population:
        raise RuntimeError(f"pbt section: {result.errored} of {population} trials errored, {len(trials)} read back")
    log = Path(tmp, "studies", name, "pbt_global.txt")
    exploits = sum(1 for line in log.read_text().splitlines() if line.strip()) if log.exists() else 0
    return _ArmStudy(seed, arm, wall, trials, exploits, trained, statistics.mean(load.samples))


# seeds, the population P (and the linear arm's trials), epochs a trial, training batches an epoch
_PBT_FULL: tuple[tuple[int, ...], int, int, int] = (tuple(range(16)), 4, 6, 10)
_PBT_QUICK: tuple[tuple[int, ...], int, int, int] = ((0,), 4, 2, 2)


def bench_pbt(quick: bool) -> list[dict]:
    import logging

    import ray

    # P trials of E epochs of B batches in each arm: the same trial-epochs, the same batches
    seeds, population, epochs, max_batches = _PBT_QUICK if quick else _PBT_FULL
    ray.init(address="local", num_cpus=_STUDY_CPUS, include_dashboard=False, configure_logging=False,
             log_to_driver=False, logging_level=logging.WARNING)
    studies: list[_ArmStudy] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # untimed: the driver's first imports, Ray's pre-started workers, the data downloaded once
            _arm_study(tmp, 99, "linear", _STUDY_CPUS, 1, 1)
            for i, seed in enumerate(seeds):  # the two arms in turn, the order swapped each seed
                # one seed base for both arms: the linear arm's seeds are 100 s + 0..P-1, every PBT
                # member trains with 100 s (the spec's seed; Tune's draw of λ₀ is seeded with it too)
                for arm in (("linear", "pbt") if i % 2 == 0 else ("pbt", "linear")):
                    s = _arm_study(tmp, 100 * seed, arm, population, epochs, max_batches)
                    studies.append(s)
                    print(f"  seed {100 * seed}, {arm}: {s.wall:.0f} s, best {s.best.acc if s.best else None}, "
                          f"{s.exploits} exploits", flush=True)
    finally:
        ray.shutdown()
    return _pbt_rows(studies, population, epochs, max_batches)


def _pbt_rows(studies: list[_ArmStudy], population: int, epochs: int, max_batches: int) -> list[dict]:
    from study.analysis import _configuration, _difference

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


# -- report -------------------------------------------------------------------------------------
def _table(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)\n"
    keys = list(dict.fromkeys(k for r in rows for k in r))  # every column, in order of first appearance
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _machine(device: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    def v(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    gpu = (f"GPU {torch.cuda.get_device_name()} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
           f"triton {v('triton')}); ") if device == "cuda" else ""
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}); {gpu}Python "
            f"{platform.python_version()}; torch {torch.__version__} ({torch.get_num_threads()} threads); "
            f"numba {v('numba')}; spikingjelly {_sj.available() or 'not installed'}; ray {v('ray')}")


NOTES = {
    "lif": "ours: `snn.neurons.LIF` (fused numba kernels on CPU); plain loop: `lif_reference`, autograd over "
           "a loop in T; spikingjelly: its multi-step `LIFNode`, torch backend. Atan surrogate, float32. All "
           "three run in one process whose malloc keeps freed memory, as CPU trials run with glibc's malloc "
           "tunables in the spec's `env_vars`. The run first checks that all three give the same spikes and "
           "gradients.",
    "network": "ours: the training defaults (channels-last, fused CPU LIF) with malloc keeping freed memory "
               "(glibc's tunables in the spec's `env_vars`), float32. `+contiguous`, `+tensor-lif` and `+system-malloc` switch one lever off; "
               "`spikingjelly+retain-memory` is spikingjelly with ours's malloc setting, so its ratio shows "
               "what that setting gives spikingjelly; `+amp` trains under bfloat16 autocast, what `amp: true` "
               "does on CPUs with native bf16, and is compared with spikingjelly under the same autocast. "
               "Peak memory is the fresh worker process's VmHWM. The run first checks that both networks "
               "give the same logits on the same weights.",
    "lif-cuda": "ours: `snn.neurons.LIF` (fused Triton kernels on CUDA); ours, tensor ops: the same layer with "
                "`SNN_FUSED_LIF=0`; plain loop: `lif_reference`, autograd over a loop in T; spikingjelly: its "
                "multi-step `LIFNode`, torch backend. Atan surrogate, float32, [T, 64, 64, 32, 32] (a ResNet-18 "
                "first stage at batch 64). The run first checks that all give the same spikes and gradients "
                "(spikingjelly fires at a potential exactly on the threshold, the paper does not: such ties, "
                "about one neuron in 10**7, are left out of its check).",
    "network-cuda": "ours+amp: the training defaults on CUDA (amp: true, which is bfloat16 autocast where the "
                    "GPU has it; channels-last; the fused Triton LIF; cuDNN autotuning). `+tensor-lif`, "
                    "`+contiguous` and `+cudnn-default` switch one of them off; `ours` is float32. spikingjelly: its "
                    "multi-step LIFNode, torch backend, in the same network, under the same autocast (`+amp`) "
                    "or in float32. Every candidate steps the Trainer's optimizer (`snn.training.adamw`: AdamW, "
                    "fused on CUDA). All candidates live in one process and are timed round by round, 10 steps "
                    "a round; step MiB is what one training step allocates on the GPU above what was held "
                    "before it. The run first checks that both networks give the same logits on the same "
                    "weights (float32, eval).",
    "shortcuts": "Training step with a shortcut head after every stage against none; inference of "
                 "`strip_shortcuts(model)` against a vanilla model. On CUDA both run as training does there "
                 "(channels-last, autocast). Ops per step: the aten operators one training step dispatches "
                 "(a count, the same on every run), which is what a step bound by launching kernels follows. "
                 "On CUDA, `cuda_graphs` columns: a step of `snn.training.Trainer` with `cuda_graphs: true` "
                 "(its loader replaced by 20 fixed batches of 32x32 single-channel inputs), where the "
                 "replayed graph leaves the GPU's own time, not the host's launches, to compare.",
    "study": "The study's two costs, from the real study path: `study.tuner.run_study` on the quick-start spec "
             "(digits, resnet-tiny, one training batch an epoch so that an epoch's own work is short, "
             "`scheduler: fifo`, 2 trials at once on a Ray started once with 2 CPUs, MLflow store and study "
             "folder in a new temporary folder). Two studies differ only in epochs per trial, E1 and E2 (same "
             "N trials, same seed, so the same configurations), run in turn, the order swapped each round; a "
             "first, untimed study loads the driver's modules and takes Ray's pre-started worker processes, so "
             "every timed trial slot starts a process of its own that imports torch, which its N / 2 trials "
             "then share (`reuse_actors`). A trial's own work is the `epoch_time` it reports for each epoch "
             "(training and evaluation), its first epoch counted as the median of its later ones, as a warm "
             "process would train it (what the first takes above that is a process's or a trial's start, "
             "e.g. torch's compiler stack imported at the first step); CPU that the driver takes from a "
             "running epoch counts as that epoch's. (b): the gap between consecutive results of a trial as "
             "the driver logs them (Tune's TensorBoard event times), less the later one's `epoch_time`, "
             "averaged over every epoch but a trial's first and last: the trial's wait in `tune.report`, the "
             "driver's handling of the result and the checkpoint written; of which in the trial: its "
             "`time_this_iter_s` less `epoch_time`. (a): the study's Optuna storage says when Tune asked for "
             "its first trial and when its last completed; the time outside that span is the study's own "
             "start and end (MLflow store and baselines, Optuna storage, Tune's set-up and finish), counted "
             "in neither cost. Inside it, 2 x the span less the trials' own work is N fixed costs plus N x E "
             "per-epoch costs (plus a slot idle at the end): less N x E x (b), divided by N, averaged over the "
             "studies, it is (a), which covers Tune asking for a trial, the trial's process or its reuse, its "
             "set-up up to the first training step, and its end up to its completion on the driver. Check: "
             "(b) from the two studies' difference, (2 x span2 - own2 - 2 x span1 + own1) / (N (E2 - E1)); "
             "the spread of the trials' fixed costs makes it much the noisier (without TensorBoard event "
             "files it is (b)). The projection assumes a study of 32 trials (the spec's "
             "default) of 10 epochs of 60 s each, 2 at once: (a + 10 x (b) + the study's own start and end x "
             "2 / 32 + 600 s) / 600 s, where 600 s, a trial's own work, is what the ideal (own work only, "
             "divided by the concurrency) gives it.",
    "user-data": "A user's own data, the issue's case: an npz of 10,000 random 28x28 uint8 images of 10 classes "
                 "(fixed seed), `test_fraction: 0.2`, read as a study reads it. Driver: `snn.data.prepare` into a new "
                 "data_root in a fresh process, as a study's driver prepares once (imports not counted): the first "
                 "time (the npz just written and synced, so read from the page cache; split, channel statistics, cache written) "
                 "and again (the cache found and opened memory-mapped), 3 rounds (2 with --quick); then "
                 "`tune.with_parameters` with the prepared data, which puts it in Ray's object store. Trials: a real "
                 "Tune run on a Ray started once with 2 CPUs, its trainable built as `study.tuner._trainable` builds "
                 "it (`tune.with_parameters(..., data=prepared.in_memory() or None, data_path=prepared.path)`, 1 CPU a trial) "
                 "and taking its data as `train_snn` does (`trainables._trainable._user_data`: the object store's "
                 "`data`, else `snn.data.load_prepared(data_path)`, memory-mapped), for both routes, one trial at a "
                 "time with `reuse_actors`, so a run's first trial starts in a new process and the next ones reuse "
                 "it. A trial's clock starts before `tune.with_parameters` fetches its parameters from the object "
                 "store; data in hand: `_user_data` returned; first training batch in hand: `snn.data.loaders` built "
                 "as `Trainer` builds them on CPU (no workers, batch 128) and `next(iter(train_loader))` returned. "
                 "Then each trial iterates the training loader alone for one epoch (no model), as it is and with "
                 "`augment: true`. Arrays in the trial: how the trial holds `x_train`. Two rounds, the routes' order "
                 "swapped, of 3 trials a route (one round of 2 with --quick). Medians, each round's or trial's "
                 "value listed; met: every trial had its first batch within the budget.",
    "guard": "The issue's comparison, from the real study path: `study.tuner.run_study` on the quick-start spec "
             "(digits, resnet-tiny, T = 2, batch 64, 3 epochs a trial; `search: {preset: quick, dims: [tau, "
             "v_threshold]}`, so τ uniform in [0.05, 1] and the threshold log-uniform in [0.1, 10] besides the "
             "preset's four dimensions; `scheduler: fifo`, so that nothing but the guard stops a trial; 2 trials "
             "at once on a Ray started once with 2 CPUs; MLflow store and study folders in a new temporary "
             "folder). Seeds 0-3, 32 trials a study (--quick: seed 0, 20 trials); each seed runs the same study "
             "twice: (a) without the guard, every trial's `stop: {silent_rate: null, saturated_rate: null}` (set "
             "in the trial constants the spec hands the search, `StudySpec.train_constants`, where the study spec "
             "has no `train.stop` key), and (b) with it, `stop`'s defaults: a stage below 1e-3 spikes per neuron "
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
             "well it learned.",
    "pbt": "The issue's second comparison, from the real study path: `study.tuner.run_study` on the quick-start spec "
           "(digits, resnet-tiny, T = 2, batch 64; 2 trials at once on a Ray started once with 2 CPUs, 1 CPU a trial; "
           "MLflow store and study folders in a new temporary folder), P = {P} trials of E = {E} epochs of {B} "
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
           "trained: every distinct (epoch, epoch_time) in the study's trial folders: the results the driver heard (each "
           "trial's TensorBoard event files, one a start of the trial, as PBT pauses and resumes trials, and its "
           "result.json) and each trial's lineage in its newest checkpoint, a result seen twice counted once (a trial that PBT paused "
           "may train an epoch again); training time: the sum of their epoch_time; λ: what each epoch reports (λ at its last iteration), along the trial's lineage; exploits: lines "
           "of Tune's `pbt_global.txt`. Over the seeds: b − a paired by seed, its mean, 95 % Student-t interval and "
           "p (`scipy.stats.ttest_rel`), and the sentence of `study.analysis` (its `_difference`, the replicated "
           "comparison of the study's answer; \"seeds needed\" is for a 1-point difference at 80 % power).",
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes, resnet-tiny only (a few minutes)")
    p.add_argument("--only", choices=["lif", "network", "shortcuts", "study", "user-data", "guard", "pbt"],
                   action="append",
                   help="run this section alone (repeat for several); default: all")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: the LIF, network and shortcut sections on the GPU (default --out RESULTS-cuda.md)")
    p.add_argument("--out", default=None, help="default benchmarks/RESULTS.md (RESULTS-cuda.md with --device cuda)")
    a = p.parse_args(argv)
    cuda = a.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA GPU here")
    a.out = a.out or str(ROOT / "benchmarks" / ("RESULTS-cuda.md" if cuda else "RESULTS.md"))
    # This process measures as a CPU trial runs with glibc's malloc tunables in the spec's
    # env_vars: malloc keeps freed memory. The candidates measured in it (the LIF section's
    # three, the shortcut section's two) all get it; the network section's workers choose per
    # candidate; the study section's trials run in Ray's processes, as a spec without them does.
    _malloc.retain_freed_memory()
    sections = {"lif": ("4. LIF layer alone: forward + backward", bench_lif),
                "network": ("1. Training step of the whole network (CPU)", bench_network),
                "shortcuts": ("2. Shortcut overhead", bench_shortcuts),
                "study": ("3. Study orchestration overhead", bench_study),
                "user-data": ("5. A user's data: ready in a trial", bench_user_data),
                "guard": ("6. Firing-rate guard: silent trials stopped, compute saved", bench_guard),
                "pbt": ("7. Learned λ (PBT) against the paper's linear decay, at equal compute", bench_pbt)}
    if cuda:  # the study, user-data, guard and pbt sections measure CPU trials; Ray may not even be installed beside the GPU
        sections = {"lif": ("4. LIF layer alone on CUDA: forward + backward", lambda q: bench_lif(q, "cuda")),
                    "network": ("1. Training step of the whole network (CUDA)", bench_network_cuda),
                    "shortcuts": ("2. Shortcut overhead (CUDA)", lambda q: bench_shortcuts(q, "cuda"))}
    notes = {**NOTES, "network": NOTES["network-cuda"], "lif": NOTES["lif-cuda"]} if cuda else dict(NOTES)
    seeds, pop, epochs, batches = _PBT_QUICK if a.quick else _PBT_FULL
    notes["pbt"] = NOTES["pbt"].format(P=pop, E=epochs, B=batches, PE=pop * epochs,
                                       seeds=", ".join(map(str, seeds)), quick=" (--quick)" if a.quick else "")
    chosen = [o for o in a.only or sections if o in sections]
    cmd = "python -m benchmarks" + (" --quick" if a.quick else "") + (" --device cuda" if cuda else "") + "".join(
        f" --only {o}" for o in a.only or [])
    out = [f"# Benchmark results\n\nCommand: `{cmd}` (or `make bench{'-cuda' if cuda else ''}`), run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n"
           f"Machine: {_machine(a.device)}.\n\nEvery ratio compares candidates measured in the same run, interleaved round "
           f"by round (medians).\n"]
    for key in chosen:
        title, fn = sections[key]
        print(f"== {title}", flush=True)
        t0 = time.perf_counter()
        rows = fn(a.quick)
        print(_table(rows), flush=True)
        out.append(f"\n## {title}\n\n{notes[key]}\n\n{_table(rows)}\n_{time.perf_counter() - t0:.0f} s_\n")
        Path(a.out).write_text("".join(out))  # after every section: a later failure keeps these
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
