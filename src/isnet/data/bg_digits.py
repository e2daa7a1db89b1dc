"""BG-Digits: a procedural, offline background-bias benchmark.

Real handwritten digits (scikit-learn ``load_digits``, 8x8, upsampled 2x to 16x16) are
placed at a random position inside the central 24x24 area of a 32x32 RGB canvas whose
background is a dimmed random crop of a scikit-image sample picture plus Gaussian noise.
The bias is a white 4x4 patch in the 4-pixel border ring, at one of 10 positions that
encodes a class (``PATCH_POSITIONS``); it never touches the digit box.

Digits for train / val / test come from disjoint, stratified pools of ``load_digits``
(:func:`digit_pools`); within a pool digits are drawn with replacement, each draw with a
fresh position and background. Everything is a deterministic function of the seed.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = [
    "BGDigits",
    "BIASES",
    "CANVAS",
    "PATCH_POSITIONS",
    "PATCH_SIZE",
    "TEXTURES",
    "digit_pools",
    "generate",
    "to_tensors",
    "write_dataset",
]

CANVAS = 32
"""Side of the canvas the images are built on (before scaling to ``image_size``)."""
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
"""Bias modes: class patch / no patch / another class's patch / digit on a plain black
background / background and class patch without the digit."""
SPLITS = ("train", "val", "test")
POOL_FRACTIONS = (0.6, 0.2, 0.2)
"""Share of each class's ``load_digits`` images in the train / val / test pools."""
TEXTURES = (
    "brick", "grass", "gravel", "camera", "coins",
    "moon", "rocket", "astronaut", "coffee", "chelsea",
)  # fmt: skip
"""``skimage.data`` pictures (bundled with scikit-image, no download) used as backgrounds."""

_N_CLASSES = 10
_MARGIN = PATCH_SIZE  # the digit stays inside [_MARGIN, CANVAS - _MARGIN)
_TEXTURE_SIDE = 128  # textures are resized so their shorter side has this many pixels
_DIM = (0.25, 0.55)  # background brightness factor range
_NOISE_STD = 0.06
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
        int64 (N,), the digit class (the patch class for the ``background`` mode).
    patch_masks
        bool (N, H, W), the inserted bias pixels (all false without a patch).
    patch_classes
        int64 (N,), the class whose patch was inserted, -1 for none.
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


def _load_textures() -> list[np.ndarray]:
    """The background pictures as float32 RGB in [0, 1], shorter side ``_TEXTURE_SIDE``."""
    from skimage import data

    textures = []
    for name in TEXTURES:
        img = Image.fromarray(getattr(data, name)()).convert("RGB")
        scale = _TEXTURE_SIDE / min(img.size)
        size = (round(img.width * scale), round(img.height * scale))
        small = img.resize(size, Image.Resampling.LANCZOS)
        textures.append(np.asarray(small, dtype=np.float32) / 255.0)
    return textures


def _backgrounds(rng: np.random.Generator, n: int) -> np.ndarray:
    """n float32 (CANVAS, CANVAS, 3) backgrounds: dimmed random texture crops plus noise."""
    textures = _load_textures()
    which = rng.integers(len(textures), size=n)
    corner = rng.random((n, 2))
    flips = rng.integers(2, size=(n, 2)).astype(bool)
    dims = rng.uniform(*_DIM, size=n).astype(np.float32)
    out = rng.normal(0.0, _NOISE_STD, size=(n, CANVAS, CANVAS, 3)).astype(np.float32)
    for i in range(n):
        tex = textures[which[i]]
        r = int(corner[i, 0] * (tex.shape[0] - CANVAS + 1))
        c = int(corner[i, 1] * (tex.shape[1] - CANVAS + 1))
        crop = tex[r : r + CANVAS, c : c + CANVAS]
        if flips[i, 0]:
            crop = crop[::-1]
        if flips[i, 1]:
            crop = crop[:, ::-1]
        out[i] += dims[i] * crop
    return np.clip(out, 0.0, 1.0)


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
        ``"biased"`` (patch of the true class), ``"unbiased"`` (no patch), ``"deceiving"``
        (patch of a random other class), ``"foreground"`` (digit on plain black, no patch)
        or ``"background"`` (no digit; label = the patch class; the mask marks where the
        digit would have been).
    mask
        ``"box"`` (the digit's 16x16 box) or ``"strokes"`` (the digit's strokes dilated by
        one pixel).
    image_size
        Output side, a multiple of 32; larger sizes repeat pixels (nearest neighbour), so
        masks and patches stay exact.

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
    offsets = rng.integers(_MARGIN, CANVAS - _MARGIN - DIGIT + 1, size=(n, 2))
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
        canvas = _backgrounds(rng, n)
    alphas = np.kron(digits[chosen], np.ones((1, 2, 2), dtype=np.float32))  # (n, 16, 16)
    inner = _stroke_masks(alphas) if mask == "strokes" else np.ones_like(alphas, dtype=bool)
    if bias == "background":
        alphas = np.zeros_like(alphas)

    masks = np.zeros((n, CANVAS, CANVAS), dtype=bool)
    patch_masks = np.zeros((n, CANVAS, CANVAS), dtype=bool)
    for i in range(n):
        r, c = offsets[i]
        box = (slice(r, r + DIGIT), slice(c, c + DIGIT))
        a = alphas[i][..., None]
        canvas[i][box] = canvas[i][box] * (1.0 - a) + a * colours[i]
        masks[i][box] = inner[i]
        if patch_classes[i] >= 0:
            pr, pc = PATCH_POSITIONS[patch_classes[i]]
            patch_masks[i, pr : pr + PATCH_SIZE, pc : pc + PATCH_SIZE] = True
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


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG")


def write_dataset(
    out: str | Path,
    *,
    seed: int = 0,
    n_train: int = 3300,
    n_val: int = 500,
    n_test: int = 500,
    mask: str = "box",
    image_size: int = CANVAS,
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
    seed, mask, image_size
        See :func:`generate`.
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
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty directory")
    tests = BIASES if extra_tests else BIASES[:3]
    plan = [("train", "train", "biased", n_train), ("val", "val", "biased", n_val)]
    plan += [(f"test/{bias}", "test", bias, n_test) for bias in tests]

    paths: dict[str, Path] = {}
    for name, pool, bias, count in plan:
        d = generate(count, split=pool, seed=seed, bias=bias, mask=mask, image_size=image_size)
        root = out / name
        for sub in ("images", "masks", "patches"):
            for cls in range(_N_CLASSES):
                (root / sub / str(cls)).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            rel = Path(str(d.labels[i])) / f"{i:05d}.png"
            _save_png(d.images[i], root / "images" / rel)
            _save_png(d.masks[i].astype(np.uint8) * 255, root / "masks" / rel)
            _save_png(d.patch_masks[i].astype(np.uint8) * 255, root / "patches" / rel)
        paths[name] = root
        if progress:
            print(f"bg-digits: wrote {count} images to {root}", file=sys.stderr)

    meta = {
        "name": "BG-Digits",
        "generator": "isnet.data.bg_digits.write_dataset",
        "seed": seed,
        "image_size": image_size,
        "mask": mask,
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
        "textures": [f"skimage.data.{t}" for t in TEXTURES],
    }
    (out / "bg-digits.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return paths
