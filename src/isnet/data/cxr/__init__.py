"""BG-CXR: chest-X-ray-like images drawn around real lung masks, with hospital shortcuts.

:mod:`~isnet.data.cxr.bg_cxr` makes the dataset (splits, test sets, files) from the chest's
parts: the lung masks (:mod:`~isnet.data.cxr.lungs`), the anatomy drawn around them
(:mod:`~isnet.data.cxr.anatomy`) and the hospitals that image the chest
(:mod:`~isnet.data.cxr.hospitals`); :mod:`~isnet.data.cxr.figure` draws pictures of the data.
"""

from isnet.data.cxr.bg_cxr import BGCXR, generate, to_tensors, write_dataset

__all__ = ["BGCXR", "generate", "to_tensors", "write_dataset"]
