"""LRP-Flex against LXT, the AttnLRP authors' implementation (Achtibat et al., ICML 2024).

LXT's efficient mode is gradient x input with modified backward passes, set up by
replacing module ``forward`` methods (its "patches") and, for rules on conv/linear
layers, by zennit hooks whose backward lxt rewrites to the same gradient x input
convention (``lxt.efficient.zennit_patches``). The heatmap is ``x * x.grad``, which is
what :func:`isnet.explain` returns. Everything runs in float64.

Rules matched, per operation of torchvision's VisionTransformer:

* GELU: identity rule on both sides. LXT's factor is ``f(z) / (z + 1e-10)`` (a fixed
  1e-10, not sign-aware); isnet's is ``f(z) / (z + eps * sign(z))``.
* LayerNorm: standard deviation held constant on both sides (LXT's ``layer_norm_forward``).
* Attention (``nn.MultiheadAttention``): AttnLRP's uniform rule on ``Q K^T`` and ``A V``
  with the ordinary softmax derivative. LXT's gradient factors 1/4, 1/4, 1/2 on query,
  key and value (``wrap_attention_forward``, which LXT applies to Hugging Face models)
  wrap the module's forward here. LXT's *default* map for torchvision's ViT
  (``lxt.efficient.models.vit_torch.cp_LRP``) is CP-LRP instead (no gradient through
  query and key, i.e. the attention weights are constants); isnet has no such
  option, so that map is used only to show the test can tell rules apart.
* Linear layers, the patch embedding and additions: LXT's efficient mode gives them
  no rule (plain gradient, LRP-0). isnet applies its epsilon only through the
  activation after a layer, i.e. to the first MLP layer ``fc1`` (``gelu(z) / (z + eps
  sign z)``), and LRP-0 to the others (q/k/v/out projections, ``fc2``, the head). So:

  - ``epsilon -> 0`` and ``zb=False`` on isnet's side equals LXT's patches alone;
  - isnet's defaults (``epsilon=0.01``, Z^B on ``conv_proj``) equal LXT plus zennit's
    ``Epsilon(0.01)`` on each ``fc1`` and ``ZBox(0, 1, stabilizer=0.01)`` on
    ``conv_proj`` (lxt's zennit hooks). Z^B differs in one convention: zennit's
    denominator drops the bias altogether (``b - b+ - b- = 0``), isnet's subtracts the
    bias's own bound ``b+ low + b- high``; they agree when ``conv_proj`` has no bias,
    so that case zeroes it.

Remaining differences, all below the tolerance: LXT's 1e-10 in the identity rule
(relative ``1e-10 / |z|`` per unit; isnet uses ``epsilon=1e-12`` where it has to match
LXT's unstabilised layers), and lxt's zennit hooks dividing by ``x + 1e-10 sign(x)``
to go back to gradients (relative ``1e-10 / |x|``). Measured (max abs error over max
abs value): 5e-10 (AttnLRP), 2e-9 (epsilon 0.01), 4e-8 (epsilon and Z^B), 1e-9 (the
gated block below); Z^B with ``conv_proj``'s bias kept: 0.11.

LXT is imported without its package ``__init__`` (``lxt.efficient`` imports every
Hugging Face model it supports, hence ``transformers``): see :func:`lxt_efficient`.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import vision_transformer

from conftest import require
from isnet import explain
from lrp_models import assert_no_mode_left, rel_err
from test_lrp_transformers import randomised

require("lxt")  # a test dependency (make install); the guard only keeps a bare checkout collectable

TOL = 1e-6


def lxt_efficient() -> types.SimpleNamespace:
    """LXT's efficient-mode ``rules``, ``patches`` and ``zennit_patches`` modules.

    ``import lxt.efficient`` runs ``lxt/efficient/__init__.py``, which imports
    ``lxt.efficient.models`` and through it ``transformers`` (Llama, Qwen, Gemma, BERT,
    GPT-2 patch maps). None of that is needed for torchvision models, so when that
    import fails the package is registered empty (its ``__path__`` only) and the three
    modules, which import nothing beyond torch, zennit and each other, load as usual.
    The stand-in stays registered for the session; with ``transformers`` installed the
    real package is used.
    """
    try:
        importlib.import_module("lxt.efficient")
    except ImportError:  # transformers missing (or a version without one of those models)
        package = types.ModuleType("lxt.efficient")
        package.__path__ = [str(Path(importlib.util.find_spec("lxt").origin).parent / "efficient")]
        sys.modules["lxt.efficient"] = package
    return types.SimpleNamespace(**{name: importlib.import_module(f"lxt.efficient.{name}")
                                    for name in ("rules", "patches", "zennit_patches")})


LXT = lxt_efficient()


def patch_forward(module: nn.Module, new_forward) -> None:
    """Give one module instance LXT's patched ``forward`` (LXT patches the class; this keeps the class intact)."""
    module.original_forward = module.forward
    module.forward = types.MethodType(new_forward, module)


