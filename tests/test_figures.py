"""Tests for isnet.figures: heatmap rendering, result plots, PNG export and the HTML report."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

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


def texts_outside(fig: Figure) -> list[str]:
    """The texts of ``fig``, laid out as saved, that reach past its edges (cut off in the PNG): titles, labels,
    legends and bar labels by their text, tick labels (only the drawn ones) as ``"x ticks"`` / ``"y ticks"``."""
    fig.canvas.draw()
    renderer, frame = fig.canvas.get_renderer(), fig.bbox.padded(0.5)

    def inside(box) -> bool:
        return box is None or (frame.contains(*box.p0) and frame.contains(*box.p1))

    every = [(ax, name, axis) for ax in fig.findobj(Axes) for name, axis in (("x ticks", ax.xaxis), ("y ticks", ax.yaxis))]
    tick_labels = {id(label) for _, _, axis in every for label in axis.get_ticklabels(which="both")}
    axes = [(name, axis) for ax, name, axis in every if ax.axison and axis.get_visible()]
    texts = [text for text in fig.findobj(Text)
             if text.get_visible() and text.get_text().strip() and id(text) not in tick_labels]
    return ([text.get_text() for text in texts if not inside(text.get_window_extent(renderer))]
            + [name for name, axis in axes if not inside(axis.get_tightbbox(renderer))])


def long_pre_lines(page: str, limit: int = 100) -> list[str]:
    """Lines of preformatted blocks (``<pre>``) of an HTML page longer than ``limit`` characters: a browser shows
    them running off the right edge."""
    blocks = re.findall(r"<pre\b[^>]*>(.*?)</pre>", page, flags=re.S | re.I)
    return [line for block in blocks for line in html.unescape(block).splitlines() if len(line) > limit]


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


REPORT_TITLES = ("Share of |relevance| outside the mask (biased test set)",
                 "Training time per method (fit, incl. calibration and validation)",
                 "Share of |relevance| on the marker and label box (biased test set)")


@pytest.mark.parametrize("title", REPORT_TITLES)
def test_long_titles_are_wrapped_inside_the_figure(title: str) -> None:
    for n in (1, 4):
        methods = [f"method {i}" for i in range(n)]
        figures = [bar_plot({m: 10.0 * (i + 1) for i, m in enumerate(methods)}, ylabel="seconds", title=title),
                   accuracy_bars({m: {"biased": 0.9, "unbiased": 0.5, "deceiving": 0.1} for m in methods},
                                 title=title),
                   line_plot(range(n), {"a": [1.0] * n}, xlabel="x", ylabel="y", title=title)]
        for fig in figures:
            assert texts_outside(fig) == [], (n, fig.axes[0].get_title())
            assert " ".join(fig.axes[0].get_title().split()) == title  # wrapped, every word kept
    wide = bar_plot({f"m{i}": 1.0 for i in range(12)}, ylabel="s", title=REPORT_TITLES[1])
    assert wide.axes[0].get_title() == REPORT_TITLES[1]  # one line where it fits


def test_crowded_method_names_are_slanted_apart() -> None:
    names = ["standard", "standard+swap", "selective+swap", "stochastic+ds+swap", "masked", "masked@unmasked"]
    for n in (2, 4, 6):
        for fig in (bar_plot(dict.fromkeys(names[:n], 1.0), ylabel="s"),
                    accuracy_bars({m: {"biased": 0.5} for m in names[:n]})):
            ax = fig.axes[0]
            fig.canvas.draw()
            labels = ax.get_xticklabels()
            boxes = [label.get_window_extent() for label in labels]
            ticks = ax.transData.transform([(x, 0.0) for x in ax.get_xticks()])[:, 0]
            if labels[0].get_rotation() == 0:  # upright: side by side
                assert all(left.x1 < right.x0 for left, right in zip(boxes, boxes[1:])), (n, names[:n])
            else:  # slanted by 30 degrees: parallel lines whose distance is the tick spacing times sin(30)
                assert labels[0].get_rotation() == 30 and n >= 4
                height = max(label.get_fontsize() for label in labels) * fig.dpi / 72
                assert min(np.diff(ticks)) * 0.5 > height
            assert texts_outside(fig) == [], n
    assert bar_plot({"a": 1.0, "b": 2.0}, ylabel="s").axes[0].get_xticklabels()[0].get_rotation() == 0


def test_texts_outside_finds_a_cut_off_title() -> None:
    fig = Figure(figsize=(3, 2), layout="constrained")
    FigureCanvasAgg(fig)
    fig.add_subplot().set_title(REPORT_TITLES[1])
    assert texts_outside(fig) == [REPORT_TITLES[1]]
    assert long_pre_lines("<pre>short\n" + "x" * 101 + "</pre><p>" + "y" * 300 + "</p>") == ["x" * 101]


def test_write_html_report_is_self_contained_and_escaped(tmp_path: Path) -> None:
    figure = bar_plot({"a": 1.0}, ylabel="y")
    long_line = "a sentence that a browser must wrap " * 10
    path = write_html_report(
        tmp_path / "out" / "report.html",
        "Report <1>",
        [
            ("Figures", [figure, "A note with <script>alert(1)</script> inside."]),
            ("Text", ["Two lines\nof one paragraph.\n\nA second <b>one</b>.", ["item <1>", long_line],
                      ["lr = 0.001", "epochs = 3"]]),
            ("Tables", [[{"model": "std", "acc": 0.91234567}, {"model": "<i>", "extra": None}], [],
                        [{"method": "a", "acc": "97.2 ± 0.4", "ci": "0.373 [0.310, 0.437]",
                          "verdict": "relies on the background (1/2 seeds)"}]]),
        ],
    )
    assert path.is_file() and list(path.parent.iterdir()) == [path]
    text = path.read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") == 1
    assert 'src="http' not in text and "href=" not in text
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<title>Report &lt;1&gt;</title>" in text
    assert "<p>Two lines of one paragraph.</p>\n<p>A second &lt;b&gt;one&lt;/b&gt;.</p>" in text
    assert f"<ul>\n<li>item &lt;1&gt;</li>\n<li>{long_line}</li>\n</ul>" in text
    assert '<ul class="short">\n<li>lr = 0.001</li>\n<li>epochs = 3</li>\n</ul>' in text  # set in columns
    assert "<pre" not in text and "(no rows)" in text
    assert "<th>model</th><th>acc</th><th>extra</th>" in text
    assert "<td>0.9123</td>" in text and "<td>&lt;i&gt;</td>" in text
    # words flush left, numbers (with a spread or an interval) flush right
    assert '<td class="words">relies on the background (1/2 seeds)</td>' in text
    assert "<td>97.2 ± 0.4</td>" in text and "<td>0.373 [0.310, 0.437]</td>" in text
    assert "td.words { text-align: left; }" in text
    with pytest.raises(TypeError):
        write_html_report(tmp_path / "bad.html", "x", [("s", [object()])])
