"""The BG-Digits benchmark's own report parts: its table, verdicts, figures and report sections.

The shared writer (:func:`isnet.bench.report.write_results`) puts them into ``results.md``
and ``report.html``: one table with the accuracy on every test set (the occluded one included),
the relevance shares and the training time, then the occlusion check (biased test images with
the patch painted over), read next to the relevance on the patch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from matplotlib.figure import Figure

from ...figures import accuracy_bars, bar_plot
from ...tables import markdown_table, percent
from ..audit_columns import audit_markdown
from ..interface import Section
from ..presets import RAW_INPUT
from ..report import PAIRED_NOTE, comparisons, segmenter_note, swap_label
from .presets import OCCLUDED, TEST_SETS, BiasBenchConfig

__all__ = ["figures", "findings", "format_table", "result_sections", "results_markdown", "setup"]


_SET_TITLES = {"biased": "biased", "unbiased": "unbiased", "deceiving": "deceiving", OCCLUDED: "patch occluded"}


def _table_rows(results: Mapping[str, Any]) -> list[dict[str, str]]:
    rows = []
    swaps = results["config"].get("background_swap", {})
    for method, sets in results["methods"].items():
        base = method.removesuffix(RAW_INPUT)
        row = {"method": method, "swap": swap_label(swaps.get(base))}
        for test in (*TEST_SETS, OCCLUDED):
            if test in sets:
                row[f"acc {_SET_TITLES[test]} (%)"] = percent(sets[test]["accuracy"], sets[test]["accuracy_std"])
        for test in TEST_SETS:
            if test in sets:
                row[f"bg rel. {test} (%)"] = percent(sets[test]["background_relevance"],
                                                    sets[test]["background_relevance_std"])
        if "biased" in sets:
            row["patch rel. biased (%)"] = percent(sets["biased"]["patch_relevance"],
                                                   sets["biased"]["patch_relevance_std"])
        t = results["train_time_s"].get(base)
        row["train time (s)"] = f"{t:.0f}" if t is not None and method == base else ""
        rows.append(row)
    return rows


def format_table(results: Mapping[str, Any]) -> str:
    """A Markdown table of a results dict (accuracy, relevance shares, training time)."""
    return markdown_table(_table_rows(results))


def findings(results: Mapping[str, Any]) -> list[str]:
    """One plain sentence per method, from its numbers."""
    lines = []
    for method, sets in results["methods"].items():
        b, u, d = (sets[t]["accuracy"] for t in TEST_SETS)
        occ = sets.get(OCCLUDED, {}).get("accuracy")
        bg = sets["biased"]["background_relevance"]
        patch = sets["biased"]["patch_relevance"]
        facts = (f"biased {100 * b:.1f}%, unbiased {100 * u:.1f}%, deceiving {100 * d:.1f}%"
                 + (f", patch occluded {100 * occ:.1f}%" if occ is not None else "")
                 + f"; background relevance {100 * bg:.1f}%"
                 + (f", on the patch {100 * patch:.1f}%" if patch is not None else ""))
        accuracies = [a for a in (b, u, d, occ) if a is not None]
        if max(accuracies) < 0.3:
            verdict = "did not learn the task (accuracy below 30% on every test set)"
        elif d < b - 0.2:
            if bg <= 0.1 or (patch is not None and patch <= 0.05):
                verdict = ("uses the shortcut although little relevance lies on the background or the patch: "
                           "it hides the shortcut from its heatmap")
            else:
                verdict = "learned the background shortcut (its heatmaps show it)"
        elif occ is not None and occ < b - 0.2:
            verdict = "depends on the patch (occluding it costs more than 20 points)"
        elif max(accuracies) - min(accuracies) > 0.2:
            verdict = "is not robust: its accuracy varies by more than 20 points with what the background holds"
        else:
            verdict = "is robust to the background bias on these test sets (within 20 points everywhere)"
        lines.append(f"{method}: {verdict} ({facts}).")
    return lines


def figures(results: Mapping[str, Any], heatmaps: Figure | None) -> dict[str, Figure]:
    """The accuracy, background relevance and training time plots, and the heatmaps when drawn."""
    sets_shown = (*TEST_SETS, OCCLUDED)
    acc = {m: {_SET_TITLES[t]: s[t]["accuracy"] for t in sets_shown if t in s} for m, s in results["methods"].items()}
    err = {m: {_SET_TITLES[t]: (s[t]["accuracy_std"] or 0.0) for t in sets_shown if t in s}
           for m, s in results["methods"].items()}
    several = any(s[t]["seeds"] > 1 for s in results["methods"].values() for t in s)
    figures = {
        "accuracy": accuracy_bars(acc, errors=err if several else None, title="Accuracy per test set"),
        "background_relevance": bar_plot(
            {m: 100 * s["biased"]["background_relevance"] for m, s in results["methods"].items()},
            ylabel="background relevance (%)", title="Share of |relevance| outside the mask (biased test set)"),
        "train_time": bar_plot(results["train_time_s"], ylabel="seconds",
                               title="Training time per method (fit, incl. calibration and validation)"),
    }
    if heatmaps is not None:
        figures["heatmaps"] = heatmaps
    return figures


_READING = (
    "How to read this. A classifier that learned the background shortcut keeps its accuracy on the "
    "biased test set and collapses on the deceiving one (whose cue points to another class). "
    "A low share of relevance on the background alone proves nothing: a network can learn to hide "
    "the shortcut from its heatmap while still using it (measured with the reference ISNet code on a "
    "task like this one: 0.5-3% of the relevance on the patch, yet occluding the patch dropped accuracy "
    "from 99% to 28%). Judge a method by its unbiased and deceiving accuracies and by the occlusion "
    "check (biased test images whose patch is replaced by neighbouring background), read next to the "
    "relevance shares, never by the heatmaps alone. Compare a method with the row of its own swap setting: "
    "the swap alone can remove a background shortcut."
)
_CUES = {
    "patch": "a white 4x4 patch on the border whose position encodes the class",
    "tint": "a class-coded colour tint of the whole background",
}
_PLACEMENTS = {"centre": "the digit inside the central 24x24 area", "anywhere": "the digit anywhere on the canvas"}


def setup(cfg: BiasBenchConfig, results: Mapping[str, Any]) -> str:
    """The report's setup paragraph."""
    c = results["config"]
    lrp = ", ".join(f"{k} = {v}" for k, v in c.get("measured_lrp", {}).items())
    return (
        "BG-Digits (scikit-learn handwritten digits on textured, noisy 32x32 backgrounds, "
        f"{_PLACEMENTS[cfg.placement]}; {_CUES[cfg.cue]}, 100% correlated in training). {cfg.n_train} training, "
        f"{cfg.n_val} validation and {cfg.n_test} images per test set (data seed {cfg.data_seed}, mask: digit "
        f"{cfg.mask}). Architecture {cfg.arch}; {c['train']['epochs']} epochs; {cfg.seeds} seed(s) per method "
        "(mean ± standard deviation over seeds where there are several). Every method is trained by "
        "isnet.training.fit, the pipeline behind `isnet train`. The background swap is part of each method's name "
        "and of its row: methods ending in +swap trained with the mask-based swap (each training image gets the "
        "background of another image, whose own object is removed first), the others without; masked classifies "
        "background-zeroed images, so the swap is irrelevant to it. Relevance shares are measured with the same "
        f"LRP-Flex rule for every method ({lrp})."
    )


