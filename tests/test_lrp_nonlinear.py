"""LRP-Flex beyond ReLU: each rule against an explicit computation (identity, normalisation, uniform).

Every expected value here is written with explicit matrices, not with isnet or autograd.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from isnet import LRPFlex, UnsupportedModelError, explain


def sign(z: torch.Tensor) -> torch.Tensor:
    return torch.where(z >= 0, 1.0, -1.0).to(z)


class OneHidden(nn.Module):
    """``w2 . act(W1 x + b1)``: one hidden layer, the activation given as a callable."""

    def __init__(self, act, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.l1, self.l2 = nn.Linear(4, 6), nn.Linear(6, 1, bias=False)
        with torch.no_grad():
            self.l1.weight.copy_(torch.randn(6, 4, generator=g))
            self.l1.bias.copy_(torch.randn(6, generator=g))
            self.l2.weight.copy_(torch.randn(1, 6, generator=g))
        self.act = act

    def forward(self, x):
        return self.l2(self.act(self.l1(x)))


# (module, the same function written by hand, a functional / in-place twin)
ACTIVATIONS = {
    "gelu": (nn.GELU(), lambda z: 0.5 * z * (1 + torch.erf(z / 2 ** 0.5)), F.gelu),
    "gelu_tanh": (nn.GELU("tanh"),
                  lambda z: 0.5 * z * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (z + 0.044715 * z ** 3))),
                  lambda t: F.gelu(t, approximate="tanh")),
    "silu": (nn.SiLU(), lambda z: z / (1 + torch.exp(-z)), lambda t: F.silu(t, inplace=True)),
    "hardswish": (nn.Hardswish(inplace=True), lambda z: z * (z + 3).clamp(0, 6) / 6, lambda t: F.hardswish(t, True)),
    "hardsigmoid": (nn.Hardsigmoid(), lambda z: (z + 3).clamp(0, 6) / 6, lambda t: F.hardsigmoid(t, inplace=True)),
    "mish": (nn.Mish(), lambda z: z * torch.tanh(torch.log1p(torch.exp(z))), F.mish),
    "elu": (nn.ELU(0.7), lambda z: torch.where(z > 0, z, 0.7 * (torch.exp(z) - 1)), lambda t: F.elu_(t, 0.7)),
    "selu": (nn.SELU(), lambda z: 1.0507009873554805 * torch.where(z > 0, z, 1.6732632423543772 * (torch.exp(z) - 1)),
             torch.selu_),
    "celu": (nn.CELU(0.5), lambda z: torch.where(z > 0, z, 0.5 * (torch.exp(z / 0.5) - 1)),
             lambda t: torch.celu(t, 0.5)),
    "sigmoid": (nn.Sigmoid(), lambda z: 1 / (1 + torch.exp(-z)), lambda t: t.sigmoid_()),
    "tanh": (nn.Tanh(), lambda z: (torch.exp(2 * z) - 1) / (torch.exp(2 * z) + 1), lambda t: t.tanh()),
    "softplus": (nn.Softplus(), lambda z: torch.log1p(torch.exp(z)), F.softplus),
    "prelu": (nn.PReLU(init=0.25), lambda z: torch.where(z > 0, z, 0.25 * z),
              lambda t: F.prelu(t, torch.tensor([0.25], dtype=t.dtype))),
    "logsigmoid": (nn.LogSigmoid(), lambda z: -torch.log1p(torch.exp(-z)), F.logsigmoid),
    "softsign": (nn.Softsign(), lambda z: z / (1 + z.abs()), F.softsign),
    "tanhshrink": (nn.Tanhshrink(), lambda z: z - torch.tanh(z), F.tanhshrink),
    "softshrink": (nn.Softshrink(0.3), lambda z: torch.where(z.abs() > 0.3, z - 0.3 * sign(z), 0.0),
                   lambda t: F.softshrink(t, 0.3)),
    "threshold": (nn.Threshold(0.1, -2.0), lambda z: torch.where(z > 0.1, z, -2.0),
                  lambda t: F.threshold_(t, 0.1, -2.0)),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_identity_rule_is_lrp_epsilon_with_relevance_passed_unchanged(name):
    """R_x = x * W1^T ((f(z) - f(0)) / (z + eps sign z) * w2): LRP-epsilon on the layer, identity at f.

    ``f(0)`` (sigmoid's 1/2) is a constant offset: it absorbs its share, as a bias does.
    """
    module, by_hand, twin = ACTIVATIONS[name]
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = OneHidden(module).double()
    w1, b1, w2 = (p.detach() for p in (model.l1.weight, model.l1.bias, model.l2.weight))
    z = x @ w1.T + b1
    offset = by_hand(torch.zeros((), dtype=torch.float64))
    for eps in (0.3, 1e-3):
        expected = x * (((by_hand(z) - offset) / (z + eps * sign(z)) * w2) @ w1)
        assert torch.allclose(explain(model, x, 0, epsilon=eps, zb=False), expected, atol=1e-10, rtol=1e-7), eps
        twin_model = OneHidden(twin).double()  # functional, method or in-place form of the same function
        assert torch.allclose(explain(twin_model, x, 0, epsilon=eps, zb=False), expected, atol=1e-10, rtol=1e-7)
    # conservation: without biases every unit's relevance reaches the input, up to the eps absorption
    with torch.no_grad():
        model.l1.bias.zero_()
    total = explain(model, x, 0, epsilon=1e-12, zb=False).sum(1)
    assert torch.allclose(total, model(x)[:, 0] - offset * w2.sum(), rtol=1e-6, atol=1e-9)


def test_identity_rule_eps0_takes_the_limit_at_zero():
    """eps = 0, z = 0 exactly: (f(z) - f(0)) / z is taken as its limit f'(0) (1/2 for GELU, 1/4 for sigmoid)."""
    for act in (nn.GELU(), nn.SiLU(), nn.Sigmoid()):
        model = OneHidden(act).double()
        with torch.no_grad():
            model.l1.bias.zero_()
        x = torch.zeros(1, 4, dtype=torch.float64)
        x[0, 0] = 1.0
        lrp = LRPFlex(model, epsilon=0.0, zb=False, layers=["l1"])
        trace = lrp.trace(torch.zeros(1, 4, dtype=torch.float64))
        rel = trace.relevance(trace.output[:, 0].sum())
        assert torch.isfinite(rel.input).all() and (rel.layers["l1"] == 0).all()
        heat = explain(model, x, 0, epsilon=0.0, zb=False)
        w1, w2 = model.l1.weight.detach(), model.l2.weight.detach()
        z = x @ w1.T
        slope = torch.where(z == 0, {"GELU": 0.5, "SiLU": 0.5, "Sigmoid": 0.25}[type(act).__name__],
                            (act(z) - act(torch.zeros(1, dtype=z.dtype))) / z)
        assert torch.allclose(heat, x * ((slope * w2) @ w1))


def test_training_backward_keeps_ordinary_derivatives():
    """Losses on a trace's output see the real derivatives of GELU, LayerNorm and a gated product."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1, self.ln, self.l2, self.l3 = nn.Linear(5, 8), nn.LayerNorm(8), nn.Linear(8, 8), nn.Linear(8, 3)

        def forward(self, x):
            h = self.ln(F.gelu(self.l1(x)))
            return self.l3(F.silu(h * torch.sigmoid(self.l2(h)), inplace=True))

    torch.manual_seed(0)
    model = Net().double()
    x = torch.randn(4, 5, dtype=torch.float64)
    trace = LRPFlex(model, zb=False).trace(x)
    trace.heatmap("argmax", create_graph=True)
    params = list(model.parameters())
    traced = torch.autograd.grad(trace.output.square().sum(), params)
    plain = torch.autograd.grad(model(x).square().sum(), params)
    for a, b in zip(traced, plain):
        assert torch.allclose(a, b, atol=1e-12)


def test_inplace_activations_on_views_and_outputs_modified_later():
    """In-place activations on slices, and an activation output overwritten afterwards, as an out-of-place twin."""

    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x):
            h = self.a(x)
            F.silu(h[:, 3:], inplace=True)
            h[:, :3].sigmoid_()
            g = F.gelu(h)
            g += 1
            return self.b(g)

    class Twin(nn.Module):
        def __init__(self, other: InPlace) -> None:
            super().__init__()
            self.other = other

        def forward(self, x):
            h = self.other.a(x)
            h = torch.cat([torch.sigmoid(h[:, :3]), F.silu(h[:, 3:])], 1)
            return self.other.b(F.gelu(h) + 1)

    torch.manual_seed(0)
    model = InPlace().double()
    x = torch.randn(3, 4, dtype=torch.float64)
    heats, grads = [], []
    for net in (model, Twin(model)):
        trace = LRPFlex(net, zb=False).trace(x)
        heat = trace.heatmap(0, create_graph=True)
        params = [model.a.weight, model.a.bias, model.b.weight]
        grads.append(torch.autograd.grad(heat.square().sum() + trace.output.sum(), params))
        heats.append(heat.detach())
    assert torch.allclose(heats[0], heats[1], atol=1e-12)
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(*grads))


# ----------------------------------------------------------------------------- normalisation

def _two_layers(norm: nn.Module, width: int) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, width, bias=False), norm, nn.Linear(width, 1, bias=False)).double()
    with torch.no_grad():
        for p in norm.parameters():
            p.copy_(torch.randn_like(p))
    return model


@pytest.mark.parametrize("kind", ["layer", "rms", "layer_no_affine"])
def test_layer_and_rms_norm_are_linear_with_constant_statistics(kind):
    """R_x = x * W1^T M^T w2 with M the normalisation's matrix at fixed statistics."""
    width = 6
    norm = {"layer": nn.LayerNorm(width), "rms": nn.RMSNorm(width, eps=1e-6),
            "layer_no_affine": nn.LayerNorm(width, elementwise_affine=False)}[kind]
    model = _two_layers(norm, width)
    x = torch.randn(3, 5, dtype=torch.float64)
    w1, w2 = model[0].weight.detach(), model[2].weight.detach()[0]
    u = x @ w1.T
    gamma = norm.weight.detach() if norm.weight is not None else torch.ones(width, dtype=torch.float64)
    expected = []
    for row in u:
        if kind == "rms":
            m = torch.diag(gamma) / (row.square().mean() + 1e-6).sqrt()
        else:  # y_j = gamma_j (u_j - mean u) / s: M_ij = (delta_ij - 1/N) gamma_j / s
            s = (row.var(unbiased=False) + norm.eps).sqrt()
            m = (torch.eye(width, dtype=torch.float64) - 1 / width) * gamma[None, :] / s
        expected.append((m @ w2) @ w1)
    heat = explain(model, x, 0, zb=False)
    assert torch.allclose(heat, x * torch.stack(expected), atol=1e-12)
    if kind != "rms":  # centring is linear and kept: without the shift beta, relevance is conserved
        with torch.no_grad():
            if norm.bias is not None:
                norm.bias.zero_()
        assert torch.allclose(explain(model, x, 0, zb=False).sum(1), model(x)[:, 0], atol=1e-10)


@pytest.mark.parametrize("kind", ["group", "instance", "layernorm2d"])
def test_group_instance_norm_with_constant_statistics(kind):
    """Per sample and group: g_u = (h - mean_group h) / s_group with h = gamma * g_y."""
    torch.manual_seed(0)
    c, groups = 4, {"group": 2, "instance": 4, "layernorm2d": 1}[kind]
    conv = nn.Conv2d(2, c, 3, padding=1, bias=False)
    if kind == "group":
        norm = nn.GroupNorm(groups, c)
    elif kind == "instance":
        norm = nn.InstanceNorm2d(c, affine=True)
    else:
        from torchvision.models.convnext import LayerNorm2d
        norm = LayerNorm2d(c)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(c)), norm.bias.copy_(torch.randn(c))
    head = torch.randn(c, 4, 4, dtype=torch.float64)
    model = nn.Sequential(conv, norm).double()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = model

        def forward(self, t):
            return (self.body(t) * head).sum((1, 2, 3))[:, None]

    u = conv(x).detach()
    gamma = norm.weight.detach()
    expected_gu = torch.empty_like(u)
    for b in range(2):
        if kind == "layernorm2d":  # normalised over channels at each pixel
            s = (u[b].var(0, unbiased=False) + norm.eps).sqrt()
            h = gamma[:, None, None] * head
            expected_gu[b] = (h - h.mean(0)) / s
            continue
        for g in range(groups):
            chans = slice(g * c // groups, (g + 1) * c // groups)
            s = (u[b, chans].var(unbiased=False) + norm.eps).sqrt()
            h = gamma[chans, None, None] * head[chans]
            expected_gu[b, chans] = (h - h.mean()) / s
    expected = x * torch.nn.grad.conv2d_input(x.shape, conv.weight.detach().double(), expected_gu, padding=1)
    assert torch.allclose(explain(Net(), x, 0, zb=False), expected, atol=1e-10)


def test_normalize_divides_by_a_constant_norm():
    torch.manual_seed(0)
    lin = nn.Linear(5, 4, bias=False).double()
    w2 = torch.randn(4, dtype=torch.float64)
    x = torch.randn(3, 5, dtype=torch.float64)

    class Net(nn.Module):
        def forward(self, t):
            return (F.normalize(lin(t), dim=1) * w2).sum(1, keepdim=True)

    u = lin(x).detach()
    expected = x * ((w2 / u.norm(dim=1, keepdim=True)) @ lin.weight.detach())
    assert torch.allclose(explain(Net(), x, 0, zb=False), expected, atol=1e-12)
    assert torch.allclose(expected.sum(1), Net()(x)[:, 0], atol=1e-12)  # conservative


# ----------------------------------------------------------------------------- uniform rule

class Bilinear(nn.Module):
    """``w . ((A x) * (B x))``, or ``x^T (A^T B) x`` as a matmul / einsum."""

    def __init__(self, how: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(4, 3, bias=False), nn.Linear(4, 3, bias=False)
        self.w = torch.randn(3, dtype=torch.float64)
        self.how = how

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        if self.how == "mul":
            return (a * b * self.w).sum(1, keepdim=True)
        if self.how == "mul_":
            a = a.clone()
            a *= b
            return (a * self.w).sum(1, keepdim=True)
        if self.how == "matmul":
            return (a[:, None, :] @ (b * self.w)[:, :, None])[:, :, 0]
        return torch.einsum("bi,bi,i->b", a, b, self.w)[:, None]


@pytest.mark.parametrize("how", ["mul", "mul_", "matmul", "einsum"])
def test_uniform_rule_splits_a_product_half_and_half(how):
    """R_a = R_b = R / 2 for a = A x, b = B x, then LRP-0 through A and B (by explicit contributions)."""
    model = Bilinear(how).double()
    x = torch.randn(2, 4, dtype=torch.float64)
    A, B, w = model.a.weight.detach(), model.b.weight.detach(), model.w
    expected = torch.zeros_like(x)
    for n in range(2):
        a, b = A @ x[n], B @ x[n]
        r = a * b * w  # relevance of each product term
        for j in range(3):
            expected[n] += x[n] * A[j] / a[j] * (r[j] / 2) + x[n] * B[j] / b[j] * (r[j] / 2)
    heat = explain(model, x, 0, zb=False)
    assert torch.allclose(heat, expected, atol=1e-10)
    assert torch.allclose(heat.sum(1), model(x)[:, 0], atol=1e-10)  # conservative


def test_product_with_a_parameter_is_linear():
    """A layer scale (parameter times activation) is an ordinary linear map: gradient x input."""
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    scale = nn.Parameter(torch.randn(3))
    x = torch.randn(2, 4)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.scale = lin, scale

        def forward(self, t):
            return self.lin(t) * self.scale.view(1, -1)  # a non-leaf view of a parameter

    net = Net()
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(xg)[:, 1].sum(), xg)
    assert torch.allclose(explain(net, x, 1, zb=False), g * x)


def test_glu_gates_with_uniform_and_identity_rules():
    torch.manual_seed(0)
    lin = nn.Linear(4, 6, bias=False).double()
    w = torch.randn(3, dtype=torch.float64)
    x = torch.randn(2, 4, dtype=torch.float64)

    class Net(nn.Module):
        def forward(self, t):
            return (F.glu(lin(t), dim=1) * w).sum(1, keepdim=True)

    u = lin(x).detach()
    a, z = u[:, :3], u[:, 3:]
    r = a * torch.sigmoid(z) * w
    eps = 0.01
    # half of r to a (LRP-0 to x), half through the sigmoid: identity without its offset 1/2, LRP-epsilon to x
    W = lin.weight.detach()
    to_gate = r / 2 * (torch.sigmoid(z) - 0.5) / torch.sigmoid(z)
    expected = x * ((r / 2 / a) @ W[:3] + (to_gate / (z + eps * sign(z))) @ W[3:])
    assert torch.allclose(explain(Net(), x, 0, zb=False, epsilon=eps), expected, atol=1e-10)


# ----------------------------------------------------------------------------- unsupported

@pytest.mark.parametrize("module, name", [(nn.LSTM(4, 4), "LSTM"), (nn.LocalResponseNorm(2), "LocalResponseNorm")])
def test_unsupported_modules_are_named(module, name):
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), module))
    with pytest.raises(UnsupportedModelError, match=r"'1\.1' \(" + name):
        LRPFlex(model)


