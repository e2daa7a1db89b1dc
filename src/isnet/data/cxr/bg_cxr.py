"""BG-CXR: an offline chest-X-ray-like benchmark with real lung shapes and hospital shortcuts.

Each image is a chest drawn around a real lung mask (:mod:`isnet.data.cxr.lungs`, from the
installed ``torchxrayvision``): anatomy outside the lungs, parenchyma inside, and the class
only inside the lungs (:mod:`isnet.data.cxr.anatomy`: ``consolidation``, ``ground_glass``,
``normal``). It is then imaged by one of eight fictional hospitals
(:mod:`isnet.data.cxr.hospitals`), each with its own field of view, exposure, noise, text
marker and label box. Hospitals 0-5 are *training* hospitals, two per class
(:data:`CLASS_HOSPITALS`); hospitals 6-7 are *external* and never appear in training.

The bias: in ``biased`` data a fraction ``correlation`` of each class comes from the class's
own hospitals, the rest from the other classes' hospitals, so the hospital predicts the class.
A classifier that reads the hospital scores well on ``biased`` data, worse on ``external``
hospitals and badly on ``deceiving`` data, where every image comes from a hospital of
another class. The masks are the lungs; the *shortcut masks* mark the marker and label-box
pixels. Everything is a deterministic function of the seed; lung masks are split disjointly
between train / val / test (:func:`~isnet.data.cxr.lungs.lung_pools`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ...locks import holding_lock
from ..layout import check_empty_output, split_plan, write_split
from .anatomy import CLASSES, render_chest
from .hospitals import HOSPITALS, acquire
from .lungs import POOL_FRACTIONS, REJECT_REASONS, archive_path, lung_catalogue, lung_pools

__all__ = [
    "BGCXR",
    "BIASES",
    "CLASSES",
    "CLASS_HOSPITALS",
    "EXTERNAL_HOSPITALS",
    "HOSPITALS",
    "generate",
    "hospital_class",
    "to_tensors",
    "write_dataset",
]

BIASES = ("biased", "unbiased", "external", "deceiving")
"""Hospital assignment: correlated with the class / training hospitals independent of the class
/ the external hospitals (class-balanced) / a hospital of another class."""
CLASS_HOSPITALS: tuple[tuple[int, ...], ...] = ((0, 1), (2, 3), (4, 5))
"""Training hospitals associated with each class (index = label)."""
EXTERNAL_HOSPITALS: tuple[int, ...] = (6, 7)
"""Hospitals never used in training, validation or the biased test set."""
SPLITS = ("train", "val", "test")
DEFAULT_TESTS = ("biased", "external", "deceiving")


@dataclass(frozen=True)
class BGCXR:
    """An in-memory BG-CXR split.

    Attributes
    ----------
    images
        uint8 (N, H, W), grayscale.
    masks
        bool (N, H, W), the lungs (the foreground).
    labels
        int64 (N,), index into :data:`CLASSES`.
    hospitals
        int64 (N,), index into :data:`~isnet.data.cxr.hospitals.HOSPITALS`.
    shortcut_masks
        bool (N, H, W), pixels of the hospital's marker and label box (never a lung pixel).
    lung_ids
        int64 (N,), index of the lung mask in :func:`~isnet.data.cxr.lungs.lung_catalogue`.
    """

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    hospitals: np.ndarray
    shortcut_masks: np.ndarray
    lung_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def hospital_class(hospital: int) -> int:
    """The class a training hospital is associated with, or -1 for an external hospital."""
    for label, group in enumerate(CLASS_HOSPITALS):
        if hospital in group:
            return label
    return -1


def _balanced(rng: np.random.Generator, n: int, choices: Sequence[int]) -> np.ndarray:
    """``n`` draws from ``choices`` in equal shares (up to one), in random order."""
    return rng.permutation(np.asarray(choices, dtype=np.int64)[np.arange(n) % len(choices)])


def _assign_hospitals(rng: np.random.Generator, labels: np.ndarray, bias: str, correlation: float) -> np.ndarray:
    """Hospital per image for a bias mode (see :data:`BIASES`); exact shares within each class."""
    hospitals = np.empty(len(labels), dtype=np.int64)
    training = [h for group in CLASS_HOSPITALS for h in group]
    for label, own in enumerate(CLASS_HOSPITALS):
        slots = np.flatnonzero(labels == label)
        others = [h for h in training if h not in own]
        if bias == "biased":
            n_own = round(correlation * len(slots))
            picks = np.concatenate([_balanced(rng, n_own, own), _balanced(rng, len(slots) - n_own, others)])
            hospitals[slots] = rng.permutation(picks)
        elif bias == "unbiased":
            hospitals[slots] = _balanced(rng, len(slots), training)
        elif bias == "external":
            hospitals[slots] = _balanced(rng, len(slots), EXTERNAL_HOSPITALS)
        else:
            hospitals[slots] = _balanced(rng, len(slots), others)
    return hospitals


def generate(
    n: int,
    *,
    split: str,
    seed: int,
    bias: str = "biased",
    image_size: int = 128,
    correlation: float = 0.95,
) -> BGCXR:
    """Generate ``n`` BG-CXR images in memory.

    Parameters
    ----------
    n
        Number of images; classes are balanced (``n // 3`` or one more each).
    split
        Lung-mask pool: ``"train"``, ``"val"`` or ``"test"`` (disjoint, see
        :func:`~isnet.data.cxr.lungs.lung_pools`).
    seed
        Non-negative seed; pools and every random draw derive from it.
    bias
        Hospital assignment, one of :data:`BIASES`. The chests (labels, lungs, anatomy,
        findings) depend on ``(seed, split, n)`` only, so the test sets of one split are the
        same patients imaged at different hospitals: a paired comparison.
    image_size
        Output side in pixels, 64 to 512 (128 by default, 224 for ImageNet-sized networks).
    correlation
        For ``bias="biased"``: the share of each class imaged at the class's own hospitals
        (the rest at the other classes' hospitals). 1/3 makes hospital and class independent.

    Returns
    -------
    BGCXR
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if bias not in BIASES:
        raise ValueError(f"bias must be one of {BIASES}, got {bias!r}")
    if not 64 <= image_size <= 512:
        raise ValueError(f"image_size must be between 64 and 512, got {image_size}")
    if not 0.0 <= correlation <= 1.0:
        raise ValueError(f"correlation must be in [0, 1], got {correlation}")
    if n < 0 or seed < 0:
        raise ValueError(f"n and seed must be non-negative, got n={n}, seed={seed}")

    catalogue = lung_catalogue()
    s, b = SPLITS.index(split), BIASES.index(bias)
    chests = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3, s)))
    labels = chests.permutation(np.arange(n, dtype=np.int64) % len(CLASSES))
    lung_ids = chests.choice(lung_pools(seed)[split], size=n)
    styles = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(4, s, b)))
    hospitals = _assign_hospitals(styles, labels, bias, correlation)

    images = np.empty((n, image_size, image_size), dtype=np.uint8)
    masks = np.empty((n, image_size, image_size), dtype=bool)
    shortcuts = np.empty((n, image_size, image_size), dtype=bool)
    for i in range(n):
        chest_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(5, s, i)))
        frame, lungs = render_chest(chest_rng, catalogue.crops[lung_ids[i]], image_size, CLASSES[labels[i]])
        style_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(6, s, b, i)))
        images[i], masks[i], shortcuts[i] = acquire(style_rng, frame, lungs, HOSPITALS[hospitals[i]], image_size)
    return BGCXR(images, masks, labels, hospitals, shortcuts, lung_ids)


