"""Properties of LRP-Flex (SPEC section 1): exactness, model-agnosticism, safety, bad input."""

from __future__ import annotations

import re
import threading
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from isnet import LRPFlex, UnsupportedModelError, explain
from isnet.errors import IsnetWarning
from isnet.lrp import Trace, record_outputs


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Max abs error relative to the largest magnitude of ``expected``."""
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def grad_x_input(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    """Plain autograd gradient x input of one logit per sample (no isnet involved)."""
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    if isinstance(target, int):
        index = torch.full((x.shape[0],), target)
    elif isinstance(target, str):
        index = out.detach().argmax(1)
    else:
        index = target
    (grad,) = torch.autograd.grad(out.gather(1, index[:, None]).sum(), x)
    return (grad * x).detach()


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial batch-norm statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
    return model


# ----------------------------------------------------------------------------- torchvision models

TORCHVISION = ["vgg11_bn", "resnet18", "resnet50", "densenet121"]


@pytest.fixture(scope="module")
def tv_models() -> dict[str, nn.Module]:
    from torchvision import models

    torch.manual_seed(0)
    return {name: randomise_bn(models.get_model(name, weights=None, num_classes=10)).eval() for name in TORCHVISION}


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_eps0_is_gradient_x_input(tv_models, name):
    model = tv_models[name]
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([3, 7])
    heat = explain(model, x, target, epsilon=0.0, zb=False)
    assert heat.shape == x.shape
    assert rel_err(heat, grad_x_input(model, x, target)) < 1e-5


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_default_runs_and_is_finite(tv_models, name):
    model = tv_models[name]
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    heat = explain(model, x, "argmax")
    assert heat.shape == x.shape and torch.isfinite(heat).all() and heat.abs().sum() > 0
    # eps > 0 really changes the map (the rule is not silently gradient x input)
    assert rel_err(heat, explain(model, x, "argmax", epsilon=0.0)) > 1e-4


# ----------------------------------------------------------------------------- reused / in-place / functional

class TwinModules(nn.Module):
    """One nn.ReLU module per use."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.c3 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.c4 = nn.Conv2d(8, 8, 3, padding=1)
        self.l1, self.l2 = nn.Linear(8 * 8 * 8, 16), nn.Linear(16, 4)
        self.r1, self.r2, self.r3, self.r4, self.r5 = (nn.ReLU() for _ in range(5))

    def body(self, x, r1, r2, r3, r4, r5):
        x = r1(self.b1(self.c1(x)))
        x = F.max_pool2d(x, 2)
        y = r2(self.c2(x))
        x = r3(self.c3(y) + x)  # residual
        x = r4(self.c4(x))
        x = F.max_pool2d(x, 2)
        return self.l2(r5(self.l1(x.flatten(1))))

    def forward(self, x):
        return self.body(x, self.r1, self.r2, self.r3, self.r4, self.r5)


