"""Baselines the ISNet papers compare with, as training objectives of the same pipeline.

=========== ==============================================================================
variant     what one training step optimises
=========== ==============================================================================
rrr         Right for the Right Reasons (Ross et al. 2017): ``CE + lambda * penalty``,
            ``penalty = mean over the batch of sum over background pixels and channels of
            (d/dx sum_k log_softmax(logits)_k)^2`` (input gradients kept in the graph)
gradcam     Grad-CAM attention supervision toward the mask (GAIN-style, simplified):
            ``CE + weight * (share of the label's Grad-CAM that lies on the background)``
masked      segment-then-classify oracle: cross-entropy on ``x * mask`` (background
            zeroed); at test time the classifier must also see masked inputs
=========== ==============================================================================

The objectives follow :func:`isnet.train.register_objective`'s signature
``fn(module, images, masks, labels) -> StepOutput`` and are registered in
:data:`isnet.train.OBJECTIVES` by :func:`register` (``isnet.train`` calls it on import), so
``isnet train --variant rrr|gradcam|masked`` trains them like the ISNets.

Hyper-parameters are :class:`isnet.train.TrainConfig` fields (``isnet train --rrr-lambda`` etc.),
read from ``module.config``:

* ``rrr_lambda = 10``: the reference measurements (SPEC section 6) used 10 and 1000 with
  similar results. Measured on BG-Digits with ``small_cnn``: the penalty is about 1e-7 at
  initialisation and grows to 100-1000 once a standard network relies on the background patch,
  so with 10 it stays out of the way while the network is random and dominates the
  cross-entropy (about 2.3) as soon as background gradients appear. (With it, training settles
  at penalty ~0.01 and cross-entropy ~1.7: the network keeps the summed log-probability
  gradients small, yet its argmax can still follow the patch; see docs/benchmark.md.)
* ``gradcam_weight = 1``: the penalty is a share in [0, 1], on the cross-entropy's scale.
* ``gradcam_layer = None``: :func:`default_cam_layer` picks the last convolutional feature map.

Why the Grad-CAM penalty is a *share* (``sum_bg CAM / sum CAM``) and not the mean of the
max-normalised CAM on the background: with ``CAM / max(CAM)`` the gradient with respect to
the maximum is never positive when the maximum lies on the background (raising it lowers every
other normalised value), so a network attending to a small background patch is pushed to
attend to it *more*. The share has the right sign everywhere: background cells are pushed
down, foreground cells up. It is the Grad-CAM counterpart of the background-relevance share
reported by :mod:`isnet.metrics`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:  # pragma: no cover
    from .train import ISNetModule, StepOutput

__all__ = [
    "BASELINES",
    "MASKED_INPUT_VARIANTS",
    "capture_output",
    "default_cam_layer",
    "gradcam_loss",
    "gradcam_objective",
    "grad_cam",
    "masked_objective",
    "model_input",
    "needs_masked_input",
    "register",
    "rrr_objective",
    "rrr_penalty",
]

BASELINES = ("rrr", "gradcam", "masked")
MASKED_INPUT_VARIANTS = frozenset({"masked"})
"""Variants whose classifier sees ``x * mask`` in training and must see it at test time."""

def _background(masks: Tensor, like: Tensor) -> Tensor:
    """``1 - mask`` as float at ``like``'s spatial size (a cell is foreground if any pixel is)."""
    fg = (masks > 0).float()
    if tuple(fg.shape[-2:]) != tuple(like.shape[-2:]):
        fg = F.adaptive_max_pool2d(fg, like.shape[-2:])
    return 1.0 - fg


# ------------------------------------------------------------------------------------------
# Right for the Right Reasons


def rrr_penalty(model: nn.Module, x: Tensor, masks: Tensor, *, create_graph: bool = True) -> tuple[Tensor, Tensor]:
    """The RRR penalty (without lambda) and the logits of one forward pass.

    ``mean over the batch of sum over background pixels and channels of g^2`` with
    ``g = d/dx sum_k log_softmax(model(x))_k``, summed over the batch before differentiating
    (samples do not interact, so that is each sample's own gradient). ``masks`` is
    (B, 1|C, H, W), nonzero on the foreground.
    """
    x_in = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x_in)
        log_probs = torch.log_softmax(logits.float(), dim=1).sum()
        (grad,) = torch.autograd.grad(log_probs, x_in, create_graph=create_graph)
    background = _background(masks, grad)
    penalty = (grad.float().pow(2) * background).flatten(1).sum(1).mean()
    return penalty, logits


def rrr_objective(module: ISNetModule, x: Tensor, masks: Tensor, labels: Tensor) -> StepOutput:
    """``CE + lambda * rrr_penalty`` (lambda: the run's ``rrr_lambda``)."""
    from .train import StepOutput, float32_region

    with float32_region(x):
        penalty, logits = rrr_penalty(module.net.model, x, masks)
        ce = F.cross_entropy(logits.float(), labels)
        total = ce + module.config["rrr_lambda"] * penalty
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


