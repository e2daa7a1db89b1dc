"""Tracing: the forward pass of a model, seen from outside the model.

Call interception
-----------------
:class:`LRPMode` is a :class:`~torch.overrides.TorchFunctionMode`, active only while
a forward pass is traced and only in the thread that traces it. It looks each call up in
the explainer's :class:`~isnet.lrp.registry.Rules` (functions, tensor methods, reused or in
place: whatever reaches ``__torch_function__``) and hands the calls that have a rule to it
as a :class:`~isnet.lrp.core.Call` bound to the trace's state; every other call keeps its
ordinary derivative. Modules of a type that has a rule are seen through forward hooks that
exist only during the trace and ignore other threads: inside such a module the mode lets
calls through unchanged, and its output is handed to the rule. The model itself is never
modified.

Kept buffers
------------
An explanation leaves the model's buffers as they were, also in training mode (batch-norm
running statistics, ``num_batches_tracked``, spectral norm's vectors): given ``kept``, the mode
hands every call a copy of such a buffer instead of the buffer, one copy per buffer and pass,
made on first use. Writes, whether in place, through ``out=`` or inside ``F.batch_norm``, land
in the copy, and later reads in the same pass see them, so the forward pass computes what the
model's own forward computes (in training mode: with the batch statistics). Only calls made in
the tracing thread are affected. A module that assigns a new tensor to a buffer (spectral
norm's ``_u = F.normalize(..., out=_u)``) gets the original back when the pass ends
(:func:`restore_buffers`).

First block
-----------
The mode also feeds a :class:`~isnet.lrp.rules.zb.FirstBlockTracker`, which follows
the input through the first layer for Z^B: rules report element-wise activations, every
other call is reported by the mode.

Module outputs
--------------
:func:`record_outputs` keeps the outputs of named modules with forward hooks that
exist only inside its ``with`` block and ignore other threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack

from .core import BackwardSwitch, Call, Dependence, TraceState, UnsupportedModelError
from .registry import Rules
from .rules.zb import FirstBlockTracker


class UnknownModuleError(KeyError, ValueError):
    """A module name that ``model.named_modules()`` does not have (a lookup and a user error)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def named_submodules(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """The modules called ``names`` in ``model.named_modules()``; an error naming those missing."""
    modules = dict(model.named_modules())
    missing = [name for name in names if name not in modules]
    if missing:
        raise UnknownModuleError(f"no module named {missing} in the model; names come from model.named_modules()")
    return {name: modules[name] for name in names}


def owned_buffers(model: nn.Module) -> list[tuple[nn.Module, str, Tensor]]:
    """Every buffer of ``model`` with the module that holds it and its name there."""
    return [(module, name, buffer) for module in model.modules()
            for name, buffer in module.named_buffers(recurse=False)]


def restore_buffers(buffers: Sequence[tuple[nn.Module, str, Tensor]]) -> None:
    """Put back each buffer of :func:`owned_buffers` that its module replaced by another tensor."""
    for module, name, buffer in buffers:
        if getattr(module, name, None) is not buffer:
            setattr(module, name, buffer)


@contextmanager
def record_outputs(model: nn.Module, names: Sequence[str],
                   skip: Callable[[], bool] = lambda: False) -> Iterator[dict[str, Tensor]]:
    """Record the outputs of the modules ``names`` during forward passes made in this thread.

    Parameters
    ----------
    model
        The model whose calls are forward passes; it is never modified beyond the
        hooks, which are removed on exit, also after an exception.
    names
        Module names from ``model.named_modules()``.
    skip
        Calls made while it returns true are not recorded (the own forward of a module with a
        rule, whose rule computes the output the relevance flows through).

    Yields
    ------
    dict
        ``{name: output}`` of the latest call of ``model`` (emptied when a call starts).
        Calls made by other threads are ignored.

    Raises
    ------
    KeyError
        A name is not a module of ``model``.
    UnsupportedModelError
        A named module runs more than once in one forward pass.
    """
    modules = named_submodules(model, names)
    owner = threading.get_ident()
    store: dict[str, Tensor] = {}

    def start(_model: nn.Module, _inputs: Any) -> None:
        if threading.get_ident() == owner:
            store.clear()

    def recorder(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if threading.get_ident() != owner or skip():
                return
            if name in store:
                raise UnsupportedModelError(
                    f"module '{name}' runs more than once per forward pass; name a module that runs once")
            store[name] = output

        return hook

    handles = [model.register_forward_pre_hook(start)] if modules else []
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(recorder(name)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


class LRPMode(TorchFunctionMode):
    """Routes calls to their rules and follows the first block.

    Parameters
    ----------
    rules
        The table of rules (built-in ones and the user's).
    switch
        The trace's switch between the LRP backward and the ordinary one.
    x
        The traced input (products and attention depend on what is computed from it).
    first_block
        Follow ``x`` through the first block (for Z^B).
    zplus
        If given, convolutions and linear layers use LRP-z+ with this stabiliser.
    constant_bn
        Training-mode batch norm holds its batch statistics constant in the relevance pass
        (``batch_stats="constant"``, see :mod:`isnet.lrp.rules.normalisation`); else they keep
        their ordinary derivative.
    kept
        Tensors (the model's buffers) that calls get copies of, so that the pass cannot write
        into them (see the module docstring).
    """

    def __init__(self, rules: Rules, switch: BackwardSwitch, x: Tensor, *, first_block: bool = True,
                 zplus: float | None = None, constant_bn: bool = False, kept: Iterable[Tensor] = ()) -> None:
        super().__init__()
        self.rules = rules
        self.kept = {id(t) for t in kept}
        self._copies_of: dict[int, Tensor] = {}  # kept tensor id -> its copy for this pass, made on first use
        self.tracker = FirstBlockTracker(x if first_block else None)
        self.state = TraceState(switch, Dependence(x), self, zplus, constant_bn, self._nested)
        self._opaque: list[nn.Module] = []  # the module with a rule whose own forward runs now
        self._quiet = 0  # > 0 while a rule's own calls run: they are not followed for Z^B

    def __torch_function__(self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if self.kept:
            args, kwargs = self._copies(args), {k: self._copies(v) for k, v in kwargs.items()}
        if self._opaque:
            return func(*args, **kwargs)
        rule = self.rules.function_rule(func)
        if rule is None:
            out = func(*args, **kwargs)
            self._follow(func, args, kwargs, out)
            return out
        return self._apply(rule, Call(func, args, kwargs, self.state))

    def in_own_forward(self) -> bool:
        """Whether the own forward of a module with a rule runs now (its calls are not the rule's)."""
        return bool(self._opaque)

    def _apply(self, rule: Callable[[Call], Any], call: Call) -> Any:
        out = rule(call)
        if not call.reported:
            self._follow(call.target, call.args, call.kwargs, out)
        return out

    def _follow(self, target: Callable, args: tuple, kwargs: dict, out: Any) -> None:
        if not self.done:
            self.tracker.other(target, args, kwargs, out)

    # the first-block observer the rules see: the tracker, silent while a rule's own calls run
    @property
    def done(self) -> bool:
        return self._quiet > 0 or self.tracker.done

    def activation(self, name: str, z: Tensor, out: Tensor, pre: Tensor | None = None) -> None:
        if not self._quiet:
            self.tracker.activation(name, z, out, pre)

    def needs_copy(self, z: Tensor) -> bool:
        return not self._quiet and self.tracker.needs_copy(z)

    @contextmanager
    def _nested(self) -> Iterator[None]:
        self._quiet += 1
        try:
            if any(mode is self for mode in _get_current_function_mode_stack()):
                yield
            else:  # inside this mode's own __torch_function__, where it is paused
                with self:
                    yield
        finally:
            self._quiet -= 1

    @contextmanager
    def modules(self, model: nn.Module) -> Iterator[None]:
        """Hand the calls of ``model``'s modules whose type has a rule to that rule, in this thread.

        The hooks exist only inside the ``with`` block, also after an exception.
        """
        owner = threading.get_ident()
        handles = []

        def enter(module: nn.Module, _args: tuple, _kwargs: dict) -> None:
            if threading.get_ident() == owner and not self._opaque:
                self._opaque.append(module)

        def leaver(rule: Callable[[Call], Any]) -> Callable[..., Any]:
            def leave(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
                if threading.get_ident() != owner or not self._opaque or self._opaque[-1] is not module:
                    return None
                self._opaque.pop()
                return self._apply(rule, Call(module, args, kwargs, self.state, output))

            return leave

        try:
            for module in model.modules():
                rule = self.rules.module_rule(module)
                if rule is not None:
                    handles.append(module.register_forward_pre_hook(enter, with_kwargs=True))
                    handles.append(module.register_forward_hook(leaver(rule), with_kwargs=True))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _copies(self, value: Any) -> Any:
        """``value`` with each kept tensor in it (also inside a list or tuple) replaced by its copy."""
        if isinstance(value, Tensor):
            if id(value) not in self.kept:
                return value
            if id(value) not in self._copies_of:
                self._copies_of[id(value)] = value.clone()
            return self._copies_of[id(value)]
        if type(value) in (list, tuple):
            return type(value)(self._copies(v) for v in value)
        return value