class TwinAwkward(TwinModules):
    """The same network with a reused in-place module, functional, method and in-place calls."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.body(
            x,
            self.shared,                          # in-place module, reused below
            lambda t: t.relu(),                   # Tensor.relu
            lambda t: torch.relu_(t),             # torch.relu_
            lambda t: F.relu(t, inplace=True),    # F.relu(inplace=True)
            self.shared,                          # the same module again
        )


@pytest.mark.parametrize("epsilon", [0.0, 0.01])
@pytest.mark.parametrize("zb", [False, True])
def test_reused_inplace_functional_relus_match_twin(epsilon, zb):
    torch.manual_seed(0)
    plain = randomise_bn(TwinModules()).eval()
    awkward = TwinAwkward().eval()
    awkward.load_state_dict(plain.state_dict(), strict=False)
    x = torch.rand(3, 3, 32, 32)
    assert torch.allclose(plain(x), awkward(x))
    target = torch.tensor([0, 2, 3])
    a = explain(plain, x, target, epsilon=epsilon, zb=zb)
    b = explain(awkward, x, target, epsilon=epsilon, zb=zb)
    assert rel_err(b, a) < 1e-6
    assert awkward.shared.inplace is True


# ----------------------------------------------------------------------------- zennit

class VGGLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.AvgPool2d(2)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.pool3 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.relu4 = nn.ReLU()
        self.fc2 = nn.Linear(32, 5)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.pool3(self.relu3(self.conv3(x)))
        return self.fc2(self.relu4(self.fc1(self.flatten(x))))


def zennit_heatmap(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, zb: bool, low=0.0, high=1.0):
    from zennit.attribution import Gradient
    from zennit.composites import NameMapComposite
    from zennit.rules import Epsilon, Norm, Pass, ZBox

    first = ZBox(low=low, high=high, stabilizer=0.01) if zb else Epsilon(epsilon=0.01)
    composite = NameMapComposite([
        (["conv1"], first),
        (["conv2", "conv3", "fc1"], Epsilon(epsilon=0.01)),
        (["fc2"], Epsilon(epsilon=1e-12)),  # LRP-0 on the output layer
        (["pool2"], Norm(stabilizer=1e-12)),  # an exact average-pool redistribution
        (["relu1", "relu2", "relu3", "relu4"], Pass()),
    ])

    def output_relevance(out: torch.Tensor) -> torch.Tensor:  # relevance = the explained logit itself
        return F.one_hot(target, out.shape[1]).to(out) * out

    with Gradient(model, composite) as attributor:
        _, relevance = attributor(x, output_relevance)
    return relevance


@pytest.mark.parametrize("zb", [False, True])
def test_equals_zennit_on_bias_free_first_conv(zb):
    torch.manual_seed(0)
    model = VGGLike().eval()
    x = torch.rand(4, 3, 32, 32)
    target = torch.tensor([0, 1, 4, 2])
    ours = explain(model, x, target, zb=zb)  # must not crash on the bias-free first conv
    theirs = zennit_heatmap(model, x, target, zb=zb)
    assert rel_err(ours, theirs) < 1e-5
    # zennit leaves no trace either
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


def test_per_channel_bounds_equal_zennit_zbox():
    torch.manual_seed(1)
    model = VGGLike().eval()
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    low, high = (0 - mean) / std, (1 - mean) / std
    x = (torch.rand(2, 3, 32, 32) - mean[:, None, None]) / std[:, None, None]
    target = torch.tensor([1, 3])
    ours = explain(model, x, target, bounds=(low, high))
    theirs = zennit_heatmap(model, x, target, zb=True, low=low[None, :, None, None], high=high[None, :, None, None])
    assert rel_err(ours, theirs) < 1e-5


# ----------------------------------------------------------------------------- conservation

def bias_free_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(8 * 8 * 8, 16, bias=False), nn.ReLU(), nn.Linear(16, 5, bias=False),
    )


@pytest.mark.parametrize("zb", [False, True])
def test_conservation_bias_free(zb):
    torch.manual_seed(0)
    model = bias_free_net().eval()
    x = torch.rand(3, 3, 32, 32)
    target = torch.tensor([0, 3, 4])
    heat = explain(model, x, target, epsilon=1e-9, zb=zb)
    logits = model(x).gather(1, target[:, None]).squeeze(1)
    assert torch.allclose(heat.sum((1, 2, 3)), logits, rtol=1e-4, atol=1e-6)


def test_conservation_degrades_gracefully_with_eps():
    """With eps > 0 relevance is absorbed, never created: |sum R| <= |logit| on a bias-free net."""
    torch.manual_seed(0)
    model = bias_free_net().eval()
    x = torch.rand(3, 3, 32, 32)
    logits = model(x).amax(1)
    total = explain(model, x, "argmax", epsilon=0.1, zb=False).sum((1, 2, 3))
    assert (total.abs() <= logits.abs() * (1 + 1e-5)).all()


# ----------------------------------------------------------------------------- batch == per sample

@pytest.mark.parametrize("target", ["labels", "argmax", "int", "all"])
@pytest.mark.parametrize("zb", [False, True])
def test_batch_equals_per_sample(target, zb):
    torch.manual_seed(0)
    model = randomise_bn(TwinModules()).eval()
    x = torch.rand(4, 3, 32, 32)
    labels = torch.tensor([0, 3, 1, 2])
    pick = {"labels": labels, "argmax": "argmax", "int": 2, "all": "all"}[target]
    batch = explain(model, x, pick, zb=zb)
    single = torch.cat([explain(model, x[i:i + 1], labels[i:i + 1] if target == "labels" else pick, zb=zb)
                        for i in range(4)])
    assert batch.shape == ((4, 4, 3, 32, 32) if target == "all" else (4, 3, 32, 32))
    assert rel_err(batch, single) < 1e-5


def test_all_classes_stack_single_class_maps():
    torch.manual_seed(0)
    model = TwinModules().eval()
    x = torch.rand(2, 3, 32, 32)
    all_maps = explain(model, x, "all")
    for k in range(4):
        assert rel_err(all_maps[:, k], explain(model, x, k)) < 1e-6


# ----------------------------------------------------------------------------- helpers

@pytest.mark.parametrize("zb", [False, True])
def test_class_relevances_are_per_class_passes(zb):
    torch.manual_seed(0)
    model = randomise_bn(TwinModules()).eval()
    x = torch.rand(3, 3, 32, 32)
    lrp = LRPFlex(model, zb=zb, layers=["c3"])
    with torch.no_grad():  # the trace records its graph anyway
        parts = lrp.trace(x).class_relevances()
    assert len(parts) == 4
    for k, part in enumerate(parts):
        trace = lrp.trace(x)
        expected = trace.relevance(trace.output[:, k].sum())
        assert torch.equal(part.input, expected.input)
        assert torch.equal(part.layers["c3"], expected.layers["c3"])
        assert not part.input.requires_grad
    assert torch.equal(torch.stack([p.input for p in parts], 1), lrp.trace(x).heatmap("all"))
    differentiable = lrp.trace(x).class_relevances(create_graph=True)
    assert all(p.input.requires_grad for p in differentiable)
    assert torch.allclose(torch.stack([p.input for p in differentiable], 1).detach(), lrp.explain(x, "all"))


@pytest.mark.parametrize("requires_grad", [False, True])
def test_explain_prediction_is_heatmap_of_argmax_without_graph(requires_grad):
    torch.manual_seed(0)
    model = randomise_bn(TwinModules()).eval()
    x = torch.rand(4, 3, 32, 32).requires_grad_(requires_grad)
    lrp = LRPFlex(model)
    logits, heat = lrp.explain_prediction(x)
    with torch.no_grad():
        own = model(x)
    assert torch.equal(logits.argmax(1), own.argmax(1))
    assert torch.allclose(logits, own)
    trace = lrp.trace(x)
    assert torch.equal(heat, trace.heatmap(trace.output.detach().argmax(1)))
    assert torch.equal(heat, lrp.explain(x, "argmax"))
    for t in (logits, heat):
        assert not t.requires_grad and t.grad_fn is None
    assert all(p.grad is None for p in model.parameters())


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_record_outputs_records_per_forward_pass_and_removes_hooks():
    torch.manual_seed(0)
    model = TwinModules().eval()
    x = torch.rand(2, 3, 32, 32)
    with record_outputs(model, ["c3", "l1"]) as store:
        assert store == {}
        model(x[:1])
        model(x)  # a new forward pass: the store holds its outputs
        assert set(store) == {"c3", "l1"}
        assert store["l1"].shape == (2, 16)
        other = threading.Thread(target=lambda: model(x[:1]))
        other.start()
        other.join()
        assert store["l1"].shape == (2, 16)  # another thread's pass is ignored
    assert _no_hooks(model)
    h = F.max_pool2d(model.r1(model.b1(model.c1(x))), 2)
    assert torch.equal(store["c3"], model.c3(model.r2(model.c2(h))))
    h = F.max_pool2d(model.r4(model.c4(model.r3(store["c3"] + h))), 2)
    assert torch.equal(store["l1"], model.l1(h.flatten(1)))
    with pytest.raises(RuntimeError, match="boom"):
        with record_outputs(model, ["c3"]):
            raise RuntimeError("boom")
    assert _no_hooks(model)


def test_record_outputs_errors():
    model = TwinAwkward().eval()
    with pytest.raises(KeyError, match="nope"):
        with record_outputs(model, ["c3", "nope"]):
            pass
    assert _no_hooks(model)
    with pytest.raises(UnsupportedModelError, match="'shared' runs more than once"):
        with record_outputs(model, ["shared"]):
            model(torch.rand(1, 3, 32, 32))
    assert _no_hooks(model)


# ----------------------------------------------------------------------------- create_graph vs finite differences

class Tiny(nn.Module):
    def __init__(self, bn: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3) if bn else nn.Identity()
        self.fc = nn.Linear(3 * 5 * 5, 2)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))


def _fd_check(model: nn.Module, names: list[str], zb: bool, x: torch.Tensor) -> None:
    from torch.func import functional_call

    params = dict(model.named_parameters())

    for name in names:
        def loss(p, name=name):
            class Call(nn.Module):
                def forward(self, inp):
                    return functional_call(model, {**params, name: p}, (inp,))

            heat = explain(Call(), x, torch.tensor([0, 1, 1]), epsilon=0.05, zb=zb, create_graph=True)
            return (heat ** 2).sum()

        p0 = params[name].detach().clone().requires_grad_(True)
        # fast mode: a random directional derivative, checked against a central difference
        assert torch.autograd.gradcheck(loss, (p0,), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True), name


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("zb", [False, True])
def test_create_graph_matches_finite_differences(mode, zb):
    torch.manual_seed(0)
    model = randomise_bn(Tiny(bn=True)).double()
    model.train(mode == "train")
    x = torch.rand(3, 2, 5, 5, dtype=torch.float64)
    if not zb:
        names = [n for n, _ in model.named_parameters()]
    elif mode == "eval":
        # Z^B takes the conv bias and the BN shift detached (as the reference does), so the
        # heatmap's true derivative w.r.t. them differs from the training gradient by design.
        names = ["conv.weight", "bn.weight", "fc.weight", "fc.bias"]
    else:
        # in training mode the batch statistics also enter Z^B detached
        names = ["bn.weight", "fc.weight", "fc.bias"]
    _fd_check(model, names, zb, x)


def test_create_graph_no_bn_all_parameters_with_zb_bias_free():
    torch.manual_seed(0)
    model = Tiny(bn=False).double().eval()
    with torch.no_grad():
        model.conv.bias.zero_()
    model.conv.bias.requires_grad_(False)
    x = torch.rand(3, 2, 5, 5, dtype=torch.float64)
    _fd_check(model, ["conv.weight", "fc.weight", "fc.bias"], True, x)


def test_training_backward_uses_ordinary_derivative():
    """A loss on the logits of a trace back-propagates with the ordinary ReLU derivative."""
    torch.manual_seed(0)
    model = TwinModules().eval()
    x = torch.rand(2, 3, 32, 32)
    trace = LRPFlex(model).trace(x)
    trace.heatmap("argmax", create_graph=True)
    (g_trace,) = torch.autograd.grad(trace.output.sum(), model.c2.weight)
    (g_plain,) = torch.autograd.grad(model(x).sum(), model.c2.weight)
    assert rel_err(g_trace, g_plain) < 1e-6


# ----------------------------------------------------------------------------- model left unchanged

def snapshot(model: nn.Module) -> dict:
    hooks = {}
    for name, m in model.named_modules():
        hooks[name] = {k: len(v) for k, v in vars(m).items() if "hook" in k and isinstance(v, dict)}
    return {
        "hooks": hooks,
        "inplace": {n: m.inplace for n, m in model.named_modules() if hasattr(m, "inplace")},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "modules": {n: type(m) for n, m in model.named_modules()},
        "forward": {n: m.forward for n, m in model.named_modules()},
    }


def assert_same(before: dict, after: dict) -> None:
    assert before["hooks"] == after["hooks"]
    assert all(not any(v.values()) for v in after["hooks"].values()), "hooks remain"
    for key in ("inplace", "requires_grad", "training", "modules"):
        assert before[key] == after[key], key
    for n, g in before["grads"].items():
        assert (g is None) == (after["grads"][n] is None) and (g is None or torch.equal(g, after["grads"][n])), n
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), k
    assert all(before["forward"][n] == after["forward"][n] for n in before["forward"])


def assert_no_mode_left() -> None:
    assert torch._C._len_torch_function_stack() == 0


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
    with pytest.raises(ValueError, match="out of range"):
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
    import isnet.lrp.explainer
    import isnet.lrp.rules
    import isnet.lrp.tracing
    import isnet.network
    from isnet import ISNet, ISNetLoss

    modules = (isnet.lrp, isnet.lrp.rules, isnet.lrp.tracing, isnet.lrp.explainer, isnet.network, isnet.loss)

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
    with pytest.raises(UnsupportedModelError, match=r"'1\.1'.*" + act.__name__):
        explain(model, torch.rand(1, 3, 8, 8), 0)


def test_unsupported_functional_is_named():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, 2)

        def forward(self, x):
            return self.fc(torch.exp(self.conv(x)).flatten(1))

    with pytest.raises(UnsupportedModelError, match="exp"):
        explain(Net(), torch.rand(1, 3, 8, 8), 0)
    assert_no_mode_left()


@pytest.mark.parametrize("layers, found", [
    ([nn.MaxPool2d(2), nn.Conv2d(3, 4, 3), nn.ReLU()], "max_pool2d applied to the input"),
    ([nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.ReLU()], "max_pool2d applied to the first layer's output"),
    ([nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.MaxPool2d(2), nn.ReLU()], "first batch norm's output"),
    ([nn.ReLU(), nn.Conv2d(3, 4, 3), nn.ReLU()], "a ReLU applied directly to the input"),
])
def test_zb_needs_first_block(layers, found):
    model = nn.Sequential(*layers, nn.Flatten(), nn.LazyLinear(2)).eval()
    x = torch.rand(2, 3, 8, 8)
    model(x)
    with pytest.raises(UnsupportedModelError, match="zb=False") as info:
        explain(model, x, 0)
    assert found in str(info.value)
    assert torch.isfinite(explain(model, x, 0, zb=False)).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_raises(bad):
    torch.manual_seed(0)
    model = TwinModules().eval()
    x = torch.rand(2, 3, 32, 32)
    x[1, 0, 5, 5] = bad
    for zb in (False, True):
        with pytest.raises(FloatingPointError):
            explain(model, x, "argmax", zb=zb)


def test_zero_denominator_with_eps0_raises():
    """Z^B with eps = 0, positive first weights, an all-zero image: z = 0, 0 / 0 is reported."""
    model = bias_free_net().eval()
    with torch.no_grad():
        model[0].weight.abs_()
    with pytest.raises(FloatingPointError):
        explain(model, torch.zeros(1, 3, 32, 32), 0, epsilon=0.0, zb=True)


def test_check_finite_can_be_disabled():
    model = TwinModules().eval()
    x = torch.rand(1, 3, 32, 32)
    x[0, 0, 0, 0] = float("nan")
    heat = LRPFlex(model, check_finite=False).explain(x, 0)
    assert torch.isnan(heat).any()


def test_bad_options():
    model = TwinModules()
    with pytest.raises(ValueError):
        LRPFlex(model, epsilon=-1.0)
    with pytest.raises(KeyError):
        LRPFlex(model, layers=["nope"])
    with pytest.raises(TypeError):
        explain(nn.Conv2d(3, 4, 3), torch.rand(1, 3, 8, 8), 0, zb=False)


# ----------------------------------------------------------------------------- ReLU6 / LeakyReLU

def _act_net(act: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), act, nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), type(act)(*_act_args(act)), nn.Flatten(),
                         nn.Linear(8 * 8 * 8, 4))


def _act_args(act: nn.Module) -> tuple:
    return (act.negative_slope,) if isinstance(act, nn.LeakyReLU) else ()


@pytest.mark.parametrize("act", [nn.ReLU6(), nn.LeakyReLU(0.1), nn.LeakyReLU(0.2, inplace=True)])
@pytest.mark.parametrize("zb", [False, True])
def test_relu6_leaky_eps0_is_gradient_x_input(act, zb):
    torch.manual_seed(0)
    model = _act_net(act).eval()
    x = torch.rand(2, 3, 16, 16)
    if isinstance(act, nn.ReLU6):
        assert model[:2](x).max() < 6  # in its linear range ReLU6 is a ReLU: f(z)/z = f'(z)
    target = torch.tensor([1, 2])
    if zb:  # Z^B on the first block is not gradient x input; compare the relevance at the first activation
        lrp = LRPFlex(model, epsilon=0.0, zb=False, layers=["1"])
        trace = lrp.trace(x)
        got = trace.relevance(trace.output.gather(1, target[:, None]).sum()).layers["1"]
        h = model[:2](x).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(model[2:](h).gather(1, target[:, None]).sum(), h)
        assert rel_err(got, g * h) < 1e-5
    else:
        assert rel_err(explain(model, x, target, epsilon=0.0, zb=False), grad_x_input(model, x, target)) < 1e-5


@pytest.mark.parametrize("kind", ["relu6", "leaky", "relu6_functional", "leaky_functional"])
def test_piecewise_rule_hand_computed(kind):
    """One hidden layer: R_x = x * W1^T (f(z) / (z + eps sign z) * W2^T 1)."""
    w1 = torch.tensor([[1.0, -2.0], [3.0, 1.0], [-1.0, -1.0]])
    b1 = torch.tensor([0.5, 1.0, 0.2])
    w2 = torch.tensor([[1.0, 2.0, -1.5]])
    x = torch.tensor([[2.0, 1.5]])
    slope, eps = 0.1, 0.5
    z = x @ w1.T + b1  # (-0.5, 8.5, -3.3): negative, above 6 (ReLU6 saturates), negative
    if kind.startswith("relu6"):
        fz = z.clamp(0, 6)
    else:
        fz = torch.where(z > 0, z, slope * z)
    expected = x * (((fz / (z + eps * torch.sign(z))) * w2) @ w1)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1, self.l2 = nn.Linear(2, 3), nn.Linear(3, 1, bias=False)
            self.act = nn.ReLU6() if kind == "relu6" else nn.LeakyReLU(slope)
            with torch.no_grad():
                self.l1.weight.copy_(w1), self.l1.bias.copy_(b1), self.l2.weight.copy_(w2)

        def forward(self, t):
            h = self.l1(t)
            if kind == "relu6_functional":
                h = F.relu6(h)
            elif kind == "leaky_functional":
                h = F.leaky_relu(h, slope)
            else:
                h = self.act(h)
            return self.l2(h)

    heat = explain(Net(), x, 0, epsilon=eps, zb=False)
    assert torch.allclose(heat, expected, atol=1e-6)
    # eps = 0: f(z) / z, which for ReLU6 in saturation is 6 / z, not the derivative 0
    heat0 = explain(Net(), x, 0, epsilon=0.0, zb=False)
    assert torch.allclose(heat0, x * (((fz / z) * w2) @ w1), atol=1e-6)


def test_hardtanh_not_through_zero_rejected():
    model = nn.Sequential(nn.Linear(2, 3), nn.Hardtanh(0.5, 2.0), nn.Linear(3, 1))
    with pytest.raises(UnsupportedModelError, match="hardtanh"):
        explain(model, torch.rand(1, 2), 0, zb=False)


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


# ---------------------------------------------------------------------------- input validation (issue 14)


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()


def test_integer_input_asks_for_floats():
    with pytest.raises(TypeError, match=r"floating-point inputs; got torch.uint8.*/ 255"):
        explain(_tiny(), torch.zeros(1, 3, 8, 8, dtype=torch.uint8), 0)


def test_input_far_outside_the_zb_bounds_warns_naming_the_range():
    """Pixels in 0-255 (or normalised pixels with the default bounds) warn; [0, 1] pixels, normalised ones
    with their bounds, a slight overshoot, no Z^B, ISNet training's check_finite=False, bounds without a
    range and non-finite input (an error instead) do not."""
    model, x = _tiny(), torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    pixels = (x * 255).round()
    pixels[0, 0, 0, 0], pixels[1, 2, 7, 7] = 0.0, 255.0
    with pytest.warns(IsnetWarning, match=re.escape("ranges from 0 to 255, far outside the Z^B bounds [0, 1]")) as seen:
        heat = explain(model, pixels, "argmax")
    assert "divide them by 255" in str(seen[0].message) and heat.shape == pixels.shape
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    normalised = (x - mean) / std
    normalised[0, 0, 0, 0] = -mean[0, 0, 0] / std[0, 0, 0]  # the lowest value: -2.118
    with pytest.warns(IsnetWarning, match=r"ranges from -2\.118 .*pass bounds="):
        LRPFlex(model).explain(normalised, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IsnetWarning)
        explain(model, x, "argmax")
        explain(model, normalised, "argmax", bounds=(((0 - mean) / std).flatten(), ((1 - mean) / std).flatten()))
        explain(model, x * 1.5 - 0.25, "argmax")  # augmentation overshoot: within one span of the bounds
        explain(model, pixels, "argmax", zb=False)  # the bounds are not used
        LRPFlex(model, check_finite=False).trace(pixels)  # ISNet training: no check, no device sync
        explain(model, x, "argmax", bounds=(0.0, 0.0))  # no range: the box terms switched off
        pixels[0, 0, 0, 0] = float("inf")
        with pytest.raises(FloatingPointError, match="NaN or infinite"):  # named by the finite check instead
            explain(model, pixels, "argmax")


def test_bounds_need_low_below_high():
    with pytest.raises(ValueError, match="low must be <= high"):
        LRPFlex(_tiny(), bounds=(1.0, 0.0))
    with pytest.raises(ValueError, match="low must be <= high"):
        LRPFlex(_tiny(), bounds=(torch.zeros(3), torch.tensor([1.0, -1.0, 1.0])))
    LRPFlex(_tiny(), bounds=(-torch.ones(3), torch.ones(3)))  # per-channel, valid


def test_non_finite_input_is_named_as_the_cause():
    x = torch.rand(2, 3, 8, 8)
    x[1, 0, 2, 2] = float("nan")
    with pytest.raises(FloatingPointError, match="the input holds 1 NaN or infinite values"):
        explain(_tiny(), x, "argmax")
