"""``isnet segment predict`` and ``isnet segment eval``: masks for image files, and Dice / IoU.

**Predict.** For a dataset root (``ROOT/images/<class>/...``) the masks are written as
``OUT/masks/<class>/<name>.png`` (0 background, 255 foreground, the image's own size), and
``OUT/images`` becomes a link to ``ROOT/images``, so ``OUT`` is a dataset that ``isnet train``
reads as it is; ``OUT`` may also be ``ROOT`` itself (the masks are added next to the images).
For a plain folder or one image, the masks go to ``OUT/<name>.png``. ``OUT/segment-masks.json``
lists every mask with its foreground share. An existing file is replaced only when an earlier
``isnet segment predict`` wrote it (recorded in the folder's ledger, :mod:`isnet.outputs`, or
listed in that manifest); every image header is read before the first mask is written, masks
are written whole, and one process at a time writes to OUT (:class:`isnet.locks.FolderLock`).

**Eval.** Dice and IoU per image at the mask's own resolution (MONAI ``compute_dice`` /
``compute_iou``; an empty prediction of an empty mask scores 1), their means per test set.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.folder import MaskedImageFolder
from ..data.imageio import READ_ERRORS, probe_size, read_image
from ..errors import IsnetWarning, OutputExistsError, UserError
from ..evaluate import resolve_device
from ..explain_files import find_images, output_stems
from ..locks import FolderLock
from ..outputs import claim, claimed, write_atomic, write_json
from ..tables import text_table
from .predict import binary_masks, load_segmenter, probabilities, segmenter_input

__all__ = ["MANIFEST", "evaluate_segmenter", "format_scores", "predict_folder"]

MANIFEST = "segment-masks.json"


def _previous(out: Path) -> set[Path]:
    path = out / MANIFEST
    if not path.is_file():
        return set()
    try:
        entries = json.loads(path.read_text()).get("masks", [])
        return {(out / e["mask"]).resolve() for e in entries} | {path.resolve()}
    except (UnicodeDecodeError, ValueError, AttributeError, KeyError, TypeError):
        raise OutputExistsError(f"--out {out} holds a {MANIFEST} that isnet segment predict did not write; choose "
                                "another output folder") from None


def _plan(images: Path, out: Path) -> tuple[list[tuple[Path, Path]], Path | None]:
    """(image file, mask file) pairs, and the input's images/ folder when it is a dataset root."""
    files = find_images(images)
    labelled = images.is_dir() and (images / "images").is_dir()
    source = (images / "images") if labelled else (images if images.is_dir() else images.parent)
    o, s = out.expanduser().resolve(), source.resolve()
    if o == s or s in o.parents:
        raise OutputExistsError(f"--out {out} is inside the input images {source}; choose a folder outside it")
    if not labelled and images.is_dir() and o in s.parents:
        raise OutputExistsError(f"--out {out} contains the input folder {images}; for a dataset root with images/ "
                                "the masks go to OUT/masks, for a plain folder choose an output folder outside it")
    base = out / "masks" if labelled else out
    stems = output_stems([rel for _, rel, _ in files])
    return [(f, base / stem.with_suffix(".png")) for (f, _, _), stem in zip(files, stems)], source if labelled else None


def _link_images(out: Path, source: Path) -> None:
    link = out / "images"
    if link.resolve() == source.resolve():
        return
    if link.exists() or link.is_symlink():
        raise OutputExistsError(f"{link} exists and is not the input's images folder {source}; the masks would not "
                                "pair with it: choose another --out (or the dataset root itself)")
    out.mkdir(parents=True, exist_ok=True)
    os.symlink(source.resolve(), link, target_is_directory=True)


def _components(given: int | None, config: Mapping[str, Any]) -> int:
    if given is not None and given < 0:
        raise UserError(f"--components must be >= 0 (0 keeps every region), got {given}")
    return int(config.get("components", 0) if given is None else given)


def predict_folder(*, model: Path, images: Path, out: Path, batch_size: int = 8, device: str | None = "auto",
                   components: int | None = None) -> dict[str, Any]:
    """Write a PNG mask per image (see the module docstring); returns a summary (count, foreground shares).

    ``components``: keep the largest connected regions of each mask (None: the run's setting).
    """
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    images, out = Path(images).expanduser(), Path(out).expanduser()
    dev = resolve_device(device)
    net, config = load_segmenter(model, map_location=dev)
    components = _components(components, config)
    pairs, source = _plan(images, out)
    owned = _previous(out) | claimed(out)
    clash = [m for _, m in pairs if m.exists() and m.resolve() not in owned]
    if clash:
        raise OutputExistsError(f"{clash[0]} exists{f' (and {len(clash) - 1} more)' if len(clash) > 1 else ''} and "
                                "isnet segment predict did not write it; nothing is overwritten: choose another --out")
    for file, _ in pairs:  # every file readable before the first mask is written
        try:
            probe_size(file)
        except READ_ERRORS as err:
            raise UserError(f"cannot read image {file}: {err}") from None
    with FolderLock(out, "isnet segment predict"):
        return _write_masks(net, config, pairs, source, out=out, model=model, images=images, components=components,
                            batch_size=batch_size, device=dev)


