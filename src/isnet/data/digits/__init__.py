"""Generated digit datasets with a background shortcut: BG-Digits and Decoy-Digits.

:mod:`~isnet.data.digits.bg_digits` makes BG-Digits (splits, test sets, files) on the
backgrounds of :mod:`~isnet.data.digits.backgrounds`; :mod:`~isnet.data.digits.mask_quality`
degrades its training masks on purpose; :mod:`~isnet.data.digits.decoy_digits` is the
Decoy-MNIST construction of Right for the Right Reasons.
"""

from isnet.data.digits.bg_digits import BGDigits, generate, to_tensors, write_dataset

__all__ = ["BGDigits", "generate", "to_tensors", "write_dataset"]
