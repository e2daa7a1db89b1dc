"""Real lung masks for BG-CXR, read from the installed ``torchxrayvision`` package.

``torchxrayvision`` ships 517 lung masks traced (by V7 Labs) on chest X-rays of the COVID-19
image data collection, in ``torchxrayvision/data/semantic_masks_v7labs_lungs.zip``: one PNG
per X-ray, 255 = lung (the value ``torchxrayvision`` itself reads), 0 = elsewhere (a few hold
a second label, 127, which is ignored). The archive is read where the package is installed;
nothing is copied into this repository and the package is never imported.

Not every file is a clean pair of lungs: some are empty, some come from figure panels or
crops. :func:`lung_catalogue` keeps a mask only when, at a working resolution of
``WORK_SIDE`` pixels on the longer side, it is exactly two lungs side by side
(:data:`REJECT_REASONS` lists the tests). A kept mask is stored cropped to the lungs'
bounding box. :func:`lung_pools` splits the kept masks into disjoint train / val / test
pools, keeping near-identical masks (the same X-ray at two sizes) in the same pool.
"""

from __future__ import annotations

import importlib.util
import io
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image

__all__ = [
    "MASK_ARCHIVE",
    "POOL_FRACTIONS",
    "REJECT_REASONS",
    "LungCatalogue",
    "archive_path",
    "lung_catalogue",
    "lung_pools",
    "resize_mask",
]

MASK_ARCHIVE = "semantic_masks_v7labs_lungs.zip"
"""File name of the mask archive inside ``torchxrayvision/data/``."""
WORK_SIDE = 256
"""Masks are decoded and tested at this many pixels on the longer side."""
POOL_FRACTIONS = (0.6, 0.2, 0.2)
"""Share of the (deduplicated) kept masks in the train / val / test pools."""
REJECT_REASONS = MappingProxyType({
    "empty": "no lung pixel",
    "components": "not exactly two lung regions (fragments under 1% of the lung area are dropped)",
    "unbalanced": "the smaller region has under half the larger one's area",
    "not side by side": "the regions' vertical extents overlap by under 80%",
    "border": "the lungs touch the image border (more than 3% of their box perimeter): a crop",
    "shape": "box height / width outside [0.5, 1.25] or a region fills under 45% of its box",
    "merge": "the pair is not two regions once shrunk to 40 pixels wide (lungs merge or a tip breaks off)",
})
"""Why a mask is skipped; tests are applied in this order, the first failing one is reported."""

_FRAGMENT = 0.01  # a region under this share of the lung area is annotation debris
_DUPLICATE_IOU = 0.95  # masks this alike (32x32, box-normalised) may be one patient: same pool
# (two masks of different X-rays typically reach 0.89 with their nearest neighbour)
_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class LungCatalogue:
    """The usable lung masks of the archive.

    Attributes
    ----------
    names
        Archive member names of the kept masks, sorted.
    crops
        One read-only bool array per kept mask: the two lungs, cropped to their bounding box
        (longer side of the original image at ``WORK_SIDE`` pixels).
    groups
        int64 (len(names),), near-duplicate group of each kept mask (masks of one group always
        land in the same pool).
    rejected
        Skipped member name -> reason (a key of :data:`REJECT_REASONS`).
    """

    names: tuple[str, ...]
    crops: tuple[np.ndarray, ...]
    groups: np.ndarray
    rejected: dict[str, str]

    def __len__(self) -> int:
        return len(self.names)


def archive_path() -> Path:
    """Path of the lung-mask archive in the installed ``torchxrayvision`` (not imported).

    Raises
    ------
    ModuleNotFoundError
        When ``torchxrayvision`` is not installed (``pip install 'isnet[cxr]'``).
    """
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "BG-CXR reads real lung masks from the torchxrayvision package: "
            "pip install 'isnet[cxr]' (or pip install torchxrayvision)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / MASK_ARCHIVE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed torchxrayvision")
    return path


def _decode(data: bytes) -> np.ndarray:
    """Lung pixels (value 255) at ``WORK_SIDE`` on the longer side: area-averaged, then halved."""
    with Image.open(io.BytesIO(data)) as im:
        lungs = im.convert("L").point(lambda v: 255 if v == 255 else 0)
    scale = WORK_SIDE / max(lungs.size)
    size = (max(1, round(lungs.width * scale)), max(1, round(lungs.height * scale)))
    return np.asarray(lungs.resize(size, Image.Resampling.BOX)) >= 128


