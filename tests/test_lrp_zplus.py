"""LRP-z+ on conv/linear layers (the Dual ISNet's second heatmap): zennit's ZPlus, conservation, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from isnet import LRPFlex, explain
from lrp_models import VGGLike, assert_no_mode_left, assert_same, bias_free_net, rel_err, snapshot


def zennit_zplus(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, zb: bool, eps: float = 0.01):
    from zennit.attribution import Gradient
    from zennit.composites import NameMapComposite
    from zennit.rules import Norm, Pass, ZBox, ZPlus

    first = ZBox(low=0.0, high=1.0, stabilizer=eps) if zb else ZPlus(stabilizer=eps)
    composite = NameMapComposite([
        (["conv1"], first),
        (["conv2", "conv3", "fc1", "fc2"], ZPlus(stabilizer=eps)),
        (["pool2"], Norm(stabilizer=1e-12)),
        (["relu1", "relu2", "relu3", "relu4"], Pass()),
    ])
    with Gradient(model, composite) as attributor:
        _, relevance = attributor(x, lambda out: F.one_hot(target, out.shape[1]).to(out) * out)
    return relevance


@pytest.mark.parametrize("zb", [False, True])
def test_zplus_equals_zennit(zb):
    torch.manual_seed(0)
    model = VGGLike().eval()
    x = torch.rand(4, 3, 32, 32)
    target = torch.tensor([0, 1, 4, 2])
    before = snapshot(model)
    ours = explain(model, x, target, zb=zb, rule="z+")
    assert rel_err(ours, zennit_zplus(model, x, target, zb=zb)) < 1e-5
    assert_same(before, snapshot(model))
    assert_no_mode_left()


def test_zplus_conserves_and_is_positive_without_biases():
    """Only positive contributions: for a positive logit and pixels >= 0, every pixel's relevance is >= 0."""
    torch.manual_seed(0)
    model = bias_free_net().eval()
    x = torch.rand(3, 3, 32, 32)
    logits = model(x)
    target = logits.argmax(1)
    heat = explain(model, x, target, zb=False, rule="z+", epsilon=1e-9)
    assert torch.allclose(heat.sum((1, 2, 3)), logits.gather(1, target[:, None])[:, 0], rtol=1e-4)
    positive = logits.gather(1, target[:, None])[:, 0] > 0
    assert (heat[positive] >= 0).all()
    assert not torch.allclose(heat, explain(model, x, target, zb=False, epsilon=1e-9), atol=1e-6)


def test_zplus_trace_training_backward_is_ordinary_and_heatmap_differentiable():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(3 * 5 * 5, 2)).double()
    x = torch.rand(3, 2, 5, 5, dtype=torch.float64)
    trace = LRPFlex(model, rule="z+").trace(x)
    trace.heatmap("argmax", create_graph=True)
    traced = torch.autograd.grad(trace.output.square().sum(), list(model.parameters()))
    plain = torch.autograd.grad(model(x).square().sum(), list(model.parameters()))
    assert all(torch.allclose(a, b) for a, b in zip(traced, plain))

    from torch.func import functional_call

    params = dict(model.named_parameters())
    for name in ("0.weight", "2.weight", "5.weight"):
        def loss(p, name=name):
            class Call(nn.Module):
                def forward(self, inp):
                    return functional_call(model, {**params, name: p}, (inp,))

            return (explain(Call(), x, torch.tensor([0, 1, 1]), rule="z+", epsilon=0.05, create_graph=True) ** 2).sum()

        p0 = params[name].detach().clone().requires_grad_(True)
        assert torch.autograd.gradcheck(loss, (p0,), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True), name


def test_unknown_rule_is_rejected():
    with pytest.raises(ValueError, match="rule"):
        LRPFlex(VGGLike(), rule="alpha-beta")


def test_zplus_with_inplace_relus_equals_twin():
    """VGG's ReLU(inplace=True) overwrites the conv outputs the z+ backward reads."""
    def net(inplace: bool) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=inplace), nn.Conv2d(4, 4, 3, padding=1),
                             nn.ReLU(inplace=inplace), nn.Flatten(), nn.Linear(4 * 8 * 8, 2)).eval()

    x = torch.rand(2, 3, 8, 8)
    assert rel_err(explain(net(True), x, 1, rule="z+"), explain(net(False), x, 1, rule="z+")) < 1e-6
