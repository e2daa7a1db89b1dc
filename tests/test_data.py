"""Tests for isnet.data: the masked image-folder dataset and the BG-Digits generator."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from isnet.data import (
    DatasetError,
    MaskedImageFolder,
    generate,
    make_transform,
    to_tensors,
    write_dataset,
)
from isnet.data.digits.backgrounds import CANVAS
from isnet.data.digits.bg_digits import DIGIT, PATCH_POSITIONS, PATCH_SIZE, digit_pools

# --------------------------------------------------------------------------- helpers


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _pair(
    root: Path, cls: str, name: str, *, size: tuple[int, int] = (8, 6), mask_ext: str = ".png"
) -> None:
    """Write images/<cls>/<name>.png and masks/<cls>/<name><mask_ext> (height, width = size)."""
    rng = np.random.default_rng(len(cls) + ord(name[0]))
    _save(root / "images" / cls / f"{name}.png", rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    mask = np.zeros(size, dtype=np.uint8)
    mask[: size[0] // 2] = 255
    _save(root / "masks" / cls / f"{name}{mask_ext}", mask)


def _valid_folder(root: Path) -> Path:
    for cls in ("cat", "dog"):
        for name in ("a", "b"):
            _pair(root, cls, name)
    return root


def _error(root: Path, **kwargs: object) -> str:
    with pytest.raises(DatasetError) as info:
        MaskedImageFolder(root, **kwargs)
    return str(info.value)


def _files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def _box(pos: tuple[int, int], side: int) -> np.ndarray:
    out = np.zeros((CANVAS, CANVAS), dtype=bool)
    out[pos[0] : pos[0] + side, pos[1] : pos[1] + side] = True
    return out


# --------------------------------------------------------------------------- BG-Digits


def test_generate_is_deterministic_per_seed() -> None:
    a = generate(40, split="train", seed=3)
    b = generate(40, split="train", seed=3)
    c = generate(40, split="train", seed=4)
    for field in ("images", "masks", "labels", "patch_masks", "patch_classes", "digit_indices"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.images, c.images)
    assert a.images.shape == (40, 32, 32, 3) and a.images.dtype == np.uint8
    assert a.masks.dtype == bool and a.patch_masks.dtype == bool
    assert a.labels.dtype == np.int64
    assert np.bincount(a.labels, minlength=10).tolist() == [4] * 10


def test_digit_pools_are_disjoint_stratified_and_used() -> None:
    pools = digit_pools(0)
    sets = {k: set(v.tolist()) for k, v in pools.items()}
    assert not sets["train"] & sets["val"]
    assert not sets["train"] & sets["test"]
    assert not sets["val"] & sets["test"]
    assert len(sets["train"] | sets["val"] | sets["test"]) == 1797
    assert not np.array_equal(pools["test"], digit_pools(1)["test"])
    for split in ("train", "val", "test"):
        d = generate(60, split=split, seed=0)
        assert set(d.digit_indices.tolist()) <= sets[split]


def test_patch_encodes_class_in_biased_and_deceiving_and_is_absent_in_unbiased() -> None:
    biased = generate(60, split="test", seed=1, bias="biased")
    deceiving = generate(60, split="test", seed=1, bias="deceiving")
    unbiased = generate(60, split="test", seed=1, bias="unbiased")
    np.testing.assert_array_equal(biased.patch_classes, biased.labels)
    assert np.all(deceiving.patch_classes != deceiving.labels)
    assert np.all((deceiving.patch_classes >= 0) & (deceiving.patch_classes < 10))
    assert len(set(deceiving.patch_classes.tolist())) > 5
    for d in (biased, deceiving):
        for i in range(len(d)):
            expected = _box(PATCH_POSITIONS[d.patch_classes[i]], PATCH_SIZE)
            np.testing.assert_array_equal(d.patch_masks[i], expected)
            assert np.all(d.images[i][expected] == 255)
    assert not unbiased.patch_masks.any()
    assert np.all(unbiased.patch_classes == -1)
    # without a patch, the border ring holds no pure-white 4x4 square
    border_patch = np.stack([_box(p, PATCH_SIZE) for p in PATCH_POSITIONS])
    white = (unbiased.images == 255).all(-1)
    assert not any((white[:, m].all(axis=1)).any() for m in border_patch)


def test_patch_positions_are_distinct_and_outside_every_digit_box() -> None:
    assert len(set(PATCH_POSITIONS)) == 10
    patches = np.stack([_box(p, PATCH_SIZE) for p in PATCH_POSITIONS])
    assert patches.sum(0).max() == 1  # no two patches overlap
    reachable = np.zeros((CANVAS, CANVAS), dtype=bool)
    reachable[PATCH_SIZE : CANVAS - PATCH_SIZE, PATCH_SIZE : CANVAS - PATCH_SIZE] = True
    assert not (patches.any(0) & reachable).any()
    for bias in ("biased", "deceiving", "background"):
        d = generate(200, split="val", seed=2, bias=bias)
        assert not (d.patch_masks & d.masks).any()
        assert (d.masks & reachable).sum() == d.masks.sum()


def test_box_mask_is_the_digit_box_and_covers_the_digit() -> None:
    d = generate(50, split="test", seed=0, bias="foreground")
    assert not d.patch_masks.any()
    for i in range(len(d)):
        rows, cols = np.nonzero(d.masks[i])
        assert d.masks[i].sum() == DIGIT * DIGIT
        assert rows.max() - rows.min() == DIGIT - 1 and cols.max() - cols.min() == DIGIT - 1
        digit = d.images[i].any(-1)  # plain black background: nonzero = digit
        assert digit.any() and not (digit & ~d.masks[i]).any()


def test_stroke_mask_covers_strokes_inside_the_box() -> None:
    box = generate(50, split="train", seed=5, bias="foreground", mask="box")
    strokes = generate(50, split="train", seed=5, bias="foreground", mask="strokes")
    np.testing.assert_array_equal(box.images, strokes.images)
    digit = strokes.images.any(-1)
    assert not (digit & ~strokes.masks).any()
    assert not (strokes.masks & ~box.masks).any()
    assert strokes.masks.sum() < box.masks.sum()


def test_background_split_has_patch_but_no_digit() -> None:
    back = generate(30, split="test", seed=0, bias="background")
    biased = generate(30, split="test", seed=0, bias="biased")
    np.testing.assert_array_equal(back.patch_classes, back.labels)
    assert back.patch_masks.sum() == 30 * PATCH_SIZE**2
    # masked regions look like background: no bright digit colour inside the box
    inside = back.images[back.masks].astype(float).mean()
    assert inside < biased.images[biased.masks].astype(float).mean() - 20


def test_generate_scales_to_larger_image_sizes_exactly() -> None:
    small = generate(8, split="val", seed=0)
    big = generate(8, split="val", seed=0, image_size=64)
    assert big.images.shape == (8, 64, 64, 3)
    np.testing.assert_array_equal(big.masks[:, ::2, ::2], small.masks)
    np.testing.assert_array_equal(big.images[:, 1::2, 1::2], small.images)
    assert big.patch_masks.sum() == 4 * small.patch_masks.sum()
    with pytest.raises(ValueError, match="multiple of 32"):
        generate(2, split="val", seed=0, image_size=48)
    with pytest.raises(ValueError, match="split"):
        generate(2, split="holdout", seed=0)


def test_to_tensors() -> None:
    d = generate(12, split="train", seed=0)
    x, m, y = to_tensors(d)
    assert x.shape == (12, 3, 32, 32) and x.dtype == torch.float32
    assert m.shape == (12, 1, 32, 32) and m.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == d.labels.tolist()
    assert 0.0 <= x.min() and x.max() <= 1.0
    torch.testing.assert_close(x[3, 1], torch.from_numpy(d.images[3, :, :, 1]).float() / 255)
    assert set(m.unique().tolist()) == {0.0, 1.0}


def test_write_dataset_layout_roundtrip_and_determinism(tmp_path: Path) -> None:
    kwargs = dict(seed=7, n_train=20, n_val=10, n_test=10, extra_tests=True)
    paths = write_dataset(tmp_path / "a", **kwargs)
    write_dataset(tmp_path / "b", **kwargs)
    expected = {"train", "val", "test/biased", "test/unbiased", "test/deceiving",
                "test/foreground", "test/background"}  # fmt: skip
    assert set(paths) == expected
    files_a = _files(tmp_path / "a")
    files_b = _files(tmp_path / "b")
    assert files_a == files_b
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    meta = json.loads((tmp_path / "a" / "bg-digits.json").read_text())
    assert meta["seed"] == 7 and meta["splits"]["test/deceiving"]["n"] == 10

    train = MaskedImageFolder(paths["train"])
    assert train.classes == [str(c) for c in range(10)]
    assert len(train) == 20
    d = generate(20, split="train", seed=7)
    for image_path, mask_path, label in train.samples:
        i = int(image_path.stem)
        assert label == d.labels[i] and image_path.parent.name == str(d.labels[i])
        assert mask_path == paths["train"] / "masks" / str(label) / image_path.name
    image, mask, label = train[5]
    i = int(train.samples[5][0].stem)
    torch.testing.assert_close(image, torch.from_numpy(d.images[i]).permute(2, 0, 1).float() / 255)
    torch.testing.assert_close(mask[0], torch.from_numpy(d.masks[i]).float())
    deceiving = MaskedImageFolder(paths["test/deceiving"], classes=train.classes)
    assert len(deceiving) == 10

    with pytest.raises(FileExistsError):
        write_dataset(tmp_path / "a", n_train=1, n_val=1, n_test=1)


# --------------------------------------------------------------------------- MaskedImageFolder


def test_folder_reads_items_and_collates(tmp_path: Path) -> None:
    root = _valid_folder(tmp_path)
    _pair(root, "dog", "c", mask_ext=".bmp")  # mask may use another extension
    ds = MaskedImageFolder(root)
    assert ds.classes == ["cat", "dog"] and ds.class_to_idx == {"cat": 0, "dog": 1}
    assert ds.has_masks and len(ds) == 5 and ds.targets == [0, 0, 1, 1, 1]
    assert ds.samples[4][1].suffix == ".bmp"
    image, mask, label = ds[0]
    assert image.shape == (3, 8, 6) and image.dtype == torch.float32
    assert mask.shape == (1, 8, 6) and mask.dtype == torch.float32
    assert mask[0, :4].eq(1).all() and mask[0, 4:].eq(0).all()
    assert type(image) is torch.Tensor and type(mask) is torch.Tensor and label == 0
    raw = np.array(Image.open(ds.samples[0][0]))
    torch.testing.assert_close(image, torch.from_numpy(raw).permute(2, 0, 1).float() / 255)
    x, m, y = next(iter(DataLoader(ds, batch_size=5)))
    assert x.shape == (5, 3, 8, 6) and m.shape == (5, 1, 8, 6) and y.tolist() == [0, 0, 1, 1, 1]


def test_folder_color_modes(tmp_path: Path) -> None:
    gray = np.arange(48, dtype=np.uint8).reshape(8, 6) * 5
    _save(tmp_path / "images" / "x" / "gray.png", gray)
    rgba = np.zeros((8, 6, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    _save(tmp_path / "images" / "x" / "rgba.png", rgba)
    wide = (np.arange(48, dtype=np.uint16).reshape(8, 6) * 1000).astype(np.uint16)
    _save(tmp_path / "images" / "x" / "wide.png", wide)
    palette = Image.fromarray(np.eye(8, 6, dtype=np.uint8) * 3)
    palette.putpalette([0, 0, 0] * 256)  # all indices black: foreground is by index, not colour
    assert palette.mode == "P"
    for name in ("gray", "rgba", "wide"):
        (tmp_path / "masks" / "x").mkdir(parents=True, exist_ok=True)
        palette.save(tmp_path / "masks" / "x" / f"{name}.png")
    ds = MaskedImageFolder(tmp_path)
    items = {p.stem: ds[i] for i, (p, _, _) in enumerate(ds.samples)}
    g = items["gray"][0]
    assert g.shape == (3, 8, 6)
    torch.testing.assert_close(g[0], torch.from_numpy(gray).float() / 255)
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])
    r = items["rgba"][0]
    assert r.shape == (3, 8, 6) and torch.allclose(r[0], torch.tensor(200 / 255))
    w = items["wide"][0]
    torch.testing.assert_close(w[1], torch.from_numpy(wide.astype(np.float32)) / 65535)
    eye = torch.from_numpy(np.eye(8, 6, dtype=np.float32))
    torch.testing.assert_close(items["gray"][1][0], eye)


def test_folder_without_masks(tmp_path: Path) -> None:
    for name in ("a", "b"):
        _save(tmp_path / "images" / "k" / f"{name}.jpg", np.full((5, 7, 3), 90, np.uint8))
    with pytest.raises(DatasetError, match="masks=False"):
        MaskedImageFolder(tmp_path)
    ds = MaskedImageFolder(tmp_path, masks=False, transform=make_transform(4, train=False))
    assert not ds.has_masks and ds.samples[0][1] is None
    image, mask, _ = ds[1]
    assert image.shape == (3, 4, 4) and torch.equal(mask, torch.ones(1, 4, 4))


def test_folder_test_set_reuses_training_classes(tmp_path: Path) -> None:
    _pair(tmp_path, "dog", "a")
    ds = MaskedImageFolder(tmp_path, classes=["cat", "dog", "fish"])
    assert ds.classes == ["cat", "dog", "fish"] and ds.targets == [1]


def test_joint_transform_keeps_image_and_mask_aligned() -> None:
    yy, xx = torch.meshgrid(torch.arange(40), torch.arange(40), indexing="ij")
    shape = ((xx < 12) & (yy > 5)) | ((xx - 30) ** 2 + (yy - 10) ** 2 < 30)  # asymmetric
    image = tv_tensors.Image((shape.to(torch.uint8) * 255).expand(3, -1, -1).clone())
    mask = tv_tensors.Mask(shape.to(torch.uint8)[None])
    flip = make_transform(None, train=True, hflip=True)
    resize_flip = make_transform(24, train=True, hflip=True)
    outcomes = set()
    for seed in range(12):
        torch.manual_seed(seed)
        img, msk = flip(image, mask)
        assert img.dtype == torch.float32 and msk.dtype == torch.float32
        assert torch.equal(msk[0] > 0.5, img[0] > 0.5)
        outcomes.add(bool(torch.equal(msk, mask.float())))
        img, msk = resize_flip(image, mask)
        assert img.shape == (3, 24, 24) and msk.shape == (1, 24, 24)
        assert set(msk.unique().tolist()) <= {0.0, 1.0}
        agree = ((img[0] > 0.5) == (msk[0] > 0.5)).float().mean()
        assert agree > 0.95
    assert outcomes == {True, False}  # both flipped and unflipped draws happened
    evaluate = make_transform(24, train=False, hflip=True)
    unflipped = F.resize(mask, [24, 24]).float()
    for seed in range(4):
        torch.manual_seed(seed)
        assert torch.equal(evaluate(image, mask)[1], unflipped)  # eval mode never flips


def test_acquisition_jitter_changes_each_image_by_its_own_draw_and_never_the_mask() -> None:
    from isnet.data.acquisition import AcquisitionJitter

    torch.manual_seed(0)
    gray = torch.rand(1, 20, 20).expand(3, -1, -1).clone()
    image, mask = tv_tensors.Image(gray), tv_tensors.Mask((torch.rand(1, 20, 20) > 0.5).float())
    jitter = AcquisitionJitter(1.0)
    # exposure and contrast, recomputed: gamma and gain, then contrast about the image's mean
    params = {"gamma": 1.3, "gain": 0.95, "contrast": 1.1, "blur": 0.0, "noise": 0.0}
    exposed = gray ** 1.3 * 0.95
    torch.testing.assert_close(jitter.transform(image, params), ((exposed - exposed.mean()) * 1.1 + exposed.mean())
                               .clamp(0, 1))
    blurred = jitter.transform(image, {**params, "gamma": 1.0, "gain": 1.0, "contrast": 1.0, "blur": 0.8})
    torch.testing.assert_close(blurred, F.gaussian_blur(gray, [7, 7], [0.8, 0.8]).clamp(0, 1))
    changes = []
    for strength in (0.25, 1.0, 2.0):
        torch.manual_seed(1)
        draws = [AcquisitionJitter(strength)(image, mask) for _ in range(20)]
        for out, kept in draws:
            assert isinstance(out, tv_tensors.Image) and torch.equal(kept, mask)  # the mask passes unchanged
            assert 0 <= out.min() and out.max() <= 1
            torch.testing.assert_close(out, out[:1].expand_as(out))  # a gray image stays gray
        changes.append(torch.stack([(out - gray).abs().mean() for out, _ in draws]).mean().item())
        assert len({round(out.sum().item(), 4) for out, _ in draws}) == 20  # a new acquisition per image
    assert 0 < changes[0] < changes[1] < changes[2]  # the strength scales the change
    torch.manual_seed(1)
    assert torch.equal(AcquisitionJitter(2.0)(image, mask)[0], draws[0][0])  # the same seed, the same draw
    uint8 = tv_tensors.Image((gray * 255).round().to(torch.uint8))
    evaluation = make_transform(None, train=False, acquisition=1.0).transforms
    assert not any(isinstance(t, AcquisitionJitter) for t in evaluation)  # never at test time
    torch.manual_seed(2)
    trained = make_transform(None, train=True, acquisition=1.0)(uint8, mask)[0]
    assert trained.dtype == torch.float32 and not torch.allclose(trained, uint8.float() / 255)
    for bad in (0.0, 3.5):
        with pytest.raises(ValueError, match=r"strength must be in \(0, 3\]"):
            AcquisitionJitter(bad)
    tiny = tv_tensors.Image(torch.rand(3, 6, 6))  # a wide blur on a small image: the kernel fits the image
    assert jitter.transform(tiny, {**params, "blur": 3.0}).shape == (3, 6, 6)


# --------------------------------------------------------------------------- bad inputs


def test_error_missing_root_and_images(tmp_path: Path) -> None:
    assert "does not exist" in _error(tmp_path / "nowhere")
    (tmp_path / "masks").mkdir()
    assert str(tmp_path / "images") in _error(tmp_path)


def test_error_missing_mask_names_image_and_expected_mask(tmp_path: Path) -> None:
    root = _valid_folder(tmp_path)
    (root / "masks" / "dog" / "b.png").unlink()
    msg = _error(root)
    assert str(root / "images" / "dog" / "b.png") in msg
    assert str(root / "masks" / "dog" / "b.png") in msg
    assert "1 problem" in msg


def test_error_orphan_mask(tmp_path: Path) -> None:
    root = _valid_folder(tmp_path)
    _save(root / "masks" / "cat" / "ghost.png", np.zeros((8, 6), np.uint8))
    assert str(root / "masks" / "cat" / "ghost.png") in _error(root)


def test_error_empty_class_folder(tmp_path: Path) -> None:
    root = _valid_folder(tmp_path)
    (root / "images" / "bird").mkdir()
    (root / "images" / "bird" / "notes.txt").write_text("not an image")
    msg = _error(root)
    assert "empty class folder" in msg and str(root / "images" / "bird") in msg


def test_error_corrupt_image_and_mask(tmp_path: Path) -> None:
    root = _valid_folder(tmp_path)
    (root / "images" / "cat" / "a.png").write_bytes(b"definitely not a png")
    (root / "masks" / "dog" / "b.png").write_bytes(b"\x89PNG garbage")
    msg = _error(root)
    assert str(root / "images" / "cat" / "a.png") in msg
    assert str(root / "masks" / "dog" / "b.png") in msg
    assert "2 problem" in msg


def test_error_size_mismatch(tmp_path: Path) -> None:
    root = _valid_folder(tmp_path)
    _save(root / "masks" / "cat" / "b.png", np.zeros((6, 8), np.uint8))
    msg = _error(root)
    assert str(root / "masks" / "cat" / "b.png") in msg
    assert str(root / "images" / "cat" / "b.png") in msg
    assert "8x6" in msg and "6x8" in msg


def test_error_unknown_class_folder_in_test_set(tmp_path: Path) -> None:
    root = _valid_folder(tmp_path)
    _pair(root, "horse", "a")
    msg = _error(root, classes=["cat", "dog"])
    assert str(root / "images" / "horse") in msg and "1 problem" in msg


def test_error_lists_at_most_twenty_problems_with_a_count(tmp_path: Path) -> None:
    for i in range(25):
        _save(tmp_path / "images" / "k" / f"{i:02d}.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "masks").mkdir()
    msg = _error(tmp_path)
    assert "25 problem(s)" in msg and "and 5 more" in msg
    assert msg.count("has no mask") == 20


def test_error_on_corrupt_file_at_load_time_names_the_file(tmp_path: Path) -> None:
    root = _valid_folder(tmp_path)
    ds = MaskedImageFolder(root)
    path = ds.samples[0][0]
    path.write_bytes(path.read_bytes()[:60])  # truncated after validation
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        ds[0]


# --------------------------------------------------------------------------- BG-Digits: placement, cue, mask quality


def _digest(d) -> str:
    import hashlib

    h = hashlib.sha256()
    for a in (d.images, d.masks, d.labels, d.patch_masks, d.patch_classes, d.digit_indices):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("kwargs, digest", [
    (dict(split="train", bias="biased"), "3344221fc177f12d"),
    (dict(split="test", bias="deceiving"), "0ab9d3b892905933"),
    (dict(split="test", bias="unbiased"), "d47c6288290e7f68"),
    (dict(split="val", bias="biased", mask="strokes"), "b01fc2f5e5587ae5"),
    (dict(split="test", bias="background", image_size=64), "6ab6d09e888cc92b"),
])
def test_default_generation_is_unchanged(kwargs: dict, digest: str) -> None:
    # hashes of generate(30, seed=0, ...) computed with the generator before placement and cue existed
    assert _digest(generate(30, seed=0, **kwargs)) == digest
    assert _digest(generate(30, seed=0, placement="centre", cue="patch", **kwargs)) == digest


def test_anywhere_placement_reaches_the_border_ring_and_hides_the_patch_behind_the_digit() -> None:
    d = generate(300, split="train", seed=0, placement="anywhere")
    ring = np.ones((CANVAS, CANVAS), dtype=bool)
    ring[PATCH_SIZE : CANVAS - PATCH_SIZE, PATCH_SIZE : CANVAS - PATCH_SIZE] = False
    on_ring = (d.masks & ring).any(axis=(1, 2))
    assert 0.3 < on_ring.mean() < 1.0  # many digit boxes overlap the ring, not all
    assert d.masks[:, 0, :].any() and d.masks[:, :, -1].any()  # the box reaches the canvas edges
    assert (d.masks.sum(axis=(1, 2)) == DIGIT * DIGIT).all()
    assert not (d.patch_masks & d.masks).any()  # the digit box lies in front of the patch
    cut = d.patch_masks.sum(axis=(1, 2)) < PATCH_SIZE**2
    assert cut.any() and d.patch_masks.any(axis=(1, 2)).mean() > 0.9  # rarely hidden entirely
    assert np.all(d.images[d.patch_masks] == 255)
    centre = generate(300, split="train", seed=0)
    np.testing.assert_array_equal(d.labels, centre.labels)  # same draws, other positions
    assert not (centre.masks & ring).any()


def test_tint_cue_tints_the_background_with_the_cue_class_and_leaves_the_foreground() -> None:
    from isnet.data.digits.backgrounds import TINTS

    for bias in ("biased", "deceiving", "unbiased"):
        patch = generate(40, split="test", seed=1, bias=bias)
        tint = generate(40, split="test", seed=1, bias=bias, cue="tint")
        assert not tint.patch_masks.any()
        np.testing.assert_array_equal(tint.patch_classes, patch.patch_classes)
        np.testing.assert_array_equal(tint.images[tint.masks], patch.images[patch.masks])  # digit untouched
        for i in range(len(tint)):
            bg = ~tint.masks[i] & ~patch.patch_masks[i]
            factor = TINTS[tint.patch_classes[i]] if tint.patch_classes[i] >= 0 else np.ones(3)
            expected = np.clip(patch.images[i][bg] / 255.0 * factor, 0, 1) * 255
            assert np.abs(tint.images[i][bg] - expected).max() <= 2.0
    deceiving = generate(40, split="test", seed=1, bias="deceiving", cue="tint")
    assert np.all(deceiving.patch_classes != deceiving.labels)
    assert np.all(generate(10, split="test", seed=1, bias="unbiased", cue="tint").patch_classes == -1)
    assert len({tuple(t) for t in TINTS.round(3)}) == 10
    with pytest.raises(ValueError, match="cue"):
        generate(2, split="val", seed=0, cue="glow")


def test_degraded_masks() -> None:
    from isnet.data.digits.mask_quality import degrade_masks

    d = generate(50, split="train", seed=0)  # centre: every box at least 4 px from the edge
    area = d.masks.sum(axis=(1, 2))
    assert (degrade_masks(d.masks, "dilated").sum(axis=(1, 2)) == (DIGIT + 4) ** 2).all()
    assert (degrade_masks(d.masks, "eroded").sum(axis=(1, 2)) == (DIGIT - 4) ** 2).all()
    assert (degrade_masks(d.masks, "eroded") <= d.masks).all()
    np.testing.assert_array_equal(degrade_masks(d.masks, "bbox"), d.masks)  # a box is its own bounding box
    np.testing.assert_array_equal(degrade_masks(d.masks, "exact"), d.masks)
    shifted = degrade_masks(d.masks, "shifted", seed=3)
    assert (shifted.sum(axis=(1, 2)) == area).all() and (shifted != d.masks).any()
    for before, after in zip(d.masks, shifted):
        moves = np.argwhere(after)[0] - np.argwhere(before)[0]
        assert np.abs(moves).max() <= 3
    np.testing.assert_array_equal(shifted, degrade_masks(d.masks, "shifted", seed=3))
    strokes = generate(20, split="train", seed=0, mask="strokes").masks
    boxes = degrade_masks(strokes, "bbox")
    assert (boxes >= strokes).all() and (boxes.sum(axis=(1, 2)) > strokes.sum(axis=(1, 2))).mean() > 0.5
    big = generate(4, split="train", seed=0, image_size=64).masks
    assert (degrade_masks(big, "dilated", scale=2).sum(axis=(1, 2)) == (2 * DIGIT + 8) ** 2).all()
    with pytest.raises(ValueError, match="degradation"):
        degrade_masks(d.masks, "blurred")


def test_bg_digits_cli_writes_degraded_training_masks_only(tmp_path: Path) -> None:
    from isnet.cli import main

    out = tmp_path / "bg"
    assert main(["data", "bg-digits", "--out", str(out), "--n-train", "10", "--n-val", "10", "--n-test", "10",
                 "--placement", "anywhere", "--cue", "tint", "--train-mask", "dilated"]) == 0
    meta = json.loads((out / "bg-digits.json").read_text())
    assert (meta["placement"], meta["cue"], meta["train_mask"]) == ("anywhere", "tint", "dilated")
    for split, n in (("train", 10), ("val", 10)):
        d = generate(n, split=split, seed=0, placement="anywhere", cue="tint")
        ds = MaskedImageFolder(out / split)
        sizes = {int(ds[i][1].sum()) for i in range(len(ds))}
        assert sizes == ({DIGIT * DIGIT} if split == "val" else sizes)
        assert split == "val" or max(sizes) > DIGIT * DIGIT  # dilated (clipped where the box meets the edge)
        assert not np.asarray(Image.open(next((out / split / "patches").rglob("*.png")))).any()
        assert len(ds) == len(d)


def test_bench_presets_name_the_generator_options() -> None:
    from isnet.bench.digits import presets
    from isnet.data.digits import bg_digits, mask_quality

    assert presets.PLACEMENTS == bg_digits.PLACEMENTS and presets.CUES == bg_digits.CUES
    assert presets.MASK_QUALITIES == mask_quality.MASK_DEGRADATIONS
