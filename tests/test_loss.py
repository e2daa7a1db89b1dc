"""The ISNet heatmap loss (SPEC section 3): GWRP, mask resizing, terms, calibration, options."""

from __future__ import annotations

import math

import pytest
import torch

from isnet import ISNetLoss, calibrate, heatmap_loss
from isnet.loss import gwrp
from isnet.masks import foreground


def gwrp_full_sort(values: torch.Tensor, d: float) -> torch.Tensor:
    """Textbook GWRP: sort everything, weights d**i, weighted mean."""
    ordered = values.double().sort(-1, descending=True).values
    weights = torch.tensor([d ** i for i in range(values.shape[-1])], dtype=torch.float64)
    return (ordered * weights).sum(-1) / weights.sum()


def test_gwrp_extremes():
    v = torch.randn(3, 4, 50)
    assert torch.equal(gwrp(v, 0.0), v.amax(-1))
    assert torch.allclose(gwrp(v, 1.0), v.mean(-1))


@pytest.mark.parametrize("d", [0.3, 0.9, 0.99, 0.996, 0.9999])
@pytest.mark.parametrize("n", [1, 7, 300, 5000])
def test_gwrp_truncated_equals_full_sort(d, n):
    torch.manual_seed(n)
    v = torch.rand(2, 3, n, dtype=torch.float64) * 10
    assert torch.allclose(gwrp(v, d), gwrp_full_sort(v, d), rtol=1e-8, atol=0)
    v32 = v.float()
    assert torch.allclose(gwrp(v32, d).double(), gwrp_full_sort(v32, d), rtol=1e-5, atol=0)


def test_gwrp_is_differentiable():
    v = torch.rand(4, 100, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: gwrp(t, 0.9), (v,))


def test_masks_resized_by_any_foreground():
    mask = torch.zeros(2, 1, 64, 64, dtype=torch.bool)
    mask[0, 0, 5, 9] = True  # one pixel -> its 2x2 cell (2, 4) at 32x32
    mask[1, 0, 40:50, 0:3] = True
    small = foreground(mask, (32, 32))
    expected = mask.float().view(2, 1, 32, 2, 32, 2).amax((3, 5))
    assert torch.equal(small, expected)
    assert small[0, 0, 2, 4] == 1 and small[0].sum() == 1
    assert torch.equal(foreground(mask, (64, 64)), mask.float())


def test_mask_values_nonzero_is_foreground():
    """A 0/255 mask and a 0/1 mask give the same loss."""
    torch.manual_seed(0)
    heat = torch.randn(2, 1, 3, 16, 16)
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:24, 8:24] = 1
    assert torch.allclose(heatmap_loss(heat, mask * 255), heatmap_loss(heat, mask))
    assert torch.allclose(heatmap_loss(heat, mask.to(torch.uint8) * 255), heatmap_loss(heat, mask.bool()))


def manual_loss(H, M, d=0.9, E=1.0, A=1.0, B=1.0, C1=1.0, C2=25.0, foreground="L2"):
    """SPEC section 3 written out with loops (absRoIMean, masks already at the heatmap size)."""
    total = 0.0
    b_, k_, c_ = H.shape[:3]
    for b in range(b_):
        bg_terms, fg_terms = [], []
        m = M[b, 0].bool()
        for k in range(k_):
            h = H[b, k].abs()
            mean_fg = h[:, m].mean()
            Hn = h / (mean_fg + 1e-10)
            for c in range(c_):
                # pooled over every pixel, the foreground counting as 0 (as the reference does)
                v = gwrp_full_sort((Hn[c] * ~m).flatten(), d).item()
                u = min(v / (v + E), 1 - 1e-7)
                bg_terms.append(-math.log(1 - u))
            F = h[:, m].sum().item()
            left = (min(F / C1, 1) - 1) ** 2
            if foreground == "floor":  # the lower bound alone
                right = 0.0
            elif foreground == "hybrid" and F > C1 + C2:
                right = abs(F - (C1 + C2)) + 1
            else:
                right = (max(F / C1, C2 / C1) - C2 / C1) ** 2
            fg_terms.append(left + right)
        total += A * sum(bg_terms) / len(bg_terms) + B * sum(fg_terms) / len(fg_terms)
    return total / b_


