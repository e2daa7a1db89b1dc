"""torchvision's pretrained weights by name: which file a name means, the torch hub cache, the download.

A torchvision weights name (``DEFAULT``, ``IMAGENET1K_V1``, ``ResNet18_Weights.IMAGENET1K_V1``)
names a member of the architecture's ``WeightsEnum``, and through its URL one file. As in
torchvision, the file is looked up in the torch hub cache,
``torch.hub.get_dir()/checkpoints/<file name of the URL>`` (``$TORCH_HOME/hub/checkpoints``,
by default ``~/.cache/torch/hub/checkpoints``), and when it is not there it is downloaded into
that cache with a progress bar by ``WeightsEnum.get_state_dict`` (``torch.hub``): the download
goes to a temporary file, its SHA-256 is checked against the hash prefix in the file name, and
only a complete, matching file is moved into the cache. Later runs read the cached file.

**Offline.** With the environment variable ``ISNET_OFFLINE`` set to anything but ``""`` or
``0``, nothing is downloaded. A missing file, offline or when the download fails (no network, a
proxy, a wrong hash), is a :class:`isnet.errors.UserError` naming the file, the cache path to
place it at, the URL to fetch it from elsewhere, and ``--weights FILE`` as the alternative.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from .errors import UserError, UserFileNotFoundError
from .small_models import BUILTIN

__all__ = ["OFFLINE_VARIABLE", "cache_path", "download_weights", "hub_checkpoints", "is_weights_name", "offline",
           "torchvision_weights", "weights_categories"]

OFFLINE_VARIABLE = "ISNET_OFFLINE"
_WEIGHTS_NAME = re.compile(r"([A-Za-z0-9_]+_Weights\.)?[A-Z][A-Z0-9_]*")


def hub_checkpoints() -> Path:
    """The folder torchvision's weights are cached in: ``torch.hub.get_dir()/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def offline() -> bool:
    """Whether downloads are switched off (``ISNET_OFFLINE`` set, and not to ``0``)."""
    return os.environ.get(OFFLINE_VARIABLE, "").strip() not in ("", "0")


def is_weights_name(text: str) -> bool:
    """Whether ``text`` reads as a torchvision weights name (``DEFAULT``, ``IMAGENET1K_V1``) rather than a file."""
    return bool(_WEIGHTS_NAME.fullmatch(Path(text).name)) and Path(text).name == text and not Path(text).exists()


def torchvision_weights(arch: str, name: str) -> Any:
    """The ``torchvision.models.WeightsEnum`` member ``name`` of ``arch`` (``DEFAULT`` resolves to the best)."""
    from torchvision import models

    try:
        enum = models.get_model_weights(arch)
    except (ValueError, KeyError):
        raise UserError(f"--weights {name}: torchvision has no pretrained weights for --arch {arch}; give a "
                        "state-dict file") from None
    prefix, _, key = name.rpartition(".")
    if prefix and prefix != enum.__name__:
        raise UserError(f"--weights {name} belongs to another architecture: --arch {arch} has {enum.__name__}")
    if key == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[key]
    except KeyError:
        raise UserError(f"--weights {name} is not a weights name of {arch}; choose DEFAULT or one of "
                        f"{[w.name for w in enum]}, or give a state-dict file") from None


def weights_categories(arch: str, weights: str | Path | None) -> list[str] | None:
    """The class names of a torchvision weights name (e.g. the 1,000 ImageNet classes), else None."""
    if weights is None or arch in BUILTIN or not is_weights_name(str(weights)):
        return None
    return list(torchvision_weights(arch, str(weights)).meta.get("categories") or []) or None


def cache_path(entry: Any) -> Path:
    """Where the torch hub cache keeps the file of a ``WeightsEnum`` member (present or not)."""
    return hub_checkpoints() / os.path.basename(urlparse(entry.url).path)


def download_weights(entry: Any, name: str, *, progress: bool = True) -> Any:
    """The state dict of a ``WeightsEnum`` member whose file is not cached yet, downloaded into the cache
    (read with ``weights_only``); a :class:`UserError` saying what to do when offline or the download fails."""
    path = cache_path(entry)
    if offline():
        reason = f"{OFFLINE_VARIABLE} is set, so isnet downloads nothing"
    else:
        try:
            return entry.get_state_dict(progress=progress, check_hash=True, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as err:  # no network, HTTP errors, a wrong hash, a file torch cannot read
            reason = f"downloading it failed ({type(err).__name__}: {str(err).strip()[:200]})"
    raise UserFileNotFoundError(
        f"--weights {name}: the torchvision weights name {type(entry).__name__}.{entry.name} is the file "
        f"{path.name}, which is not in the torch hub cache, and {reason}. Download {entry.url} where there is internet access and copy it to {path} "
        f"(the folder is $TORCH_HOME/hub/checkpoints, see torch.hub.get_dir()), or pass a state-dict file as "
        "--weights FILE")
