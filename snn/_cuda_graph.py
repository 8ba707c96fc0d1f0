"""A training step captured once as a CUDA graph and replayed (``cuda_graphs: true``).

A GPU step at small batches waits on the host launching its kernels one by one; replayed,
the whole step is one launch (docs/performance.md). :class:`CapturedStep` holds the graph
and the memory it reads and writes; :class:`snn.training.Trainer` decides which batches it
replays.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from snn import diagnostics, models

__all__ = ["CapturedStep"]

ForwardLoss = Callable[..., tuple[Tensor, models.ModelOutput]]  # (x, y, lam, *, cache) -> (loss, output)


class CapturedStep:
    """Forward and backward of a full training batch, captured once as a CUDA graph and replayed.

    The graph holds the forward, the loss of Eq. 10 with λ read from a device scalar, the
    backward, the per-layer gradient norms and the correct count; the fused AdamW step and
    the schedules stay outside it. The gradients live in the graph's memory: the optimizer
    reads them there, and an eager step (the first steps, which let cuDNN and Triton pick and
    compile their kernels, and a last partial batch) leaves its gradients there too.

    Args:
        model: The network being trained, on a CUDA device.
        optimizer: Its optimizer (its gradients are set to None before the capture).
        batch_size: The size of a full batch: only those are replayed.
        forward_loss: ``forward_loss(x, y, lam, cache=False)`` returns the loss of Eq. 10
            and the model's output (autocast's weight cache off inside a graph).
    """

    WARMUP = 2  # eager full batches before the capture

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, batch_size: int,
                 forward_loss: ForwardLoss) -> None:
        self.model, self.optimizer, self.batch_size, self.forward_loss = model, optimizer, batch_size, forward_loss
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.graph: torch.cuda.CUDAGraph | None = None
        self.stream = torch.cuda.Stream(next(model.parameters()).device)  # warm-up and capture
        self.eager_steps = 0

    def takes(self, x: Tensor, y: Tensor) -> bool:
        """Whether this batch is replayed: a full batch, once the warm-up steps are done."""
        if y.shape[0] != self.batch_size:
            return False
        if self.graph is None:
            return self.eager_steps >= self.WARMUP
        return x.shape == self.x.shape

    def replay(self, x: Tensor, y: Tensor, lam: float) -> tuple[Tensor, Tensor, tuple[str, ...], Tensor]:
        """Run this batch's forward and backward; returns copies of (loss, correct, names, norms)."""
        if self.graph is None:
            self._capture(x, y, lam)
        else:
            self.x.copy_(x)
            self.y.copy_(y)
            self.lam.fill_(lam)
        self.graph.replay()
        return self.loss.clone(), self.hits.clone(), self.names, self.norms.clone()

    def _capture(self, x: Tensor, y: Tensor, lam: float) -> None:
        self.x, self.y = x.clone(), y.clone()
        self.lam = torch.tensor(float(lam), device=x.device)
        self.optimizer.zero_grad(set_to_none=True)  # backward in the graph allocates the gradients it writes
        graph = torch.cuda.CUDAGraph()
        # records the kernels, the replay after it runs them; thread_local: the DataLoader's
        # pin-memory thread may call CUDA meanwhile
        with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
            loss, out = self.forward_loss(self.x, self.y, self.lam, cache=False)
            loss.backward()
            self.names, self.norms = diagnostics.grad_norm_vector(self.model)
            self.hits = (out.main.argmax(1) == self.y).sum()
            self.loss = loss.detach()
        self.graph = graph
        self.grads = [p.grad for p in self.params]

    @contextlib.contextmanager
    def eager(self, y: Tensor) -> Iterator[None]:
        """Around an eager step: a warm-up step runs on the capture's side stream (as torch's
        CUDA-graph recipe asks), a later one leaves its gradients where the graph's are."""
        if self.graph is None:
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                yield
            torch.cuda.current_stream().wait_stream(self.stream)
            self.eager_steps += y.shape[0] == self.batch_size
            return
        yield
        for p, g in zip(self.params, self.grads):
            if g is not None and p.grad is not None:
                g.copy_(p.grad)
            p.grad = g
