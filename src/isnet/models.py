"""Classifier builders: any torchvision classification model by name, and ``small_cnn``.

Weights are read with ``torch.load(weights_only=True)``: tensors only, so a file can never run
code. A file that is not a state dict, is truncated or belongs to another architecture is a
:class:`isnet.errors.UserError` that names the file and the first mismatching entries.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UserError, UserFileNotFoundError

__all__ = ["BUILTIN", "build_model", "check_state_dict", "read_torch_file", "small_cnn"]


def _conv_block(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()]


def small_cnn(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> nn.Sequential:
    """A small ReLU CNN for quick CPU runs on 32x32 images.

    Four conv -> batch norm -> ReLU blocks (three max-pools), then two dense layers.
    Batch norm makes it learn BG-Digits' digits about twice as fast as without.
    """
    w = width
    return nn.Sequential(
        *_conv_block(in_channels, w), *_conv_block(w, 2 * w), nn.MaxPool2d(2),
        *_conv_block(2 * w, 4 * w), nn.MaxPool2d(2),
        *_conv_block(4 * w, 4 * w), nn.MaxPool2d(2),
        nn.Flatten(), nn.LazyLinear(8 * w), nn.ReLU(), nn.Linear(8 * w, num_classes),
    )


BUILTIN = {"small_cnn": small_cnn}


def read_torch_file(path: str | Path, *, what: str = "weights file") -> Any:
    """A PyTorch file loaded on the CPU with ``weights_only``; a :class:`UserError` saying why it cannot be."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give the file")
    if not path.is_file():
        hint = ""
        if re.fullmatch(r"[A-Z0-9_]+(\.[A-Z0-9_]+)?", path.name) and not path.suffix.lower() in (".pt", ".pth"):
            hint = (f"; {path.name} looks like a torchvision weights name, but isnet downloads nothing: save them "
                    "once with torch.save(torchvision.models.get_model(ARCH, weights=NAME).state_dict(), "
                    "'ARCH.pt') and pass that file")
        raise UserFileNotFoundError(f"{what} {path} does not exist{hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to unpickle means "not a file we can use"
        text = str(err)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:
            reason = (f"it holds Python objects ({found.group(1)}) besides tensors, which isnet does not unpickle "
                      "(unpickling can run code); save a plain state dict: torch.save(model.state_dict(), PATH)")
        else:
            detail = "" if "Weights only load failed" in text else f" ({type(err).__name__}: {text.strip()[:160]})"
            reason = f"it is not a PyTorch file, or it is truncated{detail}"
        raise UserError(f"cannot read {what} {path}: {reason}") from None


def check_state_dict(model: nn.Module, state: Any, *, source: str) -> None:
    """Raise a :class:`UserError` when ``state`` does not fit ``model`` (keys or shapes), naming a few entries."""
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        hint = (" (it looks like a Lightning checkpoint: pass it as --checkpoint)"
                if isinstance(state, Mapping) and "state_dict" in state else "")
        raise UserError(f"{source} is not a state dict (a mapping of parameter names to tensors){hint}")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)):
        if items:
            parts.append(f"{len(items)} {label} (e.g. {', '.join(items[:3])})")
    raise UserError(f"{source} does not fit this model: {'; '.join(parts)}. Check the architecture, the class "
                    "count and, for small_cnn, the image size the weights were trained with")


def build_model(arch: str, num_classes: int, *, image_size: int = 32, weights: str | Path | None = None) -> nn.Module:
    """A freshly initialised classifier, optionally loading a state dict from ``weights``.

    Lazy layers are materialised with a dummy ``image_size`` input, so the model's
    parameters exist before an optimiser or a checkpoint sees them.
    """
    if num_classes < 1 or image_size < 1:
        raise UserError(f"need num_classes >= 1 and image_size >= 1, got {num_classes} and {image_size}")
    if arch in BUILTIN:
        model = BUILTIN[arch](num_classes=num_classes)
    else:
        from torchvision import models

        names = models.list_models(module=models)
        if arch not in names:
            raise UserError(f"unknown architecture {arch!r}; choose small_cnn or a torchvision "
                             f"classification model such as resnet18, vgg11_bn, densenet121")
        model = models.get_model(arch, weights=None, num_classes=num_classes)
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size))
        model.train()
    if weights is not None:
        state = read_torch_file(weights)
        check_state_dict(model, state, source=f"weights file {weights}")
        model.load_state_dict(state)
    return model
