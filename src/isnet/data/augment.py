"""Mask-based augmentation used in training only."""

from __future__ import annotations

import torch
from torch import Tensor

from ..masks import foreground


def swap_backgrounds(images: Tensor, masks: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Give each image, with probability ``p``, the background of another image of the batch.

    The foreground (:func:`isnet.masks.foreground`) and the label stay; the background comes from a
    random other sample, so whatever the background says about the class stops
    predicting it. Masks are (B, 1|C, H, W).

    This breaks shortcuts that the heatmap loss alone cannot see: a network can use
    a background cue by switching units *off*, and an inactive unit carries no
    relevance under any LRP rule (see ``docs/shortcut-study.md``).
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
    fg = foreground(masks, images.shape[-2:], dtype=images.dtype)
    swapped = fg * images + (1 - fg) * images[donor.to(images.device)]
    return torch.where(chosen.to(images.device).view(-1, *([1] * (images.dim() - 1))), swapped, images)
