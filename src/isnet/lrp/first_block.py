"""The first block of a traced forward pass, followed from the input for Z^B.

Z^B needs the first layer applied to the input (a convolution, or a linear layer that
may see the input flattened), its optional batch norm, and the tensor whose relevance
it redistributes:

* the output of an element-wise activation applied to the layer (or batch norm)
  output: ReLU-type or any activation of :mod:`isnet.lrp.activations` (EfficientNet's
  conv -> BN -> SiLU, MobileNetV3's Hardswish);
* else the layer (or batch norm) output itself, when what comes next is a
  normalisation or a rearrangement: reshape, permute, transpose, concatenation,
  addition (a position embedding), dropout (ViT's patch convolution, ConvNeXt's and
  Swin's conv -> LayerNorm stems).

Any other operation on the way (a pooling before the activation, an activation on the
raw input) is remembered as the reason Z^B cannot be used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .normalisation import NORMALISATIONS
from .rules import FirstBlock, UnsupportedModelError

CONV_FUNCS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
RESHAPE_FUNCS = {torch.flatten, Tensor.flatten, Tensor.view, Tensor.reshape, torch.reshape}
FOLLOWERS = {
    *RESHAPE_FUNCS, *NORMALISATIONS, Tensor.permute, torch.permute, Tensor.transpose, torch.transpose,
    Tensor.contiguous, torch.cat, torch.concat, torch.stack, Tensor.add, torch.add, Tensor.__add__,
    Tensor.__radd__, Tensor.sub, torch.sub, F.dropout,
}


def qualname(func: Callable) -> str:
    """``torch.nn.functional.gelu`` and the like: the public name of a function the model called."""
    module = getattr(func, "__module__", None) or ""
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
    if "<locals>" in name:  # e.g. F.max_pool2d, a boolean_dispatch wrapper
        name = getattr(func, "__name__", name)
    name = name.removeprefix("_VariableFunctionsClass.")
    if module == "torch._C._nn":
        module = "torch.nn.functional"
    elif module.startswith("torch._C") or not module:
        module = "torch"
    return f"{module}.{name}"


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


class FirstBlockTracker:
    """Follows the input of one traced forward pass until its first block is complete.

    ``done`` turns true when the block is complete, when something else happened
    first (``failure`` says what), or from the start when ``x`` is ``None``.
    """

    def __init__(self, x: Tensor | None) -> None:
        self.block: FirstBlock | None = None
        self.failure: str | None = None
        self.done = x is None
        self.watched: list[Tensor] = [x] if x is not None else []
        self.source_shape: torch.Size | None = None

    def closes(self, z: Tensor) -> bool:
        """Whether an activation of ``z`` is the first block's activation."""
        block = self.block
        return not self.done and block is not None and (z is block.conv_out or z is block.bn_out)

    def activation(self, name: str, z: Tensor, out: Tensor, pre: Tensor | None = None) -> None:
        """Record an element-wise activation ``out = f(z)`` (``name`` describes ``f`` in errors).

        ``pre`` holds a copy of ``z`` when ``f`` overwrote it in place.
        """
        if self.done:
            return
        if self.closes(z):
            block = self.block
            if pre is not None and z is block.conv_out:
                block.conv_out = pre  # Z^B needs the pre-activations the call overwrote
            block.relu_out = out
            self.done = True
        elif any(z is w for w in self.watched):
            self._fail(f"{name} applied directly to the input")

    def _fail(self, what: str) -> None:
        self.failure = what
        self.done = True

    def _consumes_watched(self, args: tuple, kwargs: dict) -> bool:
        for value in (*args, *kwargs.values()):
            items = value if isinstance(value, (list, tuple)) else (value,)
            if any(isinstance(v, Tensor) and any(v is w for w in self.watched) for v in items):
                return True
        return False

    def other(self, func: Callable, args: tuple, kwargs: dict, out: Any) -> None:
        """Record any other call; only calls on the watched tensors matter."""
        if self.done or not isinstance(out, Tensor) or not self._consumes_watched(args, kwargs):
            return
        block = self.block
        first = args[0] if args else None
        if block is None and func in CONV_FUNCS and first is self.watched[0]:
            self.block = FirstBlock(
                dims=CONV_FUNCS[func], input=first, weight=_arg(args, kwargs, 1, "weight"),
                bias=_arg(args, kwargs, 2, "bias"),
                conv_args=tuple(_arg(args, kwargs, i, n, d) for i, n, d in
                                ((3, "stride", 1), (4, "padding", 0), (5, "dilation", 1), (6, "groups", 1))),
                conv_out=out,
            )
            self.watched = [out]
        elif (block is None and func in RESHAPE_FUNCS and first is self.watched[0] and out.dim() == 2
              and out.shape[0] == first.shape[0]):  # flattening the input for a first linear layer
            if self.source_shape is None:
                self.source_shape = first.shape
            self.watched = [out]
        elif block is None and func is F.linear and first is self.watched[0]:
            self.block = FirstBlock(dims=0, input=first, weight=_arg(args, kwargs, 1, "weight"),
                                    bias=_arg(args, kwargs, 2, "bias"), conv_out=out,
                                    source_shape=self.source_shape if self.source_shape != first.shape else None)
            self.watched = [out]
        elif block is not None and block.bn is None and func is F.batch_norm and first is block.conv_out:
            running_mean = _arg(args, kwargs, 1, "running_mean")
            running_var = _arg(args, kwargs, 2, "running_var")
            training = bool(_arg(args, kwargs, 5, "training", False)) or running_mean is None
            block.bn = (running_mean, running_var, _arg(args, kwargs, 3, "weight"),
                        _arg(args, kwargs, 4, "bias"), training, float(_arg(args, kwargs, 7, "eps", 1e-5)))
            block.bn_out = out
            self.watched = [out]
        elif block is not None and func in FOLLOWERS:  # Z^B takes the relevance of the layer's output
            block.relu_out = self.watched[0]
            self.done = True
        else:
            where = "the input" if block is None else (
                "the first layer's output" if block.bn is None else "the first batch norm's output")
            self._fail(f"{qualname(func)} applied to {where}")

    def result(self) -> FirstBlock:
        """The complete first block; :class:`UnsupportedModelError` saying what was found instead."""
        block = self.block
        if block is None or block.relu_out is None:
            found = self.failure or "nothing using the first layer's output"
            raise UnsupportedModelError(
                "zb=True needs the model to start with a conv or linear layer, optionally batch norm, then an "
                f"element-wise activation, a normalisation or a reshape; found {found}. Pass zb=False to "
                "propagate LRP-epsilon down to the input instead."
            )
        return block
