"""The configuration of a training run: one typed dataclass, the single source of its options.

Every :class:`TrainConfig` field carries its command-line help and group in its metadata, so
``isnet train --help``, the defaults and the validation all come from this one place. Fields
have one of four roles:

* **recipe** fields decide what is trained (data, model, loss, optimisation, seed);
* **runtime** fields decide where and how fast (hardware, workers, logging); a resumed run may
  change them, and :data:`RESUMABLE` names those that ``--resume`` accepts;
* **bookkeeping** fields (the output folder, ``quiet``, ``workers``, ``resume``) change nothing
  about the trained network;
* **resolved** fields are filled in by training (class list, image size, calibrated C1/C2) and
  have no command-line option.

This module imports no third-party package, so the command line can be built without loading
PyTorch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BOOKKEEPING", "OPTIMIZERS", "RESUMABLE", "SCHEDULES", "TrainConfig", "option"]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "cosine", "step")


def option(default: Any, help: str, group: str, *, flag: str | None = None, choices: tuple | None = None,
           metavar: str | None = None, resumable: bool = False, bookkeeping: bool = False) -> Any:
    """A dataclass field with its command-line description.

    ``flag`` overrides the generated ``--field-name``; ``resumable`` marks options that a
    resumed run may change; ``bookkeeping`` marks options that do not change the trained model.
    """
    meta = {"help": help, "group": group, "flag": flag, "choices": choices, "metavar": metavar,
            "resumable": resumable, "bookkeeping": bookkeeping}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def resolved(default: Any = None) -> Any:
    """A field that training fills in (no command-line option)."""
    return field(default=default, metadata={"resolved": True})


@dataclass
class TrainConfig:
    """Everything a training run depends on; :func:`isnet.training.fit` fills the resolved fields."""

    # data
    train: str | None = option(None, "training set root (images/<class>/..., masks/<class>/...)", "data")
    val: str | None = option(None, "validation set root (best.ckpt tracks its accuracy)", "data")
    image_size: int | None = option(None, "resize images and masks to this square side (default: the first "
                                          "training image's side, which must then be square)", "data")
    hflip: bool = option(False, "random horizontal flips in training (image and mask together)", "data")
    workers: int = option(2, "DataLoader workers per process", "data", resumable=True, bookkeeping=True)
    # model
    arch: str = option("small_cnn", "small_cnn or a torchvision classification model name", "model")
    variant: str = option("selective", "training objective: an ISNet variant (standard, original, selective, "
                                       "stochastic), the swap control or a baseline (rrr, gradcam, masked)", "model")
    deep_supervision: bool | list[str] = option(
        False, "LRP deep supervision: without names the default layers (ResNet stages, DenseNet transitions, "
               "VGG stages, else the max-pool outputs), or these module names", "model", metavar="LAYER")
    selective_class: str = option("lowest", "class whose eta the selective variant explains (lowest, as the "
                                            "reference implementation)", "model",
                                  choices=("lowest", "label", "highest"))
    selective_eps: float = option(0.01, "e_s of the selective quantity", "model")
    epsilon: float = option(0.01, "LRP epsilon", "model")
    zb: bool = option(True, "Z^B rule on the first layer (--no-zb: LRP-epsilon down to the input)", "model")
    # ISNet loss
    P: float = option(0.7, "heatmap-loss weight: (1-P) CE + P heatmap loss", "ISNet loss")
    p_warmup: float = option(3.0, "epochs of linear warm-up of P from 0 (0: none)", "ISNet loss")
    d: float = option(0.99, "GWRP decay over background pixels (the papers use 0.9)", "ISNet loss")
    E: float = option(1.0, "background-term scale", "ISNet loss")
    A: float = option(1.0, "background-term weight", "ISNet loss")
    B: float = option(1.0, "foreground-term weight", "ISNet loss")
    C1: float | None = option(None, "foreground relevance lower bound (with --c2; default: calibrated)",
                              "ISNet loss", flag="--c1")
    C2: float | None = option(None, "foreground relevance upper bound (with --c1; default: calibrated)",
                              "ISNet loss", flag="--c2")
    foreground: str = option("L2", "foreground penalty", "ISNet loss", choices=("L2", "hybrid"))
    norm: str = option("absRoIMean", "heatmap normalisation", "ISNet loss", choices=("absRoIMean", "RoIMean"))
    d_loss: float = option(1.0, "GWRP decay over deep-supervision layers (1: mean)", "ISNet loss")
    calibrate_epochs: int = option(2, "without --c1/--c2: epochs of the standard run that calibrates them",
                                   "ISNet loss")
    background_swap: float | None = option(
        None, "probability that a training image gets another image's background (mask-based); default: the "
              "variant's own (see --variant)", "ISNet loss", metavar="PROB")
    # baselines
    rrr_lambda: float = option(10.0, "rrr: weight of the input-gradient penalty", "baselines")
    gradcam_weight: float = option(1.0, "gradcam: weight of the background Grad-CAM share", "baselines")
    gradcam_layer: str | None = option(None, "gradcam: module whose output is the Grad-CAM feature map "
                                             "(default: the last convolutional feature map)", "baselines")
    # optimisation
    epochs: int = option(30, "training epochs", "optimisation", resumable=True)
    batch_size: int = option(64, "batch size per process", "optimisation")
    lr: float = option(0.001, "learning rate", "optimisation")
    optimizer: str = option("adam", "optimiser (sgd uses --momentum)", "optimisation", choices=OPTIMIZERS)
    momentum: float = option(0.9, "SGD momentum", "optimisation")
    weight_decay: float | None = option(None, "weight decay (default 0, AdamW 0.01)", "optimisation")
    schedule: str = option("cosine", "learning-rate schedule", "optimisation", choices=SCHEDULES)
    lr_step: int | None = option(None, "step schedule: epochs per decay (default epochs // 3)", "optimisation")
    lr_gamma: float = option(0.1, "step schedule: decay factor", "optimisation")
    gradient_clip: float | None = option(1.0, "gradient-norm clipping (0: off)", "optimisation")
    # run
    seed: int = option(0, "seed of initialisation, shuffling and augmentation", "run")
    out: str = option("run", "run folder", "run", bookkeeping=True)
    resume: bool = option(False, "continue OUT from checkpoints/last.ckpt with OUT/config.json (only --epochs "
                                 "and the hardware options may change)", "run", bookkeeping=True)
    deterministic: bool = option(True, "deterministic algorithms and seeding", "run")
    quiet: bool = option(False, "no progress bar or Lightning info", "run", resumable=True, bookkeeping=True)
    accelerator: str = option("auto", "Lightning accelerator: auto, cpu, gpu, ...", "run", resumable=True)
    devices: int | str | list[int] = option("auto", "Lightning devices: auto, a count, or a list such as 0,1",
                                            "run", resumable=True)
    num_nodes: int = option(1, "nodes for multi-node DDP", "run", resumable=True)
    strategy: str = option("auto", "Lightning strategy: auto, ddp, ddp_find_unused_parameters_true, ...", "run",
                           resumable=True)
    precision: str = option("32-true", "Lightning precision: 32-true, bf16-mixed, 16-mixed, ...", "run",
                            resumable=True)
    # resolved by training
    classes: list[str] | None = resolved()
    num_classes: int | None = resolved()
    calibration: dict | None = resolved()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """A configuration from a mapping of field values; an unknown key is an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training options {unknown}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON-ready values."""
        out = dataclasses.asdict(self)
        for key in ("train", "val", "out"):
            if out[key] is not None:
                out[key] = str(out[key])
        return out

    def lrp_options(self) -> dict[str, Any]:
        """The LRP-Flex options of this run (keyword arguments of :class:`isnet.LRPFlex`)."""
        return {"epsilon": self.epsilon, "zb": self.zb}

    def validate(self) -> None:
        """Raise ValueError on an option out of range (the variant name is checked by its registry)."""
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if not 0.0 <= self.P <= 1.0:
            raise ValueError(f"P must be in [0, 1], got {self.P}")
        if self.p_warmup < 0 or self.calibrate_epochs < 1 or self.workers < 0 or self.seed < 0:
            raise ValueError("p_warmup, workers and seed must be >= 0 and calibrate_epochs >= 1")
        if (self.C1 is None) != (self.C2 is None):
            raise ValueError("give both C1 and C2, or neither (then they are calibrated)")
        if self.C1 is not None and not 0.0 < self.C1 <= self.C2:
            raise ValueError(f"need 0 < C1 <= C2, got C1={self.C1}, C2={self.C2}")
        if self.background_swap is not None and not 0.0 <= self.background_swap <= 1.0:
            raise ValueError(f"background_swap must be in [0, 1], got {self.background_swap}")
        if self.train is None:
            raise ValueError("no training set: set train to a dataset root (images/ + masks/)")


def _names(flag: str) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get(flag))


RESUMABLE = _names("resumable")
"""Options that ``resume`` takes from the new call; everything else comes from the run's config.json."""
BOOKKEEPING = _names("bookkeeping")
"""Options that do not change the trained network (left out of a run's settings key)."""
