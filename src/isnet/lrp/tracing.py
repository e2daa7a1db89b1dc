"""Tracing: the forward pass of a model, seen from outside the model.

Activation interception
-----------------------
:class:`LRPMode` is a :class:`~torch.overrides.TorchFunctionMode`, active only while
a forward pass is traced and only in the thread that traces it. Every ReLU, ReLU6 and
LeakyReLU call, whether a module, a functional call, a tensor method, reused or in
place, is routed through the rule functions of :mod:`isnet.lrp.rules`, bound to the
trace's :class:`~isnet.lrp.rules.BackwardSwitch`. Activations through which no LRP rule
propagates relevance raise :class:`UnsupportedModelError`. The model itself is never
modified.

First block
-----------
Z^B needs the first conv/linear -> [batch norm] -> ReLU block. The mode follows the
input through the first operations (a flattening is allowed before a linear layer)
and records the block's arguments in a :class:`~isnet.lrp.rules.FirstBlock`; any
other operation on the way is remembered as the reason Z^B cannot be used.

Module outputs
--------------
:func:`record_outputs` keeps the outputs of named modules with forward hooks that
exist only inside its ``with`` block and ignore other threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .rules import BackwardSwitch, FirstBlock, PiecewiseLinearRule, ReLURule

_RELU_FUNCS = {F.relu, torch.relu, Tensor.relu}
_RELU_INPLACE_FUNCS = {torch.relu_, F.relu_, Tensor.relu_}
_LEAKY_FUNCS = {F.leaky_relu, torch._C._nn.leaky_relu, F.leaky_relu_, torch._C._nn.leaky_relu_}
_HARDTANH_FUNCS = {F.hardtanh, torch._C._nn.hardtanh, F.hardtanh_, torch._C._nn.hardtanh_, F.relu6}
_CONV_FUNCS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
_RESHAPE_FUNCS = {torch.flatten, Tensor.flatten, Tensor.view, Tensor.reshape, torch.reshape}
_UNSUPPORTED_FUNCS = {
    F.gelu: "gelu", F.silu: "silu", F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid",
    F.elu: "elu", F.selu: "selu", F.celu: "celu", F.mish: "mish", F.softplus: "softplus",
    F.prelu: "prelu", F.glu: "glu", F.rrelu: "rrelu", F.logsigmoid: "logsigmoid",
    torch.sigmoid: "sigmoid", Tensor.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
    torch.tanh: "tanh", Tensor.tanh: "tanh", F.tanh: "tanh", torch.prelu: "prelu",
}
UNSUPPORTED_MODULES: tuple[type[nn.Module], ...] = (
    nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.ELU, nn.SELU, nn.CELU, nn.Mish,
    nn.Softplus, nn.PReLU, nn.GLU, nn.RReLU, nn.Sigmoid, nn.Tanh, nn.LogSigmoid, nn.Softsign,
    nn.Tanhshrink, nn.Softshrink, nn.Hardshrink, nn.Threshold,
)


class UnsupportedModelError(ValueError):
    """The model contains an operation LRP-Flex cannot propagate relevance through."""


def check_activations(model: nn.Module) -> None:
    """Raise :class:`UnsupportedModelError` naming the first unsupported activation module."""
    for name, module in model.named_modules():
        if isinstance(module, UNSUPPORTED_MODULES):
            raise UnsupportedModelError(
                f"module '{name}' ({type(module).__name__}) is an activation LRP-Flex cannot "
                "propagate relevance through; LRP-Flex covers ReLU, ReLU6 and LeakyReLU networks. "
                f"Replace '{name}' with nn.ReLU (and retrain) to explain this model."
            )


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


@contextmanager
def record_outputs(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """Record the outputs of the modules ``names`` during forward passes made in this thread.

    Parameters
    ----------
    model
        The model whose calls are forward passes; it is never modified beyond the
        hooks, which are removed on exit, also after an exception.
    names
        Module names from ``model.named_modules()``.

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
            if threading.get_ident() != owner:
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


@dataclass
class _Tracker:
    """Follows the input through the first block, for Z^B."""

    block: FirstBlock | None = None
    failure: str | None = None
    done: bool = False
    watched: list[Tensor] = field(default_factory=list)
    source_shape: torch.Size | None = None


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _qualname(func: Callable) -> str:
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