@pytest.mark.parametrize("op, name", [
    (lambda h: h.exp(), "exp"), (lambda h: torch.sqrt(h.abs()), "sqrt"), (lambda h: h ** 2, "pow"),
    (lambda h: h / h.norm(dim=1, keepdim=True), "div"), (lambda h: 1 / h, "__rdiv__"),
])
def test_unsupported_arithmetic_on_activations_is_named(op, name):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1, self.l2 = nn.Linear(4, 4), nn.Linear(4, 2)
            self.temperature = nn.Parameter(torch.tensor(2.0))

        def forward(self, x):
            h = self.l1(x) / self.temperature.exp()  # arithmetic on parameters alone is fine
            return self.l2(op(h))

    with pytest.raises(UnsupportedModelError, match=name):
        explain(Net(), torch.randn(2, 4), 0, zb=False)
    assert torch._C._len_torch_function_stack() == 0


def test_rrelu_in_training_mode_is_rejected_and_eval_mode_is_leaky():
    model = nn.Sequential(nn.Linear(4, 4), nn.RReLU(0.1, 0.3), nn.Linear(4, 2))
    with pytest.raises(UnsupportedModelError, match="rrelu"):
        explain(model.train(), torch.randn(2, 4), 0, zb=False)
    twin = nn.Sequential(model[0], nn.LeakyReLU(0.2), model[2])
    x = torch.randn(3, 4)
    assert torch.allclose(explain(model.eval(), x, 1, zb=False), explain(twin, x, 1, zb=False), atol=1e-6)


