"""The background audit: counterfactuals that keep the foreground and leak no donor object, a background reader
flagged and a foreground reader not, clear errors, and isnet audit / eval --audit end to end."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import isnet
from isnet.audit_stats import BACKGROUND, FOREGROUND, NO_RELIANCE, ORIGINAL, OTHER, REGIONS, RELIES, chance_accuracy
from isnet.background_audit import choose_donors, counterfactuals, neutral_fill
from isnet.cli import main
from isnet.errors import UserError
from isnet.models import build_model

from conftest import require

SIZE, SIDE = 16, 4  # image side, object side
CUE, OBJECT = 0.6, 1.0  # the class's channel: + CUE on the background (0.6-0.7), OBJECT on the object


def _data(n: int = 24, classes: int = 3, seed: int = 0):
    """Backgrounds in [0, 0.1] plus CUE in the class's channel; a SIDE x SIDE object at a random place, OBJECT in the
    class's channel and 0.1 in the others. Background pixels stay below 0.71, object pixels reach 1."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = 0.1 * torch.rand(n, 3, SIZE, SIZE, generator=g)
    images[torch.arange(n), labels % 3] += CUE
    masks = torch.zeros(n, 1, SIZE, SIZE)
    for i, (r, c) in enumerate(torch.randint(0, SIZE - SIDE + 1, (n, 2), generator=g).tolist()):
        masks[i, :, r:r + SIDE, c:c + SIDE] = 1
        images[i, :, r:r + SIDE, c:c + SIDE] = 0.1
        images[i, labels[i] % 3, r:r + SIDE, c:c + SIDE] = OBJECT
    return images, masks, labels


