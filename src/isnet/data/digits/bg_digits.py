"""BG-Digits: a procedural, offline background-bias benchmark.

Real handwritten digits (scikit-learn ``load_digits``, 8x8, upsampled 2x to 16x16) are
placed on a 32x32 RGB canvas whose background is a dimmed random crop of a scikit-image
sample picture plus Gaussian noise: inside the central 24x24 area (``placement="centre"``)
or anywhere, the border ring included (``"anywhere"``). The bias *cue* encodes the class in
the background: a white 4x4 patch in the border ring at one of 10 class positions
(``cue="patch"``, ``PATCH_POSITIONS``; the digit box hides the part of it that it covers),
or a class-coded colour tint of the whole background (``cue="tint"``, ``TINTS``), a diffuse
cue with no single place to look at.

Digits for train / val / test come from disjoint, stratified pools of ``load_digits``
(:func:`digit_pools`); within a pool digits are drawn with replacement, each draw with a
fresh position and background. Everything is a deterministic function of the seed.
Training masks can be degraded on purpose (:mod:`isnet.data.digits.mask_quality`) to study what imperfect
masks cost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ...locks import holding_lock
from ..layout import check_empty_output, split_plan, write_split
from .backgrounds import CANVAS, TEXTURES, TINTS, backgrounds
from .mask_quality import degrade_masks

__all__ = [
    "BGDigits",
    "BIASES",
    "CUES",
    "PATCH_POSITIONS",
    "PATCH_SIZE",
    "PLACEMENTS",
    "digit_pools",
    "generate",
    "to_tensors",
    "write_dataset",
]

DIGIT = 16
"""Side of the upsampled digit box."""
PATCH_SIZE = 4
"""Side of the class-coded bias patch."""
PATCH_POSITIONS: tuple[tuple[int, int], ...] = (
    (0, 0), (0, 10), (0, 18), (0, 28), (14, 28),
    (28, 28), (28, 18), (28, 10), (28, 0), (14, 0),
)  # fmt: skip
"""(row, col) of the top-left corner of class k's patch on the 32x32 canvas (clockwise)."""
BIASES = ("biased", "unbiased", "deceiving", "foreground", "background")
"""Bias modes: the class's cue / no cue / another class's cue / digit on a plain black
background / background and class cue without the digit."""
PLACEMENTS = ("centre", "anywhere")
"""Where the digit box may lie: inside the central 24x24 area, or anywhere on the canvas."""
CUES = ("patch", "tint")
"""The class-coded bias: a white patch at a class position, or a colour tint of the background."""
SPLITS = ("train", "val", "test")
POOL_FRACTIONS = (0.6, 0.2, 0.2)
"""Share of each class's ``load_digits`` images in the train / val / test pools."""

_N_CLASSES = 10
_MARGIN = PATCH_SIZE  # placement="centre": the digit stays inside [_MARGIN, CANVAS - _MARGIN)
_DIGIT_COLOUR = (0.7, 1.0)  # per-channel range of the digit colour


@dataclass(frozen=True)
class BGDigits:
    """An in-memory BG-Digits split.

    Attributes
    ----------
    images
        uint8 (N, H, W, 3).
    masks
        bool (N, H, W), foreground (digit box or dilated strokes).
    labels
        int64 (N,), the digit class (the cue's class for the ``background`` mode).
    patch_masks
        bool (N, H, W), the inserted patch pixels (all false without a patch, and with a tint).
    patch_classes
        int64 (N,), the class whose cue (patch or tint) was inserted, -1 for none.
    digit_indices
        int64 (N,), index into ``sklearn.datasets.load_digits`` of each drawn digit.
    """

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    patch_masks: np.ndarray
    patch_classes: np.ndarray
    digit_indices: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32) / 16.0, bunch.target.astype(np.int64)


def digit_pools(seed: int) -> dict[str, np.ndarray]:
    """Split ``load_digits`` into disjoint, class-stratified train / val / test index pools.

    Parameters
    ----------
    seed
        Non-negative seed; the same seed always gives the same pools.

    Returns
    -------
    dict
        ``{"train": idx, "val": idx, "test": idx}``, sorted int64 index arrays.
    """
    _, targets = _load_digits()
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    cuts = np.cumsum(POOL_FRACTIONS)[:-1]
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    for cls in range(_N_CLASSES):
        members = rng.permutation(np.flatnonzero(targets == cls))
        bounds = np.round(cuts * len(members)).astype(int)
        for name, chunk in zip(SPLITS, np.split(members, bounds)):
            parts[name].append(chunk)
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def _stroke_masks(alphas: np.ndarray) -> np.ndarray:
    """Digit strokes (nonzero pixels) dilated by one pixel, clipped to the digit box."""
    from scipy.ndimage import binary_dilation

    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # dilate within each image only
    return binary_dilation(alphas > 0, structure=structure)


