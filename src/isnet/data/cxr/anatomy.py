"""A chest X-ray-like picture drawn around a real lung mask (BG-CXR's anatomy and findings).

:func:`render_chest` places a lung mask (from :mod:`isnet.data.cxr.lungs`) in an upright
*frame*, a square of ``FRAME`` times the output side so that a later zoom out or rotation
(:mod:`isnet.data.cxr.hospitals`) still shows body, and draws X-ray-like densities
(bright = dense) as smooth analytic shapes:

* outside the lungs: air, a body silhouette with neck and shoulders whose soft tissue is
  thickest in the middle, the spine with vertebrae, posterior ribs, clavicles, the heart
  shadow and aortic knob, and the abdomen under the diaphragm domes (which follow the
  lungs' lower edges);
* inside the lungs: dark parenchyma with fine texture, vessels branching from the hila and
  faint rib shadows; and the class, which lives only here: ``normal`` (nothing more),
  ``ground_glass`` (a diffuse hazy opacity over part or all of the lungs) or
  ``consolidation`` (one to three dense focal patches).

Every size, spacing and strength is drawn per image from ``rng``; lengths are fractions of
the output side, so the anatomy keeps its proportions at every image size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .lungs import resize_mask

__all__ = ["CLASSES", "FRAME", "render_chest"]

CLASSES = ("consolidation", "ground_glass", "normal")
"""Class names in label order (sorted, so folder order matches: ``MaskedImageFolder`` agrees)."""
FRAME = 1.25
"""Side of the drawing frame as a multiple of the output side."""

_AIR = 0.03
_LUNG_BASE = (0.12, 0.18)  # parenchyma density range (normal variation between patients)
_GLASS = (0.045, 0.095)  # ground-glass density added where it covers
_PATCH = (0.13, 0.22)  # consolidation density added at a patch's centre

Box = tuple[int, int, int, int]  # top, left, height, width in frame pixels


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return field / max(float(field.std()), 1e-6)


def _place(crop: np.ndarray, rng: np.random.Generator, s: int, side: int) -> tuple[np.ndarray, Box]:
    """Resize the lung crop to a patient-sized box and paste it in the frame.

    Returns the frame mask and the box (top, left, height, width) in frame pixels.
    """
    width = s * rng.uniform(0.56, 0.64)
    height = width * crop.shape[0] / crop.shape[1]
    if height > 0.64 * s:
        width, height = width * 0.64 * s / height, 0.64 * s
    w, h = max(8, round(width)), max(8, round(height))
    centre_x = side / 2 + s * rng.uniform(-0.015, 0.015)
    centre_y = side / 2 + s * rng.uniform(-0.04, -0.02)
    top, left = round(centre_y - h / 2), round(centre_x - w / 2)
    mask = np.zeros((side, side), dtype=bool)
    mask[top : top + h, left : left + w] = resize_mask(crop, w, h)
    return mask, (top, left, h, w)


def _midline(mask: np.ndarray, left: int, w: int) -> int:
    """Column of the mediastinum: the fewest lung pixels in the middle half of the lung box."""
    counts = mask[:, left + w // 4 : left + 3 * w // 4].sum(0)
    gap = np.flatnonzero(counts == counts.min())
    return left + w // 4 + int(gap[len(gap) // 2])


def _lower_edge(mask: np.ndarray, left: int, w: int) -> np.ndarray:
    """Per frame column, the row of the lungs' lower edge (interpolated across the heart)."""
    cols = np.arange(left, left + w)
    present = mask[:, cols].any(0)
    rows = mask.shape[0] - 1 - np.argmax(mask[::-1, cols], axis=0)
    edge = np.interp(np.arange(mask.shape[1]), cols[present], rows[present]).astype(np.float32)
    kernel = np.ones(5, dtype=np.float32) / 5
    return np.convolve(np.pad(edge, 2, mode="edge"), kernel, mode="valid")