def _band_reader(classes: int, low: float, high: float) -> nn.Module:
    """Scores class k by the mean over pixels of a triangle of channel k % 3 that is positive on (low, high) only:
    relu(x - low) - 2 relu(x - mid) + relu(x - high). A conv, ReLU, conv, pool network LRP-Flex explains."""
    mid = (low + high) / 2
    first = nn.Conv2d(3, 3 * classes, 1)
    second = nn.Conv2d(3 * classes, classes, 1, bias=False)
    with torch.no_grad():
        first.weight.zero_()
        second.weight.zero_()
        for k in range(classes):
            first.weight[3 * k:3 * k + 3, k % 3] = 1.0
            first.bias[3 * k:3 * k + 3] = -torch.tensor([low, mid, high])
            second.weight[k, 3 * k:3 * k + 3, 0, 0] = torch.tensor([1.0, -2.0, 1.0])
    return nn.Sequential(first, nn.ReLU(), second, nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


def background_reader(classes: int = 3) -> nn.Module:
    """Reads the class off the background's cue (0.6-0.7) and ignores the object (1.0)."""
    return _band_reader(classes, 0.45, 0.85)


def foreground_reader(classes: int = 3) -> nn.Module:
    """Reads the class off the object (1.0) and ignores every background value (<= 0.71)."""
    return _band_reader(classes, 0.8, 1.2)


@pytest.mark.parametrize("classes", [2, 3])
def test_a_background_reader_is_flagged_and_a_foreground_reader_is_not(classes):
    images, masks, labels = _data(30, classes)
    bg = isnet.audit(background_reader(classes), images, masks, labels, resamples=200)
    fg = isnet.audit(foreground_reader(classes), images, masks, labels, resamples=200)
    assert bg["conditions"][ORIGINAL]["accuracy"] == fg["conditions"][ORIGINAL]["accuracy"] == 1.0
    assert bg["verdict"]["label"] == RELIES and "relies on the background" in bg["verdict"]["text"].lower()
    assert bg["conditions"][BACKGROUND]["accuracy"] == 1.0 and bg["conditions"][OTHER]["flip_rate"] == 1.0
    assert bg["conditions"][OTHER]["follows_background"] == 1.0
    assert bg["conditions"][OTHER]["follows_background_chance"] == pytest.approx(1 / (classes - 1))
    assert fg["verdict"]["label"] == NO_RELIANCE
    assert fg["conditions"][OTHER]["flip_rate"] == 0.0 and fg["conditions"][FOREGROUND]["accuracy"] == 1.0
    alone = fg["conditions"][BACKGROUND]
    assert alone["accuracy"] == pytest.approx(alone["accuracy_chance"])  # every filled image gets the same answer
    assert bg["cost"] == fg["cost"] == {"forward_passes_per_image": 4, "heatmap_passes_per_image": 0}


def test_the_heatmap_share_is_quoted_beside_and_the_result_is_seeded():
    images, masks, labels = _data()
    model = background_reader()
    first = isnet.audit(model, images, masks, labels, lrp=isnet.LRPFlex(model), resamples=100, seed=3)
    assert first["heatmap_background_share"] > 0.9
    assert "the verdict rests on the interventions" in first["verdict"]["text"]
    assert first["cost"]["heatmap_passes_per_image"] == 1
    again = isnet.audit(model, images, masks, labels, lrp=isnet.LRPFlex(model), resamples=100, seed=3)
    assert again == first
    assert json.loads(json.dumps(first)) == first  # JSON-ready as it is
    other = isnet.audit(model, images, masks, labels, resamples=100, seed=4)
    assert other["per_image"]["donor"] != first["per_image"]["donor"]


def test_counterfactuals_keep_the_foreground_exactly_and_no_donor_object_leaks():
    images, masks, labels = _data(40)
    donors = choose_donors(labels, torch.Generator().manual_seed(0))
    assert (labels[donors] != labels).all()
    regions = torch.zeros_like(masks)
    regions[:, :, :3, :3] = 1
    made = counterfactuals(images, masks, images[donors], masks[donors], neutral_fill(images, masks), regions)
    fg = masks.bool().expand_as(images)
    assert (masks[donors].bool() & ~masks.bool()).any()  # donors' objects lie where the recipients' do not
    for name in (OTHER, FOREGROUND):
        assert torch.equal(made[name][fg], images[fg]), name  # the foreground, pixel for pixel
    outside = made[OTHER][~fg]
    assert outside.max() < 0.71  # no pixel of any donor's object (1.0) shows on the background
    assert not torch.equal(made[OTHER][~fg], images[~fg])  # the background is the donor's
    assert made[BACKGROUND].max() < 0.71  # the object removed, filled from the surroundings
    assert torch.equal(made[BACKGROUND][~fg], images[~fg])
    fill, outside_mask = neutral_fill(images, masks), ~masks.bool()[:, 0]
    for c in range(3):  # one neutral constant per channel: the mean background pixel of the set
        assert fill[c] == pytest.approx(images[:, c][outside_mask].double().mean().item(), abs=1e-6)
        assert (made[FOREGROUND][:, c][outside_mask] == fill[c]).all()
    painted = regions.bool().expand_as(images)
    assert torch.equal(made[REGIONS][~painted], images[~painted])


def test_chance_accuracy_is_the_share_a_constant_answer_gets():
    labels = np.array([0, 0, 0, 1, 2, 2])
    assert chance_accuracy(np.zeros(6, dtype=int), labels, 3) == pytest.approx(0.5)
    assert chance_accuracy(np.array([0, 1, 2, 0, 1, 2]), labels, 3) == pytest.approx(1 / 3)


def test_bad_input_is_refused_with_a_clear_error():
    images, masks, labels = _data(12)
    model = foreground_reader()
    with pytest.raises(UserError, match="no foreground masks"):
        isnet.audit(model, images, None, labels)
    with pytest.raises(UserError, match="at least two classes"):
        isnet.audit(model, images, masks, torch.zeros(12, dtype=torch.long))
    with pytest.raises(UserError, match=r"masks must have shape .* matching the images"):
        isnet.audit(model, images, masks[..., :8, :8], labels)
    with pytest.raises(UserError, match="masks must have shape"):
        isnet.audit(model, images, masks[:6], labels)
    with pytest.raises(UserError, match="labels must have shape"):
        isnet.audit(model, images, masks, labels[:6])
    with pytest.raises(UserError, match=r"class indices in \[0, 3\)"):
        isnet.audit(model, images, masks, labels + 2)


def _write_set(root, images, masks, labels, names, sixteen_bit: bool = False) -> None:
    for i, (x, m, y) in enumerate(zip(images, masks, labels.tolist())):
        (root / "images" / names[y]).mkdir(parents=True, exist_ok=True)
        (root / "masks" / names[y]).mkdir(parents=True, exist_ok=True)
        rgb = (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        if sixteen_bit:  # a 16-bit grayscale file, as X-rays come (read through isnet.data.imageio)
            Image.fromarray((rgb.mean(2) * 257).astype(np.uint16)).save(root / "images" / names[y] / f"{i}.png")
        else:
            Image.fromarray(rgb).save(root / "images" / names[y] / f"{i}.png")
        Image.fromarray((m[0].numpy() * 255).astype(np.uint8)).save(root / "masks" / names[y] / f"{i}.png")


@pytest.mark.e2e
def test_isnet_audit_and_eval_audit_end_to_end(tmp_path, capsys):
    names = ["cat", "dog", "fox"]
    images, masks, labels = _data(12)
    _write_set(tmp_path / "test", images, masks, labels, names)
    _write_set(tmp_path / "gray", images, masks, labels, names, sixteen_bit=True)
    regions = tmp_path / "regions"
    for i, y in enumerate(labels.tolist()):
        (regions / names[y]).mkdir(parents=True, exist_ok=True)
        corner = np.zeros((SIZE, SIZE), np.uint8)
        corner[:3, :3] = 255
        Image.fromarray(corner).save(regions / names[y] / f"{i}.png")
    run = _run_folder(tmp_path / "run", names)
    out = tmp_path / "audit"
    assert main(["audit", "--checkpoint", str(run), "--test", f"rgb={tmp_path / 'test'}", "--test",
                 f"gray={tmp_path / 'gray'}", "--regions", f"rgb={regions}", "--out", str(out), "--resamples", "50",
                 "--examples", "3", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "cost: 5 forward passes per image" in printed and "wrote" in printed
    report = json.loads((out / "audit.json").read_text())
    assert set(report["tests"]) == {"rgb", "gray"} and report["model"]["classes"] == names
    assert REGIONS in report["tests"]["rgb"]["conditions"] and REGIONS not in report["tests"]["gray"]["conditions"]
    assert report["tests"]["rgb"]["heatmap_background_share"] is not None
    assert "| test set |" in (out / "audit.md").read_text()
    assert "data:image/png;base64" in (out / "audit.html").read_text()
    # a second audit replaces its own files
    assert main(["audit", "--checkpoint", str(run), "--test", f"rgb={tmp_path / 'test'}", "--out", str(out),
                 "--resamples", "20", "--examples", "0", "--no-relevance"]) == 0
    assert json.loads((out / "audit.json").read_text())["tests"]["rgb"]["heatmap_background_share"] is None
    # a folder holding someone else's file, an output inside the input, a test set without masks: refused
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    capsys.readouterr()
    assert main(["audit", "--checkpoint", str(run), "--test", f"rgb={tmp_path / 'test'}", "--out", str(mine)]) == 2
    assert "which isnet did not write" in capsys.readouterr().err and (mine / "notes.txt").read_text() == "keep"
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert main(["audit", "--checkpoint", str(run), "--test", f"rgb={tmp_path / 'test'}", "--out",
                 str(tmp_path / "test" / "audit")]) == 2
    assert "inside the input" in capsys.readouterr().err
    bare = tmp_path / "bare"
    _write_set(bare, images, masks, labels, names)
    shutil.rmtree(bare / "masks")
    assert main(["audit", "--checkpoint", str(run), "--test", f"bare={bare}", "--out", str(tmp_path / "o2")]) == 2
    assert "has no foreground masks" in capsys.readouterr().err
    # any model isnet can load: an architecture with a state dict
    weights = tmp_path / "weights.pt"
    torch.save(_small_cnn_state(), weights)
    assert main(["audit", "--arch", "small_cnn", "--weights", str(weights), "--num-classes", "3", "--test",
                 f"rgb={tmp_path / 'test'}", "--out", str(tmp_path / "o3"), "--resamples", "20",
                 "--examples", "2"]) == 0
    # eval --audit adds the same numbers to the evaluation
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--test", f"rgb={tmp_path / 'test'}", "--audit",
                 "--json", str(tmp_path / "eval.json")]) == 0
    assert "Background audit:" in capsys.readouterr().out
    evaluated = json.loads((tmp_path / "eval.json").read_text())["rgb"]
    assert evaluated["audit"]["verdict"]["label"] and evaluated["background_relevance"] == pytest.approx(
        evaluated["audit"]["heatmap_background_share"])


def _small_cnn_state(classes: int = 3) -> dict:
    torch.manual_seed(0)
    return build_model("small_cnn", classes, image_size=SIZE).state_dict()


def _run_folder(run, names):
    """A run folder as isnet train leaves it: config.json and model.pt (a small_cnn, untrained)."""
    run.mkdir()
    config = {"arch": "small_cnn", "num_classes": len(names), "image_size": SIZE, "objective": "standard",
              "epsilon": 0.01, "zb": True, "classes": names}
    (run / "config.json").write_text(json.dumps(config))
    torch.save(_small_cnn_state(len(names)), run / "model.pt")
    return run


def test_isnet_audit_reads_dicom_test_sets(tmp_path, capsys):
    require("pydicom")
    from test_dicom import write_dicom

    images, masks, labels = _data(8, classes=2)
    for i, (x, m, y) in enumerate(zip(images, masks, labels.tolist())):
        for tree in ("images", "masks"):
            (tmp_path / "dcm" / tree / str(y)).mkdir(parents=True, exist_ok=True)
        write_dicom(tmp_path / "dcm" / "images" / str(y) / f"{i}.dcm", (x.mean(0).numpy() * 4095).astype(np.uint16))
        Image.fromarray((m[0].numpy() * 255).astype(np.uint8)).save(tmp_path / "dcm" / "masks" / str(y) / f"{i}.png")
    run = _run_folder(tmp_path / "run", ["0", "1"])
    assert main(["audit", "--checkpoint", str(run), "--test", f"xray={tmp_path / 'dcm'}", "--out",
                 str(tmp_path / "out"), "--resamples", "20", "--examples", "2"]) == 0
    report = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert report["tests"]["xray"]["n"] == 8 and report["tests"]["xray"]["num_classes"] == 2
