"""The background-bias benchmark's outputs, from the records of its runs.

Per method and test set, each metric is the mean over seeds with its sample standard deviation
(None with one seed). The results dict (``methods``, ``train_time_s``, ``step_time_s``,
``paired``, ``config``) is written as ``results.json``, as tables (``results.md``,
``results.csv``), as figures (``figures/*.png``) and as a self-contained ``report.html`` that
puts the accuracies, the occlusion check and the relevance shares side by side. Rows follow
:data:`~isnet.bench.presets.METHODS`, so each method sits next to its swap counterpart, and
each row states its swap. The verdicts are one plain sentence per method, then the paired
comparisons (:mod:`isnet.bench.paired`): each method against the standard classifier with the
same swap setting, so that what the swap does is not credited to a method's loss.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..checkpoints import write_json
from ..config import TrainConfig
from ..figures import accuracy_bars, bar_plot, save_figure
from ..outputs import write_text
from ..report_html import write_html_report
from ..tables import markdown_table, percent
from .audit_columns import audit_markdown, audit_section
from .paired import comparison_sentence, mean_std
from .cxr_presets import CxrBenchConfig
from .presets import METHODS, OCCLUDED, RAW_INPUT, RUN_OPTIONS, TEST_SETS, BiasBenchConfig

__all__ = [
    "METRICS", "PAIRED_NOTE", "aggregate", "comparisons", "findings", "format_table", "listed_train_options",
    "numbers_section", "report_start",
    "results_markdown", "swap_label", "write_csv", "write_results",
]

METRICS = ("accuracy", "background_relevance", "patch_relevance")
"""What :func:`isnet.bench.bias.evaluate_classifier` measures on each test set."""

_SET_TITLES = {"biased": "biased", "unbiased": "unbiased", "deceiving": "deceiving", OCCLUDED: "patch occluded"}


def aggregate(records: Mapping[str, list[dict]], metrics: Sequence[str] = METRICS) -> tuple[dict, dict, dict]:
    """results["methods"] (``metrics`` of every test set), train_time_s and step_time_s from the per-seed records."""
    methods: dict[str, dict] = {}
    train_time: dict[str, float] = {}
    step_time: dict[str, float] = {}
    for method, recs in records.items():
        rows = [(method, "results")]
        if any(r.get("raw_input_results") for r in recs):
            rows.append((method + RAW_INPUT, "raw_input_results"))
        for name, key in rows:
            per_set: dict[str, dict] = {}
            for test in recs[0][key]:
                entry: dict[str, Any] = {}
                for metric in metrics:
                    entry[metric], entry[f"{metric}_std"] = mean_std([r[key][test][metric] for r in recs])
                entry["seeds"] = len(recs)
                per_set[test] = entry
            methods[name] = per_set
        train_time[method] = float(np.mean([r["train_time_s"] for r in recs]))
        step_time[method] = float(np.mean([r["step_time_s"] for r in recs]))
    return methods, train_time, step_time


def listed_train_options(cfg: BiasBenchConfig | CxrBenchConfig) -> dict[str, Any]:
    """The training options every method shares: TrainConfig's defaults with the benchmark's overrides.

    Left out, from the field metadata and the presets: the options the grid sets per run
    (:data:`~isnet.bench.presets.RUN_OPTIONS`) and those the selected methods set, the fields training
    resolves, bookkeeping, and the run-time options (the ``run`` group's options that a resumed
    run may change: hardware, precision, logging).
    """
    hidden = {*RUN_OPTIONS, *(key for method in cfg.methods for key in METHODS[method])}
    hidden |= {f.name for f in dataclasses.fields(TrainConfig)
               if f.metadata.get("resolved") or f.metadata.get("bookkeeping")
               or (f.metadata.get("resumable") and f.metadata.get("group") == "run")}
    shown = {k: v for k, v in TrainConfig().to_dict().items() if k not in hidden}
    shown.update(cfg.train_options)
    if cfg.epochs is not None:
        shown["epochs"] = cfg.epochs
    shown["image_size"] = cfg.image_size
    return shown


def swap_label(probability: float | None) -> str:
    """A row's swap: ``yes`` (probability 1), ``no`` (0), the probability, or ``-`` where it is irrelevant."""
    if probability is None:
        return "-"
    return {0.0: "no", 1.0: "yes"}.get(float(probability), f"{probability:g}")


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


def write_csv(results: Mapping[str, Any], path: Path, metrics: Sequence[str] = METRICS) -> None:
    """``results.csv``: one row per method and test set, each metric's mean and standard deviation."""
    header = ["method", "background_swap", "test_set", *[f"{m}{s}" for m in metrics for s in ("", "_std")],
              "seeds", "train_time_s", "step_time_s"]
    swaps = results["config"].get("background_swap", {})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for method, sets in results["methods"].items():
        base = method.removesuffix(RAW_INPUT)
        swap = "" if swaps.get(base) is None else f"{swaps[base]:g}"
        for test, entry in sets.items():
            values = ["" if entry[f"{m}{s}"] is None else f"{entry[f'{m}{s}']:.6g}"
                      for m in metrics for s in ("", "_std")]
            writer.writerow([method, swap, test, *values, entry["seeds"], f"{results['train_time_s'][base]:.2f}",
                             f"{results['step_time_s'][base]:.2f}"])
    write_text(path, buffer.getvalue())


