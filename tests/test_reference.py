"""Reproduce the numbers computed with the authors' reference implementation (SPEC section 5)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import float_state, ref_resnet, seqcnn
from isnet import ISNet, ISNetLoss, explain, heatmap_loss
from isnet.recipe import REFERENCE

RTOL = 1e-5
# the reference numbers were computed with the papers' values, not isnet train's defaults
PAPER_LOSS = {"d": REFERENCE["d"], "B": 1.0, "foreground": REFERENCE["foreground"]}  # B 1: the papers


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL) -> None:
    """Max abs error relative to the largest reference magnitude."""
    scale = expected.abs().max().clamp_min(1e-30)
    err = ((actual - expected).abs().max() / scale).item()
    assert err < rtol, f"relative error {err:.3e}"


class FunctionalSeqCNN(nn.Module):
    """seqcnn written the awkward way: one reused in-place ReLU module and functional ReLUs."""

    def __init__(self) -> None:
        super().__init__()
        self.body = seqcnn()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.body
        x = b[2](self.act(b[0](x)))
        x = b[5](F.relu(b[3](x), inplace=True))
        x = self.act(b[7](x.flatten(1)))
        return b[9](x)


def load_seqcnn(ref: dict, functional: bool = False) -> nn.Module:
    model = FunctionalSeqCNN() if functional else seqcnn()
    target = model.body if functional else model
    target.load_state_dict(float_state(ref["seqcnn"]["state_dict"]))
    return model


@pytest.mark.parametrize("functional", [False, True], ids=["modules", "reused-inplace-functional"])
@pytest.mark.parametrize("zb", [0, 1])
def test_seqcnn_label_heatmaps(reference, functional, zb):
    r = reference["seqcnn"]
    model = load_seqcnn(reference, functional).eval()
    x = r["x"].float()
    assert_close(model(x), r["logits"])
    assert_close(explain(model, x, r["y"], zb=bool(zb)), r[f"heat_labels_zb{zb}"])


def test_seqcnn_all_classes(reference):
    r = reference["seqcnn"]
    heat = explain(load_seqcnn(reference).eval(), r["x"].float(), "all")
    assert heat.shape == (4, 5, 3, 32, 32)
    assert_close(heat, r["heat_allclasses_zb1"])


@pytest.mark.parametrize("zb", [0, 1])
def test_resnet_label_heatmaps(reference, zb):
    r = reference["resnet"]
    model = ref_resnet()
    model.load_state_dict(float_state(r["state_dict"]))
    assert_close(explain(model.eval(), r["x"].float(), r["y"], zb=bool(zb)), r[f"heat_labels_zb{zb}"])


def _check_training(model: nn.Module, grad_owner: nn.Module, r: dict, objective: str, key: str) -> None:
    net = ISNet(model, objective, batch_stats=REFERENCE["batch_stats"]).train()
    logits, heat = net(r["x"].float(), heatmaps=True)
    terms = ISNetLoss(P=REFERENCE["P"], **PAPER_LOSS)(logits, r["y"], heat, r["mask"])
    terms.total.backward()
    ref = r[key]
    assert_close(heat, ref["heat"])
    assert_close(terms.cross_entropy, ref["ce"])
    assert_close(terms.heatmap, ref["heatmap_loss"])
    params = dict(grad_owner.named_parameters())
    for name, grad in ref["grad"].items():
        assert_close(params[name].grad, grad)


@pytest.mark.parametrize("functional", [False, True], ids=["modules", "reused-inplace-functional"])
@pytest.mark.parametrize("objective", ["selective", "original"])
def test_seqcnn_training_step(reference, objective, functional):
    model = load_seqcnn(reference, functional)
    owner = model.body if functional else model
    _check_training(model, owner, reference["seqcnn"], objective, f"train_{objective}")


def test_resnet_training_step(reference):
    model = ref_resnet()
    model.load_state_dict(float_state(reference["resnet"]["state_dict"]))
    _check_training(model, model, reference["resnet"], "selective", "train_selective")


CONFIGS = {
    "L2_d0.9": {},
    "hybrid_d0.996_E10_B3": dict(foreground="hybrid", d=0.996, E=10.0, B=3.0),
    "hybrid_C1_0.05_C2_0.5": dict(foreground="hybrid", C1=0.05, C2=0.5),
    "L2_d0_RoIMean": dict(d=0.0, norm="RoIMean"),
}


@pytest.mark.parametrize("mask", ["mask32", "mask64"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_heatmap_loss(reference, name, mask):
    r = reference["loss"]
    assert_close(heatmap_loss(r["H"], r[mask], **(PAPER_LOSS | CONFIGS[name])), r[name][mask])
