"""The BG-CXR benchmark's outputs: tables, verdicts, figures and the HTML report.

The results dict has the shape of every benchmark's (:mod:`isnet.bench.report`, which writes
the files): ``methods -> test set -> metric`` (mean over seeds and
sample standard deviation), with :data:`~isnet.bench.cxr.presets.CXR_METRICS` on the four
test sets and the two composites (:data:`~isnet.bench.cxr.presets.CXR_PLACES`). ``results.md``
holds one table per metric and one of where the hospital is read; ``report.html`` adds pictures
of the data (every hospital and test set), of what the background swap does to a chest X-ray, and
heatmaps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from ...data.augment import swap_backgrounds
from ...data.cxr.figure import examples_figure
from ...figures import accuracy_bars, bar_plot
from ...tables import markdown_table, percent
from ..audit_columns import audit_markdown
from ..interface import Section
from ..presets import RAW_INPUT
from ..report import PAIRED_NOTE, comparisons, segmenter_note, swap_label
from .presets import ABNORMAL_CI, CXR_METRICS, CXR_PLACES, CXR_TEST_SETS, CxrBenchConfig

__all__ = ["figures", "findings", "format_table", "metric_rows", "place_rows", "result_sections", "results_markdown",
           "setup", "swap_figure"]

_HEADINGS = {
    "accuracy": "Accuracy (%)",
    "auroc": "AUROC, macro one-vs-rest over the three classes",
    "abnormal_auroc": "AUROC, abnormal (consolidation or ground glass) vs normal, scored by 1 - p(normal); "
                      "with one seed, the DeLong 95% interval in brackets",
    "background_relevance": "Relevance outside the lungs (% of absolute relevance)",
    "shortcut_relevance": "Relevance on the marker and label box (% of absolute relevance)",
}


def _cell(entry: Mapping[str, Any], metric: str) -> str:
    """A metric's mean (± sd over seeds): percent for shares, three decimals for AUROCs."""
    mean, std = entry[metric], entry[f"{metric}_std"]
    if "auroc" not in metric:
        return percent(mean, std)
    if mean is None:
        return "-"
    text = f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")
    intervals = entry.get(ABNORMAL_CI) if metric == "abnormal_auroc" else None
    if intervals and len(intervals) == 1:
        text += f" [{intervals[0][0]:.3f}, {intervals[0][1]:.3f}]"
    return text


def metric_rows(results: Mapping[str, Any], metric: str) -> list[dict[str, str]]:
    """One row per method: its swap and ``metric`` on every test set."""
    swaps = results["config"].get("background_swap", {})
    rows = []
    for method, sets in results["methods"].items():
        row = {"method": method, "swap": swap_label(swaps.get(method.removesuffix(RAW_INPUT)))}
        row.update({test: _cell(sets[test], metric) for test in CXR_TEST_SETS if test in sets})
        rows.append(row)
    return rows


_PLACE_COLUMNS = {"biased": "nowhere (biased)", CXR_PLACES[0]: "outside the lungs only",
                  CXR_PLACES[1]: "inside the lungs only", "deceiving": "everywhere (deceiving)"}
_PLACES_HEADING = "Another class's hospital outside or inside the lungs: accuracy (%) on the same patients"
_PLACES = (
    "Where the hospital is read. The same test patients with another class's hospital nowhere (the biased "
    "set), only outside the lungs (the biased set's lungs on the deceiving set's background, its own lungs "
    "filled from their surroundings), only inside the lungs (the deceiving set's lungs on the biased set's "
    "background) and everywhere (the deceiving set). The hospital's exposure, noise, blur and field of view "
    "reach inside the lungs, where no heatmap loss or background swap can remove them: a classifier that "
    "keeps its accuracy with the hospital outside and loses it with the hospital inside reads the hospital "
    "from the lungs, whatever its heatmaps show."
)


def _has_places(sets: Mapping[str, Any]) -> bool:
    """Whether a method's results include the composites (results written before them do not)."""
    return all(p in sets for p in CXR_PLACES)


