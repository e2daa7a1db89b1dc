"""Decoy-Digits: the Decoy-MNIST construction of Right for the Right Reasons, on offline digits.

Ross et al. (2017) put a 4x4 swatch in a random corner of each MNIST image; in training its
grey level encodes the class (``255 - 25 * y``), at test time it is random. A classifier that
reads the swatch fails at test time; RRR, told that the swatch is the wrong reason, does not.
Here the digits are scikit-learn's (8x8, upsampled 2x) centred on a 24x24 canvas, so the four
4x4 corners never touch the digit. The mask is 1 everywhere except on the swatch: the swatch is
what the model must not use, which is what the RRR annotation marks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["DecoyDigits", "generate"]

CANVAS = 24
SWATCH = 4
_CORNERS = ((0, 0), (0, CANVAS - SWATCH), (CANVAS - SWATCH, 0), (CANVAS - SWATCH, CANVAS - SWATCH))


@dataclass(frozen=True)
class DecoyDigits:
    """Images (N, 1, 24, 24) in [0, 1], masks (N, 1, 24, 24) with 0 on the swatch, labels (N,)."""

    images: Tensor
    masks: Tensor
    labels: Tensor


def generate(split: str, *, seed: int = 0, train_fraction: float = 0.7) -> DecoyDigits:
    """The ``"train"`` split (class-coded swatches) or the ``"test"`` split (random swatches).

    The two splits hold disjoint digits of ``sklearn.datasets.load_digits``, drawn with a fixed
    stratified split of ``train_fraction``; corners and test grey levels come from ``seed``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    digits = load_digits()
    index = np.arange(len(digits.target))
    train_idx, test_idx = train_test_split(index, train_size=train_fraction, stratify=digits.target,
                                           random_state=0)
    chosen = train_idx if split == "train" else test_idx
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0 if split == "train" else 1,)))
    labels = digits.target[chosen].astype(np.int64)
    n = len(chosen)
    images = np.zeros((n, CANVAS, CANVAS), dtype=np.float32)
    offset = (CANVAS - 16) // 2
    images[:, offset:offset + 16, offset:offset + 16] = np.kron(digits.images[chosen] / 16.0, np.ones((2, 2)))
    masks = np.ones((n, CANVAS, CANVAS), dtype=np.float32)
    corners = rng.integers(len(_CORNERS), size=n)
    grey = (255 - 25 * labels) / 255.0 if split == "train" else rng.integers(0, 256, size=n) / 255.0
    for i in range(n):
        r, c = _CORNERS[corners[i]]
        images[i, r:r + SWATCH, c:c + SWATCH] = grey[i]
        masks[i, r:r + SWATCH, c:c + SWATCH] = 0.0
    return DecoyDigits(torch.from_numpy(images)[:, None], torch.from_numpy(masks)[:, None], torch.from_numpy(labels))
