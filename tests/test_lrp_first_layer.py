"""Z^B on the first block: manual re-computations, per-channel and grouped bounds, linear first layers, what the
rule needs from the model, and the bounds' validation."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from isnet import LRPFlex, UnsupportedModelError, explain
from isnet.errors import IsnetWarning
from isnet.lrp import Trace
from lrp_models import TwinModules, bias_free_net, randomise_bn, rel_err, tiny


@pytest.mark.parametrize("layers, culprit", [
    ([nn.MaxPool2d(2), nn.Conv2d(3, 4, 3), nn.ReLU()], "max_pool2d"),  # on the input
    ([nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.ReLU()], "max_pool2d"),  # between the layer and its activation
    ([nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.MaxPool2d(2), nn.ReLU()], "max_pool2d"),  # after batch norm
    ([nn.ReLU(), nn.Conv2d(3, 4, 3), nn.ReLU()], "ReLU"),  # an activation on the input
])
def test_zb_needs_first_block(layers, culprit):
    model = nn.Sequential(*layers, nn.Flatten(), nn.LazyLinear(2)).eval()
    x = torch.rand(2, 3, 8, 8)
    model(x)
    with pytest.raises(UnsupportedModelError, match=culprit) as info:
        explain(model, x, 0)
    assert "zb=False" in str(info.value)  # what to do instead
    assert torch.isfinite(explain(model, x, 0, zb=False)).all()


class _RoundTrip(nn.Module):
    """Channels-last and back: a rearrangement Z^B already accepts after the first block."""

    def forward(self, x):
        return x.permute(0, 2, 3, 1).permute(0, 3, 1, 2)


@pytest.mark.parametrize("follower", [nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 5, 1)])
def test_zb_first_block_followed_by_a_convolution(follower):
    """conv -> BN -> conv (a ConvNeXt-style stem feeding a depthwise conv): Z^B on the first block, equal to the
    same network with a permute round trip between BN and the next conv (an accepted follower)."""
    torch.manual_seed(0)
    stem = [nn.Conv2d(3, 4, 2, stride=2), nn.BatchNorm2d(4)]
    head = [follower, nn.ReLU(), nn.Flatten(), nn.LazyLinear(3)]
    model = randomise_bn(nn.Sequential(*stem, *head))
    x = torch.rand(2, 3, 8, 8)
    model(x)
    model.eval()
    twin = nn.Sequential(*stem, _RoundTrip(), *head).eval()
    heat = explain(model, x, "argmax")
    assert rel_err(heat, explain(twin, x, "argmax")) < 1e-6
    assert rel_err(heat, explain(model, x, "argmax", zb=False)) > 1e-3  # Z^B did act


def test_zero_denominator_with_eps0_raises():
    """Z^B with eps = 0, positive first weights, an all-zero image: z = 0, 0 / 0 is reported."""
    model = bias_free_net().eval()
    with torch.no_grad():
        model[0].weight.abs_()
    with pytest.raises(FloatingPointError):
        explain(model, torch.zeros(1, 3, 32, 32), 0, epsilon=0.0, zb=True)




# ----------------------------------------------------------------------------- bounds

def test_per_channel_bounds_equal_scalar_when_equal():
    torch.manual_seed(0)
    model = randomise_bn(TwinModules()).eval()  # first block: biased conv -> BN -> ReLU
    x = torch.rand(2, 3, 32, 32) * 2 - 0.5
    scalar = explain(model, x, "argmax", bounds=(-0.5, 1.5))
    tensors = explain(model, x, "argmax", bounds=(torch.full((3,), -0.5), torch.full((3,), 1.5)))
    assert rel_err(tensors, scalar) < 1e-6


def zb_manual(model: TwinModules, x, target, low, high, eps=0.01):
    """Independent Z^B for conv -> BN(eval) -> ReLU, following SPEC section 1 with constant images."""
    conv, bn = model.c1, model.b1
    s = torch.sqrt(bn.running_var + bn.eps)
    w = conv.weight * (bn.weight / s)[:, None, None, None]
    b = (conv.bias - bn.running_mean) * bn.weight / s + bn.bias
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    low_img = low.view(1, -1, 1, 1).expand_as(x[:1])
    high_img = high.view(1, -1, 1, 1).expand_as(x[:1])
    # the bias has no input channel: it takes the channel-averaged bounds (see docs/lrp-flex.md)
    lb, hb = low.mean(), high.mean()
    out = F.conv2d(x, w, b, padding=1)
    z = out - F.conv2d(low_img, wp, b.clamp(min=0) * lb, padding=1) - F.conv2d(high_img, wn, b.clamp(max=0) * hb,
                                                                              padding=1)
    # relevance at the first ReLU output from the rest of the network (LRP-epsilon)
    lrp = LRPFlex(model, zb=False, layers=["r1"], epsilon=eps)
    trace = lrp.trace(x)
    r1 = trace.relevance(trace.output.gather(1, target[:, None]).sum()).layers["r1"]
    sdiv = r1 / (z + torch.where(z >= 0, eps, -eps))
    back = lambda weight: torch.nn.grad.conv2d_input(x.shape, weight, sdiv, padding=1)  # noqa: E731
    return x * back(w) - low.view(1, -1, 1, 1) * back(wp) - high.view(1, -1, 1, 1) * back(wn)


def test_per_channel_bounds_match_manual_zb():
    torch.manual_seed(0)
    model = randomise_bn(TwinModules()).eval()
    low, high = torch.tensor([-2.0, -1.0, 0.0]), torch.tensor([2.5, 1.0, 3.0])
    x = low.view(1, 3, 1, 1) + torch.rand(2, 3, 32, 32) * (high - low).view(1, 3, 1, 1)
    target = torch.tensor([1, 2])
    heat = explain(model, x, target, bounds=(low, high))
    assert rel_err(heat, zb_manual(model, x, target, low, high).detach()) < 1e-5


def test_per_channel_bounds_grouped_first_conv():
    """A depthwise first conv: each output channel sees one input channel and its bounds."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, groups=3, bias=False), nn.ReLU(),
                          nn.Flatten(), nn.Linear(6 * 8 * 8, 2)).eval()
    low, high = torch.tensor([-1.0, 0.0, -0.5]), torch.tensor([1.0, 2.0, 0.5])
    x = low.view(1, 3, 1, 1) + torch.rand(2, 3, 8, 8) * (high - low).view(1, 3, 1, 1)
    heat = explain(model, x, 0, bounds=(low, high))
    # twin: the same depthwise conv written as a dense conv with zeros off the groups
    dense = nn.Conv2d(3, 6, 3, padding=1, bias=False)
    with torch.no_grad():
        dense.weight.zero_()
        for o in range(6):
            dense.weight[o, o // 2] = model[0].weight[o, 0]
    twin = nn.Sequential(dense, *list(model)[1:]).eval()
    assert rel_err(heat, explain(twin, x, 0, bounds=(low, high))) < 1e-5


def test_linear_first_layer_on_flattened_input_per_channel_bounds():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    x = torch.rand(2, 3, 4, 4)
    scalar = explain(model, x, "argmax", bounds=(-0.5, 1.5))
    per_channel = explain(model, x, "argmax", bounds=(torch.full((3,), -0.5), torch.full((3,), 1.5)))
    assert rel_err(per_channel, scalar) < 1e-6
    # the same as a 4x4 conv with no padding over the whole image (a dense layer written as a conv)
    conv = nn.Conv2d(3, 6, 4)
    with torch.no_grad():
        conv.weight.copy_(model[1].weight.view(6, 3, 4, 4)), conv.bias.copy_(model[1].bias)
    twin = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), model[3]).eval()
    low, high = torch.tensor([-1.0, 0.0, -0.5]), torch.tensor([1.0, 2.0, 0.5])
    assert rel_err(explain(model, x, "argmax", bounds=(low, high)), explain(twin, x, "argmax", bounds=(low, high))) < 1e-5


