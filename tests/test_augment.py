"""Mask-based background swap."""

from __future__ import annotations

import pytest
import torch

from isnet.data.augment import swap_backgrounds


def _batch(n: int = 6):
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 8, 8).clone()
    masks = torch.zeros(n, 1, 8, 8)
    masks[:, :, 2:6, 2:6] = 1
    return images, masks


def test_foreground_kept_background_from_another_image():
    images, masks = _batch()
    out = swap_backgrounds(images, masks, 1.0, torch.Generator().manual_seed(0))
    fg = masks.bool().expand_as(images)
    assert torch.equal(out[fg], images[fg])
    donors = out[:, 0, 0, 0]
    own = images[:, 0, 0, 0]
    assert (donors != own).all(), "every background comes from a different image"
    assert sorted(donors.tolist()) == sorted(own.tolist()), "each background is used once"
    # the background of an image is one donor's, whole
    assert torch.equal(out[~fg].view(6, -1).amin(1), out[~fg].view(6, -1).amax(1))


def test_probability_zero_and_one_image_are_identity():
    images, masks = _batch()
    assert torch.equal(swap_backgrounds(images, masks, 0.0), images)
    assert torch.equal(swap_backgrounds(images[:1], masks[:1], 1.0), images[:1])


def test_probability_selects_about_that_share():
    images, masks = _batch(200)
    out = swap_backgrounds(images, masks, 0.3, torch.Generator().manual_seed(1))
    changed = (out[:, 0, 0, 0] != images[:, 0, 0, 0]).float().mean().item()
    assert 0.2 < changed < 0.4


def test_deterministic_with_a_generator():
    images, masks = _batch(32)
    a = swap_backgrounds(images, masks, 0.5, torch.Generator().manual_seed(3))
    b = swap_backgrounds(images, masks, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_bad_probability():
    images, masks = _batch()
    with pytest.raises(ValueError, match="background swap"):
        swap_backgrounds(images, masks, 1.5)