@pytest.mark.parametrize("options", [{}, {"d": 0.5, "E": 3.0, "A": 2.0, "B": 0.5},
                                     {"foreground": "hybrid", "C1": 0.1, "C2": 0.5},
                                     {"foreground": "hybrid", "C1": 50.0, "C2": 100.0},
                                     {"d": 0.99, "foreground": "hybrid", "C1": 0.5, "C2": 3.0},
                                     {"foreground": "floor", "C1": 0.5, "C2": 3.0},
                                     {"foreground": "floor", "C1": 50.0, "C2": 100.0}])
def test_loss_matches_manual(options):
    torch.manual_seed(0)
    H = torch.randn(3, 2, 3, 8, 8, dtype=torch.float64)
    M = torch.zeros(3, 1, 8, 8)
    M[:, :, 2:6, 1:5] = 1
    options = {"d": 0.9, "foreground": "L2", "B": 1.0} | options  # manual_loss's defaults are the papers'
    assert math.isclose(heatmap_loss(H, M, **options).item(), manual_loss(H, M, **options), rel_tol=1e-9)


def test_deep_supervision_loss_pools_layers():
    torch.manual_seed(0)
    maps = {"input": torch.randn(2, 1, 3, 16, 16), "layer": torch.randn(2, 1, 1, 4, 4)}
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 4:12] = 1
    per = torch.stack([heatmap_loss(m, mask) for m in maps.values()])
    assert torch.allclose(heatmap_loss(maps, mask), per.mean())
    assert torch.allclose(heatmap_loss(maps, mask, d_loss=0.0), per.max())


