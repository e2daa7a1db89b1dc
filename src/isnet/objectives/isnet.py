"""The ISNet objectives and the plain classifier.

=========== ==============================================================================
objective   what one training step optimises
=========== ==============================================================================
standard    cross-entropy: the plain classifier, the baseline
swap        cross-entropy with the mask-based background swap: the control that shows
            what the swap alone achieves
original    ``(1 - P) CE + P heatmap loss`` on one heatmap per class
selective   the same on one heatmap of the selective quantity (Faster ISNet)
stochastic  the same on one heatmap of a stochastically chosen logit (Faster ISNet)
dual        the same on the selective quantity's LRP-epsilon and LRP-z+ heatmaps, each
            with its own C1/C2 (Dual ISNet)
=========== ==============================================================================

The ISNet objectives train with the background swap by default: a network can encode a
background cue by switching units off, which no LRP rule can see, and the swap removes the
cue's predictive value (``docs/shortcut-study.md``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor

from ..loss import float32_region
from ..network import epsilon_heatmaps
from .registry import StepContext, StepOutput, register_objective

__all__ = ["cross_entropy", "heatmap_objective"]

_LOSS_OPTIONS = ("P", "p_warmup", "d", "E", "A", "B", "C1", "C2", "foreground", "norm", "d_loss",
                 "calibrate_epochs", "calibration_swap", "warm_start", "epsilon", "zb", "batch_stats", "heatmap_gradient",
                 "gradient_ratio", "log_gradients")


@register_objective("swap", needs_masks=True, background_swap=1.0)
@register_objective("standard", needs_masks=False)
def cross_entropy(ctx: StepContext, x: Tensor, masks: Tensor, labels: Tensor) -> StepOutput:
    """Cross-entropy only."""
    logits = ctx.net(x)
    with float32_region(x):
        ce = F.cross_entropy(logits.float(), labels)
    return StepOutput(ce, logits, {"ce": ce})


def _as_float(heatmaps: Tensor | Mapping[str, Tensor]) -> Tensor | dict[str, Tensor]:
    if isinstance(heatmaps, Mapping):
        return {name: h.float() for name, h in heatmaps.items()}
    return heatmaps.float()


def _isnet(name: str, *extra: str) -> dict:
    return dict(explains=name, heatmap_loss=True, background_swap=1.0,
                hyperparameters=(*_LOSS_OPTIONS, *extra, "deep_supervision"))


@register_objective("dual", **_isnet("dual", "selective_class", "selective_eps", "C1_zplus", "C2_zplus"))
@register_objective("stochastic", **_isnet("stochastic"))
@register_objective("selective", **_isnet("selective", "selective_class", "selective_eps"))
@register_objective("original", **_isnet("original"))
def heatmap_objective(ctx: StepContext, x: Tensor, masks: Tensor, labels: Tensor) -> StepOutput:
    """``(1 - P) * CE + P * heatmap loss`` on the objective's heatmaps (loss in float32)."""
    logits, heatmaps = ctx.net(x, heatmaps=True, labels=labels)
    with float32_region(x):
        terms = ctx.criterion(logits.float(), labels, _as_float(heatmaps), masks.float(), warmup=ctx.warmup)
    cfg = ctx.config
    combined = terms.combined(ctx.net.model.parameters(), rule=cfg.heatmap_gradient, ratio=cfg.gradient_ratio,
                              measure=cfg.log_gradients)
    return StepOutput(terms.total, logits, {"ce": terms.cross_entropy, "heatmap": terms.heatmap, **combined.stats},
                      epsilon_heatmaps(heatmaps, ctx.net.objective).detach(), backward=combined.loss)
