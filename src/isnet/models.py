"""Classifier builders: any torchvision classification model by name, and ``small_cnn``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


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


def build_model(arch: str, num_classes: int, *, image_size: int = 32, weights: str | Path | None = None) -> nn.Module:
    """A freshly initialised classifier, optionally loading a state dict from ``weights``.

    Lazy layers are materialised with a dummy ``image_size`` input, so the model's
    parameters exist before an optimiser or a checkpoint sees them.
    """
    if arch in BUILTIN:
        model = BUILTIN[arch](num_classes=num_classes)
    else:
        from torchvision import models

        names = models.list_models(module=models)
        if arch not in names:
            raise ValueError(f"unknown architecture {arch!r}; choose small_cnn or a torchvision "
                             f"classification model such as resnet18, vgg11_bn, densenet121")
        model = models.get_model(arch, weights=None, num_classes=num_classes)
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size))
        model.train()
    if weights is not None:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model
