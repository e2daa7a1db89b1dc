"""Run folders and trained classifiers, without the training machinery.

A run folder written by ``isnet train`` holds:

* ``config.json``: the resolved :class:`isnet.config.TrainConfig` (class list, image size, C1/C2,
  the pretrained weights, normalisation and input channels the model was built with);
* ``checkpoints/last.ckpt`` (every epoch, for resuming) and ``checkpoints/best.ckpt``;
* ``metrics.csv`` (and ``calibration/metrics.csv`` when C1/C2 were calibrated), ``hparams.yaml``;
* ``model.pt``: the classifier's state dict, written when training ends.

Loading a classifier, building its explainer and preparing its input need only PyTorch, so
``isnet explain`` and ``isnet eval`` never import Lightning.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import TrainConfig, current_names
from .errors import UserError, UserFileNotFoundError
from .lrp import LRPFlex
from .models import build_model, check_state_dict, read_torch_file
from .objectives import get_objective
from .outputs import write_json
from .paths import CHECKPOINTS, CONFIG, MODEL, read_run_config

__all__ = ["CHECKPOINTS", "CONFIG", "MODEL", "classifier_input", "explainer", "load_classifier", "read_checkpoint",
           "write_json"]

_REQUIRED = ("arch", "num_classes", "image_size", "objective")


def read_checkpoint(path: Path) -> dict:
    """A checkpoint or state dict loaded on the CPU with ``weights_only``; a :class:`UserError` otherwise."""
    return read_torch_file(path, what="checkpoint")


def _find_weights(path: Path) -> Path:
    if path.is_dir():
        candidates = [path / MODEL, path / CHECKPOINTS / "best.ckpt", path / CHECKPOINTS / "last.ckpt"]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise UserFileNotFoundError(f"{path} holds no {MODEL} or {CHECKPOINTS}/{{best,last}}.ckpt")
        return found
    if not path.is_file():
        raise UserFileNotFoundError(f"no such checkpoint or run folder: {path}")
    return path


def load_classifier(path: str | Path, *, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The plain classifier of a training run, in eval mode, and its resolved config (a dict).

    ``path`` is a run folder (``model.pt``, else ``checkpoints/best.ckpt``, else
    ``checkpoints/last.ckpt``, with ``config.json``), a ``.ckpt`` file written by training, or
    a ``.pt`` state dict next to (or one folder below) a ``config.json``.
    """
    path = _find_weights(Path(path).expanduser())
    if path.suffix == ".ckpt":
        ckpt = read_checkpoint(path)
        try:
            config = current_names(ckpt["hyper_parameters"]["config"])  # a checkpoint of an earlier isnet too
            prefix = "net.model."
            state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        except (KeyError, TypeError, AttributeError):
            raise UserError(f"{path} is not a checkpoint written by isnet train (no config or state dict inside); "
                            "another program's checkpoint or state dict is read by isnet explain --arch ARCH "
                            "--weights FILE") from None
    else:
        config_path = next((p / CONFIG for p in (path.parent, path.parent.parent) if (p / CONFIG).is_file()), None)
        if config_path is None:
            raise UserFileNotFoundError(f"no {CONFIG} next to {path}; give the run folder or a .ckpt file of isnet "
                                        "train (another program's state dict or checkpoint is read by isnet explain "
                                        "--arch ARCH --weights FILE)")
        config = read_run_config(config_path)
        state = read_checkpoint(path)
    lacking = [key for key in _REQUIRED if config.get(key) is None]
    if lacking:
        raise UserError(f"the configuration of {path} lacks {lacking}: is it a run written by isnet train?")
    # the architecture only: a pretrained run's state dict replaces its starting weights, so the weights file is
    # not needed; the folded normalisation and the input channels change the first layer's shape
    model = build_model(config["arch"], config["num_classes"], image_size=config["image_size"],
                        normalize=config.get("normalize") or "none", in_channels=config.get("in_channels") or 3)
    check_state_dict(model, state, source=str(path))
    model.load_state_dict(state)
    return model.to(map_location).eval(), config


def explainer(model: nn.Module, config: Mapping[str, Any]) -> LRPFlex:
    """The LRP-Flex explainer of a trained classifier, with its run's LRP options."""
    return LRPFlex(model, **TrainConfig.from_dict(config).lrp_options())


def classifier_input(images: Tensor, masks: Tensor | None, config: Mapping[str, Any]) -> Tensor:
    """What a run's classifier sees: the images, or, for masked-input objectives, the masked images
    (:meth:`isnet.objectives.Objective.classifier_input`; ``seg-classify``: masked by its segmenter)."""
    return get_objective(config["objective"]).classifier_input(images, masks, TrainConfig.from_dict(config))
