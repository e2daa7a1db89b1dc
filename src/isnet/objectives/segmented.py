"""Segment-then-classify: the classifier sees the image masked by a segmenter's predicted masks.

=============== ============================================================================
objective       what one training step optimises
=============== ============================================================================
seg-classify    cross-entropy of the classifier on the image with its background zeroed,
                where the background is what the segmenter ``--segmenter RUN`` (a run of
                ``isnet segment train``) predicts; at test time the same segmenter masks the
                input, so no true masks are needed outside the segmenter's own training
=============== ============================================================================

This is the papers' "U-Net followed by DenseNet121" competitor; the oracle ``masked`` baseline
(:mod:`.baselines`) uses the true masks instead. The segmenter is frozen: it runs without a
gradient on every batch (after augmentation and any background swap), loaded once per process.
The logged ``train/foreground`` is the share of pixels the segmenter kept. Evaluation and
explanation mask with the same :func:`segmenter_masks` (the objective's ``input_masks``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..config import TrainConfig
from ..errors import UserError
from ..loss import float32_region
from ..masks import mask_background
from ..segment.predict import load_segmenter, predicted_masks
from .registry import StepContext, StepOutput, register_objective

__all__ = ["segment_then_classify", "segmenter_masks"]


_NO_SEGMENTER = "--objective seg-classify needs --segmenter RUN, the --out folder of `isnet segment train`"


def segmenter_masks(images: Tensor, config: TrainConfig) -> Tensor:
    """The foreground masks (B, 1, H, W) that the run's segmenter (``config.segmenter``) predicts for ``images``."""
    if not config.segmenter:
        raise UserError(_NO_SEGMENTER)
    return predicted_masks(config.segmenter, images)


def _check_segmenter(model: nn.Module, config: TrainConfig) -> None:
    if not config.segmenter:
        raise UserError(_NO_SEGMENTER)
    load_segmenter(config.segmenter)  # a clear error now, not in the first training step


@register_objective("seg-classify", needs_masks=False, input_masks=segmenter_masks, hyperparameters=("segmenter",),
                    check=_check_segmenter)
def segment_then_classify(ctx: StepContext, x: Tensor, masks: Tensor, labels: Tensor) -> StepOutput:
    """Cross-entropy on ``x`` masked by the segmenter's prediction."""
    predicted = segmenter_masks(x, ctx.config)
    logits = ctx.net.model(mask_background(x, predicted))
    with float32_region(x):
        ce = F.cross_entropy(logits.float(), labels)
    return StepOutput(ce, logits, {"ce": ce, "foreground": predicted.float().mean()})
