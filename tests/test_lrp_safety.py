"""Explaining leaves the model as it was (hooks, flags, buffers, gradients), keeps no global state, is
thread-safe, and rejects what it cannot explain, naming it."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from isnet import LRPFlex, UnsupportedModelError, explain
from lrp_models import TwinAwkward, assert_no_mode_left, assert_same, grad_x_input, randomise_bn, snapshot


@pytest.fixture
def frozen_model():
    torch.manual_seed(0)
    model = TwinAwkward()
    randomise_bn(model).eval()
    model.c1.weight.requires_grad_(False)  # a mix of frozen and trainable parameters
    return model


def test_model_unchanged_after_explain(frozen_model):
    model = frozen_model
    x = torch.rand(2, 3, 32, 32)
    before, out = snapshot(model), model(x)
    lrp = LRPFlex(model, layers=["c3", "l1"])
    trace = lrp.trace(x)
    trace.relevance(trace.output[:, 0].sum())
    explain(model, x, "all")
    explain(model, x, "argmax", create_graph=True)
    assert_same(before, snapshot(model))
    assert torch.equal(model(x), out)
    assert_no_mode_left()


class Exploding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = TwinAwkward()
        self.armed = False

    def forward(self, x):
        out = self.inner(x)
        if self.armed:
            raise RuntimeError("boom")
        return out


def test_model_unchanged_after_exceptions():
    torch.manual_seed(0)
    model = Exploding().eval()
    x = torch.rand(2, 3, 32, 32)
    before, out = snapshot(model), model(x)
    lrp = LRPFlex(model, layers=["inner.c3"])
    model.armed = True
    with pytest.raises(RuntimeError, match="boom"):
        lrp.explain(x, "argmax")
    model.armed = False
    with pytest.raises(ValueError, match="9"):  # names the class asked for
        lrp.explain(x, 9)
    with pytest.raises(RuntimeError):
        lrp.explain(x, torch.tensor([0, 17]))
    with pytest.raises(ValueError):
        lrp.explain(x, "everything")
    assert_same(before, snapshot(model))
    assert torch.equal(model(x), out)
    assert_no_mode_left()
    # ordinary autograd afterwards
    x1 = x.clone().requires_grad_(True)
    model(x1)[:, 0].sum().backward()
    assert torch.equal(x1.grad * x, grad_x_input(model, x, 0))
    assert torch.isfinite(lrp.explain(x, 1)).all()


def test_no_module_level_mutable_state():
    """Module-level containers are constant tables: explaining and training never write them."""
    import copy

    import isnet.loss
    import isnet.lrp.core
    import isnet.lrp.explainer
    import isnet.lrp.registry
    import isnet.lrp.rules
    import isnet.lrp.tracing
    import isnet.network
    from isnet import ISNet, ISNetLoss

    rules = isnet.lrp.rules
    modules = (isnet.lrp, isnet.lrp.core, isnet.lrp.registry, isnet.lrp.tracing, isnet.lrp.explainer, rules,
               rules.epsilon, rules.activations, rules.normalisation, rules.attention, rules.zplus, rules.zb,
               rules.rejected, rules.generic, isnet.network, isnet.loss)

    def tables() -> dict:
        return {(mod.__name__, name): copy.copy(value) for mod in modules
                for name, value in vars(mod).items()
                if isinstance(value, (list, dict, set)) and not name.startswith("__")}

    before = tables()
    assert all(name.isupper() or name.lstrip("_").isupper() for _, name in before), list(before)
    torch.manual_seed(0)
    model = TwinAwkward()
    x = torch.rand(2, 3, 32, 32)
    explain(model.eval(), x, "all")
    net = ISNet(model, "selective").train()
    logits, heat = net(x, heatmaps=True)
    ISNetLoss()(logits, torch.tensor([0, 1]), heat, torch.ones(2, 1, 32, 32)).total.backward()
    assert tables() == before


def test_threads_share_one_explainer():
    torch.manual_seed(0)
    model = randomise_bn(TwinAwkward()).eval()
    lrp = LRPFlex(model, layers=["c3"])
    xs = [torch.rand(2, 3, 32, 32) for _ in range(4)]
    expected = [lrp.explain(x, "argmax") for x in xs]
    results: list = [None] * 4
    errors: list = []
    start = threading.Barrier(4)

    def work(i: int) -> None:
        try:
            start.wait()
            for _ in range(3):
                results[i] = lrp.explain(xs[i], "argmax")
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got, want in zip(results, expected):
        assert torch.equal(got, want)


class Gate(nn.Module):
    """Holds the explaining thread inside its traced forward pass until released."""

    def __init__(self) -> None:
        super().__init__()
        self.owner: int | None = None
        self.entered, self.release = threading.Event(), threading.Event()

    def forward(self, x):
        if threading.get_ident() == self.owner:
            self.entered.set()
            assert self.release.wait(30)
        return x


def test_other_thread_gets_ordinary_gradients_while_explaining():
    torch.manual_seed(0)
    body = TwinAwkward().eval()
    gate = Gate()
    model = nn.Sequential(gate, body).eval()
    x = torch.rand(2, 3, 32, 32)
    plain_grad = grad_x_input(model, x, 1)
    expected_heat = LRPFlex(model, layers=["1.c3"]).explain(x, 1)
    seen: dict = {}

    def explainer() -> None:
        gate.owner = threading.get_ident()
        seen["heat"] = LRPFlex(model, layers=["1.c3"]).explain(x, 1)

    t = threading.Thread(target=explainer)
    t.start()
    assert gate.entered.wait(30)
    # the explaining thread is now inside its traced forward (mode active, hook registered)
    seen["grad"] = grad_x_input(model, x, 1)
    x2 = x.clone().requires_grad_(True)
    out = model(x2)
    assert not any(type(fn).__name__ == "BackwardCFunction" for fn in _graph_nodes(out.grad_fn))
    gate.release.set()
    t.join()
    assert torch.equal(seen["grad"], plain_grad)
    assert torch.equal(seen["heat"], expected_heat)


def _graph_nodes(fn, limit: int = 10_000):
    seen, stack, out = set(), [fn], []
    while stack and len(out) < limit:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        out.append(node)
        stack.extend(n for n, _ in node.next_functions)
    return out


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("act", [nn.LocalResponseNorm, nn.CrossMapLRN2d])  # GELU etc.: tests/test_lrp_nonlinear.py
def test_unsupported_activation_module_is_named(act):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), act(2)), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(UnsupportedModelError, match=r"'1\.1'.*" + act.__name__) as info:  # the path and the type
        explain(model, torch.rand(1, 3, 8, 8), 0)
    assert "isnet.lrp.Rules" in str(info.value)  # the way forward: a rule of one's own


def test_unsupported_functional_is_named():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, 2)

        def forward(self, x):
            return self.fc(torch.exp(self.conv(x)).flatten(1))

    with pytest.raises(UnsupportedModelError, match="torch.exp") as info:
        explain(Net(), torch.rand(1, 3, 8, 8), 0)
    assert "isnet.lrp.Rules" in str(info.value)
    assert_no_mode_left()