def place_rows(results: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per method evaluated on the composites (:data:`CXR_PLACES`): its accuracy with another class's
    hospital nowhere, outside the lungs, inside them and everywhere; empty for results without them."""
    return [{"method": method, **{name: _cell(sets[test], "accuracy") for test, name in _PLACE_COLUMNS.items()}}
            for method, sets in results["methods"].items() if _has_places(sets)]


def format_table(results: Mapping[str, Any]) -> str:
    """A Markdown table of the accuracies, the abnormal AUROC on the deceiving set and the training time."""
    rows = [{"method": r["method"], "swap": r["swap"], **{f"acc {t} (%)": r[t] for t in CXR_TEST_SETS}}
            for r in metric_rows(results, "accuracy")]
    for row, (method, sets) in zip(rows, results["methods"].items()):
        row["abn. AUROC deceiving"] = _cell(sets["deceiving"], "abnormal_auroc")
        row["bg rel. biased (%)"] = _cell(sets["biased"], "background_relevance")
        t = results["train_time_s"].get(method)
        row["train time (s)"] = "" if t is None else f"{t:.0f}"
    return markdown_table(rows)


def findings(results: Mapping[str, Any]) -> list[str]:
    """One plain sentence per method, from its numbers (chance accuracy is 33%)."""
    lines = []
    for method, sets in results["methods"].items():
        acc = {t: sets[t]["accuracy"] for t in CXR_TEST_SETS}
        bg, shortcut = sets["biased"]["background_relevance"], sets["biased"]["shortcut_relevance"]
        facts = (", ".join(f"{t} {100 * a:.1f}%" for t, a in acc.items())
                 + f"; relevance outside the lungs {100 * bg:.1f}%, on marker and label box {100 * shortcut:.1f}%")
        drops = {t: acc["biased"] - acc[t] for t in CXR_TEST_SETS if t != "biased"}
        if max(acc.values()) < 0.4:
            verdict = "did not learn the task (accuracy below 40% on every test set)"
        elif drops["deceiving"] > 0.2:
            verdict = "reads the hospital (deceiving accuracy more than 20 points below biased)" + (
                ", although little relevance lies outside the lungs: the shortcut is in the lungs' exposure and "
                "noise, or hidden from the heatmap" if bg <= 0.1 else "")
        elif max(drops.values()) > 0.2:
            lost = " and ".join(t for t, d in drops.items() if d > 0.2)
            verdict = f"depends on the hospital (more than 20 points below biased on {lost})"
        elif max(drops.values()) > 0.1:
            verdict = "depends partly on the hospital (10 to 20 points below biased on some test set)"
        else:
            verdict = "is robust to the hospital on these test sets (within 10 points of its biased accuracy)"
        if _has_places(sets):
            outside, inside = (sets[p]["accuracy"] for p in CXR_PLACES)
            facts += (f"; with another class's hospital only outside the lungs {100 * outside:.1f}%, only inside "
                      f"them {100 * inside:.1f}%")
        lines.append(f"{method}: {verdict} ({facts}).")
    return lines


def swap_figure(images: Tensor, masks: Tensor, count: int = 6, seed: int = 0) -> Figure:
    """Chests before (top) and after (bottom) the training swap, which keeps each chest's lungs and
    gives it another chest's background (that chest's own lungs filled in from its anatomy)."""
    count = min(count, len(images))
    swapped = swap_backgrounds(images[:count], masks[:count], 1.0, generator=torch.Generator().manual_seed(seed))
    fig = Figure(figsize=(1.4 * count, 3.1), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, count, squeeze=False)
    for col in range(count):
        for row, batch in enumerate((images, swapped)):
            axes[row, col].imshow(batch[col, 0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            axes[row, col].set_axis_off()
    axes[0, 0].set_title("original", fontsize=8, loc="left")
    axes[1, 0].set_title("after the background swap", fontsize=8, loc="left")
    return fig


_READING = (
    "How to read this. A classifier that reads the hospital keeps its accuracy on the biased test set, falls "
    "towards chance (33%) on the unbiased and external sets and below chance on the deceiving set, whose "
    "hospital points to another class. The external set is the papers' out-of-distribution setting: hospitals "
    "never seen in training. The four sets show the same patients, so their differences come from the hospital "
    "alone. The shortcut relevance covers only the marker and label box; exposure, noise and field of view "
    "change every pixel, the lungs included, where neither relevance share sees them. Judge a method by its "
    "unbiased, external and deceiving accuracies first and by the relevance shares second, and compare it with "
    "the row of its own swap setting."
)
_SWAP = (
    "A background swap between X-rays pastes one patient's lungs into another's body. The recipient keeps its "
    "lungs and its label; outside them it shows the donor's chest, the donor's lungs filled in from the "
    "surrounding anatomy. Edges and rib lines no longer meet at the lung border, and the lungs keep the "
    "recipient hospital's exposure, blur, noise and zoom: the swap removes the marker, the label box and the "
    "body, not the hospital's imprint inside the lungs. Rows ending in +swap trained this way; standard+swap against "
    "standard measures what it does."
)
_AUROC = (
    "The macro AUROC averages the three one-vs-rest AUROCs; it has no DeLong interval (DeLong's method is for "
    "one binary AUROC). The abnormal-vs-normal AUROC is binary, so each run also gets its DeLong 95% interval "
    "(results.json: abnormal_auroc_ci95, one per seed): the uncertainty from the test images, where the spread "
    "over seeds is the uncertainty from training."
)


def setup(cfg: CxrBenchConfig, results: Mapping[str, Any]) -> str:
    """The report's setup paragraph."""
    c = results["config"]
    lrp = ", ".join(f"{k} = {v}" for k, v in c.get("measured_lrp", {}).items())
    return (
        f"BG-CXR: chest-X-ray-like {cfg.image_size}x{cfg.image_size} images drawn around real lung masks (from "
        "torchxrayvision), anatomy outside the lungs, the class (consolidation, ground glass, normal) only inside "
        "them; grayscale replicated to three channels. Eight fictional hospitals each add a marker, a label box, "
        "exposure, noise and a field of view. In training, validation and the biased test set "
        f"{100 * cfg.correlation:g}% of each class comes from the class's two hospitals. Test sets: biased (as in "
        "training), unbiased (the six training hospitals independent of the class), external (two hospitals never "
        f"seen in training) and deceiving (another class's hospitals). {cfg.n_train} training, {cfg.n_val} "
        f"validation and {cfg.n_test} images per test set (data seed {cfg.data_seed}; masks: the lungs). "
        f"Architecture {cfg.arch}; {c['train']['epochs']} epochs; {cfg.seeds} seed(s) per method (mean ± standard "
        "deviation over seeds where there are several). Every method is trained by isnet.training.fit, the pipeline "
        "behind `isnet train`; methods ending in +swap trained with the mask-based background swap, the others "
        "without; masked classifies images with everything outside the lungs zeroed. Relevance shares are measured "
        f"with the same LRP-Flex rule for every method ({lrp})."
    )