class LRPMode(TorchFunctionMode):
    """Routes activations through the LRP rule functions and records the first block."""

    def __init__(self, switch: BackwardSwitch, x: Tensor | None) -> None:
        super().__init__()
        self.switch = switch
        self.tracker = _Tracker(watched=[x]) if x is not None else _Tracker(done=True)

    def __torch_function__(self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _RELU_FUNCS or func in _RELU_INPLACE_FUNCS:
            inplace = func in _RELU_INPLACE_FUNCS or bool(kwargs.get("inplace", False))
            z = args[0]
            closes_block = self._closes_first_block(z)
            if closes_block and inplace and z is self.tracker.block.conv_out:
                self.tracker.block.conv_out = z.clone()  # Z^B needs the pre-activations this ReLU overwrites
            out = ReLURule.apply(z, self.switch, inplace)
            if closes_block:
                self.tracker.block.relu_out = out
                self.tracker.done = True
            elif not self.tracker.done and any(z is w for w in self.tracker.watched):
                self._fail("a ReLU applied directly to the input")
            return out
        if func in _LEAKY_FUNCS:
            z = args[0]
            out = PiecewiseLinearRule.apply(z, self.switch, "leaky", (float(_arg(args, kwargs, 1, "negative_slope", 0.01)),))
            self._track_other(func, args, kwargs, out)
            return out
        if func in _HARDTANH_FUNCS:
            z = args[0]
            if func is F.relu6:
                params = (0.0, 6.0)
            else:
                params = (float(_arg(args, kwargs, 1, "min_val", -1.0)), float(_arg(args, kwargs, 2, "max_val", 1.0)))
            if params[0] > 0 or params[1] < 0:
                raise UnsupportedModelError(
                    f"hardtanh with range {params} does not map 0 to 0; LRP-Flex supports "
                    "activations with f(0) = 0 (ReLU, ReLU6, LeakyReLU)."
                )
            out = PiecewiseLinearRule.apply(z, self.switch, "hardtanh", params)
            self._track_other(func, args, kwargs, out)
            return out
        if func in _UNSUPPORTED_FUNCS:
            raise UnsupportedModelError(
                f"the model calls {_UNSUPPORTED_FUNCS[func]} ({_qualname(func)}), which LRP-Flex "
                "cannot propagate relevance through; LRP-Flex covers ReLU, ReLU6 and LeakyReLU "
                "networks. Replace the activation with nn.ReLU (and retrain) to explain this model."
            )
        out = func(*args, **kwargs)
        if not self.tracker.done:
            self._track_other(func, args, kwargs, out)
        return out

    # --- first-block tracking (only until the first ReLU after the input) ---
    def _consumes_watched(self, args: tuple, kwargs: dict) -> bool:
        watched = self.tracker.watched
        for value in (*args, *kwargs.values()):
            if isinstance(value, Tensor) and any(value is w for w in watched):
                return True
            if isinstance(value, (list, tuple)) and any(
                isinstance(v, Tensor) and any(v is w for w in watched) for v in value
            ):
                return True
        return False

    def _fail(self, what: str) -> None:
        self.tracker.failure = what
        self.tracker.done = True

    def _closes_first_block(self, z: Tensor) -> bool:
        """Whether a ReLU of ``z`` is the first block's activation (the end of Z^B tracking)."""
        block = self.tracker.block
        return not self.tracker.done and block is not None and (z is block.conv_out or z is block.bn_out)

    def _track_other(self, func: Callable, args: tuple, kwargs: dict, out: Any) -> None:
        tr = self.tracker
        if tr.done or not isinstance(out, Tensor) or not self._consumes_watched(args, kwargs):
            return
        block = tr.block
        first = args[0] if args else None
        if block is None and func in _CONV_FUNCS and first is tr.watched[0]:
            tr.block = FirstBlock(
                dims=_CONV_FUNCS[func], input=first, weight=_arg(args, kwargs, 1, "weight"),
                bias=_arg(args, kwargs, 2, "bias"),
                conv_args=tuple(_arg(args, kwargs, i, n, d) for i, n, d in
                                ((3, "stride", 1), (4, "padding", 0), (5, "dilation", 1), (6, "groups", 1))),
                conv_out=out,
            )
            tr.watched = [out]
        elif (block is None and func in _RESHAPE_FUNCS and first is tr.watched[0] and out.dim() == 2
              and out.shape[0] == first.shape[0]):  # flattening the input for a first linear layer
            if tr.source_shape is None:
                tr.source_shape = first.shape
            tr.watched = [out]
        elif block is None and func is F.linear and first is tr.watched[0]:
            tr.block = FirstBlock(dims=0, input=first, weight=_arg(args, kwargs, 1, "weight"),
                                  bias=_arg(args, kwargs, 2, "bias"), conv_out=out,
                                  source_shape=tr.source_shape if tr.source_shape != first.shape else None)
            tr.watched = [out]
        elif block is not None and block.bn is None and func is F.batch_norm and first is block.conv_out:
            running_mean = _arg(args, kwargs, 1, "running_mean")
            running_var = _arg(args, kwargs, 2, "running_var")
            training = bool(_arg(args, kwargs, 5, "training", False)) or running_mean is None
            block.bn = (running_mean, running_var, _arg(args, kwargs, 3, "weight"),
                        _arg(args, kwargs, 4, "bias"), training, float(_arg(args, kwargs, 7, "eps", 1e-5)))
            block.bn_out = out
            tr.watched = [out]
        else:
            where = "the input" if block is None else (
                "the first layer's output" if block.bn is None else "the first batch norm's output")
            self._fail(f"{_qualname(func)} applied to {where}")
