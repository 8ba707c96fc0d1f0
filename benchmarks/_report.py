"""The page ``python -m benchmarks`` writes (``RESULTS.md``, ``RESULTS-cuda.md``): its header
naming the command and the machine, and one section per benchmark, a note saying what it
measures above a markdown table of its rows."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

from benchmarks import _sj
from study import markdown


def header(cmd: str, device: str) -> str:
    """The page's opening: the command that wrote it, when, and on what machine."""
    return (f"# Benchmark results\n\nCommand: `{cmd}` (or `make bench{'-cuda' if device == 'cuda' else ''}`), run "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n"
            f"Machine: {machine(device)}.\n\nEvery ratio compares candidates measured in the same run, interleaved "
            f"round by round (medians).\n")


def merged(existing: str, cmd: str, device: str, sections: dict[str, str]) -> str:
    """A page that already holds other sections, with ``sections`` (title -> text as
    :func:`section` writes it) put in: a section of the same title replaced, a new one added at
    the end, the others kept; the page's Command line says which sections this run wrote, with
    what and when, and on what machine."""
    head, *blocks = existing.split("\n## ")
    kept = {b.split("\n", 1)[0]: "\n## " + b.rstrip("\n") + "\n" for b in blocks}
    for title, text in sections.items():
        kept[title] = text
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    names = ", ".join(t.split(".", 1)[0] for t in sections)
    lines = head.rstrip("\n").split("\n")
    at = next((i for i, line in enumerate(lines) if line.startswith("Command: ")), None)
    note = f"; section {names} run alone with `{cmd}`, {when}, on {machine(device)}"
    if at is None:
        return header(cmd, device) + "".join(kept.values())
    lines[at] = lines[at].rstrip(".") + note + "."
    return "\n".join(lines) + "\n" + "".join(kept.values())


def section(title: str, note: str, rows: list[dict], seconds: float) -> str:
    """One section of the page: its title, what it measures, its table and how long it ran."""
    return f"\n## {title}\n\n{note}\n\n{table(rows)}\n_{seconds:.0f} s_\n"


def table(rows: list[dict]) -> str:
    """``rows`` as a markdown table: every key a column, floats to 3 significant digits."""
    if not rows:
        return "(no rows)\n"
    keys = list(dict.fromkeys(k for r in rows for k in r))  # every column, in order of first appearance
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    return "\n".join(markdown.table(keys, [[fmt(r.get(k, "")) for k in keys] for r in rows])) + "\n"


def machine(device: str) -> str:
    """The machine and the versions that matter to the numbers, in one line."""
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
