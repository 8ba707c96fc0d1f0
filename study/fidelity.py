"""T as a fidelity in a study: which specs can use it, and the ASHA that decides on its cost axis.

A spec's ``fidelity: {timesteps: [1, 2, 4]}`` makes every search trial start at the smallest T
and raise it at ASHA's rungs (:mod:`snn.fidelity` holds the arithmetic, the trainer raises T).
Here: :func:`refusal`, the combinations that cannot work, each with its reason, which the
spec raises as its one-line error; and :func:`asha_settings`, ASHA's time attribute and rungs,
which line up with the trials' raises. The confirm stage, which re-runs the best
configurations with new seeds, trains at the target T throughout: its accuracy is what a
user gets from training the configuration as usual. The report's section on how well the
cheap rungs ranked the trials is :mod:`study.fidelity_report`'s.
"""

from __future__ import annotations

from typing import Any

from snn.config import UserData
from snn.fidelity import REDUCTION_FACTOR, budget_cost, grace_cost
from snn.metrics import COST

__all__ = ["asha_settings", "refusal"]


def refusal(spec: Any) -> tuple[str, str] | None:
    """Why ``spec``'s fidelity cannot work, as (the spec's field, a one-line message); None where
    it can, or the spec has none. Checked before the spec settles its scheduler: a study whose
    replicates or objectives would make it run fifo is refused here, not silently left without rungs."""
    if spec.fidelity is None:
        return None
    if "timesteps" in spec.search.dims:
        return "search.dims", (f"timesteps cannot be searched beside fidelity, which grows T within each trial "
                               f"to its target {spec.fidelity.target}; remove one of them")
    if isinstance(spec.dataset, UserData) and spec.dataset.format == "events":
        return "fidelity", (f"your event recordings are binned into frames once, for T={spec.fidelity.target}, "
                            f"before the trials start, so T cannot grow on them (the built-in event datasets "
                            f"are binned for each T); remove fidelity")
    if spec.seeds > 1:
        return "fidelity", ("seeds > 1 runs every replicate its full budget (scheduler fifo), where no rung raises "
                            "T; use seeds: 1 (confirm: re-runs the best configurations with new seeds)")
    if len(spec.objectives()) > 1:
        return "fidelity", (f"objective {spec.objective} runs every trial its full budget (scheduler fifo), where "
                            f"no rung raises T; use objective: test_acc")
    if spec.scheduler == "fifo":
        return "fidelity", "T grows at ASHA's rungs, and scheduler fifo has none; use scheduler: asha"
    if spec.scheduler != "asha":  # population-based training
        return "fidelity", (f"scheduler {spec.scheduler} copies a trial's weights into another that trains at "
                            f"another T, and perturbs on epochs, not on cost; use scheduler: asha")
    return None


def asha_settings(spec: Any) -> dict[str, Any]:
    """The arguments of the study's ``ASHAScheduler``: its time attribute and rungs.

    Without a fidelity, epochs: a rung after epoch 1, 2, 4, ... (grace period 1, reduction
    factor 2), to the budget. With one, the trials' ``cost`` (the sum of their epochs' T):
    the first rung at the cost of one epoch at the second T, then each at twice the cost of
    the one before, so that a trial is ranked at the report after which it raises T
    (:mod:`snn.fidelity`); ``max_t`` is the cost of a whole budget.
    """
    epochs = spec.train.epochs
    if spec.fidelity is None:
        return {"time_attr": "training_iteration", "max_t": epochs, "grace_period": 1,
                "reduction_factor": REDUCTION_FACTOR}
    timesteps = spec.fidelity.timesteps
    return {"time_attr": COST, "max_t": budget_cost(timesteps, epochs), "grace_period": grace_cost(timesteps),
            "reduction_factor": REDUCTION_FACTOR}
