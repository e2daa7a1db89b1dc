"""Baselines the ISNet papers compare with, as objectives of the same training pipeline.

=========== ==============================================================================
objective   what one training step optimises
=========== ==============================================================================
rrr         Right for the Right Reasons (Ross et al. 2017): ``CE + lambda * penalty``,
            ``penalty = mean over the batch of sum over background pixels and channels of
            (d/dx sum_k log_softmax(logits)_k)^2`` (input gradients kept in the graph)
gradcam     Grad-CAM attention supervision toward the mask (GAIN-style, simplified):
            ``CE + weight * (share of the label's Grad-CAM that lies on the background)``
masked      segment-then-classify with the true masks: cross-entropy on the image with its
            background zeroed; the classifier sees masked images at test time too
=========== ==============================================================================

Why the Grad-CAM penalty is a *share* (``sum_bg CAM / sum CAM``) and not the mean of the
max-normalised CAM on the background: with ``CAM / max(CAM)`` the gradient with respect to
the maximum is never positive when the maximum lies on the background (raising it lowers every
other normalised value), so a network attending to a small background patch would be pushed to
attend to it more. The share has the right sign everywhere. It is the Grad-CAM counterpart of
the background-relevance share of :mod:`isnet.metrics`. How the default weights were chosen is
in ``docs/benchmark.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import TrainConfig
from ..loss import float32_region
from ..lrp import record_outputs
from ..masks import background, mask_background
from .registry import StepContext, StepOutput, register_objective

__all__ = ["default_cam_layer", "grad_cam", "gradcam_loss", "rrr_penalty"]


# ------------------------------------------------------------------------------------------
# Right for the Right Reasons


def rrr_penalty(model: nn.Module, x: Tensor, masks: Tensor, *, create_graph: bool = True) -> tuple[Tensor, Tensor]:
    """The RRR penalty (without lambda) and the logits of one forward pass.

    ``mean over the batch of sum over background pixels and channels of g^2`` with
    ``g = d/dx sum_k log_softmax(model(x))_k``, summed over the batch before differentiating
    (samples do not interact, so that is each sample's own gradient). ``masks`` is
    (B, 1|C, H, W) foreground masks (:func:`isnet.masks.foreground`).
    """
    x_in = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x_in)
        log_probs = torch.log_softmax(logits.float(), dim=1).sum()
        (grad,) = torch.autograd.grad(log_probs, x_in, create_graph=create_graph)
    outside = background(masks, grad.shape[-2:])
    penalty = (grad.float().pow(2) * outside).flatten(1).sum(1).mean()
    return penalty, logits


@register_objective("rrr", hyperparameters=("rrr_lambda",))
def rrr_objective(ctx: StepContext, x: Tensor, masks: Tensor, labels: Tensor) -> StepOutput:
    """``CE + lambda * rrr_penalty`` (lambda: the run's ``rrr_lambda``)."""
    with float32_region(x):
        penalty, logits = rrr_penalty(ctx.net.model, x, masks)
        ce = F.cross_entropy(logits.float(), labels)
        total = ce + ctx.config.rrr_lambda * penalty
    return StepOutput(total, logits, {"ce": ce, "rrr": penalty})


# ------------------------------------------------------------------------------------------
# Grad-CAM attention supervision


def default_cam_layer(model: nn.Module) -> str:
    """Name of the module whose output Grad-CAM uses: the last convolutional feature map.

    torchvision ResNet: ``layer4``; DenseNet: ``features``; VGG (and other models with a
    ``features`` Sequential ending in ReLU / pooling): the last ReLU in ``features``; a
    Sequential such as ``small_cnn``: the last ReLU before its ``Flatten``; otherwise the last
    ``Conv2d``.
    """
    names = dict(model.named_modules())
    if "layer4" in names:
        return "layer4"
    features = names.get("features")
    if isinstance(features, nn.Sequential):
        if any(n.startswith("features.denseblock") for n in names):
            return "features"
        relus = [f"features.{n}" for n, m in features.named_children() if isinstance(m, nn.ReLU)]
        if relus:
            return relus[-1]
        return "features"
    if isinstance(model, nn.Sequential):
        children = list(model.named_children())
        flatten = next((i for i, (_, m) in enumerate(children) if isinstance(m, nn.Flatten)), len(children))
        relus = [n for n, m in children[:flatten] if isinstance(m, nn.ReLU)]
        if relus:
            return relus[-1]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("no convolutional layer found for Grad-CAM; name one (module name from named_modules())")
    return convs[-1]


def grad_cam(model: nn.Module, x: Tensor, classes: Tensor, *, layer: str | None = None,
             create_graph: bool = True, size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """Grad-CAM of ``classes`` (one per sample) at ``layer``, and the logits.

    ``CAM = relu(sum_c alpha_c A_c)``, ``alpha_c`` the spatial mean of ``d logit / d A_c``;
    computed with ordinary autograd and, with ``create_graph``, differentiable with respect to
    the parameters. Returned as (B, 1, h, w), bilinearly upsampled to ``size`` if given.
    """
    layer = layer or default_cam_layer(model)
    with torch.enable_grad(), record_outputs(model, [layer]) as store:
        logits = model(x)
    features = store.get(layer)
    if not isinstance(features, Tensor) or features.dim() != 4:
        raise ValueError(f"module {layer!r} must run in the forward pass and output a (B, C, h, w) feature map "
                         "for Grad-CAM")
    with torch.enable_grad():
        score = logits.gather(1, classes.view(-1, 1).to(logits.device)).sum()
        (grads,) = torch.autograd.grad(score, features, create_graph=create_graph)
    weights = grads.float().mean((2, 3), keepdim=True)
    cam = torch.relu((weights * features.float()).sum(1, keepdim=True))
    if size is not None and tuple(cam.shape[-2:]) != tuple(size):
        cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
    return cam, logits


def gradcam_loss(cam: Tensor, masks: Tensor, eps: float = 1e-8) -> Tensor:
    """Mean over the batch of the share of the (non-negative) CAM outside the mask.

    ``cam`` (B, 1, h, w); ``masks`` (B, 1|C, H, W) foreground masks, read at the CAM's size
    with :func:`isnet.masks.foreground`. An all-zero CAM contributes 0.
    """
    total = cam.flatten(1).sum(1)
    outside = (cam * background(masks, cam.shape[-2:], merge_channels=True)).flatten(1).sum(1)
    return (outside / (total + eps)).mean()


def _check_cam_layer(model: nn.Module, config: TrainConfig) -> None:
    layer = config.gradcam_layer
    if layer is not None and layer not in dict(model.named_modules()):
        raise ValueError(f"gradcam_layer {layer!r} is not a module of {config.arch}; names come from "
                         "model.named_modules()")


@register_objective("gradcam", hyperparameters=("gradcam_weight", "gradcam_layer"), check=_check_cam_layer)
def gradcam_objective(ctx: StepContext, x: Tensor, masks: Tensor, labels: Tensor) -> StepOutput:
    """``CE + weight * gradcam_loss`` with the label's Grad-CAM at the mask's size.

    ``weight`` and the Grad-CAM layer: the run's ``gradcam_weight`` and ``gradcam_layer``.
    """
    with float32_region(x):
        cam, logits = grad_cam(ctx.net.model, x, labels, layer=ctx.config.gradcam_layer,
                               size=tuple(masks.shape[-2:]))
        penalty = gradcam_loss(cam, masks)
        ce = F.cross_entropy(logits.float(), labels)
        total = ce + ctx.config.gradcam_weight * penalty
    return StepOutput(total, logits, {"ce": ce, "gradcam": penalty})


# ------------------------------------------------------------------------------------------
# segment-then-classify


@register_objective("masked", masked_input=True)
def masked_objective(ctx: StepContext, x: Tensor, masks: Tensor, labels: Tensor) -> StepOutput:
    """Cross-entropy of the classifier on the background-zeroed images."""
    logits = ctx.net.model(mask_background(x, masks))
    with float32_region(x):
        ce = F.cross_entropy(logits.float(), labels)
    return StepOutput(ce, logits, {"ce": ce})
