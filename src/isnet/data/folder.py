"""Image-folder datasets with foreground masks.

Layout (torchvision ``ImageFolder`` convention plus a parallel mask tree)::

    ROOT/images/<class>/<name>.<ext>
    ROOT/masks/<class>/<name>.<ext2>

An image and its mask share the path relative to ``images/`` / ``masks/`` up to the
extension. A mask pixel is foreground when it is nonzero (in any colour channel; an
alpha channel is ignored; palette masks use the palette index). Images may also be 16-bit
PNG/TIFF or DICOM (:mod:`isnet.data.imageio`); masks are ordinary image files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..errors import UserError
from .acquisition import AcquisitionJitter
from .imageio import IMAGE_EXTENSIONS, READ_ERRORS, probe_size, read_image

__all__ = ["DatasetError", "MaskedImageFolder", "make_transform", "mask_warnings"]

_MAX_LISTED = 20
_PIL_ERRORS = READ_ERRORS


class DatasetError(UserError):
    """A dataset on disk is malformed (missing, orphan, unreadable or mismatched files)."""


def make_transform(
    image_size: int | None, *, train: bool, hflip: bool = False, acquisition: float | None = None
) -> Callable[..., Any]:
    """Build a joint image/mask transform.

    Parameters
    ----------
    image_size
        Side of the square output (image resized bilinearly with antialiasing, mask with
        nearest neighbour so it stays binary); ``None`` keeps the original size.
    train
        Training mode: enables the random augmentations requested below.
    hflip
        Random horizontal flip (probability 0.5) in training mode, shared by image and mask.
    acquisition
        Strength of random exposure, contrast, blur and noise of the image in training mode
        (:class:`isnet.data.acquisition.AcquisitionJitter`); None: none.

    Returns
    -------
    Callable
        A ``torchvision.transforms.v2`` transform taking and returning
        ``(tv_tensors.Image, tv_tensors.Mask)``; the image comes out float32 in [0, 1] and
        the mask float32.
    """
    steps: list[Callable[..., Any]] = []
    if image_size is not None:
        steps.append(v2.Resize((image_size, image_size), antialias=True))
    if train and hflip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    steps.append(
        v2.ToDtype(
            {tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.float32, "others": None},
            scale=True,
        )
    )
    if train and acquisition is not None:
        steps.append(AcquisitionJitter(acquisition))
    return v2.Compose(steps)


def _read_image(path: Path, channels: int = 3) -> tv_tensors.Image:
    """Load an image with ``channels`` channels: uint8, or float32 in [0, 1] for 16-bit and DICOM files."""
    return tv_tensors.Image(read_image(path, channels))


def _read_mask(path: Path) -> tv_tensors.Mask:
    """Load a mask as a (1, H, W) uint8 tensor of 0/1 (nonzero pixel = foreground)."""
    with Image.open(path) as im:
        arr = np.asarray(im)
        has_alpha = im.mode.endswith("A") and arr.ndim == 3
    if has_alpha:
        arr = arr[..., :-1]
    fg = (arr != 0).any(axis=-1) if arr.ndim == 3 else arr != 0
    return tv_tensors.Mask(torch.from_numpy(fg.astype(np.uint8))[None])


def _load(reader: Callable[[Path], Tensor], path: Path) -> Any:
    """Call ``reader(path)``, turning decoding failures into a :class:`DatasetError`."""
    try:
        return reader(path)
    except _PIL_ERRORS as err:
        raise DatasetError(f"cannot read {path}: {type(err).__name__}: {err}") from err


def _probe_size(path: Path) -> tuple[int, int] | str:
    """Return ``(width, height)`` from the file header, or an error description."""
    try:
        return probe_size(path)
    except _PIL_ERRORS as err:
        return f"unreadable or corrupt file {path}: {type(err).__name__}: {err}"


def _stem_key(path: Path, base: Path) -> str:
    """Path relative to ``base`` without its extension, used to pair images and masks."""
    return str(PurePosixPath(path.relative_to(base).with_suffix("")))


def _format_problems(root: Path, problems: Sequence[str]) -> str:
    listed = "\n".join(f"  - {p}" for p in problems[:_MAX_LISTED])
    more = len(problems) - _MAX_LISTED
    tail = f"\n  ... and {more} more" if more > 0 else ""
    return f"dataset {root}: {len(problems)} problem(s) found:\n{listed}{tail}"


class MaskedImageFolder(Dataset):
    """Images with foreground masks, laid out as ``ROOT/images/<class>/`` + ``ROOT/masks/<class>/``.

    Every file is checked at construction (pairing, readability, sizes); all problems are
    reported together in one :class:`DatasetError`.

    Parameters
    ----------
    root
        Dataset root holding ``images/`` (and ``masks/`` when ``masks`` is true).
    transform
        Joint transform called as ``transform(image, mask)`` on ``tv_tensors.Image`` /
        ``tv_tensors.Mask`` (see :func:`make_transform`).
    masks
        Read masks from ``ROOT/masks``. When false (e.g. a test set without masks), every
        item gets an all-ones mask and ``has_masks`` is false. None: read them when
        ``ROOT/masks`` exists.
    classes
        Class list to use instead of the sorted folder names (e.g. the training set's, for a
        test set); a class folder not in this list is an error, a listed class may be absent.
    channels
        3 (grayscale replicated to RGB) or 1 (colour converted to gray), see
        :mod:`isnet.data.imageio`.
    mask_root
        The mask tree (``<class>/<name>.<ext>``) to read instead of ``ROOT/masks``, e.g. other
        regions of the same images (``isnet audit --regions``).

    Attributes
    ----------
    classes, class_to_idx
        Class names and their indices.
    samples
        ``(image_path, mask_path, label)`` per item; ``mask_path`` is None without masks.
    targets
        Label per item.
    has_masks
        Whether masks were read from disk.

    Items are ``(image, mask, label)``: image float32 (``channels``, H, W) in [0, 1]
    (grayscale replicated to 3 channels, alpha dropped, 16-bit grayscale scaled by 1/65535,
    DICOM through its rescale and VOI LUT), mask float32 (1, H, W) of 0/1, label int.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        transform: Callable[..., Any] | None = None,
        masks: bool | None = True,
        classes: Sequence[str] | None = None,
        channels: int = 3,
        mask_root: str | Path | None = None,
    ) -> None:
        if channels not in (1, 3):
            raise UserError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
        self.root = Path(root).expanduser()
        self.transform = transform
        self.channels = channels
        self.mask_root = self.root / "masks" if mask_root is None else Path(mask_root).expanduser()
        self.has_masks = self.mask_root.is_dir() if masks is None else masks
        self.classes, self.class_to_idx, self.samples = self._scan(classes)
        self.targets = [label for _, _, label in self.samples]

    def _scan(
        self, classes: Sequence[str] | None
    ) -> tuple[list[str], dict[str, int], list[tuple[Path, Path | None, int]]]:
        images_dir = self.root / "images"
        masks_dir = self.mask_root
        if not self.root.is_dir():
            raise DatasetError(f"dataset root {self.root} does not exist or is not a directory")
        if not images_dir.is_dir():
            raise DatasetError(f"dataset {self.root}: missing images folder {images_dir}")
        if self.has_masks and not masks_dir.is_dir():
            raise DatasetError(
                f"dataset {self.root}: missing masks folder {masks_dir} "
                "(pass masks=False for a dataset without masks)"
            )
        try:
            folders, _ = find_classes(images_dir)
        except FileNotFoundError:
            raise DatasetError(f"dataset {self.root}: no class folders in {images_dir}") from None

        problems: list[str] = []
        if classes is None:
            class_list = folders
        else:
            class_list = list(classes)
            if len(set(class_list)) != len(class_list):
                raise ValueError(f"duplicate names in classes={class_list}")
            problems += [
                f"unknown class folder {images_dir / name} (not one of the given classes "
                f"{class_list})"
                for name in folders
                if name not in class_list
            ]
        class_to_idx = {name: i for i, name in enumerate(class_list)}
        present = {name: class_to_idx[name] for name in folders if name in class_to_idx}
        found: list[tuple[str, int]] = []
        if present:
            found = make_dataset(images_dir, present, IMAGE_EXTENSIONS, allow_empty=True)
        nonempty = {label for _, label in found}
        problems += [
            f"empty class folder {images_dir / name} (no file with extension "
            f"{', '.join(IMAGE_EXTENSIONS)})"
            for name, idx in present.items()
            if idx not in nonempty
        ]

        images = [(Path(p), label) for p, label in found]
        image_keys: dict[str, Path] = {}
        for path, _ in images:
            key = _stem_key(path, images_dir)
            if key in image_keys:
                problems.append(f"images {image_keys[key]} and {path} share a name; rename one")
            image_keys[key] = path

        mask_by_key: dict[str, Path] = {}
        if self.has_masks:
            unknown = set(folders) - set(class_to_idx)
            mask_by_key, mask_problems = self._scan_masks(masks_dir, set(image_keys), unknown)
            problems += mask_problems

        samples: list[tuple[Path, Path | None, int]] = []
        for path, label in images:
            image_size = _probe_size(path)
            if isinstance(image_size, str):
                problems.append(image_size)
            if not self.has_masks:
                samples.append((path, None, label))
                continue
            mask_path = mask_by_key.get(_stem_key(path, images_dir))
            if mask_path is None:
                expected = masks_dir / path.relative_to(images_dir)
                problems.append(
                    f"image {path} has no mask: expected {expected} "
                    "(or the same name with another image extension)"
                )
                continue
            mask_size = _probe_size(mask_path)
            if isinstance(mask_size, str):
                problems.append(mask_size)
            elif isinstance(image_size, tuple) and mask_size != image_size:
                problems.append(
                    f"mask {mask_path} is {mask_size[0]}x{mask_size[1]} but image {path} is "
                    f"{image_size[0]}x{image_size[1]} (width x height)"
                )
            samples.append((path, mask_path, label))

        if problems:
            raise DatasetError(_format_problems(self.root, problems))
        return class_list, class_to_idx, samples

    @staticmethod
    def _scan_masks(
        masks_dir: Path, image_keys: set[str], unknown: set[str]
    ) -> tuple[dict[str, Path], list[str]]:
        """Index mask files by pairing key; report orphan and ambiguous masks.

        Masks under a class folder in ``unknown`` (already reported) are skipped.
        """
        problems: list[str] = []
        mask_by_key: dict[str, Path] = {}
        try:
            _, folder_idx = find_classes(masks_dir)
        except FileNotFoundError:
            return mask_by_key, problems
        for name, _ in make_dataset(masks_dir, folder_idx, IMG_EXTENSIONS, allow_empty=True):
            path = Path(name)
            key = _stem_key(path, masks_dir)
            if path.relative_to(masks_dir).parts[0] in unknown:
                continue
            if key not in image_keys:
                problems.append(f"mask {path} has no image (expected images/{key}.<ext>)")
            elif key in mask_by_key:
                problems.append(f"masks {mask_by_key[key]} and {path} both match image {key}")
            else:
                mask_by_key[key] = path
        return mask_by_key, problems

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        image_path, mask_path, label = self.samples[index]
        image = _load(lambda path: _read_image(path, self.channels), image_path)
        if mask_path is None:
            mask = tv_tensors.Mask(torch.ones((1, *image.shape[-2:]), dtype=torch.uint8))
        else:
            mask = _load(_read_mask, mask_path)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        image = F.to_dtype(image, torch.float32, scale=True).as_subclass(Tensor)
        mask = mask.to(torch.float32).as_subclass(Tensor)
        return image, mask, label