def _body(
    rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, s: int, box: Box, xm: int, edge: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Everything outside the lungs (silhouette, spine, ribs, clavicles, heart, abdomen) and the ribs alone."""
    top, left, h, w = box
    dx = xx - xm
    half = 0.5 * w * rng.uniform(1.22, 1.36)  # chest half width at the lungs
    shoulder_y = top - s * rng.uniform(0.02, 0.05)
    shoulders = half * rng.uniform(1.08, 1.2)
    neck = s * rng.uniform(0.075, 0.095)
    widths = neck + (shoulders - neck) * _sigmoid((yy - shoulder_y) / (0.015 * s))
    widths = widths - (shoulders - half) * np.clip((yy - top) / (h + 1e-6), 0, 1)
    widths = widths * (1.0 - 0.15 * np.clip((yy - top - h) / s, 0, 1))
    inside = _sigmoid((widths - np.abs(dx)) / (0.008 * s))
    thick = np.sqrt(np.clip(1.0 - (dx / widths) ** 2, 0.0, 1.0))
    img = _AIR + inside * (rng.uniform(0.26, 0.32) + rng.uniform(0.10, 0.16) * thick)

    spacing = s * rng.uniform(0.052, 0.07)  # rib spacing
    spine = s * rng.uniform(0.032, 0.042)
    vertebrae = 0.75 + 0.25 * np.cos(2 * np.pi * (yy - top) / spacing + rng.uniform(0, 2 * np.pi))
    img += rng.uniform(0.08, 0.12) * vertebrae * _sigmoid((spine - np.abs(dx)) / (0.006 * s))

    lateral = np.clip((np.abs(dx) - spine) / (widths - spine), 0.0, 1.0)
    bend = rng.uniform(1.6, 2.4)
    phase = (yy - top - spacing * (bend * lateral**2 - 0.3 * lateral)) / spacing + 0.4
    ribs = ((1.0 + np.cos(2 * np.pi * phase)) / 2) ** 4
    ribs *= (phase > 0) & (phase < h / spacing + 0.5) & (lateral > 0)
    ribs *= _sigmoid((0.97 - lateral) / 0.03) * inside
    ribs *= rng.uniform(0.07, 0.10)
    img += ribs

    rise = s * rng.uniform(0.04, 0.08)
    for side in (-1.0, 1.0):  # clavicles: from the spine out and up to the shoulder
        x0, y0 = xm + side * spine * 1.3, top - 0.005 * s
        x1, y1 = xm + side * shoulders * 0.85, top - rise
        t = np.clip(((xx - x0) * (x1 - x0) + (yy - y0) * (y1 - y0)) / ((x1 - x0) ** 2 + (y1 - y0) ** 2), 0, 1)
        sag = 0.02 * s * np.sin(np.pi * t)
        dist = np.hypot(xx - (x0 + t * (x1 - x0)), yy - (y0 + t * (y1 - y0)) - sag)
        img += rng.uniform(0.11, 0.15) * _sigmoid((0.011 * s - dist) / (0.004 * s))

    heart_a = half * rng.uniform(0.40, 0.52)
    heart_b = heart_a * rng.uniform(0.68, 0.85)
    hx, hy = xm + s * rng.uniform(0.025, 0.06), top + h * rng.uniform(0.66, 0.74)
    ellipse = ((xx - hx) / heart_a) ** 2 + ((yy - hy) / heart_b) ** 2
    img += rng.uniform(0.12, 0.17) * _sigmoid((1.0 - ellipse) / 0.08)
    knob = np.hypot(xx - xm - 0.04 * s, yy - top - 0.18 * h)
    img += 0.08 * _sigmoid((0.03 * s - knob) / (0.005 * s))
    img += 0.04 * _sigmoid((0.05 * s - np.abs(dx)) / (0.01 * s)) * (yy > top)  # mediastinum

    below = _sigmoid((yy - edge[None, :] - 0.008 * s) / (0.006 * s))
    img += rng.uniform(0.10, 0.15) * below * inside
    return img, ribs


def _vessels(rng: np.random.Generator, mask: np.ndarray, s: int, box: Box, xm: int) -> np.ndarray:
    """Branching vessel shadows from each hilum, densest near it; zero outside the lungs."""
    from scipy.ndimage import gaussian_filter

    top, _, h, w = box
    canvas = Image.new("F", mask.shape[::-1], 0.0)
    draw = ImageDraw.Draw(canvas)
    cols = np.arange(mask.shape[1])[None, :]
    for side in (-1, 1):
        lung = mask & ((cols - xm) * side > 0)
        ys, xs = np.nonzero(lung)
        if len(ys) == 0:
            continue
        hilum = np.array([xm + side * 0.1 * w, top + 0.45 * h])
        far = np.hypot(xs - hilum[0], ys - hilum[1])
        picks = rng.choice(len(xs), size=9, p=far / far.sum())
        for k in picks:
            end = np.array([xs[k], ys[k]], dtype=float)
            steps = np.linspace(0, 1, 5)[:, None]
            path = hilum + steps * (end - hilum)
            path[1:-1] += rng.normal(0, 0.015 * s, size=(3, 2))
            for j in range(4):
                width = max(1, round((2.0 - 0.35 * j) * s / 128))
                draw.line([tuple(path[j]), tuple(path[j + 1])], fill=float(1.0 - 0.2 * j), width=width)
    return gaussian_filter(np.asarray(canvas), 0.5 * s / 128) * mask


def _finding(rng: np.random.Generator, label: str, mask: np.ndarray, s: int) -> np.ndarray:
    """Density added by the class's finding (zero for ``normal`` and outside the lungs)."""
    from scipy.ndimage import binary_erosion

    out = np.zeros(mask.shape, dtype=np.float32)
    if label == "ground_glass":
        field = _smooth_noise(rng, mask.shape, 0.08 * s)
        cover = rng.uniform(0.5, 1.0)
        level = np.quantile(field[mask], 1.0 - cover)
        grain = 0.85 + 0.15 * _smooth_noise(rng, mask.shape, 0.02 * s)
        out = rng.uniform(*_GLASS) * _sigmoid((field - level) / 0.3) * grain
    elif label == "consolidation":
        yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]].astype(np.float32)
        core = binary_erosion(mask, iterations=max(1, round(0.03 * s)))
        ys, xs = np.nonzero(core if core.any() else mask)
        rough = _smooth_noise(rng, mask.shape, 0.015 * s)
        for k in rng.choice(len(ys), size=rng.integers(1, 4)):
            radius = s * rng.uniform(0.03, 0.06)
            d2 = ((yy - ys[k]) ** 2 + (xx - xs[k]) ** 2 * rng.uniform(0.6, 1.4)) / radius**2
            out += rng.uniform(*_PATCH) * _sigmoid((1.0 - d2 + 0.35 * rough) / 0.2)
    elif label != "normal":
        raise ValueError(f"label must be one of {CLASSES}, got {label!r}")
    return out * mask


