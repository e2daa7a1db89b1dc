"""Normalisations computed from the activations: the statistics are constants.

LayerNorm, GroupNorm, InstanceNorm (with input statistics), RMSNorm and
``F.normalize`` divide their input by a statistic of that same input (a standard
deviation, a root mean square, a norm). Following Ali et al. (ICML 2022) and AttnLRP,
the relevance pass treats that divisor as a constant, which makes the layer linear:

* LayerNorm / GroupNorm / InstanceNorm: ``y = gamma * (x - mean(x)) / s + beta`` with
  ``s`` constant. The centring ``x - mean(x)`` is itself linear and keeps its
  ordinary derivative, so relevance is conserved (``beta`` absorbs its share, as a
  bias does); the backward is ``g_x = (h - mean(h)) / s`` with ``h = gamma * g_y``,
  the mean taken over each normalised group.
* RMSNorm: ``g_x = gamma * g_y / rms(x)``; ``F.normalize``: ``g_x = g_y / max(||x||, eps)``.

Batch norm with running statistics is already linear. In training mode its batch statistics
keep their ordinary derivative by default, as the authors' reference implementation does;
that derivative mixes the images of a batch, so each image's heatmap also carries the
other images' gradients (averaged, times its own pixels). ``batch_stats="constant"``
(:class:`isnet.LRPFlex`) holds the batch mean and variance constant instead, like the
statistics above: ``g_x = gamma * g_y / s`` per channel, and each heatmap is its image's
own. Outside the relevance pass every normalisation has its ordinary derivative.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core import BackwardSwitch, Call, Rule, arg, ordinary_vjp


@dataclass(frozen=True)
class NormCall:
    """One normalisation call: its kind and the arguments besides input, weight and bias."""

    kind: str  # "layer", "group", "rms", "normalize" or "batch" (training-mode batch statistics)
    shape: tuple[int, ...] = ()  # normalized_shape (layer, rms)
    groups: int = 1  # group
    eps: float | None = None
    p: float = 2.0  # normalize
    dim: int = 1  # normalize

    def __call__(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        """The normalisation itself (ordinary autograd)."""
        if self.kind == "layer":
            return F.layer_norm(x, self.shape, weight, bias, self.eps)
        if self.kind == "group":
            return F.group_norm(x, self.groups, weight, bias, self.eps)
        if self.kind == "rms":
            return F.rms_norm(x, self.shape, weight, self.eps)
        if self.kind == "batch":  # batch statistics, running ones untouched (the model's own call updates them)
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
        return F.normalize(x, self.p, self.dim, self.eps)

    def linearised_backward(self, grad: Tensor, x: Tensor, weight: Tensor | None) -> Tensor:
        """``g_x`` with the statistic held constant (see the module docstring)."""
        if self.kind == "normalize":
            return grad / x.norm(self.p, self.dim, keepdim=True).clamp_min(self.eps)
        if self.kind == "batch":
            dims = (0, *range(2, x.dim()))
            return _times_channel_weight(grad, weight) * torch.rsqrt(x.var(dims, unbiased=False, keepdim=True)
                                                                     + self.eps)
        if self.kind == "group":
            h = _times_channel_weight(grad, weight)
            grouped = x.reshape(x.shape[0], self.groups, -1)
            scale = torch.rsqrt(grouped.var(-1, unbiased=False, keepdim=True) + self.eps)
            h = h.reshape(grouped.shape)
            return ((h - h.mean(-1, keepdim=True)) * scale).view(x.shape)
        dims = tuple(range(-len(self.shape), 0))
        h = grad * weight if weight is not None else grad
        if self.kind == "rms":
            eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
            return h * torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps)
        scale = torch.rsqrt(x.var(dims, unbiased=False, keepdim=True) + self.eps)
        return (h - h.mean(dims, keepdim=True)) * scale


def _times_channel_weight(grad: Tensor, weight: Tensor | None) -> Tensor:
    """``grad`` times the per-channel scale ``gamma`` (channels on axis 1), if any."""
    if weight is None:
        return grad
    return grad * weight.view(1, -1, *([1] * (grad.dim() - 2)))


class NormRule(torch.autograd.Function):
    """A normalisation whose relevance backward holds its statistic constant.

    The forward is the model's own call (``model_call``), so it also updates running
    statistics exactly once; the backward re-runs ``call``, which leaves them alone.
    """

    @staticmethod
    def forward(ctx: Any, switch: BackwardSwitch, call: NormCall, model_call: Callable[[], Tensor], x: Tensor,
                weight: Tensor | None, bias: Tensor | None) -> Tensor:
        ctx.switch, ctx.call = switch, call
        ctx.save_for_backward(x, weight, bias)
        return model_call()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias = ctx.saved_tensors
        if ctx.switch.lrp:
            return None, None, None, ctx.call.linearised_backward(grad, x, weight), None, None
        return None, None, None, *ordinary_vjp(ctx.call, (x, weight, bias), ctx.needs_input_grad[3:], grad)


def _shape(value: int | Sequence[int]) -> tuple[int, ...]:
    return (value,) if isinstance(value, int) else tuple(value)


def _read(func: Callable, args: tuple, kwargs: dict) -> tuple[NormCall, Tensor | None, Tensor | None] | None:
    """The call's :class:`NormCall`, weight and bias; ``None`` when it uses no input statistics."""
    if func is F.layer_norm:
        shape = _shape(arg(args, kwargs, 1, "normalized_shape"))
        return (NormCall("layer", shape, eps=arg(args, kwargs, 4, "eps", 1e-5)),
                arg(args, kwargs, 2, "weight"), arg(args, kwargs, 3, "bias"))
    if func is F.group_norm:
        return (NormCall("group", groups=arg(args, kwargs, 1, "num_groups"), eps=arg(args, kwargs, 4, "eps", 1e-5)),
                arg(args, kwargs, 2, "weight"), arg(args, kwargs, 3, "bias"))
    if func is F.instance_norm:
        if not arg(args, kwargs, 5, "use_input_stats", True):
            return None  # running statistics: already linear
        x = args[0]
        return (NormCall("group", groups=x.shape[1], eps=arg(args, kwargs, 7, "eps", 1e-5)),
                arg(args, kwargs, 3, "weight"), arg(args, kwargs, 4, "bias"))
    if func is F.batch_norm:
        training = bool(arg(args, kwargs, 5, "training", False)) or arg(args, kwargs, 1, "running_mean") is None
        if not training:
            return None  # running statistics: already linear
        return (NormCall("batch", eps=arg(args, kwargs, 7, "eps", 1e-5)),
                arg(args, kwargs, 3, "weight"), arg(args, kwargs, 4, "bias"))
    if func is F.normalize:
        return NormCall("normalize", eps=arg(args, kwargs, 3, "eps", 1e-12), p=arg(args, kwargs, 1, "p", 2.0),
                        dim=arg(args, kwargs, 2, "dim", 1)), None, None
    shape = _shape(arg(args, kwargs, 1, "normalized_shape"))
    return NormCall("rms", shape, eps=arg(args, kwargs, 3, "eps")), arg(args, kwargs, 2, "weight"), None


NORMALISATIONS: dict[Callable, str] = {
    F.layer_norm: "layer_norm", F.group_norm: "group_norm", F.instance_norm: "instance_norm",
    F.normalize: "normalize", **({F.rms_norm: "rms_norm"} if hasattr(F, "rms_norm") else {}),
}


def normalisation(call: Call) -> Tensor:
    """Run a normalisation call with its statistic constant in the relevance pass."""
    func, args, kwargs = call.target, call.args, call.kwargs
    read = _read(func, args, kwargs)
    x = args[0]
    if read is None or not x.requires_grad or (func is F.normalize and kwargs.get("out") is not None):
        return func(*args, **kwargs)
    norm, weight, bias = read
    return NormRule.apply(call.trace.switch, norm, lambda: func(*args, **kwargs), x, weight, bias)


def batch_norm(call: Call) -> Tensor:
    """Batch norm: linear with running statistics; batch statistics held constant if the explainer asks."""
    return normalisation(call) if call.trace.constant_bn else call.run()


RULES: dict[Callable, Rule] = {**{f: normalisation for f in NORMALISATIONS}, F.batch_norm: batch_norm}
