"""Numbers as a reader sees them: a configuration's values and a trial's metrics, rounded to what
they mean, for the report's tables and the labels of its figures.

* A configuration value (:func:`value`) is written as its dimension is declared
  (:data:`search_spaces.DIMENSIONS`): a number to :data:`SIGNIFICANT` significant digits
  (λ₀ = 0.988, lr = 0.00316), an integer as an integer, a categorical dimension's choice as
  its text (``branches=1,2``). MLflow's params arrive as text and are read back as numbers first.
* A metric (:func:`metric`): an accuracy, a fraction as MLflow holds it, to
  :data:`ACCURACY_DECIMALS` decimals (one image in 10,000); any other metric to
  :data:`SIGNIFICANT` significant digits.
* A configuration's label (:func:`label`): ``name=value`` pairs of such values; a caller whose
  labels must tell configurations apart asks for more digits where 3 do not.

What is written to be read back by a program keeps every digit: a configuration's YAML (a
trial to rerun), the analysis' CSV, MLflow's params and metrics.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from search_spaces import DIMENSIONS

__all__ = ["ACCURACY_DECIMALS", "SIGNIFICANT", "label", "metric", "value"]

SIGNIFICANT = 3  # significant digits of a configuration value and of a metric other than an accuracy
ACCURACY_DECIMALS = 4  # decimals of an accuracy (a fraction): one image of a 10,000-image test set


def _significant(x: float, digits: int = SIGNIFICANT) -> str:
    """``x`` to ``digits`` significant digits, in plain digits between 1e-4 and 1e6 (0.00543,
    1230), else in scientific notation (1.23e-07)."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    if 1e-4 <= abs(x) < 1e6:
        return np.format_float_positional(x, precision=digits, unique=False, fractional=False, trim="-")
    return f"{x:.{digits}g}"


def _number(v: Any) -> int | float | None:
    """``v`` as a number: a number as it is, MLflow's text of a finite one read back; None for anything else."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float, np.integer, np.floating)):
        return v.item() if isinstance(v, (np.integer, np.floating)) else v
    if isinstance(v, str):
        try:
            number = float(v)
        except ValueError:
            return None  # a choice ("linear", "1,2"), a list, a name
        if not math.isfinite(number):
            return None
        try:
            integer = int(v)
        except ValueError:
            return number
        return integer if str(integer) == v else None  # "007" is a name, not a number
    return None


def value(v: Any, dim: str | None = None, *, digits: int = SIGNIFICANT) -> str:
    """A configuration value as a table or a label writes it (see the module docstring).

    Args:
        v: The value: a number, a choice, or MLflow's text of either (None and "" write as "").
        dim: The dimension it is a value of, where known: a categorical dimension's choice is
            written as its text (two choices never round to one).
        digits: Significant digits of a number that is not an integer.
    """
    if v is None or v == "":
        return ""
    d = DIMENSIONS.get(dim) if dim is not None else None
    number = _number(v)
    if number is None or (d is not None and d.kind == "categorical"):
        return str(v)  # a choice ("linear", "1,2", T's 4), a flag, a name: its text, never rounded
    if isinstance(number, int):
        return str(number)
    return _significant(float(number), digits)


def metric(v: float | None, name: str) -> str:
    """A metric as a table or a label writes it: an accuracy (``*_acc``) to :data:`ACCURACY_DECIMALS`
    decimals, any other to :data:`SIGNIFICANT` significant digits; "" for None."""
    if v is None:
        return ""
    if name.endswith("_acc") and math.isfinite(v):
        return f"{v:.{ACCURACY_DECIMALS}f}"
    return _significant(float(v))


def label(params: Mapping[str, Any], names: Iterable[str], *, digits: int = SIGNIFICANT) -> str:
    """``name=value`` for each of ``names`` that ``params`` holds, space-separated, each value as
    :func:`value` writes it (``digits``: its significant digits)."""
    return " ".join(f"{k}={value(params[k], k, digits=digits)}" for k in names if k in params)
