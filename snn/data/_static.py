"""Static image datasets: CIFAR-10/100, ImageNet (torchvision) and scikit-learn's digits.

Preprocessing follows section 5 of Guo et al. (NeurIPS 2024): normalisation to zero mean
and unit variance with the dataset's channel statistics; on CIFAR random crop with
4-pixel padding, horizontal flip and AutoAugment (CIFAR-10 policy) for training; on
ImageNet random resized crop + flip for training and resize 256 + centre crop 224 for
testing. Samples are (float32 tensor [C, H, W], int label).
"""

from __future__ import annotations

import contextlib
import functools
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from snn.data._errors import cleanup_on_failure, not_found, write_whole

__all__ = ["build_cifar", "build_digits", "build_imagenet"]

# Channel statistics of the training sets.
_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def build_cifar(name: str, root: str, train: bool, download: bool) -> Dataset:
    """CIFAR-10 or CIFAR-100 through torchvision, with the paper's augmentation."""
    from torchvision import datasets, transforms as T

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    mean, std = _STATS[name]
    if train:
        tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(),
                        T.AutoAugment(T.AutoAugmentPolicy.CIFAR10), T.ToTensor(), T.Normalize(mean, std)])
    else:
        tf = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    folder = Path(root) / cls.base_folder
    what = f"the python version of {name.upper()} (folder {cls.base_folder}/ from {cls.filename})"
    if not download:
        if not folder.is_dir():
            raise not_found(name, root, what)
        try:
            return cls(root, train=train, transform=tf, download=False)
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
            raise not_found(name, root, what, e) from None
    try:
        with cleanup_on_failure(root):
            return cls(root, train=train, transform=tf, download=True)
    except Exception as e:
        raise not_found(name, root, what, e) from None


def build_imagenet(root: str, train: bool, download: bool) -> Dataset:
    """ImageNet as torchvision ``ImageFolder`` trees ``root/train`` and ``root/val`` (no download)."""
    from torchvision import datasets, transforms as T

    mean, std = _STATS["imagenet"]
    split = Path(root) / ("train" if train else "val")
    if not split.is_dir() or not any(p.is_dir() for p in split.iterdir()):
        raise _imagenet_missing(root, download)
    if train:
        tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    else:
        tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(mean, std)])
    return datasets.ImageFolder(str(split), transform=tf)


def _imagenet_missing(root: str, download: bool):
    what = "ImageNet as train/<class>/*.JPEG and val/<class>/*.JPEG folders"
    e = not_found("imagenet", root, what)
    if download:  # ImageNet has no public download: say so rather than pretend
        e.args = (e.args[0] + " (ImageNet cannot be downloaded automatically)",)
    return e


_DIGITS_CACHE: dict[bool, TensorDataset] = {}


def build_digits(train: bool) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 real images, no download), 1437/360 stratified split.

    Scaled to [0, 1], then normalised with the training split's mean and std; [1, 8, 8].
    """
    if train not in _DIGITS_CACHE:
        splits = {flag: digits_split(flag) for flag in (True, False)}
        scaled = {flag: x.astype(np.float32) / 16.0 for flag, (x, _) in splits.items()}
        mean, std = float(scaled[True].mean()), float(scaled[True].std())
        for flag, (_, ys) in splits.items():
            _DIGITS_CACHE[flag] = TensorDataset(torch.from_numpy((scaled[flag] - mean) / std).unsqueeze(1),  # [N, 1, 8, 8]
                                                torch.from_numpy(ys).long())
    return _DIGITS_CACHE[train]


def digits_split(train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Raw digits images in [0, 16] ([N, 8, 8]) and labels of one split.

    The split is scikit-learn's ``train_test_split(test_size=0.2, random_state=0)``,
    stratified by label. It is kept in the user's cache folder (``$XDG_CACHE_HOME`` or
    ``~/.cache``, then ``snn-study/``), keyed by scikit-learn's version: a fresh trial
    process reads it there instead of importing scikit-learn and SciPy to split it again.
    """
    split = _digits_split_arrays()
    return (split["xtr"], split["ytr"]) if train else (split["xte"], split["yte"])


@functools.lru_cache(maxsize=1)
def _digits_split_arrays() -> dict[str, np.ndarray]:
    from importlib.metadata import version

    path = _cache_folder() / f"digits-split-sklearn-{version('scikit-learn')}.npz"
    try:
        with np.load(path) as f:
            return {k: f[k] for k in ("xtr", "ytr", "xte", "yte")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # absent, unreadable, cut short: make it again
        pass
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    xtr, xte, ytr, yte = train_test_split(d.images, d.target, test_size=0.2, random_state=0, stratify=d.target)
    split = {"xtr": xtr, "ytr": ytr, "xte": xte, "yte": yte}
    with contextlib.suppress(OSError):  # a read-only home: every process computes the split itself
        write_whole(path, lambda f: np.savez(f, **split))
    return split


def _cache_folder() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "snn-study"
