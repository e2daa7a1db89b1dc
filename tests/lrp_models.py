"""Models and checks shared by the LRP-Flex tests (tests/test_lrp_*.py and the tests that explain)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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



def bias_free_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(8 * 8 * 8, 16, bias=False), nn.ReLU(), nn.Linear(16, 5, bias=False),
    )



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



def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()

