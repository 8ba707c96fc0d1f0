"""The one training loop of Algorithm 1 (Guo et al., NeurIPS 2024).

Every iteration: forward to get b_n(x) and the shortcut logits b_l(x); update λ(i)
(Eq. 10, :func:`snn.schedules.balance`); compute the loss of Eq. 10
(:func:`snn.losses.shortcut_loss`); back-propagate (Eq. 9) and step AdamW. The
learning rate decays from ``lr`` to 0 with a cosine over all iterations. After each
epoch the main branch alone is evaluated on the test set (what inference sees), with
each shortcut head's accuracy, firing rates and synaptic operations. Each epoch has a T
(``cfg.timesteps``, or growing through ``cfg.fidelity``'s values: :mod:`snn.fidelity`) and
reports it with the trial's cost so far, the sum of its epochs' T.

The loop knows nothing about Ray, Optuna or MLflow: it reports each epoch through the
``report(metrics, trainer)`` callable it is given, and :meth:`Trainer.state_dict` holds
everything an exact resume needs (model, optimizer, LR schedule, iteration counter, the last
epoch's T and RNG states).

Beside it: what the loop uses of the machine (device, optimizer form, autocast dtype, data
workers) in :mod:`snn._devices`, the generators' states in :mod:`snn._rng`, and the step
captured as a CUDA graph in :mod:`snn._cuda_graph`. The public names of the first
(``adamw``, ``amp_dtype``, ``data_workers``) are imported from here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from snn import data as snn_data
from snn import diagnostics, fidelity, losses, models, schedules
from snn._cuda_graph import CapturedStep
from snn._devices import MAX_AUTO_WORKERS, adamw, amp_dtype, data_workers, device
from snn._rng import rng_state, seed_everything, set_rng_state
from snn.config import TrainConfig, UserData
from snn.guard import FiringGuard, Verdict
from snn.metrics import (ANN_MACS, COST, DIVERGED, ENERGY, ENERGY_RATIO, EPOCH, EPOCH_TIME, FIRING_RATE,
                         GRAD_NORM_FIRST, IMAGES_PER_S, LAMBDA, MACS, SYNOPS, TEST_ACC, TEST_LOSS, TIMESTEPS, TRAIN_ACC,
                         TRAIN_LOSS, branch_acc_metric, firing_rate_metric, grad_norm_metric)

__all__ = [
    "DIVERGED", "EPOCH", "FIRING_RATE", "GRAD_NORM_FIRST", "IMAGES_PER_S", "EPOCH_TIME", "LAMBDA", "SYNOPS",
    "TEST_ACC", "TEST_LOSS", "TRAIN_ACC", "TRAIN_LOSS", "TrainConfig", "Trainer", "TrainingDiverged", "TrainingStopped",
    "MAX_AUTO_WORKERS", "adamw", "amp_dtype", "branch_acc_metric", "data_workers", "fit",
]

log = logging.getLogger(__name__)


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite.

    Attributes:
        epoch: The epoch (1-based) in which it happened.
        step: The iteration i at which it happened.
    """

    def __init__(self, message: str, *, epoch: int, step: int) -> None:
        super().__init__(message)
        self.epoch, self.step = epoch, step


class TrainingStopped(RuntimeError):
    """A stage of the network stayed silent or saturated (:mod:`snn.guard`): the trial cannot learn.

    Attributes:
        verdict: What the guard saw (kind, stage, rate).
        epoch: The epoch (1-based) in which it stopped.
        step: The iteration i at which it stopped.
        epochs_done: Epochs trained, a fraction of the last one included.
    """

    def __init__(self, verdict: Verdict, *, epoch: int, step: int, epochs_done: float) -> None:
        super().__init__(f"the network is {verdict.kind}: {verdict.stage} fires {verdict.rate:.2g} spikes per neuron "
                         f"and step (epoch {epoch}, iteration {step})")
        self.verdict, self.epoch, self.step, self.epochs_done = verdict, epoch, step, epochs_done


