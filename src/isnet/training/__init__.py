"""Training with Lightning: the module, the data module and ``fit``.

``isnet train`` calls :func:`fit`; loading what it wrote needs only :mod:`isnet.checkpoints`.
"""

from .data import MaskedDataModule
from .fit import fit
from .module import ISNetModule, TrainingDiverged

__all__ = ["ISNetModule", "MaskedDataModule", "TrainingDiverged", "fit"]
