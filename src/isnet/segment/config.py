"""The options of ``isnet segment train``: one dataclass, as :class:`isnet.config.TrainConfig`.

Each field's metadata gives its command-line flag, help and group (:func:`isnet.config.option`);
``resumable`` fields may change on ``--resume``. This module imports no third-party package.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import from_fields, option, plain_fields, resolved, validate_ranges
from ..errors import UserError

__all__ = ["SEGMENT_RESUMABLE", "SegmentConfig", "UNET"]

UNET = "unet"
"""The ``objective`` a segmentation run records (a classifier run records its training objective there)."""


@dataclass
class SegmentConfig:
    """Everything a segmentation run depends on; ``fit_segmenter`` fills ``image_size``."""

    # data
    train: str | None = option(None, "training set root (images/<folder>/..., masks/<folder>/...; the folder names "
                                     "are ignored)", "data")
    val: str | None = option(None, "validation set root with the training set's folder names (best.ckpt tracks "
                                   "its Dice)", "data")
    image_size: int | None = option(None, "resize images and masks to this square side, a multiple of "
                                          "2^(depth-1) (default: the first training image's side)", "data",
                                    at_least=1)
    in_channels: int = option(3, "image channels the network reads: 3 (RGB; grayscale is replicated) or 1 "
                                 "(grayscale)", "data", choices=(1, 3))
    hflip: bool = option(False, "random horizontal flips in training (image and mask together)", "data")
    workers: int = option(2, "DataLoader workers per process", "data", resumable=True, at_least=0)
    # network
    width: int = option(16, "channels of the U-Net's first level (doubled at each level)", "network", at_least=1)
    depth: int = option(4, "levels of the U-Net (depth-1 down-samplings by 2)", "network", at_least=2, at_most=7)
    res_units: int = option(2, "residual units per level (MONAI UNet num_res_units)", "network", at_least=0)
    dropout: float = option(0.0, "dropout probability", "network", at_least=0, at_most=1)
    components: int = option(0, "keep only the N largest connected regions of each predicted mask (2 for a pair "
                                "of lungs; removes specks, e.g. on text markers); 0 keeps every region; predict and "
                                "eval can override it", "network", resumable=True, at_least=0)
    # optimisation
    epochs: int = option(30, "training epochs", "optimisation", resumable=True, at_least=1)
    batch_size: int = option(16, "batch size per process", "optimisation", at_least=1)
    lr: float = option(0.001, "learning rate (Adam)", "optimisation", above=0)
    weight_decay: float = option(0.0, "weight decay", "optimisation", at_least=0)
    # run
    seed: int = option(0, "seed of initialisation, shuffling and augmentation", "run", at_least=0,
                       at_most=2**32 - 1)
    out: str = option("segmenter", "run folder", "run")
    resume: bool = option(False, "continue OUT from checkpoints/last.ckpt (only --epochs and the hardware "
                                 "options may change)", "run")
    overwrite: bool = option(False, "start OUT again when it holds an unfinished run (never a finished model.pt)",
                             "run")
    deterministic: bool = option(True, "deterministic algorithms and seeding", "run")
    quiet: bool = option(False, "no progress bar or Lightning info", "run", resumable=True)
    accelerator: str = option("auto", "Lightning accelerator: auto, cpu, gpu, ...", "run", resumable=True)
    devices: int | str | list[int] = option("auto", "Lightning devices: auto, a count, or a list such as 0,1",
                                            "run", resumable=True)
    strategy: str = option("auto", "Lightning strategy: auto, ddp, ...", "run", resumable=True)
    precision: str = option("32-true", "Lightning precision: 32-true, bf16-mixed, 16-mixed", "run", resumable=True)
    # resolved
    objective: str = resolved(UNET)
    num_nodes: int = resolved(1)
    gradient_clip: float | None = resolved(None)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SegmentConfig:
        """A configuration from a mapping of field values; an unknown key is an error."""
        return from_fields(cls, values, "segmentation")

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON-ready values."""
        return plain_fields(self)

    def validate(self) -> None:
        """Raise :class:`isnet.errors.UserError` naming the first option out of range."""
        validate_ranges(self)
        if self.objective != UNET:
            raise UserError(f"objective {self.objective!r}: isnet segment trains a {UNET}")
        if self.resume and self.overwrite:
            raise UserError("--resume continues a run and --overwrite starts it again; give one of them")
        if self.train is None:
            raise UserError("no training set: give --train, a dataset root (images/ + masks/)")
        self.check_size(self.image_size)

    def check_size(self, size: int | None) -> None:
        """The U-Net halves the image ``depth - 1`` times: the side must divide."""
        step = 2 ** (self.depth - 1)
        if size is not None and size % step:
            raise UserError(f"--image-size {size} is not a multiple of {step} (2^(depth-1), --depth {self.depth}); "
                            f"use e.g. {max(step, size // step * step)}")


SEGMENT_RESUMABLE = tuple(f.name for f in dataclasses.fields(SegmentConfig) if f.metadata.get("resumable"))
"""Options that ``--resume`` takes from the new call; everything else comes from the run's config.json."""
