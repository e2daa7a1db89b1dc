"""Classifier builders: any torchvision classification model by name, the small CPU models and
``timm:NAME`` (:mod:`isnet.small_models`). torchvision's ``vit_*`` models are built for the
data's image size (a multiple of their patch size); pretrained ViT weights made for another
size get their position embeddings resized (bicubic), as torchvision does for fine-tuning.

**Weights.** ``weights`` is None (random initialisation), a torchvision weights name
(``DEFAULT``, ``IMAGENET1K_V1``, ``ResNet18_Weights.IMAGENET1K_V1``) or a state-dict file. A
weights name is read from the torch hub cache and downloaded into it when missing, as
torchvision does (:mod:`isnet.pretrained`, which also has the offline switch). Every file is read with
``torch.load(weights_only=True)``: tensors only, so a file can never run code. A file that is
not a state dict, is truncated or belongs to another architecture is a
:class:`isnet.errors.UserError` naming the file and the first mismatching entries.

**A new head.** With ``new_head=True`` (training), weights whose class count differs from
``num_classes`` are loaded into everything but the model's last ``nn.Linear`` (``fc``,
``classifier[-1]``, ``heads.head``, ...), which keeps its fresh initialisation.

**Input normalisation, folded.** Every isnet model takes pixels in [0, 1]. A network trained
on ImageNet expects ``(x - mean) / std``; ``normalize="imagenet"`` folds that affine map into
the first convolution (``W' = W / std``, ``b' = b - sum W mean / std``), which then gains a
bias. The data pipeline, the masks, the background swap and the Z^B bounds (0, 1) stay as they
are. The one difference from normalising outside is the first convolution's zero padding: the
folded model pads the [0, 1] image with black where the original padded the normalised image
with the mean colour, which changes only the border outputs of that layer (fine-tuning absorbs
it). ``in_channels=1`` sums the first convolution over the colour channels, which is exact for
a grayscale image replicated to RGB, so an ImageNet model reads one-channel X-rays directly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UserError, UserFileNotFoundError
from .pretrained import cache_path, download_weights, is_weights_name, torchvision_weights
from .small_models import BUILTIN, TIMM, builtin_model, small_cnn, timm_model

__all__ = ["BUILTIN", "IMAGENET_MEAN", "IMAGENET_STD", "NORMALIZATIONS", "build_model", "check_state_dict",
           "first_conv", "fold_input", "last_linear", "read_torch_file", "resolve_normalize", "small_cnn"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = {"none": None, "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}


def read_torch_file(path: str | Path, *, what: str = "weights file") -> Any:
    """A PyTorch file loaded on the CPU with ``weights_only``; a :class:`UserError` saying why it cannot be."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give the file")
    if not path.is_file():
        hint = ""
        if is_weights_name(str(path)):
            hint = (f"; {path.name} looks like a torchvision weights name: give it with a torchvision --arch "
                    "(read from the torch hub cache, downloaded into it when missing), or save the weights once with "
                    "torch.save(torchvision.models.get_model(ARCH, weights=NAME).state_dict(), 'ARCH.pt') and "
                    "pass that file")
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


def _mismatches(model: nn.Module, state: Mapping[str, Any]) -> tuple[list[str], list[str], list[str]]:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and state[k].shape != own[k].shape]
    return missing, unexpected, shapes


def check_state_dict(model: nn.Module, state: Any, *, source: str, skip: tuple[str, ...] = ()) -> None:
    """Raise a :class:`UserError` when ``state`` does not fit ``model`` (keys or shapes), naming a few entries.

    Keys in ``skip`` (a head being replaced) are not compared.
    """
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        hint = ""
        if isinstance(state, Mapping) and "config" in (state.get("hyper_parameters") or {}):
            hint = "; it is a checkpoint written by isnet train: give it as --checkpoint FILE, without --arch"
        elif isinstance(state, Mapping) and "state_dict" in state:
            hint = ("; it is a training checkpoint holding one under 'state_dict': give it to isnet explain as "
                    "--weights (with --arch), or save that entry alone: python -c \"import torch; torch.save("
                    "torch.load('FILE', weights_only=True)['state_dict'], 'weights.pt')\"")
        raise UserError(f"{source} is not a state dict (a mapping of parameter names to tensors){hint}")
    missing, unexpected, shapes = (
        [k for k in keys if k not in skip] for keys in _mismatches(model, state))
    if not (missing or unexpected or shapes):
        return
    own = model.state_dict()
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shapes]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)):
        if items:
            parts.append(f"{len(items)} {label} (e.g. {', '.join(items[:3])})")
    raise UserError(f"{source} does not fit this model: {'; '.join(parts)}. Check the architecture, the class "
                    "count and, for small_cnn, the image size the weights were trained with")


