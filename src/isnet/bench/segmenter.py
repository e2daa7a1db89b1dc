"""The segmenter behind the benchmarks' ``seg-classify`` method: trained once per benchmark folder.

``seg-classify`` is the papers' strongest competitor: a U-Net predicts the foreground and the
classifier sees the image with everything else zeroed, in training and at test time. In a
benchmark the U-Net (:mod:`isnet.segment`, MONAI) trains on the benchmark's own training
split and its masks (validated on the validation split) into ``OUT/segmenter``, once; every
``seg-classify`` run then uses it. Its quality is reported with the results: the Dice of the
predicted masks on each test set, and the share of predicted foreground that lies outside the
true mask (pixels that may carry a shortcut to the classifier).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..paths import CONFIG, MODEL, read_run_config
from ..segment.config import SegmentConfig
from ..segment.predict import predicted_masks
from ..segment.train import fit_segmenter
from .grid import Log, bench_path
from .presets import SEG_CLASSIFY

__all__ = ["SEG_CLASSIFY", "SEGMENTER_OPTIONS", "prepare_segmenter", "segmenter_scores"]

SEGMENTER_OPTIONS: dict[str, Any] = dict(width=8, depth=4, res_units=2, epochs=10, batch_size=32, lr=1e-3, seed=0,
                                         workers=0, quiet=True)
""":class:`isnet.segment.config.SegmentConfig` options of the benchmarks' segmenter (a small U-Net, 10 epochs)."""


def _dice(pred: Tensor, truth: Tensor) -> Tensor:
    """Per image Dice of boolean masks (N, 1, H, W) with MONAI's metric, as ``isnet segment eval``; 1 where
    both are empty."""
    from monai.metrics import compute_dice

    dice = compute_dice(pred.float(), truth.float(), include_background=True, ignore_empty=False)
    return dice.flatten().double().nan_to_num(1.0)


def segmenter_scores(run: Path, tests: Mapping[str, Any], batch_size: int = 100) -> dict[str, dict[str, float]]:
    """Mean and sd of the Dice of ``run``'s masks on each test set (``images``, ``masks`` tensors), and the
    share of predicted foreground outside the true mask (``outside``)."""
    scores = {}
    for name, test in tests.items():
        dice, outside, predicted = [], 0.0, 0.0
        for start in range(0, len(test.images), batch_size):
            part = slice(start, start + batch_size)
            pred = predicted_masks(run, test.images[part]) > 0.5
            truth = test.masks[part] > 0.5
            dice.append(_dice(pred, truth))
            outside += float((pred & ~truth).sum())
            predicted += float(pred.sum())
        values = torch.cat(dice)
        scores[name] = {"dice": values.mean().item(), "dice_sd": values.std().item() if len(values) > 1 else 0.0,
                        "outside": outside / max(predicted, 1.0)}
    return scores


def prepare_segmenter(out: Path, data: Mapping[str, Path], tests: Mapping[str, Any], *, components: int,
                      in_channels: int, log: Log, start: float) -> dict[str, Any]:
    """Train the U-Net into ``out/segmenter`` (reused when its ``model.pt`` exists) and score it on ``tests``.

    ``components``: how many connected regions of a predicted mask are kept (2 for lungs, 1 for one object).
    """
    run = out / "segmenter"
    options = {**SEGMENTER_OPTIONS, "train": str(data["train"]), "val": str(data["val"]), "out": str(run),
               "in_channels": in_channels, "components": components}
    if (run / MODEL).is_file():
        saved = SegmentConfig.from_dict({k: v for k, v in read_run_config(run / CONFIG).items()
                                         if k in SegmentConfig.__dataclass_fields__})
        wanted = SegmentConfig.from_dict(options)
        changed = [k for k in ("in_channels", "components", *SEGMENTER_OPTIONS)
                   if k not in ("workers", "quiet") and getattr(saved, k) != getattr(wanted, k)]
        trained_in = Path(saved.out).parent if saved.out else out  # the benchmark folder it was trained in
        changed += [k for k in ("train", "val")
                    if bench_path(getattr(saved, k) or "", trained_in) != bench_path(options[k], out)]
        if changed:
            raise FileExistsError(f"{run} holds a segmenter trained with other settings ({', '.join(changed)}); "
                                  "choose another --out")
    else:
        log(f"training the seg-classify segmenter (MONAI U-Net, {options['epochs']} epochs) into {run}", start)
        fit_segmenter({**options, "overwrite": True})
    scores = segmenter_scores(run, tests)
    log("segmenter Dice " + ", ".join(f"{name} {s['dice']:.3f}" for name, s in scores.items()), start)
    return {"run": str(run), "options": {k: v for k, v in options.items() if k not in ("train", "val", "out")},
            "scores": scores}
