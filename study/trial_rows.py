"""A study's trials as its report shows them: one row per trial run, read back from MLflow.

:func:`read_rows` gives each trial run of a study as a dict (its params, its ``test_acc`` per
epoch, each epoch's newest value as :func:`study.tracking.metric_per_epoch` reads it; what it
came to: :data:`FULL`, :data:`STOPPED`, :data:`RUNNING` or :data:`FAILED`).

The section "the dimensions" reads each searched dimension as the registry
(:data:`search_spaces.DIMENSIONS`) declares it: the columns of the trial table
(:func:`columns`), MLflow's string params back as typed values (:func:`typed`: ``branches``
as a list of stages), the value a plot draws (:func:`dim_value`: a ``relative`` dimension as
the ratio to the default it is relative to) and the dimensions a report draws
(:func:`dimensions`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from search_spaces import DIMENSIONS, dims_of, searched
from snn.metrics import ENERGY, TEST_ACC
from study.params import config_of_params
from study.tracking import metric_per_epoch, trial_runs_filter

__all__ = ["FAILED", "FULL", "RUNNING", "STOPPED", "columns", "dim_value", "dimensions", "read_rows", "typed"]

# what a trial came to: trained its budget, stopped early (scheduler or firing-rate guard),
# still running, or failed / diverged (no accuracy to draw)
FULL, STOPPED, RUNNING, FAILED = "full", "stopped", "running", "failed"


# -- the trials, read back from MLflow --------------------------------------------------------------
def _int(v: Any) -> int | None:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return None


def _outcome(status: str, tags: dict[str, str], final: float | None) -> str:
    """:data:`FULL`, :data:`STOPPED`, :data:`RUNNING` or :data:`FAILED` (see the constants)."""
    if status in ("FAILED", "KILLED") or tags.get("diverged") == "true":
        return FAILED
    if tags.get("stopped_early") == "true" or tags.get("stopped") in ("silent", "saturated"):
        return STOPPED
    if status in ("RUNNING", "SCHEDULED"):
        return RUNNING
    return FULL if final is not None else FAILED


def read_rows(client, experiment_id: str, study: str) -> list[dict[str, Any]]:
    """One dict per trial run, best final test_acc first.

    Keys: trial_id, method, status (a sentence), outcome (:data:`FULL`, ...), run_id, curve
    ((epoch, test_acc), finite values only), final, best, energy (the last energy_uj; None
    for a run that logged none), epochs (epochs with a value),
    budget (the ``epochs`` param), params (MLflow's strings), stopped, saved, and the
    :func:`columns`.
    """
    runs = client.search_runs([experiment_id], filter_string=trial_runs_filter(study), max_results=10000)
    rows = []
    for r in runs:
        curve = [(e, v) for e, v in metric_per_epoch(client, r.info.run_id, TEST_ACC) if math.isfinite(v)]
        tags = r.data.tags
        status = r.info.status
        saved = 0.0
        if tags.get("stopped_early") == "true":
            last = tags.get("last_epoch") or (str(curve[-1][0]) if curve else "?")
            status = f"stopped early (epoch {last} of {r.data.params.get('epochs', '?')})"
        elif tags.get("stopped") in ("silent", "saturated"):  # the firing-rate guard (snn.guard)
            done, budget = float(tags.get("epochs_done", 0)), float(r.data.params.get("epochs", 0))
            saved = max(0.0, budget - done)
            status = f"stopped: {tags['stopped']} {tags.get('stopped_stage', '')} after {done:.2g} of {budget:g} epochs"
        final = curve[-1][1] if curve else None
        row = {"trial_id": tags.get("trial_id", r.info.run_id[:8]), "method": tags.get("method", ""),
               "status": status, "outcome": _outcome(r.info.status, tags, final), "run_id": r.info.run_id,
               "curve": curve, "final": final, "best": max(v for _, v in curve) if curve else None,
               "epochs": len(curve), "budget": _int(r.data.params.get("epochs")), "params": dict(r.data.params),
               "stopped": tags.get("stopped"), "saved": saved, "energy": r.data.metrics.get(ENERGY)}
        for c in columns():
            row[c] = r.data.params.get(c, "")
        rows.append(row)
    rows.sort(key=lambda r: (r["final"] is None, -(r["final"] or 0)))
    return rows


# -- the dimensions ----------------------------------------------------------------------------------
def columns(extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The dimensions every row carries and the trial table shows: a full search's
    (:func:`search_spaces.searched`), then ``extra`` (a spec's other searched ones)."""
    return tuple(dict.fromkeys((*searched(), *extra)))


_STAGE_LIST = re.compile(r"\d+(,\d+)*")


def typed(params: dict[str, str]) -> dict[str, Any]:
    """MLflow's string params back as a trial's typed config (:func:`study.params.config_of_params`):
    ``None`` as null, numbers as numbers; ``branches`` as ``all``, ``none`` or a list of stages."""
    config = config_of_params(params)
    branches = config.get("branches")
    if isinstance(branches, int) and not isinstance(branches, bool):
        config["branches"] = [branches]
    elif isinstance(branches, str) and _STAGE_LIST.fullmatch(branches):
        config["branches"] = [int(b) for b in branches.split(",")]
    return config


def _ratio(params: dict[str, str], dim: str) -> float | None:
    """A ``relative`` dimension's value over its default for the trial (the surrogate's parameter
    over that surrogate's default: 1 is the default; None: what it depends on is not known)."""
    d = DIMENSIONS[dim]
    if d.depends_on is not None and d.depends_on not in params:
        return None
    config = typed({k: params[k] for k in (dim, d.depends_on) if k is not None and k in params})
    default = d.default_of(config) if d.default_of is not None else None
    if default is None:
        return None
    value = config.get(dim)
    return 1.0 if value is None else float(value) / default


def dim_value(row: dict[str, Any], dim: str) -> Any:
    """The value a panel draws for ``dim``: a number, a category (text), or None (the trial has none)."""
    params = row.get("params") or {}
    if dim in DIMENSIONS and DIMENSIONS[dim].relative:
        return _ratio(params, dim)
    raw = params.get(dim, row.get(dim))
    if raw in (None, "", "None"):
        return None
    value = typed({dim: str(raw)}).get(dim)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def dimensions(spec, rows: Sequence[dict[str, Any]]) -> list[str]:
    """The dimensions to draw: the spec's searched ones, then any column whose value varies between trials."""
    try:
        drawn = list(dims_of(spec.search.preset, spec.search.dims))
    except (AttributeError, ValueError):
        drawn = []
    varying = [c for c in (*columns(), *drawn) if len({str(dim_value(r, c)) for r in rows}) > 1]
    return list(dict.fromkeys(d for d in (*columns(), *drawn) if d in drawn or d in varying))
