"""Markdown tables: the one place that writes the ``| a | b |`` rows and the ``|---|`` line.

The cells arrive as text, formatted by the caller (each table formats its numbers its own way).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["table"]


def _line(cells: Sequence[object]) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def table(headers: Sequence[object], rows: Iterable[Sequence[object]]) -> list[str]:
    """A markdown table as lines: the header, the separator, one line per row.

    Args:
        headers: The column names.
        rows: One sequence of cells per row, as many as ``headers``; each cell is written with
            ``str`` (format numbers before: :mod:`study.rounding`).

    Raises:
        ValueError: A row has a different number of cells than ``headers``.
    """
    lines = [_line(headers), "|" + "---|" * len(headers)]
    for i, row in enumerate(rows):
        if len(row) != len(headers):
            raise ValueError(f"table: row {i} has {len(row)} cells; the header has {len(headers)}")
        lines.append(_line(row))
    return lines
