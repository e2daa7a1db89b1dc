"""Heatmaps for image files: what ``isnet explain`` runs.

Each input image gets its own ``<stem>.png`` (image and heatmap) and ``<stem>.npy`` (relevance,
(C, H, W)) under the output folder, at its path relative to the input; inputs that share a
stem (``003.png`` and ``003.jpg``) get ``003-png`` and ``003-jpg``. ``heatmaps.json`` lists,
per image, the input file, the two outputs (relative to the output folder), the explained
class and the prediction, for every run into the folder (a later run adds or updates entries).

Nothing the user owns is overwritten: the output folder may not be, contain or lie inside the
input (links followed), and an existing file in it is replaced only when an earlier ``isnet
explain`` wrote it (recorded in the folder's ledger before it was written, :mod:`isnet.outputs`,
or listed in ``heatmaps.json``), so a run cut short by Ctrl-C or a full disk may be run again.
The options, the model, every image header and the target are checked before the first file is
written, and so is the memory the heatmaps need (:mod:`isnet.explain_memory`: an image too
large for the available memory is refused with ``--image-size`` advice); files are written whole (temporary file, then rename), and one ``isnet explain`` at a
time writes to a folder (:class:`isnet.locks.FolderLock`).
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from .checkpoints import classifier_input, load_classifier
from .data.imageio import IMAGE_EXTENSIONS, READ_ERRORS, probe_size, read_image
from .explain_memory import check_lrp_memory
from .errors import IsnetWarning, OutputExistsError, UserError, UserFileNotFoundError
from .lrp import Bounds, LRPFlex
from .models import IMAGENET_MEAN, IMAGENET_STD, build_model, resolve_normalize
from .pretrained import is_weights_name, weights_categories
from .locks import FolderLock
from .outputs import claim, write_atomic, write_json
from .paths import check_new_files, check_separate

__all__ = ["MANIFEST", "check_model_input", "explain_files", "find_images", "input_normalisation", "load_image",
           "load_model", "output_stems"]

MANIFEST = "heatmaps.json"


def find_images(path: Path) -> list[tuple[Path, Path, str | None]]:
    """(file, path relative to the output folder, class folder name or None) for each image.

    ``path`` is an image, a folder of images (searched recursively), or a dataset
    root whose ``images/<class>/`` folders give the labels.
    """
    if not path.exists():
        raise UserFileNotFoundError(f"--images: no image or folder at {path}")
    if path.is_file():
        return [(path, Path(path.name), None)]
    labelled = (path / "images").is_dir()
    root = path / "images" if labelled else path
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise UserFileNotFoundError(f"--images: no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return [(f, f.relative_to(root), f.relative_to(root).parts[0] if labelled else None) for f in files]


def output_stems(relative: Sequence[Path]) -> list[Path]:
    """One output path without extension per input, distinct even where inputs share a stem.

    ``a/003.png`` gives ``a/003``; with ``a/003.jpg`` beside it, ``a/003-png`` and ``a/003-jpg``.
    Comparisons ignore case, for file systems that do.
    """
    plain = [r.with_suffix("") for r in relative]
    counts = Counter(str(p).casefold() for p in plain)
    named = [p if counts[str(p).casefold()] == 1 else p.with_name(f"{p.name}-{r.suffix[1:].lower()}")
             for p, r in zip(plain, relative)]
    seen: set[str] = set()
    stems = []
    for stem in named:  # a renamed stem may meet another file's own (003-png.bmp): number what still collides
        candidate, n = stem, 2
        while str(candidate).casefold() in seen:
            candidate, n = stem.with_name(f"{stem.name}-{n}"), n + 1
        seen.add(str(candidate).casefold())
        stems.append(candidate)
    return stems


def load_image(path: Path, image_size: int | None, channels: int = 3) -> torch.Tensor:
    """An image as float (``channels``, H, W) in [0, 1] (also 16-bit and DICOM files, :mod:`isnet.data.imageio`),
    optionally resized to ``image_size`` x ``image_size``."""
    try:
        tensor = TF.to_dtype(read_image(path, channels), torch.float32, scale=True)
    except READ_ERRORS as error:
        raise UserError(f"cannot read image {path}: {error}") from None
    if image_size is not None:
        tensor = TF.resize(tensor, [image_size, image_size], antialias=True)
    return tensor


def _header_size(path: Path) -> tuple[int, int]:
    try:
        return probe_size(path)
    except READ_ERRORS as error:
        raise UserError(f"cannot read image {path}: {error}") from None


def _manifest(out: Path) -> list[dict]:
    """The entries of the manifest earlier ``isnet explain`` runs wrote into ``out`` (none without one)."""
    manifest = out / MANIFEST
    if not manifest.exists():
        return []
    try:
        entries = json.loads(manifest.read_text())
    except (UnicodeDecodeError, ValueError):
        entries = None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "heatmap" in e for e in entries):
        raise OutputExistsError(f"--out {out} holds a {MANIFEST} that isnet explain did not write; choose another "
                                "output folder")
    return entries


def _previous_outputs(out: Path) -> list[Path]:
    """The files earlier ``isnet explain`` runs wrote into ``out`` (listed in their manifest)."""
    entries = _manifest(out)
    found = [out / MANIFEST] if entries or (out / MANIFEST).exists() else []
    for entry in entries:
        names = [entry["heatmap"], entry.get("relevance") or str(Path(entry["heatmap"]).with_suffix(".npy"))]
        for name in names:
            found += [out / name, Path(name)]  # relative to out; earlier versions wrote the path as given
    return found


def load_model(*, checkpoint: Path | None, arch: str | None, weights: str | Path | None, num_classes: int | None,
               image_size: int | None, normalize: str | None, sizes: set[tuple[int, int]]
               ) -> tuple[nn.Module, list[str] | None, int | None, int | None, dict | None]:
    """The model, its class names, the image size to resize to, the trained size and the run config (checkpoints).

    A run folder or checkpoint (``checkpoint``), or ``arch`` with ``weights`` (a state-dict file or a torchvision
    weights name) and ``num_classes``; ``sizes`` are the images' (width, height), which must agree without an
    ``image_size``. Options that contradict a checkpoint are refused.
    """
    if checkpoint is not None:
        model, config = load_classifier(checkpoint)
        if arch is not None and arch != config["arch"]:
            raise UserError(f"--arch {arch} differs from the checkpoint's architecture {config['arch']}; "
                            "--checkpoint needs no --arch")
        if num_classes is not None and num_classes != config["num_classes"]:
            raise UserError(f"--num-classes {num_classes} differs from the checkpoint's {config['num_classes']} "
                            "classes; --checkpoint needs no --num-classes")
        if normalize not in (None, "none", "auto"):
            raise UserError(f"--normalize {normalize} does not apply to --checkpoint: models trained by isnet train "
                            "see pixels in [0, 1] (a pretrained run's normalisation is folded into its first layer), "
                            "and explain gives them the same")
        return model, config.get("classes"), image_size or config["image_size"], config["image_size"], config
    if arch is None:
        raise UserError("give --checkpoint, or --arch (with --weights for a trained model)")
    if image_size is None and len(sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:4])
        raise UserError(f"the images have {len(sizes)} different sizes ({shown}); pass --image-size N to resize "
                        "them all to N x N")
    if weights is None:
        warnings.warn(f"--arch {arch} without --weights explains a randomly initialised network; pass --weights "
                      "FILE (a state dict) or a torchvision weights name to explain a trained one", IsnetWarning,
                      stacklevel=3)
    categories = weights_categories(arch, weights)  # the ImageNet class names of a weights name
    side = image_size or (min(next(iter(sizes))) if sizes else 224)  # small_cnn's lazy layer needs a size
    # the model as torchvision defines it: explain normalises its input (and Z^B bounds) outside
    model = build_model(arch, num_classes or (len(categories) if categories else 1000), image_size=side,
                        weights=weights)
    return model, categories, image_size, None, None


def check_model_input(model: nn.Module, shape: tuple[int, int], x_in: torch.Tensor, trained: int | None) -> int:
    """Run the model once on a blank image of ``shape`` (H, W); returns its number of outputs."""
    try:
        with torch.no_grad():
            out = model(x_in)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0][:200]
        hint = (f"it was trained on {trained}x{trained} images: omit --image-size or pass {trained}" if trained
                else "pass the --image-size the model was trained with")
        raise UserError(f"the model cannot take {shape[0]}x{shape[1]} images ({first}); {hint}") from None
    if out.dim() != 2:
        raise UserError(f"the model's output has shape {tuple(out.shape)}; isnet needs (batch, classes)")
    return out.shape[1]


def input_normalisation(config: dict | None, *, normalize: str | None, weights: str | Path | None,
                        arch: str | None) -> tuple[int, torch.Tensor, torch.Tensor, Bounds]:
    """How [0, 1] pixels reach a model from :func:`load_model`: its input channels, the mean and std that
    normalise them (the model sees ``(x - mean) / std``) and the Z^B bounds that follow.

    A run's model (``config``) takes the pixels as they are (a pretrained run's normalisation is folded into its
    first layer); ``arch`` with ``normalize`` imagenet (auto: for a torchvision weights name) gets ImageNet's.
    """
    channels = (config or {}).get("in_channels") or 3
    mean, std, bounds = torch.zeros(1), torch.ones(1), (0.0, 1.0)
    if config is None and resolve_normalize(normalize, weights, arch or "") == "imagenet":
        mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        bounds = ((0.0 - mean) / std).flatten(), ((1.0 - mean) / std).flatten()
    return channels, mean, std, bounds


def _targets(target: str, files: list[tuple[Path, Path, str | None]], names: list[str] | None,
             outputs: int) -> list[str] | None:
    """Check ``target`` against the model; returns the class names for ``target="label"``."""
    if target.isdigit():
        if int(target) >= outputs:
            raise UserError(f"--target {target} is not a class of this model: it has {outputs} outputs "
                            f"(0 to {outputs - 1})")
        return None
    if target != "label":
        return None
    labels = [label for _, _, label in files]
    if any(label is None for label in labels):
        raise UserError("--target label needs a dataset root with images/<class>/ folders as --images")
    names = names or sorted(set(labels))  # type: ignore[arg-type]
    unknown = sorted({label for label in labels if label not in names})  # type: ignore[misc]
    if unknown:
        raise UserError(f"--target label: class folder(s) {unknown} are not among the model's classes {names}")
    if len(names) > outputs:
        raise UserError(f"--target label: {len(names)} class folders, but the model has {outputs} outputs")
    return names


def explain_files(*, images: Path, out: Path, arch: str | None = None, weights: str | Path | None = None,
                  checkpoint: Path | None = None, num_classes: int | None = None, target: str = "pred",
                  image_size: int | None = None, normalize: str | None = None, epsilon: float = 0.01,
                  zb: bool = True, batch_size: int = 16, rule: str = "epsilon") -> list[Path]:
    """Write a heatmap figure and a relevance array per image (see the module docstring); returns the PNGs.

    ``target``: ``"pred"``, ``"label"`` (class folders of a dataset root) or a class index.
    ``rule``: ``"epsilon"`` or ``"z+"`` on convolutions and linear layers (:class:`isnet.LRPFlex`).
    ``weights``: a state-dict file or a torchvision weights name (``DEFAULT``, ``IMAGENET1K_V1``;
    read from the torch hub cache, downloaded into it when missing). With ``normalize="imagenet"`` (the default
    for a weights name) the model sees normalised inputs and Z^B uses the matching per-channel
    bounds; relevance is per input pixel either way. A ``seg-classify`` run explains the image
    masked by its segmenter, as it classifies it.
    """
    from .figures import plot_heatmap, save_figure  # matplotlib only when pictures are written

    images, out, target = Path(images), Path(out), str(target)
    if batch_size < 1 or (image_size is not None and image_size < 1) or (num_classes is not None and num_classes < 1):
        raise UserError(f"need batch_size, image_size and num_classes >= 1, got {batch_size}, {image_size}, "
                        f"{num_classes}")
    if rule not in ("epsilon", "z+"):
        raise UserError(f"--rule must be epsilon or z+, got {rule!r}")
    if target not in ("pred", "label") and not target.isdigit():
        raise UserError(f"--target must be pred, label or a class index, got {target!r}")
    files = find_images(images)
    check_separate(out, [images], out_option="--out", in_option="--images")
    stems = output_stems([rel for _, rel, _ in files])
    planned = [out / s.with_suffix(e) for s in stems for e in (".png", ".npy")]
    check_new_files(out, planned, _previous_outputs(out), out_option="--out")
    sizes = {_header_size(f) for f, _, _ in files}  # every file readable before the first is written
    if weights is not None and not is_weights_name(str(weights)):
        weights = Path(weights)
    model, class_names, image_size, trained, config = load_model(
        checkpoint=checkpoint, arch=arch, weights=weights, num_classes=num_classes, image_size=image_size,
        normalize=normalize, sizes=sizes)
    model.eval()
    channels, mean, std, bounds = input_normalisation(config, normalize=normalize, weights=weights, arch=arch)
    w, h = (image_size, image_size) if image_size else next(iter(sizes))
    check_lrp_memory(model, (h, w), image=files[0][0], channels=channels, batch=min(batch_size, len(files)),
                     rule=rule, zb=zb, resized=image_size is not None)  # before the first full-size pass
    outputs = check_model_input(model, (h, w), (torch.zeros(1, channels, h, w) - mean) / std, trained)
    names = _targets(target, files, class_names, outputs)
    lrp = LRPFlex(model, epsilon=epsilon, zb=zb, bounds=bounds, rule=rule)

    lock = FolderLock(out, "isnet explain").acquire()  # one explain at a time in OUT; creates it
    written, summary = [], []
    try:
        claim(out, [*planned, out / MANIFEST], "explain")  # before the first file: a rerun may replace them
        for start in range(0, len(files), batch_size):
            chunk = list(zip(files[start:start + batch_size], stems[start:start + batch_size]))
            x = torch.stack([load_image(f, image_size, channels) for (f, _, _), _ in chunk])
            if config is not None and config.get("segmenter"):
                x = classifier_input(x, None, config)  # what a seg-classify run classifies
            trace = lrp.trace((x - mean) / std)
            predicted = trace.output.detach().argmax(1)
            if target == "pred":
                classes = predicted
            elif target == "label":
                classes = torch.tensor([names.index(label) for (_, _, label), _ in chunk])  # type: ignore[union-attr]
            else:
                classes = torch.full((len(chunk),), int(target))
            heat = trace.heatmap(classes).detach()
            for ((file, _, _), stem), hmap, img, c, p in zip(chunk, heat, x, classes.tolist(), predicted.tolist()):
                png, npy = out / stem.with_suffix(".png"), out / stem.with_suffix(".npy")
                png.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(npy, lambda handle: np.save(handle, hmap.numpy()))
                ax = plot_heatmap(hmap, img, title=f"class {c} (predicted {p})", colorbar=True)
                save_figure(ax.figure, png)
                written.append(png)
                summary.append({"image": str(file), "heatmap": str(stem.with_suffix(".png")),
                                "relevance": str(stem.with_suffix(".npy")), "class": c, "predicted": p})
    finally:  # also after a failure: the manifest lists what every run into OUT wrote
        try:
            if summary or not (out / MANIFEST).exists():
                done = {entry["heatmap"] for entry in summary}
                kept = [entry for entry in _manifest(out) if entry["heatmap"] not in done]
                write_json(out / MANIFEST, kept + summary, indent=1)
        finally:
            lock.release()
    return written
