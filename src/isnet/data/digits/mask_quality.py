"""Training masks made imperfect on purpose: how much the methods need exact masks.

BG-Digits can write its training split with degraded masks (``isnet data bg-digits
--train-mask``, ``isnet bench bias --mask-quality``); validation and test masks stay exact.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MASK_DEGRADATIONS", "MASK_MARGIN", "MASK_SHIFT", "degrade_masks"]

MASK_DEGRADATIONS = ("exact", "dilated", "eroded", "bbox", "shifted")
"""Training-mask qualities (:func:`degrade_masks`): exact, grown or shrunk by
``MASK_MARGIN`` pixels, the mask's bounding box, or moved by up to ``MASK_SHIFT`` pixels."""
MASK_MARGIN = 2
MASK_SHIFT = 3


def degrade_masks(masks: np.ndarray, how: str, *, seed: int = 0, scale: int = 1) -> np.ndarray:
    """Masks made imperfect on purpose, to train with (evaluation keeps the exact ones).

    ``how`` is one of :data:`MASK_DEGRADATIONS`: ``"exact"`` (a copy), ``"dilated"`` /
    ``"eroded"`` (grown / shrunk by ``MASK_MARGIN`` pixels, square neighbourhood),
    ``"bbox"`` (each mask's bounding box; the same as exact for ``mask="box"``) or
    ``"shifted"`` (each mask moved by a random offset of up to ``MASK_SHIFT`` pixels per axis,
    drawn from ``seed``). Pixel amounts are on the 32x32 canvas, times ``scale`` for larger
    images. ``masks`` is bool (N, H, W).
    """
    from scipy.ndimage import binary_dilation, binary_erosion

    if how not in MASK_DEGRADATIONS:
        raise ValueError(f"mask degradation must be one of {MASK_DEGRADATIONS}, got {how!r}")
    out = masks.copy()
    side = 2 * MASK_MARGIN * scale + 1
    square = np.zeros((3, side, side), dtype=bool)
    square[1] = True  # within each image only
    if how == "dilated":
        out = binary_dilation(masks, structure=square)
    elif how == "eroded":
        out = binary_erosion(masks, structure=square)
    elif how == "bbox":
        for i, m in enumerate(masks):
            rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
            if rows.size:
                out[i, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = True
    elif how == "shifted":
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
        moves = rng.integers(-MASK_SHIFT, MASK_SHIFT + 1, size=(len(masks), 2)) * scale
        out[:] = False
        height, width = masks.shape[1:]
        for i, (dr, dc) in enumerate(moves):
            source = masks[i][_span(-dr, height), _span(-dc, width)]
            out[i][_span(dr, height), _span(dc, width)] = source
    return out


def _span(move: int, size: int) -> slice:
    """Where pixels land along an axis of ``size`` when moved by ``move`` (the source: ``-move``)."""
    return slice(max(move, 0), size + min(move, 0))
