"""Writing generated images in the dataset layout (``images/<class>/`` + ``masks/<class>/``).

The built-in benchmarks produce arrays in memory; this module is the one place that turns
them into the on-disk layout users bring their own data in, so the two always agree. Extra
region masks (a benchmark's shortcut pixels) go to sibling folders such as ``patches/``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..locks import LOCK

__all__ = ["check_empty_output", "split_plan", "write_split"]


def check_empty_output(out: str | Path) -> Path:
    """``out`` as a Path; a FileExistsError when it exists and is not an empty directory (the lock file
    of the process writing it, :data:`isnet.locks.LOCK`, does not count)."""
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(p.name != LOCK for p in out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty directory")
    return out


def split_plan(n_train: int, n_val: int, n_test: int, tests: Sequence[str]) -> list[tuple[str, str, str, int]]:
    """``(split name, source pool, bias, count)`` per split: biased train and val, then one per test set."""
    plan = [("train", "train", "biased", n_train), ("val", "val", "biased", n_val)]
    return plan + [(f"test/{bias}", "test", bias, n_test) for bias in tests]


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG")


def write_split(root: Path, classes: Sequence[str], labels: np.ndarray, images: np.ndarray, masks: np.ndarray,
                regions: Mapping[str, np.ndarray] | None = None, *, progress: str | None = None) -> list[Path]:
    """Write one split: ``root/images/<class>/NNNNN.png``, ``root/masks/...`` (0/255) and, per
    ``regions`` entry, ``root/<name>/<class>/NNNNN.png`` (0/255).

    Returns the image paths relative to ``root/images`` (``<class>/NNNNN.png``), in order.
    With ``progress`` (a name), one line per split goes to stderr.
    """
    regions = dict(regions or {})
    for sub in ("images", "masks", *regions):
        for cls in classes:
            (root / sub / cls).mkdir(parents=True, exist_ok=True)
    written = []
    for i, label in enumerate(labels):
        rel = Path(classes[int(label)]) / f"{i:05d}.png"
        _save_png(images[i], root / "images" / rel)
        _save_png(masks[i].astype(np.uint8) * 255, root / "masks" / rel)
        for name, region in regions.items():
            _save_png(region[i].astype(np.uint8) * 255, root / name / rel)
        written.append(rel)
    if progress:
        print(f"{progress}: wrote {len(labels)} images to {root}", file=sys.stderr)
    return written