# torchvision's DenseNet files use the old key names (norm.1 for norm1); torchvision renames them the same way
_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
                           r"((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _read_weights(arch: str, weights: str | Path) -> tuple[dict, str]:
    if is_weights_name(str(weights)) and arch.startswith(TIMM):
        raise UserError(f"--weights {weights}: a timm model reads its weights from a state-dict file, e.g. saved where "
                        f"it can be downloaded with torch.save(timm.create_model({arch[len(TIMM):]!r}, "
                        "pretrained=True).state_dict(), FILE); give that FILE as --weights")
    if is_weights_name(str(weights)):
        entry = torchvision_weights(arch, str(weights))
        path = cache_path(entry)
        source = f"--weights {weights} ({type(entry).__name__}.{entry.name}, {path})"
        state = read_torch_file(path) if path.is_file() else download_weights(entry, str(weights))
    else:
        state, source = read_torch_file(weights), f"weights file {weights}"
    if isinstance(state, Mapping):
        state = {(_DENSENET_KEY.sub(r"\1\2", k) if isinstance(k, str) else k): v for k, v in state.items()}
    return state, source


def last_linear(model: nn.Module) -> str:
    """The name of the model's last ``nn.Linear`` (its classifier head)."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise UserError("the model has no nn.Linear layer to use as its classifier head; pass --num-classes with "
                        "the weights' class count, or choose another --arch")
    return names[-1]


def _fit_position_table(model: nn.Module, state: Mapping[str, Any]) -> Mapping[str, Any]:
    """A torchvision ViT's position embeddings resized (bicubic) to the model's image size, as torchvision
    does when fine-tuning at another resolution; any other state unchanged."""
    from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

    key = "encoder.pos_embedding"
    if not isinstance(model, VisionTransformer) or key not in state:
        return state
    if tuple(state[key].shape) == tuple(model.state_dict()[key].shape):
        return state
    return interpolate_embeddings(model.image_size, model.patch_size, dict(state))


def _unwrapped(state: Any, model: nn.Module) -> Any:
    """The state dict inside a training checkpoint (its ``state_dict`` entry), without the key prefix the
    model's own names lack (``model.`` of a LightningModule attribute); anything else as it is."""
    if not (isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping)):
        return state
    inner = {k: v for k, v in state["state_dict"].items() if isinstance(k, str)}
    own, first = set(model.state_dict()), next(iter(inner), "")
    for cut in [0, *(i + 1 for i, c in enumerate(first) if c == ".")]:
        stripped = {k[cut:]: v for k, v in inner.items() if k.startswith(first[:cut])}
        if own <= set(stripped):
            return stripped
    return inner


def _load_weights(model: nn.Module, arch: str, weights: str | Path, new_head: bool) -> None:
    state, source = _read_weights(arch, weights)
    state = _unwrapped(state, model)
    if isinstance(state, Mapping):
        state = _fit_position_table(model, state)
    skip: tuple[str, ...] = ()
    if new_head and isinstance(state, Mapping):
        head = last_linear(model)
        keys = (f"{head}.weight", f"{head}.bias")
        own = model.state_dict()
        if any(k in state and k in own and state[k].shape != own[k].shape for k in keys):
            skip = keys  # another class count: the fresh head stays
    check_state_dict(model, state, source=source, skip=skip)
    model.load_state_dict({k: v for k, v in state.items() if k not in skip}, strict=not skip)


# ------------------------------------------------------------------------------------------
# the input layer


def first_conv(model: nn.Module, image_size: int) -> str:
    """The name of the ``nn.Conv2d`` applied directly to the input (found by running the model once)."""
    x = torch.zeros(1, 3, image_size, image_size)
    found: list[nn.Module] = []

    def hook(module: nn.Module, args: tuple) -> None:
        if not found and args and args[0] is x:
            found.append(module)

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    name = next((n for n, m in model.named_modules() if found and m is found[0]), None)
    if name is None:
        raise UserError("the model does not start with a convolution on its input, so the input normalisation "
                        "cannot be folded into it; use --normalize none and --in-channels 3")
    return name


