"""``isnet demo`` (``make demo``): the background-bias benchmark, small enough for a laptop.

BG-Digits is built, a standard classifier and a selective ISNet (Faster ISNet) are trained
with the training pipeline's defaults (:class:`isnet.train.TrainConfig`) for
:data:`DEMO` epochs on :data:`DEMO` images, the three-test-set table is printed, and
``OUT/report.html`` shows the accuracies, the occlusion check, heatmaps and training times.
It is :func:`isnet.bench.bias.run_benchmark` with a short method list and small sizes, sized
to finish in under 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .bench.bias import TEST_SETS, BiasBenchConfig, run_benchmark

__all__ = ["DEMO", "demo_config", "run_demo", "summary_table"]

DEMO: dict[str, Any] = dict(
    methods=["standard", "selective"], seeds=1, n_train=2000, n_val=200, n_test=300, epochs=12, n_examples=3,
    title="isnet demo: standard classifier vs selective ISNet on BG-Digits",
)
"""Methods and sizes of the demo (the benchmark's other settings keep their defaults)."""


def demo_config(**overrides: Any) -> BiasBenchConfig:
    """The demo's benchmark configuration; ``overrides`` replace :data:`DEMO` entries (e.g. sizes)."""
    values = {**DEMO, **{k: v for k, v in overrides.items() if v is not None}}
    return BiasBenchConfig(**values)


def summary_table(results: dict) -> str:
    """Accuracy and background-relevance share per method and test set, as plain text."""
    head = f"{'method':<12}" + "".join(f"{t + ' acc':>16}{'bg rel':>8}" for t in TEST_SETS) + f"{'occluded acc':>14}"
    lines = [head, "-" * len(head)]
    for method, sets in results["methods"].items():
        cells = "".join(f"{100 * sets[t]['accuracy']:>15.1f}%{100 * sets[t]['background_relevance']:>7.1f}%"
                        for t in TEST_SETS)
        occluded = sets.get("biased_occluded", {}).get("accuracy")
        cells += f"{100 * occluded:>13.1f}%" if occluded is not None else f"{'-':>14}"
        lines.append(f"{method:<12}{cells}")
    return "\n".join(lines)


def run_demo(out: str | Path = "runs/demo", **overrides: Any) -> dict:
    """Run the demo into ``out``; print the table; return the benchmark results."""
    results = run_benchmark(demo_config(**overrides), out)
    print()
    print(summary_table(results))
    print()
    print("bg rel = share of absolute LRP relevance outside the digit's mask; occluded = biased test images with "
          "the bias patch painted over with background (a model that ignores the patch keeps its accuracy).")
    print(f"report: {Path(out) / 'report.html'}")
    return results
