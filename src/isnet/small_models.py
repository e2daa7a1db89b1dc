"""Small classifiers for CPU runs, and the ``timm:NAME`` architectures.

``small_cnn`` (a ReLU CNN), ``small_vit`` (a four-block vision transformer, torchvision's
``VisionTransformer``) and ``small_convnext`` (a three-stage ConvNeXt, torchvision's
``ConvNeXt``) train in minutes on a CPU at 32-64 px. ``timm:NAME`` builds any model of the
``timm`` package (when installed) with random weights, sized for the data where the model
takes an image size (vision transformers).
"""

from __future__ import annotations

from torch import nn

from .errors import UserError

__all__ = ["BUILTIN", "TIMM", "builtin_model", "small_cnn", "small_convnext", "small_vit", "timm_model"]

TIMM = "timm:"
"""Prefix of an architecture name built by timm."""


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


def small_vit(num_classes: int = 10, image_size: int = 32) -> nn.Module:
    """A small vision transformer: 4x4 patches, 4 blocks of 4 heads, width 64 (``image_size`` divisible by 4).

    From scratch it learns more slowly than a CNN: train it longer and with a smaller learning
    rate (BG-Digits: 20 epochs at 3e-4, calibration 5 epochs).
    """
    from torchvision.models.vision_transformer import VisionTransformer

    if image_size % 4:
        raise UserError(f"small_vit needs an image size divisible by its patch size 4, got {image_size}")
    model = VisionTransformer(image_size=image_size, patch_size=4, num_layers=4, num_heads=4, hidden_dim=64,
                              mlp_dim=128, num_classes=num_classes)
    # torchvision starts the head at zero: every logit, and so every heatmap, is then zero, and
    # a ViT trained from scratch leaves chance level much later; a small random head does not
    nn.init.trunc_normal_(model.heads.head.weight, std=0.02)
    return model


def small_convnext(num_classes: int = 10) -> nn.Module:
    """A small ConvNeXt for 32x32 images: a 2x2 patch stem, stages of width 48, 96, 192 with two blocks each.

    Two departures from torchvision's ImageNet ConvNeXt fit it to small images trained from
    scratch. The stem cuts 2x2 patches (a 4x4 one leaves an 8x8 grid of a 32x32 image). Batch
    norm takes the place of layer norm after the stem, before each downsampling and before the
    head; the blocks keep theirs, with layer scale starting at 1. The ImageNet layout barely
    leaves chance level on BG-Digits in 12 epochs (``docs/studies.md``).
    """
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    stages = [CNBlockConfig(48, 96, 2), CNBlockConfig(96, 192, 2), CNBlockConfig(192, None, 2)]
    model = ConvNeXt(stages, stochastic_depth_prob=0.0, layer_scale=1.0, num_classes=num_classes,
                     norm_layer=nn.BatchNorm2d)
    model.features[0][0] = nn.Conv2d(3, 48, kernel_size=2, stride=2)
    return model


def builtin_model(arch: str, num_classes: int, image_size: int) -> nn.Module:
    """The small model ``arch`` (a key of :data:`BUILTIN`) for ``num_classes`` and ``image_size``."""
    if arch == "small_vit":
        return small_vit(num_classes, image_size)
    return BUILTIN[arch](num_classes=num_classes)


BUILTIN = {"small_cnn": small_cnn, "small_vit": small_vit, "small_convnext": small_convnext}
"""The small models by name."""


def timm_model(arch: str, num_classes: int, image_size: int) -> nn.Module:
    """``timm.create_model(NAME)`` for ``arch = "timm:NAME"``, random weights, ``num_classes`` outputs and, for
    models that take one, the image size ``image_size``."""
    try:
        import timm
    except ImportError:
        raise UserError(f"--arch {arch} needs the timm package: pip install timm (or pip install "
                        "'isnet[timm]')") from None
    name = arch[len(TIMM):]
    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:5]
        raise UserError(f"timm has no model {name!r}" + (f"; similar names: {', '.join(close)}" if close else ""))
    try:
        try:  # vision transformers are built for the image size; other models take no such argument
            return timm.create_model(name, pretrained=False, num_classes=num_classes, img_size=image_size)
        except TypeError:
            return timm.create_model(name, pretrained=False, num_classes=num_classes)
    except (AssertionError, ValueError, RuntimeError, TypeError) as err:
        raise UserError(f"timm cannot build {name} for {image_size}x{image_size} images: {err}") from None
