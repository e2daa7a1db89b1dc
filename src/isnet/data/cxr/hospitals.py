"""Hospital styles for BG-CXR: acquisition and burned-in overlays that act as shortcuts.

In mixed-source chest X-ray data the hospital an image comes from is visible everywhere
outside the lungs and often predicts the label (sicker patients go to some sites, portable
machines are used in some wards). Each :class:`Hospital` fixes:

* acquisition: field of view (zoom and shift of the frame from :mod:`isnet.data.cxr.anatomy`),
  sharpness (blur), exposure (an intensity window and gamma) and detector noise;
* overlays burned into the pixels: a text marker (``"L"``, ``"PORTABLE"``, ...) at its own
  place, and a label box (dark or light) holding the hospital's name and a patient number.

:func:`acquire` applies a hospital to a frame and returns the image, the lung mask carried
through the same geometry, and the *shortcut mask*: the marker and label-box pixels.
Overlays sit in the corners and edges, which the lungs do not reach; even so they are never
drawn on a lung pixel, so the shortcut and lung masks are disjoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["HOSPITALS", "Hospital", "acquire"]


@dataclass(frozen=True)
class Hospital:
    """One site's acquisition style and overlays (lengths are fractions of the image side).

    Attributes
    ----------
    name
        Fictional name, printed in the label box.
    marker
        Marker text, drawn light in the default bitmap font of Pillow, scaled.
    marker_at
        (row, col) of the marker's centre.
    marker_height
        Marker text height.
    label_at
        (row, col) of the label box's top-left corner.
    label_size
        (height, width) of the label box.
    label_dark
        Dark box with light text (else light box with dark text).
    window
        Output intensities (black, white) the frame's [0, 1] is mapped to.
    gamma
        Exposure curve exponent applied before the window (< 1 brightens).
    noise
        Standard deviation of Gaussian pixel noise, in [0, 1] intensity units.
    blur
        Gaussian blur sigma in pixels at 128 x 128 (scaled with the side).
    zoom
        Field of view: > 1 crops tighter (bigger anatomy), < 1 shows more of the body.
    shift
        (row, col) offset of the field of view.
    """

    name: str
    marker: str
    marker_at: tuple[float, float]
    marker_height: float
    label_at: tuple[float, float]
    label_size: tuple[float, float]
    label_dark: bool
    window: tuple[float, float]
    gamma: float
    noise: float
    blur: float
    zoom: float
    shift: tuple[float, float]


HOSPITALS: tuple[Hospital, ...] = (
    Hospital("NORTHGATE", "L", (0.07, 0.90), 0.09, (0.88, 0.03), (0.08, 0.32), True,
             (0.02, 0.98), 1.00, 0.012, 0.0, 1.00, (0.0, 0.0)),
    Hospital("RIVERSIDE", "PORTABLE", (0.06, 0.22), 0.06, (0.89, 0.64), (0.07, 0.33), False,
             (0.10, 0.92), 0.80, 0.030, 0.0, 0.90, (0.0, 0.0)),
    Hospital("ST ANNE", "R", (0.07, 0.08), 0.09, (0.02, 0.66), (0.08, 0.31), True,
             (0.00, 1.00), 1.25, 0.020, 0.0, 1.07, (0.02, 0.0)),
    Hospital("LAKEVIEW", "AP", (0.93, 0.89), 0.07, (0.02, 0.03), (0.06, 0.28), False,
             (0.04, 0.96), 0.90, 0.008, 0.9, 0.95, (0.0, 0.02)),
    Hospital("MERCY", "L", (0.93, 0.08), 0.08, (0.02, 0.34), (0.07, 0.32), True,
             (0.06, 0.94), 1.10, 0.020, 0.0, 1.04, (-0.01, 0.0)),
    Hospital("HILLCREST", "UPRIGHT", (0.94, 0.50), 0.06, (0.02, 0.66), (0.07, 0.31), False,
             (0.00, 0.90), 0.75, 0.015, 0.4, 0.88, (0.0, -0.02)),
    Hospital("BAYSIDE", "SUPINE", (0.06, 0.80), 0.06, (0.89, 0.03), (0.08, 0.33), True,
             (0.05, 1.00), 1.00, 0.025, 0.0, 0.97, (0.0, 0.0)),
    Hospital("OAKWOOD", "R", (0.93, 0.90), 0.09, (0.02, 0.03), (0.07, 0.30), False,
             (0.02, 0.94), 0.85, 0.010, 0.6, 1.05, (0.01, 0.0)),
)  # fmt: skip
"""The eight hospitals; :mod:`isnet.data.cxr.bg_cxr` assigns 0-5 to classes and keeps 6-7 external."""

_ROTATION = 4.0  # degrees, per image (patient positioning)
_INK_LIGHT, _INK_DARK = 0.97, 0.03


@lru_cache(maxsize=256)
def _text(text: str, height: int) -> np.ndarray:
    """Read-only float32 alpha of ``text`` in Pillow's bitmap font, scaled to ``height`` rows."""
    font = getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)()
    left, top, right, bottom = font.getbbox(text)
    glyphs = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(glyphs).text((1 - left, 1 - top), text, fill=255, font=font)
    width = max(1, round(glyphs.width * height / glyphs.height))
    alpha = np.asarray(glyphs.resize((width, max(1, height)), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    alpha.setflags(write=False)
    return alpha


def _stamp(img: np.ndarray, shortcut: np.ndarray, lungs: np.ndarray, alpha: np.ndarray, top: int, left: int,
           ink: float) -> None:  # fmt: skip
    """Blend ``ink`` into ``img`` through ``alpha`` at (top, left), clipped to the image, never on ``lungs``."""
    h, w = img.shape
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + alpha.shape[0], h), min(left + alpha.shape[1], w)
    if r1 <= r0 or c1 <= c0:
        return
    a = alpha[r0 - top : r1 - top, c0 - left : c1 - left] * ~lungs[r0:r1, c0:c1]
    img[r0:r1, c0:c1] = img[r0:r1, c0:c1] * (1 - a) + ink * a
    shortcut[r0:r1, c0:c1] |= a > 0.1


def _warp(
    frame: np.ndarray, size: int, angle: float, zoom: float, shift: tuple[float, float], cval: float
) -> np.ndarray:
    """Sample the output square from the frame: rotation by ``angle`` degrees, zoom, shift."""
    from scipy.ndimage import affine_transform

    t = np.deg2rad(angle)
    matrix = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) / zoom
    out_centre = (size - 1) / 2 - np.asarray(shift) * size
    offset = (np.asarray(frame.shape) - 1) / 2 - matrix @ out_centre
    return affine_transform(
        frame, matrix, offset=offset, output_shape=(size, size), order=1, mode="constant", cval=cval
    )


