"""Running a background-bias benchmark: the steps every :class:`~isnet.bench.interface.Benchmark` shares.

:func:`run_benchmark` writes the benchmark's data, makes its test sets, builds the training grid
(:mod:`isnet.bench.grid`) around its evaluation, measures every method's relevance with one LRP
rule, draws the seed-0 heatmaps, and assembles and writes the results
(:func:`isnet.bench.report.write_results`) in the same order for every benchmark.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import platform
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ..checkpoints import explainer
from ..config import TrainConfig
from ..evaluate import predict_batch
from ..figures import heatmap_grid
from ..locks import FolderLock
from ..objectives import get_objective
from ..outputs import claim
from ..paths import check_new_files
from .audit_columns import AUDIT_SET, audit_run, audit_summary
from .grid import Grid, Log, clock, console_log, load_run, run_grid, threads_per_job
from .interface import Benchmark, Settings, TestSet, Tests
from .paired import paired_comparisons
from .presets import METHODS, RELATIVE_COST, SEG_CLASSIFY, BenchSettings, method_order, swap_setting
from .report import aggregate, listed_train_options, write_results
from .segmenter import prepare_segmenter

__all__ = ["OUTPUTS", "at_training_size", "claim_outputs", "make_grid", "measured_lrp", "run_benchmark"]

OUTPUTS = ("results.json", "results.md", "results.csv", "audit.csv", "report.html", "sweep.json", "sweep.md",
           "swap_dose.json", "swap_dose.md", "mask_quality.json", "mask_quality.md",
           *(f"figures/{name}.png" for name in ("accuracy", "background_relevance", "shortcut_relevance", "train_time",
                                               "heatmaps", "examples", "swap", "swap_dose")))
"""The files a benchmark (any mode) writes into its folder besides ``data/`` and ``runs/``."""

Evaluate = Callable[..., dict[str, Any]]
"""A benchmark's ``evaluate_classifier(model, config, test, *, raw_input=False)``."""


def measured_lrp(cfg: BenchSettings) -> dict[str, Any]:
    """The LRP options every method's relevance is measured with: the benchmark's, not a method's own
    (``gxi+swap`` trains on gradient x input heatmaps, yet is measured like the others)."""
    defaults = TrainConfig()
    return {key: cfg.train_options.get(key, getattr(defaults, key)) for key in ("epsilon", "zb")}


def _resized(t: Tensor, size: int, *, image: bool) -> Tensor:
    if image:
        return TF.resize(t, [size, size], antialias=True)
    return TF.resize(t.to(torch.uint8), [size, size], interpolation=InterpolationMode.NEAREST).to(t.dtype)


def at_training_size(test: Tests, image_size: int | None) -> Tests:
    """A test set (a dataclass of ``images`` (N, C, H, W), labels and other (N, c, H, W) maps such as
    masks) at the size a run's training images were resized to (``image_size``, as
    :func:`isnet.data.folder.make_transform` does): images bilinear with antialiasing, the
    maps nearest, so they stay binary. The same object when no resize is needed."""
    height, width = test.images.shape[-2:]
    if image_size is None or (height, width) == (image_size, image_size):
        return test
    changes = {f.name: _resized(value, image_size, image=f.name == "images")
               for f in dataclasses.fields(test)
               if isinstance(value := getattr(test, f.name), Tensor) and value.shape[-2:] == (height, width)}
    return dataclasses.replace(test, **changes)


def _evaluate_run(evaluate: Evaluate, tests: Mapping[str, TestSet], lrp: Mapping[str, Any], model: nn.Module,
                  config: dict) -> dict[str, Any]:
    """A run's record entries: every test set (at the run's training image size), for masked-input
    methods also the raw images, and the background audit on the biased test set
    (:func:`isnet.bench.audit_columns.audit_run`, on the input the classifier sees)."""
    config = {**config, **lrp}
    tests = {name: at_training_size(test, config.get("image_size")) for name, test in tests.items()}
    results = {name: evaluate(model, config, test) for name, test in tests.items()}
    raw = {}
    if get_objective(config["objective"]).masked_input:
        raw = {name: evaluate(model, config, test, raw_input=True) for name, test in tests.items()}
    audited = audit_run(model, config, tests[AUDIT_SET]) if AUDIT_SET in tests else None
    return {"results": results, "raw_input_results": raw or None, "audit": audited}