def figures(cfg: CxrBenchConfig, results: Mapping[str, Any], heatmaps: Figure | None,
            swap_sample: tuple[Tensor, Tensor]) -> dict[str, Figure]:
    """The accuracy, relevance and training time plots, the heatmaps when drawn, pictures of the data and of the
    background swap on ``swap_sample`` (test images and lung masks)."""
    methods = results["methods"]
    acc = {m: {t: s[t]["accuracy"] for t in CXR_TEST_SETS} for m, s in methods.items()}
    err = {m: {t: s[t]["accuracy_std"] or 0.0 for t in CXR_TEST_SETS} for m, s in methods.items()}
    several = any(s[t]["seeds"] > 1 for s in methods.values() for t in s)
    figures = {
        "accuracy": accuracy_bars(acc, errors=err if several else None, title="Accuracy per test set"),
        "background_relevance": bar_plot({m: 100 * s["biased"]["background_relevance"] for m, s in methods.items()},
                                         ylabel="relevance outside the lungs (%)",
                                         title="Share of |relevance| outside the lungs (biased test set)"),
        "shortcut_relevance": bar_plot({m: 100 * s["biased"]["shortcut_relevance"] for m, s in methods.items()},
                                       ylabel="relevance on marker and label (%)",
                                       title="Share of |relevance| on the marker and label box (biased test set)"),
        "train_time": bar_plot(results["train_time_s"], ylabel="seconds",
                               title="Training time per method (fit, incl. calibration and validation)"),
    }
    if heatmaps is not None:
        figures["heatmaps"] = heatmaps
    figures["examples"] = examples_figure(seed=cfg.data_seed, image_size=cfg.image_size)
    figures["swap"] = swap_figure(*swap_sample, seed=cfg.data_seed)
    return figures


def result_sections(cfg: CxrBenchConfig, results: Mapping[str, Any], figures: Mapping[str, Figure]) -> list[Section]:
    """The data, the swap, then accuracy, AUROC, where the hospital is read (when measured) and relevance tables."""
    places = place_rows(results)
    return [
        ("The data", ["Top: one test chest imaged at each hospital (the class a training hospital goes with, or "
                      "external), then its lung mask (cyan) and shortcut mask (red); below, test images from the "
                      "biased, external and deceiving sets (class / hospital).", figures["examples"]]),
        ("What the background swap does to an X-ray", [_SWAP, figures["swap"]]),
        ("Accuracy", [_READING, _HEADINGS["accuracy"] + ":", metric_rows(results, "accuracy"), figures["accuracy"]]),
        ("AUROC", [_AUROC, _HEADINGS["auroc"] + ":", metric_rows(results, "auroc"),
                   _HEADINGS["abnormal_auroc"] + ":", metric_rows(results, "abnormal_auroc")]),
        *([("Where the hospital is read", [_PLACES, _PLACES_HEADING + ":", places])] if places else []),
        ("Relevance", [_HEADINGS["background_relevance"] + ":", metric_rows(results, "background_relevance"),
                       _HEADINGS["shortcut_relevance"] + ":", metric_rows(results, "shortcut_relevance"),
                       figures["background_relevance"], figures["shortcut_relevance"]]),
    ]


def results_markdown(cfg: CxrBenchConfig, results: Mapping[str, Any]) -> str:
    """``results.md``: one table per metric (rows grouped by method, each with its swap), the background audit
    per method (:func:`isnet.bench.audit_columns.audit_markdown`), then the paired comparisons."""
    parts = [f"# {cfg.title}\n"]
    parts += [f"## {_HEADINGS[metric]}\n\n{markdown_table(metric_rows(results, metric))}\n" for metric in CXR_METRICS]
    places = place_rows(results)
    if places:
        parts.append(f"## {_PLACES_HEADING}\n\n{markdown_table(places)}\n")
    parts.append(audit_markdown(results))
    note = segmenter_note(results)
    if note:
        parts.append(note + "\n")
    paired = comparisons(results)
    if paired:
        parts.append(PAIRED_NOTE + "\n\n" + "\n".join(f"* {line}" for line in paired) + "\n")
    return "\n".join(parts)
