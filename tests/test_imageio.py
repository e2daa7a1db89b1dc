"""Wide-range image files: 32-bit float TIFFs read by their values, and ranges that cannot be read refused."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from isnet.data import DatasetError, MaskedImageFolder
from isnet.data.imageio import ImageReadError, read_image
from isnet.explain_files import load_image


def _tiff(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values).save(path)
    return path


@pytest.fixture
def unit() -> np.ndarray:
    """Float32 pixels in [0, 1] that reach both ends, none a multiple of 1/255."""
    values = np.random.default_rng(0).uniform(0.01, 0.99, (6, 5)).astype(np.float32)
    values[0, 0], values[-1, -1] = 0.0, 1.0
    return values


def test_float_tiff_is_read_by_its_values(tmp_path: Path, unit: np.ndarray) -> None:
    path = _tiff(tmp_path / "images" / "a" / "x.tif", unit)
    assert Image.open(path).mode == "F"  # a real 32-bit float TIFF
    expected = torch.from_numpy(unit)
    gray, rgb = read_image(path, channels=1), read_image(path, channels=3)
    assert gray.dtype == rgb.dtype == torch.float32 and gray.shape == (1, 6, 5) and rgb.shape == (3, 6, 5)
    assert torch.equal(gray[0], expected) and all(torch.equal(channel, expected) for channel in rgb)
    assert torch.equal(load_image(path, None, channels=1)[0], expected)  # what isnet explain reads
    _tiff(tmp_path / "masks" / "a" / "x.png", np.ones((6, 5), np.uint8))
    image, _, _ = MaskedImageFolder(tmp_path)[0]  # what isnet train reads: not black
    assert torch.equal(image[1], expected) and image.max() == 1.0


def test_32_bit_integer_tiff_in_the_16_bit_range_is_divided_by_65535(tmp_path: Path) -> None:
    values = np.array([[0, 1, 300], [40000, 65534, 65535]], dtype=np.int32)
    path = _tiff(tmp_path / "i.tif", values)
    assert Image.open(path).mode == "I"
    expected = torch.tensor(values.tolist(), dtype=torch.float64) / 65535
    torch.testing.assert_close(read_image(path, channels=1)[0].double(), expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("change, found", [
    (lambda v: v * 255, "values from 0 to 255"),  # forgot to divide by 255
    (lambda v: v - 0.5, "values from -0.5 to 0.5"),
    (lambda v: np.where(v == 1, np.nan, v), "1 NaN or infinite pixels"),
    (lambda v: np.where(v == 0, -np.inf, v), "1 NaN or infinite pixels"),
])
def test_float_tiff_outside_0_1_or_not_finite_is_refused_naming_the_file(tmp_path: Path, unit: np.ndarray,
                                                                         change, found: str) -> None:
    path = _tiff(tmp_path / "images" / "a" / "bad.tif", change(unit).astype(np.float32))
    with pytest.raises(ImageReadError, match=re.escape(found)) as info:
        read_image(path)
    assert str(path) in str(info.value) and "[0, 1]" in str(info.value)
    _tiff(tmp_path / "masks" / "a" / "bad.png", np.ones((6, 5), np.uint8))
    dataset = MaskedImageFolder(tmp_path)  # headers only: refused when the pixels are loaded
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        dataset[0]


def test_32_bit_integer_tiff_outside_the_16_bit_range_is_refused(tmp_path: Path) -> None:
    for name, values in (("big", [[0, 70000]]), ("negative", [[-1, 5]])):
        path = _tiff(tmp_path / f"{name}.tif", np.array(values, dtype=np.int32))
        with pytest.raises(ImageReadError, match=re.escape(f"{path} has values from {values[0][0]} to "
                                                             f"{values[0][1]}")) as info:
            read_image(path)
        assert "0 to 65535" in str(info.value)
