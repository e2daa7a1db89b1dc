"""Tests for isnet.figures: heatmap rendering, result plots, PNG export and the HTML report."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from isnet.report_html import write_html_report
from isnet.figures import (
    accuracy_bars,
    bar_plot,
    figure_to_png,
    heatmap_grid,
    line_plot,
    plot_heatmap,
    save_figure,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_heatmap_sums_channels_with_symmetric_norm() -> None:
    heatmap = torch.zeros(3, 5, 6)
    heatmap[0, 1, 1] = 2.0
    heatmap[1, 1, 1] = 1.0
    heatmap[2, 4, 5] = -0.5
    ax = plot_heatmap(heatmap, title="R", colorbar=True)
    assert isinstance(ax, Axes) and isinstance(ax.figure, Figure)
    shown = ax.get_images()[-1]
    assert shown.norm.vmin == pytest.approx(-3.0) and shown.norm.vmax == pytest.approx(3.0)
    np.testing.assert_allclose(np.asarray(shown.get_array()), heatmap.sum(0).numpy())
    assert ax.get_title() == "R"
    assert figure_to_png(ax.figure).startswith(PNG_MAGIC)


def test_plot_heatmap_all_zero_map_renders() -> None:
    ax = plot_heatmap(np.zeros((4, 4)))
    norm = ax.get_images()[-1].norm
    assert norm.vmin == -norm.vmax and norm.vmax > 0
    assert figure_to_png(ax.figure).startswith(PNG_MAGIC)


@pytest.mark.parametrize(
    "image",
    [torch.rand(3, 8, 8), (np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8), torch.rand(1, 8, 8)],
)
def test_plot_heatmap_overlays_image_on_given_axes(image: torch.Tensor | np.ndarray) -> None:
    fig = Figure()
    ax = fig.add_subplot()
    returned = plot_heatmap(torch.randn(8, 8), image, ax=ax, overlay_alpha=0.4)
    assert returned is ax
    background, overlay = ax.get_images()
    gray = np.asarray(background.get_array())
    assert gray.shape == (8, 8) and gray.min() >= 0.0 and gray.max() <= 1.0
    assert overlay.get_alpha() == pytest.approx(0.4)
    assert overlay.norm.vmin == pytest.approx(-overlay.norm.vmax)


def test_figures_render_in_notebooks() -> None:
    ax = plot_heatmap(torch.randn(4, 4))
    assert ax.figure._repr_png_().startswith(PNG_MAGIC)


def test_heatmap_grid_has_one_row_per_method_plus_images() -> None:
    images = torch.rand(3, 3, 8, 8)
    heatmaps = {"LRP": torch.randn(3, 3, 8, 8), "Grad-CAM": torch.randn(3, 8, 8)}
    fig = heatmap_grid(images, heatmaps, col_titles=["a", "b", "c"])
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3 * 3
    rows = {ax.get_subplotspec().rowspan.start for ax in fig.axes}
    assert rows == {0, 1, 2}
    assert [fig.axes[i * 3].get_ylabel() for i in range(3)] == ["image", "LRP", "Grad-CAM"]
    assert figure_to_png(fig).startswith(PNG_MAGIC)
    with pytest.raises(ValueError):
        heatmap_grid(images, heatmaps, row_titles=["only one"])
    with pytest.raises(ValueError):
        heatmap_grid(images, {"short": torch.randn(2, 8, 8)})


def test_accuracy_bars_groups_and_labels() -> None:
    results = {
        "standard": {"biased": 1.0, "unbiased": 0.22, "deceiving": 0.002},
        "ISNet": {"biased": 0.95, "unbiased": 0.9},
    }
    errors = {"standard": {"biased": 0.0, "unbiased": 0.03, "deceiving": 0.001}}
    fig = accuracy_bars(results, errors=errors, title="digits")
    ax = fig.axes[0]
    assert ax.get_ylim() == pytest.approx((0.0, 105.0))
    heights = sorted(p.get_height() for p in ax.patches if not math.isnan(p.get_height()))
    assert heights == pytest.approx(sorted([100.0, 22.0, 0.2, 95.0, 90.0]))
    texts = {t.get_text() for t in ax.texts}
    assert {"100.0", "22.0", "0.2", "95.0", "90.0"} <= texts
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["biased", "unbiased", "deceiving"]
    assert figure_to_png(fig).startswith(PNG_MAGIC)


def test_line_plot_handles_missing_points_log_axes_and_dashes() -> None:
    fig = line_plot(
        [2, 4, 8, 16],
        {"original": [0.1, 0.2, None, float("nan")], "selective": [0.05, 0.05, 0.06, 0.06]},
        xlabel="classes",
        ylabel="s / step",
        logx=True,
        logy=True,
        dashed={"original"},
    )
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    original, selective = ax.get_lines()
    assert original.get_linestyle() == "--" and selective.get_linestyle() == "-"
    assert np.isnan(original.get_ydata()[2:]).all()
    assert figure_to_png(fig).startswith(PNG_MAGIC)
    with pytest.raises(ValueError):
        line_plot([1, 2], {"bad": [1.0]}, xlabel="x", ylabel="y")


def test_bar_plot_and_save_figure(tmp_path: Path) -> None:
    fig = bar_plot({"standard": 12.0, "ISNet": 30.5}, ylabel="minutes", title="training time")
    assert [p.get_height() for p in fig.axes[0].patches] == [12.0, 30.5]
    target = save_figure(fig, tmp_path / "sub" / "time.png")
    assert target.read_bytes().startswith(PNG_MAGIC)
    assert save_figure(fig, tmp_path / "time.svg").read_text().lstrip().startswith("<?xml")


def test_write_html_report_is_self_contained_and_escaped(tmp_path: Path) -> None:
    figure = bar_plot({"a": 1.0}, ylabel="y")
    table_text = "| model | acc |\n|---|---|\n| <b>x</b> | 0.9 |"
    path = write_html_report(
        tmp_path / "out" / "report.html",
        "Report <1>",
        [
            ("Figures", [figure, "A note with <script>alert(1)</script> inside."]),
            ("Tables", [table_text, [{"model": "std", "acc": 0.91234567}, {"model": "<i>", "extra": None}], []]),
        ],
    )
    assert path.is_file() and list(path.parent.iterdir()) == [path]
    text = path.read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") == 1
    assert 'src="http' not in text and "href=" not in text
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<title>Report &lt;1&gt;</title>" in text
    assert "<pre>| model | acc |" in text and "&lt;b&gt;x&lt;/b&gt;" in text
    assert "<th>model</th><th>acc</th><th>extra</th>" in text
    assert "<td>0.9123</td>" in text and "<td>&lt;i&gt;</td>" in text
    with pytest.raises(TypeError):
        write_html_report(tmp_path / "bad.html", "x", [("s", [object()])])
