"""What counts as foreground: the one rule shared by the loss, augmentation, baselines and metrics.

A mask is a tensor (B, 1 or C, H, W). A pixel is **foreground when its value exceeds 0.5**:
binary masks (0/1, bool, or 0/255) read as expected, and a soft mask (for instance a
segmenter's probabilities) is read as its most likely label, so a pixel of 0.3 is background
everywhere: in the heatmap loss, in the background swap, in the baselines' penalties and in the
reported background share. (Mask files are binarised when read: any nonzero pixel is
foreground; see :mod:`isnet.data.folder`.)

At another resolution (a heatmap at a hidden layer, a Grad-CAM map) a cell is foreground when
any mask pixel it covers is, so shrinking a mask never turns foreground into background; a
larger size is reached by nearest-neighbour enlargement.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["THRESHOLD", "background", "foreground", "mask_background"]

THRESHOLD = 0.5
"""Mask values above this are foreground."""


def foreground(masks: Tensor, size: tuple[int, int] | torch.Size | None = None, *, merge_channels: bool = False,
               dtype: torch.dtype = torch.float32) -> Tensor:
    """The foreground of ``masks`` as 0/1 values of ``dtype``, at ``size`` (default: the masks' own).

    Parameters
    ----------
    masks
        (B, 1 or C, H, W), foreground where the value exceeds :data:`THRESHOLD`.
    size
        Spatial size (h, w) of the result; a cell is foreground if any pixel it covers is.
    merge_channels
        Return one channel, foreground where any channel is.
    """
    if masks.ndim != 4:
        raise ValueError(f"masks must have shape (B, 1 or C, H, W), got {tuple(masks.shape)}")
    inside = (masks.detach() > THRESHOLD).to(dtype)
    if merge_channels:
        inside = inside.amax(1, keepdim=True)
    if size is None:
        return inside
    height, width = size
    if inside.shape[-2] < height or inside.shape[-1] < width:
        enlarged = (max(height, inside.shape[-2]), max(width, inside.shape[-1]))
        inside = F.interpolate(inside, size=enlarged, mode="nearest")
    if tuple(inside.shape[-2:]) != (height, width):
        inside = F.adaptive_max_pool2d(inside, (height, width))
    return inside


def background(masks: Tensor, size: tuple[int, int] | torch.Size | None = None, *, merge_channels: bool = False,
               dtype: torch.dtype = torch.float32) -> Tensor:
    """``1 - foreground(...)``: 1 where no mask pixel of the cell is foreground."""
    return 1.0 - foreground(masks, size, merge_channels=merge_channels, dtype=dtype)


def mask_background(images: Tensor, masks: Tensor) -> Tensor:
    """``images`` with the background set to 0 (what a segment-then-classify model sees)."""
    return images * foreground(masks, images.shape[-2:], dtype=images.dtype)
