"""Metric names of one epoch of Algorithm 1, defined once (importable without torch), and
whether a trial's last reported epoch completes its budget (:func:`ran_full_budget`).

The training loop (:mod:`snn.training`) reports them, the trainable passes them to Tune,
and the study records, ranks and plots them under the same names.
"""

from __future__ import annotations

__all__ = ["ANN_MACS", "COST", "DIVERGED", "ENERGY", "ENERGY_RATIO", "EPOCH", "STOPPED", "STOPPED_STAGE", "EPOCH_TIME", "FIRING_RATE", "GRAD_NORM_FIRST", "IMAGES_PER_S", "LAMBDA", "MACS", "SYNOPS",
           "TEST_ACC", "TEST_LOSS", "TIMESTEPS", "TRAIN_ACC", "TRAIN_LOSS", "branch_acc_metric", "firing_rate_metric",
           "grad_norm_metric", "ran_full_budget"]

EPOCH = "epoch"
TEST_ACC = "test_acc"  # main branch only: what the stripped inference model sees
TEST_LOSS = "test_loss"
TRAIN_LOSS = "train_loss"
TRAIN_ACC = "train_acc"  # main branch accuracy on the training batches
LAMBDA = "lambda"  # λ(i) at the last iteration of the epoch
GRAD_NORM_FIRST = "grad_norm_first"  # mean over the epoch's iterations of ||dL/dW1||
FIRING_RATE = "firing_rate"  # mean spikes per neuron per time step, test set
SYNOPS = "synops"  # synaptic operations (accumulates) per test image
MACS = "macs"  # multiply-accumulates per test image of the layers that read non-spike input
ANN_MACS = "ann_macs"  # multiply-accumulates per image of the same network run as a non-spiking one
ENERGY = "energy_uj"  # µJ per inference of the stripped network (snn.energy: arithmetic only)
ENERGY_RATIO = "energy_ratio"  # ENERGY over the non-spiking network's (E_MAC × ANN_MACS)
TIMESTEPS = "timesteps"  # T the epoch trained and evaluated at (snn.fidelity: it grows during a trial)
COST = "cost"  # the running sum over the trial's epochs of each epoch's T: ASHA's axis with a fidelity
EPOCH_TIME = "epoch_time"  # seconds for training + evaluation
IMAGES_PER_S = "images_per_s"  # training throughput
DIVERGED = "diverged"  # 1.0 in the last report of a trial whose loss became NaN/inf
STOPPED = "stopped"  # "silent" or "saturated" in the last report of a trial the firing-rate guard stopped
STOPPED_STAGE = "stopped_stage"  # the stage that was silent or saturated


def ran_full_budget(last_epoch: float | None, epochs: float) -> bool:
    """Whether a trial whose last report is of epoch ``last_epoch`` (its :data:`EPOCH`; None:
    it reported none) ran its full budget of ``epochs``. A trial stopped by the scheduler or by
    the firing-rate guard, or still training, is short of it: its accuracy is from fewer epochs
    and not comparable with a full-budget one."""
    return last_epoch is not None and int(last_epoch) >= int(epochs)


def branch_acc_metric(stage: int) -> str:
    """Metric name of the test accuracy of the shortcut head after ``stage``."""
    return f"branch{stage}_acc"


def firing_rate_metric(stage: str) -> str:
    """Metric name of the firing rate of a stage (``stem``, ``stage1``, ...)."""
    return f"firing_rate_{stage}"


def grad_norm_metric(stage: str) -> str:
    """Metric name of the mean weight-gradient norm of the layers of a stage."""
    return f"grad_norm_{stage}"

