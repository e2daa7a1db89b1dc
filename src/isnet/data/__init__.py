"""Datasets: masked image folders and the BG-Digits and BG-CXR background-bias benchmarks.

``generate``, ``to_tensors`` and ``write_dataset`` here are BG-Digits'; BG-CXR's functions of
the same names are in :mod:`isnet.data.bg_cxr`.
"""

from isnet.data.bg_cxr import BGCXR
from isnet.data.bg_digits import BGDigits, generate, to_tensors, write_dataset
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