def mha_attnlrp_forward(module: nn.MultiheadAttention, *args, **kwargs):
    """AttnLRP on ``nn.MultiheadAttention``: LXT's attention wrapper around the module's own forward."""
    return LXT.patches.wrap_attention_forward(
        lambda m, q, k, v, *a, **kw: m.original_forward(q, k, v, *a, **kw))(module, *args, **kwargs)


def lxt_vit(model: nn.Module, attention: str = "attnlrp") -> nn.Module:
    """A copy of ``model`` with LXT's efficient-mode rules on its GELUs, LayerNorms and attention."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.GELU):
            patch_forward(m, LXT.patches.non_linear_forward)
        elif isinstance(m, nn.LayerNorm):
            patch_forward(m, LXT.patches.layer_norm_forward)
        elif isinstance(m, nn.MultiheadAttention):
            cp_lrp = LXT.patches.cp_multi_head_attention_forward
            patch_forward(m, mha_attnlrp_forward if attention == "attnlrp" else cp_lrp)
    return model


def lxt_hook(rule_class):
    """A zennit rule with the backward/forward hooks that ``lxt.efficient.monkey_patch_zennit`` installs.

    ``monkey_patch_zennit()`` rewrites zennit's ``BasicHook`` for the whole process; the
    same two methods on a subclass leave zennit untouched for the other tests.
    """
    return type(f"LXT{rule_class.__name__}", (rule_class,),
                {"forward": LXT.zennit_patches.forward, "backward": LXT.zennit_patches.backward})


def gradient_x_input(model: nn.Module, x: torch.Tensor, target: torch.Tensor, composite=None) -> torch.Tensor:
    """LXT's heatmap: ``x * d(logit)/dx`` through the patched model (and the zennit composite, if any)."""
    x = x.detach().requires_grad_(True)

    def run():
        logits = model(x)
        return torch.autograd.grad(logits.gather(1, target[:, None]).sum(), x)[0]

    if composite is None:
        grad = run()
    else:
        with composite.context(model):
            grad = run()
    return (x * grad).detach()


def tiny_vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = vision_transformer.VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2,
                                                 hidden_dim=16, mlp_dim=32, num_classes=3)
    return randomised(model, seed=seed, size=16).double().eval()


@pytest.fixture(scope="module")
def vit_case():
    model = tiny_vit()
    x = torch.rand(3, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 2, 1])
    return model, x, target


def test_vit_attnlrp_equals_lxt(vit_case):
    """AttnLRP without stabilisers: isnet (epsilon -> 0, no Z^B) against LXT's patches alone."""
    model, x, target = vit_case
    expected = gradient_x_input(lxt_vit(model), x, target)
    ours = explain(model, x, target, epsilon=1e-12, zb=False)
    assert expected.abs().max() > 0
    assert rel_err(ours, expected) < TOL
    assert_no_mode_left()


def fc1_names(model: nn.Module) -> list[str]:
    return [f"{name}.0" for name, m in model.named_modules() if isinstance(m, vision_transformer.MLPBlock)]


def lxt_zennit_composite(model: nn.Module, epsilon: float, zb: bool):
    from zennit.composites import NameMapComposite
    from zennit.rules import Epsilon, ZBox

    rules = [(fc1_names(model), lxt_hook(Epsilon)(epsilon=epsilon))]
    if zb:
        rules.append((["conv_proj"], lxt_hook(ZBox)(low=0.0, high=1.0, stabilizer=epsilon)))
    return NameMapComposite(rules)


