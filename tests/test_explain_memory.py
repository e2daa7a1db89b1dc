"""Issue 25: an image too large to explain at its native size is refused (or warned about) with
--image-size advice before the pass runs, from an estimate that grows with the pixel count."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import isnet.explain_memory as explain_memory
from isnet.cli import main
from isnet.errors import IsnetWarning, UserError
from isnet.explain_memory import BACKWARD_FACTOR, available_memory, check_lrp_memory, lrp_memory_estimate


def _conv_net() -> nn.Sequential:
    """Fully convolutional (any input size), so its saved activations are pixels x channels."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()


def _cli(argv: list) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as stop:  # argparse
        return int(stop.code)


def test_the_estimate_grows_linearly_with_pixels_and_batch():
    model = _conv_net()
    estimates = {s: lrp_memory_estimate(model, (s, s)) for s in (32, 64, 128)}
    assert all(isinstance(e, int) and e > 0 for e in estimates.values())
    per_pixel = {s: e / (s * s) for s, e in estimates.items()}
    assert per_pixel[64] == pytest.approx(per_pixel[128], rel=0.02)
    assert per_pixel[32] == pytest.approx(per_pixel[128], rel=0.05)
    # independent re-computation: the distinct storages a real (CPU) traced pass saves, parameters excluded
    from isnet.lrp import LRPFlex

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        trace = LRPFlex(model).trace(torch.rand(1, 3, 128, 128), keep_buffers=True)
    real = (sum(storages.values()) + trace.output.nbytes) * BACKWARD_FACTOR
    assert real / 1.25 <= estimates[128] <= real * 1.25
    assert estimates[128] >= BACKWARD_FACTOR * 4 * (3 + 4) * 128 * 128  # at least the input and the last conv
    assert lrp_memory_estimate(model, (64, 64), batch=4) == pytest.approx(4 * estimates[64], rel=1e-6)
    assert next(model.parameters()).device.type == "cpu"  # the model itself is untouched


def test_available_memory_reads_the_system():
    free = available_memory()
    assert free is None or free > 0


def test_too_little_memory_is_refused_and_half_of_it_warns(monkeypatch, tmp_path):
    model = _conv_net()
    need = lrp_memory_estimate(model, (64, 64))
    monkeypatch.setattr(explain_memory, "available_memory", lambda device="cpu": need // 2)
    with pytest.raises(UserError, match=r"big\.png.*--image-size \d+"):
        check_lrp_memory(model, (64, 64), image=tmp_path / "big.png")
    monkeypatch.setattr(explain_memory, "available_memory", lambda device="cpu": int(need * 1.5))
    with pytest.warns(IsnetWarning, match="--image-size"):
        check_lrp_memory(model, (64, 64), image=tmp_path / "big.png")
    monkeypatch.setattr(explain_memory, "available_memory", lambda device="cpu": need * 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_lrp_memory(model, (64, 64), image=tmp_path / "big.png") == need


def test_a_huge_image_is_refused_through_the_cli(monkeypatch, tmp_path, capsys):
    big = tmp_path / "huge.png"
    Image.fromarray(np.full((320, 320, 3), 80, np.uint8)).save(big)
    monkeypatch.setattr(explain_memory, "available_memory", lambda device="cpu": 8 * 2**20)  # 8 MB free
    out = tmp_path / "heat"
    code = _cli(["explain", "--arch", "small_cnn", "--num-classes", "2", "--images", big, "--out", out])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "error:" in err
    assert str(big) in err and "320x320" in err and "--image-size" in err
    assert not out.exists()


def test_a_normal_image_is_explained_without_a_memory_warning(tmp_path, capsys):
    photo = tmp_path / "a.png"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(photo)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = _cli(["explain", "--arch", "small_cnn", "--num-classes", "2", "--images", photo, "--out",
                     tmp_path / "heat"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "heat" / "a.png").exists()
    assert "memory" not in capsys.readouterr().err
    assert not [w for w in caught if "memory" in str(w.message)]
