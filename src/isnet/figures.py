"""Figures for heatmaps and experiment results (the HTML report that embeds them: :mod:`isnet.report_html`).

Everything uses matplotlib's object-oriented API on :class:`~matplotlib.figure.Figure`
objects with an Agg canvas: no pyplot state, safe in threads and without a display.
Figures made here also define ``_repr_png_``, so a notebook shows them when they are the
value of a cell, whatever matplotlib backend the kernel uses.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from torch import Tensor

from .outputs import write_atomic

__all__ = [
    "accuracy_bars",
    "bar_plot",
    "figure_to_png",
    "heatmap_grid",
    "image_grid",
    "line_plot",
    "plot_heatmap",
    "save_figure",
]

_GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114])


class _PngFigure(Figure):
    """A :class:`Figure` on an Agg canvas that renders itself as PNG in notebooks."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        FigureCanvasAgg(self)

    def _repr_png_(self) -> bytes:
        return figure_to_png(self)


def _as_numpy(array: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(array, Tensor):
        return array.detach().cpu().float().numpy()
    return np.asarray(array)


def _heatmap_2d(heatmap: Tensor | np.ndarray) -> np.ndarray:
    values = _as_numpy(heatmap).astype(np.float64)
    if values.ndim == 3:
        values = values.sum(axis=0)
    if values.ndim != 2:
        raise ValueError(f"heatmap must have shape (C, H, W) or (H, W), got {values.shape}")
    return values


def _image_array(image: Tensor | np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3|4) floats in [0, 1] from (C, H, W), (H, W, C) (uint8 or float) or (H, W)."""
    pixels = _as_numpy(image)
    scale = 255.0 if pixels.dtype == np.uint8 else 1.0
    pixels = pixels.astype(np.float64) / scale
    if pixels.ndim == 3:
        channels_last = pixels.shape[-1] in (1, 3, 4) and pixels.shape[0] not in (1, 3, 4)
        if not channels_last:
            pixels = np.moveaxis(pixels, 0, -1)
        if pixels.shape[-1] == 1:
            pixels = pixels[..., 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[-1] not in (3, 4)):
        raise ValueError(f"image must have shape (C, H, W), (H, W, C) or (H, W), got {pixels.shape}")
    return np.clip(pixels, 0.0, 1.0)


def _grayscale(image: Tensor | np.ndarray) -> np.ndarray:
    pixels = _image_array(image)
    return pixels if pixels.ndim == 2 else pixels[..., :3] @ _GRAY_WEIGHTS


def _new_figure(width: float, height: float) -> Figure:
    return _PngFigure(figsize=(width, height), layout="constrained")


def _slant_crowded_ticks(ax: Axes) -> None:
    """Slant the x tick labels (30 degrees, right-aligned to their tick) when, laid out, neighbours overlap."""
    ax.get_figure().canvas.draw()  # runs the constrained layout: the labels are where they will be drawn
    boxes = [label.get_window_extent() for label in ax.get_xticklabels() if label.get_text()]
    if any(left.x1 + 2 > right.x0 for left, right in zip(boxes, boxes[1:])):
        ax.tick_params(axis="x", labelrotation=30)
        for label in ax.get_xticklabels():
            label.set(horizontalalignment="right", rotation_mode="anchor")


def _set_title(ax: Axes, title: str) -> None:
    """Give a figure's only axes its title, wrapped onto more lines until, laid out, it fits in the figure.

    The title is centred on the axes, which the layout shifts by the width of the y label or a
    legend, so its room is twice the distance from its centre to the nearer figure edge.
    """
    text = ax.set_title(title)
    fig, width = ax.get_figure(), len(title)
    for _ in range(10):
        fig.canvas.draw()  # runs the constrained layout: the title is where it will be drawn
        box, frame = text.get_window_extent(), fig.bbox
        centre = (box.x0 + box.x1) / 2
        room = 0.97 * 2 * min(centre - frame.x0, frame.x1 - centre)
        if box.width <= room or width <= 12:
            return
        width = max(12, min(width - 1, int(width * room / box.width)))
        text.set_text(textwrap.fill(title, width))


def plot_heatmap(
    heatmap: Tensor | np.ndarray,
    image: Tensor | np.ndarray | None = None,
    *,
    ax: Axes | None = None,
    overlay_alpha: float = 0.6,
    cmap: str = "bwr",
    title: str | None = None,
    colorbar: bool = False,
) -> Axes:
    """Draw an LRP heatmap with a diverging colour map centred at zero.

    Parameters
    ----------
    heatmap : Tensor or ndarray
        (C, H, W) relevance, summed over channels, or (H, W).
    image : Tensor or ndarray, optional
        (C, H, W) floats in [0, 1] or (H, W, C) uint8, shown in grayscale under the heatmap,
        which is then drawn with transparency ``overlay_alpha``; stretched to the heatmap's extent.
    ax : Axes, optional
        Where to draw; a new figure (``ax.figure``) is created when omitted.
    overlay_alpha : float
        Opacity of the heatmap over the image.
    cmap : str
        Diverging colour map; limits are symmetric, +-max|R| (+-1 for an all-zero map).
    title : str, optional
        Axes title.
    colorbar : bool
        Add a colour bar.

    Returns
    -------
    Axes
        The axes drawn on.
    """
    values = _heatmap_2d(heatmap)
    limit = float(np.abs(values).max(initial=0.0))
    if not math.isfinite(limit) or limit == 0.0:
        limit = 1.0
    if ax is None:
        ax = _new_figure(4.0, 4.0).add_subplot()
    height, width = values.shape
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)
    alpha = 1.0
    if image is not None:
        ax.imshow(_grayscale(image), cmap="gray", vmin=0.0, vmax=1.0, extent=extent, interpolation="nearest")
        alpha = overlay_alpha
    shown = ax.imshow(
        values, cmap=cmap, vmin=-limit, vmax=limit, alpha=alpha, extent=extent, interpolation="nearest"
    )
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    return ax


def heatmap_grid(
    images: Tensor | np.ndarray,
    heatmaps: Mapping[str, Tensor | np.ndarray],
    *,
    row_titles: Sequence[str] | None = None,
    col_titles: Sequence[str] | None = None,
) -> Figure:
    """A "methods x examples" figure: the images in the first row, then one row per method.

    Parameters
    ----------
    images : Tensor or ndarray
        (N, C, H, W) images in [0, 1] (or (N, H, W, C) uint8); columns are the N samples.
    heatmaps : mapping of str to Tensor or ndarray
        Per method, (N, C, H, W) or (N, H, W) heatmaps, each drawn with its own symmetric scale.
    row_titles : sequence of str, optional
        1 + len(heatmaps) labels; default ``"image"`` and the method names.
    col_titles : sequence of str, optional
        N titles for the columns.

    Returns
    -------
    Figure
    """
    count = len(images)
    for name, maps in heatmaps.items():
        if len(maps) != count:
            raise ValueError(f"method {name!r} has {len(maps)} heatmaps for {count} images")
    rows = 1 + len(heatmaps)
    labels = list(row_titles) if row_titles is not None else ["image", *heatmaps]
    if len(labels) != rows:
        raise ValueError(f"expected {rows} row titles, got {len(labels)}")
    if col_titles is not None and len(col_titles) != count:
        raise ValueError(f"expected {count} column titles, got {len(col_titles)}")
    fig = _new_figure(1.6 * count + 0.6, 1.6 * rows)
    axes = fig.subplots(rows, count, squeeze=False)
    for column in range(count):
        _show_image(axes[0, column], images[column])
        for row, maps in enumerate(heatmaps.values(), start=1):
            plot_heatmap(maps[column], ax=axes[row, column])
        if col_titles is not None:
            axes[0, column].set_title(col_titles[column])
    for row, label in enumerate(labels):
        axes[row, 0].set_ylabel(label)
    return fig


def _show_image(ax: Axes, image: Tensor | np.ndarray) -> None:
    """Draw an image (see :func:`_image_array`) without ticks, gray when it has one channel."""
    pixels = _image_array(image)
    ax.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def image_grid(rows: Mapping[str, Tensor | np.ndarray], titles: Mapping[str, Sequence[str]] | None = None) -> Figure:
    """Images in a grid: one row per entry of ``rows``, labelled with its key, the same N columns in each.

    Parameters
    ----------
    rows : mapping of str to Tensor or ndarray
        Per row, (N, C, H, W) images in [0, 1] (or (N, H, W, C) uint8), e.g. an image and its
        counterfactuals.
    titles : mapping of str to sequence of str, optional
        Per row, N cell titles (e.g. the prediction on each image).

    Returns
    -------
    Figure
    """
    counts = {name: len(images) for name, images in rows.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"every row needs the same number of images, got {counts}")
    count = next(iter(counts.values()))
    fig = _new_figure(1.6 * count + 0.6, 1.8 * len(rows))
    axes = fig.subplots(len(rows), count, squeeze=False)
    for row, (name, images) in enumerate(rows.items()):
        for column in range(count):
            _show_image(axes[row, column], images[column])
            if titles is not None:
                axes[row, column].set_title(titles[name][column], fontsize=7)
        axes[row, 0].set_ylabel(name)
    return fig


def accuracy_bars(
    results: Mapping[str, Mapping[str, float]],
    *,
    errors: Mapping[str, Mapping[str, float]] | None = None,
    title: str = "",
    scale: float = 100.0,
) -> Figure:
    """Grouped bars: one group per method, one bar per test set, labelled with its value.

    Parameters
    ----------
    results : mapping
        ``{method: {test set: accuracy}}``; test sets keep their order of first appearance and
        a missing one leaves a gap.
    errors : mapping, optional
        Same layout, standard deviations drawn as error bars.
    title : str
        Figure title.
    scale : float
        Factor that turns values into percent: 100 for fractions (as returned by
        :func:`isnet.metrics.classification_metrics`), 1 for values already in percent.

    Returns
    -------
    Figure
    """
    methods = list(results)
    test_sets = list(dict.fromkeys(name for scores in results.values() for name in scores))
    fig = _new_figure(max(4.0, 1.5 + 0.45 * len(methods) * max(1, len(test_sets))), 3.6)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(test_sets))
    positions = np.arange(len(methods), dtype=np.float64)
    for index, test_set in enumerate(test_sets):
        heights = [scale * results[m].get(test_set, math.nan) for m in methods]
        spread = None
        if errors is not None:
            spread = [scale * errors.get(m, {}).get(test_set, math.nan) for m in methods]
        offset = (index - (len(test_sets) - 1) / 2) * width
        bars = ax.bar(positions + offset, heights, width, yerr=spread, capsize=3, label=test_set)
        ax.bar_label(bars, labels=["" if math.isnan(h) else f"{h:.1f}" for h in heights], fontsize=7, padding=2)
    ax.set_xticks(positions, methods)
    ax.set_ylim(0.0, 105.0)
    ax.set_ylabel("accuracy (%)")
    if test_sets:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _slant_crowded_ticks(ax)
    if title:
        _set_title(ax, title)
    return fig


def line_plot(
    x: Sequence[float],
    series: Mapping[str, Sequence[float | None]],
    *,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    logy: bool = False,
    title: str = "",
    dashed: Collection[str] = (),
) -> Figure:
    """One line with markers per series, sharing ``x``.

    Parameters
    ----------
    x : sequence of float
        Abscissae.
    series : mapping of str to sequence
        Values at ``x``; None or NaN marks a skipped point (the line breaks there).
    xlabel, ylabel, title : str
        Labels.
    logx, logy : bool
        Logarithmic axes.
    dashed : collection of str
        Names of series drawn dashed, e.g. extrapolated ones.

    Returns
    -------
    Figure
    """
    abscissae = np.asarray(x, dtype=np.float64)
    fig = _new_figure(5.0, 3.6)
    ax = fig.add_subplot()
    for name, values in series.items():
        ordinates = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
        if ordinates.shape != abscissae.shape:
            raise ValueError(f"series {name!r} has {ordinates.size} values for {abscissae.size} x")
        ax.plot(abscissae, ordinates, marker="o", linestyle="--" if name in dashed else "-", label=name)
    if logx:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(abscissae, [f"{value:g}" for value in abscissae])
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        _set_title(ax, title)
    if series:
        ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return fig


def bar_plot(values: Mapping[str, float], *, ylabel: str, title: str = "") -> Figure:
    """One labelled bar per entry, e.g. training time per method."""
    fig = _new_figure(max(4.0, 0.9 * len(values) + 1.5), 3.6)
    ax = fig.add_subplot()
    heights = [float(v) for v in values.values()]
    bars = ax.bar(range(len(values)), heights)
    ax.bar_label(bars, labels=[f"{h:.3g}" for h in heights], fontsize=8, padding=2)
    ax.margins(y=0.1)  # room above the tallest bar for its label
    ax.set_xticks(range(len(values)), list(values))
    ax.set_ylabel(ylabel)
    _slant_crowded_ticks(ax)
    if title:
        _set_title(ax, title)
    return fig


def figure_to_png(fig: Figure, dpi: float = 100.0) -> bytes:
    """The figure rendered as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def save_figure(fig: Figure, path: str | Path, dpi: float = 150.0) -> Path:
    """Write the figure to ``path`` (format from the suffix, whole or not at all), creating parent folders."""
    target = Path(path)
    return write_atomic(target, lambda file: fig.savefig(file, format=target.suffix[1:] or None, dpi=dpi))
