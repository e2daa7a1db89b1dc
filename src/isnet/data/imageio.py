"""Reading image files as pixels in [0, 1]: ordinary formats, 16-bit PNG/TIFF and DICOM.

* **8-bit files** (PNG, JPEG, ...) are read with Pillow: RGB, or one gray channel.
* **16-bit grayscale PNG/TIFF** (Pillow modes ``I;16*`` and ``I``, common for X-rays) are
  divided by 65535. A 32-bit integer file (mode ``I``) with values outside 0...65535 is refused.
* **32-bit float TIFF** (Pillow mode ``F``) is read by its values, which must be finite and lie
  in [0, 1]; they are taken as they are. Other ranges (0-255, 0-65535, Hounsfield units, ...)
  cannot be told apart, so such a file, or one holding NaN or inf, is refused with its name and
  range: rescale it to [0, 1] or save it as an 8- or 16-bit image.
* **DICOM** (``.dcm``, ``.dicom``; read with pydicom, the ``dicom`` extra) goes through the
  display pipeline of the standard (PS3.3 C.11): the stored values are mapped by the Modality
  LUT (rescale slope and intercept, or a Modality LUT Sequence), then by the VOI LUT (a VOI
  LUT Sequence, else the first Window Center / Width with its VOI LUT Function) onto [0, 1].
  Without a VOI LUT or a window, the image's own minimum and maximum map to 0 and 1.
  ``MONOCHROME1`` (white = low values) is inverted so that bright is always high. 8- to
  16-bit, signed or unsigned, and RGB / YBR colour files are read; compressed transfer
  syntaxes need a decoder package (the error names it).

``channels`` chooses what the model gets: 3 (grayscale replicated to RGB) or 1 (colour
converted with the ITU-R 601 luma weights, as Pillow's ``L`` mode).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..errors import UserError

__all__ = ["DICOM_EXTENSIONS", "IMAGE_EXTENSIONS", "READ_ERRORS", "ImageReadError", "is_dicom", "probe_size",
           "read_dicom", "read_image"]

DICOM_EXTENSIONS = (".dcm", ".dicom")
IMAGE_EXTENSIONS = (*IMG_EXTENSIONS, *DICOM_EXTENSIONS)
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
FLOAT_MODE = "F"
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class ImageReadError(UserError):
    """An image file that cannot be read, with the reason and what to do."""


READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
"""What reading a broken file raises (:class:`ImageReadError` is a ``ValueError``)."""


def is_dicom(path: Path) -> bool:
    """Whether ``path`` is read as DICOM (by its extension)."""
    return Path(path).suffix.lower() in DICOM_EXTENSIONS


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError:
        raise ImageReadError("reading DICOM files needs pydicom: pip install 'isnet[dicom]' (or pip install "
                             "pydicom)") from None
    return pydicom


def _dataset(path: Path, *, pixels: bool) -> Any:
    """The DICOM dataset of ``path``, checked for readable pixel data (``pixels=False``: their values deferred)."""
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(path, defer_size=None if pixels else "1 KB")
    except pydicom.errors.InvalidDicomError as err:
        raise ImageReadError(f"{path} is not a DICOM file ({err})") from None
    except (OSError, EOFError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise ImageReadError(f"cannot read DICOM file {path} ({type(err).__name__}: {err})") from None
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageReadError(f"DICOM file {path} has no pixel data (is it a structured report, a presentation "
                             "state or a DICOMDIR?); remove it from the image folder")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(f"DICOM file {path} holds {frames} frames; isnet reads single images: export the frame "
                             "to use as its own file")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_compressed:
        from pydicom.pixels import get_decoder

        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            raise ImageReadError(f"DICOM file {path} uses the transfer syntax {syntax.name}, which pydicom cannot "
                                 "decode; convert it to an uncompressed syntax (e.g. with dcmtk's dcmdjpeg)") from None
        if not decoder.is_available:
            needs = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
            raise ImageReadError(f"DICOM file {path} is compressed ({syntax.name}) and no decoder for it is installed: "
                                 f"install one of the plugins ({needs}), e.g. pip install pylibjpeg "
                                 "pylibjpeg-libjpeg pylibjpeg-openjpeg")
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageReadError(f"DICOM file {path} lacks Rows / Columns")
    return ds


def _voi(values: np.ndarray, ds: Any) -> np.ndarray:
    """Modality-LUT output values mapped onto [0, 1] by the VOI LUT, the window, or the min-max range."""
    from pydicom.pixels import apply_voi_lut, apply_windowing

    if ds.get("VOILUTSequence"):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return apply_voi_lut(values, ds, index=0, prefer_lut=True).astype(np.float64) / (2**bits - 1)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        out = apply_windowing(values.astype(np.float64), ds, index=0)
        with np.errstate(over="ignore"):  # the output range: the window applied to -inf and +inf
            low, high = apply_windowing(np.array([-1e30, 1e30]), ds, index=0)
        return (out - low) / (high - low) if high > low else np.zeros_like(out)
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros(values.shape)


def read_dicom(path: str | Path) -> np.ndarray:
    """The display values of a DICOM image in [0, 1]: float32 (H, W) for grayscale, (H, W, 3) for colour."""
    from pydicom.pixels import apply_modality_lut

    path = Path(path)
    ds = _dataset(path, pixels=True)
    try:
        stored = ds.pixel_array
    except (ValueError, RuntimeError, NotImplementedError, AttributeError, TypeError, OSError) as err:
        raise ImageReadError(f"cannot decode the pixel data of DICOM file {path} ({type(err).__name__}: "
                             f"{str(err).strip()[:300]})") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    try:
        if photometric in ("MONOCHROME1", "MONOCHROME2"):
            values = _voi(np.asarray(apply_modality_lut(stored, ds), dtype=np.float64), ds)
            if photometric == "MONOCHROME1":
                values = 1.0 - values
        elif photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT"):  # pydicom returns RGB
            if stored.ndim != 3:
                raise ImageReadError(f"DICOM file {path} is {photometric} but its pixels have shape {stored.shape}")
            bits = int(ds.get("BitsStored", 8) or 8)
            values = stored.astype(np.float64) / (2**bits - 1)
        else:
            raise ImageReadError(f"DICOM file {path} has Photometric Interpretation {photometric}; isnet reads "
                                 "MONOCHROME1, MONOCHROME2 and RGB / YBR colour")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
        if isinstance(err, ImageReadError):
            raise
        raise ImageReadError(f"cannot apply the rescale / VOI LUT of DICOM file {path} ({type(err).__name__}: "
                             f"{err})") from None
    return np.clip(values, 0.0, 1.0).astype(np.float32)


def probe_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` from the file header (DICOM: also checks that its pixels can be decoded)."""
    path = Path(path)
    if is_dicom(path):
        ds = _dataset(path, pixels=False)
        return int(ds.Columns), int(ds.Rows)
    with Image.open(path) as im:
        return im.size


