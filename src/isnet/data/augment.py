"""Mask-based augmentation used in training: the background swap (its pieces also make the audit's counterfactuals).

Each training image may get the background of another image of the batch, so whatever the
background says about the class stops predicting it. The donor gives **background only**: its
own foreground object is first removed and the hole filled from the donor's surrounding
background (:func:`fill_foreground`), so a swapped image never shows a second object (of the
donor's class, on a background that agrees with the donor's class) under the recipient's label.

The swap breaks shortcuts that the heatmap loss alone cannot see: a network can use a
background cue by switching units *off*, and an inactive unit carries no relevance under any
LRP rule (see ``docs/shortcut-study.md``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..masks import foreground

__all__ = ["fill_foreground", "paste_foreground", "swap_backgrounds"]


def fill_foreground(images: Tensor, masks: Tensor) -> Tensor:
    """``images`` with the foreground replaced by a smooth fill from the image's own background.

    Push-pull interpolation: the background (with weight 1, foreground weight 0) is averaged
    down a pyramid of 2x2 poolings until every cell has some background; going back up, each
    level keeps its own background and takes the coarser estimate where it has none. Background
    pixels are returned unchanged; a filled pixel is a weighted mean of background pixels, so it
    never carries a foreground value. An image without any background is filled with zeros.
    """
    weight = 1.0 - foreground(masks, images.shape[-2:], merge_channels=True, dtype=images.dtype)
    levels = [(images * weight, weight)]
    while max(levels[-1][1].shape[-2:]) > 1:
        value, w = levels[-1]
        levels.append((F.avg_pool2d(value, 2, ceil_mode=True), F.avg_pool2d(w, 2, ceil_mode=True)))
    value, w = levels[-1]
    estimate = value / w.clamp_min(torch.finfo(images.dtype).tiny)
    for value, w in reversed(levels[:-1]):
        coarse = F.interpolate(estimate, size=value.shape[-2:], mode="bilinear", align_corners=False)
        # value = w * (the cell's background mean), w in [0, 1] the cell's share of background
        estimate = value + (1.0 - w) * coarse
    return torch.where(weight > 0, images, estimate)


def paste_foreground(images: Tensor, masks: Tensor, backgrounds: Tensor) -> Tensor:
    """``images``' foreground (:func:`isnet.masks.foreground`) on ``backgrounds`` (broadcastable to ``images``).

    Foreground pixels are kept exactly; every other pixel is the background's. With
    ``backgrounds`` from :func:`fill_foreground` of other images, no pixel of their objects shows.
    """
    fg = foreground(masks, images.shape[-2:], dtype=images.dtype)
    return fg * images + (1 - fg) * backgrounds


def swap_backgrounds(images: Tensor, masks: Tensor, p: float = 1.0,
                     generator: torch.Generator | None = None) -> Tensor:
    """Give each image, with probability ``p``, the background of another image of the batch.

    The recipient's foreground (:func:`isnet.masks.foreground`) and label stay; outside it the
    image shows a random other sample with that sample's foreground filled from its own
    background (:func:`fill_foreground`). Masks are (B, 1|C, H, W). Applied to each training
    batch before the forward pass; ``p = 1`` is what ``isnet train`` uses for the ISNet
    objectives (``--background-swap``). Draws from ``generator``, or from torch's global RNG.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"background swap probability must be in [0, 1], got {p}")
    batch = images.shape[0]
    if p == 0.0 or batch < 2:
        return images
    rng = generator.device if generator is not None else "cpu"
    # a random derangement: every image receives a background from a different one
    shift = int(torch.randint(1, batch, (1,), generator=generator, device=rng))
    order = torch.randperm(batch, generator=generator, device=rng)
    donor = torch.empty_like(order)
    donor[order] = order.roll(shift)
    chosen = torch.rand(batch, generator=generator, device=rng) < p
    swapped = paste_foreground(images, masks, fill_foreground(images, masks)[donor.to(images.device)])
    return torch.where(chosen.to(images.device).view(-1, *([1] * (images.dim() - 1))), swapped, images)
