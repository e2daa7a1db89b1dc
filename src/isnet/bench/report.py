"""The files every background-bias benchmark writes, from the records of its runs.

Per method and test set, each metric is the mean over seeds with its sample standard deviation
(None with one seed). The results dict (``methods``, ``train_time_s``, ``step_time_s``,
``paired``, ``audit``, ``config``) is written as ``results.json``, as tables (``results.md``,
``results.csv``), as figures (``figures/*.png``) and as a self-contained ``report.html``:
the setup, the benchmark's own sections (:meth:`isnet.bench.interface.Benchmark.result_sections`),
the background audit, what the numbers say (the benchmark's findings, then the paired
comparisons of :mod:`isnet.bench.paired`: each method against the standard classifier with the
same swap setting, so that what the swap does is not credited to a method's loss), heatmaps
and training times. Rows follow :data:`~isnet.bench.presets.METHODS`, so each method sits next
to its swap counterpart, and each row states its swap.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..checkpoints import write_json
from ..config import TrainConfig
from ..figures import save_figure
from ..outputs import write_text
from ..report_html import write_html_report
from ..tables import csv_number, csv_text
from .audit_columns import audit_section, write_audit_csv
from .interface import Benchmark, Section, Settings, Tests
from .paired import comparison_sentence, mean_std
from .presets import METHODS, RAW_INPUT, RUN_OPTIONS, BenchSettings

__all__ = [
    "PAIRED_NOTE", "aggregate", "comparisons", "listed_train_options", "numbers_section", "report_start",
    "segmenter_note", "swap_label", "write_csv", "write_results",
]


def aggregate(records: Mapping[str, list[dict]], metrics: Sequence[str]) -> tuple[dict, dict, dict]:
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


def listed_train_options(cfg: BenchSettings) -> dict[str, Any]:
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


def write_csv(results: Mapping[str, Any], path: Path, metrics: Sequence[str]) -> None:
    """``results.csv``: one row per method and test set, each metric's mean and standard deviation."""
    header = ["method", "background_swap", "test_set", *[f"{m}{s}" for m in metrics for s in ("", "_std")],
              "seeds", "train_time_s", "step_time_s"]
    swaps = results["config"].get("background_swap", {})
    rows = []
    for method, sets in results["methods"].items():
        base = method.removesuffix(RAW_INPUT)
        swap = "" if swaps.get(base) is None else f"{swaps[base]:g}"
        for test, entry in sets.items():
            values = [csv_number(entry[f"{m}{s}"]) for m in metrics for s in ("", "_std")]
            rows.append([method, swap, test, *values, entry["seeds"], f"{results['train_time_s'][base]:.2f}",
                         f"{results['step_time_s'][base]:.2f}"])
    write_text(path, csv_text(header, rows))


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


def _write_report(benchmark: Benchmark[Settings, Tests], out: Path, cfg: Settings, results: Mapping[str, Any],
                  figures: Mapping[str, Figure]) -> Path:
    setup, timing = report_start(out, benchmark.setup(cfg, results), results, figures)
    sections: list[Section] = [setup, *benchmark.result_sections(cfg, results, figures), audit_section(results),
                               numbers_section(benchmark.findings(results), results)]
    if "heatmaps" in figures:
        sections.append(("Heatmaps", [
            "LRP-Flex heatmaps of the predicted class (seed-0 model of each method; red positive, blue negative), "
            f"{cfg.n_examples} example(s) from each test set{benchmark.example_note}. Masked-input methods are "
            "explained on their masked input.", figures["heatmaps"]]))
    sections.append(("Training time", [figures["train_time"], timing]))
    return write_html_report(out / "report.html", cfg.title, sections)


def write_results(benchmark: Benchmark[Settings, Tests], out: Path, cfg: Settings, results: Mapping[str, Any],
                  heatmaps: Figure | None, tests: Mapping[str, Tests]) -> None:
    """Write results.json, results.md, results.csv, audit.csv, figures/*.png and report.html into ``out``."""
    write_json(out / "results.json", results)
    write_text(out / "results.md", benchmark.results_markdown(cfg, results))
    write_csv(results, out / "results.csv", benchmark.metrics)
    write_audit_csv(results, out / "audit.csv")
    _write_report(benchmark, out, cfg, results, benchmark.figures(cfg, results, heatmaps, tests))
