"""BG-Digits' backgrounds: textured canvases and the class tints of the ``tint`` cue.

:mod:`isnet.data.digits.bg_digits` puts the digits and the bias cues on them.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["CANVAS", "TEXTURES", "TINTS", "backgrounds"]

CANVAS = 32
"""Side of the canvas the images are built on (before scaling to ``image_size``)."""
TEXTURES = (
    "brick", "grass", "gravel", "camera", "coins",
    "moon", "rocket", "astronaut", "coffee", "chelsea",
)  # fmt: skip
"""``skimage.data`` pictures (bundled with scikit-image, no download) used as backgrounds."""

_N_CLASSES = 10
_TEXTURE_SIDE = 128  # textures are resized so their shorter side has this many pixels
_DIM = (0.25, 0.55)  # background brightness factor range
_NOISE_STD = 0.06
_TINT_STRENGTH = 0.6  # a tint scales each background channel by a factor in [1 - s, 1 + s]


def _tints() -> np.ndarray:
    """(10, 3) per-channel background factors, one per class, around the hue circle."""
    import colorsys

    hues = np.array([colorsys.hsv_to_rgb(k / _N_CLASSES, 1.0, 1.0) for k in range(_N_CLASSES)], dtype=np.float32)
    return 1.0 + _TINT_STRENGTH * (2.0 * hues - 1.0)


TINTS = _tints()
"""Class k's tint (``cue="tint"``): background channels are multiplied by ``TINTS[k]``
(hue k/10 at full saturation, mapped to factors in [0.4, 1.6]); no cue leaves them as they are."""


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


def backgrounds(rng: np.random.Generator, n: int) -> np.ndarray:
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