def comparisons(results: Mapping[str, Any]) -> list[str]:
    """One sentence per compared pair of ``results["paired"]``."""
    pairs: dict[tuple[str, str], list[dict]] = {}
    for entry in results.get("paired", []):
        pairs.setdefault((entry["method"], entry["reference"]), []).append(entry)
    return [comparison_sentence(entries) for entries in pairs.values()]


PAIRED_NOTE = (
    "Paired comparisons: differences in percentage points, method minus reference, mean over seeds with a "
    "95% t-interval over the per-seed differences. Each method is compared with the standard classifier "
    "trained with the same swap setting (X+swap vs standard+swap, X vs standard), so the difference is what "
    "the method's own loss adds; X+swap vs X is what the background swap adds to X; seg-classify vs masked is "
    "what predicted masks cost against true ones."
)


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


def _figures(results: Mapping[str, Any], heatmaps: Figure | None) -> dict[str, Figure]:
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


def _setup(cfg: BiasBenchConfig, results: Mapping[str, Any]) -> str:
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


def segmenter_note(results: Mapping[str, Any]) -> str | None:
    """What the ``seg-classify`` method's segmenter is and how well it segments (None without one)."""
    seg = results["config"].get("segmenter")
    if not seg:
        return None
    o, scores = seg["options"], seg["scores"]
    dice = ", ".join(f"{name} {s['dice']:.3f} ± {s['dice_sd']:.3f}" for name, s in scores.items())
    outside = ", ".join(f"{name} {100 * s['outside']:.1f}%" for name, s in scores.items())
    return (f"seg-classify: a MONAI U-Net (width {o['width']}, depth {o['depth']}, {o['epochs']} epochs, "
            f"{o['in_channels']} input channel(s), the {o['components']} largest connected region(s) of each "
            "mask kept) trained on the training split's masks; it masks the classifier's input in training and test. "
            f"Dice of its masks per test set: {dice}. Share of its predicted foreground outside the true masks: "
            f"{outside}.")


def report_start(out: Path, setup: str, results: Mapping[str, Any],
                 figures: Mapping[str, Figure]) -> tuple[tuple[str, list], list[dict[str, str]]]:
    """Save ``figures`` as ``out/figures/NAME.png``; return the report's "Setup" section (``setup``, then the
    training and method options and the host) and the rows of its training-time table."""
    for name, fig in figures.items():
        save_figure(fig, out / "figures" / f"{name}.png", dpi=110)
    c = results["config"]
    options = [f"{k} = {v}" for k, v in c["train"].items()]
    methods = [f"{m}: " + ", ".join(f"{k} = {v}" for k, v in opts.items()) for m, opts in c["method_options"].items()]
    timing = [{"method": m, "fit wall time (s)": f"{results['train_time_s'][m]:.1f}",
               "training steps only (s)": f"{results['step_time_s'][m]:.1f}"} for m in results["train_time_s"]]
    note = segmenter_note(results)
    section = ("Setup", [setup + (f" {note}" if note else ""),
                         "Training options (isnet.config.TrainConfig defaults plus benchmark overrides):", options,
                         "Each method's own options:", methods,
                         f"Host: {c['host']}; {c.get('jobs', 1)} training process(es) at a time, "
                         f"{c['torch_threads']} torch thread(s) each; total time {c['total_time_s']:.0f} s."])
    return section, timing


def numbers_section(found: Sequence[str], results: Mapping[str, Any]) -> tuple[str, list]:
    """The report's "What the numbers say" section: the findings, then the paired comparisons."""
    said: list = [list(found)]
    paired = comparisons(results)
    if paired:
        said += [PAIRED_NOTE, paired]
    return "What the numbers say", said


def _write_report(out: Path, cfg: BiasBenchConfig, results: Mapping[str, Any], figures: Mapping[str, Figure]) -> Path:
    setup, timing = report_start(out, _setup(cfg, results), results, figures)
    c = results["config"]
    sections = [
        setup,
        ("Results", [_READING, _table_rows(results), figures["accuracy"]]),
    ]
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
    sections.append(audit_section(results))
    sections.append(numbers_section(findings(results), results))
    if "heatmaps" in figures:
        sections.append(("Heatmaps", [
            "LRP-Flex heatmaps of the predicted class (seed-0 model of each method; red positive, blue negative), "
            f"{cfg.n_examples} example(s) from each test set. Masked-input methods are explained on their masked input.",
            figures["heatmaps"]]))
    sections.append(("Training time", [figures["train_time"], timing]))
    return write_html_report(out / "report.html", cfg.title, sections)


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


def write_results(out: Path, cfg: BiasBenchConfig, results: Mapping[str, Any], heatmaps: Figure | None) -> None:
    """Write results.json, results.md, results.csv, figures/*.png and report.html into ``out``."""
    write_json(out / "results.json", results)
    write_text(out / "results.md", results_markdown(cfg, results))
    write_csv(results, out / "results.csv")
    _write_report(out, cfg, results, _figures(results, heatmaps))
