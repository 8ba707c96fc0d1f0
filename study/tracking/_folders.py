"""Reading a trial's folder: its config and one result per epoch, as the trial and Tune wrote them;
and whether a trial's last result says it ended (:func:`trial_ended`).

The folder (``studies/<name>/trial_<id>/``) is the study's durable record: every checkpoint,
written by the trial itself before Tune's driver hears of the epoch, carries the trial's
config and the metrics of every epoch so far (:mod:`trainables.layout`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune.result import DONE

from snn.metrics import DIVERGED, EPOCH, STOPPED, ran_full_budget
from study.folder import stage_of
from trainables.layout import read_record

__all__ = ["TrialRecord", "by_epoch", "is_number", "read_trial", "trial_ended"]


def is_number(v: Any) -> bool:
    """Whether a result's value is a number MLflow can take as a metric (a bool is not)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class TrialRecord:
    """What a trial folder says: config, one result per epoch, the last checkpoint, any error."""

    trial_id: str
    path: Path
    config: dict[str, Any]
    results: list[dict[str, Any]]  # one per epoch, in order
    checkpoint: Path | None = None
    error: str | None = None

    @property
    def stage(self) -> str:
        """The study's stage the trial ran in: search, or confirm."""
        return stage_of(self.path)

    @property
    def complete(self) -> bool:
        """Ran its full budget of epochs (:func:`snn.metrics.ran_full_budget`)."""
        epochs = self.config.get("epochs")
        return bool(self.results) and epochs is not None and ran_full_budget(self.results[-1].get(EPOCH), epochs)

    @property
    def diverged(self) -> bool:
        return bool(self.results) and bool(self.results[-1].get(DIVERGED))

    @property
    def stopped(self) -> str | None:
        """``silent`` or ``saturated``: the firing-rate guard stopped it (:mod:`snn.guard`)."""
        return (self.results[-1].get(STOPPED) or None) if self.results else None


def trial_ended(result: Mapping[str, Any], epochs: int) -> bool:
    """Whether a trial whose last result is ``result`` ended: Tune's ``done`` flag is on it (the
    scheduler stopped it, or its function returned), or it trained its ``epochs``, diverged, or
    was stopped by the firing-rate guard.

    On SIGINT Tune marks the trials still training TERMINATED too: their last result says none of
    these. Tune sets ``done`` on a trial whose function returned after the trial's saved state was
    written, so a trial restored from that state can lack the flag; its last result then says
    how it ended.
    """
    return bool(result.get(DONE) or result.get(DIVERGED) or result.get(STOPPED)
                or ran_full_budget(result.get(EPOCH), epochs))


def by_epoch(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One result per epoch (the first one seen: re-run epochs repeat the same values)."""
    out: dict[int, dict[str, Any]] = {}
    for r in results:
        if r.get(EPOCH) is not None:
            out.setdefault(int(r[EPOCH]), r)
    return [out[k] for k in sorted(out)]


def read_trial(trial_dir: str | Path) -> TrialRecord | None:
    """Read a trial folder: its newest checkpoint's record, and Tune's ``result.json``.

    The checkpoint is written by the trial before the driver hears of the epoch, so it is
    never behind Tune's own log; ``result.json`` adds what has no checkpoint (the report of
    a diverged trial), its latest report of each such epoch. The checkpoint's epochs are the
    trial's lineage: after PBT's exploit they are the donor's, whatever ``result.json`` logged
    of the trial's own before. Returns None for a folder with neither (a trial that never reported).
    """
    trial_dir = Path(trial_dir)
    results: list[dict[str, Any]] = []
    config: dict[str, Any] = {}
    checkpoints = sorted(trial_dir.glob("checkpoint_*"), key=lambda p: p.name)
    for ckpt in reversed(checkpoints):  # the newest readable one (a folder half copied is skipped)
        try:
            record = read_record(ckpt)
        except (OSError, ValueError):
            record = None
        if record:
            results, config = list(record.get("history", [])), dict(record.get("config", {}))
            break
    lineage = len(results)
    result_file = trial_dir / "result.json"
    if result_file.exists():
        for line in result_file.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:  # a line cut off by a killed driver
                continue
            results.append(r)
            config = config or dict(r.get("config") or {})
    if not results:
        return None
    error_file = trial_dir / "error.txt"
    error = error_file.read_text().strip().splitlines()[-1][-1000:] if error_file.exists() else None
    newest_first = results[:lineage] + results[lineage:][::-1]  # by_epoch keeps the first one of an epoch
    return TrialRecord(trial_dir.name.removeprefix("trial_"), trial_dir, config, by_epoch(newest_first),
                       checkpoints[-1] if checkpoints else None, error)
