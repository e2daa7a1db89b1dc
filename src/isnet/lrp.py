"""LRP-Flex: Layer-wise Relevance Propagation for any ReLU network.

The heatmap pass is ordinary autograd with one change: the backward of every
piecewise-linear activation ``a = f(z)`` multiplies the incoming gradient by
``f(z) / (z + eps * sign(z))`` (``a / (a + eps)`` for a ReLU) instead of ``f'(z)``.
Relevance of a tensor ``t`` is ``t * g_t``, with ``g_t`` that modified gradient.
This is LRP-epsilon on layers feeding an activation and LRP-0 elsewhere; with
``eps = 0`` it is gradient x input. The first conv/linear -> [batch norm] -> ReLU
block can use the Z^B rule instead (pixel bounds ``low``/``high``).

Activations are intercepted with a thread-local :class:`~torch.overrides.TorchFunctionMode`
that is active only while a :class:`LRPFlex` traces a forward pass. Modules,
functional calls, tensor methods, reused and in-place ReLUs are all covered, and
the model is never modified: no hooks stay, no flag is changed.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

Bounds = tuple[float | Tensor, float | Tensor]

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


class _BackwardSwitch:
    """Selects the activation derivative of one traced forward pass.

    Off: the ordinary derivative (training losses). On: the LRP rule (heatmap pass).
    One switch belongs to one trace, so concurrent traces never see each other.
    """

    def __init__(self, epsilon: float) -> None:
        self.epsilon = epsilon
        self.lrp = False


def _stabilise(z: Tensor, eps: float) -> Tensor:
    """``z + eps * sign(z)`` with ``sign(0) = +1``."""
    return z + torch.where(z >= 0, eps, -eps)


class _ReLU(torch.autograd.Function):
    """ReLU whose backward is ``a / (a + eps)`` while the switch is on."""

    @staticmethod
    def forward(ctx, z: Tensor, switch: _BackwardSwitch, inplace: bool) -> Tensor:
        if inplace:
            ctx.mark_dirty(z)
            out = z.relu_()
        else:
            out = z.relu()
        ctx.switch = switch
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
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
    def backward(ctx, upstream: Tensor):
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


class _PiecewiseLinearFn(torch.autograd.Function):
    """LeakyReLU / hardtanh (ReLU6); LRP backward ``f(z) / (z + eps * sign(z))``."""

    @staticmethod
    def forward(ctx, z: Tensor, switch: _BackwardSwitch, kind: str, params: tuple) -> Tensor:
        out = F.leaky_relu(z, *params) if kind == "leaky" else F.hardtanh(z, *params)
        ctx.switch, ctx.kind, ctx.params = switch, kind, params
        ctx.save_for_backward(z, out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, out = ctx.saved_tensors
        if ctx.switch.lrp:
            factor = out / _stabilise(z, ctx.switch.epsilon)
            if ctx.switch.epsilon == 0:  # f(0) / 0: the ordinary derivative there, as gradient x input
                factor = torch.where(z == 0, _piecewise_derivative(z, ctx.kind, ctx.params), factor)
        else:
            factor = _piecewise_derivative(z, ctx.kind, ctx.params)
        return grad * factor, None, None, None


@dataclass
class FirstBlock:
    """The first conv/linear -> [batch norm] -> ReLU block, as traced (inputs of Z^B)."""

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


@dataclass
class _Tracker:
    """Follows the input through the first block, for Z^B."""

    block: FirstBlock | None = None
    failure: str | None = None
    done: bool = False
    watched: list[Tensor] = field(default_factory=list)
    source_shape: torch.Size | None = None


def _arg(args: tuple, kwargs: dict, index: int, name: str, default=None):
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _qualname(func) -> str:
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


class _LRPMode(TorchFunctionMode):
    """Routes activations through :class:`_ReLU` and records the first block."""

    def __init__(self, switch: _BackwardSwitch, x: Tensor | None) -> None:
        super().__init__()
        self.switch = switch
        self.tracker = _Tracker(watched=[x]) if x is not None else _Tracker(done=True)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELU_FUNCS or func in _RELU_INPLACE_FUNCS:
            inplace = func in _RELU_INPLACE_FUNCS or bool(kwargs.get("inplace", False))
            z = args[0]
            closes_block = self._closes_first_block(z)
            if closes_block and inplace and z is self.tracker.block.conv_out:
                self.tracker.block.conv_out = z.clone()  # Z^B needs the pre-activations this ReLU overwrites
            out = _ReLU.apply(z, self.switch, inplace)
            if closes_block:
                self.tracker.block.relu_out = out
                self.tracker.done = True
            elif not self.tracker.done and any(z is w for w in self.tracker.watched):
                self._fail("a ReLU applied directly to the input")
            return out
        if func in _LEAKY_FUNCS:
            z = args[0]
            out = _PiecewiseLinearFn.apply(z, self.switch, "leaky", (float(_arg(args, kwargs, 1, "negative_slope", 0.01)),))
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
            out = _PiecewiseLinearFn.apply(z, self.switch, "hardtanh", params)
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

    def _track_other(self, func, args: tuple, kwargs: dict, out) -> None:
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


def check_activations(model: nn.Module) -> None:
    """Raise :class:`UnsupportedModelError` naming the first unsupported activation module."""
    for name, module in model.named_modules():
        if isinstance(module, UNSUPPORTED_MODULES):
            raise UnsupportedModelError(
                f"module '{name}' ({type(module).__name__}) is an activation LRP-Flex cannot "
                "propagate relevance through; LRP-Flex covers ReLU, ReLU6 and LeakyReLU networks. "
                f"Replace '{name}' with nn.ReLU (and retrain) to explain this model."
            )


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


def _expand(value, n: int) -> tuple:
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
        return cls(block, _stabilise(z, epsilon), weight, w_bounds)

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


Target = Tensor | int | str


def select_logits(output: Tensor, target: Target) -> Tensor:
    """The logit explained for each sample: (B,) from a class tensor, an int or ``"argmax"``."""
    if isinstance(target, str):
        if target != "argmax":
            raise ValueError(f"target must be a class tensor, an int, 'argmax' or 'all'; got {target!r}")
        index = output.detach().argmax(1)
    elif isinstance(target, int):
        if not 0 <= target < output.shape[1]:
            raise ValueError(f"target class {target} is out of range for {output.shape[1]} outputs")
        return output[:, target]
    else:
        index = torch.as_tensor(target, device=output.device).long().reshape(-1)
        if index.numel() != output.shape[0]:
            raise ValueError(f"target has {index.numel()} classes for a batch of {output.shape[0]}")
    return output.gather(1, index[:, None]).squeeze(1)


@dataclass
class Relevance:
    """Relevance of one explained quantity: at the input and at named modules."""

    input: Tensor
    layers: dict[str, Tensor]


class Trace:
    """One forward pass traced by :class:`LRPFlex`; explains quantities computed from its output.

    ``output`` is the model's output with the ordinary autograd graph, so training
    losses on it use the ordinary derivatives; only :meth:`relevance` uses the LRP rule.
    """

    def __init__(self, lrp: LRPFlex, x: Tensor, output: Tensor, switch: _BackwardSwitch,
                 block: FirstBlock | None, layer_outputs: dict[str, Tensor]) -> None:
        self.lrp, self.x, self.output = lrp, x, output
        self._switch, self._block, self._layer_outputs = switch, block, layer_outputs
        self._zb_rules: dict[bool, ZBRule] = {}  # by grad mode: with or without a graph

    def relevance(self, quantity: Tensor, *, create_graph: bool = False,
                  retain_graph: bool | None = None) -> Relevance:
        """Relevance of the scalar ``quantity`` (a function of ``output``, summed over the batch)."""
        zb = self._block is not None
        start = self._block.relu_out if zb else self.x
        names = list(self._layer_outputs)
        wrt = [start, *self._layer_outputs.values()]
        self._switch.lrp = True
        try:
            with torch.enable_grad():
                grads = torch.autograd.grad(quantity, wrt, create_graph=create_graph,
                                            retain_graph=create_graph if retain_graph is None else retain_graph,
                                            allow_unused=True)
        finally:
            self._switch.lrp = False
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(wrt, grads)]
        # the relevance stays in the autograd graph exactly when create_graph asks for it
        with torch.set_grad_enabled(create_graph):
            if zb:
                if create_graph not in self._zb_rules:
                    self._zb_rules[create_graph] = ZBRule.fold(self._block, self.lrp.epsilon, self.lrp.bounds)
                heat = self._zb_rules[create_graph](start * grads[0])
                if heat.shape != self.x.shape:  # the first linear layer saw the input flattened
                    heat = heat.reshape(self.x.shape)
            else:
                heat = self.x * grads[0]
            layers = {n: t * g for n, t, g in zip(names, wrt[1:], grads[1:])}
        if self.lrp.check_finite:
            _check_finite(heat, "input")
            for name, rel in layers.items():
                _check_finite(rel, name)
        return Relevance(heat, layers)

    def heatmap(self, target: Target, *, create_graph: bool = False,
                retain_graph: bool | None = None) -> Tensor:
        """Input relevance (B, C, ...) of one logit per sample; ``"all"`` gives (B, K, C, ...)."""
        if isinstance(target, str) and target == "all":
            classes = self.output.shape[1]
            with torch.enable_grad():  # also under torch.no_grad(): the quantity must be in the graph
                quantities = [self.output[:, k].sum() for k in range(classes)]
            maps = [self.relevance(q, create_graph=create_graph,
                                   retain_graph=True if k < classes - 1 else retain_graph).input
                    for k, q in enumerate(quantities)]
            return torch.stack(maps, 1)
        with torch.enable_grad():
            quantity = select_logits(self.output, target).sum()
        return self.relevance(quantity, create_graph=create_graph, retain_graph=retain_graph).input


def _check_finite(relevance: Tensor, where: str) -> None:
    if not torch.isfinite(relevance).all():
        bad = (~torch.isfinite(relevance)).sum().item()
        raise FloatingPointError(
            f"{bad} non-finite relevance values at {where}: the model output or an activation "
            "overflowed, or epsilon is 0 where a pre-activation is 0. Check the input range, use "
            "epsilon > 0, or run in float32."
        )


class LRPFlex:
    """LRP-Flex explainer bound to a model; reusable and thread-safe.

    Parameters
    ----------
    model
        Any ReLU network (ReLU, ReLU6, LeakyReLU as modules, functions or methods,
        reused or in place). It is never modified.
    epsilon
        LRP-epsilon stabiliser; ``0`` gives gradient x input.
    zb
        Use the Z^B rule on the first conv/linear -> [batch norm] -> ReLU block.
    bounds
        Lowest and highest input values for Z^B: floats, or one value per channel.
    layers
        Names of modules (``model.named_modules()``) whose output relevance is also returned.
    check_finite
        Raise :class:`FloatingPointError` on NaN/inf relevance (one device sync per call).
    """

    def __init__(self, model: nn.Module, *, epsilon: float = 0.01, zb: bool = True,
                 bounds: Bounds = (0.0, 1.0), layers: Sequence[str] = (), check_finite: bool = True) -> None:
        if epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        check_activations(model)
        modules = dict(model.named_modules())
        missing = [name for name in layers if name not in modules]
        if missing:
            raise KeyError(f"no module named {missing} in the model; names come from model.named_modules()")
        self.model, self.epsilon, self.zb = model, float(epsilon), zb
        self.bounds, self.layers, self.check_finite = bounds, tuple(layers), check_finite

    def trace(self, x: Tensor) -> Trace:
        """Run the model on ``x`` and keep what the relevance pass needs."""
        x_in = x if x.requires_grad else x.detach().requires_grad_(True)
        switch = _BackwardSwitch(self.epsilon)
        mode = _LRPMode(switch, x_in if self.zb else None)
        layer_outputs: dict[str, Tensor] = {}
        handles = [self._capture(name, layer_outputs) for name in self.layers]
        try:
            with torch.enable_grad(), mode:
                output = self.model(x_in)
        finally:
            for handle in handles:
                handle.remove()
        if not isinstance(output, Tensor) or output.dim() != 2:
            raise TypeError("LRP-Flex explains models whose output is a (batch, classes) tensor; "
                            f"got {type(output).__name__}{tuple(getattr(output, 'shape', ()))}")
        block = None
        if self.zb:
            tracker = mode.tracker
            block = tracker.block
            if block is None or block.relu_out is None:
                found = tracker.failure or "no ReLU after the first layer"
                raise UnsupportedModelError(
                    "zb=True needs the model to start with a conv or linear layer, optionally batch "
                    f"norm, then a ReLU; found {found}. Pass zb=False to propagate LRP-epsilon "
                    "down to the input instead."
                )
        return Trace(self, x_in, output, switch, block, layer_outputs)

    def _capture(self, name: str, store: dict[str, Tensor]):
        owner = threading.get_ident()
        module = self.model.get_submodule(name)

        def hook(_module: nn.Module, _inputs, output) -> None:
            if threading.get_ident() != owner:
                return
            if name in store:
                raise UnsupportedModelError(
                    f"module '{name}' runs more than once per forward pass; name a module that runs once")
            store[name] = output

        return module.register_forward_hook(hook)

    def explain(self, x: Tensor, target: Target, *, create_graph: bool = False) -> Tensor:
        """Input heatmap (B, C, H, W), or (B, K, C, H, W) for ``target="all"``."""
        return self.trace(x).heatmap(target, create_graph=create_graph)

    __call__ = explain


def explain(model: nn.Module, x: Tensor, target: Target, *, epsilon: float = 0.01, zb: bool = True,
            bounds: Bounds = (0.0, 1.0), create_graph: bool = False) -> Tensor:
    """LRP-Flex heatmap of ``model`` at ``x``; see :class:`LRPFlex`.

    ``target``: a class per sample (LongTensor), an int, ``"argmax"`` or ``"all"``
    (one map per class, shape (B, K, C, H, W)). The model's train/eval mode is respected.
    """
    return LRPFlex(model, epsilon=epsilon, zb=zb, bounds=bounds).explain(x, target, create_graph=create_graph)
