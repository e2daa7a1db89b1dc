"""Datasets: masked image folders and the BG-Digits and BG-CXR background-bias benchmarks.

General parts: :mod:`~isnet.data.folder` (the masked image-folder dataset),
:mod:`~isnet.data.imageio` (reading image files), :mod:`~isnet.data.augment` (the background
swap) and :mod:`~isnet.data.layout` (writing generated splits). The generators are in
:mod:`isnet.data.digits` and :mod:`isnet.data.cxr`. ``generate``, ``to_tensors`` and
``write_dataset`` here are BG-Digits'; BG-CXR's functions of the same names are in
:mod:`isnet.data.cxr`.
"""

from isnet.data.cxr import BGCXR
from isnet.data.digits import BGDigits, generate, to_tensors, write_dataset
from isnet.data.folder import DatasetError, MaskedImageFolder, make_transform

__all__ = [
    "BGCXR",
    "BGDigits",
    "DatasetError",
    "MaskedImageFolder",
    "generate",
    "make_transform",
    "to_tensors",
    "write_dataset",
]
