"""The background-bias benchmark on BG-CXR: ISNets and baselines where the background is anatomy.

BG-CXR (:mod:`isnet.data.bg_cxr`) draws chests around real lung masks; the class lives in the
lungs, and eight fictional hospitals add the shortcuts (marker text, label box, exposure, noise,
field of view), correlated with the class in training. ``isnet bench cxr --out DIR`` (and
:func:`run_benchmark`) follows ``isnet bench bias`` (:mod:`isnet.bench.bias`):

1. writes BG-CXR to ``DIR/data`` (:func:`isnet.data.bg_cxr.write_dataset`, all four test sets);
2. trains every method (the BG-Digits names and options) and seed with
   :func:`isnet.training.fit` into ``DIR/runs/<method>/seed<k>`` (:mod:`isnet.bench.grid`;
   finished runs are reused);
3. evaluates each classifier on the ``biased``, ``unbiased``, ``external`` and ``deceiving``
   test sets (:data:`~isnet.bench.cxr_presets.CXR_METRICS`): accuracy, macro AUROC, the
   abnormal-vs-normal AUROC with its DeLong interval, and the shares of absolute LRP-Flex
   relevance (predicted class, one rule for every method) outside the lungs and on the marker
   and label box;
4. compares each method with the standard classifier of the same swap setting, seed by seed
   (:mod:`isnet.bench.paired`), and writes ``results.json``, ``results.md``, ``results.csv``,
   figures and ``report.html`` (:mod:`isnet.bench.cxr_report`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import platform
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..checkpoints import explainer, load_classifier
from ..config import TrainConfig
from ..data.bg_cxr import CLASSES, HOSPITALS, generate, to_tensors, write_dataset
from ..evaluate import predict_batch
from ..figures import heatmap_grid
from ..metrics import background_share, classification_metrics, delong_auroc_ci, relevance_share
from ..objectives import get_objective
from .cxr_presets import ABNORMAL_CI, CXR_METRICS, CXR_TEST_SETS, CxrBenchConfig
from .cxr_report import write_results
from .grid import Grid, Log, clock, console_log, run_dir, run_grid, threads_per_job
from .paired import paired_comparisons
from .presets import METHODS, RAW_INPUT, RELATIVE_COST, method_order, swap_setting
from .report import aggregate, listed_train_options

__all__ = ["CxrTestSet", "evaluate_classifier", "make_test_sets", "measured_lrp", "prepare_data", "run_benchmark"]

_NAME = "bench cxr"
_log = console_log(_NAME)
_NORMAL = CLASSES.index("normal")


def prepare_data(root: Path, cfg: CxrBenchConfig) -> dict[str, Path]:
    """BG-CXR on disk (reused when ``root/bg-cxr.json`` matches the settings); the train and val roots."""
    meta = root / "bg-cxr.json"
    sizes = {"train": cfg.n_train, "val": cfg.n_val, **{f"test/{t}": cfg.n_test for t in CXR_TEST_SETS}}
    wanted = {"seed": cfg.data_seed, "image_size": cfg.image_size, "correlation": cfg.correlation, "n": sizes}
    if meta.is_file():
        saved = json.loads(meta.read_text())
        have = {key: saved.get(key) for key in ("seed", "image_size", "correlation")}
        have["n"] = {name: split.get("n") for name, split in saved.get("splits", {}).items()}
        if have == wanted:
            return {name: root / name for name in ("train", "val")}
        raise FileExistsError(f"{root} holds BG-CXR made with other settings ({have}); choose another --out")
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not a BG-CXR folder; choose another --out")
    paths = write_dataset(root, seed=cfg.data_seed, n_train=cfg.n_train, n_val=cfg.n_val, n_test=cfg.n_test,
                          image_size=cfg.image_size, correlation=cfg.correlation, tests=CXR_TEST_SETS)
    return {"train": paths["train"], "val": paths["val"]}


@dataclass
class CxrTestSet:
    """One BG-CXR test set in memory."""

    images: Tensor  # (N, 3, H, W) in [0, 1], grayscale replicated
    masks: Tensor  # (N, 1, H, W), the lungs
    labels: Tensor  # (N,)
    shortcuts: Tensor  # (N, 1, H, W), the hospital's marker and label box
    hospitals: Tensor  # (N,), index into isnet.data.bg_cxr.HOSPITALS


def make_test_sets(cfg: CxrBenchConfig) -> dict[str, CxrTestSet]:
    """The test sets in memory, identical to the files under ``DATA/test``."""
    sets = {}
    for bias in CXR_TEST_SETS:
        d = generate(cfg.n_test, split="test", seed=cfg.data_seed, bias=bias, image_size=cfg.image_size,
                     correlation=cfg.correlation)
        images, masks, labels = to_tensors(d)
        sets[bias] = CxrTestSet(images, masks, labels, torch.from_numpy(d.shortcut_masks).float()[:, None],
                                torch.from_numpy(d.hospitals))
    return sets


def evaluate_classifier(model: nn.Module, config: Mapping[str, Any], test: CxrTestSet, *,
                        raw_input: bool = False, batch_size: int = 100) -> dict[str, Any]:
    """Scores and relevance shares of a trained classifier (eval mode) on one test set.

    ``accuracy`` and the macro one-vs-rest ``auroc`` come from
    :func:`isnet.metrics.classification_metrics`; ``abnormal_auroc`` scores abnormal
    (consolidation or ground glass) against normal by 1 - p(normal), with its DeLong interval
    (``abnormal_auroc_ci95``). Heatmaps: LRP-Flex of the predicted class with the config's
    ``epsilon`` / ``zb`` (:func:`isnet.evaluate.predict_batch`); ``background_relevance`` is the
    mean share of absolute relevance outside the lungs, ``shortcut_relevance`` the mean share on
    the marker and label box. Masked-input methods see ``x * mask`` unless ``raw_input``.
    """
    model.eval()
    lrp = explainer(model, config)
    logits, bg, shortcut = [], [], []
    for start in range(0, len(test.labels), batch_size):
        part = slice(start, start + batch_size)
        out, heat = predict_batch(model, lrp, config, test.images[part], test.masks[part], raw_input=raw_input)
        logits.append(out.detach().float())
        bg.append(background_share(heat, test.masks[part]))
        shortcut.append(relevance_share(heat, test.shortcuts[part]))
    scores = classification_metrics(torch.cat(logits), test.labels, len(CLASSES))
    abnormal = 1.0 - torch.softmax(torch.cat(logits).double(), dim=1)[:, _NORMAL]
    auc, low, high = delong_auroc_ci(abnormal, (test.labels != _NORMAL).long())
    return {
        "accuracy": scores["accuracy"],
        "auroc": scores["auroc"],
        "abnormal_auroc": auc,
        ABNORMAL_CI: [low, high],
        "background_relevance": torch.cat(bg).double().mean().item(),
        "shortcut_relevance": torch.cat(shortcut).double().mean().item(),
        "confusion_matrix": scores["confusion_matrix"],
        "n": int(len(test.labels)),
    }


def measured_lrp(cfg: CxrBenchConfig) -> dict[str, Any]:
    """The LRP options every method's relevance is measured with: the benchmark's, not a method's own."""
    defaults = TrainConfig()
    return {key: cfg.train_options.get(key, getattr(defaults, key)) for key in ("epsilon", "zb")}


