"""The background-bias benchmark's outputs, from the records of its runs.

Per method and test set, each metric is the mean over seeds with its sample standard deviation
(None with one seed). The results dict (``methods``, ``train_time_s``, ``step_time_s``,
``config``) is written as ``results.json``, as tables (``results.md``, ``results.csv``), as
figures (``figures/*.png``) and as a self-contained ``report.html`` that puts the accuracies,
the occlusion check and the relevance shares side by side, with one plain sentence per method.
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
from ..report_html import write_html_report
from ..tables import markdown_table, percent
from .presets import METHODS, OCCLUDED, RAW_INPUT, RUN_OPTIONS, TEST_SETS, BiasBenchConfig

__all__ = ["METRICS", "aggregate", "findings", "format_table", "listed_train_options", "write_results"]

METRICS = ("accuracy", "background_relevance", "patch_relevance")
"""What :func:`isnet.bench.bias.evaluate_classifier` measures on each test set."""

_SET_TITLES = {"biased": "biased", "unbiased": "unbiased", "deceiving": "deceiving", OCCLUDED: "patch occluded"}


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    xs = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not xs:
        return None, None
    mean = float(np.mean(xs))
    return mean, (float(np.std(xs, ddof=1)) if len(xs) > 1 else None)


def aggregate(records: Mapping[str, list[dict]]) -> tuple[dict, dict, dict]:
    """results["methods"], train_time_s and step_time_s from the per-seed records."""
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
                for metric in METRICS:
                    entry[metric], entry[f"{metric}_std"] = _mean_std([r[key][test][metric] for r in recs])
                entry["seeds"] = len(recs)
                per_set[test] = entry
            methods[name] = per_set
        train_time[method] = float(np.mean([r["train_time_s"] for r in recs]))
        step_time[method] = float(np.mean([r["step_time_s"] for r in recs]))
    return methods, train_time, step_time


def listed_train_options(cfg: BiasBenchConfig) -> dict[str, Any]:
    """The training options every method shares: TrainConfig's defaults with the benchmark's overrides.

    Left out, from the field metadata and the presets: the options the grid sets per run
    (:data:`~isnet.bench.presets.RUN_OPTIONS`) and those of the methods, the fields training
    resolves, bookkeeping, and the run-time options (the ``run`` group's options that a resumed
    run may change: hardware, precision, logging).
    """
    hidden = {*RUN_OPTIONS, *(key for options in METHODS.values() for key in options)}
    hidden |= {f.name for f in dataclasses.fields(TrainConfig)
               if f.metadata.get("resolved") or f.metadata.get("bookkeeping")
               or (f.metadata.get("resumable") and f.metadata.get("group") == "run")}
    shown = {k: v for k, v in TrainConfig().to_dict().items() if k not in hidden}
    shown.update(cfg.train_options)
    if cfg.epochs is not None:
        shown["epochs"] = cfg.epochs
    shown["image_size"] = cfg.image_size
    return shown


def _table_rows(results: Mapping[str, Any]) -> list[dict[str, str]]:
    rows = []
    for method, sets in results["methods"].items():
        base = method.removesuffix(RAW_INPUT)
        row = {"method": method}
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


def _write_csv(results: Mapping[str, Any], path: Path) -> None:
    header = ["method", "test_set", *[f"{m}{s}" for m in METRICS for s in ("", "_std")], "seeds",
              "train_time_s", "step_time_s"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for method, sets in results["methods"].items():
        base = method.removesuffix(RAW_INPUT)
        for test, entry in sets.items():
            writer.writerow([method, test, *["" if entry[f"{m}{s}"] is None else f"{entry[f'{m}{s}']:.6g}"
                                             for m in METRICS for s in ("", "_std")], entry["seeds"],
                             f"{results['train_time_s'][base]:.2f}", f"{results['step_time_s'][base]:.2f}"])
    path.write_text(buffer.getvalue())


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
    "biased test set and collapses on the deceiving one (whose patch points to another class). "
    "A low share of relevance on the background alone proves nothing: a network can learn to hide "
    "the shortcut from its heatmap while still using it (measured with the reference ISNet code on a "
    "task like this one: 0.5-3% of the relevance on the patch, yet occluding the patch dropped accuracy "
    "from 99% to 28%). Judge a method by its unbiased and deceiving accuracies and by the occlusion "
    "check (biased test images whose patch is replaced by neighbouring background), read next to the "
    "relevance shares, never by the heatmaps alone."
)


def _write_report(out: Path, cfg: BiasBenchConfig, results: Mapping[str, Any], figures: Mapping[str, Figure]) -> Path:
    for name, fig in figures.items():
        save_figure(fig, out / "figures" / f"{name}.png", dpi=110)
    occlusion = [
        {"method": m, "biased (%)": percent(s["biased"]["accuracy"]),
         "patch occluded (%)": percent(s.get(OCCLUDED, {}).get("accuracy")),
         "deceiving (%)": percent(s["deceiving"]["accuracy"]),
         "relevance on patch, biased (%)": percent(s["biased"]["patch_relevance"]),
         "relevance on background, biased (%)": percent(s["biased"]["background_relevance"])}
        for m, s in results["methods"].items()
    ]
    c = results["config"]
    setup = (
        f"BG-Digits (scikit-learn handwritten digits on textured, noisy 32x32 backgrounds; a white 4x4 patch on "
        f"the border whose position encodes the class, 100% correlated in training). {cfg.n_train} training, "
        f"{cfg.n_val} validation and {cfg.n_test} images per test set (data seed {cfg.data_seed}, mask: digit "
        f"{cfg.mask}). Architecture {cfg.arch}; {c['train']['epochs']} epochs; {cfg.seeds} seed(s) per method "
        f"(mean ± standard deviation over seeds where there are several). Every method is trained by "
        f"isnet.training.fit, the pipeline behind `isnet train`."
    )
    swapped = [f"{m} ({p:g})" for m, p in c["background_swap"].items() if p > 0]
    setup += (" Trained with mask-based background swap (probability that an image gets another image's "
              f"background): {', '.join(swapped)}; the other methods without." if swapped else
              " No method was trained with background swap.")
    options = "\n".join(f"{k} = {v}" for k, v in c["train"].items())
    timing = [{"method": m, "fit wall time (s)": f"{results['train_time_s'][m]:.1f}",
               "training steps only (s)": f"{results['step_time_s'][m]:.1f}"} for m in results["train_time_s"]]
    sections = [
        ("Setup", [setup, "Training options (isnet.config.TrainConfig defaults plus benchmark overrides):\n"
                   + options + "\n", f"Host: {c['host']}; {c.get('jobs', 1)} training process(es) at a time, "
                   f"{c['torch_threads']} torch thread(s) each; total time {c['total_time_s']:.0f} s."]),
        ("Results", [_READING, _table_rows(results), figures["accuracy"]]),
        ("Occlusion check", [
            "Accuracy on the biased test images with their bias patch replaced by neighbouring background, next to "
            "the biased and deceiving accuracies and the relevance shares. A model that does not use the patch "
            "keeps its biased accuracy when the patch is occluded.", occlusion,
            figures["background_relevance"]]),
        ("What the numbers say", ["\n".join(findings(results)) + "\n"]),
    ]
    if "heatmaps" in figures:
        sections.append(("Heatmaps", [
            "LRP-Flex heatmaps of the predicted class (seed-0 model of each method; red positive, blue negative), "
            f"{cfg.n_examples} example(s) from each test set. Masked-input methods are explained on their masked input.",
            figures["heatmaps"]]))
    sections.append(("Training time", [figures["train_time"], timing]))
    return write_html_report(out / "report.html", cfg.title, sections)


def write_results(out: Path, cfg: BiasBenchConfig, results: Mapping[str, Any], heatmaps: Figure | None) -> None:
    """Write results.json, results.md, results.csv, figures/*.png and report.html into ``out``."""
    write_json(out / "results.json", results)
    (out / "results.md").write_text(f"# {cfg.title}\n\n{format_table(results)}\n")
    _write_csv(results, out / "results.csv")
    _write_report(out, cfg, results, _figures(results, heatmaps))
