"""The ISNet network (SPEC section 2): which quantity each ISNet objective explains, shapes, deep supervision."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from isnet import ISNet, ISNetLoss, LRPFlex, explain
from isnet.network import default_supervised_layers, selective_quantity, stochastic_classes
from lrp_models import assert_same, rel_err, snapshot


def small_net(classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, classes),
    )


def eta(logits: torch.Tensor, classes: torch.Tensor, e: float = 0.01) -> torch.Tensor:
    """Written out independently of isnet.network."""
    p = logits.softmax(1)[torch.arange(len(classes)), classes]
    return (torch.log(p + e) - torch.log(1 - p + e)).sum()


def eta_relevance(model: nn.Module, x: torch.Tensor, pick, **lrp) -> torch.Tensor:
    """Relevance of eta through Trace.relevance with a quantity built here."""
    trace = LRPFlex(model, **lrp).trace(x)
    classes = pick(trace.output.detach())
    return trace.relevance(eta(trace.output, classes)).input


X = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
Y = torch.tensor([1, 0, 4, 2])


@pytest.mark.parametrize("zb", [False, True])
def test_selective_explains_eta_of_lowest_logit(zb):
    model = small_net().eval()
    net = ISNet(model, "selective", zb=zb).eval()
    logits, heat = net(X, heatmaps=True)
    assert heat.shape == (4, 1, 3, 16, 16)
    assert torch.equal(logits, model(X))
    expected = eta_relevance(model, X, lambda out: out.argmin(1), zb=zb)
    assert rel_err(heat[:, 0], expected) < 1e-6


def test_selective_eps0_is_gradient_of_eta_times_input():
    model = small_net().eval()
    heat = ISNet(model, "selective", epsilon=0.0, zb=False).eval()(X, heatmaps=True)[1][:, 0]
    x = X.clone().requires_grad_(True)
    out = model(x)
    (g,) = torch.autograd.grad(eta(out, out.detach().argmin(1)), x)
    assert rel_err(heat, g * X) < 1e-5


@pytest.mark.parametrize("which", ["label", "highest"])
def test_selective_class_options(which):
    model = small_net().eval()
    net = ISNet(model, "selective", selective_class=which).eval()
    heat = net(X, heatmaps=True, labels=Y)[1][:, 0]
    pick = (lambda out: Y) if which == "label" else (lambda out: out.argmax(1))
    assert rel_err(heat, eta_relevance(model, X, pick)) < 1e-6
    if which == "label":
        with pytest.raises(ValueError, match="labels"):
            net(X, heatmaps=True)


def test_selective_quantity_formula():
    logits, classes = torch.randn(6, 7), torch.randint(0, 7, (6,))
    assert torch.allclose(selective_quantity(logits, classes, 0.05), eta(logits, classes, 0.05))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_selective_quantity_precision(dtype):
    """Half precision is promoted to float32; float64 keeps its precision (gradients included)."""
    logits = torch.randn(5, 4, dtype=torch.float64).to(dtype).requires_grad_()
    classes = torch.randint(0, 4, (5,))
    value = selective_quantity(logits, classes)
    assert value.dtype == torch.promote_types(dtype, torch.float32)
    value.backward()
    assert logits.grad.dtype == dtype
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(lambda t: selective_quantity(t, classes), (logits.detach().requires_grad_(),))


def test_stochastic_class_statistics():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 10, generator=g)
    top = logits.argmax(1)
    picked = stochastic_classes(logits, torch.Generator().manual_seed(1))
    is_top = picked == top
    share = is_top.float().mean().item()
    assert abs(share - 0.5) < 0.015  # binomial sd 0.0035
    others = picked[~is_top]
    assert ((others >= 0) & (others < 10)).all()
    # when not the top, every other class is equally likely: the offset from the top is uniform in 1..9
    offsets = (picked[~is_top] - top[~is_top]) % 10
    counts = torch.bincount(offsets, minlength=10).float()
    assert counts[0] == 0
    expected = (~is_top).sum() / 9
    assert ((counts[1:] - expected).abs() < 5 * expected.sqrt()).all()
    # reproducible with a seeded generator
    assert torch.equal(picked, stochastic_classes(logits, torch.Generator().manual_seed(1)))


def test_stochastic_two_classes_and_one_class():
    logits = torch.randn(1000, 2)
    picked = stochastic_classes(logits, torch.Generator().manual_seed(0))
    assert set(picked.tolist()) <= {0, 1}
    assert abs((picked == logits.argmax(1)).float().mean().item() - 0.5) < 0.06


def test_stochastic_heatmap_is_one_logit_explanation():
    model = small_net().eval()
    net = ISNet(model, "stochastic", epsilon=0.0, zb=False).eval()
    hits_top = 0
    torch.manual_seed(0)
    per_class = [explain(model, X, k, epsilon=0.0, zb=False) for k in range(5)]
    top = model(X).argmax(1)
    for _ in range(20):
        heat = net(X, heatmaps=True)[1][:, 0]
        for i in range(4):
            matches = [k for k in range(5) if rel_err(heat[i], per_class[k][i]) < 1e-5]
            assert len(matches) == 1
            hits_top += matches[0] == top[i].item()
    assert 20 <= hits_top <= 60  # 80 draws, p = 1/2


@pytest.mark.parametrize("zb", [False, True])
def test_original_returns_all_class_maps(zb, monkeypatch):
    from isnet.lrp import Trace

    model = small_net().eval()
    net = ISNet(model, "original", zb=zb).eval()
    calls = []
    relevance = Trace.relevance
    monkeypatch.setattr(Trace, "relevance", lambda self, *a, **k: calls.append(1) or relevance(self, *a, **k))
    logits, heat = net(X, heatmaps=True)
    monkeypatch.undo()
    assert heat.shape == (4, 5, 3, 16, 16)
    assert rel_err(heat, explain(model, X, "all", zb=zb)) < 1e-6
    assert len(calls) == 5  # one relevance pass per class: the cost grows with K


def test_standard_explains_argmax_when_asked():
    model = small_net().eval()
    heat = ISNet(model, "standard").eval()(X, heatmaps=True)[1]
    assert rel_err(heat[:, 0], explain(model, X, "argmax")) < 1e-6


@pytest.mark.parametrize("objective", ["standard", "original", "selective", "stochastic"])
def test_forward_is_the_plain_model(objective):
    model = small_net()
    net = ISNet(model, objective)
    for mode in (True, False):
        net.train(mode)
        torch.manual_seed(0)
        a = net(X)
        torch.manual_seed(0)
        assert torch.equal(a, model(X))
    assert net.model is model


def test_training_step_runs_and_leaves_model_unchanged():
    model = small_net()
    model.train()
    before = snapshot(model)
    for objective in ("original", "selective", "stochastic"):
        net = ISNet(model, objective).train()
        logits, heat = net(X, heatmaps=True)
        assert heat.requires_grad
        mask = torch.zeros(4, 1, 16, 16)
        mask[:, :, 4:12, 4:12] = 1
        ISNetLoss()(logits, Y, heat, mask).total.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        model.zero_grad(set_to_none=True)
    after = snapshot(model)
    # batch-norm running statistics move in training mode, like any training forward; all else is as before
    before["state"] = {k: v for k, v in before["state"].items() if "running" not in k and "num_batches" not in k}
    after["state"] = {k: v for k, v in after["state"].items() if k in before["state"]}
    assert_same(before, after)


def test_heatmaps_without_graph_under_no_grad():
    model = small_net()
    net = ISNet(model, "selective").train()
    with torch.no_grad():
        logits, heat = net(X, heatmaps=True)
        plain = explain(model, X, 0)
    assert not logits.requires_grad and not heat.requires_grad and not plain.requires_grad
    net.eval()
    with torch.no_grad():  # e.g. a validation loop that also computes heatmaps
        heat_eval = net(X, heatmaps=True)[1]
    assert rel_err(heat_eval, net(X, heatmaps=True)[1]) < 1e-6


def test_model_unchanged_by_isnet_eval():
    model = small_net().eval()
    before, out = snapshot(model), model(X)
    for objective in ("original", "selective", "stochastic"):
        ISNet(model, objective, deep_supervision=["4", "5"]).eval()(X, heatmaps=True)
    assert_same(before, snapshot(model))
    assert torch.equal(model(X), out)


def test_deep_supervision_resnet_default_layers():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=3).eval()
    net = ISNet(model, "selective", deep_supervision=True).eval()
    assert net.layers == ["layer1", "layer2", "layer3", "layer4"]
    x = torch.rand(2, 3, 64, 64)
    logits, maps = net(x, heatmaps=True)
    assert list(maps) == ["input", "layer1", "layer2", "layer3", "layer4"]
    assert maps["input"].shape == (2, 1, 3, 64, 64)
    assert [tuple(maps[f"layer{i}"].shape) for i in range(1, 5)] == [
        (2, 1, 1, 16, 16), (2, 1, 1, 8, 8), (2, 1, 1, 4, 4), (2, 1, 1, 2, 2)]
    # the layer map is the channel sum of that layer's relevance
    trace = LRPFlex(model, layers=["layer2"]).trace(x)
    rel = trace.relevance(eta(trace.output, trace.output.detach().argmin(1))).layers["layer2"]
    assert rel_err(maps["layer2"][:, 0, 0], rel.sum(1)) < 1e-6


def test_deep_supervision_named_layers_and_original():
    model = small_net().eval()
    net = ISNet(model, "original", deep_supervision=["5", "6"]).eval()
    _, maps = net(X, heatmaps=True)
    assert list(maps) == ["input", "5", "6"]
    assert maps["5"].shape == (4, 5, 1, 8, 8) and maps["6"].shape == (4, 5, 1, 4, 4)
    with pytest.raises(KeyError):
        ISNet(model, "selective", deep_supervision=["nope"])


def test_deep_supervision_on_a_non_spatial_layer_is_named():
    model = small_net().eval()
    last_hidden = [name for name, m in model.named_modules() if isinstance(m, nn.Flatten)][0]
    net = ISNet(model, "selective", deep_supervision=[last_hidden]).eval()
    with pytest.raises(ValueError, match=f"'{last_hidden}' gives \\(4, "):
        net(X, heatmaps=True)


def test_default_layers_densenet_vgg_and_unknown():
    from torchvision.models import densenet121, vgg11

    dense = default_supervised_layers(densenet121(num_classes=2))
    assert dense == [f"features.transition{i}.relu" for i in (1, 2, 3)]
    vgg = default_supervised_layers(vgg11(num_classes=2))
    assert len(vgg) == 5 and all(name.startswith("features.") for name in vgg)
    with pytest.raises(ValueError):
        default_supervised_layers(nn.Sequential(nn.Linear(2, 2)))


def test_bad_network_options():
    with pytest.raises(ValueError):
        ISNet(small_net(), "fastest")
    with pytest.raises(ValueError):
        ISNet(small_net(), "selective", selective_class="median")


def test_selective_training_gradient_flows_through_heatmap():
    """The heatmap loss alone (P = 1) trains the network: its gradient is nonzero and finite."""
    model = small_net().train()
    net = ISNet(model, "selective").train()
    logits, heat = net(X, heatmaps=True)
    mask = torch.zeros(4, 1, 16, 16)
    mask[:, :, 4:12, 4:12] = 1
    ISNetLoss(P=1.0)(logits, Y, heat, mask).total.backward()
    g = model[0].weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert F.cross_entropy(logits, Y).requires_grad


# ---------------------------------------------------------------------------- Dual ISNet


@pytest.mark.parametrize("zb", [False, True])
def test_dual_stacks_epsilon_and_zplus_maps_of_one_eta(zb):
    model = small_net().eval()
    before = snapshot(model)
    logits, heat = ISNet(model, "dual", zb=zb).eval()(X, heatmaps=True)
    assert heat.shape == (4, 2, 3, 16, 16) and torch.equal(logits, model(X))
    lowest = lambda out: out.argmin(1)  # noqa: E731
    assert rel_err(heat[:, 0], eta_relevance(model, X, lowest, zb=zb)) < 1e-6
    assert rel_err(heat[:, 1], eta_relevance(model, X, lowest, zb=zb, rule="z+")) < 1e-6
    assert rel_err(heat[:, 0], heat[:, 1]) > 0.05, "the two rules should give different maps"
    assert_same(before, snapshot(model))


def test_dual_explains_the_same_class_in_both_maps_and_trains_through_both():
    model = small_net()
    net = ISNet(model, "dual", selective_class="label").train()
    model.eval()  # fixed batch-norm statistics; the wrapper still builds the graph (it is training)
    _, heat = net(X, heatmaps=True, labels=Y)
    assert rel_err(heat[:, 0], eta_relevance(model, X, lambda out: Y)) < 1e-6
    assert rel_err(heat[:, 1], eta_relevance(model, X, lambda out: Y, rule="z+")) < 1e-6
    grads = torch.autograd.grad(heat[:, 1].abs().sum(), list(model.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "the z+ map must be in the graph"


def test_dual_deep_supervision_stacks_both_rules():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    net = ISNet(resnet18(num_classes=3).eval(), "dual", deep_supervision=True).eval()
    _, heat = net(torch.rand(2, 3, 32, 32), heatmaps=True)
    assert heat["input"].shape == (2, 2, 3, 32, 32) and heat["layer3"].shape == (2, 2, 1, 2, 2)