def _evaluate_run(tests: Mapping[str, CxrTestSet], lrp: Mapping[str, Any], model: nn.Module,
                  config: dict) -> dict[str, Any]:
    """A run's record entries: every test set, and for masked-input methods also the raw images."""
    config = {**config, **lrp}
    results = {name: evaluate_classifier(model, config, test) for name, test in tests.items()}
    raw = {}
    if get_objective(config["variant"]).masked_input:
        raw = {name: evaluate_classifier(model, config, test, raw_input=True) for name, test in tests.items()}
    return {"results": results, "raw_input_results": raw or None}


def _describe(record: Mapping[str, Any]) -> str:
    r = record["results"]
    accuracies = " ".join(f"{t} {100 * r[t]['accuracy']:.1f}%" for t in CXR_TEST_SETS)
    return (f"accuracy {accuracies}; abnormal AUROC deceiving {r['deceiving']['abnormal_auroc']:.3f}; "
            f"background relevance {100 * r['biased']['background_relevance']:.1f}%")


def _grid(cfg: CxrBenchConfig, runs: Path, data: Mapping[str, Path], tests: Mapping[str, CxrTestSet]) -> Grid:
    """The grid that trains the configured methods into ``runs``."""
    return Grid(
        methods={m: METHODS[m] for m in sorted(cfg.methods, key=method_order)}, seeds=cfg.seeds, arch=cfg.arch,
        options={**cfg.train_options, **({"epochs": cfg.epochs} if cfg.epochs is not None else {})},
        data=data, runs=runs, evaluate=functools.partial(_evaluate_run, tests, measured_lrp(cfg)),
        test_key={"dataset": "bg-cxr", "n": cfg.n_test, "data_seed": cfg.data_seed, "image_size": cfg.image_size,
                  "correlation": cfg.correlation, "tests": list(CXR_TEST_SETS)},
        describe=_describe, name=_NAME, cost=RELATIVE_COST, jobs=cfg.jobs, threads=cfg.threads,
        progress_bar=cfg.progress_bar)


