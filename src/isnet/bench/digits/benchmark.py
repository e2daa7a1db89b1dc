"""The background-bias benchmark on BG-Digits: ISNets and baselines on one training pipeline.

BG-Digits puts each digit on a textured background with a cue (a white patch, or a colour
tint) that encodes the class in training. A classifier that reads the cue instead of the digit
keeps its accuracy on the ``biased`` test set and fails on the ``unbiased`` (no cue) and
``deceiving`` (another class's cue) ones. ``isnet bench bias --out DIR`` (and
:func:`run_benchmark`):

1. writes BG-Digits to ``DIR/data`` (:func:`isnet.data.digits.bg_digits.write_dataset`);
2. trains every method (:data:`~isnet.bench.presets.METHODS`) and seed with
   :func:`isnet.training.fit`, exactly what ``isnet train`` runs, into
   ``DIR/runs/<method>/seed<k>`` (:mod:`isnet.bench.grid`; finished runs are reused);
3. evaluates each trained classifier on every test set: accuracy, the share of absolute
   LRP-Flex relevance (heatmap of the predicted class, the same LRP rule for every method)
   outside the foreground mask and on the bias patch, and, with the patch cue, the
   **occlusion check**: accuracy on the biased test images with the patch replaced by
   neighbouring background;
4. compares each method with the standard classifier trained with the same swap setting,
   seed by seed (:mod:`isnet.bench.paired`), and writes ``results.json``, ``results.md``,
   ``results.csv``, figures and ``report.html`` (:mod:`isnet.bench.report`).

The grid modes (:mod:`isnet.bench.modes`) reuse the data, test sets and evaluation here.
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
from ..data.digits.bg_digits import generate, to_tensors, write_dataset
from ..evaluate import predict_batch
from ..locks import holding_lock
from ..metrics import background_share, relevance_share
from .grid import Grid, Log, console_log, run_grid
from .presets import OCCLUDED, RELATIVE_COST, TEST_SETS, BiasBenchConfig
from .report import aggregate, write_results
from .run import begin, bench_methods, bench_results, finish, heatmap_figure, make_grid, measured_lrp

__all__ = [
    "BiasTestSet", "bench_grid", "evaluate_classifier", "make_test_sets", "measured_lrp", "occlude_patches",
    "prepare_data", "run_benchmark",
]

_NAME = "bench bias"
_log = console_log(_NAME)


_DATA_KEYS = ("seed", "image_size", "mask", "placement", "cue", "train_mask")
_DATA_DEFAULTS = {"placement": "centre", "cue": "patch", "train_mask": "exact"}  # files written before these options


def prepare_data(root: Path, cfg: BiasBenchConfig, train_mask: str = "exact") -> dict[str, Path]:
    """BG-Digits on disk (reused when ``root/bg-digits.json`` matches the settings).

    ``train_mask`` degrades the training split's masks (:func:`isnet.data.digits.mask_quality.degrade_masks`).
    """
    meta = root / "bg-digits.json"
    wanted = {"seed": cfg.data_seed, "image_size": cfg.image_size, "mask": cfg.mask, "placement": cfg.placement,
              "cue": cfg.cue, "train_mask": train_mask,
              "n": {"train": cfg.n_train, "val": cfg.n_val, "test/biased": cfg.n_test}}
    if meta.is_file():
        saved = json.loads(meta.read_text())
        have = {key: saved.get(key, _DATA_DEFAULTS.get(key)) for key in _DATA_KEYS}
        have["n"] = {k: saved.get("splits", {}).get(k, {}).get("n") for k in wanted["n"]}
        if have == wanted:
            return {name: root / name for name in ("train", "val")}
        raise FileExistsError(f"{root} holds BG-Digits made with other settings ({have}); choose another --out")
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not a BG-Digits folder; choose another --out")
    paths = write_dataset(root, seed=cfg.data_seed, n_train=cfg.n_train, n_val=cfg.n_val, n_test=cfg.n_test,
                          mask=cfg.mask, image_size=cfg.image_size, placement=cfg.placement, cue=cfg.cue,
                          train_mask=train_mask)
    return {"train": paths["train"], "val": paths["val"]}


@dataclass
class BiasTestSet:
    """One BG-Digits test set in memory."""

    images: Tensor  # (N, 3, H, W) in [0, 1]
    masks: Tensor  # (N, 1, H, W)
    labels: Tensor  # (N,)
    patches: Tensor  # (N, 1, H, W), the bias patch pixels (none with the tint cue)


def occlude_patches(images: Tensor, patches: Tensor, masks: Tensor) -> Tensor:
    """Replace each image's bias patch by the background block next to it.

    For every image with a patch, the patch's bounding box is filled with the pixels of the
    same-sized block shifted by one box width or height (the first of right, left, down, up
    that lies inside the image and touches neither the patch nor the foreground mask). Images
    without a patch are returned unchanged.
    """
    out = images.clone()
    height, width = images.shape[-2:]
    for i in range(images.shape[0]):
        where = patches[i].reshape(height, width).nonzero()
        if where.numel() == 0:
            continue
        r0, c0 = where.min(0).values.tolist()
        r1, c1 = (where.max(0).values + 1).tolist()
        h, w = r1 - r0, c1 - c0
        fg = masks[i].reshape(-1, height, width).amax(0) > 0
        patch = patches[i].reshape(height, width) > 0
        for dr, dc in ((0, w), (0, -w), (h, 0), (-h, 0)):
            a, b = r0 + dr, c0 + dc
            if a < 0 or b < 0 or a + h > height or b + w > width:
                continue
            if fg[a:a + h, b:b + w].any() or patch[a:a + h, b:b + w].any():
                continue
            out[i, :, r0:r1, c0:c1] = images[i, :, a:a + h, b:b + w]
            break
    return out


def make_test_sets(cfg: BiasBenchConfig) -> dict[str, BiasTestSet]:
    """The test sets in memory (identical to the files under DATA/test), plus, with the patch cue,
    the occluded set."""
    sets: dict[str, BiasTestSet] = {}
    for bias in TEST_SETS:
        d = generate(cfg.n_test, split="test", seed=cfg.data_seed, bias=bias, mask=cfg.mask,
                     image_size=cfg.image_size, placement=cfg.placement, cue=cfg.cue)
        images, masks, labels = to_tensors(d)
        sets[bias] = BiasTestSet(images, masks, labels, torch.from_numpy(d.patch_masks).float()[:, None])
    if cfg.cue != "patch":
        return sets
    b = sets["biased"]
    sets[OCCLUDED] = BiasTestSet(occlude_patches(b.images, b.patches, b.masks), b.masks, b.labels,
                             torch.zeros_like(b.patches))
    return sets


def evaluate_classifier(model: nn.Module, config: Mapping[str, Any], test: BiasTestSet, *,
                        raw_input: bool = False, batch_size: int = 100) -> dict[str, Any]:
    """Accuracy and relevance shares of a trained classifier (eval mode) on one test set.

    Heatmaps: LRP-Flex of the predicted class with the run's ``epsilon`` / ``zb``
    (:func:`isnet.evaluate.predict_batch`). The ``background_relevance`` is the mean share of
    absolute relevance outside the mask; ``patch_relevance`` the mean share on the bias patch
    over the images that have one (None when none has). Masked-input methods see
    ``x * mask`` unless ``raw_input``.
    """
    model.eval()
    lrp = explainer(model, config)
    correct, bg, patch = [], [], []
    for start in range(0, len(test.labels), batch_size):
        part = slice(start, start + batch_size)
        logits, heat = predict_batch(model, lrp, config, test.images[part], test.masks[part], raw_input=raw_input)
        correct.append(logits.argmax(1) == test.labels[part])
        bg.append(background_share(heat, test.masks[part]))
        has_patch = test.patches[part].flatten(1).any(1)
        if has_patch.any():
            patch.append(relevance_share(heat[has_patch], test.patches[part][has_patch]))
    return {
        "accuracy": torch.cat(correct).float().mean().item(),
        "background_relevance": torch.cat(bg).double().mean().item(),
        "patch_relevance": torch.cat(patch).double().mean().item() if patch else None,
        "n": int(len(test.labels)),
    }


def _describe(record: Mapping[str, Any]) -> str:
    r = record["results"]
    occluded = f" occluded {100 * r[OCCLUDED]['accuracy']:.1f}%" if OCCLUDED in r else ""
    return (f"accuracy biased {100 * r['biased']['accuracy']:.1f}% unbiased {100 * r['unbiased']['accuracy']:.1f}% "
            f"deceiving {100 * r['deceiving']['accuracy']:.1f}%{occluded}; "
            f"background relevance {100 * r['biased']['background_relevance']:.1f}%")


def bench_grid(cfg: BiasBenchConfig, runs: Path, methods: Mapping[str, Mapping[str, Any]], data: Mapping[str, Path],
               tests: Mapping[str, BiasTestSet], *, cost: Mapping[str, float] = RELATIVE_COST,
               method_data: Mapping[str, Mapping[str, Path]] | None = None) -> Grid:
    """The grid that trains ``methods`` (name -> training options) with ``cfg``'s settings into ``runs``."""
    return make_grid(cfg, runs, methods, data, evaluate_classifier, tests,
                     test_key={"n": cfg.n_test, "data_seed": cfg.data_seed, "placement": cfg.placement, "cue": cfg.cue},
                     describe=_describe, name=_NAME, cost=cost, method_data=method_data)


