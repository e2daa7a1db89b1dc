"""The foreground rule (isnet.masks) and that every consumer of masks applies the same one."""

from __future__ import annotations

import pytest
import torch

from isnet import heatmap_loss
from isnet.data.augment import swap_backgrounds
from isnet.masks import THRESHOLD, background, foreground, mask_background
from isnet.metrics import background_share
from isnet.objectives.baselines import gradcam_loss, rrr_penalty


def _soft_mask() -> torch.Tensor:
    """Left half 0.3 (a soft 'probably background'), right half 0.7, one 0.5 column (background)."""
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :4] = 0.3
    mask[..., 4:] = 0.7
    mask[..., 4] = THRESHOLD
    return mask


def test_threshold_and_value_ranges():
    mask = _soft_mask()
    fg = foreground(mask)
    assert fg.dtype == torch.float32 and set(fg.unique().tolist()) == {0.0, 1.0}
    assert fg[..., :5].sum() == 0 and fg[..., 5:].all()
    assert torch.equal(foreground(mask * 255 > 128), foreground((mask > 0.5).to(torch.uint8) * 255))
    assert torch.equal(background(mask), 1 - fg)
    with pytest.raises(ValueError, match=r"\(B, 1 or C, H, W\)"):
        foreground(torch.ones(8, 8))


def test_resizing_keeps_any_foreground_and_enlarges_by_nearest():
    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, 3, 5] = 1
    small = foreground(mask, (4, 4))
    assert small.shape == (1, 1, 4, 4) and small.sum() == 1 and small[0, 0, 1, 2] == 1
    big = foreground(mask, (16, 16))
    assert big.sum() == 4 and big[0, 0, 6:8, 10:12].all()
    two = torch.zeros(1, 2, 4, 4)
    two[0, 1, 0, 0] = 1
    assert foreground(two, merge_channels=True).shape == (1, 1, 4, 4)
    assert foreground(two, merge_channels=True)[0, 0, 0, 0] == 1


def test_loss_metrics_swap_and_baselines_agree_on_a_soft_mask():
    """A soft mask behaves exactly like its binarised version everywhere it is used."""
    soft = _soft_mask()
    hard = (soft > THRESHOLD).float()
    torch.manual_seed(0)
    heat = torch.randn(2, 1, 3, 8, 8)
    # loss and metrics
    assert heatmap_loss(heat, soft).item() == heatmap_loss(heat, hard).item()
    assert torch.equal(background_share(heat, soft), background_share(heat, hard))
    # relevance only on the 0.3 half: both the loss and the metric call it background
    on_low = torch.zeros(2, 1, 3, 8, 8)
    on_low[..., :4] = 1.0
    assert torch.equal(background_share(on_low, soft), torch.ones(2))
    on_high = torch.zeros(2, 1, 3, 8, 8)
    on_high[..., 6:] = 1.0
    assert torch.equal(background_share(on_high, soft), torch.zeros(2))
    background_term = heatmap_loss(on_low, soft, B=0.0)
    assert background_term > 0.5 and heatmap_loss(on_high, soft, B=0.0).item() == 0.0
    # augmentation and the masked-input baseline
    images = torch.rand(2, 3, 8, 8)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(swap_backgrounds(images, soft, 1.0, g1), swap_backgrounds(images, hard, 1.0, g2))
    assert torch.equal(mask_background(images, soft), images * hard)
    # the baselines' penalties
    cam = torch.rand(2, 1, 4, 4)
    assert gradcam_loss(cam, soft).item() == gradcam_loss(cam, hard).item()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(128, 3))
    assert rrr_penalty(model, images, soft)[0].item() == rrr_penalty(model, images, hard)[0].item()
