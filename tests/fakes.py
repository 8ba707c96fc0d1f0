"""Small fake datasets in the real on-disk formats, for tests (no network here)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def make_fake_cifar(root: Path, name: str = "cifar10", n_train: int = 60, n_test: int = 20, seed: int = 0) -> Path:
    """Write CIFAR-10 (5 data batches + test batch + batches.meta) or CIFAR-100 (train, test, meta) pickles."""
    rng = np.random.RandomState(seed)
    classes = 10 if name == "cifar10" else 100

    def batch(n: int, label_key: str) -> dict:
        return {"data": rng.randint(0, 256, (n, 3072), dtype=np.uint8),
                label_key: [int(v) for v in rng.randint(0, classes, n)]}

    if name == "cifar10":
        d = root / "cifar-10-batches-py"
        d.mkdir(parents=True, exist_ok=True)
        per = n_train // 5
        for i in range(1, 6):
            (d / f"data_batch_{i}").write_bytes(pickle.dumps(batch(per, "labels")))
        (d / "test_batch").write_bytes(pickle.dumps(batch(n_test, "labels")))
        (d / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    else:
        d = root / "cifar-100-python"
        d.mkdir(parents=True, exist_ok=True)
        (d / "train").write_bytes(pickle.dumps(batch(n_train, "fine_labels")))
        (d / "test").write_bytes(pickle.dumps(batch(n_test, "fine_labels")))
        (d / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    return root


def accept_fake_cifar(monkeypatch) -> None:
    """torchvision checks the real files' md5 sums; the fakes cannot match them."""
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)


def accept_fake_cifar_in_worker() -> None:
    """The same as :func:`accept_fake_cifar`, for Ray worker processes (no monkeypatch there)."""
    import torchvision.datasets.cifar as cifar

    cifar.check_integrity = lambda *a, **k: True
    cifar.CIFAR10._check_integrity = lambda self: True