def test_linear_first_layer_and_layers_relevance():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    x = torch.rand(4, 1, 3, 4)
    # flatten is a reshape of the input: Z^B still finds linear -> ReLU
    heat = explain(model, x, "argmax")
    assert heat.shape == x.shape and torch.isfinite(heat).all()
    trace: Trace = LRPFlex(model, zb=False, epsilon=1e-9, layers=["2"]).trace(x)
    rel = trace.relevance(trace.output[:, 0].sum())
    assert torch.allclose(rel.layers["2"].sum(1), trace.output[:, 0] - model[3].bias[0], atol=1e-5)


@pytest.mark.parametrize("epsilon", [0.0, 0.01])
def test_zb_reads_the_first_conv_output_before_an_inplace_relu(epsilon):
    """conv -> ReLU(inplace=True) overwrites the conv output; Z^B must still use the pre-activations.

    With bounds (0, 0) the Z^B denominator of an inactive unit is its (negative) pre-activation; read
    after the in-place ReLU it would be 0, and 0 / 0 with eps = 0.
    """
    def net(inplace: bool) -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=inplace), nn.MaxPool2d(2),
                             nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=inplace), nn.Flatten(),
                             nn.Linear(8 * 16 * 16, 4)).eval()

    x = torch.rand(2, 3, 32, 32)
    expected = explain(net(False), x, "argmax", epsilon=epsilon, zb=True, bounds=(0.0, 0.0))
    model = net(True)
    actual = explain(model, x, "argmax", epsilon=epsilon, zb=True, bounds=(0.0, 0.0))
    assert torch.isfinite(actual).all()
    assert rel_err(actual, expected) < 1e-6
    assert model[1].inplace is True



