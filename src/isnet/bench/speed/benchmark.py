"""Speed and memory benchmark: ``isnet bench speed`` and ``isnet bench explain``.

Two measurements, in one process, on one device:

* **explain** (:mod:`isnet.bench.speed.explain`): LRP-Flex heatmap time against a plain
  gradient x input on torchvision models, and zennit's when installed;
* **steps** (:mod:`isnet.bench.speed.steps`): the time of one training step of every ISNet
  variant at several class counts K, and its peak memory.

How times and memory are taken: :mod:`isnet.bench.speed.timing`. :func:`run` gathers both into one
report and writes it as JSON, Markdown tables and plots (:mod:`isnet.bench.speed.report`).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ...outputs import write_text
from .explain import ExplainSetup, bench_explain
from .report import markdown, plot_steps, targets, to_json
from .steps import StepSetup, bench_steps
from .timing import Progress, load_average, memory_method


@dataclass
class SpeedSetup:
    """What one run measures: explain times (None: none) and training steps per architecture."""

    explain: ExplainSetup | None
    steps: list[StepSetup] = field(default_factory=list)


def full_setup() -> SpeedSetup:
    """The full benchmark (about 20-30 minutes on 2 CPU cores)."""
    classes = (2, 10, 100, 1000)
    return SpeedSetup(
        explain=ExplainSetup(),
        steps=[
            StepSetup("resnet18", 64, 16, classes, comparison_classes=(2, 10)),
            StepSetup("densenet121", 64, 16, classes, repeats=3, original_budget_s=12.0),
            StepSetup("small_cnn", 32, 16, classes, repeats=5, original_budget_s=4.0, comparison_classes=(2, 10)),
        ],
    )


def quick_setup() -> SpeedSetup:
    """A smoke-sized run (under about 3 minutes on 2 CPU cores): smaller inputs, fewer K and repeats."""
    return SpeedSetup(
        explain=ExplainSetup(archs=("resnet18",), image_size=32, batch=8, repeats=5, warmup=1),
        steps=[
            StepSetup("small_cnn", 32, 16, (2, 10, 100, 1000), variants=(
                "standard", "selective", "stochastic", "selective+ds", "original"), repeats=3,
                original_budget_s=0.5, comparison_classes=(2,)),
            StepSetup("resnet18", 32, 8, (2, 1000), variants=("standard", "selective", "stochastic", "original"),
                      repeats=3, original_budget_s=1.0),
        ],
    )


def _meta(device: torch.device, quick: bool) -> dict:
    """The machine, library versions and load of a run (``report["meta"]``)."""
    cpu = platform.processor() or platform.machine()
    if device.type == "cuda":
        cpu = torch.cuda.get_device_name(device)
    return {"device": str(device), "cpu": cpu, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "quick": quick, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "load_before": load_average(),
            "load_after": None, "memory_method": memory_method(device), "python": platform.python_version()}


def run(setup: SpeedSetup, out: str | Path, *, quick: bool = False, device: str | torch.device = "cpu",
        progress: Progress = print, name: str = "speed", threads: int | None = None) -> dict:
    """Run a benchmark setup and write ``<name>.json``, ``<name>.md`` and one plot per architecture.

    ``threads``: torch CPU threads for the run (None: torch's default).
    """
    device = torch.device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"meta": _meta(device, quick), "setup": asdict(setup)}
    started = time.perf_counter()
    if setup.explain is not None:
        report["explain"] = bench_explain(setup.explain, device=device, progress=progress)
    report["steps"] = {}
    for step_setup in setup.steps:
        report["steps"][step_setup.arch] = bench_steps(step_setup, device=device, progress=progress)
    report["meta"]["load_after"] = load_average()
    report["meta"]["seconds"] = time.perf_counter() - started
    report["targets"] = targets(report)
    for res in report["steps"].values():
        plot_steps(res, out / f"{res['arch']}.png")
    write_text(out / f"{name}.json", to_json(report))
    write_text(out / f"{name}.md", markdown(report))
    for t in report["targets"]:
        best = f" (fastest repeats: {t['min_value']:.2f})" if t.get("min_value") is not None else ""
        progress(f"target   {t['target']}: {t['value']:.2f}{best} (limit {t['limit']}) "
                 f"{'met' if t['met'] else 'NOT met'}")
    progress(f"wrote {out / f'{name}.json'}, {out / f'{name}.md'} ({report['meta']['seconds']:.0f} s)")
    return report


def run_speed(out: str | Path, *, quick: bool = False, device: str = "cpu", progress: Progress = print,
              threads: int | None = None) -> dict:
    """``isnet bench speed``: explain time and training-step time / memory of every variant vs K."""
    setup = quick_setup() if quick else full_setup()
    return run(setup, out, quick=quick, device=device, progress=progress, name="speed", threads=threads)


def run_explain(out: str | Path, *, quick: bool = False, device: str = "cpu", progress: Progress = print,
                threads: int | None = None, archs: Sequence[str] | None = None) -> dict:
    """``isnet bench explain``: LRP-Flex explain time against gradient x input (and zennit) on ``archs``
    (default: the setup's)."""
    explain = quick_setup().explain if quick else ExplainSetup()
    if archs:
        explain = replace(explain, archs=tuple(archs))
    setup = SpeedSetup(explain=explain, steps=[])
    return run(setup, out, quick=quick, device=device, progress=progress, name="explain", threads=threads)
