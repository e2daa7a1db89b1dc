"""The mechanism every LRP rule is built on: the backward switch and the intercepted call.

Relevance as a modified gradient
-------------------------------
The relevance of a tensor ``t`` is ``t * g_t``, where ``g`` is the gradient of the explained
quantity computed with one change per operation that has a rule. A rule is therefore a
custom backward, active only in the relevance pass: :class:`BackwardSwitch` says, per traced
forward pass, whether a backward running now is that pass (on) or the ordinary one of a
training loss on the traced output (off). Rules never look at any other state.

Calls
-----
While a forward pass is traced, every call that has a rule reaches it as a :class:`Call`:
the function (``F.gelu``, ``torch.mul``, ...) or the module (a type registered in
:class:`~isnet.lrp.registry.Rules`), its arguments, and the :class:`TraceState` of the
trace: its switch, which tensors depend on the input (:class:`Dependence`), the options of
the explainer, and an observer that follows the first block for Z^B. A rule returns what the
call returns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn


class UnsupportedModelError(ValueError):
    """The model contains an operation LRP-Flex cannot propagate relevance through."""


class BackwardSwitch:
    """Selects the backward of one traced forward pass.

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

    Used by the rules outside the relevance pass. When the backward itself is recorded
    (``create_graph``), the inputs keep their history, so the result is differentiable again.
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


def arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    """The argument at position ``index`` of a call, or given as keyword ``name``."""
    return args[index] if len(args) > index else kwargs.get(name, default)


def qualname(target: Callable) -> str:
    """``torch.nn.functional.gelu``, or a module's class name: what the model called, for messages."""
    if isinstance(target, nn.Module):
        return type(target).__name__
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", repr(target))
    if "<locals>" in name:  # e.g. F.max_pool2d, a boolean_dispatch wrapper
        name = getattr(target, "__name__", name)
    name = name.removeprefix("_VariableFunctionsClass.")
    if module == "torch._C._nn":
        module = "torch.nn.functional"
    elif module.startswith("torch._C") or not module:
        module = "torch"
    return f"{module}.{name}"


class Dependence:
    """Whether a tensor depends on the traced input ``x``, read from autograd's graph.

    Parameters and tensors computed from parameters alone do not; results are
    memoised per graph node for the trace that owns this object.
    """

    def __init__(self, x: Tensor) -> None:
        self.x = x
        self._memo: dict[Any, bool] = {}

    def __call__(self, t: Any) -> bool:
        if not isinstance(t, Tensor) or not t.requires_grad:
            return False
        if t is self.x:
            return True
        return t.grad_fn is not None and self._reaches(t.grad_fn)

    def _is_input(self, node: Any) -> bool:
        return node is self.x.grad_fn or getattr(node, "variable", None) is self.x

    def _reaches(self, root: Any) -> bool:
        memo, stack = self._memo, [root]
        while stack:
            node = stack[-1]
            if node in memo:
                stack.pop()
                continue
            children = [child for child, _ in node.next_functions if child is not None]
            if self._is_input(node) or any(memo.get(child, False) for child in children):
                memo[node] = True
                stack.pop()
                continue
            pending = [child for child in children if child not in memo]
            if pending:
                stack.extend(pending)
            else:
                memo[node] = False
                stack.pop()
        return memo[root]


class BlockObserver(Protocol):
    """What a trace tells the follower of its first block (:class:`~isnet.lrp.rules.zb.FirstBlockTracker`)."""

    done: bool

    def activation(self, name: str, z: Tensor, out: Tensor, pre: Tensor | None = None) -> None: ...

    def needs_copy(self, z: Tensor) -> bool: ...


@dataclass
class TraceState:
    """What the rules of one traced forward pass share.

    ``zplus`` is LRP-z+'s stabiliser when convolutions and linear layers use that rule;
    ``constant_bn`` holds training-mode batch statistics constant. ``nested()`` is a context
    in which calls a rule makes are routed to their own rules too (a function's rule otherwise
    runs with interception paused) and are not followed for Z^B.
    """

    switch: BackwardSwitch
    depends: Dependence
    block: BlockObserver
    zplus: float | None = None
    constant_bn: bool = False
    nested: Callable[[], AbstractContextManager] = nullcontext


_UNSET: Any = object()


@dataclass
class Call:
    """One call of a function or a module during a trace, as its rule sees it.

    ``target`` is the function called, or the module (whose ordinary ``output`` is then
    already computed, with interception paused inside it). :meth:`run` gives the ordinary
    result; :meth:`elementwise` tells the first-block follower that ``out = f(z)`` is an
    element-wise activation (by default a call is any other operation).
    """

    target: Callable[..., Any]
    args: tuple
    kwargs: dict
    trace: TraceState
    output: Any = _UNSET
    reported: bool = False

    @property
    def name(self) -> str:
        return qualname(self.target)

    def run(self) -> Any:
        """The call's ordinary result (computed once)."""
        if self.output is _UNSET:
            self.output = self.target(*self.args, **self.kwargs)
        return self.output

    def elementwise(self, z: Tensor, out: Tensor, pre: Tensor | None = None, name: str | None = None) -> None:
        """Report ``out = f(z)`` as an element-wise activation (``pre``: a copy of ``z`` if overwritten)."""
        self.trace.block.activation(name or self.name, z, out, pre)
        self.reported = True


Rule = Callable[[Call], Any]
"""An LRP rule: runs one :class:`Call` and returns its result, whose backward is the rule's."""