def _older_outputs(out: Path) -> list[Path]:
    """:data:`OUTPUTS` of a benchmark folder written before the ledger, known by its JSON's benchmark config."""
    for name in ("results.json", "sweep.json", "swap_dose.json", "mask_quality.json"):
        try:
            config = json.loads((out / name).read_text()).get("config")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            continue
        if isinstance(config, dict) and "bench" in config:
            return [out / o for o in OUTPUTS]
    return []


def claim_outputs(out: Path) -> None:
    """Refuse, before any work, a folder holding one of :data:`OUTPUTS` that isnet did not write (the user's
    ``report.html``); then record them all as the benchmark's, so that a rerun may replace them."""
    planned = [out / name for name in OUTPUTS]
    check_new_files(out, planned, _older_outputs(out), out_option="--out")
    claim(out, planned, "bench")


def make_grid(benchmark: Benchmark[Settings, Tests], cfg: Settings, runs: Path,
              methods: Mapping[str, Mapping[str, Any]], data: Mapping[str, Path], tests: Mapping[str, Tests], *,
              cost: Mapping[str, float] = RELATIVE_COST,
              method_data: Mapping[str, Mapping[str, Path]] | None = None) -> Grid:
    """The grid that trains ``methods`` (name -> training options) with ``cfg``'s settings into ``runs`` and
    evaluates each run with the benchmark on ``tests``."""
    return Grid(
        methods=methods, seeds=cfg.seeds, arch=cfg.arch,
        options={**cfg.train_options, **({"epochs": cfg.epochs} if cfg.epochs is not None else {})},
        data=data, runs=runs,
        evaluate=functools.partial(_evaluate_run, benchmark.evaluate_classifier, tests, measured_lrp(cfg)),
        test_key=benchmark.test_key(cfg), earlier_test_keys=benchmark.earlier_test_keys(cfg),
        describe=benchmark.describe, name=benchmark.label, cost=cost, jobs=cfg.jobs, threads=cfg.threads,
        progress_bar=cfg.progress_bar, method_data=dict(method_data or {}))


def _begin(benchmark: Benchmark[Settings, Tests], cfg: Settings, out: Path,
           log: Log) -> tuple[float, Mapping[str, Path], dict[str, Tests]]:
    """Validate ``cfg``, check and claim ``out``'s outputs (:func:`claim_outputs`), set the torch threads, log the
    plan, write the data to ``out/data`` and make the test sets; the start time, the data roots and the tests."""
    cfg.validate()
    claim_outputs(out)
    if cfg.threads and cfg.jobs == 1:
        torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    log(f"{len(cfg.methods)} method(s) x {cfg.seeds} seed(s): {', '.join(cfg.methods)}; output {out}", None)
    data = benchmark.prepare_data(out / "data", cfg)
    tests = benchmark.make_test_sets(cfg)
    log(f"{benchmark.ready(cfg)} in {out / 'data'}", start)
    return start, data, tests


def _bench_methods(benchmark: Benchmark[Settings, Tests], cfg: Settings, out: Path, data: Mapping[str, Path],
                   tests: Mapping[str, Tests], log: Log,
                   start: float) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """The configured methods' training options in table order and, when ``seg-classify`` is among them, its
    segmenter (:func:`isnet.bench.segmenter.prepare_segmenter`, scored on the benchmark's test sets; else None)."""
    methods = {m: dict(METHODS[m]) for m in sorted(cfg.methods, key=method_order)}
    if SEG_CLASSIFY not in methods:
        return methods, None
    components, in_channels = benchmark.segmenter_input
    segmenter = prepare_segmenter(out, data, {t: tests[t] for t in benchmark.test_sets}, components=components,
                                  in_channels=in_channels, log=log, start=start)
    methods[SEG_CLASSIFY]["segmenter"] = segmenter["run"]
    return methods, segmenter


