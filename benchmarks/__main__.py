"""Run every benchmark and write ``benchmarks/RESULTS.md``.

    python -m benchmarks [--quick] [--device cuda] [--out benchmarks/RESULTS.md]

(``make bench`` installs spikingjelly and runs this; ``make bench-cuda`` the GPU sections;
``make bench-fidelity`` section 9 alone, into ``benchmarks/RESULTS-fidelity.md``.)
Each comparison interleaves its candidates round by round and reports the ratio of medians.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import torch

from benchmarks import (ROOT, _energy, _fidelity, _guard, _lif, _malloc, _network, _pbt, _report, _shortcuts, _study_cost,
                        _user_data)

Section = tuple[str, str, Callable[[bool], list[dict]]]  # title, note, run(quick) -> rows


def _sections(cuda: bool, quick: bool) -> dict[str, Section]:
    """The sections ``--only`` picks from, in the order they run: those of the CPU, or of the GPU."""
    if cuda:  # the study, user-data, guard and pbt sections measure CPU trials; Ray may not even be installed
        # beside the GPU
        return {"lif": ("4. LIF layer alone on CUDA: forward + backward", _lif.NOTE_CUDA,
                        lambda q: _lif.bench_lif(q, "cuda")),
                "network": ("1. Training step of the whole network (CUDA)", _network.NOTE_CUDA,
                            _network.bench_network_cuda),
                "shortcuts": ("2. Shortcut overhead (CUDA)", _shortcuts.NOTE,
                              lambda q: _shortcuts.bench_shortcuts(q, "cuda")),
                "energy": ("8. Counting an inference's operations (energy) on CUDA: cost in an evaluation pass",
                           _energy.NOTE, lambda q: _energy.bench_energy(q, ("cuda",)))}
    return {"lif": ("4. LIF layer alone: forward + backward", _lif.NOTE, _lif.bench_lif),
            "network": ("1. Training step of the whole network (CPU)", _network.NOTE, _network.bench_network),
            "shortcuts": ("2. Shortcut overhead", _shortcuts.NOTE, _shortcuts.bench_shortcuts),
            "study": ("3. Study orchestration overhead", _study_cost.NOTE, _study_cost.bench_study),
            "user-data": ("5. A user's data: ready in a trial", _user_data.NOTE, _user_data.bench_user_data),
            "guard": ("6. Firing-rate guard: silent trials stopped, compute saved", _guard.NOTE, _guard.bench_guard),
            "pbt": ("7. Learned λ (PBT) against the paper's linear decay, at equal compute", _pbt.note(quick),
                    _pbt.bench_pbt),
            "energy": ("8. Counting an inference's operations (energy): cost in an evaluation pass", _energy.NOTE,
                       _energy.bench_energy),
            "fidelity": ("9. Timesteps as a fidelity against a study at the target T", _fidelity.note(quick),
                         _fidelity.bench_fidelity)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes, resnet-tiny only (a few minutes)")
    p.add_argument("--only", choices=["lif", "network", "shortcuts", "study", "user-data", "guard", "pbt", "energy", "fidelity"],
                   action="append",
                   help="run this section alone (repeat for several); default: all but fidelity")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: the LIF, network, shortcut and energy sections on the GPU "
                        "(default --out RESULTS-cuda.md)")
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
    sections = _sections(cuda, a.quick)
    # the fidelity's real studies (about 20 minutes) run only when asked: make bench-fidelity
    chosen = [o for o in a.only or [k for k in sections if k != "fidelity"] if o in sections]
    cmd = "python -m benchmarks" + (" --quick" if a.quick else "") + (" --device cuda" if cuda else "") + "".join(
        f" --only {o}" for o in a.only or [])
    # --only into a page that exists: its other sections are kept, these replace their own
    existing = Path(a.out).read_text() if a.only and Path(a.out).exists() else None
    out, done = [_report.header(cmd, a.device)], {}
    for key in chosen:
        title, note, fn = sections[key]
        print(f"== {title}", flush=True)
        t0 = time.perf_counter()
        rows = fn(a.quick)
        print(_report.table(rows), flush=True)
        done[title] = _report.section(title, note, rows, time.perf_counter() - t0)
        page = "".join([out[0], *done.values()]) if existing is None else _report.merged(existing, cmd, a.device, done)
        Path(a.out).write_text(page)  # after every section: a later failure keeps these
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
