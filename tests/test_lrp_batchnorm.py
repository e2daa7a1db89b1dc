"""Batch norm in training mode: the relevance pass with the batch statistics' derivative or held constant."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from isnet import LRPFlex
from isnet.config import TrainConfig
from isnet.errors import UserError
from isnet.network import ISNet


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 5),
    ).double()
    with torch.no_grad():  # non-trivial affine parameters and running statistics
        for m in model:
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0)
    return model.train()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.rand(6, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 4, 0])


def _batch_statistics(model: nn.Module, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each batch norm's batch mean and biased variance on ``x``, in module order (recomputed from its input)."""
    probe = copy.deepcopy(model)  # the model's own running statistics stay as they are
    stats = []
    for m in probe.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            def record(_module, args, _out):
                t = args[0].detach()
                dims = [0, *range(2, t.dim())]
                stats.append((t.mean(dims), t.var(dims, unbiased=False)))
            m.register_forward_hook(record)
    probe(x)
    return stats


def test_constant_statistics_equal_eval_mode_with_the_batch_statistics():
    """Held constant, training-mode batch norm is the affine map of its batch statistics: the heatmap
    equals that of an eval-mode copy whose running statistics are the batch's."""
    model, (x, y) = _model(), _inputs()
    frozen = copy.deepcopy(model)
    norms = [m for m in frozen.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m, (mean, var) in zip(norms, _batch_statistics(model, x), strict=True):
        m.running_mean.copy_(mean), m.running_var.copy_(var)
    frozen.eval()
    assert torch.allclose(frozen(x), model(x))
    heat = LRPFlex(model, zb=False, batch_stats="constant").explain(x, y)
    expected = LRPFlex(frozen, zb=False).explain(x, y)
    assert torch.allclose(heat, expected, rtol=1e-9, atol=1e-12)
    # the default keeps the statistics' derivative, which is a different map
    default = LRPFlex(model, zb=False).explain(x, y)
    assert (default - expected).abs().max() > 1e-3 * expected.abs().max()


@pytest.mark.parametrize("zb", [False, True])
def test_only_the_gradient_mode_mixes_the_images_of_a_batch(zb):
    """Explaining other classes for the other images changes image 0's heatmap only through the
    statistics' derivative."""
    model, (x, y) = _model(), _inputs()
    other = y.clone()
    other[1:] = (y[1:] + 2) % 5
    for mode, mixes in (("gradient", True), ("constant", False)):
        lrp = LRPFlex(model, zb=zb, batch_stats=mode)
        first, second = lrp.explain(x, y)[0], lrp.explain(x, other)[0]
        change = ((first - second).norm() / first.norm()).item()
        assert (change > 1e-3) if mixes else (change < 1e-12), (mode, change)


def test_constant_statistics_leave_outputs_running_statistics_and_training_gradients_as_the_model():
    model, (x, y) = _model(), _inputs()
    plain = copy.deepcopy(model)
    out = plain(x)
    F.cross_entropy(out, y).backward()
    trace = LRPFlex(model, batch_stats="constant").trace(x)
    assert torch.equal(trace.output, out)
    for (name, buf), (_, expected) in zip(model.named_buffers(), plain.named_buffers()):
        assert torch.allclose(buf, expected, rtol=0, atol=1e-15), name  # updated once, as the model's own call
    F.cross_entropy(trace.output, y).backward()  # outside the relevance pass: the ordinary derivative
    for (name, p), (_, q) in zip(model.named_parameters(), plain.named_parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-10, atol=1e-13), name
    assert not model._forward_hooks and all(not m._forward_hooks for m in model.modules())


def test_eval_mode_is_the_same_in_both_modes():
    model, (x, y) = _model(), _inputs()
    model.eval()
    a = LRPFlex(model, batch_stats="gradient").explain(x, y)
    b = LRPFlex(model, batch_stats="constant").explain(x, y)
    assert torch.equal(a, b)


@pytest.mark.parametrize("zb, explainer", [(False, "lrp"), (True, "lrp"), (True, "selective")])
def test_a_loss_on_the_heatmap_has_the_exact_gradient_through_constant_statistics(zb, explainer):
    """The heatmap stays differentiable (create_graph): its loss's gradient matches finite differences,
    for a plain LRP-Flex heatmap and for the selective ISNet's (whose quantity keeps float64)."""
    model, (x, y) = _model(), _inputs()
    if explainer == "lrp":
        lrp = LRPFlex(model, zb=zb, batch_stats="constant")
        heatmap = lambda: lrp.explain(x, y, create_graph=True)  # noqa: E731
    else:
        net = ISNet(model, "selective", batch_stats="constant").train()
        heatmap = lambda: net(x, heatmaps=True, labels=y)[1]  # noqa: E731
    weight = model[4].weight
    buffers = [b.clone() for b in model.buffers()]

    def loss() -> torch.Tensor:
        value = heatmap().pow(2).sum()
        with torch.no_grad():  # the same running statistics for every evaluation
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)
        return value

    grad, = torch.autograd.grad(loss(), weight)
    direction = torch.randn_like(weight)
    h = 1e-6
    with torch.no_grad():
        weight.add_(h * direction)
        up = loss().item()
        weight.sub_(2 * h * direction)
        down = loss().item()
        weight.add_(h * direction)
    assert (up - down) / (2 * h) == pytest.approx((grad * direction).sum().item(), rel=2e-5)


