"""Products of two activations and attention: the uniform rule.

Uniform rule
------------
A product of two tensors that both depend on the input (``x * sigmoid(s)`` gating,
squeeze-and-excitation's ``scale * x``, attention's ``Q K^T`` and ``A V``) is linear in
each factor with the other held fixed, so LRP-epsilon can redistribute its relevance to
either one; ordinary gradient x input would give *each* factor all of it. AttnLRP's
uniform rule splits it half and half: as a modified gradient, each factor's gradient is
halved, ``g_a = 0.5 * b * g`` and ``g_b = 0.5 * a * g``. :class:`UniformGate` does the
halving on the way into the product, so the product itself runs unchanged. A product
with a constant or a parameter (a layer scale) is linear and is left alone. ``einsum``
with ``k`` input-dependent operands gives each ``1 / k``.

Softmax
-------
AttnLRP redistributes the relevance of ``s = softmax(x)`` as
``R_x,i = x_i (R_s,i - s_i * sum_j R_s,j)`` (Achtibat et al. 2024, Prop. 3.1). With
``R_s = s * g_s`` this is ``x * g_x`` with ``g_x,i = s_i (g_s,i - sum_j s_j g_s,j)``: the
ordinary softmax derivative, so softmax needs no interception. It is not
conservative: the ``x * s * sum R`` term is absorbed, like a bias.

Attention
---------
``F.scaled_dot_product_attention(q, k, v)`` is ``softmax(q k^T * scale + mask) v``: with
the two products under the uniform rule and the ordinary softmax, the relevance reaching
``q`` and ``k`` is a quarter of what gradient x input gives, and ``v``'s a half. Gating
``q``, ``k``, ``v`` by these factors gives the rule. The attention is then computed
with ordinary operations (matmul, softmax, matmul): the fused CPU kernels have no double
backward, which ISNet training needs. ``nn.MultiheadAttention`` calls
``F.multi_head_attention_forward``, whose projections are linear: gating its query, key
and value arguments has the same effect (as LXT does for torchvision's ViT); it is asked
for its attention weights, which selects its explicit path for the same reason.

Which tensors depend on the input is read from the autograd graph
(:class:`~isnet.lrp.core.Dependence`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core import BackwardSwitch, Call, Dependence, Rule, UnsupportedModelError
from .activations import identity


class UniformGate(torch.autograd.Function):
    """The identity; its backward scales the gradient by ``factor`` while the switch is on."""

    @staticmethod
    def forward(ctx: Any, t: Tensor, switch: BackwardSwitch, factor: float) -> Tensor:
        ctx.switch, ctx.factor = switch, factor
        return t.view_as(t)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        return (grad * ctx.factor if ctx.switch.lrp else grad), None, None


def _gate(t: Tensor, switch: BackwardSwitch, factor: float) -> Tensor:
    return t if factor == 1 else UniformGate.apply(t, switch, factor)


_INPLACE_PRODUCTS = {Tensor.mul_, Tensor.__imul__}
PRODUCTS = {
    torch.mul, Tensor.mul, Tensor.__mul__, Tensor.__rmul__, torch.multiply, Tensor.multiply, torch.matmul,
    Tensor.matmul, Tensor.__matmul__, Tensor.__rmatmul__, torch.bmm, Tensor.bmm, torch.mm, Tensor.mm, torch.einsum,
    *_INPLACE_PRODUCTS,
}
_SECOND_OPERAND = ("other", "mat2")


def product(call: Call) -> Any:
    """Run a product with the uniform rule when two or more factors depend on the input."""
    func, args, kwargs = call.target, call.args, call.kwargs
    switch, depends = call.trace.switch, call.trace.depends
    if func is torch.einsum:
        equation, *operands = args
        listed = len(operands) == 1 and isinstance(operands[0], (list, tuple))
        operands = list(operands[0]) if listed else operands
        count = sum(depends(t) for t in operands)
        if count < 2:
            return func(*args, **kwargs)
        gated = [_gate(t, switch, 1 / count) if depends(t) else t for t in operands]
        return func(equation, gated, **kwargs) if listed else func(equation, *gated, **kwargs)
    if len(args) < 2:  # operands given as keywords
        kwargs = dict(kwargs)
        first = args[0] if args else kwargs.pop("input")
        args = (first, kwargs.pop(next(n for n in _SECOND_OPERAND if n in kwargs)))
    a, b = args[0], args[1]
    if not (depends(a) and depends(b)):
        return func(*args, **kwargs)
    if func in _INPLACE_PRODUCTS:  # in place: the product of copies, written into ``a``
        return a.copy_(torch.mul(_gate(a.clone(), switch, 0.5), _gate(b, switch, 0.5)))
    return func(_gate(a, switch, 0.5), _gate(b, switch, 0.5), *args[2:], **kwargs)


def _attention_factors(q: Any, k: Any, v: Any, depends: Dependence) -> tuple[float, float, float]:
    """Gradient factors of query, key and value under the uniform rule on ``q k^T`` and ``A v``."""
    dq, dk, dv = depends(q), depends(k), depends(v)
    scores = 0.5 if dq and dk else 1.0
    mixing = 0.5 if (dq or dk) and dv else 1.0
    return scores * mixing, scores * mixing, mixing


def _explicit_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, dropout_p: float = 0.0,
                        is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> Tensor:
    """``softmax(q k^T * scale + mask) v`` with ordinary ops (the fused CPU kernels have no double backward)."""
    if enable_gqa:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], -3)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], -3)
    scores = (q * (q.shape[-1] ** -0.5 if scale is None else scale)) @ k.transpose(-2, -1)
    if is_causal:
        keep = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    weights = scores.softmax(-1)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    return weights @ v


def sdpa(call: Call) -> Tensor:
    """``F.scaled_dot_product_attention``, computed explicitly with its query, key and value gated."""
    args, kwargs, switch = call.args, call.kwargs, call.trace.switch
    names = ("query", "key", "value")
    qkv = [args[i] if len(args) > i else kwargs[n] for i, n in enumerate(names)]
    factors = _attention_factors(*qkv, call.trace.depends)
    gated = [_gate(t, switch, f) for t, f in zip(qkv, factors)]
    rest = {n: v for n, v in kwargs.items() if n not in names}
    return _explicit_attention(*gated, *args[3:], **rest)


_MHA_UNSUPPORTED = ((7, "bias_k", "add_bias_kv=True"), (8, "bias_v", "add_bias_kv=True"),
                    (9, "add_zero_attn", "add_zero_attn=True"), (None, "static_k", "static_k"),
                    (None, "static_v", "static_v"))  # (position, name, the module option that sets it)
_NEED_WEIGHTS = 15  # position of need_weights


def mha(call: Call) -> Any:
    """``F.multi_head_attention_forward`` (``nn.MultiheadAttention``) with gated query, key and value."""
    func, args, kwargs, switch = call.target, call.args, call.kwargs, call.trace.switch
    for index, name, what in _MHA_UNSUPPORTED:
        value = args[index] if index is not None and len(args) > index else kwargs.get(name)
        if value is not None and value is not False:
            raise UnsupportedModelError(
                f"nn.MultiheadAttention with {what} is not supported by LRP-Flex (an attention key that is not "
                "computed from the input); build the attention without it to explain this model.")
    query, key, value = args[:3]
    factors = _attention_factors(query, key, value, call.trace.depends)
    gated = [_gate(t, switch, f) for t, f in zip((query, key, value), factors)]
    # asking for the attention weights selects the explicit path (the fused one has no double backward)
    rest, kwargs = list(args[3:]), dict(kwargs)
    if len(args) > _NEED_WEIGHTS:
        wanted, rest[_NEED_WEIGHTS - 3] = rest[_NEED_WEIGHTS - 3], True
    else:
        wanted, kwargs["need_weights"] = kwargs.get("need_weights", True), True
    out, weights = func(*gated, *rest, **kwargs)
    return out, (weights if wanted else None)


def glu(call: Call) -> Tensor:
    """``F.glu``: ``a * sigmoid(b)`` with the identity rule on the sigmoid and the uniform rule on the product."""
    args, kwargs, switch, depends = call.args, call.kwargs, call.trace.switch, call.trace.depends
    dim = args[1] if len(args) > 1 else kwargs.get("dim", -1)
    a, b = args[0].chunk(2, dim)
    gate = identity(torch.sigmoid, (b,), {}, switch)[0]
    if depends(a) and depends(gate):
        return _gate(a, switch, 0.5) * _gate(gate, switch, 0.5)
    return a * gate


RULES: dict[Callable, Rule] = {
    **{f: product for f in PRODUCTS}, F.scaled_dot_product_attention: sdpa, F.multi_head_attention_forward: mha,
    F.glu: glu,
}
