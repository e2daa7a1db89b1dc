"""Users' own rules (``isnet.lrp.Rules``): the examples of docs/lrp-flex.md ("Your own rules") against explicit
formulas, the table's validation, and its scope (nothing shared between explainers, calls or threads)."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from isnet import LRPFlex, Rules, UnsupportedModelError, explain
from isnet.lrp import BUILTIN_RULES, ExplainAs, Identity, Unsupported
from lrp_models import assert_no_mode_left, no_hooks, rel_err


class Swish(nn.Module):
    """A user's own activation ``x * sigmoid(beta * x)``, written with operations that have rules of their own."""

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.tensor(beta))

    def forward(self, x):
        return x * torch.sigmoid(self.beta * x)


class Bump(nn.Module):
    """``x * exp(-x^2)``: arithmetic without a built-in rule."""

    def forward(self, x):
        return x * torch.exp(-x * x)


class Gate(nn.Module):
    """A gating block: ``(W_v x) * sigmoid(W_g x)``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.value, self.gate = nn.Linear(width, width, bias=False), nn.Linear(width, width, bias=False)

    def forward(self, x):
        return self.value(x) * torch.sigmoid(self.gate(x))


SWISH = Rules({Swish: Identity()})
GATE = Rules({Gate: ExplainAs(lambda gate, x: gate.value(x) * torch.sigmoid(gate.gate(x)).detach())})


def sign(z: torch.Tensor) -> torch.Tensor:
    return torch.where(z >= 0, 1.0, -1.0).to(z)


def one_hidden(act: nn.Module | None, fn=None) -> nn.Module:
    """``w2 . act(W1 x + b1)`` in float64; ``fn`` replaces the module by a function call."""
    g = torch.Generator().manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1, self.l2, self.act = nn.Linear(4, 6), nn.Linear(6, 1, bias=False), act
            with torch.no_grad():
                self.l1.weight.copy_(torch.randn(6, 4, generator=g))
                self.l1.bias.copy_(torch.randn(6, generator=g))
                self.l2.weight.copy_(torch.randn(1, 6, generator=g))

        def forward(self, x):
            z = self.l1(x)
            return self.l2(fn(z) if fn is not None else self.act(z))

    return Net().double()


def ratio_rule(net: nn.Module, x: torch.Tensor, f, eps: float) -> torch.Tensor:
    """Relevance passed unchanged through ``f``, with matrices: ``x W1^T ((f(z) - f(0)) / (z + eps sign z) w2)``."""
    w1, b1, w2 = net.l1.weight.detach(), net.l1.bias.detach(), net.l2.weight.detach()
    z = x @ w1.T + b1
    share = (f(z) - f(torch.zeros_like(z))) / (z + eps * sign(z))
    return x * ((share * w2) @ w1)


# ----------------------------------------------------------------------------- an element-wise activation


@pytest.mark.parametrize("eps", [0.0, 0.01, 0.3])
def test_own_activation_module_passes_relevance_in_proportion(eps):
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    net = one_hidden(Swish(0.7))
    beta = net.act.beta.detach()
    expected = ratio_rule(net, x, lambda z: z * torch.sigmoid(beta * z), eps)
    heat = LRPFlex(net, epsilon=eps, zb=False, rules=SWISH).explain(x, 0)
    assert torch.allclose(heat, expected, rtol=1e-9, atol=1e-12)
    # without the rule, the product x * sigmoid(x) splits its relevance half and half: another heatmap
    assert rel_err(LRPFlex(net, epsilon=eps, zb=False).explain(x, 0), expected) > 1e-2


def test_own_activation_with_offset_equals_the_builtin_sigmoid_rule():
    """``f(0) != 0``: the rule measures from ``f(0)``, exactly as the built-in rule of nn.Sigmoid does."""

    class MySigmoid(nn.Module):
        def forward(self, x):
            return 1 / (1 + torch.exp(-x))

    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    net = one_hidden(MySigmoid())
    heat = LRPFlex(net, epsilon=0.01, zb=False, rules={MySigmoid: Identity()}).explain(x, 0)
    assert torch.allclose(heat, ratio_rule(net, x, torch.sigmoid, 0.01), rtol=1e-9, atol=1e-12)
    net.act = nn.Sigmoid()
    assert torch.allclose(heat, explain(net, x, 0, epsilon=0.01, zb=False), rtol=1e-9, atol=1e-12)


def test_rule_for_a_torch_function():
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    net = one_hidden(None, fn=torch.erf)
    heat = LRPFlex(net, epsilon=0.05, zb=False, rules={torch.erf: Identity()}).explain(x, 0)
    assert torch.allclose(heat, ratio_rule(net, x, torch.erf, 0.05), rtol=1e-9, atol=1e-12)


def test_own_activation_keeps_ordinary_gradients_and_a_differentiable_heatmap():
    torch.manual_seed(0)
    net = one_hidden(Swish(0.7))
    x = torch.randn(3, 4, dtype=torch.float64)
    trace = LRPFlex(net, zb=False, rules=SWISH).trace(x)
    trace.heatmap(0, create_graph=True)
    params = [net.l1.weight, net.act.beta]
    assert all(torch.allclose(a, b, rtol=1e-12) for a, b in zip(torch.autograd.grad(trace.output.sum(), params),
                                                                torch.autograd.grad(net(x).sum(), params)))

    lrp = LRPFlex(net, epsilon=0.05, zb=False, rules=SWISH)

    def energy() -> torch.Tensor:
        return (lrp.explain(x, 0, create_graph=True) ** 2).sum()

    grads = torch.autograd.grad(energy(), params)
    for param, grad in zip(params, grads):  # against central differences, one entry of each parameter
        entry, h = (0,) * param.dim(), 1e-6
        with torch.no_grad():
            param[entry] += h
            up = energy().item()
            param[entry] -= 2 * h
            down = energy().item()
            param[entry] += h
        assert grad[entry].item() == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-9)


def test_zb_first_block_closes_at_own_activation():
    torch.manual_seed(0)
    conv, fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 6 * 6, 2)
    own = nn.Sequential(conv, Swish(), nn.Flatten(), fc).eval()
    builtin = nn.Sequential(conv, nn.SiLU(), nn.Flatten(), fc).eval()
    x = torch.rand(2, 3, 6, 6)
    heat = LRPFlex(own, rules=SWISH).explain(x, 1)
    assert rel_err(heat, explain(builtin, x, 1)) < 1e-6
    with pytest.raises(UnsupportedModelError):  # without a rule the block ends in a product: no Z^B
        explain(own, x, 1)


# ----------------------------------------------------------------------------- a gating block


def test_gate_rule_gives_all_relevance_to_the_value_path():
    g = torch.Generator().manual_seed(4)
    net = nn.Sequential(Gate(5), nn.Linear(5, 3, bias=False)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x = torch.randn(4, 5, dtype=torch.float64, generator=g)
    wv, wg, wo = net[0].value.weight.detach(), net[0].gate.weight.detach(), net[1].weight.detach()
    # the gate is a constant: relevance reaches x through W_v only, R_x = x W_v^T (sigmoid(W_g x) * w_o[k])
    expected = x * ((torch.sigmoid(x @ wg.T) * wo[2]) @ wv)
    lrp = LRPFlex(net, epsilon=1e-9, zb=False, layers=["0", "0.gate"], rules=GATE)
    trace = lrp.trace(x)
    rel = trace.relevance(trace.output[:, 2].sum())
    assert torch.allclose(rel.input, expected, rtol=1e-9, atol=1e-12)
    assert torch.allclose(rel.input.sum(1), trace.output[:, 2], rtol=1e-9)  # bias-free: conserved
    assert torch.allclose(rel.layers["0"].sum(1), trace.output[:, 2], rtol=1e-9)  # the block's output, routed
    assert torch.count_nonzero(rel.layers["0.gate"]) == 0  # the gate path gets nothing
    # the built-in uniform rule gives the gate path half instead
    assert rel_err(LRPFlex(net, epsilon=1e-9, zb=False).explain(x, 2), expected) > 0.1


def test_gate_rule_wrong_shape_is_named():
    net = nn.Sequential(Gate(4), nn.Linear(4, 2))
    rules = {Gate: ExplainAs(lambda gate, x: gate.value(x)[:, :2])}
    with pytest.raises(UnsupportedModelError, match="Gate"):
        LRPFlex(net, zb=False, rules=rules).explain(torch.randn(2, 4), 0)
    assert no_hooks(net)
    assert_no_mode_left()


# ----------------------------------------------------------------------------- the table


def test_a_rule_is_the_way_forward_for_arithmetic_without_one():
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    net = one_hidden(Bump())
    with pytest.raises(UnsupportedModelError, match="torch.exp"):
        explain(net, x, 0, zb=False)
    heat = LRPFlex(net, epsilon=0.01, zb=False, rules={Bump: Identity()}).explain(x, 0)
    assert torch.allclose(heat, ratio_rule(net, x, lambda z: z * torch.exp(-z * z), 0.01), rtol=1e-9, atol=1e-12)


def test_rules_replace_and_add_rejections():
    lrn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LocalResponseNorm(2), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with pytest.raises(UnsupportedModelError, match="LocalResponseNorm"):
        LRPFlex(lrn)
    heat = LRPFlex(lrn, rules={nn.LocalResponseNorm: Identity()}).explain(torch.rand(1, 3, 8, 8), 0)
    assert torch.isfinite(heat).all()
    mine = nn.Sequential(nn.Linear(4, 4), nn.Sequential(Swish()), nn.Linear(4, 2))
    with pytest.raises(UnsupportedModelError, match=r"'1\.0'.*Swish.*not yet"):
        LRPFlex(mine, rules={Swish: Unsupported("not yet")})


def test_a_rule_replaces_a_builtin_one():
    """``call.run()`` keeps the ordinary derivative: with eps = 0 a GELU network gives gradient x input."""
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    net = one_hidden(nn.GELU())
    plain = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(net(plain).sum(), plain)
    heat = LRPFlex(net, epsilon=0.0, zb=False, rules={F.gelu: lambda call: call.run()}).explain(x, 0)
    assert torch.allclose(heat, grad * x, rtol=1e-12, atol=1e-14)
    assert rel_err(explain(net, x, 0, epsilon=0.0, zb=False), grad * x) > 1e-2


def test_bad_rules_are_named():
    with pytest.raises(TypeError, match="Swish"):
        Rules({Swish(): Identity()})  # an instance, not the type
    with pytest.raises(TypeError, match="Swish"):
        Rules({Swish: "identity"})
    with pytest.raises(TypeError, match="ExplainAs"):
        ExplainAs("value")


def test_rules_are_immutable_and_scoped_to_their_explainer():
    size = len(BUILTIN_RULES)
    extended = SWISH.extended({Gate: Identity()})
    assert (len(SWISH), len(extended)) == (1, 2) and SWISH.module_rule(Gate(2)) is None
    with pytest.raises(TypeError):
        SWISH[Gate] = Identity()  # type: ignore[index]
    net = one_hidden(Swish())
    x = torch.randn(2, 4, dtype=torch.float64)
    with_rule = LRPFlex(net, zb=False, rules=SWISH)
    without = LRPFlex(net, zb=False)
    a, b = with_rule.explain(x, 0), without.explain(x, 0)
    assert len(BUILTIN_RULES) == size and BUILTIN_RULES.module_rule(net.act) is None
    assert rel_err(a, b) > 1e-2
    assert torch.equal(without.explain(x, 0), b) and torch.equal(with_rule.explain(x, 0), a)
    assert no_hooks(net)


def test_threads_with_different_rules_share_one_model():
    torch.manual_seed(0)
    net = one_hidden(Swish())
    explainers = [LRPFlex(net, zb=False, rules=SWISH), LRPFlex(net, zb=False)] * 2
    xs = [torch.randn(8, 4, dtype=torch.float64) for _ in explainers]
    expected = [lrp.explain(x, 0) for lrp, x in zip(explainers, xs)]
    results: list = [None] * len(xs)
    errors: list = []
    start = threading.Barrier(len(xs))

    def work(i: int) -> None:
        try:
            start.wait()
            for _ in range(5):
                results[i] = explainers[i].explain(xs[i], 0)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(torch.equal(got, want) for got, want in zip(results, expected))
    assert no_hooks(net)


def test_no_hooks_left_after_an_exception_inside_a_ruled_module():
    class Failing(Swish):
        def forward(self, x):
            raise RuntimeError("boom")

    net = one_hidden(Failing())
    with pytest.raises(RuntimeError, match="boom"):
        LRPFlex(net, zb=False, rules=SWISH).explain(torch.randn(2, 4, dtype=torch.float64), 0)
    assert no_hooks(net)
    assert_no_mode_left()
