"""Decoy-Digits, and isnet's RRR penalty reproducing the Right for the Right Reasons effect.

Ross et al. (2017) report, on Decoy-MNIST with a 2-layer ReLU MLP, about 52% test accuracy
without the penalty and about 96% with it. The same construction on scikit-learn's digits must
show the same kind of gap with :func:`isnet.objectives.baselines.rrr_penalty` (the digits are
easier than MNIST, so the plain MLP loses less: about 80% here).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from isnet.data.digits.decoy_digits import CANVAS, SWATCH, generate
from isnet.objectives.baselines import rrr_penalty


def test_swatch_encodes_the_class_in_training_only():
    train, test = generate("train"), generate("test")
    assert train.images.shape[1:] == (1, CANVAS, CANVAS) and len(train.labels) + len(test.labels) == 1797
    on_swatch = (train.masks == 0)
    assert torch.equal(on_swatch.flatten(1).sum(1), torch.full((len(train.labels),), SWATCH * SWATCH))
    grey = (train.images * on_swatch).flatten(1).sum(1) / (SWATCH * SWATCH)
    torch.testing.assert_close(grey, (255 - 25 * train.labels.float()) / 255)
    test_grey = (test.images * (test.masks == 0)).flatten(1).sum(1) / (SWATCH * SWATCH)
    assert abs(torch.corrcoef(torch.stack([test_grey, test.labels.float()]))[0, 1]) < 0.15
    assert torch.equal(generate("train").images, train.images)  # deterministic


def _fit_mlp(lam: float, steps: int = 300) -> float:
    torch.manual_seed(0)
    train, test = generate("train"), generate("test")
    model = nn.Sequential(nn.Flatten(), nn.Linear(CANVAS * CANVAS, 50), nn.ReLU(), nn.Linear(50, 30), nn.ReLU(),
                          nn.Linear(30, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        penalty, logits = rrr_penalty(model, train.images, train.masks) if lam else (0.0, model(train.images))
        loss = F.cross_entropy(logits, train.labels) + lam * penalty
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (model(test.images).argmax(1) == test.labels).float().mean().item()


@pytest.mark.e2e
def test_rrr_penalty_removes_the_decoy_shortcut():
    plain, rrr = _fit_mlp(0.0), _fit_mlp(1000.0)
    assert plain < 0.88, f"the plain MLP should read the swatch (test accuracy {plain:.2f})"
    assert rrr > 0.95 and rrr > plain + 0.12, f"RRR should ignore the swatch ({plain:.2f} -> {rrr:.2f})"