def _to_channels(gray_or_rgb: np.ndarray, channels: int) -> Tensor:
    """(H, W) or (H, W, 3) float or uint8 -> (channels, H, W) tensor of the same dtype."""
    arr = gray_or_rgb
    if arr.ndim == 3 and channels == 1:
        arr = (arr.astype(np.float32) @ _LUMA).astype(np.float32)
    if arr.ndim == 2:
        chw = torch.from_numpy(np.ascontiguousarray(arr))[None]
        return chw.expand(channels, -1, -1).clone() if channels == 3 else chw
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()


def _gray_values(im: Image.Image, path: Path) -> np.ndarray:
    """The pixels of a 16/32-bit integer (divided by 65535) or float (as they are) gray image, float32 in [0, 1].

    Raises :class:`ImageReadError` naming ``path`` for values that do not map onto [0, 1]:
    NaN or inf, float values outside [0, 1], integers outside 0...65535.
    """
    values = np.array(im, dtype=np.float32 if im.mode == FLOAT_MODE else np.int64)  # a writable copy
    if im.mode == FLOAT_MODE:
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise ImageReadError(f"float image {path} has {bad} NaN or infinite pixels; replace them (e.g. with "
                                 "numpy.nan_to_num) and save it again, with pixel values in [0, 1]")
        full, kind, expected = 1.0, "float image", "pixel values in [0, 1]"
    else:
        full, kind, expected = 65535, "32-bit integer image", "16-bit values, 0 to 65535"
    low, high = (values.min(), values.max()) if values.size else (0, 0)
    if low < 0 or high > full:
        raise ImageReadError(f"{kind} {path} has values from {low:.6g} to {high:.6g}, but isnet reads it as "
                             f"{expected}; rescale it to that range (e.g. divide by 255, 65535 or its maximum) or "
                             "save it as an 8- or 16-bit image")
    return values if im.mode == FLOAT_MODE else values.astype(np.float32) / np.float32(65535.0)


def read_image(path: str | Path, channels: int = 3) -> Tensor:
    """An image as a (channels, H, W) tensor: uint8 for 8-bit files, float32 in [0, 1] otherwise.

    Float (mode ``F``) files are read by their values, which must lie in [0, 1]; see the module
    docstring for what is refused (:class:`ImageReadError`, naming the file).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    path = Path(path)
    if is_dicom(path):
        return _to_channels(read_dicom(path), channels)
    with Image.open(path) as im:
        if im.mode in SIXTEEN_BIT_MODES or im.mode == FLOAT_MODE:
            return _to_channels(_gray_values(im, path), channels)
        arr = np.array(im.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)  # a writable copy
    return _to_channels(arr, channels)
