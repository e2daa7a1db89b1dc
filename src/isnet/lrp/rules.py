"""LRP rules: the modified activation backward and the Z^B rule of the first block.

LRP-epsilon through autograd
----------------------------
For a layer ``z = W a + b`` feeding a piecewise-linear activation ``a' = f(z)``,
LRP-epsilon redistributes the relevance at ``a'`` as ``R_a = a * W^T (R / (z + eps))``.
Writing the relevance of a tensor ``t`` as ``t * g_t``, this is ordinary backpropagation
of ``g`` with one change at the activation: its derivative ``f'(z)`` becomes
``f(z) / (z + eps * sign(z))``, i.e. ``a / (a + eps)`` for a ReLU. Layers that do not
feed an activation (pooling, additions, the classifier) then follow LRP-0, and
``eps = 0`` gives gradient x input. :class:`BackwardSwitch` chooses, per traced forward
pass, between that factor (the heatmap pass) and the ordinary derivative (training).

Z^B
---
The first conv/linear -> [batch norm] -> [activation] block sees pixels, which live in
``[low, high]`` rather than being non-negative. Z^B splits the folded weight
``W = W+ + W-`` and redistributes ``R`` as
``R_x = x W^T s - (low W+ + high W-)^T s`` with ``s = R / z`` and
``z = W x + b - (low W+ + high W-) 1 - (b+ low + b- high)``, so every contribution is
measured against the least activating input within the bounds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

Bounds = tuple[float | Tensor, float | Tensor]


class UnsupportedModelError(ValueError):
    """The model contains an operation LRP-Flex cannot propagate relevance through."""


class BackwardSwitch:
    """Selects the activation derivative of one traced forward pass.

    Off: the ordinary derivative (training losses). On: the LRP rule (heatmap pass).
    One switch belongs to one trace, so concurrent traces never see each other.
    """

    def __init__(self, epsilon: float) -> None:
        self.epsilon = epsilon
        self.lrp = False


def stabilise(z: Tensor, eps: float) -> Tensor:
    """``z + eps * sign(z)`` with ``sign(0) = +1``, in the dtype of ``z``."""
    return z + torch.where(z >= 0, eps, -eps).to(z.dtype)


def ordinary_vjp(fn: Callable[..., Tensor], inputs: Sequence[Tensor | None], needs: Sequence[bool],
                 grad: Tensor) -> list[Tensor | None]:
    """The ordinary backward of ``fn`` at ``inputs`` (gradients for those ``needs`` marks), by re-running ``fn``.

    Used by the rule functions outside the relevance pass. When the backward itself
    is recorded (``create_graph``), the inputs keep their history, so the result is
    differentiable again.
    """
    wanted = [i for i, t in enumerate(inputs) if i < len(needs) and needs[i] and t is not None]
    result: list[Tensor | None] = [None] * len(inputs)
    if not wanted:
        return result
    if torch.is_grad_enabled():
        grads = torch.autograd.grad(fn(*inputs), [inputs[i] for i in wanted], grad, create_graph=True)
    else:
        with torch.enable_grad():
            fresh = [None if t is None else t.detach().requires_grad_(i in wanted) for i, t in enumerate(inputs)]
            grads = torch.autograd.grad(fn(*fresh), [fresh[i] for i in wanted], grad)
    for i, g in zip(wanted, grads):
        result[i] = g
    return result


class ReLURule(torch.autograd.Function):
    """ReLU whose backward is ``a / (a + eps)`` while the switch is on."""

    @staticmethod
    def forward(ctx, z: Tensor, switch: BackwardSwitch, inplace: bool) -> Tensor:
        if inplace:
            ctx.mark_dirty(z)
            out = z.relu_()
        else:
            out = z.relu()
        ctx.switch = switch
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (out,) = ctx.saved_tensors
        eps = ctx.switch.epsilon
        if ctx.switch.lrp and eps > 0:
            if torch.is_grad_enabled() and not _is_batched(grad):
                # create_graph: a differentiable gate that saves no temporaries
                return _LRPGate.apply(grad, out, eps), None, None
            return grad * (out / (out + eps)), None, None
        # ordinary derivative; also the LRP factor a / (a + 0), defined as 0 where a = 0
        return grad * (out > 0), None, None


def _is_batched(t: Tensor) -> bool:
    """A gradient batched by ``torch.autograd.grad(..., is_grads_batched=True)``.

    Custom Functions do not record their graph under that legacy vmap, so the gate
    falls back to plain ops there.
    """
    check = getattr(torch._C._functorch, "is_legacy_batchedtensor", None)
    return bool(check(t)) if check is not None else False


class _LRPGate(torch.autograd.Function):
    """``grad * a / (a + eps)``, differentiable in ``grad`` and ``a``.

    Autograd of the three-op expression would keep ``a + eps``, the factor and ``grad`` for
    the training backward; this keeps ``grad`` (``a`` is already saved by the ReLU) and
    recomputes the rest.
    """

    @staticmethod
    def forward(ctx, grad: Tensor, out: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(grad, out)
        ctx.eps = eps
        return grad * (out / (out + eps))

    @staticmethod
    def backward(ctx, upstream: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        grad, out = ctx.saved_tensors
        denominator = out + ctx.eps
        grad_grad = upstream * (out / denominator) if ctx.needs_input_grad[0] else None
        grad_out = upstream * grad * (ctx.eps / denominator**2) if ctx.needs_input_grad[1] else None
        return grad_grad, grad_out, None


def _piecewise_derivative(z: Tensor, kind: str, params: tuple) -> Tensor:
    if kind == "leaky":
        (slope,) = params
        return torch.where(z > 0, 1.0, slope).to(z.dtype)
    low, high = params
    return ((z > low) & (z < high)).to(z.dtype)


class PiecewiseLinearRule(torch.autograd.Function):
    """LeakyReLU / hardtanh (ReLU6); LRP backward ``f(z) / (z + eps * sign(z))``."""

    @staticmethod
    def forward(ctx, z: Tensor, switch: BackwardSwitch, kind: str, params: tuple) -> Tensor:
        out = F.leaky_relu(z, *params) if kind == "leaky" else F.hardtanh(z, *params)
        ctx.switch, ctx.kind, ctx.params = switch, kind, params
        ctx.save_for_backward(z, out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        z, out = ctx.saved_tensors
        if ctx.switch.lrp:
            factor = out / stabilise(z, ctx.switch.epsilon)
            if ctx.switch.epsilon == 0:  # f(0) / 0: the ordinary derivative there, as gradient x input
                factor = torch.where(z == 0, _piecewise_derivative(z, ctx.kind, ctx.params), factor)
        else:
            factor = _piecewise_derivative(z, ctx.kind, ctx.params)
        return grad * factor, None, None, None


# ------------------------------------------------------------------------------------ Z^B


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