def _results(benchmark: Benchmark[Settings, Tests], cfg: Settings, grid: Grid, records: Mapping[str, list[dict]],
             tests: Mapping[str, Tests], segmenter: dict[str, Any] | None) -> dict[str, Any]:
    """The results dict: the metrics aggregated over seeds (:func:`isnet.bench.report.aggregate`, completed by the
    benchmark), train and step times, the paired comparisons of the benchmark's compared pairs, the background
    audit per method (:func:`isnet.bench.audit_columns.audit_summary`) and the configuration, the benchmark's
    entries after ``measured_lrp``."""
    methods, train_time, step_time = aggregate(records, benchmark.metrics)
    benchmark.complete_aggregate(methods, records)
    return {
        "methods": methods,
        "train_time_s": train_time,
        "step_time_s": step_time,
        "paired": paired_comparisons(records, benchmark.compared),
        "audit": audit_summary(records),
        "config": {
            "bench": dataclasses.asdict(cfg),
            "train": listed_train_options(cfg),
            "method_options": dict(grid.methods),
            "background_swap": {m: swap_setting(m) for m in grid.methods},
            "measured_lrp": measured_lrp(cfg),
            **benchmark.results_entries(tests),
            "segmenter": segmenter,
            "calibration": {m: [r.get("calibration") for r in recs] for m, recs in records.items()},
            "host": f"{platform.platform()}, {platform.processor() or platform.machine()}",
            "torch_threads": torch.get_num_threads() if cfg.jobs == 1 else threads_per_job(cfg.jobs, cfg.threads),
            "jobs": cfg.jobs,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        },
    }


def _heatmap_figure(benchmark: Benchmark[Settings, Tests], cfg: Settings, grid: Grid,
                    tests: Mapping[str, Tests]) -> Figure | None:
    """Methods x ``cfg.n_examples`` images from each of the benchmark's test sets: the seed-0 model's LRP heatmaps
    of the predicted class (measured with :func:`measured_lrp`), each titled with its prediction; None without
    examples. Columns are headed by :meth:`~isnet.bench.interface.Benchmark.example_title`."""
    names = benchmark.test_sets
    picks = [(name, i) for name in names for i in range(min(cfg.n_examples, cfg.n_test))]
    if not picks:
        return None
    maps, preds, inputs = {}, {}, {}
    for method in sorted(cfg.methods, key=method_order):
        model, config = load_run(grid, method, 0)
        config = {**config, **measured_lrp(cfg)}
        size = config.get("image_size")
        if size not in inputs:  # the example images at each training size, resized once
            sized = {n: at_training_size(tests[n], size) for n in names}
            inputs[size] = (torch.stack([sized[n].images[i] for n, i in picks]),
                            torch.stack([sized[n].masks[i] for n, i in picks]))
        images, masks = inputs[size]
        logits, maps[method] = predict_batch(model, explainer(model, config), config, images, masks)
        preds[method] = logits.argmax(1)
    fig = heatmap_grid(images, maps, col_titles=[benchmark.example_title(tests, n, i) for n, i in picks])
    count = len(picks)
    if benchmark.title_size is not None:
        for col in range(count):
            fig.axes[col].title.set_fontsize(benchmark.title_size)
    for row, method in enumerate(maps, start=1):
        for col in range(count):
            fig.axes[row * count + col].set_title(f"pred {benchmark.class_name(int(preds[method][col]))}", fontsize=7)
    return fig


def run_benchmark(benchmark: Benchmark[Settings, Tests], cfg: Settings, out: str | Path, *,
                  log: Log | None = None) -> dict[str, Any]:
    """Run ``benchmark`` with ``cfg`` into ``out``, holding its lock (:class:`isnet.locks.FolderLock`), and return
    the results dict (also written as results.json). ``log``: progress lines (default: printed, prefixed with
    ``bench NAME``)."""
    with FolderLock(out, f"isnet {benchmark.label}"):
        log = log or console_log(benchmark.label)
        out = Path(out).expanduser()
        start, data, tests = _begin(benchmark, cfg, out, log)
        methods, segmenter = _bench_methods(benchmark, cfg, out, data, tests, log, start)
        grid = make_grid(benchmark, cfg, out / "runs", methods, data, tests)
        records = run_grid(grid, start, log)
        results = _results(benchmark, cfg, grid, records, tests, segmenter)
        log("evaluating heatmaps and writing the report", start)
        heatmaps = _heatmap_figure(benchmark, cfg, grid, tests)
        results["config"]["total_time_s"] = time.perf_counter() - start
        write_results(benchmark, out, cfg, results, heatmaps, tests)
        log(f"wrote {out / 'results.json'}, results.md, results.csv, audit.csv, figures/ and report.html "
            f"(total {clock(time.perf_counter() - start)})", start)
        return results