def _coverage(path: Path) -> str:
    """``"empty"`` (no foreground pixel), ``"full"`` (no background pixel) or ``""``, for one mask file."""
    try:
        fg = _read_mask(path)
    except _PIL_ERRORS:
        return ""  # unreadable files are reported when they are loaded
    total = int(fg.sum())
    return "empty" if total == 0 else "full" if total == fg.numel() else ""


def mask_warnings(dataset: MaskedImageFolder, *, threads: int = 4) -> list[str]:
    """Why the masks of ``dataset`` may not mean what the user intends: one message per kind of problem.

    Every mask is read once: masks without foreground (the heatmap loss then pushes all relevance
    away), masks without background (nothing to keep relevance off), and JPEG masks (lossy: the
    compression noise around edges is nonzero, hence foreground).
    """
    masks = [m for _, m, _ in dataset.samples if m is not None]
    if not masks:
        return []
    with ThreadPoolExecutor(max(1, threads)) as pool:  # PIL decodes without the GIL
        kinds = list(pool.map(_coverage, masks))
    found = []
    for kind, meaning in (("empty", "no foreground (all zero)"), ("full", "no background (all foreground)")):
        paths = [m for m, k in zip(masks, kinds) if k == kind]
        if paths:
            found.append(f"{len(paths)} of {len(masks)} masks in {dataset.root} have {meaning}, e.g. "
                         f"{', '.join(str(p) for p in paths[:3])}")
    jpeg = [m for m in masks if m.suffix.lower() in (".jpg", ".jpeg")]
    if jpeg:
        found.append(f"{len(jpeg)} of {len(masks)} masks in {dataset.root} are JPEG files, e.g. {jpeg[0]}: JPEG "
                     "noise around edges is nonzero and counts as foreground; save masks as PNG")
    return found