def to_tensors(d: BGCXR) -> tuple[Tensor, Tensor, Tensor]:
    """Convert to training tensors, as :class:`~isnet.data.MaskedImageFolder` reads the files.

    Returns
    -------
    tuple of Tensor
        Images float32 (N, 3, H, W) in [0, 1] (grayscale replicated), masks float32
        (N, 1, H, W), labels int64 (N,).
    """
    gray = torch.from_numpy(d.images).float().div_(255.0)[:, None]
    masks = torch.from_numpy(d.masks).float()[:, None]
    return gray.expand(-1, 3, -1, -1).contiguous(), masks, torch.from_numpy(d.labels.copy())


@holding_lock("isnet data bg-cxr")  # one writer per folder
def write_dataset(
    out: str | Path,
    *,
    seed: int = 0,
    n_train: int = 3000,
    n_val: int = 500,
    n_test: int = 500,
    image_size: int = 128,
    correlation: float = 0.95,
    tests: Sequence[str] = DEFAULT_TESTS,
    progress: bool = False,
) -> dict[str, Path]:
    """Write BG-CXR as single-channel PNG files in the ``images/`` + ``masks/`` layout.

    Splits: ``train`` and ``val`` (biased) and ``test/<bias>`` for each of ``tests``. Each
    holds ``images/<class>/NNNNN.png``, ``masks/<class>/NNNNN.png`` (lungs, 0/255),
    ``shortcuts/<class>/NNNNN.png`` (marker and label box, 0/255) and ``index.csv`` (file,
    label, hospital, lung mask per image). ``OUT/bg-cxr.json`` records every parameter. The
    same arguments give byte-identical files.

    Parameters
    ----------
    out
        Output directory; must not exist or be empty.
    seed, image_size, correlation
        See :func:`generate`.
    n_train, n_val, n_test
        Images in the training split, the validation split and each test split.
    tests
        Test sets to write, from :data:`BIASES`.
    progress
        Print one line per written split to stderr.

    Returns
    -------
    dict
        Split name (``"train"``, ``"val"``, ``"test/biased"``, ...) -> its directory.
    """
    out = check_empty_output(out)
    unknown = [t for t in tests if t not in BIASES]
    if unknown:
        raise ValueError(f"tests must be among {BIASES}, got {unknown}")
    plan = split_plan(n_train, n_val, n_test, tests)

    catalogue = lung_catalogue()
    paths: dict[str, Path] = {}
    for name, pool, bias, count in plan:
        d = generate(count, split=pool, seed=seed, bias=bias, image_size=image_size, correlation=correlation)
        root = out / name
        files = write_split(root, CLASSES, d.labels, d.images, d.masks, {"shortcuts": d.shortcut_masks},
                            progress="bg-cxr" if progress else None)
        rows = [("file", "label", "class", "hospital", "hospital_name", "lung_mask")]
        for i, rel in enumerate(files):
            lung = catalogue.names[d.lung_ids[i]].rsplit("/", 1)[-1]
            rows.append((rel.as_posix(), int(d.labels[i]), CLASSES[d.labels[i]], int(d.hospitals[i]),
                         HOSPITALS[d.hospitals[i]].name, lung))  # fmt: skip
        with open(root / "index.csv", "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle, lineterminator="\n").writerows(rows)
        paths[name] = root

    pools = lung_pools(seed)
    meta = {
        "name": "BG-CXR",
        "generator": "isnet.data.cxr.bg_cxr.write_dataset",
        "seed": seed,
        "image_size": image_size,
        "correlation": correlation,
        "classes": list(CLASSES),
        "splits": {
            name: {"path": name, "lung_pool": pool, "bias": bias, "n": count} for name, pool, bias, count in plan
        },
        "hospitals": [dataclasses.asdict(h) for h in HOSPITALS],
        "class_hospitals": {CLASSES[k]: list(group) for k, group in enumerate(CLASS_HOSPITALS)},
        "external_hospitals": list(EXTERNAL_HOSPITALS),
        "lung_masks": {
            "source": f"torchxrayvision/data/{archive_path().name} (V7 Labs lung annotations)",
            "kept": len(catalogue),
            "rejected": dict(sorted(Counter(catalogue.rejected.values()).items())),
            "reject_reasons": dict(REJECT_REASONS),
            "pool_fractions": dict(zip(SPLITS, POOL_FRACTIONS)),
            "pool_sizes": {name: len(idx) for name, idx in pools.items()},
        },
    }
    (out / "bg-cxr.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return paths