def generate(
    n: int,
    *,
    split: str,
    seed: int,
    bias: str = "biased",
    mask: str = "box",
    image_size: int = CANVAS,
    placement: str = "centre",
    cue: str = "patch",
) -> BGDigits:
    """Generate ``n`` BG-Digits images in memory.

    Parameters
    ----------
    n
        Number of images; classes are balanced (``n // 10`` or one more each).
    split
        Digit pool: ``"train"``, ``"val"`` or ``"test"`` (disjoint, see :func:`digit_pools`).
    seed
        Non-negative seed; pools and every random draw derive from it. Each
        ``(split, bias)`` pair uses its own random stream.
    bias
        ``"biased"`` (cue of the true class), ``"unbiased"`` (no cue), ``"deceiving"``
        (cue of a random other class), ``"foreground"`` (digit on plain black, no cue)
        or ``"background"`` (no digit; label = the cue's class; the mask marks where the
        digit would have been).
    mask
        ``"box"`` (the digit's 16x16 box) or ``"strokes"`` (the digit's strokes dilated by
        one pixel).
    image_size
        Output side, a multiple of 32; larger sizes repeat pixels (nearest neighbour), so
        masks and patches stay exact.
    placement
        ``"centre"`` (the digit box inside the central 24x24 area, clear of every patch) or
        ``"anywhere"`` (anywhere on the canvas; the box hides what it covers of a patch).
    cue
        ``"patch"`` (white 4x4 patch at the class's position) or ``"tint"`` (the background,
        everything outside the mask, multiplied by the class's :data:`TINTS` factors).

    Returns
    -------
    BGDigits
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if bias not in BIASES:
        raise ValueError(f"bias must be one of {BIASES}, got {bias!r}")
    if mask not in ("box", "strokes"):
        raise ValueError(f"mask must be 'box' or 'strokes', got {mask!r}")
    if placement not in PLACEMENTS or cue not in CUES:
        raise ValueError(f"placement must be one of {PLACEMENTS} and cue one of {CUES}, got {placement!r}, {cue!r}")
    if image_size < CANVAS or image_size % CANVAS:
        raise ValueError(f"image_size must be a positive multiple of {CANVAS}, got {image_size}")
    if n < 0 or seed < 0:
        raise ValueError(f"n and seed must be non-negative, got n={n}, seed={seed}")

    digits, targets = _load_digits()
    pool = digit_pools(seed)[split]
    rng = np.random.default_rng(
        np.random.SeedSequence(seed, spawn_key=(1, SPLITS.index(split), BIASES.index(bias)))
    )
    labels = rng.permutation(np.arange(n, dtype=np.int64) % _N_CLASSES)
    chosen = np.empty(n, dtype=np.int64)
    for cls in range(_N_CLASSES):
        slots = np.flatnonzero(labels == cls)
        chosen[slots] = rng.choice(pool[targets[pool] == cls], size=len(slots))
    margin = _MARGIN if placement == "centre" else 0
    offsets = rng.integers(margin, CANVAS - margin - DIGIT + 1, size=(n, 2))
    colours = rng.uniform(*_DIGIT_COLOUR, size=(n, 1, 1, 3)).astype(np.float32)
    if bias == "deceiving":
        patch_classes = (labels + rng.integers(1, _N_CLASSES, size=n)) % _N_CLASSES
    elif bias in ("biased", "background"):
        patch_classes = labels.copy()
    else:
        patch_classes = np.full(n, -1, dtype=np.int64)

    if bias == "foreground":
        canvas = np.zeros((n, CANVAS, CANVAS, 3), dtype=np.float32)
    else:
        canvas = backgrounds(rng, n)
    alphas = np.kron(digits[chosen], np.ones((1, 2, 2), dtype=np.float32))  # (n, 16, 16)
    inner = _stroke_masks(alphas) if mask == "strokes" else np.ones_like(alphas, dtype=bool)
    if bias == "background":
        alphas = np.zeros_like(alphas)

    masks = np.zeros((n, CANVAS, CANVAS), dtype=bool)
    patch_masks = np.zeros((n, CANVAS, CANVAS), dtype=bool)
    for i in range(n):
        r, c = offsets[i]
        box = (slice(r, r + DIGIT), slice(c, c + DIGIT))
        masks[i][box] = inner[i]
        if patch_classes[i] >= 0 and cue == "tint":
            canvas[i][~masks[i]] = np.clip(canvas[i][~masks[i]] * TINTS[patch_classes[i]], 0.0, 1.0)
        a = alphas[i][..., None]
        canvas[i][box] = canvas[i][box] * (1.0 - a) + a * colours[i]
        if patch_classes[i] >= 0 and cue == "patch":
            pr, pc = PATCH_POSITIONS[patch_classes[i]]
            patch_masks[i, pr : pr + PATCH_SIZE, pc : pc + PATCH_SIZE] = True
            patch_masks[i][box] = False  # the digit box lies in front of the patch
    canvas[patch_masks] = 1.0
    images = np.round(canvas * 255.0).astype(np.uint8)

    k = image_size // CANVAS
    if k > 1:
        images, masks, patch_masks = (
            np.repeat(np.repeat(a, k, axis=1), k, axis=2) for a in (images, masks, patch_masks)
        )
    return BGDigits(images, masks, labels, patch_masks, patch_classes, chosen)


def to_tensors(d: BGDigits) -> tuple[Tensor, Tensor, Tensor]:
    """Convert to training tensors.

    Returns
    -------
    tuple of Tensor
        Images float32 (N, 3, H, W) in [0, 1], masks float32 (N, 1, H, W), labels int64 (N,).
    """
    images = torch.from_numpy(d.images).permute(0, 3, 1, 2).float().div_(255.0)
    masks = torch.from_numpy(d.masks).float()[:, None]
    return images.contiguous(), masks, torch.from_numpy(d.labels.copy())


@holding_lock("isnet data bg-digits")  # one writer per folder
def write_dataset(
    out: str | Path,
    *,
    seed: int = 0,
    n_train: int = 3300,
    n_val: int = 500,
    n_test: int = 500,
    mask: str = "box",
    image_size: int = CANVAS,
    placement: str = "centre",
    cue: str = "patch",
    train_mask: str = "exact",
    extra_tests: bool = False,
    progress: bool = False,
) -> dict[str, Path]:
    """Write BG-Digits as PNG files in the ``images/`` + ``masks/`` dataset layout.

    Splits: ``train`` and ``val`` (biased), ``test/biased``, ``test/unbiased``,
    ``test/deceiving`` and, with ``extra_tests``, ``test/foreground`` and
    ``test/background``. Each split holds ``images/<class>/NNNNN.png``,
    ``masks/<class>/NNNNN.png`` (0/255) and ``patches/<class>/NNNNN.png`` (the bias patch
    pixels, 0/255). ``OUT/bg-digits.json`` records the parameters. The same arguments give
    byte-identical files.

    Parameters
    ----------
    out
        Output directory; must not exist or be empty.
    seed, mask, image_size, placement, cue
        See :func:`generate`.
    train_mask
        Quality of the training split's masks (:func:`degrade_masks`); every other split
        keeps the exact masks.
    n_train, n_val, n_test
        Images in the training split, the validation split and each test split.
    extra_tests
        Also write the ``foreground`` and ``background`` test splits.
    progress
        Print one line per written split to stderr.

    Returns
    -------
    dict
        Split name (``"train"``, ``"val"``, ``"test/biased"``, ...) -> its directory.
    """
    out = check_empty_output(out)
    tests = BIASES if extra_tests else BIASES[:3]
    plan = split_plan(n_train, n_val, n_test, tests)

    paths: dict[str, Path] = {}
    for name, pool, bias, count in plan:
        d = generate(count, split=pool, seed=seed, bias=bias, mask=mask, image_size=image_size,
                     placement=placement, cue=cue)
        masks = d.masks
        if name == "train":
            masks = degrade_masks(masks, train_mask, seed=seed, scale=image_size // CANVAS)
        root = out / name
        write_split(root, [str(c) for c in range(_N_CLASSES)], d.labels, d.images, masks,
                    {"patches": d.patch_masks}, progress="bg-digits" if progress else None)
        paths[name] = root

    meta = {
        "name": "BG-Digits",
        "generator": "isnet.data.digits.bg_digits.write_dataset",
        "seed": seed,
        "image_size": image_size,
        "mask": mask,
        "placement": placement,
        "cue": cue,
        "train_mask": train_mask,
        "classes": [str(c) for c in range(_N_CLASSES)],
        "splits": {
            name: {"path": name, "digit_pool": pool, "bias": bias, "n": count}
            for name, pool, bias, count in plan
        },
        "digit_source": "sklearn.datasets.load_digits (8x8, upsampled 2x)",
        "pool_fractions": dict(zip(SPLITS, POOL_FRACTIONS)),
        "canvas": CANVAS,
        "patch_size": PATCH_SIZE,
        "patch_positions": {str(k): list(pos) for k, pos in enumerate(PATCH_POSITIONS)},
        "tints": {str(k): [round(float(v), 4) for v in tint] for k, tint in enumerate(TINTS)},
        "textures": [f"skimage.data.{t}" for t in TEXTURES],
    }
    (out / "bg-digits.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return paths
