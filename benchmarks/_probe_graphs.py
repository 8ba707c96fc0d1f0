"""GPU probe for this branch: Trainer.train_epoch with and without `cuda_graphs`, side by side.

ResNet-18 (CIFAR stem), T = 2, batch 64, 32x32 single-channel random images (the digits
Trainer with its loader replaced by fixed batches on the host). Run on a CUDA machine:
`python -m benchmarks._probe_graphs`, then `python -m pytest tests/snn/test_training.py -k cuda`.
"""
from __future__ import annotations

import statistics
import time

import torch

from snn.training import Trainer, TrainConfig


def main(batches: int = 40, rounds: int = 5) -> None:
    torch.manual_seed(0)
    data = [(torch.randn(64, 1, 32, 32).pin_memory(), torch.randint(0, 10, (64,)).pin_memory()) for _ in range(batches)]
    trainers = {}
    for graphs in (False, True):
        t = Trainer(TrainConfig(dataset="digits", arch="resnet18", batch_size=64, epochs=100, device="cuda",
                                cuda_graphs=graphs, seed=0))
        t.train_loader, t.steps_per_epoch = data, batches
        t.train_epoch()  # warm-up: cuDNN autotuning, Triton compiling, the capture
        trainers[graphs] = t
    times = {g: [] for g in trainers}
    for _ in range(rounds):
        for g, t in trainers.items():
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            t.train_epoch()
            torch.cuda.synchronize()
            times[g].append((time.perf_counter() - t0) / batches)
    eager, graphed = (statistics.median(times[g]) for g in (False, True))
    print(f"{torch.cuda.get_device_name()}: train_epoch per step, eager {eager * 1e3:.2f} ms, "
          f"cuda_graphs {graphed * 1e3:.2f} ms, speed-up {eager / graphed:.2f}x")


if __name__ == "__main__":
    main()
