"""Benchmarks of the project against spikingjelly, run with ``make bench`` (issue: performance).

Every number in ``RESULTS.md`` is a ratio of two measurements taken side by side in one run,
interleaved round by round, because the machines are noisy. Nothing here is a test.
"""

from pathlib import Path

# The project's root: the sections start their subprocesses there (so that ``-m benchmarks...``
# finds this package), and the RESULTS files are written below it.
ROOT = Path(__file__).resolve().parents[1]
