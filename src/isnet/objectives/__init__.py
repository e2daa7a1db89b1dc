"""Training objectives by name: the ISNet objectives, the swap control and the baselines.

Importing this package registers every built-in objective (:mod:`.isnet`, :mod:`.baselines`,
:mod:`.segmented`); a new one is a function decorated with :func:`register_objective`.
"""

from . import baselines, isnet, segmented
from .registry import (
    Objective, StepContext, StepOutput, foreign_options, get_objective, objective_names, register_objective,
)

__all__ = [
    "Objective", "StepContext", "StepOutput", "baselines", "foreign_options", "get_objective", "isnet", "objective_names",
    "register_objective", "segmented",
]
