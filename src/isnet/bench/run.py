"""The steps the BG-Digits and BG-CXR benchmarks share (:mod:`isnet.bench.bias`, :mod:`isnet.bench.cxr`).

Each benchmark brings its data, test sets, ``evaluate_classifier`` and report; this module
builds the training grid around them, measures every method's relevance with one LRP rule,
draws the seed-0 heatmaps, and assembles and writes the results in the same order for both.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ..checkpoints import explainer, load_classifier
from ..config import TrainConfig
from ..evaluate import predict_batch
from ..figures import heatmap_grid
from ..objectives import get_objective
from ..outputs import claim
from ..paths import check_new_files
from .audit_columns import AUDIT_SET, audit_run, audit_summary
from .grid import Grid, Log, clock, run_dir, threads_per_job
from .paired import COMPARED, paired_comparisons
from .presets import METHODS, SEG_CLASSIFY, method_order, swap_setting
from .report import listed_train_options
from .segmenter import prepare_segmenter

__all__ = ["OUTPUTS", "at_training_size", "bench_methods", "bench_results", "begin", "claim_outputs", "finish",
           "heatmap_figure", "make_grid", "measured_lrp"]

OUTPUTS = ("results.json", "results.md", "results.csv", "report.html", "sweep.json", "sweep.md", "swap_dose.json",
           "swap_dose.md", "mask_quality.json", "mask_quality.md",
           *(f"figures/{name}.png" for name in ("accuracy", "background_relevance", "shortcut_relevance", "train_time",
                                               "heatmaps", "examples", "swap", "swap_dose")))
"""The files a benchmark (any mode) writes into its folder besides ``data/`` and ``runs/``."""

Evaluate = Callable[..., dict[str, Any]]
"""A benchmark's ``evaluate_classifier(model, config, test, *, raw_input=False)``."""


def measured_lrp(cfg: Any) -> dict[str, Any]:
    """The LRP options every method's relevance is measured with: the benchmark's, not a method's own
    (``gxi+swap`` trains on gradient x input heatmaps, yet is measured like the others)."""
    defaults = TrainConfig()
    return {key: cfg.train_options.get(key, getattr(defaults, key)) for key in ("epsilon", "zb")}


def _resized(t: Tensor, size: int, *, image: bool) -> Tensor:
    if image:
        return TF.resize(t, [size, size], antialias=True)
    return TF.resize(t.to(torch.uint8), [size, size], interpolation=InterpolationMode.NEAREST).to(t.dtype)


def at_training_size(test: Any, image_size: int | None) -> Any:
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


