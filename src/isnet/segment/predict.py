"""A trained segmenter: loading it, masks for tensors and image files, Dice and IoU.

The network is MONAI's 2-D ``UNet`` with one output channel (foreground logit). A pixel is
foreground when its probability is above 0.5 (:data:`isnet.masks.THRESHOLD`) and, when the run
asks for it (``components``), it lies in one of the mask's largest connected regions
(8-connected; MONAI's ``KeepLargestConnectedComponent``): a lung segmenter keeps two. Images are
resized to the run's square training side for the network, and the probabilities are resized
back (bilinearly) to each image's own size before the threshold, so masks have the size of
their images, as the dataset layout requires.

Loading and predicting need PyTorch and MONAI only (no Lightning).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError, UserFileNotFoundError
from ..masks import THRESHOLD
from ..models import check_state_dict, read_torch_file
from ..paths import CHECKPOINTS, CONFIG, MODEL, read_run_config
from .config import UNET, SegmentConfig

__all__ = ["binary_masks", "build_unet", "load_segmenter", "predicted_masks", "segmenter_input", "probabilities"]

_LUMA = (0.299, 0.587, 0.114)


def _monai() -> Any:
    try:
        import monai.networks.nets as nets
    except ImportError:
        raise UserError("isnet segment needs MONAI: pip install 'isnet[seg]' (or pip install monai)") from None
    return nets


def build_unet(config: SegmentConfig | Mapping[str, Any]) -> nn.Module:
    """A freshly initialised MONAI ``UNet`` as the configuration describes (one output: the foreground logit)."""
    cfg = config if isinstance(config, SegmentConfig) else SegmentConfig.from_dict(config)
    channels = tuple(cfg.width * 2**i for i in range(cfg.depth))
    return _monai().UNet(spatial_dims=2, in_channels=cfg.in_channels, out_channels=1, channels=channels,
                         strides=(2,) * (cfg.depth - 1), num_res_units=cfg.res_units, dropout=cfg.dropout)


def _weights_file(run: Path) -> Path:
    if run.is_file():
        return run
    for candidate in (run / MODEL, run / CHECKPOINTS / "best.ckpt", run / CHECKPOINTS / "last.ckpt"):
        if candidate.is_file():
            return candidate
    raise UserFileNotFoundError(f"segmenter {run} holds no {MODEL} or {CHECKPOINTS}/{{best,last}}.ckpt: train it "
                                "with isnet segment train")


def load_segmenter(run: str | Path, *, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The U-Net of a segmentation run (folder, ``model.pt`` or ``.ckpt``) in eval mode, and its config."""
    path = Path(run).expanduser()
    if not path.exists():
        raise UserFileNotFoundError(f"no segmentation run at {path}: give the --out folder of isnet segment train")
    weights = _weights_file(path)
    folder = path if path.is_dir() else next((p for p in (path.parent, path.parent.parent) if (p / CONFIG).is_file()),
                                            path.parent)
    if not (folder / CONFIG).is_file():
        raise UserFileNotFoundError(f"no {CONFIG} in {folder}: give the run folder of isnet segment train")
    config = read_run_config(folder / CONFIG)
    if config.get("objective") != UNET:
        raise UserError(f"{folder} is not a segmentation run (its {CONFIG} records objective "
                        f"{config.get('objective')!r}); give a folder written by isnet segment train")
    state = read_torch_file(weights, what="segmenter weights")
    if weights.suffix == ".ckpt":
        try:
            state = {k[len("net."):]: v for k, v in state["state_dict"].items() if k.startswith("net.")}
        except (KeyError, TypeError, AttributeError):
            raise UserError(f"{weights} is not a checkpoint written by isnet segment train") from None
    model = build_unet({k: v for k, v in config.items() if k in SegmentConfig.__dataclass_fields__})
    check_state_dict(model, state, source=str(weights))
    model.load_state_dict(state)
    return model.to(map_location).eval(), config


@functools.lru_cache(maxsize=4)
def _cached(run: str, device: str) -> tuple[nn.Module, dict]:
    return load_segmenter(run, map_location=device)


def segmenter_input(images: Tensor, in_channels: int, size: int) -> Tensor:
    """Images (B, 1|3, H, W) in [0, 1] as the segmenter reads them: its channels, ``size`` x ``size``."""
    x = images.float()
    if x.shape[1] == 3 and in_channels == 1:
        x = (x * torch.tensor(_LUMA, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif x.shape[1] == 1 and in_channels == 3:
        x = x.expand(-1, 3, -1, -1)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


def probabilities(model: nn.Module, config: Mapping[str, Any], images: Tensor,
                  sizes: list[tuple[int, int]] | None = None) -> list[Tensor]:
    """Foreground probabilities (1, H, W) per image, at each image's size (``sizes``: (H, W); default the batch's)."""
    x = segmenter_input(images, config["in_channels"], config["image_size"])
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        logits = model(x).float()
    sizes = sizes or [tuple(images.shape[-2:])] * len(images)  # type: ignore[list-item]
    out = []
    for logit, (h, w) in zip(logits, sizes):
        if tuple(logit.shape[-2:]) != (h, w):
            logit = F.interpolate(logit[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        out.append(torch.sigmoid(logit))
    return out


def binary_masks(probs: list[Tensor], components: int = 0) -> list[Tensor]:
    """Boolean masks (1, H, W) from foreground probabilities: above the threshold and, with
    ``components`` > 0, inside one of the ``components`` largest connected regions."""
    masks = [p > THRESHOLD for p in probs]
    if components <= 0:
        return masks
    from monai.transforms import KeepLargestConnectedComponent

    keep = KeepLargestConnectedComponent(applied_labels=[1], is_onehot=False, independent=True, connectivity=2,
                                         num_components=components)
    # MONAI returns its MetaTensor subclass; the classifier gets plain tensors
    return [keep(m.to(torch.uint8).clone()).as_subclass(Tensor).bool() for m in masks]


def predicted_masks(run: str | Path, images: Tensor) -> Tensor:
    """Binary foreground masks (B, 1, H, W) that the segmenter ``run`` predicts for ``images`` (no gradient).

    The segmenter is loaded once per process and device; its run's ``components`` applies.
    """
    model, config = _cached(str(Path(run).expanduser().resolve()), str(images.device))
    masks = binary_masks(probabilities(model, config, images), config.get("components", 0))
    return torch.stack(masks).to(images.dtype)

