"""ReLU-type activations: the rule that makes the layers feeding them LRP-epsilon.

For a layer ``z = W a + b`` feeding a piecewise-linear activation ``a' = f(z)``,
LRP-epsilon redistributes the relevance at ``a'`` as ``R_a = a * W^T (R / (z + eps))``.
Writing the relevance of a tensor ``t`` as ``t * g_t``, this is ordinary backpropagation
of ``g`` with one change at the activation: its derivative ``f'(z)`` becomes
``f(z) / (z + eps * sign(z))``, i.e. ``a / (a + eps)`` for a ReLU. Layers that do not
feed an activation (pooling, additions, the classifier) then follow LRP-0, and
``eps = 0`` gives gradient x input. The rules cover ReLU, LeakyReLU and hardtanh through
0 (ReLU6), as modules, functions, methods, reused or in place.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core import BackwardSwitch, Call, Rule, UnsupportedModelError, arg, stabilise


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


_RELU_INPLACE = {torch.relu_, F.relu_, Tensor.relu_}


def relu(call: Call) -> Tensor:
    """ReLU with the ``a / (a + eps)`` backward (in place when the call is)."""
    inplace = call.target in _RELU_INPLACE or bool(call.kwargs.get("inplace", False))
    z, block = call.args[0], call.trace.block
    pre = z.clone() if inplace and block.needs_copy(z) else None
    out = ReLURule.apply(z, call.trace.switch, inplace)
    call.elementwise(z, out, pre, "a ReLU")
    return out


def leaky_relu(call: Call) -> Tensor:
    """LeakyReLU with the ``f(z) / (z + eps sign z)`` backward."""
    z = call.args[0]
    out = PiecewiseLinearRule.apply(z, call.trace.switch, "leaky", (float(arg(call.args, call.kwargs, 1,
                                                                              "negative_slope", 0.01)),))
    call.elementwise(z, out)
    return out


def hardtanh(call: Call) -> Tensor:
    """Hardtanh (ReLU6) through 0 with the ``f(z) / (z + eps sign z)`` backward."""
    z = call.args[0]
    if call.target is F.relu6:
        params: tuple = (0.0, 6.0)
    else:
        params = (float(arg(call.args, call.kwargs, 1, "min_val", -1.0)),
                  float(arg(call.args, call.kwargs, 2, "max_val", 1.0)))
        if params[0] > 0 or params[1] < 0:
            raise UnsupportedModelError(
                f"hardtanh with range {params} does not map 0 to 0; LRP-Flex supports "
                "piecewise-linear activations with f(0) = 0 (ReLU, ReLU6, LeakyReLU)."
            )
    out = PiecewiseLinearRule.apply(z, call.trace.switch, "hardtanh", params)
    call.elementwise(z, out)
    return out


RULES: dict[Callable, Rule] = {
    **{f: relu for f in (F.relu, torch.relu, Tensor.relu, *_RELU_INPLACE)},
    **{f: leaky_relu for f in (F.leaky_relu, torch._C._nn.leaky_relu, F.leaky_relu_, torch._C._nn.leaky_relu_)},
    **{f: hardtanh for f in (F.hardtanh, torch._C._nn.hardtanh, F.hardtanh_, torch._C._nn.hardtanh_, F.relu6)},
}
