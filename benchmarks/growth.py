"""How the study's own cost grows with its number of trials, on one machine, without a cluster.

    python -m benchmarks.growth [--trials 1000] [--out benchmarks/RESULTS-growth.md]

Drives the study's real components at the size of a 1,000-trial study, with the training
left out (each trial "finishes" with a drawn accuracy), so what is measured is what grows with
the number of trials, not what a trial costs:

* the searcher the study builds (``study.tuner._searcher``: Ray's OptunaSearch over an RDB
  storage, TPE, seeded), one ``suggest`` and one ``on_trial_complete`` per trial, for the
  single objective and for ``test_acc+firing_rate``: the time per suggestion around trial
  100, 500 and 1,000;
* the MLflow projection (``study.tracking._projection._Projection``) into a SQLite store: making each
  trial's run, logging its epochs and closing it, per trial around the same points;
* the end of the study: the analysis recorded on the parent run, and ``write_report``.

Not measured here: the driver's CPU time and memory per trial in a real Ray Tune run, and
everything on a cluster (``make bench-load`` and tests/docker/test_load.py).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from study.markdown import table

ROOT = Path(__file__).resolve().parents[1]
POINTS = (100, 500, 1000)  # trial counts at which the growth is read
WINDOW = 20  # trials averaged around each point


def _spec(tmp: Path, trials: int, objective: str):
    from study.spec import quickstart_spec

    return quickstart_spec({"name": f"growth-{objective.replace('+', '-')}", "trials": trials, "train.epochs": 3,
                            "search.preset": "full", "objective": objective, "storage": str(tmp / "studies"),
                            "mlflow.tracking_uri": f"sqlite:///{tmp}/mlflow.db", "data_root": str(tmp / "data")})


def _around(times: list[float], n: int) -> float:
    """Mean seconds of the :data:`WINDOW` calls before the ``n``-th."""
    window = times[max(0, n - WINDOW):n]
    return statistics.fmean(window) if window else float("nan")


def search_growth(tmp: Path, trials: int, objective: str) -> tuple[list[float], object]:
    """Seconds per ``suggest`` of the study's searcher, trial by trial; and the spec."""
    from study.folder import study_paths
    from study.tuner import _searcher

    spec = _spec(tmp, trials, objective)
    study_paths(spec)["dir"].mkdir(parents=True, exist_ok=True)
    search = _searcher(spec)
    metric, mode = ("test_acc", "max") if objective == "test_acc" else (["test_acc", "firing_rate"], ["max", "min"])
    search.set_search_properties(metric, mode, config={})
    rng = random.Random(0)
    times = []
    for i in range(trials):
        t0 = time.perf_counter()
        config = search.suggest(f"t{i:05d}")
        times.append(time.perf_counter() - t0)
        assert isinstance(config, dict), config
        result = {"test_acc": rng.random(), "firing_rate": rng.random(), "epoch": 3, "training_iteration": 3}
        search.on_trial_complete(f"t{i:05d}", result)
    return times, spec


def tracking_growth(tmp: Path, spec, trials: int, epochs: int = 3) -> tuple[list[float], str]:
    """Seconds per trial of the MLflow projection (run, epochs, close); the parent run's id."""
    from study.folder import study_paths, write_state
    from study.tracking import TrialRecord, start_parent_run
    from study.tracking._projection import _Projection

    paths = study_paths(spec)
    uri = spec.mlflow.tracking_uri
    resolved = spec.model_dump(mode="json")
    paths["spec"].write_text(yaml.safe_dump(resolved, sort_keys=False))
    parent = start_parent_run(uri, spec.experiment, spec.name, resolved)
    write_state(paths["state"], {"parent_run_id": parent, "tracking_uri": uri})
    projection = _Projection(uri, spec.experiment, spec.name, parent, paths["optuna"])
    config = spec.trial_config().to_dict()
    rng = random.Random(1)
    times = []
    for i in range(trials):
        trial_id = f"t{i:05d}"
        results = [{"epoch": e, "test_acc": rng.random(), "train_loss": rng.random(), "lambda": 0.25 * (1 - e / epochs),
                    "timestamp": time.time(), "epoch_time": 1.0} for e in range(1, epochs + 1)]
        t0 = time.perf_counter()
        projection.run_of(trial_id, {**config, "seed": i}, results=results)
        projection.log(trial_id, config, results)
        projection.end(TrialRecord(trial_id, paths["dir"] / f"trial_{trial_id}", config, results), "FINISHED")
        times.append(time.perf_counter() - t0)
    return times, parent


def end_of_study(spec) -> dict[str, float]:
    """Seconds of the study's end: the analysis on the parent run, and the report."""
    from study.analysis import record_analysis
    from study.folder import open_study
    from study.report import write_report

    folder = open_study(spec.study_dir())
    t0 = time.perf_counter()
    analysis = record_analysis(folder)
    t1 = time.perf_counter()
    write_report(folder.path, analysis=analysis)
    t2 = time.perf_counter()
    return {"analysis_s": t1 - t0, "report_s": t2 - t1}


