"""Will an LRP-Flex pass fit in memory? What ``isnet explain`` checks before a batch at its size.

The traced forward pass keeps every tensor the relevance pass needs, so its memory grows with
the pixel count: a 6000x6000 photograph explained at its native size needs tens of gigabytes.
:func:`check_lrp_memory` estimates it without running it (the traced pass on a ``meta``-device
copy of the model: shapes only, no data) and refuses, or warns, before the real pass starts.
"""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import IsnetWarning, UserError

__all__ = ["BACKWARD_FACTOR", "available_memory", "check_lrp_memory", "lrp_memory_estimate"]

BACKWARD_FACTOR = 1.5
"""Saved tensors times this: the relevance pass's transient gradients, the input and the heatmap."""


def lrp_memory_estimate(model: nn.Module, shape: tuple[int, int], *, channels: int = 3, batch: int = 1,
                        rule: str = "epsilon", zb: bool = True) -> int | None:
    """Bytes an LRP-Flex heatmap of ``batch`` images of ``shape`` needs, estimated without computing one.

    Parameters
    ----------
    model
        The classifier, unchanged (a ``meta``-device copy is traced).
    shape
        (H, W) of the images the model sees.
    channels, batch
        Input channels and images per pass.
    rule, zb
        As :class:`isnet.LRPFlex` takes them.

    Returns
    -------
    int or None
        The bytes of the tensors the traced pass saves for one image (the model's parameters
        excluded), times ``batch`` and :data:`BACKWARD_FACTOR`; ``None`` when the model cannot
        be traced on the ``meta`` device (then nothing is estimated).
    """
    from .lrp import LRPFlex

    try:
        probe = copy.deepcopy(model).to("meta")
    except Exception:  # noqa: BLE001 - a model that cannot be copied is explained unchecked
        return None
    params = {id(p) for p in probe.parameters()} | {id(b) for b in probe.buffers()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        base = tensor._base if tensor._base is not None else tensor
        if id(tensor) not in params and id(base) not in params:
            saved[id(base)] = max(saved.get(id(base), 0), base.numel() * base.element_size())
        return tensor

    x = torch.zeros(1, channels, *shape, device="meta")
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            trace = LRPFlex(probe, zb=zb, rule=rule, check_finite=False).trace(x, keep_buffers=True)
    except Exception:  # noqa: BLE001 - an op without a meta kernel: no estimate
        return None
    per_image = sum(saved.values()) + trace.output.numel() * trace.output.element_size()
    return int(per_image * batch * BACKWARD_FACTOR)


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes free for a new allocation: CUDA's free memory, else Linux's ``MemAvailable``; ``None`` if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**28 else f"{n / 2**20:.0f} MB"


def check_lrp_memory(model: nn.Module, shape: tuple[int, int], *, image: Path, channels: int = 3,
                     batch: int = 1, rule: str = "epsilon", zb: bool = True, resized: bool = False) -> int | None:
    """Refuse (:class:`UserError`) a pass whose estimate exceeds the available memory, warn above half of it.

    Parameters
    ----------
    model, shape, channels, batch, rule, zb
        As :func:`lrp_memory_estimate` takes them.
    image
        The (first) image of the pass, named in the message.
    resized
        Whether ``shape`` is an ``--image-size`` already (the advice then asks for a smaller one).

    Returns
    -------
    int or None
        The estimate in bytes, ``None`` when it or the available memory is unknown.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    estimate = lrp_memory_estimate(model, shape, channels=channels, batch=batch, rule=rule, zb=zb)
    free = available_memory(device) if estimate is not None else None
    if estimate is None or free is None or estimate <= free / 2:
        return estimate
    side = max(8, int(min(shape) * math.sqrt(free / 2 / estimate)) // 8 * 8)  # fits in half, if pixels dominate
    what = f"{image} ({shape[1]}x{shape[0]} px{f', batch of {batch}' if batch > 1 else ''})"
    advice = (f"pass --image-size {side}" + ("" if resized else f" to resize the images to {side}x{side}")
              + (" or a smaller --batch-size" if batch > 1 else ""))
    message = (f"explaining {what} needs about {_gb(estimate)} of memory, {_gb(free)} is available ({device.type})"
               f"; {advice}")
    if estimate > free:
        raise UserError(message)
    warnings.warn(message, IsnetWarning, stacklevel=2)
    return estimate
