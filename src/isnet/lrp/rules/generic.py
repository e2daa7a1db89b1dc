"""Rules for any module or function: the ones users register for their own operations.

A rule registered for a module type (:class:`~isnet.lrp.registry.Rules`) replaces the
module as a whole: its own forward runs with the ordinary derivative (for training losses on
the traced output), and the relevance pass takes the rule's backward instead.

:class:`Identity`
    An element-wise map ``a = f(z)`` (one input tensor) passes its relevance unchanged to
    ``z``, as the built-in smooth activations do: the backward multiplies the incoming
    gradient by ``(f(z) - f(0)) / (z + eps sign z)``.
:class:`ExplainAs`
    The relevance backward is the gradient of another expression of the same forward,
    usually one with parts detached, in the manner of LXT. A gate ``v * sigmoid(g)`` with
    the gate detached, ``v * sigmoid(g).detach()``, gives all relevance to the value path,
    as AttnLRP and LXT do for gating and CP-LRP for attention weights. Calls inside the
    expression follow their own rules (a GELU, a LayerNorm, another registered module).
:class:`Unsupported`
    Rejects the module when the explainer is built, saying what to do instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..core import BackwardSwitch, Call, UnsupportedModelError
from .activations import identity_factor


class _Routed(torch.autograd.Function):
    """A call's ordinary output whose backward, in the relevance pass, is ``relevance(grad, *saved)``.

    ``relevance`` returns the gradients of ``saved`` (tensors the rule chose); outside the
    relevance pass the gradient goes to ``ordinary``, through the call's own graph.
    """

    @staticmethod
    def forward(ctx: Any, switch: BackwardSwitch, relevance: Callable[..., tuple], ordinary: Tensor,
                *saved: Tensor) -> Tensor:
        ctx.switch, ctx.relevance = switch, relevance
        ctx.save_for_backward(*saved)
        return ordinary.clone()  # a copy: the model may modify the output in place

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        saved = ctx.saved_tensors
        if not ctx.switch.lrp:
            return None, None, grad, *([None] * len(saved))
        return None, None, None, *ctx.relevance(grad, *saved)


def _tensor_output(call: Call) -> Tensor:
    out = call.run()
    if not isinstance(out, Tensor):
        raise UnsupportedModelError(
            f"{call.name} has an LRP rule for one output tensor but returned {type(out).__name__}; register a "
            "rule for the part of it that computes a tensor")
    return out


class Identity:
    """Relevance passes unchanged through an element-wise map of the call's first argument.

    ``f(0)`` is computed from a zero input, so maps with ``f(0) != 0`` (a sigmoid gate) are
    measured from that value, as the built-in rule for sigmoid is. Other arguments (a
    learnable slope) are held constant in the relevance pass.
    """

    def __call__(self, call: Call) -> Tensor:
        out = _tensor_output(call)
        z = call.args[0]
        target, rest, kwargs, switch = call.target, call.args[1:], call.kwargs, call.trace.switch

        def f(t: Tensor) -> Tensor:
            return target(t, *rest, **kwargs)

        def relevance(grad: Tensor, z_saved: Tensor) -> tuple[Tensor]:
            offset = f(torch.zeros_like(z_saved))
            return (grad * identity_factor(f, z_saved, switch.epsilon, offset),)

        routed = _Routed.apply(switch, relevance, out, z)
        call.elementwise(z, routed)
        return routed

    def __repr__(self) -> str:
        return "Identity()"


def _through(grad: Tensor, _explained: Tensor) -> tuple[Tensor]:
    return (grad,)


class ExplainAs:
    """The relevance backward is the gradient of ``fn(target, *args, **kwargs)``.

    ``target`` is the module (or function) the rule is registered for; ``fn`` must compute
    the same values as the call, so that ``t * grad`` stays the relevance of each tensor
    ``t``. It must not call ``target`` itself.
    """

    def __init__(self, fn: Callable[..., Tensor]) -> None:
        if not callable(fn):
            raise TypeError(f"ExplainAs takes a function (target, *args, **kwargs) -> Tensor; got {fn!r}")
        self.fn = fn

    def __call__(self, call: Call) -> Tensor:
        out = _tensor_output(call)
        with call.trace.nested():
            explained = self.fn(call.target, *call.args, **call.kwargs)
        if not isinstance(explained, Tensor) or explained.shape != out.shape:
            found = tuple(explained.shape) if isinstance(explained, Tensor) else type(explained).__name__
            raise UnsupportedModelError(
                f"the ExplainAs rule of {call.name} returned {found}, the call {tuple(out.shape)}; it must compute "
                "the same tensor as the call")
        return _Routed.apply(call.trace.switch, _through, out, explained)

    def __repr__(self) -> str:
        return f"ExplainAs({getattr(self.fn, '__name__', self.fn)!r})"


class Unsupported:
    """Rejects a module type when the explainer is built: ``reason`` says why and what to do."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def check(self, name: str, module: nn.Module) -> None:
        """Raise :class:`UnsupportedModelError` naming ``module``."""
        raise UnsupportedModelError(f"module '{name}' ({type(module).__name__}): {self.reason}")

    def __call__(self, call: Call) -> Any:
        raise UnsupportedModelError(f"{call.name}: {self.reason}")

    def __repr__(self) -> str:
        return f"Unsupported({self.reason!r})"
