"""Markdown tables (study/markdown.py)."""

from __future__ import annotations

import pytest

from study.markdown import table


def test_a_table_is_a_header_a_separator_and_one_line_per_row():
    assert table(["a", "b"], [["x", 1], ["", 0.5]]) == ["| a | b |", "|---|---|", "| x | 1 |", "|  | 0.5 |"]


def test_a_table_without_rows_is_its_header():
    assert table(["trial", "status"], []) == ["| trial | status |", "|---|---|"]


def test_a_row_of_the_wrong_width_is_refused_with_its_number():
    with pytest.raises(ValueError, match="row 1 has 1 cells; the header has 2"):
        table(["a", "b"], [["x", "y"], ["z"]])
