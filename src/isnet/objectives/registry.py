"""Training objectives: what one training step optimises, and the registry that names them.

An objective is a function ``step(ctx, images, masks, labels) -> StepOutput`` registered
under a name with :func:`register_objective`, which also records what the objective needs:

* ``explains``: the ISNet objective whose :class:`isnet.ISNet` heatmaps the run validates (and,
  for heatmap-loss objectives, calibrates C1/C2 on);
* ``heatmap_loss``: whether it uses the ISNet heatmap loss (so C1/C2 are calibrated when not given);
* ``needs_masks``: whether training images need foreground masks;
* ``masked_input``: whether the classifier sees images masked by their true masks (then also at
  test time, where the test images need masks too);
* ``input_masks``: ``input_masks(images, config)``, masks the objective makes itself for the
  images the classifier sees (at training and test time; ``seg-classify``'s segmenter);
* ``background_swap``: the default probability that a training image gets another image's background;
* ``hyperparameters``: the :class:`isnet.config.TrainConfig` fields it reads.

The training loop knows no objective by name: it looks the run's ``objective`` up here, and
evaluation and explanation ask it what the classifier sees (:meth:`Objective.classifier_input`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from ..config import TrainConfig
from ..loss import ISNetLoss
from ..masks import mask_background
from ..network import ISNet

__all__ = ["Objective", "StepContext", "StepOutput", "foreign_options", "get_objective", "objective_names",
           "register_objective"]


@dataclass
class StepContext:
    """What an objective may use in a training step.

    ``net`` wraps the classifier (``net.model``) with the heatmaps of the objective's ``explains``;
    ``criterion`` is the run's :class:`isnet.ISNetLoss`; ``warmup`` the fraction of ``P``
    reached (pass it to ``criterion``); ``config`` the resolved run configuration.
    """

    net: ISNet
    criterion: ISNetLoss
    config: TrainConfig
    warmup: float = 1.0


@dataclass
class StepOutput:
    """What an objective returns for one batch.

    ``loss`` is what the step minimises (logged as ``train/loss``); ``backward``, when given, is
    differentiated instead of ``loss`` (a surrogate whose gradient is a combination of the terms'
    gradients, :mod:`isnet.gradients`); ``terms`` are logged as ``train/<name>``; ``heatmaps``
    (detached input heatmaps, (B, K, C, H, W)), when given, feed the logged background share.
    """

    loss: Tensor
    logits: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    heatmaps: Tensor | None = None
    backward: Tensor | None = None


StepFn = Callable[[StepContext, Tensor, Tensor, Tensor], StepOutput]
CheckFn = Callable[[nn.Module, TrainConfig], None]
MasksFn = Callable[[Tensor, TrainConfig], Tensor]


@dataclass(frozen=True)
class Objective:
    """A registered objective and what it declares (see the module docstring)."""

    name: str
    step: StepFn
    explains: str = "standard"
    heatmap_loss: bool = False
    needs_masks: bool = True
    masked_input: bool = False
    input_masks: MasksFn | None = None
    background_swap: float = 0.0
    hyperparameters: tuple[str, ...] = ()
    check: CheckFn | None = None

    def classifier_input(self, images: Tensor, masks: Tensor | None, config: TrainConfig) -> Tensor:
        """What a classifier trained with this objective and ``config`` sees: the images, or the images with
        the background zeroed by their ``masks`` (``masked_input``) or by the masks it makes (``input_masks``)."""
        if self.input_masks is not None:
            return mask_background(images, self.input_masks(images, config))
        if not self.masked_input:
            return images
        if masks is None:
            raise ValueError(f"objective {self.name!r} classifies background-masked images: its inputs need masks")
        return mask_background(images, masks)

    def swap_probability(self, given: float | None) -> float:
        """The background-swap probability a run trains with: ``given``, or this objective's default."""
        return self.background_swap if given is None else float(given)


_REGISTRY: dict[str, Objective] = {}


def register_objective(name: str, **declared: Any) -> Callable[[StepFn], StepFn]:
    """Decorator: register ``step`` as the objective ``name`` with the given declarations.

    The function is returned unchanged, so one function can serve several names.
    """
    if name in _REGISTRY:
        raise ValueError(f"an objective named {name!r} is already registered")

    def decorate(step: StepFn) -> StepFn:
        _REGISTRY[name] = Objective(name, step, **declared)
        return step

    return decorate


def get_objective(name: str) -> Objective:
    """The objective registered as ``name``; a ValueError lists the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; choose one of {objective_names()}") from None


def foreign_options(objective: Objective, given: Iterable[str]) -> list[str]:
    """Options in ``given`` that only other objectives read (likely a mistake: ``rrr_lambda`` with selective)."""
    others = {name for o in _REGISTRY.values() if o is not objective for name in o.hyperparameters}
    return sorted(name for name in given if name in others and name not in objective.hyperparameters)


def objective_names() -> list[str]:
    """Names of the registered objectives, in registration order."""
    return list(_REGISTRY)