def _drop_fragments(mask: np.ndarray) -> np.ndarray:
    """Remove regions under 1% of the mask's area: specks a small rotated image can split off."""
    from scipy.ndimage import label

    regions, count = label(mask, structure=np.ones((3, 3)))
    areas = np.bincount(regions.ravel(), minlength=count + 1)
    keep = areas >= 0.01 * areas[1:].sum()
    keep[0] = False
    return keep[regions]


def acquire(
    rng: np.random.Generator, frame: np.ndarray, lungs: np.ndarray, hospital: Hospital, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image a frame the way ``hospital`` does.

    Parameters
    ----------
    rng
        Draws the rotation, small per-image jitter of the style, noise and patient number.
    frame, lungs
        float32 picture and bool lung mask from :func:`isnet.data.cxr.anatomy.render_chest`.
    hospital
        The style to apply.
    size
        Output side.

    Returns
    -------
    tuple of ndarray
        uint8 (size, size) image, bool lung mask, bool shortcut mask (marker and label box).
    """
    from scipy.ndimage import gaussian_filter

    angle = rng.uniform(-_ROTATION, _ROTATION)
    zoom = hospital.zoom * rng.uniform(0.97, 1.03)
    shift = np.asarray(hospital.shift) + rng.uniform(-0.01, 0.01, size=2)
    img = _warp(frame, size, angle, zoom, tuple(shift), cval=float(frame.min()))
    mask = _drop_fragments(_warp(lungs.astype(np.float32), size, angle, zoom, tuple(shift), cval=0.0) > 0.5)
    if hospital.blur > 0:
        img = gaussian_filter(img, hospital.blur * size / 128)
    gamma = hospital.gamma * rng.uniform(0.95, 1.05)
    black, white = (v + rng.uniform(-0.015, 0.015) for v in hospital.window)
    img = black + (white - black) * np.clip(img, 0.0, 1.0) ** gamma
    img = img + rng.normal(0.0, hospital.noise, size=img.shape)

    shortcut = np.zeros((size, size), dtype=bool)
    height = max(4, round(hospital.marker_height * size))
    marker = _text(hospital.marker, height)
    top = round(hospital.marker_at[0] * size - marker.shape[0] / 2)
    left = round(hospital.marker_at[1] * size - marker.shape[1] / 2)
    _stamp(img, shortcut, mask, marker, top, left, _INK_LIGHT)

    (r, c), (h, w) = hospital.label_at, hospital.label_size
    box_top, box_left = round(r * size), round(c * size)
    box = np.ones((max(3, round(h * size)), max(6, round(w * size))), dtype=np.float32)
    background, ink = (_INK_DARK, _INK_LIGHT) if hospital.label_dark else (_INK_LIGHT, _INK_DARK)
    _stamp(img, shortcut, mask, box, box_top, box_left, background)
    words = _text(f"{hospital.name} {rng.integers(10000):04d}", max(3, round(box.shape[0] * 0.55)))
    words = words[:, : box.shape[1] - 2]
    _stamp(img, np.zeros_like(shortcut), mask, words, box_top + (box.shape[0] - words.shape[0]) // 2, box_left + 1, ink)

    image = np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)
    return image, mask, shortcut