def driver_growth(tmp: Path, trials: int, timeout_s: float) -> list[dict]:
    """A real study of ``trials`` tiny trials (digits, resnet-tiny, one batch, a quarter CPU each)
    through ``snn-study run``: the driver process's CPU seconds per finished trial between the
    points of :data:`POINTS`, and its resident memory at each; then the study's end, and
    ``snn-study sync`` and ``report`` of the finished study."""
    import subprocess
    import sys

    import psutil

    spec = {"name": "growth-real", "dataset": "digits", "arch": "resnet-tiny", "trials": trials,
            "scheduler": "fifo", "search": {"preset": "full"}, "resources": {"cpu": 0.25},
            "train": {"epochs": 1, "max_batches": 1, "workers": 0},
            "storage": str(tmp / "studies"), "data_root": str(tmp / "data"),
            "mlflow": {"tracking_uri": f"sqlite:///{tmp}/mlflow.db"}}
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))
    log = (tmp / "driver.out").open("w")
    driver = subprocess.Popen([sys.executable, "-m", "study.cli", "run", str(tmp / "spec.yaml")], cwd=tmp,
                              stdout=log, stderr=subprocess.STDOUT)
    proc = psutil.Process(driver.pid)
    folder = tmp / "studies" / "growth-real"
    rows, points, last = [], [n for n in POINTS if n <= trials], (0, 0.0)
    start = time.monotonic()
    try:
        while points and driver.poll() is None and time.monotonic() - start < timeout_s:
            done = sum(1 for d in folder.glob("trial_*") if (d / "result.json").is_file()
                       and (d / "result.json").stat().st_size > 0)
            if done >= points[0]:
                cpu = sum(proc.cpu_times()[:2])
                rows.append({"trials done": done, "driver CPU s per trial since the last point":
                             (cpu - last[1]) / max(done - last[0], 1),
                             "driver RSS, MiB": proc.memory_info().rss / 2**20,
                             "wall s": time.monotonic() - start})
                print(rows[-1], flush=True)
                last, points = (done, cpu), points[1:]
            time.sleep(1.0)
        # the end of the study, then what a user runs on the finished study
        driver.wait(max(1.0, timeout_s - (time.monotonic() - start)))
        rows.append({"study ended (wall s)": time.monotonic() - start, "exit": driver.returncode})
        for command in ("sync", "report"):
            t0 = time.monotonic()
            ran = subprocess.run([sys.executable, "-m", "study.cli", command, str(folder)], cwd=tmp,
                                 capture_output=True, text=True)
            rows.append({f"snn-study {command} of the finished study, s": time.monotonic() - t0,
                         "exit": ran.returncode})
            print(rows[-1], ran.stdout[-500:], ran.stderr[-500:], flush=True)
    finally:
        if driver.poll() is None:
            driver.terminate()
            driver.wait(120)
        log.close()
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.growth", description=__doc__)
    p.add_argument("--trials", type=int, default=POINTS[-1])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS-growth.md")
    p.add_argument("--real", action="store_true", help="also a real study of --trials tiny trials (the driver's "
                                                          "CPU and memory per trial; minutes)")
    p.add_argument("--real-timeout", type=float, default=1800.0)
    args = p.parse_args(argv)
    if args.real:
        with tempfile.TemporaryDirectory() as d:
            rows = driver_growth(Path(d), args.trials, args.real_timeout)
        print(rows)
        return
    points = [n for n in POINTS if n <= args.trials] or [args.trials]
    rows, ends = [], {}
    with tempfile.TemporaryDirectory() as d, contextlib.chdir(d):  # MLflow puts a SQLite store's artifacts in ./mlruns
        tmp = Path(d)
        for objective in ("test_acc", "test_acc+firing_rate"):
            t0 = time.perf_counter()
            suggest, spec = search_growth(tmp / objective.replace("+", "-"), args.trials, objective)
            print(f"{objective}: {args.trials} suggestions in {time.perf_counter() - t0:.0f} s", flush=True)
            rows.append({"what": f"suggestion ({objective}), s", **{f"at {n}": _around(suggest, n) for n in points}})
            if objective == "test_acc":
                t0 = time.perf_counter()
                logged, _ = tracking_growth(tmp / "test_acc", spec, args.trials)
                print(f"MLflow: {args.trials} trials in {time.perf_counter() - t0:.0f} s", flush=True)
                rows.append({"what": "MLflow projection per trial (3 epochs), s",
                             **{f"at {n}": _around(logged, n) for n in points}})
                ends = end_of_study(spec)
    for r in rows:
        first, last = r[f"at {points[0]}"], r[f"at {points[-1]}"]
        r[f"{points[-1]} / {points[0]}"] = last / first
    columns = [k for k in rows[0] if k != "what"]
    lines = ["# Growth with the number of trials", "", __doc__.split("\n\n", 2)[2].strip(), "",
             *table(["what", *columns], [[r["what"], *(f"{r[k]:.4g}" for k in columns)] for r in rows])]
    lines += ["", f"End of a {args.trials}-trial study: analysis recorded on the parent run "
                  f"{ends.get('analysis_s', float('nan')):.1f} s, report (`write_report`) "
                  f"{ends.get('report_s', float('nan')):.1f} s."]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
