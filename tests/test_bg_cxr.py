"""Tests for BG-CXR: real lung masks, chest rendering, hospital shortcuts and the folder layout."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from isnet.data import MaskedImageFolder
from isnet.data.cxr.bg_cxr import (
    CLASS_HOSPITALS,
    CLASSES,
    EXTERNAL_HOSPITALS,
    HOSPITALS,
    generate,
    hospital_class,
    to_tensors,
    write_dataset,
)
from isnet.data.cxr.lungs import REJECT_REASONS, archive_path, lung_catalogue, lung_pools

TRAINING_HOSPITALS = {h for group in CLASS_HOSPITALS for h in group}


@pytest.fixture(scope="module")
def train128():
    return generate(30, split="train", seed=0, image_size=128)


# --------------------------------------------------------------------------- lung masks


def test_catalogue_keeps_clean_pairs_of_lungs():
    cat = lung_catalogue()
    with zipfile.ZipFile(archive_path()) as archive:
        members = [m for m in archive.namelist() if not m.endswith("/")]
    assert len(cat) + len(cat.rejected) == len(members)  # every mask is kept or has a reason
    assert 300 < len(cat) < len(members)
    assert set(cat.rejected.values()) <= set(REJECT_REASONS)
    for crop in cat.crops:
        assert crop.dtype == bool and not crop.flags.writeable
        assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()  # tight crop
        assert ndimage.label(crop, structure=np.ones((3, 3)))[1] == 2


def test_lung_pools_are_disjoint_and_keep_duplicates_together():
    pools = lung_pools(0)
    groups = lung_catalogue().groups
    sets = {name: set(idx.tolist()) for name, idx in pools.items()}
    assert sum(len(s) for s in sets.values()) == len(lung_catalogue())
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"] and not sets["val"] & sets["test"]
    for a in pools:
        for b in pools:
            if a != b:
                assert not set(groups[pools[a]]) & set(groups[pools[b]])
    assert 0.55 < len(sets["train"]) / len(groups) < 0.65
    assert not np.array_equal(lung_pools(1)["test"], pools["test"])
    d = generate(9, split="val", seed=0, image_size=64)
    assert set(d.lung_ids.tolist()) <= sets["val"]


# --------------------------------------------------------------------------- generation


def test_generate_is_deterministic():
    a = generate(6, split="test", seed=3, bias="deceiving", image_size=64)
    b = generate(6, split="test", seed=3, bias="deceiving", image_size=64)
    c = generate(6, split="test", seed=4, bias="deceiving", image_size=64)
    for field in ("images", "masks", "labels", "hospitals", "shortcut_masks", "lung_ids"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert not np.array_equal(a.images, c.images)
    assert a.images.dtype == np.uint8 and a.images.shape == (6, 64, 64)
    assert a.masks.dtype == bool and a.shortcut_masks.dtype == bool


def test_test_sets_are_the_same_patients_at_other_hospitals():
    biased = generate(6, split="test", seed=0, bias="biased", image_size=64)
    deceiving = generate(6, split="test", seed=0, bias="deceiving", image_size=64)
    assert np.array_equal(biased.labels, deceiving.labels)
    assert np.array_equal(biased.lung_ids, deceiving.lung_ids)
    assert not np.array_equal(biased.hospitals, deceiving.hospitals)


def test_masks_are_the_rendered_lungs(train128):
    d = train128
    for img, mask in zip(d.images.astype(np.float32), d.masks):
        assert ndimage.label(mask, structure=np.ones((3, 3)))[1] == 2  # two lungs
        ring = ndimage.binary_dilation(mask, iterations=4) & ~mask
        inside, around = img[mask].mean(), img[ring].mean()
        assert inside < around - 20  # lungs are darker than the tissue and bone around them
        moved = np.roll(mask, 5, axis=1)  # a misaligned mask mixes lung and body pixels
        moved_ring = ndimage.binary_dilation(moved, iterations=4) & ~moved
        assert around - inside > img[moved_ring].mean() - img[moved].mean() + 5
        area = mask.mean()
        assert 0.06 < area < 0.45


def test_shortcuts_are_outside_the_lungs_and_fixed_per_hospital(train128):
    d = train128
    assert d.shortcut_masks.any(axis=(1, 2)).all()
    assert not (d.shortcut_masks & d.masks).any()
    for h in np.unique(d.hospitals):
        same = d.shortcut_masks[d.hospitals == h]
        assert (same.mean(0) > 0.5).sum() > 0.5 * same[0].sum()  # the same place in every image
    # the overlays are burned in: most of their pixels are near black or white
    values = d.images[d.shortcut_masks]
    assert ((values < 40) | (values > 215)).mean() > 0.5


@pytest.mark.parametrize("correlation", [0.95, 0.6])
def test_biased_hospital_follows_the_class(correlation):
    d = generate(60, split="val", seed=0, bias="biased", image_size=64, correlation=correlation)
    assert np.bincount(d.labels).tolist() == [20, 20, 20]
    assert set(d.hospitals.tolist()) <= TRAINING_HOSPITALS
    own = np.array([hospital_class(h) for h in d.hospitals]) == d.labels
    for label in range(len(CLASSES)):
        assert own[d.labels == label].mean() == pytest.approx(round(correlation * 20) / 20)


def test_external_and_deceiving_hospitals():
    ext = generate(12, split="test", seed=0, bias="external", image_size=64)
    assert set(ext.hospitals.tolist()) == set(EXTERNAL_HOSPITALS)
    assert not set(EXTERNAL_HOSPITALS) & TRAINING_HOSPITALS
    for label in range(len(CLASSES)):  # class-balanced over the external hospitals
        assert np.bincount(ext.hospitals[ext.labels == label], minlength=8)[list(EXTERNAL_HOSPITALS)].tolist() == [2, 2]
    dec = generate(12, split="test", seed=0, bias="deceiving", image_size=64)
    classes = np.array([hospital_class(h) for h in dec.hospitals])
    assert (classes >= 0).all() and (classes != dec.labels).all()
    unb = generate(12, split="test", seed=0, bias="unbiased", image_size=64)
    assert set(unb.hospitals.tolist()) <= TRAINING_HOSPITALS
    assert len(HOSPITALS) == 8 and hospital_class(6) == -1


def test_invalid_arguments():
    with pytest.raises(ValueError, match="split"):
        generate(1, split="dev", seed=0)
    with pytest.raises(ValueError, match="bias"):
        generate(1, split="train", seed=0, bias="unknown")
    with pytest.raises(ValueError, match="image_size"):
        generate(1, split="train", seed=0, image_size=32)
    with pytest.raises(ValueError, match="correlation"):
        generate(1, split="train", seed=0, correlation=1.5)


# --------------------------------------------------------------------------- layout


def test_write_dataset_round_trip(tmp_path):
    kw = dict(seed=0, n_train=6, n_val=3, n_test=3, image_size=64)
    paths = write_dataset(tmp_path / "a", **kw)
    assert sorted(paths) == ["test/biased", "test/deceiving", "test/external", "train", "val"]
    train = MaskedImageFolder(paths["train"])
    assert train.classes == list(CLASSES)
    d = generate(6, split="train", seed=0, image_size=64)
    order = np.argsort([int(p.stem) for p, _, _ in train.samples])
    images, masks, labels = to_tensors(d)
    for k, i in enumerate(order):
        image, mask, label = train[int(i)]
        assert label == labels[k]
        assert torch.allclose(image, images[k], atol=1e-6) and torch.equal(mask, masks[k])
    for name, root in paths.items():
        test = MaskedImageFolder(root, classes=train.classes)
        assert len(test) == (6 if name == "train" else 3)
        assert len(list((root / "shortcuts").rglob("*.png"))) == len(test)
        rows = list(csv.DictReader(open(root / "index.csv", encoding="utf-8")))
        assert [r["file"].split("/")[0] for r in rows] == [r["class"] for r in rows]
    ext_rows = list(csv.DictReader(open(paths["test/external"] / "index.csv", encoding="utf-8")))
    assert {int(r["hospital"]) for r in ext_rows} <= set(EXTERNAL_HOSPITALS)
    meta = json.loads((tmp_path / "a" / "bg-cxr.json").read_text())
    assert meta["seed"] == 0 and meta["classes"] == list(CLASSES)
    assert meta["lung_masks"]["kept"] == len(lung_catalogue())

    write_dataset(tmp_path / "b", **kw)  # byte-identical files
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    with pytest.raises(FileExistsError):
        write_dataset(tmp_path / "a", **kw)


def test_example_figures_draw():
    from isnet.data.cxr.figure import classes_figure, examples_figure

    for fig in (examples_figure(seed=0, image_size=64), classes_figure(seed=0, image_size=64)):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=40)
        assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- shortcut strength


def _tiny_cnn(size: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * (size // 8) ** 2, 64), nn.ReLU(), nn.Linear(64, 3),
    )  # fmt: skip


def _inputs(d) -> torch.Tensor:
    return torch.from_numpy(d.images).float()[:, None] / 255 - 0.5


@pytest.mark.e2e
def test_a_standard_cnn_learns_the_hospital_shortcut():
    """180 biased images, 64x64, 8 epochs: the network reads the hospital, not the lungs."""
    torch.manual_seed(0)
    train = generate(180, split="train", seed=0, image_size=64)
    tests = {b: generate(60, split="test", seed=0, bias=b, image_size=64) for b in ("biased", "external", "deceiving")}
    model = _tiny_cnn(64)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    x, y = _inputs(train), torch.from_numpy(train.labels)
    for _ in range(8):
        for idx in torch.randperm(len(y)).split(30):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = {b: float((model(_inputs(d)).argmax(1).numpy() == d.labels).mean()) for b, d in tests.items()}
    print("tiny CNN accuracy:", acc)
    assert acc["biased"] >= 0.8
    assert acc["deceiving"] <= 0.2
    assert acc["external"] <= 0.6
    assert acc["biased"] - acc["deceiving"] >= 0.6