@contextmanager
def capture_output(model: nn.Module, name: str) -> Iterator[dict[str, Tensor]]:
    """Record the output of module ``name`` during forward passes made in this thread.

    Yields a dict filled with ``{name: output}``; the forward hook is removed on exit, also
    after an exception. Other threads running the same model are ignored.
    """
    owner = threading.get_ident()
    store: dict[str, Tensor] = {}
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise KeyError(f"no module named {name!r} in the model; names come from model.named_modules()") from None

    def hook(_module: nn.Module, _inputs, output) -> None:
        if threading.get_ident() != owner:
            return
        if name in store:
            raise ValueError(f"module {name!r} runs more than once per forward pass; name a module that runs once")
        if not isinstance(output, Tensor) or output.dim() != 4:
            raise ValueError(f"module {name!r} must output a (B, C, h, w) feature map for Grad-CAM")
        store[name] = output

    handle = module.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def grad_cam(model: nn.Module, x: Tensor, classes: Tensor, *, layer: str | None = None,
             create_graph: bool = True, size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """Grad-CAM of ``classes`` (one per sample) at ``layer``, and the logits.

    ``CAM = relu(sum_c alpha_c A_c)``, ``alpha_c`` the spatial mean of ``d logit / d A_c``;
    computed with ordinary autograd and, with ``create_graph``, differentiable with respect to
    the parameters. Returned as (B, 1, h, w), bilinearly upsampled to ``size`` if given.
    """
    layer = layer or default_cam_layer(model)
    with torch.enable_grad(), capture_output(model, layer) as store:
        logits = model(x)
    if layer not in store:
        raise ValueError(f"module {layer!r} did not run in the forward pass")
    features = store[layer]
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

    ``cam`` (B, 1, h, w); ``masks`` (B, 1|C, H, W), pooled to (h, w) when sizes differ. An
    all-zero CAM contributes 0.
    """
    background = _background(masks, cam)
    if background.shape[1] != 1:
        background = background.amin(1, keepdim=True)  # foreground if any channel is
    total = cam.flatten(1).sum(1)
    outside = (cam * background).flatten(1).sum(1)
    return (outside / (total + eps)).mean()


def gradcam_objective(module: ISNetModule, x: Tensor, masks: Tensor, labels: Tensor) -> StepOutput:
    """``CE + weight * gradcam_loss`` with the label's Grad-CAM at the mask's size.

    ``weight`` and the Grad-CAM layer: the run's ``gradcam_weight`` and ``gradcam_layer``.
    """
    from .train import StepOutput, float32_region

    with float32_region(x):
        cam, logits = grad_cam(module.net.model, x, labels, layer=module.config["gradcam_layer"],
                               size=tuple(masks.shape[-2:]))
        penalty = gradcam_loss(cam, masks)
        ce = F.cross_entropy(logits.float(), labels)
        total = ce + module.config["gradcam_weight"] * penalty
    return StepOutput(total, logits, {"ce": ce, "gradcam": penalty})


# ------------------------------------------------------------------------------------------
# segment-then-classify


def model_input(x: Tensor, masks: Tensor | None, variant: str) -> Tensor:
    """What the classifier of ``variant`` sees: ``x * mask`` for masked-input variants, else ``x``."""
    if variant not in MASKED_INPUT_VARIANTS:
        return x
    if masks is None:
        raise ValueError(f"variant {variant!r} classifies background-masked images: its inputs need masks")
    fg = (masks > 0).to(x.dtype)
    if tuple(fg.shape[-2:]) != tuple(x.shape[-2:]):
        fg = F.interpolate(fg, size=x.shape[-2:], mode="nearest")
    return x * fg


def needs_masked_input(config: Mapping[str, Any] | str) -> bool:
    """Whether a run's classifier (its config dict, or a variant name) expects masked inputs."""
    variant = config if isinstance(config, str) else config.get("variant", "")
    return variant in MASKED_INPUT_VARIANTS


def masked_objective(module: ISNetModule, x: Tensor, masks: Tensor, labels: Tensor) -> StepOutput:
    """Cross-entropy of the classifier on the background-zeroed images."""
    from .train import StepOutput, float32_region

    logits = module.net.model(model_input(x, masks, "masked"))
    with float32_region(x):
        ce = F.cross_entropy(logits.float(), labels)
    return StepOutput(ce, logits, {"ce": ce})


def register() -> None:
    """Register ``rrr``, ``gradcam`` and ``masked`` in :data:`isnet.train.OBJECTIVES` (idempotent)."""
    from .train import register_objective

    register_objective("rrr", rrr_objective, isnet_variant="standard", heatmap_loss=False, needs_masks=True)
    register_objective("gradcam", gradcam_objective, isnet_variant="standard", heatmap_loss=False, needs_masks=True)
    register_objective("masked", masked_objective, isnet_variant="standard", heatmap_loss=False, needs_masks=True)
