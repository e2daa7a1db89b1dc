"""The explainer's API: batches, targets, traces, recorded module outputs, gradients through heatmaps, bad
input."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from isnet import LRPFlex, UnsupportedModelError, explain
from isnet.lrp import record_outputs
from lrp_models import TwinAwkward, TwinModules, no_hooks, randomise_bn, rel_err, tiny


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
    assert no_hooks(model)
    h = F.max_pool2d(model.r1(model.b1(model.c1(x))), 2)
    assert torch.equal(store["c3"], model.c3(model.r2(model.c2(h))))
    h = F.max_pool2d(model.r4(model.c4(model.r3(store["c3"] + h))), 2)
    assert torch.equal(store["l1"], model.l1(h.flatten(1)))
    with pytest.raises(RuntimeError, match="boom"):
        with record_outputs(model, ["c3"]):
            raise RuntimeError("boom")
    assert no_hooks(model)


def test_record_outputs_errors():
    model = TwinAwkward().eval()
    with pytest.raises(KeyError, match="nope"):
        with record_outputs(model, ["c3", "nope"]):
            pass
    assert no_hooks(model)
    with pytest.raises(UnsupportedModelError, match="'shared'"):
        with record_outputs(model, ["shared"]):
            model(torch.rand(1, 3, 32, 32))
    assert no_hooks(model)



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




@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_raises(bad):
    torch.manual_seed(0)
    model = TwinModules().eval()
    x = torch.rand(2, 3, 32, 32)
    x[1, 0, 5, 5] = bad
    for zb in (False, True):
        with pytest.raises(FloatingPointError):
            explain(model, x, "argmax", zb=zb)




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




def test_integer_input_asks_for_floats():
    with pytest.raises(TypeError, match="uint8") as info:  # names the dtype found
        explain(tiny(), torch.zeros(1, 3, 8, 8, dtype=torch.uint8), 0)
    assert "/ 255" in str(info.value)  # and how to convert




def test_non_finite_input_is_named_as_the_cause():
    x = torch.rand(2, 3, 8, 8)
    x[1, 0, 2, 2] = float("nan")
    with pytest.raises(FloatingPointError, match="input"):
        explain(tiny(), x, "argmax")
