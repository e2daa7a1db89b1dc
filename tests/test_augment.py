"""Mask-based background swap."""

from __future__ import annotations

import pytest
import torch

from isnet.data.augment import fill_foreground, swap_backgrounds


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


def _objects_on_backgrounds(n: int = 8, size: int = 16):
    """Dark textured backgrounds (< 0.5) with a bright object (1.0) at a different place in each image."""
    g = torch.Generator().manual_seed(0)
    images = 0.4 * torch.rand(n, 3, size, size, generator=g)
    masks = torch.zeros(n, 1, size, size)
    for i in range(n):
        r, c = (3 * i) % (size - 4), (5 * i) % (size - 4)
        masks[i, :, r:r + 4, c:c + 4] = 1
    images = torch.where(masks.bool().expand_as(images), torch.ones_like(images), images)
    return images, masks


def test_swapped_image_contains_no_pixel_of_the_donor_object():
    images, masks = _objects_on_backgrounds()
    out = swap_backgrounds(images, masks, 1.0, torch.Generator().manual_seed(2))
    outside = ~masks.bool().expand_as(images)
    assert torch.equal(out[~outside], images[~outside])  # the recipient's object stays
    assert out[outside].max() < 0.4 + 1e-6  # nothing of any donor's bright object is left
    # where the donor's object was, the donor's own background fills in: values of nearby background
    objects_moved = (out[outside] != images[outside]).any()
    assert objects_moved


def test_fill_keeps_background_and_fills_from_it():
    images, masks = _objects_on_backgrounds()
    filled = fill_foreground(images, masks)
    bg = ~masks.bool().expand_as(images)
    assert torch.equal(filled[bg], images[bg])
    assert filled[~bg].max() <= images[bg].max() and filled[~bg].min() >= 0
    # a constant background fills with that constant; an image that is all object fills with zeros
    flat = torch.full((1, 3, 8, 8), 0.25)
    hole = torch.zeros(1, 1, 8, 8)
    hole[..., 2:7, 1:5] = 1
    torch.testing.assert_close(fill_foreground(flat + hole, hole), flat)
    assert torch.equal(fill_foreground(torch.ones(1, 3, 8, 8), torch.ones(1, 1, 8, 8)), torch.zeros(1, 3, 8, 8))
