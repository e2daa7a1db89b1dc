"""Tracing: the forward pass of a model, seen from outside the model.

Call interception
-----------------
:class:`LRPMode` is a :class:`~torch.overrides.TorchFunctionMode`, active only while
a forward pass is traced and only in the thread that traces it. It routes each call,
whether a module, a functional call, a tensor method, reused or in place, to its rule,
bound to the trace's :class:`~isnet.lrp.rules.BackwardSwitch`:

* ReLU, ReLU6, LeakyReLU: :mod:`isnet.lrp.rules`;
* other element-wise activations (GELU, SiLU, sigmoid, ...): the identity rule,
  :mod:`isnet.lrp.activations`;
* LayerNorm, GroupNorm, InstanceNorm, RMSNorm, ``F.normalize``: statistics held
  constant, :mod:`isnet.lrp.normalisation`;
* products of two input-dependent tensors, ``einsum``, ``scaled_dot_product_attention``,
  ``multi_head_attention_forward``, GLU: the uniform rule, :mod:`isnet.lrp.attention`;
* convolutions and linear layers, only for explainers using LRP-z+: :mod:`isnet.lrp.zplus`.

Every other call keeps its ordinary derivative (linear maps, pooling, softmax,
reshapes). Non-linear arithmetic that has no rule (``exp``, ``log``, ``sqrt``, powers,
division by an input-dependent tensor) applied to a tensor computed from the input
raises :class:`UnsupportedModelError` naming the function; so do modules known to hide
such arithmetic (recurrent layers, local response norm) when the explainer is built.
The model itself is never modified.

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
The mode also feeds a :class:`~isnet.lrp.first_block.FirstBlockTracker`, which follows
the input through the first layer for Z^B.

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

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .activations import ACTIVATIONS, apply_activation
from .attention import ATTENTION, PRODUCTS, Dependence, apply_glu, apply_mha, apply_product, apply_sdpa
from .first_block import FirstBlockTracker, qualname
from .normalisation import NORMALISATIONS, apply_normalisation
from .rules import BackwardSwitch, PiecewiseLinearRule, ReLURule, UnsupportedModelError
from .zplus import ZPLUS_LAYERS, apply_zplus

_RELU_FUNCS = {F.relu, torch.relu, Tensor.relu}
_RELU_INPLACE_FUNCS = {torch.relu_, F.relu_, Tensor.relu_}
_LEAKY_FUNCS = {F.leaky_relu, torch._C._nn.leaky_relu, F.leaky_relu_, torch._C._nn.leaky_relu_}
_HARDTANH_FUNCS = {F.hardtanh, torch._C._nn.hardtanh, F.hardtanh_, torch._C._nn.hardtanh_, F.relu6}
_NO_RULE_FUNCS = {  # non-linear arithmetic without an LRP rule, when applied to input-dependent tensors
    torch.exp, Tensor.exp, Tensor.exp_, torch.log, Tensor.log, torch.sqrt, Tensor.sqrt, torch.rsqrt, Tensor.rsqrt,
    torch.reciprocal, Tensor.reciprocal, torch.square, Tensor.square, torch.pow, Tensor.pow, Tensor.__pow__,
    Tensor.__rpow__, F.local_response_norm,
}
_DIVISIONS = {torch.div, Tensor.div, Tensor.div_, Tensor.__truediv__, Tensor.__itruediv__, torch.true_divide,
              Tensor.true_divide}
_KINDS: dict[Callable, str] = {
    **{f: "relu" for f in _RELU_FUNCS | _RELU_INPLACE_FUNCS}, **{f: "leaky" for f in _LEAKY_FUNCS},
    **{f: "hardtanh" for f in _HARDTANH_FUNCS}, **{f: "activation" for f in ACTIVATIONS},
    **{f: "norm" for f in NORMALISATIONS}, **{f: "product" for f in PRODUCTS}, **ATTENTION,
    **{f: "no_rule" for f in _NO_RULE_FUNCS}, **{f: "division" for f in _DIVISIONS}, Tensor.__rdiv__: "rdivision",
    F.batch_norm: "batch_norm",
}
UNSUPPORTED_MODULES: tuple[type[nn.Module], ...] = (
    nn.RNNBase, nn.RNNCellBase, nn.LocalResponseNorm, nn.CrossMapLRN2d,
)


def check_activations(model: nn.Module) -> None:
    """Raise :class:`UnsupportedModelError` naming the first module LRP-Flex has no rule for."""
    for name, module in model.named_modules():
        if isinstance(module, UNSUPPORTED_MODULES):
            raise UnsupportedModelError(
                f"module '{name}' ({type(module).__name__}) computes non-linear arithmetic LRP-Flex has no rule "
                "for (recurrent gates, cross-channel normalisation). LRP-Flex covers element-wise activations, "
                "normalisation layers, attention and gating; replace this module to explain the model."
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


class LRPMode(TorchFunctionMode):
    """Routes calls to the LRP rule functions and follows the first block.

    Parameters
    ----------
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
        (``batch_stats="constant"``, see :mod:`isnet.lrp.normalisation`); else they keep
        their ordinary derivative.
    kept
        Tensors (the model's buffers) that calls get copies of, so that the pass cannot write
        into them (see the module docstring).
    """

    def __init__(self, switch: BackwardSwitch, x: Tensor, *, first_block: bool = True,
                 zplus: float | None = None, constant_bn: bool = False, kept: Iterable[Tensor] = ()) -> None:
        super().__init__()
        self.switch, self.zplus, self.constant_bn = switch, zplus, constant_bn
        self.kept = {id(t) for t in kept}
        self._copies_of: dict[int, Tensor] = {}  # kept tensor id -> its copy for this pass, made on first use
        self.depends = Dependence(x)
        self.tracker = FirstBlockTracker(x if first_block else None)

    def __torch_function__(self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if self.kept:
            args, kwargs = self._copies(args), {k: self._copies(v) for k, v in kwargs.items()}
        kind = _KINDS.get(func)
        if kind == "batch_norm":  # a normalisation rule only when its statistics are held constant
            kind = "norm" if self.constant_bn else None
        if kind is None:
            if self.zplus is not None and func in ZPLUS_LAYERS:
                out = apply_zplus(func, args, kwargs, self.switch, self.zplus)
            else:
                out = func(*args, **kwargs)
        elif kind == "relu":
            return self._relu(func, args, kwargs)
        elif kind in ("leaky", "hardtanh"):
            return self._piecewise(func, kind, args, kwargs)
        elif kind == "activation":
            out, pre = apply_activation(func, args, kwargs, self.switch)
            self.tracker.activation(qualname(func), args[0], out, pre)
            return out
        elif kind == "norm":
            out = apply_normalisation(func, args, kwargs, self.switch)
        elif kind == "product":
            out = apply_product(func, args, kwargs, self.switch, self.depends)
        elif kind == "sdpa":
            out = apply_sdpa(args, kwargs, self.switch, self.depends)
        elif kind == "mha":
            out = apply_mha(func, args, kwargs, self.switch, self.depends)
        elif kind == "glu":
            out = apply_glu(args, kwargs, self.switch, self._sigmoid, self.depends)
        else:
            self._check_rule(func, kind, args)
            out = func(*args, **kwargs)
        if not self.tracker.done:
            self.tracker.other(func, args, kwargs, out)
        return out

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

    def _relu(self, func: Callable, args: tuple, kwargs: dict) -> Tensor:
        inplace = func in _RELU_INPLACE_FUNCS or bool(kwargs.get("inplace", False))
        z = args[0]
        pre = z.clone() if inplace and self.tracker.closes(z) and z is self.tracker.block.conv_out else None
        out = ReLURule.apply(z, self.switch, inplace)
        self.tracker.activation("a ReLU", z, out, pre)
        return out

    def _piecewise(self, func: Callable, kind: str, args: tuple, kwargs: dict) -> Tensor:
        z = args[0]
        if kind == "leaky":
            params: tuple = (float(args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)),)
        elif func is F.relu6:
            params = (0.0, 6.0)
        else:
            params = (float(args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)),
                      float(args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)))
            if params[0] > 0 or params[1] < 0:
                raise UnsupportedModelError(
                    f"hardtanh with range {params} does not map 0 to 0; LRP-Flex supports "
                    "piecewise-linear activations with f(0) = 0 (ReLU, ReLU6, LeakyReLU)."
                )
        out = PiecewiseLinearRule.apply(z, self.switch, "leaky" if kind == "leaky" else "hardtanh", params)
        self.tracker.activation(qualname(func), z, out)
        return out

    def _sigmoid(self, t: Tensor) -> Tensor:
        return apply_activation(torch.sigmoid, (t,), {}, self.switch)[0]

    def _check_rule(self, func: Callable, kind: str, args: tuple) -> None:
        """Reject non-linear arithmetic without a rule on input-dependent tensors."""
        if kind == "no_rule":
            operands = [a for a in args if isinstance(a, Tensor)]
        else:  # a division: only an input-dependent divisor is non-linear
            operands = args[:1] if kind == "rdivision" else args[1:2]
        if any(self.depends(t) for t in operands):
            raise UnsupportedModelError(
                f"the model applies {qualname(func)} to a tensor computed from the input; LRP-Flex has no rule "
                "for this non-linearity. Express it with a supported operation (an activation module, "
                "nn.LayerNorm, F.normalize, F.softmax, attention) to explain this model."
            )
