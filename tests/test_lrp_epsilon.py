"""LRP-epsilon through ReLU-type activations: gradient x input at eps = 0, zennit, conservation, hand-computed
piecewise rules (SPEC section 1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from isnet import LRPFlex, UnsupportedModelError, explain
from lrp_models import TwinAwkward, TwinModules, VGGLike, bias_free_net, grad_x_input, randomise_bn, rel_err


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

