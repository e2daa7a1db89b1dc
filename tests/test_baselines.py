"""Baselines: RRR, Grad-CAM attention supervision, segment-then-classify."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from isnet.checkpoints import classifier_input
from isnet.config import TrainConfig
from isnet.lrp import record_outputs
from isnet.objectives import StepContext, baselines, get_objective
from isnet.objectives.baselines import (
    default_cam_layer,
    grad_cam,
    gradcam_loss,
    masked_objective,
    rrr_objective,
    rrr_penalty,
)
from isnet.small_models import small_cnn


def _tiny_cnn(classes: int = 3) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * 4 * 4, classes),
    )


def _batch(b: int = 4, size: int = 8):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(b, 3, size, size, generator=g)
    masks = torch.zeros(b, 1, size, size)
    masks[:, :, 2:6, 2:6] = 1
    labels = torch.arange(b) % 3
    return x, masks, labels


def _fake_module(model: nn.Module, **config):
    return StepContext(net=SimpleNamespace(model=model), criterion=None, config=TrainConfig(**config))


# ---------------------------------------------------------------- RRR


def test_rrr_penalty_matches_manual_autograd():
    model = _tiny_cnn()
    x, masks, _ = _batch()
    penalty, logits = rrr_penalty(model, x, masks)

    xs = x.clone().requires_grad_(True)
    out = model(xs)
    (g,) = torch.autograd.grad(torch.log_softmax(out, 1).sum(), xs)
    manual = ((g**2) * (1 - masks)).sum((1, 2, 3)).mean()
    torch.testing.assert_close(penalty, manual)
    torch.testing.assert_close(logits, out)
    assert penalty > 0


def test_rrr_penalty_zero_when_mask_covers_everything_and_differentiable():
    model = _tiny_cnn()
    x, _, labels = _batch()
    penalty, _ = rrr_penalty(model, x, torch.ones(4, 1, 8, 8))
    assert penalty.item() == 0.0

    x, masks, labels = _batch()
    out = rrr_objective(_fake_module(model, rrr_lambda=3.5), x, masks, labels)
    assert set(out.terms) == {"ce", "rrr"}
    expected = out.terms["ce"] + 3.5 * out.terms["rrr"]
    torch.testing.assert_close(out.loss, expected)
    # the penalty reaches the parameters (double backward through the input gradient)
    grads = torch.autograd.grad(out.terms["rrr"], list(model.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


# ---------------------------------------------------------------- Grad-CAM


def test_default_cam_layers():
    model = small_cnn(10)
    children = list(model.named_children())
    index = [name for name, _ in children].index(default_cam_layer(model))
    flatten = next(i for i, (_, m) in enumerate(children) if isinstance(m, nn.Flatten))
    assert isinstance(children[index][1], nn.ReLU) and index < flatten  # the last ReLU before Flatten
    assert not any(isinstance(m, (nn.Conv2d, nn.ReLU)) for _, m in children[index + 1:flatten])
    from torchvision.models import densenet121, resnet18, vgg11

    assert default_cam_layer(resnet18(num_classes=2)) == "layer4"
    assert default_cam_layer(densenet121(num_classes=2)) == "features"
    assert default_cam_layer(vgg11(num_classes=2)) == "features.19"


def test_gradcam_loss_inside_and_outside_mask():
    masks = torch.zeros(2, 1, 8, 8)
    masks[:, :, 2:6, 2:6] = 1
    inside = torch.zeros(2, 1, 8, 8)
    inside[:, :, 3:5, 3:5] = 1.0
    outside = torch.zeros(2, 1, 8, 8)
    outside[:, :, 0, 0] = 5.0
    assert gradcam_loss(inside, masks).item() == pytest.approx(0.0)
    assert gradcam_loss(outside, masks).item() == pytest.approx(1.0, abs=1e-6)
    half = inside + outside / 5 * 4  # 4 units inside, 4 outside
    assert gradcam_loss(half, masks).item() == pytest.approx(0.5, abs=1e-6)
    assert gradcam_loss(torch.zeros(2, 1, 8, 8), masks).item() == 0.0
    # a coarse CAM against a fine mask: the mask is pooled (any foreground -> foreground)
    coarse = torch.zeros(2, 1, 4, 4)
    coarse[:, :, 1, 1] = 1.0
    assert gradcam_loss(coarse, masks).item() == pytest.approx(0.0)


def test_grad_cam_matches_manual_and_removes_hooks():
    model = _tiny_cnn()
    x, masks, labels = _batch()
    layer = default_cam_layer(model)
    assert layer == "4"
    cam, logits = grad_cam(model, x, labels)
    assert cam.shape == (4, 1, 4, 4)
    assert not model[4]._forward_hooks

    feats = model[:5](x)
    out = model[5:](feats)
    score = out.gather(1, labels[:, None]).sum()
    (g,) = torch.autograd.grad(score, feats)
    manual = torch.relu((g.mean((2, 3), keepdim=True) * feats).sum(1, keepdim=True))
    torch.testing.assert_close(cam, manual)
    torch.testing.assert_close(logits, out)

    up, _ = grad_cam(model, x, labels, size=(8, 8))
    assert up.shape == (4, 1, 8, 8)
    loss = gradcam_loss(up, masks)
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)  # differentiable (create_graph)


def test_record_outputs_removes_hook_on_error_and_ignores_other_threads():
    model = _tiny_cnn()
    with pytest.raises(RuntimeError):
        with record_outputs(model, ["4"]):
            raise RuntimeError("boom")
    assert not model[4]._forward_hooks
    with pytest.raises(KeyError):
        with record_outputs(model, ["nope"]):
            pass
    x, _, _ = _batch()
    with record_outputs(model, ["4"]) as store:
        t = threading.Thread(target=lambda: model(x))
        t.start()
        t.join()
        assert store == {}
        model(x)
        assert store["4"].shape == (4, 6, 4, 4)
    assert not model[4]._forward_hooks


def test_gradcam_objective_pushes_cam_into_mask():
    """A few steps of the Grad-CAM objective alone lower the CAM's background share."""
    model = _tiny_cnn()
    x, masks, labels = _batch(8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    first = None
    for _ in range(15):
        out = baselines.gradcam_objective(_fake_module(model), x, masks, labels)
        first = out.terms["gradcam"].item() if first is None else first
        opt.zero_grad()
        out.terms["gradcam"].backward()
        opt.step()
    assert out.terms["gradcam"].item() < first


def test_gradcam_objective_uses_the_runs_weight_and_layer():
    model = _tiny_cnn()
    x, masks, labels = _batch(4)
    out = baselines.gradcam_objective(_fake_module(model, gradcam_weight=2.5), x, masks, labels)
    torch.testing.assert_close(out.loss, out.terms["ce"] + 2.5 * out.terms["gradcam"])
    first_conv = next(name for name, m in model.named_modules() if isinstance(m, nn.Conv2d))
    cam, _ = baselines.grad_cam(model, x, labels, layer=first_conv, size=tuple(masks.shape[-2:]))
    out = baselines.gradcam_objective(_fake_module(model, gradcam_layer=first_conv), x, masks, labels)
    torch.testing.assert_close(out.terms["gradcam"], baselines.gradcam_loss(cam, masks))


def test_unknown_gradcam_layer_is_named_before_training():
    from isnet.training import ISNetModule

    with pytest.raises(ValueError, match="gradcam_layer 'nope' is not a module of small_cnn"):
        ISNetModule.from_config({"train": "x", "objective": "gradcam", "gradcam_layer": "nope", "num_classes": 3,
                     "image_size": 16})


# ---------------------------------------------------------------- segment-then-classify


class _Recorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = _tiny_cnn()
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.inner(x)


def test_masked_objective_zeroes_background_in_training_and_at_test_time():
    model = _Recorder()
    x, masks, labels = _batch()
    out = masked_objective(_fake_module(model), x, masks, labels)
    seen = model.seen[-1]
    assert torch.all(seen[:, :, masks[0, 0] == 0] == 0)
    torch.testing.assert_close(seen[:, :, 2:6, 2:6], x[:, :, 2:6, 2:6])
    assert out.loss.requires_grad

    assert get_objective("masked").masked_input and not get_objective("selective").masked_input
    test_x = classifier_input(x, masks, {"objective": "masked"})
    assert torch.all(test_x * (1 - masks) == 0)
    assert classifier_input(x, masks, {"objective": "standard"}) is x
    with pytest.raises(ValueError):
        classifier_input(x, None, {"objective": "masked"})


def test_baselines_are_registered_in_training_pipeline():
    for name in ("rrr", "gradcam", "masked"):
        objective = get_objective(name)
        assert objective.step.__module__ == baselines.__name__
        assert not objective.heatmap_loss  # no C1/C2 calibration
        assert objective.needs_masks
