"""LRP-Flex on attention and on unmodified torchvision ViT, Swin, ConvNeXt, EfficientNet, MobileNetV3, RegNet."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models
from torchvision.models import convnext, swin_transformer, vision_transformer

from isnet import LRPFlex, UnsupportedModelError, explain
from lrp_models import assert_no_mode_left, assert_same, snapshot

E, HEADS, L = 8, 2, 5


def explicit_attention_relevance(x, wq, wk, wv, wo, g):
    """AttnLRP by explicit contributions for one sample of ``sum(g * MHA(x))``, bias-free projections.

    Linear maps: LRP-0 (each input's contribution over the output). Products ``A v`` and
    ``q k^T``: contributions split half and half (uniform rule). Softmax:
    ``R_S = S * (R_A - A * sum R_A)`` (AttnLRP, Prop. 3.1).
    """
    d = E // HEADS
    q, k, v = x @ wq.T, x @ wk.T, x @ wv.T
    heads = [slice(h * d, (h + 1) * d) for h in range(HEADS)]
    scores = [d ** -0.5 * q[:, s] @ k[:, s].T for s in heads]
    attn = [sc.softmax(-1) for sc in scores]
    c = torch.cat([a @ v[:, s] for a, s in zip(attn, heads)], 1)
    o = c @ wo.T
    r_c = torch.einsum("ik,jk,ij->ik", c, wo, o * g / o)
    r_q, r_k, r_v = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for s, sc, a in zip(heads, scores, attn):
        frac = r_c[:, s] / (a @ v[:, s])
        r_a = 0.5 * torch.einsum("im,mk,ik->im", a, v[:, s], frac)
        r_v[:, s] = 0.5 * torch.einsum("im,mk,ik->mk", a, v[:, s], frac)
        r_s = sc * (r_a - a * r_a.sum(-1, keepdim=True))
        frac = r_s / sc
        r_q[:, s] = 0.5 * torch.einsum("ic,mc,im->ic", d ** -0.5 * q[:, s], k[:, s], frac)
        r_k[:, s] = 0.5 * torch.einsum("ic,mc,im->mc", d ** -0.5 * q[:, s], k[:, s], frac)
    return sum(torch.einsum("ie,ce,ic->ie", x, w, r / p) for w, r, p in ((wq, r_q, q), (wk, r_k, k), (wv, r_v, v)))


class Attention(nn.Module):
    """Self-attention written three ways: nn.MultiheadAttention, F.scaled_dot_product_attention, matmul + softmax."""

    def __init__(self, how: str, g: torch.Tensor) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(E, HEADS, bias=False, batch_first=True)
        self.how, self.g = how, g

    def forward(self, x):
        if self.how.startswith("mha"):
            out = self.mha(x, x, x, need_weights=self.how == "mha_weights")[0]
        else:
            b = x.shape[0]
            q, k, v = F.linear(x, self.mha.in_proj_weight).view(b, L, 3, HEADS, E // HEADS).permute(2, 0, 3, 1, 4)
            if self.how == "sdpa":
                mixed = F.scaled_dot_product_attention(q, k, v)
            else:  # as Swin writes it
                mixed = (q * (E // HEADS) ** -0.5).matmul(k.transpose(-2, -1)).softmax(-1).matmul(v)
            out = self.mha.out_proj(mixed.transpose(1, 2).reshape(b, L, E))
        return (out * self.g).sum((1, 2))[:, None]


@pytest.mark.parametrize("how", ["mha", "mha_weights", "sdpa", "matmul"])
def test_attention_equals_explicit_attnlrp(how):
    torch.manual_seed(0)
    g = torch.randn(L, E, dtype=torch.float64)
    model = Attention(how, g).double().eval()
    x = torch.randn(2, L, E, dtype=torch.float64)
    wq, wk, wv = model.mha.in_proj_weight.detach().chunk(3)
    wo = model.mha.out_proj.weight.detach()
    expected = torch.stack([explicit_attention_relevance(x[n], wq, wk, wv, wo, g) for n in range(2)])
    heat = explain(model, x, 0, zb=False)
    assert torch.allclose(heat, expected, atol=1e-9, rtol=1e-7)


def test_mha_options_without_a_rule_are_named():
    mha = nn.MultiheadAttention(E, HEADS, add_bias_kv=True, batch_first=True)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = mha

        def forward(self, x):
            return self.mha(x, x, x)[0].sum((1, 2))[:, None]

    with pytest.raises(UnsupportedModelError, match="add_bias_kv"):
        explain(Net(), torch.randn(1, L, E), 0, zb=False)
    assert_no_mode_left()


# ----------------------------------------------------------------------------- torchvision models

def tiny_vit(**kw) -> nn.Module:
    return vision_transformer.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                hidden_dim=16, mlp_dim=32, num_classes=3, **kw)


def tiny_swin() -> nn.Module:  # swin_t's classes and blocks, two stages of one block
    return swin_transformer.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 1], num_heads=[2, 2],
                                            window_size=[2, 2], num_classes=3)


def tiny_convnext() -> nn.Module:  # convnext_tiny's classes and blocks, two stages
    return convnext.ConvNeXt([convnext.CNBlockConfig(8, 16, 2), convnext.CNBlockConfig(16, None, 1)], num_classes=3)


BUILDERS = {
    "vit": tiny_vit, "swin": tiny_swin, "convnext": tiny_convnext,
    "efficientnet_b0": lambda: models.efficientnet_b0(num_classes=3),
    "mobilenet_v3_small": lambda: models.mobilenet_v3_small(num_classes=3),
    "regnet_y_400mf": lambda: models.regnet_y_400mf(num_classes=3),
}


def randomised(model: nn.Module, seed: int = 0, size: int = 32) -> nn.Module:
    """A model in eval mode with non-trivial parameters and batch-norm statistics that fit them.

    Batch-norm affine parameters are drawn at random, near-zero parameters (ViT's head,
    layer scales) too; the running statistics are then those of random images, so that
    deep random networks neither vanish nor explode.
    """
    g = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in norms:
            m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the calibration pass
        for p in model.parameters():
            if p.abs().max() < 1e-3:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
        model.train()(torch.rand(8, 3, size, size, generator=g))
    for m in norms:
        m.momentum = 0.1
    return model.eval()


@pytest.fixture(scope="module")
def tv_models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: randomised(build()).eval() for name, build in BUILDERS.items()}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_torchvision_model_explains_finitely_and_is_left_unchanged(tv_models, name):
    model = tv_models[name]
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    before, out = snapshot(model), model(x)
    heat = explain(model, x, "argmax")  # defaults: Z^B on the first layer, eps 0.01
    assert heat.shape == x.shape and torch.isfinite(heat).all() and heat.abs().sum() > 0
    assert torch.isfinite(explain(model, x, 1, zb=False)).all()
    assert_same(before, snapshot(model))
    assert torch.equal(model(x), out)
    assert_no_mode_left()


def test_conservation_on_bias_free_convnext():
    """No bias and eps -> 0: the input relevance sums to the logit (Z^B, GELU, LayerNorm, layer scale)."""
    model = randomised(tiny_convnext()).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([0, 2])
    heat = explain(model, x, target, epsilon=1e-12)
    logits = model(x).gather(1, target[:, None])[:, 0]
    assert torch.allclose(heat.sum((1, 2, 3)), logits, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenet_v3_small", "regnet_y_400mf"])
def test_squeeze_excitation_gates_do_not_blow_up(tv_models, name):
    """Sigmoid gates near z = 0: relevance stays of the order of the logit (f(0) is absorbed, not divided by eps)."""
    model = tv_models[name]
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    logits = model(x).detach()
    for eps in (0.01, 1e-6):
        heat = explain(model, x, "argmax", epsilon=eps)
        assert (heat.abs().sum((1, 2, 3)) < 100 * logits.abs().amax(1)).all(), eps


def test_vit_training_backward_is_ordinary_and_trace_output_matches():
    torch.manual_seed(0)
    model = randomised(tiny_vit()).double().eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    trace = LRPFlex(model).trace(x)
    assert torch.allclose(trace.output, model(x), atol=1e-12)
    trace.heatmap("argmax", create_graph=True)
    params = [p for p in model.parameters()]
    traced = torch.autograd.grad(trace.output.square().sum(), params)
    plain = torch.autograd.grad(model(x).square().sum(), params)
    for a, b in zip(traced, plain):
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("arch", ["vit", "convnext", "se_cnn"])
def test_heatmap_gradients_match_finite_differences(arch):
    """create_graph heatmaps (Z^B, identity, LayerNorm, attention, gating rules) are differentiable."""
    from torch.func import functional_call
    from torchvision.ops import SqueezeExcitation

    torch.manual_seed(0)
    if arch == "vit":
        model = vision_transformer.VisionTransformer(image_size=8, patch_size=4, num_layers=1, num_heads=2,
                                                     hidden_dim=8, mlp_dim=8, num_classes=2)
        names = ["conv_proj.weight", "encoder.layers.encoder_layer_0.self_attention.in_proj_weight",
                 "encoder.layers.encoder_layer_0.ln_2.weight", "encoder.layers.encoder_layer_0.mlp.0.weight"]
    elif arch == "convnext":
        model = convnext.ConvNeXt([convnext.CNBlockConfig(4, None, 2)], num_classes=2)
        names = ["features.0.0.weight", "features.1.0.block.0.weight", "features.1.0.block.3.weight",
                 "features.1.0.layer_scale"]
    else:  # EfficientNet's ingredients: conv -> BN -> SiLU(inplace), squeeze-and-excitation, Hardswish
        model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.SiLU(inplace=True),
                              SqueezeExcitation(4, 2), nn.Conv2d(4, 4, 3, padding=1), nn.Hardswish(inplace=True),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        names = ["0.weight", "1.weight", "3.fc1.weight", "3.fc2.weight", "4.weight"]
    model = randomised(model, size=8).double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    params = dict(model.named_parameters())
    for name in names:
        def loss(p, name=name):
            class Call(nn.Module):
                def forward(self, inp):
                    return functional_call(model, {**params, name: p}, (inp,))

            return (explain(Call(), x, torch.tensor([0, 1]), epsilon=0.05, create_graph=True) ** 2).sum()

        p0 = params[name].detach().clone().requires_grad_(True)
        assert torch.autograd.gradcheck(loss, (p0,), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True), name
