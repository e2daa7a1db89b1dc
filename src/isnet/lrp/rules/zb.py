"""The Z^B rule of the first block, and the follower that finds that block in a trace.

Z^B
---
The first conv/linear -> [batch norm] -> [activation] block sees pixels, which live in
``[low, high]`` rather than being non-negative. Z^B splits the folded weight
``W = W+ + W-`` and redistributes ``R`` as
``R_x = x W^T s - (low W+ + high W-)^T s`` with ``s = R / z`` and
``z = W x + b - (low W+ + high W-) 1 - (b+ low + b- high)``, so every contribution is
measured against the least activating input within the bounds.

The first block
---------------
:class:`FirstBlockTracker` follows the input of a traced forward pass. Z^B needs the first
layer applied to the input (a convolution, or a linear layer that may see the input
flattened), its optional batch norm, and the tensor whose relevance it redistributes:

* the output of an element-wise activation applied to the layer (or batch norm) output:
  any call a rule reports as element-wise (EfficientNet's conv -> BN -> SiLU, MobileNetV3's
  Hardswish, a user's own activation module);
* else the layer (or batch norm) output itself, when what comes next is a normalisation, a
  rearrangement (reshape, permute, transpose, concatenation, addition of a position
  embedding, dropout) or another linear layer: ViT's patch convolution, ConvNeXt's and
  Swin's conv -> LayerNorm stems, a conv -> batch norm stem feeding a depthwise convolution.

Any other operation on the way (a pooling before the activation, an activation on the raw
input) is remembered as the reason Z^B cannot be used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core import UnsupportedModelError, arg, qualname, stabilise
from .normalisation import NORMALISATIONS

Bounds = tuple[float | Tensor, float | Tensor]


@dataclass
class FirstBlock:
    """The first conv/linear -> [batch norm] -> [activation] block, as traced (inputs of Z^B).

    ``relu_out`` is the tensor whose relevance Z^B redistributes: the output of the
    block's element-wise activation (a ReLU or any other), or the layer's (batch
    norm's) own output when a normalisation or a reshape follows instead.
    """

    dims: int  # 0 for linear, else the conv's spatial dims
    input: Tensor
    weight: Tensor
    bias: Tensor | None
    conv_args: tuple = ()  # stride, padding, dilation, groups
    conv_out: Tensor | None = None
    bn: tuple | None = None  # running_mean, running_var, weight, bias, training, eps
    bn_out: Tensor | None = None
    relu_out: Tensor | None = None
    source_shape: torch.Size | None = None  # the model input's shape when a linear sees it flattened


def _bounds_weight(bound: float | Tensor, weight: Tensor, groups: int = 1) -> Tensor | float:
    """A bound shaped to scale a weight along its input-channel axis.

    Per-channel bounds of a grouped conv: output channel ``o`` of group ``g`` sees input
    channels ``g * (C / groups) + i``, so each weight row takes its group's bounds.
    """
    b = torch.as_tensor(bound, dtype=weight.dtype, device=weight.device)
    if b.dim() == 0:
        return b
    if groups > 1:
        out_channels, per_group = weight.shape[:2]
        b = b.view(groups, 1, per_group).expand(groups, out_channels // groups, per_group)
        return b.reshape(out_channels, per_group, *([1] * (weight.dim() - 2)))
    return b.view(1, -1, *([1] * (weight.dim() - 2)))


def _transpose(block: FirstBlock, s: Tensor, weight: Tensor, input_shape: torch.Size) -> Tensor:
    """``weight^T s`` for the first layer (transposed conv or linear)."""
    if block.dims == 0:
        return s @ weight
    stride, padding, dilation, groups = block.conv_args
    n = block.dims
    stride, dilation = _expand(stride, n), _expand(dilation, n)
    kernel = weight.shape[2:]
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0,) * n
        else:  # "same": transposed conv cannot express asymmetric padding, use autograd
            probe = torch.zeros(input_shape, dtype=s.dtype, device=s.device, requires_grad=True)
            with torch.enable_grad():
                out = _CONV_BY_DIMS[n](probe, weight, None, block.conv_args[0], padding, block.conv_args[2], groups)
                return torch.autograd.grad(out, probe, s, create_graph=torch.is_grad_enabled())[0]
    padding = _expand(padding, n)
    out_shape = [(s.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (kernel[i] - 1) + 1
                 for i in range(n)]
    output_padding = tuple(input_shape[2 + i] - out_shape[i] for i in range(n))
    return _CONV_T_BY_DIMS[n](s, weight, None, stride, padding, output_padding, groups, dilation)


_CONV_BY_DIMS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T_BY_DIMS = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _expand(value: int | tuple | list, n: int) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


@dataclass
class ZBRule:
    """The Z^B rule of one traced first block: everything that does not depend on the relevance.

    Batch norm is folded into the layer (batch statistics with the unbiased
    variance in training mode). The statistics, the layer bias and the batch-norm
    shift enter detached; the weights and the batch-norm scale stay in the graph,
    also inside the folded bias ``(b - mu) * gamma / s + beta``. A trace builds its
    rule once, however many quantities it explains.
    """

    block: FirstBlock
    denominator: Tensor  # the stabilised ``z`` of the rule
    weight: Tensor  # the folded weight W'
    bound_weight: Tensor  # l W'+ + h W'-

    @classmethod
    def fold(cls, block: FirstBlock, epsilon: float, bounds: Bounds) -> ZBRule:
        x, weight, bias = block.input, block.weight, block.bias
        conv_out = block.conv_out
        assert conv_out is not None
        channel = (1, -1, *([1] * (conv_out.dim() - 2)))
        linear_out = conv_out - bias.view(channel) if bias is not None else conv_out
        shift = bias.detach() if bias is not None else torch.zeros(weight.shape[0], dtype=x.dtype, device=x.device)
        if block.bn is not None:
            running_mean, running_var, gamma, beta, training, bn_eps = block.bn
            if training:
                reduce = [0, *range(2, conv_out.dim())]
                mean = conv_out.detach().mean(reduce)
                var = conv_out.detach().var(reduce, unbiased=True)
            else:
                mean, var = running_mean, running_var
            scale = torch.rsqrt(var + bn_eps)
            if gamma is not None:
                scale = scale * gamma
            shift = (shift - mean) * scale
            if beta is not None:
                shift = shift + beta.detach()
            weight = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
            linear_out = linear_out * scale.view(channel)
        low, high = bounds
        if block.source_shape is not None:  # a linear layer on the flattened input: one bound per feature
            low, high = _flat_bound(low, block.source_shape), _flat_bound(high, block.source_shape)
        w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
        groups = block.conv_args[3] if block.dims else 1
        w_bounds = w_pos * _bounds_weight(low, weight, groups) + w_neg * _bounds_weight(high, weight, groups)
        bias_bounds = shift.clamp(min=0) * _scalar_bound(low) + shift.clamp(max=0) * _scalar_bound(high)
        ones = torch.ones((1, *x.shape[1:]), dtype=x.dtype, device=x.device)
        bound_out = _layer(block, ones, w_bounds) + bias_bounds.view(channel)
        z = linear_out + shift.view(channel) - bound_out
        return cls(block, stabilise(z, epsilon), weight, w_bounds)

    def __call__(self, relevance: Tensor) -> Tensor:
        """The input relevance of ``relevance`` at the first ReLU's output."""
        block, x = self.block, self.block.input
        s = relevance / self.denominator
        if block.dims and block.conv_args[3] != 1:  # grouped conv: transpose each weight alone
            return x * _transpose(block, s, self.weight, x.shape) - _transpose(block, s, self.bound_weight, x.shape)
        both = _transpose(block, s, torch.cat([self.weight, self.bound_weight], dim=1), x.shape)
        width = x.shape[1]
        return x * both[:, :width] - both[:, width:]


def zb_relevance(block: FirstBlock, relevance: Tensor, epsilon: float, bounds: Bounds) -> Tensor:
    """Push the relevance at the first ReLU's output to the input with the Z^B rule (see :class:`ZBRule`)."""
    return ZBRule.fold(block, epsilon, bounds)(relevance)


def _flat_bound(bound: float | Tensor, shape: torch.Size) -> float | Tensor:
    """Per-channel bounds of a (B, C, ...) input as one bound per feature of its flattening."""
    b = torch.as_tensor(bound)
    if b.dim() == 0:
        return bound
    return b.view(-1, *([1] * (len(shape) - 2))).expand(shape[1:]).reshape(-1)


def _scalar_bound(bound: float | Tensor) -> float | Tensor:
    """The bound of the bias terms ``b+ low + b- high``: per-channel bounds contribute their mean.

    The bias has no input channel, so no per-channel bound is its own; the mean keeps
    equal per-channel bounds identical to the scalar case. It is a convention: no choice
    makes Z^B invariant to folding an input normalisation into the first layer (see
    docs/lrp-flex.md). It enters only the denominator ``z``.
    """
    b = torch.as_tensor(bound)
    return b.mean() if b.dim() else b


def _layer(block: FirstBlock, x: Tensor, weight: Tensor) -> Tensor:
    if block.dims == 0:
        return F.linear(x, weight)
    stride, padding, dilation, groups = block.conv_args
    return _CONV_BY_DIMS[block.dims](x, weight, None, stride, padding, dilation, groups)


CONV_FUNCS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
RESHAPE_FUNCS = {torch.flatten, Tensor.flatten, Tensor.view, Tensor.reshape, torch.reshape}
FOLLOWERS = {
    *RESHAPE_FUNCS, *NORMALISATIONS, Tensor.permute, torch.permute, Tensor.transpose, torch.transpose,
    Tensor.contiguous, torch.cat, torch.concat, torch.stack, Tensor.add, torch.add, Tensor.__add__,
    Tensor.__radd__, Tensor.sub, torch.sub, F.dropout, *CONV_FUNCS, F.linear,
}


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

    def needs_copy(self, z: Tensor) -> bool:
        """Whether an in-place activation of ``z`` would overwrite the pre-activations Z^B needs."""
        return self.closes(z) and z is self.block.conv_out

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
                dims=CONV_FUNCS[func], input=first, weight=arg(args, kwargs, 1, "weight"),
                bias=arg(args, kwargs, 2, "bias"),
                conv_args=tuple(arg(args, kwargs, i, n, d) for i, n, d in
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
            self.block = FirstBlock(dims=0, input=first, weight=arg(args, kwargs, 1, "weight"),
                                    bias=arg(args, kwargs, 2, "bias"), conv_out=out,
                                    source_shape=self.source_shape if self.source_shape != first.shape else None)
            self.watched = [out]
        elif block is not None and block.bn is None and func is F.batch_norm and first is block.conv_out:
            running_mean = arg(args, kwargs, 1, "running_mean")
            running_var = arg(args, kwargs, 2, "running_var")
            training = bool(arg(args, kwargs, 5, "training", False)) or running_mean is None
            block.bn = (running_mean, running_var, arg(args, kwargs, 3, "weight"),
                        arg(args, kwargs, 4, "bias"), training, float(arg(args, kwargs, 7, "eps", 1e-5)))
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