@pytest.mark.parametrize("zb", [False, True])
def test_vit_isnet_defaults_equal_lxt_with_zennit_rules(vit_case, zb):
    """isnet's epsilon (and Z^B) against LXT with zennit's Epsilon on fc1 (and ZBox on conv_proj)."""
    model, x, target = vit_case
    if zb:  # zennit's Z^B leaves the bias out of its denominator; isnet bounds it (see the module doc)
        model = copy.deepcopy(model)
        with torch.no_grad():
            model.conv_proj.bias.zero_()
    lxt_model = lxt_vit(model)
    expected = gradient_x_input(lxt_model, x, target, lxt_zennit_composite(lxt_model, 0.01, zb))
    ours = explain(model, x, target, epsilon=0.01, zb=zb)
    assert rel_err(ours, expected) < TOL
    # the stabiliser matters here: without it the maps differ clearly
    assert rel_err(explain(model, x, target, epsilon=0.5, zb=zb), expected) > 1e-2
    assert_no_mode_left()


def test_vit_rule_differences_are_detected(vit_case):
    """The comparison can fail: CP-LRP attention (LXT's default for torchvision's ViT) is not AttnLRP."""
    model, x, target = vit_case
    ours = explain(model, x, target, epsilon=1e-12, zb=False)
    cp_lrp = gradient_x_input(lxt_vit(model, attention="cp"), x, target)
    assert rel_err(ours, cp_lrp) > 1e-2
    with_zb = explain(model, x, target, epsilon=1e-12, zb=True)  # Z^B on conv_proj, which LXT leaves at LRP-0
    assert rel_err(with_zb, gradient_x_input(lxt_vit(model), x, target)) > 1e-2


# ------------------------------------------------------------------ a Llama-style block, patched the LXT way

E, HEADS, TOKENS = 8, 2, 5


def eager_attention(module: nn.Module, query, key, value, scaling: float):
    """Attention as a free function of (module, q, k, v), the form LXT's attention wrapper takes."""
    return F.scaled_dot_product_attention(query, key, value, scale=scaling)


class GatedMLP(nn.Module):
    """SwiGLU feed-forward with the attribute names of LXT's ``gated_mlp_forward``."""

    def __init__(self) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(E, 12), nn.Linear(E, 12), nn.Linear(12, E)
        self.act_fn = nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(E, E) for _ in range(4))
        self.attention = eager_attention

    def forward(self, x):
        b = x.shape[0]
        q, k, v = (p(x).view(b, TOKENS, HEADS, E // HEADS).transpose(1, 2) for p in (self.q_proj, self.k_proj,
                                                                                       self.v_proj))
        mixed = self.attention(self, q, k, v, scaling=(E // HEADS) ** -0.5)
        return self.o_proj(mixed.transpose(1, 2).reshape(b, TOKENS, E))


class Decoder(nn.Module):
    """Pre-norm transformer block on token inputs (B, TOKENS, E), mean-pooled into 3 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(E), nn.LayerNorm(E), nn.LayerNorm(E)
        self.attn, self.mlp, self.head = SelfAttention(), GatedMLP(), nn.Linear(E, 3)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return self.head(self.norm3(x).mean(1))


def lxt_decoder(model: Decoder) -> Decoder:
    """LXT's rules for this block, the way it patches Llama: gated MLP, attention function, norms."""
    model = copy.deepcopy(model)
    patch_forward(model.mlp, LXT.patches.gated_mlp_forward)
    model.attn.attention = LXT.patches.wrap_attention_forward(eager_attention)
    for m in (model.norm1, model.norm2, model.norm3):
        patch_forward(m, LXT.patches.layer_norm_forward)
    return model


def test_gated_block_with_sdpa_equals_lxt():
    """SiLU gating (identity + uniform rule) and F.scaled_dot_product_attention against LXT's patches."""
    torch.manual_seed(0)
    model = Decoder().double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("norm"):
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
    x = torch.randn(2, TOKENS, E, dtype=torch.float64)
    target = torch.tensor([1, 2])
    expected = gradient_x_input(lxt_decoder(model), x, target)
    ours = explain(model, x, target, epsilon=1e-12, zb=False)
    assert rel_err(ours, expected) < TOL
    # without the uniform rule on the gate (plain gradient x input through the product) the maps differ
    plain = gradient_x_input(model, x, target)
    assert rel_err(ours, plain) > 1e-2
    assert_no_mode_left()