def fold_input(conv: nn.Conv2d, *, mean: tuple[float, ...] | None, std: tuple[float, ...] | None,
               in_channels: int = 3) -> nn.Conv2d:
    """A convolution on [0, 1] pixels equal to ``conv`` on ``(x - mean) / std`` (away from the zero padding).

    ``in_channels=1`` also sums the weights over the colour channels (one gray channel for RGB).
    """
    if conv.in_channels != 3 or conv.groups != 1:
        raise UserError(f"the first convolution takes {conv.in_channels} channels in {conv.groups} group(s); "
                        "folding a normalisation or reading one channel needs 3 channels in one group")
    weight = conv.weight.detach()
    bias = conv.bias.detach() if conv.bias is not None else None
    if mean is not None and std is not None:
        m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        base = bias if bias is not None else torch.zeros(weight.shape[0])
        bias = base - (weight * m / s).sum((1, 2, 3))
        weight = weight / s
    if in_channels == 1:
        weight = weight.sum(1, keepdim=True)
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    bias=bias is not None, padding_mode=conv.padding_mode)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def resolve_normalize(normalize: str | None, weights: str | Path | None, arch: str = "") -> str:
    """``auto`` (or None): ``imagenet`` for a torchvision weights name, else ``none``."""
    if normalize in (None, "auto"):
        return "imagenet" if weights is not None and arch not in BUILTIN and is_weights_name(str(weights)) else "none"
    if normalize not in NORMALIZATIONS:
        raise UserError(f"--normalize must be auto, none or imagenet, got {normalize!r}")
    return normalize


def build_model(arch: str, num_classes: int, *, image_size: int = 32, weights: str | Path | None = None,
                new_head: bool = False, normalize: str = "none", in_channels: int = 3) -> nn.Module:
    """A classifier taking [0, 1] pixels: fresh, or from ``weights`` (see the module docstring).

    Lazy layers are materialised with a dummy ``image_size`` input, so the model's parameters
    exist before an optimiser or a checkpoint sees them. ``normalize`` (``none`` or
    ``imagenet``) and ``in_channels`` (1 or 3) adapt the first convolution after the weights
    are loaded; the same arguments without ``weights`` rebuild the same structure.
    """
    if num_classes < 1 or image_size < 1:
        raise UserError(f"need num_classes >= 1 and image_size >= 1, got {num_classes} and {image_size}")
    if in_channels not in (1, 3):
        raise UserError(f"--in-channels must be 1 (grayscale) or 3 (RGB), got {in_channels}")
    normalize = resolve_normalize(normalize, weights, arch)
    if arch in BUILTIN:
        model = builtin_model(arch, num_classes, image_size)
    elif arch.startswith(TIMM):
        model = timm_model(arch, num_classes, image_size)
    else:
        from torchvision import models

        names = models.list_models(module=models)
        if arch not in names:
            raise UserError(f"unknown architecture {arch!r}; choose {', '.join(BUILTIN)}, a torchvision "
                             f"classification model such as resnet18, densenet121, convnext_tiny, vit_b_16, or "
                             f"timm:NAME")
        size = {}
        if arch.startswith("vit_"):  # built for the data's size, else for 224 px
            patch = int(arch.rsplit("_", 1)[-1])
            if image_size % patch:
                fitting = patch * max(1, image_size // patch)
                raise UserError(f"{arch} cuts images into {patch}x{patch} patches; the image size {image_size} is "
                                f"not a multiple of {patch} (choose --image-size {fitting})")
            size = {"image_size": image_size}
        model = models.get_model(arch, weights=None, num_classes=num_classes, **size)
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size))
        model.train()
    if weights is not None:
        _load_weights(model, arch, weights, new_head)
    if normalize != "none" or in_channels != 3:
        name = first_conv(model, image_size)
        mean, std = NORMALIZATIONS[normalize] or (None, None)
        _replace(model, name, fold_input(model.get_submodule(name), mean=mean, std=std, in_channels=in_channels))
    return model