def _numbers(text: str) -> list[float]:
    """The numbers written in a message, in order."""
    return [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", text)]


def test_input_far_outside_the_zb_bounds_warns_naming_the_range():
    """Pixels in 0-255 (or normalised pixels with the default bounds) warn; [0, 1] pixels, normalised ones
    with their bounds, a slight overshoot, no Z^B, ISNet training's check_finite=False, bounds without a
    range and non-finite input (an error instead) do not."""
    model, x = tiny(), torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    pixels = (x * 255).round()
    pixels[0, 0, 0, 0], pixels[1, 2, 7, 7] = 0.0, 255.0
    with pytest.warns(IsnetWarning) as seen:
        heat = explain(model, pixels, "argmax")
    assert len(seen) == 1 and heat.shape == pixels.shape
    assert _numbers(str(seen[0].message))[:4] == [0, 255, 0, 1]  # the input's range, then the bounds
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    normalised = (x - mean) / std
    normalised[0, 0, 0, 0] = -mean[0, 0, 0] / std[0, 0, 0]  # the lowest value: -2.118
    with pytest.warns(IsnetWarning, match="bounds=") as seen:  # says which option to pass
        LRPFlex(model).explain(normalised, 0)
    low, high = _numbers(str(seen[0].message))[:2]
    assert low == pytest.approx(normalised.min().item(), abs=1e-3)
    assert high == pytest.approx(normalised.max().item(), abs=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IsnetWarning)
        explain(model, x, "argmax")
        explain(model, normalised, "argmax", bounds=(((0 - mean) / std).flatten(), ((1 - mean) / std).flatten()))
        explain(model, x * 1.5 - 0.25, "argmax")  # augmentation overshoot: within one span of the bounds
        explain(model, pixels, "argmax", zb=False)  # the bounds are not used
        LRPFlex(model, check_finite=False).trace(pixels)  # ISNet training: no check, no device sync
        explain(model, x, "argmax", bounds=(0.0, 0.0))  # no range: the box terms switched off
        pixels[0, 0, 0, 0] = float("inf")
        with pytest.raises(FloatingPointError):  # named by the finite check instead
            explain(model, pixels, "argmax")


def test_bounds_need_low_below_high():
    with pytest.raises(ValueError, match="bounds"):
        LRPFlex(tiny(), bounds=(1.0, 0.0))
    with pytest.raises(ValueError, match="bounds"):
        LRPFlex(tiny(), bounds=(torch.zeros(3), torch.tensor([1.0, -1.0, 1.0])))
    LRPFlex(tiny(), bounds=(-torch.ones(3), torch.ones(3)))  # per-channel, valid