def render_chest(
    rng: np.random.Generator, crop: np.ndarray, size: int, label: str
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one chest around a lung mask, with the class's finding inside the lungs.

    Parameters
    ----------
    rng
        Source of every random draw (anatomy, texture, finding).
    crop
        bool lung mask cropped to the lungs (:attr:`LungCatalogue.crops`), image left first.
    size
        Output side ``s``; the frame is ``round(FRAME * s)`` pixels square.
    label
        One of :data:`CLASSES`.

    Returns
    -------
    tuple of ndarray
        float32 frame picture (about [0, 1]) and bool frame lung mask.
    """
    from scipy.ndimage import gaussian_filter

    side = round(FRAME * size)
    mask, box = _place(crop, rng, size, side)
    xm = _midline(mask, box[1], box[3])
    yy, xx = np.mgrid[:side, :side].astype(np.float32)
    body, ribs = _body(rng, yy, xx, size, box, xm, _lower_edge(mask, box[1], box[3]))

    lung = rng.uniform(*_LUNG_BASE) + 0.02 * (yy - box[0]) / box[2]  # a little denser at the bases
    lung = lung + 0.012 * _smooth_noise(rng, mask.shape, 0.6 * size / 128)
    lung = lung + 0.02 * _smooth_noise(rng, mask.shape, 0.04 * size)
    lung = lung + rng.uniform(0.07, 0.1) * _vessels(rng, mask, size, box, xm)
    lung = lung + 0.3 * ribs  # faint rib shadows over the lungs
    lung = lung + _finding(rng, label, mask, size)
    img = np.where(mask, lung, body)
    return gaussian_filter(img, 0.5 * size / 128).astype(np.float32), mask