# ----------------------------------------------------------------------------- Z^B whatever follows

def _zb_reference(model: nn.Module, x: torch.Tensor, layer: str, weight: torch.Tensor, bias: torch.Tensor,
                  padding: int, eps: float = 0.01) -> torch.Tensor:
    """Z^B by hand from the relevance R of the first layer's output: x W^T s - l W+^T s - h W-^T s, s = R / z."""
    trace = LRPFlex(model, zb=False, layers=[layer], epsilon=eps).trace(x)
    r = trace.relevance(trace.output[:, 0].sum()).layers[layer]
    wp, wn = weight.clamp(min=0), weight.clamp(max=0)
    ones = torch.ones_like(x[:1])
    z = F.conv2d(x, weight, bias, padding=padding) - F.conv2d(0 * ones, wp, bias.clamp(min=0) * 0, padding=padding) \
        - F.conv2d(ones, wn, bias.clamp(max=0), padding=padding)
    s = r / (z + eps * sign(z))
    back = lambda w: torch.nn.grad.conv2d_input(x.shape, w, s, padding=padding)  # noqa: E731
    return (x * back(weight) - 0 * back(wp) - 1 * back(wn)).detach()


def test_zb_on_conv_followed_by_layernorm():
    """ConvNeXt's stem: conv -> LayerNorm2d; Z^B redistributes the relevance of the conv output."""
    from torchvision.models.convnext import LayerNorm2d

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), LayerNorm2d(4), nn.Conv2d(4, 4, 3, padding=1), nn.GELU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    x = torch.rand(2, 3, 8, 8)
    conv = model[0]
    expected = _zb_reference(model, x, "0", conv.weight.detach(), conv.bias.detach(), 1)
    assert torch.allclose(explain(model, x, 0), expected, atol=1e-6)


