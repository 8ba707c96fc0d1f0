"""Load on one tracking server: up to 32 trials at once on a three-node Ray cluster.

    python -m benchmarks.load [--faults] [--out benchmarks/RESULTS-load.md]

Runs the scenario of the load tests (``tests/docker/_load.py``: PostgreSQL, an MLflow server
on it and a Ray head with two worker nodes, all started from ``docker/compose.yaml``'s
commands on 127.0.0.1; study ``load``, 32 tiny trials at once or as many as fit in the
memory free, and study ``load-b`` beside it, both logging to that server, their Optuna
studies on the same PostgreSQL), without faults unless ``--faults``, and records what the
server took: the metric rows PostgreSQL holds, per second (mean over the run, and the
busiest second), and the latency of one REST write (``runs/log-metric``) a probe makes every
half second beside the studies (median and slowest); and the memory the scenario took. Then
it checks what the load tests assert: every epoch of every trial in MLflow exactly once,
every Optuna trial in a final state. Exits 1, saying what it measured, where fewer than 8
trials fit.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import psutil

from study.markdown import table

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "docker")]  # the scenario and its cluster

from _cluster import LocalCluster  # noqa: E402
from _load import B_TRIALS, EPOCHS, WORKER_CPUS, TooLittleMemory, run_load  # noqa: E402


def _checks(run) -> dict[str, str]:
    import optuna
    from mlflow import MlflowClient

    from study.tracking import trial_runs_filter

    c = MlflowClient(run.cluster.uri)
    out = {}
    for study, n in (("load", run.trials), ("load-b", B_TRIALS)):
        exp = c.get_experiment_by_name(study)
        runs = c.search_runs([exp.experiment_id], trial_runs_filter(study), max_results=1000)
        once = sum(sorted(m.step for m in c.get_metric_history(r.info.run_id, "test_acc")) == list(range(1, EPOCHS + 1))
                   for r in runs)
        trials = optuna.load_study(study_name=study, storage=run.cluster.database_url("optuna")).get_trials()
        out[study] = (f"{len(runs)}/{n} runs FINISHED: {sum(r.info.status == 'FINISHED' for r in runs)}; every "
                      f"epoch exactly once: {once}/{len(runs)}; Optuna trials finished: "
                      f"{sum(t.state.is_finished() for t in trials)}/{len(trials)}")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faults", action="store_true", help="also kill a worker node and the MLflow server mid-study")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS-load.md")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="snn-load-bench-", dir="/tmp"))
    cluster = LocalCluster(work, worker_cpus=WORKER_CPUS)
    try:
        run = run_load(cluster, faults=args.faults)
        checks = _checks(run)
    except TooLittleMemory as e:
        sys.exit(str(e))
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    m = run.measures
    line = m["Ray's kill line GiB"]
    lines = [
        "# Load on one tracking server", "", __doc__.split("\n\n", 2)[2].strip(), "",
        f"On this machine ({os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.1f} GiB), "
        f"{'with' if args.faults else 'without'} faults, "
        f"{m['wall s']:.0f} s in all; the studies' drivers exited with {run.rc}.", "",
        f"Sized on the memory free: {run.sizing.text()}.", "",
        *table(("what", "value"), [
            ("most trials of study `load` training at once", m["most trials at once"]),
            ("metric rows in MLflow's PostgreSQL at the end", m.get("metric rows", "n/a")),
            ("metric rows written per second, mean over the run", f"{m.get('metric rows/s mean', float('nan')):.1f}"),
            ("metric rows written in the busiest second", f"{m.get('metric rows/s max', float('nan')):.0f}"),
            ("one REST write beside the load (`runs/log-metric`): median, s",
             f"{m.get('probe write median s', float('nan')):.3f}"),
            (f"the same, slowest of {m.get('probe writes', 0)}, s", f"{m.get('probe write max s', float('nan')):.3f}"),
            (f"memory used on the machine at most (as Ray counts it; it kills workers past {line:.1f}), GiB",
             f"{m['most memory used GiB']:.1f}"),
            ("one trial process at most (anonymous memory), MiB", f"{m['most per trial process MiB']:.0f}"),
            ("all trial processes together at most (anonymous memory), GiB",
             f"{m['most all trial processes GiB']:.1f}"),
            ("study `load`'s driver at most (anonymous memory), MiB", f"{m['most study driver MiB']:.0f}"),
        ]),
        "", "Checks:", "", *(f"* `{k}`: {v}" for k, v in checks.items()), "",
        "Events (seconds from the start): " + "; ".join(f"{t:.0f} s {what}" for t, what in run.events) + ".",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