def _write_masks(net: torch.nn.Module, config: Mapping[str, Any], pairs: list[tuple[Path, Path]],
                 source: Path | None, *, out: Path, model: Path, images: Path, components: int, batch_size: int,
                 device: torch.device) -> dict[str, Any]:
    """Write the masks of :func:`predict_folder`, checked, and its summary."""
    claim(out, [*(m for _, m in pairs), out / MANIFEST], "segment predict")  # before the first mask is written
    if source is not None:
        _link_images(out, source)
    entries = []
    channels, size = config["in_channels"], config["image_size"]
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        try:
            pixels = [read_image(f, channels) for f, _ in chunk]
        except READ_ERRORS as err:
            raise UserError(f"cannot read an image of {[str(f) for f, _ in chunk]}: {err}") from None
        pixels = [p.float() / 255 if p.dtype == torch.uint8 else p for p in pixels]
        x = torch.cat([segmenter_input(p[None], channels, size) for p in pixels]).to(device)
        probs = probabilities(net, config, x, [tuple(p.shape[-2:]) for p in pixels])
        for (file, mask_path), binary in zip(chunk, binary_masks(probs, components)):
            mask = binary[0].cpu().numpy()
            picture = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
            write_atomic(mask_path, lambda handle: picture.save(handle, format="PNG"))
            entries.append({"image": str(file), "mask": str(mask_path.relative_to(out)),
                            "foreground": round(float(mask.mean()), 6)})
        write_json(out / MANIFEST, {"segmenter": str(model), "images": str(images), "threshold": 0.5,
                                    "components": components, "masks": entries}, indent=1)
    shares = [e["foreground"] for e in entries]
    empty = [e["mask"] for e in entries if e["foreground"] == 0]
    if empty:
        warnings.warn(f"{len(empty)} of {len(entries)} predicted masks are empty (no foreground), e.g. {empty[0]}; "
                      "isnet train warns about them too", IsnetWarning, stacklevel=2)
    return {"masks": len(entries), "out": str(out), "dataset": source is not None,
            "mean_foreground": float(np.mean(shares)) if shares else 0.0, "empty": len(empty)}


def _scores(pred: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    from monai.metrics import compute_dice, compute_iou

    p, t = pred[None].float(), truth[None].float()  # (1, 1, H, W)
    dice = compute_dice(p, t, include_background=True, ignore_empty=False)
    iou = compute_iou(p, t, include_background=True, ignore_empty=False)
    return float(dice.nan_to_num(1.0).mean()), float(iou.nan_to_num(1.0).mean())


def evaluate_segmenter(model: Path, tests: Mapping[str, Path], *, batch_size: int = 8, device: str | None = "auto",
                       components: int | None = None) -> dict[str, dict[str, Any]]:
    """Mean Dice and IoU (and their standard deviations) per test set with masks (``components`` as in
    :func:`predict_folder`)."""
    if not tests:
        raise UserError("no test sets given (NAME=DIR)")
    dev = resolve_device(device)
    net, config = load_segmenter(model, map_location=dev)
    components = _components(components, config)
    channels, size = config["in_channels"], config["image_size"]
    sets = {name: MaskedImageFolder(root, masks=True, channels=channels) for name, root in tests.items()}
    for name, dataset in sets.items():
        if len(dataset) == 0:
            raise UserError(f"test set {name} ({dataset.root}) holds no images")
    results = {}
    for name, dataset in sets.items():
        dice, iou = [], []
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            x = torch.cat([segmenter_input(img[None], channels, size) for img, _, _ in items]).to(dev)
            probs = probabilities(net, config, x, [tuple(m.shape[-2:]) for _, m, _ in items])
            for binary, (_, mask, _) in zip(binary_masks(probs, components), items):
                d, j = _scores(binary.cpu(), mask > 0.5)
                dice.append(d)
                iou.append(j)
        results[name] = {"dice": float(np.mean(dice)), "dice_std": float(np.std(dice)), "iou": float(np.mean(iou)),
                         "iou_std": float(np.std(iou)), "n": len(dice)}
    return results


def format_scores(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A plain-text table: one row per test set."""
    rows = [{"test set": name, "n": str(r["n"]), "Dice": f"{r['dice']:.4f} ± {r['dice_std']:.4f}",
             "IoU": f"{r['iou']:.4f} ± {r['iou_std']:.4f}"} for name, r in results.items()]
    return text_table(rows, {"test set": 20, "n": 6, "Dice": 18, "IoU": 18})
