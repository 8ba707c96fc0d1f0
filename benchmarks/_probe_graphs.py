"""GPU probe: Trainer.train_epoch with and without `cuda_graphs`, side by side.

ResNet-18 (CIFAR stem), T = 2, batch 64, 32x32 single-channel random images (the digits
Trainer with its loader replaced by fixed batches on the host). Run on a CUDA machine:
`python -m benchmarks._probe_graphs`, then `python -m pytest tests/snn/test_training.py -k cuda`.
What it measured is quoted in docs/performance.md.
"""
from __future__ import annotations

import torch

from benchmarks._shortcuts import trainer_steps


def main(batches: int = 40, rounds: int = 5) -> None:
    med = trainer_steps({"eager": {"cuda_graphs": False}, "graphs": {"cuda_graphs": True}}, "resnet18", 64,
                        batches, rounds)
    print(f"{torch.cuda.get_device_name()}: train_epoch per step, eager {med['eager'] * 1e3:.2f} ms, "
          f"cuda_graphs {med['graphs'] * 1e3:.2f} ms, speed-up {med['eager'] / med['graphs']:.2f}x")


if __name__ == "__main__":
    main()
