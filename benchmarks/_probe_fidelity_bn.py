"""CPU probe: what to do with BatchNorm's running statistics when a trial raises T (snn.fidelity).

A trial of ``fidelity: {timesteps: [1, 2, 4]}``, 8 epochs (T = 1, 1, 2, 4, 4, 4, 4, 4), digits,
resnet-tiny, batch 64, 3 seeds, with three treatments of the running statistics at each raise:
``keep`` (the code as it is), ``reset`` (``reset_running_stats``: mean 0, variance 1, then
momentum 0.1 from there) and ``re-estimate`` (reset, then their plain average over 5 fixed
training batches at the new T, no gradient, before the epoch trains). Test accuracy after each
epoch, mean over the seeds, at 5 training batches an epoch (the running statistics see 5
updates before the epoch's evaluation) and at all 23; and how far the running variances are
from a batch's at the new T when it is raised (mean over the BN layers of |Δ| / old, one test
batch of 64, batch noise included).

    python -m benchmarks._probe_fidelity_bn

What it measured is quoted in docs/decisions.md.
"""
from __future__ import annotations

import copy
import statistics

import torch
from torch import nn

from snn.config import TrainConfig
from snn.training import fit

_POLICIES = ("keep", "reset", "re-estimate")


def _bns(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def _shift(trainer) -> float:
    """Mean over the BN layers of |running variance − one batch's at the current T| / running."""
    probe = copy.deepcopy(trainer.model).train()
    for m in _bns(probe):
        m.momentum = 1.0  # the running statistics become this batch's
    x, _ = next(iter(trainer.test_loader))
    before = [m.running_var.clone() for m in _bns(trainer.model)]
    with torch.no_grad():
        probe(trainer._inputs(x))
    return statistics.mean(float(((m.running_var - v).abs() / v).mean()) for m, v in zip(_bns(probe), before))


def _run(seed: int, policy: str, max_batches: int | None) -> tuple[list[float], list[float]]:
    cfg = TrainConfig(dataset="digits", arch="resnet-tiny", timesteps=4, fidelity={"timesteps": [1, 2, 4]},
                      epochs=8, batch_size=64, max_batches=max_batches, seed=seed, workers=0)
    accs, shifts, state = [], [], {"t": None}

    def progress(phase: str, done: int, total: int) -> None:
        trainer = state["trainer"]
        t = trainer.model.timesteps
        if phase != "train" or done or t == state["t"]:
            return
        if state["t"] is not None:  # a raise, before the epoch's first step
            shifts.append(_shift(trainer))
            if policy != "keep":
                for m in _bns(trainer.model):
                    m.reset_running_stats()
            if policy == "re-estimate":
                fixed = torch.utils.data.DataLoader(trainer.train_loader.dataset, 64)  # no shuffling: no RNG drawn
                for m in _bns(trainer.model):
                    m.momentum = None  # a plain average
                with torch.no_grad():
                    for b, (x, _) in zip(range(5), fixed):
                        trainer.model(trainer._inputs(x))
                for m in _bns(trainer.model):
                    m.momentum = 0.1
        state["t"] = t

    fit(cfg, lambda m, t: accs.append(m["test_acc"]), progress=progress, start=lambda t: state.update(trainer=t))
    return accs, shifts


def main(seeds: int = 3) -> None:
    for max_batches in (5, None):
        for policy in _POLICIES:
            runs = [_run(s, policy, max_batches) for s in range(seeds)]
            accs = [round(statistics.mean(r[0][e] for r in runs), 3) for e in range(8)]
            shift = [round(statistics.mean(r[1][k] for r in runs), 3) for k in range(2)]
            print(f"{max_batches or 'all'} batches, {policy}: test_acc by epoch {accs}; variance shift at the "
                  f"raises {shift}", flush=True)


if __name__ == "__main__":
    main()
