"""Pictures of BG-CXR: the hospitals, the masks, the test sets and the classes.

Used for ``docs/images/bg-cxr-*.png`` and meant for reports. matplotlib's
object-oriented API on an Agg canvas (no pyplot state), like :mod:`isnet.figures`.
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .bg_cxr import CLASSES, EXTERNAL_HOSPITALS, HOSPITALS, generate, hospital_class
from .anatomy import render_chest
from .hospitals import acquire
from .lungs import lung_catalogue, lung_pools

__all__ = ["classes_figure", "examples_figure"]

_SHORT = MappingProxyType({"consolidation": "consol.", "ground_glass": "ground glass", "normal": "normal"})


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it."""
    inner = mask.copy()
    inner[1:-1, 1:-1] &= mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    return mask & ~inner


def _overlay(image: np.ndarray, lungs: np.ndarray, shortcut: np.ndarray) -> np.ndarray:
    """RGB image with the lung outline in cyan and the shortcut pixels tinted red."""
    rgb = np.repeat(image[..., None], 3, axis=-1).astype(np.float32) / 255
    rgb[shortcut] = 0.45 * rgb[shortcut] + 0.55 * np.array([1.0, 0.1, 0.1])
    rgb[_outline(lungs)] = (0.1, 0.9, 1.0)
    return rgb


def examples_figure(seed: int = 0, image_size: int = 128, per_row: int = 8) -> Figure:
    """Examples of BG-CXR.

    Rows: one test chest imaged at each of the eight hospitals (the class a training
    hospital is associated with, or "external"); the same images with the lung mask
    outlined and the shortcut mask (marker and label box) in red; then ``per_row`` images
    of each test set (``biased``, ``external``, ``deceiving``), titled class / hospital.

    Parameters
    ----------
    seed, image_size
        Passed to :func:`isnet.data.cxr.bg_cxr.generate`.
    per_row
        Images per row (at least the number of hospitals, 8).

    Returns
    -------
    Figure
        A matplotlib figure on an Agg canvas.
    """
    per_row = max(per_row, len(HOSPITALS))
    crop = lung_catalogue().crops[lung_pools(seed)["test"][0]]
    chest_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7,)))
    frame, lungs = render_chest(chest_rng, crop, image_size, "consolidation")
    styled = []
    for h, hospital in enumerate(HOSPITALS):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(8, h)))
        styled.append(acquire(rng, frame, lungs, hospital, image_size))
    rows: list[tuple[str, list[tuple[np.ndarray, str]]]] = []
    names = [
        f"{h.name}\n" + ("external" if k in EXTERNAL_HOSPITALS else _SHORT[CLASSES[hospital_class(k)]])
        for k, h in enumerate(HOSPITALS)
    ]
    rows.append(("one chest (consolidation), 8 hospitals", [(img, n) for (img, _, _), n in zip(styled, names)]))
    rows.append(("lungs (cyan) and shortcut (red) masks", [(_overlay(*s), "") for s in styled]))
    for bias in ("biased", "external", "deceiving"):
        d = generate(per_row, split="test", seed=seed, bias=bias, image_size=image_size)
        titles = [f"{_SHORT[CLASSES[y]]} / {HOSPITALS[h].name}" for y, h in zip(d.labels, d.hospitals)]
        rows.append((f"test/{bias}", list(zip(d.images, titles))))

    fig = Figure(figsize=(1.25 * per_row, 1.55 * len(rows)), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subfigures(len(rows), 1)
    for sub, (heading, panels) in zip(grid, rows):
        sub.suptitle(heading, fontsize=8, fontweight="bold")
        axes = sub.subplots(1, per_row)
        for ax, (img, title) in zip(axes, panels):
            ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(title, fontsize=5.5, pad=2)
            ax.set_axis_off()
    return fig


def classes_figure(seed: int = 0, image_size: int = 224, hospital: int = 0) -> Figure:
    """One chest with each class's finding, and what the finding adds.

    The anatomy is drawn from the same random stream for the three classes (the finding is
    drawn last), so the top row differs only inside the lungs; the bottom row shows each
    image minus the ``normal`` one.

    Parameters
    ----------
    seed, image_size
        Chest and lung mask (first test-pool mask) choice, and output side.
    hospital
        Index into :data:`~isnet.data.cxr.hospitals.HOSPITALS` used to image the chest.

    Returns
    -------
    Figure
    """
    crop = lung_catalogue().crops[lung_pools(seed)["test"][1]]
    images = {}
    for label in CLASSES:
        chest_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(9,)))
        frame, lungs = render_chest(chest_rng, crop, image_size, label)
        style_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(10,)))
        images[label] = acquire(style_rng, frame, lungs, HOSPITALS[hospital], image_size)[0].astype(np.float32)
    fig = Figure(figsize=(6.0, 4.3), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(CLASSES))
    order = ("normal", "ground_glass", "consolidation")
    for col, label in enumerate(order):
        axes[0, col].imshow(images[label], cmap="gray", vmin=0, vmax=255)
        axes[0, col].set_title(label.replace("_", " "), fontsize=8)
        axes[1, col].imshow(images[label] - images["normal"], cmap="magma", vmin=0, vmax=60)
        axes[1, col].set_title(f"{label.replace('_', ' ')} minus normal", fontsize=7)
    for ax in axes.ravel():
        ax.set_axis_off()
    return fig