def _check(mask: np.ndarray) -> tuple[str | None, np.ndarray]:
    """Apply the tests of :data:`REJECT_REASONS`; returns (reason or None, the cleaned crop)."""
    from scipy import ndimage

    if not mask.any():
        return "empty", mask
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    big = np.flatnonzero(areas >= _FRAGMENT * areas.sum())
    if len(big) != 2:
        return "components", mask
    objects = ndimage.find_objects(labels)
    a, b = sorted(big, key=lambda k: objects[k][1].start)  # image left first
    mask = (labels == a + 1) | (labels == b + 1)
    if min(areas[a], areas[b]) < 0.5 * max(areas[a], areas[b]):
        return "unbalanced", mask
    boxes = [objects[a], objects[b]]
    (ra, _), (rb, _) = boxes
    overlap = min(ra.stop, rb.stop) - max(ra.start, rb.start)
    if overlap < 0.8 * min(ra.stop - ra.start, rb.stop - rb.start):
        return "not side by side", mask
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    ring = mask[0].sum() + mask[-1].sum() + mask[1:-1, 0].sum() + mask[1:-1, -1].sum()
    if ring > 0.03 * 2 * (height + width):
        return "border", mask
    crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    fills = [areas[k] / ((r.stop - r.start) * (c.stop - c.start)) for k, (r, c) in zip((a, b), boxes)]
    if not 0.5 <= height / width <= 1.25 or min(fills) < 0.45:
        return "shape", crop
    small = resize_mask(crop, 40, max(8, round(40 * height / width)))
    if ndimage.label(small, structure=np.ones((3, 3)))[1] != 2:
        return "merge", crop
    return None, crop


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a bool mask (Pillow bilinear, antialiased when shrinking), then threshold at one half."""
    small = Image.fromarray(mask.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(small) > 0.5


def _duplicate_groups(crops: list[np.ndarray]) -> np.ndarray:
    """Group masks whose crops, resized to 32x32, overlap with IoU >= ``_DUPLICATE_IOU``."""
    flat = np.stack([resize_mask(c, 32, 32).ravel() for c in crops]).astype(np.float32)
    inter = flat @ flat.T
    sizes = flat.sum(1)
    iou = inter / np.maximum(sizes[:, None] + sizes[None, :] - inter, 1.0)
    groups = np.arange(len(crops))
    for i, j in zip(*np.nonzero(np.triu(iou >= _DUPLICATE_IOU, k=1))):
        gi, gj = groups[i], groups[j]  # union: relabel the later group
        groups[groups == max(gi, gj)] = min(gi, gj)
    return np.unique(groups, return_inverse=True)[1].astype(np.int64)


@lru_cache(maxsize=1)
def lung_catalogue() -> LungCatalogue:
    """Decode, test and crop every mask of the archive (once per process, a few seconds).

    Returns
    -------
    LungCatalogue
        The kept masks (sorted by name) and the reasons for the skipped ones.
    """
    names: list[str] = []
    crops: list[np.ndarray] = []
    rejected: dict[str, str] = {}
    with zipfile.ZipFile(archive_path()) as archive:
        members = sorted(m for m in archive.namelist() if not m.endswith("/"))
        for member in members:
            reason, crop = _check(_decode(archive.read(member)))
            if reason is None:
                crop.setflags(write=False)
                names.append(member)
                crops.append(crop)
            else:
                rejected[member] = reason
    groups = _duplicate_groups(crops)
    groups.setflags(write=False)
    return LungCatalogue(tuple(names), tuple(crops), groups, rejected)


def lung_pools(seed: int) -> dict[str, np.ndarray]:
    """Split the kept masks into disjoint train / val / test pools.

    Near-duplicate groups are shuffled with ``seed`` and cut by :data:`POOL_FRACTIONS` of
    the masks, so no lung shape appears in two pools.

    Returns
    -------
    dict
        ``{"train": idx, "val": idx, "test": idx}``: sorted int64 indices into
        :func:`lung_catalogue`'s masks.
    """
    groups = lung_catalogue().groups
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    order = rng.permutation(groups.max() + 1)
    sizes = np.bincount(groups)[order]
    cuts = np.searchsorted(np.cumsum(sizes), np.cumsum(POOL_FRACTIONS)[:-1] * len(groups))
    pools = {}
    for name, chosen in zip(_SPLITS, np.split(order, cuts)):
        pools[name] = np.flatnonzero(np.isin(groups, chosen)).astype(np.int64)
    return pools