class Trainer:
    """Model, data, optimizer and counters of one trial; one call of :meth:`run_epoch` per epoch.

    Args:
        cfg: The trial's configuration.
        data: A user's data, prepared (:func:`snn.data.prepare`); None: a built-in dataset,
            or the user's data prepared (or read from its cache) under ``cfg.data_root``.
        progress: Called as ``progress(phase, done, total)`` while an epoch runs: ``phase``
            is ``"train"`` or ``"test"``, ``done`` the batches of that phase done so far (0
            when it starts, then after each batch), ``total`` the phase's batches. It only
            watches: training is the same with or without it. None (the default): no calls.

    Attributes:
        info: What the model was built for (classes, channels, input size, kind).
        data: The user's data as prepared, or None for a built-in dataset.
    """

    def __init__(self, cfg: TrainConfig, data: snn_data.Prepared | None = None, *,
                 progress: Callable[[str, int, int], None] | None = None) -> None:
        self.cfg = cfg
        self.progress = progress
        self.device = device(cfg.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input sizes: cuDNN times its algorithms once, keeps the fastest
        seed_everything(cfg.seed)
        if isinstance(cfg.dataset, UserData) and data is None:
            data = snn_data.prepare(cfg.dataset, cfg.data_root, cfg.timesteps)
        info = snn_data.info(cfg.dataset, data)
        self.info, self.data = info, data
        if cfg.fidelity is not None and data is not None and info.kind == "frames":
            raise ValueError(f"fidelity: {info.name} holds frames of T={cfg.timesteps}, prepared once for all "
                             f"trials, so T cannot grow on it; remove fidelity")
        first = self.timesteps_of(1)
        self.train_loader, self.test_loader = self._loaders(first)
        self.model = models.build(**{**models.build_args(cfg, info), "timesteps": first}).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.loss_mode not in losses.MODES:
            raise ValueError(f"loss_mode: unknown mode {cfg.loss_mode!r}; choose one of {', '.join(losses.MODES)}")
        self.steps_per_epoch = len(self.train_loader) if cfg.max_batches is None else min(
            len(self.train_loader), cfg.max_batches)
        self.total_steps = max(1, cfg.epochs * self.steps_per_epoch)
        self.optimizer = adamw(self.model.parameters(), cfg.lr, cfg.weight_decay, self.device)
        self.lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=self.total_steps,
                                                                      eta_min=0.0)
        self.amp_dtype = amp_dtype(self.device) if cfg.amp else None
        self.amp = self.amp_dtype is not None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)
        self.step = 0  # iterations done, i of Eq. 10
        self.epoch = 0  # epochs done
        self.cost = 0  # the sum of the T of the epochs done (snn.fidelity)
        self.first_grad: Tensor | None = None  # dL/dW1 at the last iteration of the last epoch (Fig. 2)
        self.layer_grad_norms: dict[str, float] = {}  # mean over the last epoch, per layer
        self._check_each_step = self.device.type == "cpu"  # see train_epoch
        self._graph: CapturedStep | None = None
        self.guard = FiringGuard(cfg.stop.silent_rate, cfg.stop.saturated_rate, cfg.stop.patience)
        if cfg.cuda_graphs:
            if self.device.type != "cuda":
                raise ValueError(f"cuda_graphs: needs a CUDA device, got {self.device}")
            if self.scaler.is_enabled():
                raise ValueError("cuda_graphs: this GPU has no bfloat16, and float16 autocast scales its gradients, "
                                 "which a captured step cannot; set amp: false or cuda_graphs: false")
            self._graph = CapturedStep(self.model, self.optimizer, cfg.batch_size, self._forward_loss)

    # -- T, and its growth as a fidelity (snn.fidelity) ----------------------------------------
    def timesteps_of(self, epoch: int) -> int:
        """T of epoch ``epoch`` (1-based): ``cfg.timesteps``, or its stage of ``cfg.fidelity``."""
        if self.cfg.fidelity is None:
            return self.cfg.timesteps
        return fidelity.epoch_timesteps(self.cfg.fidelity.timesteps, epoch)[-1]

    def _loaders(self, timesteps: int) -> tuple[DataLoader, DataLoader]:
        cfg = self.cfg
        return snn_data.loaders(cfg.dataset, cfg.data_root, cfg.batch_size, timesteps,
                                data_workers(cfg.workers, self.device), download=cfg.download, seed=cfg.seed,
                                prepared=self.data)

    def _use_timesteps(self, timesteps: int) -> None:
        """Train and evaluate at T = ``timesteps`` from now on, continuing from the weights as they are.

        The model repeats a static image over the new T; event data are binned into that many
        frames (new loaders, the shuffling generator's state carried over, so the batches are
        those the old loader would have drawn); a captured step is captured again at the new
        shapes. The LIF state starts at zero in every forward pass anyway. The optimizer's state
        and the BatchNorm running statistics are kept: BN normalises each batch over T·B in
        training, and its running statistics, which only evaluation reads, move by the BN
        momentum (0.1) at every step of the first epoch at the new T, from the old T's values,
        closer to the new ones than a reset's 0 and 1 (docs/decisions.md: the measurement).
        """
        if timesteps == self.model.timesteps:
            return
        self.model.timesteps = timesteps
        if self.info.kind == "frames":
            generator = self.train_loader.generator.get_state()
            self.train_loader, self.test_loader = self._loaders(timesteps)
            self.train_loader.generator.set_state(generator)
        if self._graph is not None:
            self._graph = CapturedStep(self.model, self.optimizer, self.cfg.batch_size, self._forward_loss)

    # -- one epoch ---------------------------------------------------------------------------
    def _lambda(self) -> float:
        if not self.model.branch_stages:  # no shortcut head: λ weighs nothing (Eq. 10), and is reported as 0
            return 0.0
        return schedules.balance(self.cfg.schedule, self.cfg.lambda0, min(self.step, self.total_steps),
                                 self.total_steps)

    def _inputs(self, x: Tensor) -> Tensor:
        x = x.to(self.device, non_blocking=True)
        if x.dim() == 5:  # frames: [B, T, C, H, W] -> [T, B, C, H, W]
            return x.transpose(0, 1)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def train_epoch(self) -> dict[str, float]:
        """Train one epoch (Algorithm 1, lines 1-9) and return its training metrics.

        The step's values (loss, correct predictions, per-layer gradient norms) stay on the
        device until the epoch ends: reading one back makes the host wait for the GPU, and a
        GPU step at small batches is bound by how fast the host launches its kernels. A
        non-finite loss therefore stops a GPU trial when its epoch ends (naming the iteration
        where it happened); a CPU trial, where reading a value costs nothing, stops at once.
        """
        self.model.train()
        sizes: list[int] = []
        step_losses: list[Tensor] = []
        step_norms: dict[tuple[str, ...], list[Tensor]] = {}
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        stem = diagnostics.first_conv(self.model)
        first_step = self.step
        lam = self._lambda()
        n_checks, steps = self.cfg.stop.checks_per_epoch, self.steps_per_epoch  # the guard's checks, spread evenly
        checked = 0  # losses already checked to be finite
        progress = self.progress
        if progress is not None:
            progress("train", 0, steps)
        for b, (x, y) in enumerate(self.train_loader):
            if b >= self.steps_per_epoch:
                break
            x, y = self._inputs(x), y.to(self.device, non_blocking=True)
            lam = self._lambda()  # Algorithm 1, line 4
            check = self.guard.active and (b + 1) * n_checks // steps > b * n_checks // steps
            with diagnostics.ActivityMonitor(self.model) if check else contextlib.nullcontext() as monitor:
                if self._graph is not None and self._graph.takes(x, y) and not check:  # a replay has no hooks
                    loss, hits, names, norms = self._graph.replay(x, y, lam)
                    self.optimizer.step()
                elif self._graph is not None:
                    with self._graph.eager(y):
                        loss, hits, names, norms = self._eager_step(x, y, lam)
                else:
                    loss, hits, names, norms = self._eager_step(x, y, lam)
            step_norms.setdefault(names, []).append(norms)
            self.lr_schedule.step()
            self.step += 1
            sizes.append(y.shape[0])
            step_losses.append(loss.detach())
            correct += hits
            if check:  # this reads values back anyway: a loss gone non-finite is named first, as divergence
                for i, v in enumerate(torch.stack(step_losses[checked:]).float().tolist(), start=checked):
                    if not math.isfinite(v):
                        raise self._diverged(v, first_step + i)
                checked = len(step_losses)
                if (verdict := self.guard.update(monitor.firing_rates())) is not None:
                    raise TrainingStopped(verdict, epoch=self.epoch + 1, step=self.step - 1,
                                          epochs_done=self.epoch + (b + 1) / self.steps_per_epoch)
            if progress is not None:
                progress("train", b + 1, steps)
        loss_values = torch.stack(step_losses).float().tolist() if step_losses else []  # the one wait per epoch
        for i, v in enumerate(loss_values):
            if not math.isfinite(v):
                raise self._diverged(v, first_step + i)
        seen = sum(sizes)
        if stem.weight.grad is not None:
            self.first_grad = stem.weight.grad.detach().float().cpu().clone()
        steps = max(1, len(sizes))
        norm_sums: dict[str, float] = {}
        for names, values in step_norms.items():
            for k, v in zip(names, torch.stack(values).double().sum(0).tolist()):
                norm_sums[k] = norm_sums.get(k, 0.0) + v
        self.layer_grad_norms = {k: v / steps for k, v in norm_sums.items()}
        loss_sum = sum(v * n for v, n in zip(loss_values, sizes))
        metrics = {TRAIN_LOSS: loss_sum / max(seen, 1), TRAIN_ACC: int(correct) / max(seen, 1), LAMBDA: lam}
        stem_name = next(n for n, m in self.model.named_modules() if m is stem) + ".weight"
        metrics[GRAD_NORM_FIRST] = self.layer_grad_norms.get(stem_name, 0.0)
        by_stage: dict[str, list[float]] = {}
        for k, v in self.layer_grad_norms.items():
            stage = diagnostics.stage_of(k)
            if stage is not None:
                by_stage.setdefault(stage, []).append(v)
        metrics.update({grad_norm_metric(s): float(np.mean(v)) for s, v in by_stage.items()})
        metrics["_images"] = seen
        return metrics

    def _eager_step(self, x: Tensor, y: Tensor, lam: float) -> tuple[Tensor, Tensor, tuple[str, ...], Tensor]:
        """One iteration of Algorithm 1 (lines 3-8); returns (loss, correct, layer names, their gradient norms)."""
        loss, out = self._forward_loss(x, y, lam)
        if self._check_each_step and not torch.isfinite(loss):
            raise self._diverged(loss.item(), self.step)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        names, norms = diagnostics.grad_norm_vector(self.model)
        hits = (out.main.argmax(1) == y).sum()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss, hits, names, norms

    def _forward_loss(self, x: Tensor, y: Tensor, lam: float | Tensor, *,
                      cache: bool = True) -> tuple[Tensor, models.ModelOutput]:
        """Forward pass and the loss of Eq. 10 (autocast's weight cache off inside a CUDA graph)."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp, cache_enabled=cache):
            out = self.model(x)
            return losses.shortcut_loss(out, y, lam, self.cfg.loss_mode), out

    def _diverged(self, loss: float, step: int) -> TrainingDiverged:
        return TrainingDiverged(f"training loss became {loss} at iteration {step} (epoch {self.epoch + 1}); "
                                f"lower lr (now {self.cfg.lr})", epoch=self.epoch + 1, step=step)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Test accuracy of the main branch (Algorithm 1, inference) and of each shortcut head."""
        self.model.eval()
        seen = 0
        # summed on the device and read once at the end, as in train_epoch
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros(1 + len(self.model.branch_stages), dtype=torch.int64, device=self.device)  # main, branches
        progress, total = self.progress, len(self.test_loader)
        if progress is not None:
            progress("test", 0, total)
        with diagnostics.ActivityMonitor(self.model) as mon:
            for b, (x, y) in enumerate(self.test_loader):
                x, y = self._inputs(x), y.to(self.device, non_blocking=True)
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                    out = self.model(x)
                loss_sum += nn.functional.cross_entropy(out.main.float(), y, reduction="sum")
                logits = torch.stack([out.main, *out.branches])  # [1 + branches, B, K]
                correct += (logits.argmax(2) == y).sum(1)
                seen += y.shape[0]
                if progress is not None:
                    progress("test", b + 1, total)
        hits = correct.tolist()
        metrics = {TEST_ACC: hits[0] / max(seen, 1), TEST_LOSS: float(loss_sum) / max(seen, 1),
                   FIRING_RATE: mon.mean_firing_rate(), SYNOPS: mon.synops_per_image(), MACS: mon.macs_per_image(),
                   ANN_MACS: mon.dense_macs_per_image()}
        # the energy of one inference of the stripped network (snn.energy), and the non-spiking one's
        costs = self.cfg.energy.costs()
        metrics[ENERGY] = mon.energy_uj(costs)
        metrics[ENERGY_RATIO] = metrics[ENERGY] / mon.dense_energy_uj(costs) if mon.dense_macs_per_image() else math.nan
        metrics.update({firing_rate_metric(k): v for k, v in mon.firing_rates().items()})
        for stage, c in zip(self.model.branch_stages, hits[1:]):
            metrics[branch_acc_metric(stage)] = c / max(seen, 1)
        return metrics

    def run_epoch(self) -> dict[str, float]:
        """Train one epoch, evaluate, and return all of the epoch's metrics.

        With a fidelity the epoch first raises T where the last one reached its rung.
        """
        timesteps = self.timesteps_of(self.epoch + 1)
        if timesteps != self.model.timesteps:
            log.info("epoch %d: T raised from %d to %d (cost %d)", self.epoch + 1, self.model.timesteps, timesteps,
                     self.cost)
            self._use_timesteps(timesteps)
        t0 = time.perf_counter()
        train = self.train_epoch()
        t_train = time.perf_counter() - t0
        metrics = {**train, **self.evaluate()}
        images = metrics.pop("_images")
        self.epoch += 1
        self.cost += timesteps
        metrics[EPOCH] = self.epoch
        metrics[TIMESTEPS], metrics[COST] = timesteps, self.cost
        metrics[EPOCH_TIME] = time.perf_counter() - t0
        metrics[IMAGES_PER_S] = images / t_train if t_train > 0 else 0.0
        return metrics

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs; tensors and plain Python values only."""
        return {
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "timesteps": self.model.timesteps,  # the last epoch's T
            "rng": rng_state(self.train_loader.generator),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the next epoch runs as if training had not stopped."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        if self.epoch:
            timesteps = self.timesteps_of(self.epoch)
            if int(state.get("timesteps", timesteps)) != timesteps:
                raise ValueError(f"state: epoch {self.epoch} trained at T={state['timesteps']}, where this "
                                 f"config trains at T={timesteps}")
            self._use_timesteps(timesteps)
        self.cost = sum(self.timesteps_of(e) for e in range(1, self.epoch + 1))
        set_rng_state(state["rng"], self.train_loader.generator)  # the loader _use_timesteps may have made


def fit(cfg: TrainConfig, report: Callable[[dict[str, float], Trainer], None] | None = None, *,
        state: dict[str, Any] | None = None, data: snn_data.Prepared | None = None,
        progress: Callable[[str, int, int], None] | None = None,
        start: Callable[[Trainer], None] | None = None) -> dict[str, float]:
    """Train for ``cfg.epochs`` epochs, calling ``report`` after each one.

    Args:
        cfg: The trial's configuration.
        report: Called as ``report(metrics, trainer)`` after every epoch; the trainer's
            :meth:`Trainer.state_dict` is what a checkpoint should hold.
        state: A state dict to resume from; training continues after its epoch.
        data: A user's data, prepared (see :class:`Trainer`).
        progress: Called per batch while an epoch runs (see :class:`Trainer`); None: no calls.
        start: Called as ``start(trainer)`` once, before the first epoch (after a resume's
            state is loaded): to say what is about to be trained.

    Returns:
        The last epoch's metrics (empty if there was nothing left to train).

    Raises:
        TrainingDiverged: The loss became NaN or infinite.
        TrainingStopped: A stage stayed silent or saturated (``cfg.stop``).
    """
    trainer = Trainer(cfg, data, progress=progress)
    if state is not None:
        trainer.load_state_dict(state)
        log.info("resumed at epoch %d (iteration %d)", trainer.epoch, trainer.step)
    if start is not None:
        start(trainer)
    metrics: dict[str, float] = {}
    while trainer.epoch < cfg.epochs:
        metrics = trainer.run_epoch()
        if report is not None:
            report(metrics, trainer)
    return metrics
