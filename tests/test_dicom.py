"""Medical image input: DICOM (rescale, window / VOI LUT, MONOCHROME1), 16-bit PNG/TIFF, one-channel models,
in the dataset layout and in isnet explain, with clear errors for files that cannot be read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import require

pydicom = require("pydicom")
from pydicom.dataset import FileDataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, SecondaryCaptureImageStorage, generate_uid  # noqa

from isnet.cli import main  # noqa: E402
from isnet.data import DatasetError, MaskedImageFolder  # noqa: E402
from isnet.data.imageio import ImageReadError, probe_size, read_dicom, read_image  # noqa: E402


def write_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits: int = 12,
                slope: float | None = None, intercept: float | None = None, window: tuple | None = None,
                syntax=ExplicitVRLittleEndian, pixel_data: bool = True) -> Path:
    """A single-frame grayscale DICOM file written with pydicom (unsigned, 16 bits allocated)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "DX", "test"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if pixel_data:
        ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def ramp() -> np.ndarray:
    return (np.arange(16 * 20).reshape(16, 20) * 12).astype(np.uint16)  # 0 ... 3828 (12 bits)


def test_rescale_window_and_monochrome1(tmp_path, ramp):
    plain = read_dicom(write_dicom(tmp_path / "plain.dcm", ramp))  # no window: the image's min-max
    np.testing.assert_allclose(plain, ramp / ramp.max(), atol=1e-6)
    # rescale to -1000 + 2 x stored, then a LINEAR window centred on 1000, width 2001: [0, 1] over -0.5 ... 2000.5
    windowed = read_dicom(write_dicom(tmp_path / "w.dcm", ramp, slope=2.0, intercept=-1000.0, window=(1000, 2001)))
    value = ramp * 2.0 - 1000.0
    np.testing.assert_allclose(windowed, np.clip((value - 999.5) / 2000 + 0.5, 0, 1), atol=1e-5)
    assert windowed.min() == 0 and windowed.max() == 1 and windowed.shape == (16, 20)
    inverted = read_dicom(write_dicom(tmp_path / "m1.dcm", ramp, slope=2.0, intercept=-1000.0, window=(1000, 2001),
                                      photometric="MONOCHROME1"))
    np.testing.assert_allclose(inverted, 1 - windowed, atol=1e-6)  # MONOCHROME1: high values are dark
    eight = read_dicom(write_dicom(tmp_path / "8.dcm", (ramp // 16).astype(np.uint16), bits=8))
    np.testing.assert_allclose(eight, (ramp // 16) / (ramp // 16).max(), atol=1e-6)
    gray = read_image(tmp_path / "w.dcm", channels=1)
    rgb = read_image(tmp_path / "w.dcm", channels=3)
    assert gray.shape == (1, 16, 20) and rgb.shape == (3, 16, 20) and torch.equal(rgb[1], gray[0])
    assert probe_size(tmp_path / "w.dcm") == (20, 16)  # (width, height), as Pillow


def test_pydicom_example_files():
    from pydicom import examples
    from pydicom.pixels import apply_modality_lut

    ct = examples.ct  # signed 16-bit CT with rescale intercept -1024 and no window
    hu = apply_modality_lut(ct.pixel_array, ct).astype(np.float64)
    np.testing.assert_allclose(read_dicom(examples.get_path("ct")), (hu - hu.min()) / (hu.max() - hu.min()),
                               atol=1e-6)
    mr = read_dicom(examples.get_path("mr"))  # with a window
    assert mr.shape == (64, 64) and 0 <= mr.min() and mr.max() <= 1
    assert read_dicom(examples.get_path("rgb_color")).shape == (240, 320, 3)


def test_files_that_cannot_be_read_are_named(tmp_path, ramp):
    text = tmp_path / "notes.dcm"
    text.write_text("not a DICOM file")
    with pytest.raises(ImageReadError, match="notes.dcm"):
        read_dicom(text)
    empty = write_dicom(tmp_path / "sr.dcm", ramp, pixel_data=False)
    with pytest.raises(ImageReadError, match="sr.dcm has no pixel data"):
        probe_size(empty)
    jls = tmp_path / "jpegls.dcm"
    write_dicom(jls, ramp)
    ds = pydicom.dcmread(jls)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8not really jpeg-ls\xff\xd9"])
    ds.save_as(jls, enforce_file_format=True)
    with pytest.raises(ImageReadError, match=r"jpegls.dcm is compressed \(JPEG-LS.*pyjpegls"):
        probe_size(jls)


def _layout(root: Path, ramp: np.ndarray) -> Path:
    for label, photometric in (("a", "MONOCHROME2"), ("b", "MONOCHROME1")):
        for i in range(4):
            (root / "images" / label).mkdir(parents=True, exist_ok=True)
            (root / "masks" / label).mkdir(parents=True, exist_ok=True)
            write_dicom(root / "images" / label / f"{i}.dcm", np.roll(ramp, i, axis=1)[:16, :16],
                        photometric=photometric, window=(2000, 4000))
            mask = np.zeros((16, 16), np.uint8)
            mask[4:12, 4:12] = 1
            Image.fromarray(mask).save(root / "masks" / label / f"{i}.png")
    return root


def test_dicom_and_16_bit_images_in_the_dataset_layout(tmp_path, ramp):
    root = _layout(tmp_path / "data", ramp)
    Image.fromarray((ramp[:16, :16] * 16).astype(np.uint16)).save(root / "images" / "a" / "p16.png")
    Image.fromarray((ramp[:16, :16] * 16).astype(np.uint16)).save(root / "images" / "a" / "t16.tif")
    for name in ("p16", "t16"):
        Image.fromarray(np.ones((16, 16), np.uint8)).save(root / "masks" / "a" / f"{name}.png")
    gray = MaskedImageFolder(root, channels=1)
    image, mask, label = gray[0]
    assert image.shape == (1, 16, 16) and image.dtype == torch.float32 and mask.shape == (1, 16, 16)
    sixteen = [i for i, (p, _, _) in enumerate(gray.samples) if p.suffix in (".png", ".tif")]
    for i in sixteen:
        torch.testing.assert_close(gray[i][0][0], torch.from_numpy(ramp[:16, :16] * 16 / 65535.0).float())
    assert MaskedImageFolder(root)[0][0].shape == (3, 16, 16)
    Image.fromarray(np.ones((8, 8), np.uint8)).save(root / "masks" / "b" / "0.png")  # another size
    (root / "images" / "b" / "3.dcm").write_bytes(b"truncated")
    with pytest.raises(DatasetError) as info:
        MaskedImageFolder(root)
    message = str(info.value)
    assert "mask " + str(root / "masks" / "b" / "0.png") + " is 8x8 but image" in message
    assert str(root / "images" / "b" / "3.dcm") in message


@pytest.mark.e2e
def test_train_one_channel_on_dicom_then_eval_and_explain(tmp_path, ramp, capsys):
    root = _layout(tmp_path / "data", ramp)
    run = tmp_path / "run"
    assert main(["train", "--train", str(root), "--in-channels", "1", "--objective", "standard", "--epochs", "1",
                 "--batch-size", "8", "--workers", "0", "--quiet", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["in_channels"] == 1
    assert main(["eval", "--checkpoint", str(run), "--test", f"train={root}", "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["train"]["n"] == 8
    heat = tmp_path / "heat"
    assert main(["explain", "--checkpoint", str(run), "--images", str(root), "--out", str(heat)]) == 0
    assert np.load(heat / "a" / "0.npy").shape == (1, 16, 16)  # relevance of the one channel
    single = tmp_path / "one"
    assert main(["explain", "--arch", "small_cnn", "--num-classes", "2", "--images",
                 str(root / "images" / "b" / "1.dcm"), "--out", str(single)]) == 0
    assert np.load(single / "1.npy").shape == (3, 16, 16)  # a 3-channel model gets the gray image replicated
    capsys.readouterr()