def _add_intervals(aggregated: dict[str, dict], records: Mapping[str, list[dict]]) -> None:
    """Put each seed's DeLong interval of the abnormal AUROC next to the aggregated metrics."""
    for method, recs in records.items():
        for name, key in ((method, "results"), (method + RAW_INPUT, "raw_input_results")):
            for test, entry in aggregated.get(name, {}).items():
                entry[ABNORMAL_CI] = [r[key][test][ABNORMAL_CI] for r in recs]


def _heatmap_grid(cfg: CxrBenchConfig, tests: Mapping[str, CxrTestSet], runs: Path) -> Figure | None:
    """Methods x example images from each test set (seed-0 models), heatmaps of the predicted class."""
    picks = [(name, i) for name in CXR_TEST_SETS for i in range(min(cfg.n_examples, cfg.n_test))]
    if not picks:
        return None
    images = torch.stack([tests[n].images[i] for n, i in picks])
    masks = torch.stack([tests[n].masks[i] for n, i in picks])
    titles = [f"{n}\n{CLASSES[int(tests[n].labels[i])]}\n{HOSPITALS[int(tests[n].hospitals[i])].name}"
              for n, i in picks]
    maps, preds = {}, {}
    for method in sorted(cfg.methods, key=method_order):
        model, config = load_classifier(run_dir(runs, method, 0))
        config = {**config, **measured_lrp(cfg)}
        logits, maps[method] = predict_batch(model, explainer(model, config), config, images, masks)
        preds[method] = logits.argmax(1)
    fig = heatmap_grid(images, maps, col_titles=titles)
    for col in range(len(picks)):
        fig.axes[col].title.set_fontsize(7)
    for row, method in enumerate(maps, start=1):
        for col in range(len(picks)):
            fig.axes[row * len(picks) + col].set_title(f"pred {CLASSES[int(preds[method][col])]}", fontsize=7)
    return fig


def run_benchmark(cfg: CxrBenchConfig, out: str | Path, *, log: Log = _log) -> dict:
    """Run the benchmark into ``out`` and return the results dict (also written as results.json)."""
    cfg.validate()
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads and cfg.jobs == 1:
        torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    log(f"{len(cfg.methods)} method(s) x {cfg.seeds} seed(s): {', '.join(cfg.methods)}; output {out}", None)
    data = prepare_data(out / "data", cfg)
    tests = make_test_sets(cfg)
    log(f"BG-CXR ready ({cfg.n_train} train, {cfg.n_val} val, {cfg.n_test} per test set; {cfg.image_size}x"
        f"{cfg.image_size}, correlation {cfg.correlation:g}) in {out / 'data'}", start)
    grid = _grid(cfg, out / "runs", data, tests)
    records = run_grid(grid, start, log)
    aggregated, train_time, step_time = aggregate(records, CXR_METRICS)
    _add_intervals(aggregated, records)
    results: dict[str, Any] = {
        "methods": aggregated,
        "train_time_s": train_time,
        "step_time_s": step_time,
        "paired": paired_comparisons(records),
        "config": {
            "bench": dataclasses.asdict(cfg),
            "train": listed_train_options(cfg),
            "method_options": dict(grid.methods),
            "background_swap": {m: swap_setting(m) for m in grid.methods},
            "measured_lrp": measured_lrp(cfg),
            "test_sets": list(CXR_TEST_SETS),
            "metrics": list(CXR_METRICS),
            "classes": list(CLASSES),
            "calibration": {m: [r.get("calibration") for r in recs] for m, recs in records.items()},
            "host": f"{platform.platform()}, {platform.processor() or platform.machine()}",
            "torch_threads": torch.get_num_threads() if cfg.jobs == 1 else threads_per_job(cfg.jobs, cfg.threads),
            "jobs": cfg.jobs,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        },
    }
    log("evaluating heatmaps and writing the report", start)
    heatmaps = _heatmap_grid(cfg, tests, out / "runs")
    results["config"]["total_time_s"] = time.perf_counter() - start
    biased = tests["biased"]
    write_results(out, cfg, results, heatmaps, swap_sample=(biased.images, biased.masks))
    log(f"wrote {out / 'results.json'}, results.md, results.csv, figures/ and report.html "
        f"(total {clock(time.perf_counter() - start)})", start)
    return results