def test_calibrate_formula():
    c1, c2 = calibrate(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    s = math.sqrt(2.5)  # sample standard deviation
    assert math.isclose(c1, max(3 / 5, 3 - 3 * s)) and math.isclose(c1, 0.6)
    assert math.isclose(c2, min(25 * 0.6, 3 + 3 * s))
    c1, c2 = calibrate(torch.tensor([10.0, 10.1, 9.9, 10.0, 10.0]))
    s = math.sqrt(0.02 / 4)
    assert math.isclose(c1, 10 - 3 * s, rel_tol=1e-6) and math.isclose(c2, 10 + 3 * s, rel_tol=1e-6)
    c1, c2 = calibrate(torch.tensor([1.0, 1.0, 100.0]))  # C2 capped at 25 C1
    assert math.isclose(c2, 25 * c1)


@pytest.mark.parametrize("kwargs", [{"foreground": "L3"}, {"norm": "mean"}])
def test_bad_options_raise(kwargs):
    with pytest.raises(ValueError):
        heatmap_loss(torch.rand(1, 1, 1, 4, 4), torch.ones(1, 1, 4, 4), **kwargs)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        heatmap_loss(torch.rand(1, 1, 4, 4), torch.ones(1, 1, 4, 4))  # not (B, K, C, h, w)
    with pytest.raises(ValueError):
        ISNetLoss(P=1.5)
    with pytest.raises(ValueError):
        calibrate(torch.tensor([1.0]))
    with pytest.raises(ValueError):
        calibrate(torch.tensor([1.0, float("nan")]))


@pytest.mark.parametrize("norm", ["absRoIMean", "RoIMean"])
def test_zero_heatmaps_finite_and_differentiable(norm):
    heat = torch.zeros(2, 1, 3, 8, 8, requires_grad=True)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:6, 2:6] = 1
    loss = heatmap_loss(heat, mask, norm=norm, B=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(heat.grad).all()
    assert math.isclose(loss.item(), 1.0)  # no background relevance; foreground 0 < C1 costs (0 - 1)^2
    assert heatmap_loss(heat, mask, norm=norm, B=0.0).item() == 0.0  # without the foreground term nothing costs


def test_empty_mask_is_all_background_and_finite():
    heat = torch.randn(2, 1, 3, 8, 8, requires_grad=True)
    loss = heatmap_loss(heat, torch.zeros(2, 1, 8, 8))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(heat.grad).all()
    assert loss.item() > 10  # background share clamped near 1: -log(1e-7) ~ 16


def test_isnet_loss_combines_terms():
    torch.manual_seed(0)
    logits, labels = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    heat, mask = torch.randn(4, 1, 3, 8, 8), torch.ones(4, 1, 8, 8)
    mask[:, :, :2] = 0
    terms = ISNetLoss(P=0.3, d=0.5)(logits, labels, heat, mask)
    ce = torch.nn.functional.cross_entropy(logits, labels)
    assert torch.allclose(terms.cross_entropy, ce)
    assert torch.allclose(terms.heatmap, heatmap_loss(heat, mask, d=0.5))
    assert torch.allclose(terms.total, 0.7 * ce + 0.3 * terms.heatmap)
    plain = ISNetLoss()(logits, labels, None, None)
    assert torch.allclose(plain.total, ce)


def test_loss_gradient_matches_finite_differences():
    torch.manual_seed(0)
    heat = torch.randn(2, 1, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(2, 1, 12, 12)
    mask[:, :, 3:9, 2:8] = 1
    for foreground in ("L2", "hybrid"):
        assert torch.autograd.gradcheck(lambda h: heatmap_loss(h, mask, B=1.0, C1=0.5, C2=3.0,
                                                                     foreground=foreground),
                                        (heat,))


def test_default_loss_caps_nothing_above_c1_and_b0_is_scale_free():
    """The default foreground penalty (floor) keeps relevance above C1 and caps nothing: scaling heatmaps whose
    foreground totals are above C1 changes nothing, shrinking them below C1 costs. Without the foreground term
    (B = 0) no scale matters; with the papers' L2 or hybrid penalty, C2 caps the scale."""
    torch.manual_seed(2)
    heat, mask = torch.randn(4, 1, 1, 8, 8, dtype=torch.float64), (torch.rand(4, 1, 8, 8) > 0.5).double()
    low = (heat.abs() * mask[:, None]).sum((2, 3, 4)).min().item() / 2  # every foreground total is above it
    base = heatmap_loss(heat, mask, C1=low, C2=3 * low).item()
    for scale in (1.0, 7.0, 1e4):
        # rel_tol: the 1e-10 that guards the division by the foreground mean
        assert math.isclose(heatmap_loss(scale * heat, mask, C1=low, C2=3 * low).item(), base, rel_tol=1e-6)
    assert heatmap_loss(1e-3 * heat, mask, C1=low, C2=3 * low) > base + 0.5
    for scale in (1e-3, 7.0, 1e4):
        assert math.isclose(heatmap_loss(scale * heat, mask, B=0.0).item(), heatmap_loss(heat, mask, B=0.0).item(),
                            rel_tol=1e-6)
    for foreground in ("L2", "hybrid"):
        bounded = dict(C1=low, C2=3 * low, foreground=foreground)
        assert heatmap_loss(1e4 * heat, mask, **bounded) > heatmap_loss(heat, mask, **bounded) + 1.0


def test_per_group_bounds_equal_separate_losses():
    """Dual ISNet: C1/C2 per heatmap group equals the mean of the groups' own losses."""
    torch.manual_seed(1)
    maps, masks = torch.randn(3, 2, 1, 8, 8), (torch.rand(3, 1, 8, 8) > 0.5).float()
    opts = dict(d=0.9, E=1.0, A=1.0, B=2.0)
    both = heatmap_loss(maps, masks, C1=(0.5, 40.0), C2=(20.0, 60.0), **opts)
    separate = (heatmap_loss(maps[:, :1], masks, C1=0.5, C2=20.0, **opts)
                + heatmap_loss(maps[:, 1:], masks, C1=40.0, C2=60.0, **opts)) / 2
    assert torch.allclose(both, separate, rtol=1e-6)
    assert not torch.allclose(both, heatmap_loss(maps, masks, C1=0.5, C2=20.0, **opts))
    four = torch.cat([maps, maps], 1)  # groups interleave: heatmap k gets bound k mod 2
    assert torch.allclose(heatmap_loss(four, masks, C1=(0.5, 40.0), C2=(20.0, 60.0), **opts), both, rtol=1e-6)
    with pytest.raises(ValueError, match="cannot be shared over 3 heatmaps"):
        heatmap_loss(maps[:, :1].expand(-1, 3, -1, -1, -1), masks, C1=(1.0, 2.0), C2=(3.0, 4.0))
