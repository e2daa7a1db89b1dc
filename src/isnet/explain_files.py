"""Heatmaps for image files: what ``isnet explain`` runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms.v2 import functional as TF

from .checkpoints import load_classifier
from .lrp import LRPFlex
from .models import build_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def find_images(path: Path) -> list[tuple[Path, Path, str | None]]:
    """(file, path relative to the output folder, class folder name or None) for each image.

    ``path`` is an image, a folder of images (searched recursively), or a dataset
    root whose ``images/<class>/`` folders give the labels.
    """
    if not path.exists():
        raise FileNotFoundError(f"no image or folder at {path}")
    if path.is_file():
        return [(path, Path(path.name), None)]
    labelled = (path / "images").is_dir()
    root = path / "images" if labelled else path
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMG_EXTENSIONS)}) under {root}")
    return [(f, f.relative_to(root), f.relative_to(root).parts[0] if labelled else None) for f in files]


def load_image(path: Path, image_size: int | None) -> torch.Tensor:
    """An RGB image as float (3, H, W) in [0, 1], optionally resized (shorter side kept square)."""
    try:
        with Image.open(path) as img:
            tensor = TF.to_dtype(TF.to_image(img.convert("RGB")), torch.float32, scale=True)
    except OSError as error:
        raise ValueError(f"cannot read image {path}: {error}") from error
    if image_size is not None:
        tensor = TF.resize(tensor, [image_size, image_size], antialias=True)
    return tensor


def explain_files(*, images: Path, out: Path, arch: str | None = None, weights: Path | None = None,
                  checkpoint: Path | None = None, num_classes: int = 1000, target: str = "pred",
                  image_size: int | None = None, normalize: str = "none", epsilon: float = 0.01,
                  zb: bool = True, batch_size: int = 16) -> list[Path]:
    """Write ``<stem>.png`` (image and heatmap) and ``<stem>.npy`` (relevance, (C, H, W)) per image.

    With ``normalize="imagenet"`` the model sees normalised inputs and Z^B uses the
    matching per-channel bounds; relevance is per input pixel either way.
    """
    from .figures import plot_heatmap, save_figure  # matplotlib only when pictures are written

    class_names: list[str] | None = None
    if checkpoint is not None:
        model, config = load_classifier(checkpoint)
        class_names = config.get("classes")
        image_size = image_size or config.get("image_size")
    elif arch is not None:
        model = build_model(arch, num_classes, image_size=image_size or 224, weights=weights)
    else:
        raise ValueError("give --checkpoint, or --arch (with --weights for a trained model)")
    model.eval()
    mean, std, bounds = torch.zeros(1), torch.ones(1), (0.0, 1.0)
    if normalize == "imagenet":
        mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        bounds = ((0.0 - mean) / std).flatten(), ((1.0 - mean) / std).flatten()
    files = find_images(Path(images))
    if target == "label" and any(label is None for _, _, label in files):
        raise ValueError("--target label needs a dataset root with images/<class>/ folders")
    lrp = LRPFlex(model, epsilon=epsilon, zb=zb, bounds=bounds)
    out.mkdir(parents=True, exist_ok=True)
    written, summary = [], []
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        x = torch.stack([load_image(f, image_size) for f, _, _ in chunk])
        trace = lrp.trace((x - mean) / std)
        predicted = trace.output.detach().argmax(1)
        if target == "pred":
            classes = predicted
        elif target == "label":
            names = class_names or sorted({label for _, _, label in files})
            classes = torch.tensor([names.index(label) for _, _, label in chunk])
        else:
            classes = torch.full((len(chunk),), int(target))
        heat = trace.heatmap(classes).detach()
        for (file, rel, _), h, img, c, p in zip(chunk, heat, x, classes.tolist(), predicted.tolist()):
            stem = out / rel.with_suffix("")
            stem.parent.mkdir(parents=True, exist_ok=True)
            np.save(stem.with_suffix(".npy"), h.numpy())
            ax = plot_heatmap(h, img, title=f"class {c} (predicted {p})", colorbar=True)
            save_figure(ax.figure, stem.with_suffix(".png"))
            written.append(stem.with_suffix(".png"))
            summary.append({"image": str(file), "heatmap": str(stem.with_suffix(".png")), "class": c, "predicted": p})
    (out / "heatmaps.json").write_text(json.dumps(summary, indent=1))
    return written
