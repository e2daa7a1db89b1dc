"""isnet segment train|predict|eval (MONAI U-Net, Lightning) and the segment-then-classify baseline."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import require

require("monai")

from isnet.cli import main  # noqa: E402
from isnet.data import MaskedImageFolder, write_dataset  # noqa: E402

TINY = ["--width", "4", "--depth", "3", "--res-units", "0", "--batch-size", "16", "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """BG-Digits (digit boxes as masks) and a segmenter trained on it for one epoch."""
    root = tmp_path_factory.mktemp("segment")
    data = write_dataset(root / "bg", seed=0, n_train=30, n_val=10, n_test=10)
    seg = root / "seg"
    assert main(["segment", "train", "--train", str(data["train"]), "--val", str(data["val"]), "--epochs", "1",
                 "--out", str(seg), *TINY]) == 0
    return {"root": root, "data": data, "seg": seg}


@pytest.mark.e2e
def test_segment_train_resume_predict_and_eval(space, capsys):
    seg, data, root = space["seg"], space["data"], space["root"]
    assert {"config.json", "model.pt", "metrics.csv", "checkpoints"} <= {p.name for p in seg.iterdir()}
    config = json.loads((seg / "config.json").read_text())
    assert (config["objective"], config["image_size"], config["in_channels"]) == ("unet", 32, 3)
    assert "val/dice" in (seg / "metrics.csv").read_text().splitlines()[0]
    assert main(["segment", "train", "--out", str(seg), "--resume", "--epochs", "1", "--quiet"]) == 2
    assert "above 1" in capsys.readouterr().err  # a finished run continues only to train longer
    assert main(["segment", "train", "--out", str(seg), "--resume", "--epochs", "2", "--lr", "0.1"]) == 2
    assert "--lr 0.1" in capsys.readouterr().err
    assert main(["segment", "train", "--out", str(seg), "--resume", "--epochs", "2", "--quiet"]) == 0
    assert torch.load(seg / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1

    pred = root / "pred"
    assert main(["segment", "predict", "--model", str(seg), "--images", str(data["test/unbiased"]),
                 "--out", str(pred)]) == 0
    assert "wrote 10 masks" in capsys.readouterr().out
    predicted = MaskedImageFolder(pred)  # a dataset isnet train reads as it is: images/ links to the input
    assert len(predicted) == 10 and predicted.classes == MaskedImageFolder(data["test/unbiased"]).classes
    first = next((pred / "masks").rglob("*.png"))
    assert set(np.unique(np.asarray(Image.open(first)))) <= {0, 255} and Image.open(first).size == (32, 32)
    assert main(["segment", "predict", "--model", str(seg), "--images", str(data["test/unbiased"]),
                 "--out", str(pred)]) == 0  # its own masks may be replaced
    mine = root / "pred2" / "masks" / first.parent.name / first.name  # a file isnet did not write
    mine.parent.mkdir(parents=True)
    shutil.copy(first, mine)
    assert main(["segment", "predict", "--model", str(seg), "--images", str(data["test/unbiased"]),
                 "--out", str(root / "pred2")]) == 2
    assert "did not write it" in capsys.readouterr().err and not (root / "pred2" / "images").exists()
    assert main(["segment", "predict", "--model", str(seg), "--images", str(data["test/unbiased"] / "images"),
                 "--out", str(data["test/unbiased"] / "images" / "x")]) == 2
    assert "inside the input" in capsys.readouterr().err

    out = root / "eval.json"
    assert main(["segment", "eval", "--model", str(seg), "--test", f"val={data['val']}", "--json", str(out)]) == 0
    scores = json.loads(out.read_text())["val"]
    assert scores["n"] == 10 and 0 <= scores["iou"] <= scores["dice"] <= 1


def test_segment_input_errors(space, tmp_path, capsys):
    data = space["data"]
    assert main(["segment", "train", "--train", str(data["train"]), "--image-size", "30", "--out",
                 str(tmp_path / "s"), *TINY]) == 2
    assert "not a multiple of 4" in capsys.readouterr().err
    bad = tmp_path / "bad"
    shutil.copytree(data["val"], bad)
    mask = next((bad / "masks").rglob("*.png"))
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(mask)
    assert main(["segment", "eval", "--model", str(space["seg"]), "--test", f"bad={bad}"]) == 2
    err = capsys.readouterr().err
    assert str(mask) in err and "20x20" in err
    assert main(["segment", "predict", "--model", str(tmp_path), "--images", str(bad), "--out",
                 str(tmp_path / "p")]) == 2
    assert "isnet segment train" in capsys.readouterr().err


@pytest.mark.e2e
def test_segment_then_classify(space, tmp_path, capsys):
    from isnet.checkpoints import classifier_input, load_classifier
    from isnet.segment.predict import predicted_masks

    data, seg = space["data"], space["seg"]
    fast = ["--epochs", "1", "--batch-size", "16", "--workers", "0", "--quiet"]
    assert main(["train", "--train", str(data["train"]), "--objective", "seg-classify", "--out",
                 str(tmp_path / "x"), *fast]) == 2
    assert "--segmenter RUN" in capsys.readouterr().err
    assert main(["train", "--train", str(data["train"]), "--objective", "standard", "--segmenter", str(seg),
                 "--out", str(tmp_path / "x"), *fast]) == 2
    assert "seg-classify only" in capsys.readouterr().err
    run = tmp_path / "run"
    assert main(["train", "--train", str(data["train"]), "--val", str(data["val"]), "--objective", "seg-classify",
                 "--segmenter", str(seg), "--out", str(run), *fast]) == 0
    assert "train/foreground" in (run / "metrics.csv").read_text().splitlines()[0]
    _, config = load_classifier(run)
    assert config["segmenter"] == str(seg.resolve())
    x = torch.rand(2, 3, 32, 32)
    masks = predicted_masks(seg, x)
    seen = classifier_input(x, torch.ones(2, 1, 32, 32), config)  # the true masks are not used
    assert torch.equal(seen, x * masks)
    no_masks = tmp_path / "external"  # a test set without masks: the segmenter supplies them
    shutil.copytree(data["test/unbiased"] / "images", no_masks / "images")
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(run), "--test", f"external={no_masks}", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["external"]["n"] == 10


def test_binary_masks_keep_the_largest_regions():
    """Regions of known sizes: the N largest survive whole (8-connected: a diagonal step joins), nothing else."""
    from isnet.segment.predict import binary_masks

    prob = torch.full((1, 40, 40), 0.2)
    regions = [(slice(1, 9), slice(1, 9)), (slice(20, 26), slice(2, 8)), (slice(30, 34), slice(30, 34)),
               (slice(12, 14), slice(30, 32))]  # 64, 36, 16, 4 pixels
    for rows, cols in regions:
        prob[0, rows, cols] = 0.9
    prob[0, 9, 9] = 0.7  # touches the first square diagonally only: part of it under 8-connectivity
    prob[0, 38, 1] = 0.51  # a one-pixel speck
    for n in (1, 2, 3):
        (kept,) = binary_masks([prob], n)
        expected = torch.zeros(1, 40, 40, dtype=torch.bool)
        for rows, cols in regions[:n]:
            expected[0, rows, cols] = True
        expected[0, 9, 9] = True
        assert type(kept) is torch.Tensor and kept.dtype == torch.bool and torch.equal(kept, expected), n
    (every,) = binary_masks([prob], 0)
    assert torch.equal(every, prob > 0.5) and every.sum() == 64 + 36 + 16 + 4 + 2


@pytest.mark.e2e
def test_predict_and_eval_keep_the_requested_regions(space, capsys):
    from scipy import ndimage

    seg, data, root = space["seg"], space["data"], space["root"]
    out = root / "one"
    assert main(["segment", "predict", "--model", str(seg), "--images", str(data["test/unbiased"]),
                 "--out", str(out), "--components", "1"]) == 0
    assert json.loads((out / "segment-masks.json").read_text())["components"] == 1
    for mask in (out / "masks").rglob("*.png"):
        assert ndimage.label(np.asarray(Image.open(mask)) > 0, structure=np.ones((3, 3)))[1] <= 1
    with pytest.raises(SystemExit):
        main(["segment", "eval", "--model", str(seg), "--test", f"val={data['val']}", "--components", "-1"])
    assert "--components: must be >= 0" in capsys.readouterr().err


def test_seg_classify_is_evaluated_on_the_segmenters_masks(monkeypatch):
    """At test time (benchmarks, isnet eval) a seg-classify classifier sees the image masked by the segmenter's
    prediction, never by the true masks."""
    import isnet.objectives.segmented
    from isnet import LRPFlex
    from isnet.evaluate import predict_batch
    from isnet.small_models import small_cnn

    calls = []

    def predicted(run, images):
        calls.append(run)
        keep = torch.zeros(len(images), 1, *images.shape[-2:])
        keep[..., 8:24, 8:24] = 1  # a square the true masks below do not have
        return keep

    monkeypatch.setattr(isnet.objectives.segmented, "predicted_masks", predicted)
    torch.manual_seed(0)
    model = small_cnn(3).eval()
    images, true_masks = torch.rand(4, 3, 32, 32), torch.ones(4, 1, 32, 32)
    config = {"objective": "seg-classify", "segmenter": "runs/seg", "epsilon": 0.01, "zb": True}
    logits, heat = predict_batch(model, LRPFlex(model), config, images, true_masks)
    square = torch.zeros_like(images)
    square[..., 8:24, 8:24] = images[..., 8:24, 8:24]
    assert calls == ["runs/seg"] and torch.allclose(logits, model(square), atol=1e-6)
    assert torch.allclose(heat, LRPFlex(model).explain_prediction(square)[1], atol=1e-7)  # the masked image's map


@pytest.mark.e2e
def test_segment_train_with_ddp_on_two_processes(space, tmp_path):
    """``isnet segment train --strategy ddp --devices 2``: Lightning relaunches the command; one run folder."""
    import os
    import subprocess
    import sys

    data, run = space["data"], tmp_path / "seg-ddp"
    cmd = [sys.executable, "-m", "isnet.cli", "segment", "train", "--train", str(data["train"]), "--val",
           str(data["val"]), "--epochs", "1", "--out", str(run), "--accelerator", "cpu", "--devices", "2",
           "--strategy", "ddp", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("segmentation run written to") == 1
    assert json.loads((run / "config.json").read_text())["devices"] == 2
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 1  # 30 / (2 x 16)
    assert (run / "model.pt").is_file() and "val/dice" in (run / "metrics.csv").read_text().splitlines()[0]