def _heatmap_grid(cfg: BiasBenchConfig, tests: Mapping[str, BiasTestSet], runs: Path) -> Figure | None:
    """Methods x example images from each test set (seed-0 models), heatmaps of the predicted class."""
    return heatmap_figure(cfg, runs, tests, TEST_SETS, lambda n, i: f"{n}, label {int(tests[n].labels[i])}")


@holding_lock("isnet bench bias")
def run_benchmark(cfg: BiasBenchConfig, out: str | Path, *, log: Log = _log) -> dict:
    """Run the benchmark into ``out`` and return the results dict (also written as results.json)."""
    out, start, data, tests = begin(cfg, out, log, prepare_data, make_test_sets,
                                    f"BG-Digits ready ({cfg.n_train} train, {cfg.n_val} val, {cfg.n_test} per "
                                    f"test set; {cfg.placement}, {cfg.cue} cue)")
    methods, segmenter = bench_methods(cfg, out, data, {t: tests[t] for t in TEST_SETS}, log, start, components=1,
                                       in_channels=3)
    grid = bench_grid(cfg, out / "runs", methods, data, tests)
    records = run_grid(grid, start, log)
    results = bench_results(cfg, grid, records, aggregate(records),
                            test_sets=[*TEST_SETS, *([OCCLUDED] if OCCLUDED in tests else [])], segmenter=segmenter)
    return finish(out, start, log, results, lambda: _heatmap_grid(cfg, tests, out / "runs"),
                  lambda heatmaps: write_results(out, cfg, results, heatmaps))