def test_zb_on_conv_bn_silu_uses_the_activation_output_like_relu():
    """EfficientNet's stem conv -> BN -> SiLU(inplace) is a first block like conv -> BN -> ReLU."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.SiLU(inplace=True),
                          nn.Conv2d(4, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    x = torch.rand(2, 3, 8, 8)
    bn = model[1]
    s = (bn.running_var + bn.eps).sqrt()
    folded = model[0].weight.detach() * (bn.weight / s).detach()[:, None, None, None]
    shift = (bn.bias - bn.running_mean * bn.weight / s).detach()
    # relevance at the SiLU output, pushed to its input unchanged (identity): R_z = a * g_a
    expected = _zb_reference(model, x, "2", folded, shift, 1)
    assert torch.allclose(explain(model, x, 0), expected, atol=1e-6)
    assert model[2].inplace is True


def test_zb_still_rejects_pooling_before_the_activation():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.GELU(), nn.Flatten(), nn.LazyLinear(2)).eval()
    x = torch.rand(1, 3, 8, 8)
    model(x)
    with pytest.raises(UnsupportedModelError, match="max_pool2d"):
        explain(model, x, 0)
    with pytest.raises(UnsupportedModelError, match="gelu"):
        explain(nn.Sequential(nn.GELU(), nn.Flatten(), nn.Linear(3 * 8 * 8, 2)), x, 0)


def test_rule_modules_hold_constant_tables_only():
    import isnet.lrp.rules.activations
    import isnet.lrp.rules.attention
    import isnet.lrp.rules.normalisation
    import isnet.lrp.rules.zb

    rules = isnet.lrp.rules
    for module in (rules.activations, rules.attention, rules.zb, rules.normalisation):
        tables = [n for n, v in vars(module).items() if isinstance(v, (list, dict, set)) and not n.startswith("__")]
        assert all(n.lstrip("_").isupper() for n in tables), (module.__name__, tables)
