"""The background-bias benchmark on BG-Digits: ISNets and baselines on one training pipeline.

BG-Digits puts each digit on a textured background with a cue (a white patch, or a colour
tint) that encodes the class in training. A classifier that reads the cue instead of the digit
keeps its accuracy on the ``biased`` test set and fails on the ``unbiased`` (no cue) and
``deceiving`` (another class's cue) ones. :data:`BG_DIGITS` is the benchmark
(:class:`isnet.bench.interface.Benchmark`); ``isnet bench bias --out DIR`` (and
:func:`isnet.bench.run.run_benchmark` with it):

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
   ``results.csv``, figures and ``report.html`` (:mod:`isnet.bench.report`, with the parts of
   :mod:`isnet.bench.digits.report`).

The grid modes (:mod:`isnet.bench.digits.modes`) reuse the data, test sets and evaluation here.
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

from ...checkpoints import explainer
from ...data.digits.bg_digits import generate, to_tensors, write_dataset
from ...evaluate import predict_batch
from ...metrics import background_share, relevance_share
from ..interface import Benchmark, Section
from . import report
from .presets import COMPARED, FULL, METRICS, OCCLUDED, QUICK, TEST_SETS, BiasBenchConfig

__all__ = ["BG_DIGITS", "BGDigitsBenchmark", "BiasTestSet", "occlude_patches"]

_DATA_KEYS = ("seed", "image_size", "mask", "placement", "cue", "train_mask")
_DATA_DEFAULTS = {"placement": "centre", "cue": "patch", "train_mask": "exact"}  # files written before these options


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


class BGDigitsBenchmark(Benchmark[BiasBenchConfig, BiasTestSet]):
    """BG-Digits: digits on textured backgrounds with a class-coded cue (module docstring)."""

    name = "bias"
    dataset = "BG-Digits"
    settings_type = BiasBenchConfig
    quick = QUICK
    full = FULL
    test_sets = TEST_SETS
    metrics = METRICS
    compared = COMPARED
    segmenter_input = (1, 3)  # the digit is one region; the segmenter reads RGB
    report = report

    def prepare_data(self, root: Path, cfg: BiasBenchConfig, train_mask: str = "exact") -> dict[str, Path]:
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

    def make_test_sets(self, cfg: BiasBenchConfig) -> dict[str, BiasTestSet]:
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

    def ready(self, cfg: BiasBenchConfig) -> str:
        """Sizes, placement and cue."""
        return (f"BG-Digits ready ({cfg.n_train} train, {cfg.n_val} val, {cfg.n_test} per test set; {cfg.placement}, "
                f"{cfg.cue} cue)")

    def test_key(self, cfg: BiasBenchConfig) -> dict[str, Any]:
        """Size, seed, placement and cue of the test sets."""
        return {"n": cfg.n_test, "data_seed": cfg.data_seed, "placement": cfg.placement, "cue": cfg.cue}

    def evaluate_classifier(self, model: nn.Module, config: Mapping[str, Any], test: BiasTestSet, *,
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

    def describe(self, record: Mapping[str, Any]) -> str:
        """Accuracy on every test set and the background relevance on the biased one."""
        r = record["results"]
        occluded = f" occluded {100 * r[OCCLUDED]['accuracy']:.1f}%" if OCCLUDED in r else ""
        return (f"accuracy biased {100 * r['biased']['accuracy']:.1f}% unbiased {100 * r['unbiased']['accuracy']:.1f}% "
                f"deceiving {100 * r['deceiving']['accuracy']:.1f}%{occluded}; "
                f"background relevance {100 * r['biased']['background_relevance']:.1f}%")

    def results_entries(self, tests: Mapping[str, BiasTestSet]) -> dict[str, Any]:
        """The test sets evaluated: the occluded one too, with the patch cue."""
        return {"test_sets": [*TEST_SETS, *([OCCLUDED] if OCCLUDED in tests else [])]}

    def example_title(self, tests: Mapping[str, BiasTestSet], name: str, index: int) -> str:
        """Test set and label."""
        return f"{name}, label {int(tests[name].labels[index])}"

    def figures(self, cfg: BiasBenchConfig, results: Mapping[str, Any], heatmaps: Figure | None,
                tests: Mapping[str, BiasTestSet]) -> dict[str, Figure]:
        """:func:`isnet.bench.digits.report.figures`."""
        return report.figures(results, heatmaps)

    def result_sections(self, cfg: BiasBenchConfig, results: Mapping[str, Any],
                        figures: Mapping[str, Figure]) -> list[Section]:
        """:func:`isnet.bench.digits.report.result_sections`."""
        return report.result_sections(cfg, results, figures)


BG_DIGITS = BGDigitsBenchmark()
"""The BG-Digits benchmark (``isnet bench bias``)."""
