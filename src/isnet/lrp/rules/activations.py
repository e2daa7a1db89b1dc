"""Smooth and other element-wise activations: the identity rule.

AttnLRP (Achtibat et al., ICML 2024) passes the relevance of an element-wise
non-linearity ``a = f(z)`` unchanged to its input, ``R_z = R_a``: a function of one
number has nothing to redistribute. With relevance written as ``t * g_t``, the rule is
a modified derivative: the backward multiplies the incoming gradient by

    (f(z) - f(0)) / (z + eps * sign(z))        (sign(0) = +1)

instead of ``f'(z)``, so that ``z * g_z = (f(z) - f(0)) * g_a`` up to the epsilon
stabiliser, which absorbs relevance where ``|z|`` is small (as the ReLU rule does).
This is the ReLU rule of :mod:`isnet.lrp.rules.epsilon` generalised to GELU, SiLU (Swish),
Hardswish, Mish, ELU, SELU, CELU, tanh, PReLU and the shrink functions, for which
``f(0) = 0`` and the factor is exactly AttnLRP's ``f(z) / z``.

Sigmoid, hardsigmoid, softplus, log-sigmoid and a threshold to a non-zero value have
``f(0) != 0``. The rule measures them from ``f(0)``, their value at ``z = 0``, which is the
root point of the LRP-epsilon rule of the layer computing ``z``: the offset ``f(0)`` is
absorbed like a bias, and a gate pushed below ``f(0)`` passes negative relevance
(suppression relative to that reference). Passing ``f(z) * g_a`` instead would give
units near ``z = 0`` the factor ``f(0) / eps``: the layer feeding a squeeze-and-excitation
gate would redistribute relevance its inputs barely cause, and heatmaps of EfficientNet
or RegNet blow up. With ``eps = 0`` and ``z = 0`` exactly, the factor is its limit ``f'(0)``.

Outside the relevance pass (training losses on the traced output) the backward is the
ordinary derivative, computed by re-running ``f`` under autograd.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core import BackwardSwitch, Call, Rule, UnsupportedModelError, ordinary_vjp


@dataclass(frozen=True)
class ActivationSpec:
    """How a call of one element-wise function is read.

    ``base`` is the out-of-place function; ``inplace_arg`` the position of an
    ``inplace`` argument (also accepted as keyword); ``inplace`` marks in-place
    variants such as ``sigmoid_``; ``offset`` functions may have ``f(0) != 0``.
    """

    name: str
    base: Callable[..., Tensor]
    inplace_arg: int | None = None
    inplace: bool = False
    offset: bool = False


def _specs() -> dict[Callable, ActivationSpec]:
    table: dict[Callable, ActivationSpec] = {}

    def add(name: str, base: Callable, funcs: tuple = (), inplace_funcs: tuple = (), inplace_arg: int | None = None,
            offset: bool = False) -> None:
        for func in (base, *funcs):
            table[func] = ActivationSpec(name, base, inplace_arg, False, offset)
        for func in inplace_funcs:
            table[func] = ActivationSpec(name, base, None, True, offset)

    add("gelu", F.gelu)
    add("silu", F.silu, inplace_arg=1)
    add("hardswish", F.hardswish, inplace_arg=1)
    add("hardsigmoid", F.hardsigmoid, inplace_arg=1, offset=True)
    add("mish", F.mish, inplace_arg=1)
    add("elu", F.elu, inplace_funcs=(F.elu_,), inplace_arg=2)
    add("selu", F.selu, (torch.selu,), (torch.selu_,), inplace_arg=1)
    add("celu", F.celu, (torch.celu,), (torch.celu_,), inplace_arg=2)
    add("threshold", F.threshold, (torch.threshold,), (torch.threshold_,), inplace_arg=3, offset=True)
    add("rrelu", F.rrelu, (torch.rrelu,), (torch.rrelu_,), inplace_arg=4)
    add("sigmoid", torch.sigmoid, (Tensor.sigmoid, F.sigmoid, torch.special.expit), (torch.sigmoid_, Tensor.sigmoid_),
        offset=True)
    add("tanh", torch.tanh, (Tensor.tanh, F.tanh), (torch.tanh_, Tensor.tanh_))
    add("softplus", F.softplus, offset=True)
    add("logsigmoid", F.logsigmoid, offset=True)
    for name, func in (("prelu", F.prelu), ("softsign", F.softsign), ("tanhshrink", F.tanhshrink),
                       ("softshrink", F.softshrink), ("hardshrink", F.hardshrink)):
        add(name, func)
    return table


ACTIVATIONS: dict[Callable, ActivationSpec] = _specs()


class IdentityRule(torch.autograd.Function):
    """``f(z)``; backward ``(f(z) - f(0)) / (z + eps sign z)`` while the switch is on, else ``f'(z)``.

    ``fn(z, *tensors)`` computes the activation; ``tensors`` are its tensor
    arguments besides ``z`` (the PReLU weight), which get ordinary gradients.
    ``offset`` says whether ``f(0)`` may be non-zero (then it is computed once). For
    an in-place call, ``write()`` is that call: it overwrites ``target``, of which
    ``z`` is a copy, and ``target`` is returned.
    """

    @staticmethod
    def forward(ctx: Any, switch: BackwardSwitch, fn: Callable[..., Tensor], offset: bool,
                write: Callable[[], Tensor] | None, target: Tensor | None, z: Tensor, *tensors: Tensor) -> Tensor:
        if write is None:
            out = fn(z, *tensors)
        else:
            out = write()
            ctx.mark_dirty(target)
        ctx.switch, ctx.fn, ctx.inplace = switch, fn, write is not None
        ctx.offset = fn(torch.zeros((), dtype=z.dtype, device=z.device)) if offset else None
        ctx.save_for_backward(z, *tensors)  # not the output, which the model may overwrite later
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        z, *tensors = ctx.saved_tensors
        if ctx.switch.lrp:
            factor = identity_factor(lambda t: ctx.fn(t, *tensors), z, ctx.switch.epsilon, ctx.offset)
            grads = [grad * factor, *([None] * len(tensors))]
        else:
            needs = (ctx.needs_input_grad[4 if ctx.inplace else 5], *ctx.needs_input_grad[6:])
            grads = ordinary_vjp(ctx.fn, (z, *tensors), needs, grad)
        if ctx.inplace:  # the gradient goes to the overwritten tensor; its copy ``z`` only lends its values
            return None, None, None, None, grads[0], None, *grads[1:]
        return None, None, None, None, None, *grads


def identity_factor(fn: Callable[[Tensor], Tensor], z: Tensor, eps: float, offset: Tensor | None) -> Tensor:
    """``(f(z) - f(0)) / (z + eps sign z)``, or its limit ``f'(0)`` at ``z = 0`` when ``eps = 0``.

    ``offset`` is ``f(0)``, or ``None`` when it is 0.
    """
    out = fn(z)
    varying = out if offset is None else out - offset
    if eps > 0:  # at z = +-0 the numerator is 0, so the sign of eps there does not matter
        return varying / (z + torch.full((), eps, dtype=z.dtype, device=z.device).copysign(z))
    zero = z == 0
    slope = ordinary_vjp(fn, (z,), (True,), torch.ones_like(z))[0] if zero.any() else z
    return torch.where(zero, slope, varying / torch.where(zero, torch.ones_like(z), z))


def _bind(spec: ActivationSpec, args: tuple, kwargs: dict) -> tuple[list, dict, bool]:
    """The arguments after ``z`` without the ``inplace`` flag, and that flag."""
    rest, kw = list(args[1:]), dict(kwargs)
    inplace = spec.inplace
    if spec.inplace_arg is not None:
        if len(args) > spec.inplace_arg:
            inplace = bool(rest.pop(spec.inplace_arg - 1))
        else:
            inplace = bool(kw.pop("inplace", False))
    return rest, kw, inplace


def identity(func: Callable, args: tuple, kwargs: dict, switch: BackwardSwitch) -> tuple[Tensor, Tensor | None]:
    """Run an element-wise activation call with the identity rule.

    Returns the output and, for an in-place call, a copy of the overwritten input
    (the pre-activations, still in the graph), else ``None``. An in-place call
    writes the output into its input, as the model expects.
    """
    spec = ACTIVATIONS[func]
    z = args[0]
    rest, kw, inplace = _bind(spec, args, kwargs)
    if spec.name == "rrelu" and (rest[2] if len(rest) > 2 else kw.get("training", False)):
        raise UnsupportedModelError(
            "the model calls rrelu in training mode, whose slopes are random: its derivative cannot be "
            "recomputed. Explain the model in eval mode, or use LeakyReLU.")
    if not z.requires_grad:
        return func(*args, **kwargs), None
    positions = [i for i, a in enumerate(rest) if isinstance(a, Tensor)]

    def fn(t: Tensor, *tensors: Tensor) -> Tensor:
        full = list(rest)
        for i, value in zip(positions, tensors):
            full[i] = value
        return spec.base(t, *full, **kw)

    tensors = [rest[i] for i in positions]
    if not inplace:
        return IdentityRule.apply(switch, fn, spec.offset, None, None, z, *tensors), None
    pre = z.clone()  # the rule needs the pre-activations the call overwrites
    return IdentityRule.apply(switch, fn, spec.offset, lambda: func(*args, **kwargs), z, pre, *tensors), pre


def activation(call: Call) -> Tensor:
    """An element-wise activation call with the identity rule, reported as such to the first block."""
    out, pre = identity(call.target, call.args, call.kwargs, call.trace.switch)
    call.elementwise(call.args[0], out, pre)
    return out


RULES: dict[Callable, Rule] = {f: activation for f in ACTIVATIONS}