def test_isnet_trains_with_constant_statistics():
    model, (x, y) = _model(), _inputs()
    net = ISNet(model, "selective", batch_stats="constant").train()
    logits, heat = net(x, heatmaps=True, labels=y)
    (F.cross_entropy(logits, y) + heat.abs().sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert net.lrp.batch_stats == "constant"


def test_bad_batch_stats_values_are_refused():
    with pytest.raises(ValueError, match="batch_stats"):
        LRPFlex(_model(), batch_stats="frozen")
    with pytest.raises(UserError, match="batch.stats"):
        TrainConfig.from_dict({"batch_stats": "frozen"}).validate()
    assert TrainConfig().lrp_options()["batch_stats"] == TrainConfig().batch_stats


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (persistent or not) of ``model``, by name."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def _assert_bit_identical(model: nn.Module, before: dict[str, torch.Tensor], objects: dict[str, int]) -> None:
    after = _tensors(model)
    assert after.keys() == before.keys()
    for name, value in after.items():
        assert id(value) == objects[name], f"{name} was replaced"
        assert value.dtype == before[name].dtype and torch.equal(value, before[name]), f"{name} changed"


def test_explaining_a_training_mode_resnet18_leaves_every_parameter_and_buffer_bit_identical():
    """isnet.explain, LRPFlex.explain and explain_prediction on a model in train mode: the mode stays, no
    parameter or buffer changes (running statistics, num_batches_tracked), and the heatmap is the train-mode
    model's, computed with the batch statistics as its forward does."""
    from torchvision.models import resnet18

    import isnet

    torch.manual_seed(0)
    model = resnet18(weights=None, num_classes=5).train()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    stepped = copy.deepcopy(model)  # a copy for the reference: a training-step trace and forward update it
    expected = LRPFlex(stepped).trace(x).heatmap("argmax")
    before = {name: t.detach().clone() for name, t in _tensors(model).items()}
    objects = {name: id(t) for name, t in _tensors(model).items()}

    heat = isnet.explain(model, x, "argmax")
    logits, predicted = LRPFlex(model).explain_prediction(x)
    maps = LRPFlex(model).explain(x, "all")
    kept_graph = isnet.explain(model, x, 2, create_graph=True)
    torch.autograd.grad(kept_graph.sum(), model.conv1.weight)  # the graph of a kept-buffer pass back-propagates

    assert model.training and all(m.training for m in model.modules())
    _assert_bit_identical(model, before, objects)
    assert before["bn1.num_batches_tracked"].item() == 0 and stepped.bn1.num_batches_tracked.item() == 1
    assert heat.shape == x.shape and torch.isfinite(heat).all() and heat.abs().sum() > 0
    assert torch.equal(heat, expected) and torch.equal(predicted, expected)
    assert maps.shape == (4, 5, 3, 32, 32) and torch.isfinite(maps).all()
    assert torch.equal(logits, copy.deepcopy(model)(x).detach())  # the train-mode forward: batch statistics
    eval_heat = isnet.explain(copy.deepcopy(model).eval(), x, "argmax")  # running statistics: another map
    assert (heat - eval_heat).abs().max() > 1e-3 * heat.abs().max()


def test_explaining_keeps_every_kind_of_buffer_a_training_forward_writes():
    """Spectral norm (parametrization: assigns its vector; hook: writes in place), instance norm with running
    statistics, a cumulative batch norm (momentum None reads num_batches_tracked after adding 1)."""
    from torch.nn.utils import spectral_norm as spectral_norm_hook
    from torch.nn.utils.parametrizations import spectral_norm

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.InstanceNorm2d(4, affine=True, track_running_stats=True), nn.ReLU(),
        nn.BatchNorm2d(4, momentum=None), nn.Flatten(), spectral_norm(nn.Linear(4 * 16, 8)), nn.ReLU(),
        spectral_norm_hook(nn.Linear(8, 3)),
    ).train()
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    before = {name: t.detach().clone() for name, t in _tensors(model).items()}
    objects = {name: id(t) for name, t in _tensors(model).items()}
    stepped, plain = copy.deepcopy(model), copy.deepcopy(model)  # before any forward (the hook caches a weight)
    expected = LRPFlex(stepped).trace(x).heatmap("argmax")
    changed = [n for n, t in _tensors(stepped).items() if not torch.equal(t, before[n])]
    assert {"1.running_mean", "3.num_batches_tracked", "5.parametrizations.weight.0._u", "7.weight_u"} <= set(changed)

    logits, heat = LRPFlex(model).explain_prediction(x)
    _assert_bit_identical(model, before, objects)
    assert torch.equal(heat, expected.detach())
    assert torch.equal(logits, plain(x).detach())  # the forward saw its own writes (u, the count)


def test_the_isnet_training_forward_still_updates_running_statistics():
    model, (x, y) = _model(), _inputs()
    plain = copy.deepcopy(model)
    before = [b.clone() for b in model.buffers()]
    ISNet(model, "selective").train()(x, heatmaps=True, labels=y)
    plain(x)
    for buffer, expected, old in zip(model.buffers(), plain.buffers(), before, strict=True):
        assert torch.allclose(buffer, expected, rtol=0, atol=1e-15) and not torch.equal(buffer, old)