def result_sections(cfg: BiasBenchConfig, results: Mapping[str, Any], figures: Mapping[str, Figure]) -> list[Section]:
    """The results table, then the occlusion check (or, with the tint cue, the background relevance)."""
    c = results["config"]
    sections: list[Section] = [("Results", [_READING, _table_rows(results), figures["accuracy"]])]
    if any(OCCLUDED in sets for sets in results["methods"].values()):
        swaps = c.get("background_swap", {})
        occlusion = [
            {"method": m, "swap": swap_label(swaps.get(m.removesuffix(RAW_INPUT))),
             "biased (%)": percent(s["biased"]["accuracy"]),
             "patch occluded (%)": percent(s.get(OCCLUDED, {}).get("accuracy")),
             "deceiving (%)": percent(s["deceiving"]["accuracy"]),
             "relevance on patch, biased (%)": percent(s["biased"]["patch_relevance"]),
             "relevance on background, biased (%)": percent(s["biased"]["background_relevance"])}
            for m, s in results["methods"].items()
        ]
        sections.append(("Occlusion check", [
            "Accuracy on the biased test images with their bias patch replaced by neighbouring background, next to "
            "the biased and deceiving accuracies and the relevance shares. A model that does not use the patch "
            "keeps its biased accuracy when the patch is occluded.", occlusion, figures["background_relevance"]]))
    else:
        sections.append(("Background relevance", [
            f"No occlusion check: the {cfg.cue} cue has no patch to paint over.", figures["background_relevance"]]))
    return sections


def results_markdown(cfg: BiasBenchConfig, results: Mapping[str, Any]) -> str:
    """``results.md``: the table (rows grouped by method, each with its swap), the background audit per method
    (:func:`isnet.bench.audit_columns.audit_markdown`) and the paired comparisons."""
    text = f"# {cfg.title}\n\n{format_table(results)}\n\n{audit_markdown(results)}"
    note = segmenter_note(results)
    if note:
        text += f"\n{note}\n"
    paired = comparisons(results)
    if paired:
        text += "\n" + PAIRED_NOTE + "\n\n" + "\n".join(f"* {line}" for line in paired) + "\n"
    return text