def _evaluate_run(evaluate: Evaluate, tests: Mapping[str, Any], lrp: Mapping[str, Any], model: nn.Module,
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


def make_grid(cfg: Any, runs: Path, methods: Mapping[str, Mapping[str, Any]], data: Mapping[str, Path],
              evaluate: Evaluate, tests: Mapping[str, Any], *, test_key: Mapping[str, Any],
              describe: Callable[[Mapping[str, Any]], str], name: str, cost: Mapping[str, float],
              method_data: Mapping[str, Mapping[str, Path]] | None = None) -> Grid:
    """The grid that trains ``methods`` (name -> training options) with ``cfg``'s settings into ``runs`` and
    evaluates each run with ``evaluate`` on ``tests``."""
    return Grid(
        methods=methods, seeds=cfg.seeds, arch=cfg.arch,
        options={**cfg.train_options, **({"epochs": cfg.epochs} if cfg.epochs is not None else {})},
        data=data, runs=runs, evaluate=functools.partial(_evaluate_run, evaluate, tests, measured_lrp(cfg)),
        test_key=test_key, describe=describe, name=name, cost=cost, jobs=cfg.jobs, threads=cfg.threads,
        progress_bar=cfg.progress_bar, method_data=dict(method_data or {}))


def begin(cfg: Any, out: str | Path, log: Log, prepare_data: Callable[[Path, Any], Mapping[str, Path]],
          make_test_sets: Callable[[Any], dict[str, Any]], ready: str) -> tuple[Path, float, Mapping[str, Path], dict]:
    """Validate ``cfg``, check and claim ``out``'s outputs (:func:`claim_outputs`), set the torch threads, log the
    plan, write the data to ``out/data`` and make the test sets (then log ``ready``); the folder, the start time,
    the data roots and the tests. The caller holds ``out``'s lock (:func:`isnet.locks.holding_lock`)."""
    cfg.validate()
    out = Path(out).expanduser()
    claim_outputs(out)
    if cfg.threads and cfg.jobs == 1:
        torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    log(f"{len(cfg.methods)} method(s) x {cfg.seeds} seed(s): {', '.join(cfg.methods)}; output {out}", None)
    data = prepare_data(out / "data", cfg)
    tests = make_test_sets(cfg)
    log(f"{ready} in {out / 'data'}", start)
    return out, start, data, tests


def bench_methods(cfg: Any, out: Path, data: Mapping[str, Path], tests: Mapping[str, Any], log: Log, start: float,
                  *, components: int, in_channels: int) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """The configured methods' training options in table order and, when ``seg-classify`` is among them, its
    segmenter (:func:`isnet.bench.segmenter.prepare_segmenter`, scored on ``tests``; else None)."""
    methods = {m: dict(METHODS[m]) for m in sorted(cfg.methods, key=method_order)}
    if SEG_CLASSIFY not in methods:
        return methods, None
    segmenter = prepare_segmenter(out, data, tests, components=components, in_channels=in_channels, log=log,
                                  start=start)
    methods[SEG_CLASSIFY]["segmenter"] = segmenter["run"]
    return methods, segmenter


def bench_results(cfg: Any, grid: Grid, records: Mapping[str, list[dict]],
                  aggregated: tuple[dict, dict, dict], *, compared: Sequence[tuple[str, str]] = COMPARED,
                  **config: Any) -> dict[str, Any]:
    """The results dict: ``aggregated`` (methods, train and step times), the paired comparisons of the
    ``compared`` (test set, metric) pairs, the background audit per method
    (:func:`isnet.bench.audit_columns.audit_summary`) and the configuration; ``config`` adds benchmark entries after
    ``measured_lrp``."""
    methods, train_time, step_time = aggregated
    return {
        "methods": methods,
        "train_time_s": train_time,
        "step_time_s": step_time,
        "paired": paired_comparisons(records, compared),
        "audit": audit_summary(records),
        "config": {
            "bench": dataclasses.asdict(cfg),
            "train": listed_train_options(cfg),
            "method_options": dict(grid.methods),
            "background_swap": {m: swap_setting(m) for m in grid.methods},
            "measured_lrp": measured_lrp(cfg),
            **config,
            "calibration": {m: [r.get("calibration") for r in recs] for m, recs in records.items()},
            "host": f"{platform.platform()}, {platform.processor() or platform.machine()}",
            "torch_threads": torch.get_num_threads() if cfg.jobs == 1 else threads_per_job(cfg.jobs, cfg.threads),
            "jobs": cfg.jobs,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        },
    }


def heatmap_figure(cfg: Any, runs: Path, tests: Mapping[str, Any], names: Sequence[str],
                   col_title: Callable[[str, int], str], pred_name: Callable[[int], str] = str,
                   title_size: int | None = None) -> Figure | None:
    """Methods x ``cfg.n_examples`` images from each test set in ``names``: the seed-0 model's LRP heatmaps of
    the predicted class (measured with :func:`measured_lrp`), each titled with its prediction; None without
    examples. ``col_title(test set, index)`` heads a column of images (in ``title_size`` points when given)."""
    picks = [(name, i) for name in names for i in range(min(cfg.n_examples, cfg.n_test))]
    if not picks:
        return None
    maps, preds, inputs = {}, {}, {}
    for method in sorted(cfg.methods, key=method_order):
        model, config = load_classifier(run_dir(runs, method, 0))
        config = {**config, **measured_lrp(cfg)}
        size = config.get("image_size")
        if size not in inputs:  # the example images at each training size, resized once
            sized = {n: at_training_size(tests[n], size) for n in names}
            inputs[size] = (torch.stack([sized[n].images[i] for n, i in picks]),
                            torch.stack([sized[n].masks[i] for n, i in picks]))
        images, masks = inputs[size]
        logits, maps[method] = predict_batch(model, explainer(model, config), config, images, masks)
        preds[method] = logits.argmax(1)
    fig = heatmap_grid(images, maps, col_titles=[col_title(n, i) for n, i in picks])
    count = len(picks)
    if title_size is not None:
        for col in range(count):
            fig.axes[col].title.set_fontsize(title_size)
    for row, method in enumerate(maps, start=1):
        for col in range(count):
            fig.axes[row * count + col].set_title(f"pred {pred_name(int(preds[method][col]))}", fontsize=7)
    return fig


def finish(out: Path, start: float, log: Log, results: dict[str, Any], heatmaps: Callable[[], Figure | None],
           write: Callable[[Figure | None], None]) -> dict[str, Any]:
    """Draw the heatmaps, record the total time, write the results with ``write`` and log it; the results."""
    log("evaluating heatmaps and writing the report", start)
    figure = heatmaps()
    results["config"]["total_time_s"] = time.perf_counter() - start
    write(figure)
    log(f"wrote {out / 'results.json'}, results.md, results.csv, figures/ and report.html "
        f"(total {clock(time.perf_counter() - start)})", start)
    return results
