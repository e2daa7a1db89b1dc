"""Datasets: masked image folders and the BG-Digits background-bias benchmark."""

from isnet.data.bg_digits import BGDigits, generate, to_tensors, write_dataset
from isnet.data.folder import DatasetError, MaskedImageFolder, make_transform

__all__ = [
    "BGDigits",
    "DatasetError",
    "MaskedImageFolder",
    "generate",
    "make_transform",
    "to_tensors",
    "write_dataset",
]
