"""The LRP-z+ rule on convolutions and linear layers (for the Dual ISNet's second heatmap).

LRP-z+ (Montavon et al. 2017; zennit's ``ZPlus``, i.e. alpha = 1, beta = 0) redistributes
the relevance ``R_j`` of a layer's output over the *positive* contributions only:

    R_i = x_i+ sum_j W+_ji s_j + x_i- sum_j W-_ji s_j,   s_j = R_j / (z+_j + eps sign z+_j),
    z+_j = sum_i (x_i+ W+_ji + x_i- W-_ji) + b+_j

with ``t+ = max(t, 0)`` and ``t- = min(t, 0)``; behind ReLUs, ``x- = 0``. Negative
contributions get no relevance, so heatmaps are positive and less noisy than with
LRP-epsilon. As a modified gradient (relevance ``t * g_t``), the layer's backward
receives ``g_out`` (``R = out * g_out``) and returns ``g_x = W+^T s`` where ``x > 0``,
``W-^T s`` where ``x < 0``. The activations then pass relevance unchanged (their
factor is taken with ``eps = 0``): the stabiliser sits in the layer's ``z+``.

When an explainer uses this rule (``rule="z+"``), every ``F.conv1d/2d/3d`` and ``F.linear``
call is routed through :class:`ZPlusLayer`; the first block keeps Z^B. Batch norm is not folded
into the preceding layer (it keeps its ordinary, linear derivative). Outside the
relevance pass the layers have their ordinary derivative.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core import BackwardSwitch, Call, Rule, ordinary_vjp, stabilise

def _transposed(layer: Callable[[Tensor, Tensor], Tensor], weight: Tensor, s: Tensor, like: Tensor,
                create_graph: bool) -> Tensor:
    """``weight^T s``: the input gradient of the layer (linear in its input) at ``s``."""
    probe = torch.zeros_like(like, requires_grad=True)
    return torch.autograd.grad(layer(probe, weight), probe, s, create_graph=create_graph)[0]


class ZPlusLayer(torch.autograd.Function):
    """A convolution or linear layer whose relevance backward is LRP-z+.

    ``layer(x, weight, bias)`` is the call with its other arguments bound.
    """

    @staticmethod
    def forward(ctx: Any, switch: BackwardSwitch, stabiliser: float, layer: Callable[..., Tensor], x: Tensor,
                weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.switch, ctx.stabiliser, ctx.layer = switch, stabiliser, layer
        ctx.save_for_backward(x, weight, bias)  # not the output: the model may overwrite it (in-place ReLU)
        return layer(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias = ctx.saved_tensors
        if not ctx.switch.lrp:
            return None, None, None, *ordinary_vjp(ctx.layer, (x, weight, bias), ctx.needs_input_grad[3:], grad)
        create_graph = torch.is_grad_enabled()
        w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
        z_pos = ctx.layer(x.clamp(min=0), w_pos, None if bias is None else bias.clamp(min=0))
        z_pos = z_pos + ctx.layer(x.clamp(max=0), w_neg, None)
        s = ctx.layer(x, weight, bias) * grad / stabilise(z_pos, ctx.stabiliser)

        def linear_part(inp: Tensor, w: Tensor) -> Tensor:
            return ctx.layer(inp, w, None)

        with torch.enable_grad():
            through_pos = _transposed(linear_part, w_pos, s, x, create_graph)
            through_neg = _transposed(linear_part, w_neg, s, x, create_graph)
        return None, None, None, torch.where(x < 0, through_neg, through_pos), None, None


def zplus(call: Call) -> Tensor:
    """A convolution or linear call: LRP-z+ if the explainer uses it, else the ordinary layer."""
    func, args, kwargs = call.target, call.args, call.kwargs
    if call.trace.zplus is None:
        return call.run()
    x = args[0] if args else kwargs["input"]
    if not x.requires_grad:
        return func(*args, **kwargs)
    weight = args[1] if len(args) > 1 else kwargs["weight"]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    rest = args[3:]
    options = {k: v for k, v in kwargs.items() if k not in ("input", "weight", "bias")}

    def layer(inp: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        return func(inp, w, b, *rest, **options)

    return ZPlusLayer.apply(call.trace.switch, call.trace.zplus, layer, x, weight, bias)


RULES: dict[Callable, Rule] = {f: zplus for f in (F.conv1d, F.conv2d, F.conv3d, F.linear)}
