"""``isnet demo`` (``make demo``): the background-bias benchmark, small enough for a laptop.

BG-Digits is built; a standard classifier without and with the background swap and a selective
ISNet (Faster ISNet) with the swap are trained with the training pipeline's defaults
(:class:`isnet.config.TrainConfig`) at the :data:`~isnet.bench.digits.presets.DEMO` sizes; the
three-test-set table is printed, and ``OUT/report.html`` shows the accuracies, the occlusion
check, the paired comparisons, heatmaps and training times. The ISNet is shown next to the
standard classifier trained with the same swap, so the table does not credit the heatmap loss
with what the swap does. It is :func:`isnet.bench.run.run_benchmark` of BG-Digits with a short method
list and small sizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .bench.digits.benchmark import BG_DIGITS
from .bench.digits.presets import DEMO, OCCLUDED, TEST_SETS, BiasBenchConfig
from .bench.report import comparisons
from .bench.run import run_benchmark
from .tables import percent, text_table

__all__ = ["DEMO", "demo_config", "run_demo", "summary_table"]


def demo_config(**overrides: Any) -> BiasBenchConfig:
    """The demo's benchmark configuration; ``overrides`` replace :data:`DEMO` entries (e.g. sizes)."""
    values = {**DEMO, **{k: v for k, v in overrides.items() if v is not None}}
    return BiasBenchConfig(**values)


def _cell(share: float | None) -> str:
    return "-" if share is None else f"{percent(share)}%"


def summary_table(results: Mapping[str, Any]) -> str:
    """Accuracy and background-relevance share per method and test set, as plain text."""
    rows = []
    for method, sets in results["methods"].items():
        row = {"method": method}
        for test in TEST_SETS:
            row[f"{test} acc"] = _cell(sets[test]["accuracy"])
            row[f"{test} bg rel"] = _cell(sets[test]["background_relevance"])
        row["occluded acc"] = _cell(sets.get(OCCLUDED, {}).get("accuracy"))
        rows.append(row)
    widths = {"method": max(12, *(len(m) for m in results["methods"])), **{f"{t} acc": 15 for t in TEST_SETS},
              **{f"{t} bg rel": 7 for t in TEST_SETS}, "occluded acc": 13}
    return text_table(rows, widths, titles={f"{t} bg rel": "bg rel" for t in TEST_SETS})


def run_demo(out: str | Path = "runs/demo", **overrides: Any) -> dict:
    """Run the demo into ``out``; print the table; return the benchmark results."""
    results = run_benchmark(BG_DIGITS, demo_config(**overrides), out)
    print()
    print(summary_table(results))
    print()
    print("+swap = trained with the background swap (each training image gets another image's background); "
          "bg rel = share of absolute LRP relevance outside the digit's mask; occluded = biased test images with "
          "the bias patch painted over with background (a model that ignores the patch keeps its accuracy).")
    print()
    print("On equal terms (method minus reference, percentage points):")
    for line in comparisons(results):
        print(f"  {line}")
    print(f"report: {Path(out) / 'report.html'}")
    return results
