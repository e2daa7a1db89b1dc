"""The background-bias benchmark on BG-CXR: ISNets and baselines where the background is anatomy.

BG-CXR (:mod:`isnet.data.cxr.bg_cxr`) draws chests around real lung masks; the class lives in the
lungs, and eight fictional hospitals add the shortcuts (marker text, label box, exposure, noise,
field of view), correlated with the class in training. ``isnet bench cxr --out DIR`` (and
:func:`run_benchmark`) follows ``isnet bench bias`` (:mod:`isnet.bench.bias`):

1. writes BG-CXR to ``DIR/data`` (:func:`isnet.data.cxr.bg_cxr.write_dataset`, all four test sets);
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

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..checkpoints import explainer
from ..data.cxr.bg_cxr import CLASSES, HOSPITALS, generate, to_tensors, write_dataset
from ..evaluate import predict_batch
from ..locks import holding_lock
from ..metrics import background_share, classification_metrics, delong_auroc_ci, relevance_share
from .cxr_presets import ABNORMAL_CI, CXR_COMPARED, CXR_METRICS, CXR_TEST_SETS, CxrBenchConfig
from .cxr_report import write_results
from .grid import Grid, Log, console_log, run_grid
from .presets import RAW_INPUT, RELATIVE_COST
from .report import aggregate
from .run import begin, bench_methods, bench_results, finish, heatmap_figure, make_grid, measured_lrp

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
    hospitals: Tensor  # (N,), index into isnet.data.cxr.bg_cxr.HOSPITALS


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


def _describe(record: Mapping[str, Any]) -> str:
    r = record["results"]
    accuracies = " ".join(f"{t} {100 * r[t]['accuracy']:.1f}%" for t in CXR_TEST_SETS)
    return (f"accuracy {accuracies}; abnormal AUROC deceiving {r['deceiving']['abnormal_auroc']:.3f}; "
            f"background relevance {100 * r['biased']['background_relevance']:.1f}%")


def _grid(cfg: CxrBenchConfig, runs: Path, methods: Mapping[str, Mapping[str, Any]], data: Mapping[str, Path],
          tests: Mapping[str, CxrTestSet]) -> Grid:
    """The grid that trains ``methods`` (name -> training options) into ``runs``."""
    return make_grid(cfg, runs, methods, data, evaluate_classifier, tests,
                     test_key={"dataset": "bg-cxr", "n": cfg.n_test, "data_seed": cfg.data_seed,
                               "image_size": cfg.image_size, "correlation": cfg.correlation,
                               "tests": list(CXR_TEST_SETS)},
                     describe=_describe, name=_NAME, cost=RELATIVE_COST)


def _add_intervals(aggregated: dict[str, dict], records: Mapping[str, list[dict]]) -> None:
    """Put each seed's DeLong interval of the abnormal AUROC next to the aggregated metrics."""
    for method, recs in records.items():
        for name, key in ((method, "results"), (method + RAW_INPUT, "raw_input_results")):
            for test, entry in aggregated.get(name, {}).items():
                entry[ABNORMAL_CI] = [r[key][test][ABNORMAL_CI] for r in recs]


def _heatmap_grid(cfg: CxrBenchConfig, tests: Mapping[str, CxrTestSet], runs: Path) -> Figure | None:
    """Methods x example images from each test set (seed-0 models), heatmaps of the predicted class."""
    return heatmap_figure(
        cfg, runs, tests, CXR_TEST_SETS,
        lambda n, i: f"{n}\n{CLASSES[int(tests[n].labels[i])]}\n{HOSPITALS[int(tests[n].hospitals[i])].name}",
        pred_name=CLASSES.__getitem__, title_size=7)


@holding_lock("isnet bench cxr")
def run_benchmark(cfg: CxrBenchConfig, out: str | Path, *, log: Log = _log) -> dict:
    """Run the benchmark into ``out`` and return the results dict (also written as results.json)."""
    out, start, data, tests = begin(cfg, out, log, prepare_data, make_test_sets,
                                    f"BG-CXR ready ({cfg.n_train} train, {cfg.n_val} val, {cfg.n_test} per test "
                                    f"set; {cfg.image_size}x{cfg.image_size}, correlation {cfg.correlation:g})")
    # the segmenter reads grayscale and keeps the two largest regions: a pair of lungs
    methods, segmenter = bench_methods(cfg, out, data, tests, log, start, components=2, in_channels=1)
    grid = _grid(cfg, out / "runs", methods, data, tests)
    records = run_grid(grid, start, log)
    aggregated = aggregate(records, CXR_METRICS)
    _add_intervals(aggregated[0], records)
    results = bench_results(cfg, grid, records, aggregated, compared=CXR_COMPARED, test_sets=list(CXR_TEST_SETS),
                            metrics=list(CXR_METRICS), classes=list(CLASSES), segmenter=segmenter)
    biased = tests["biased"]
    return finish(out, start, log, results, lambda: _heatmap_grid(cfg, tests, out / "runs"),
                  lambda heatmaps: write_results(out, cfg, results, heatmaps,
                                                 swap_sample=(biased.images, biased.masks)))
