"""Operations without an LRP rule: rejected, naming the operation.

Non-linear arithmetic (``exp``, ``log``, ``sqrt``, powers, division by an input-dependent
tensor) has no rule: applied to a tensor computed from the input, it raises while tracing;
on parameters alone (a learnable temperature) it is a constant and keeps its ordinary
derivative. Modules known to hide such arithmetic (recurrent layers, cross-channel
normalisation) are rejected when the explainer is built. A rule registered for one of them
replaces the rejection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Call, Rule, UnsupportedModelError
from .generic import Unsupported


def _reject_if_input_dependent(call: Call, operands: list[Any]) -> Any:
    if any(call.trace.depends(t) for t in operands):
        raise UnsupportedModelError(
            f"the model applies {call.name} to a tensor computed from the input; LRP-Flex has no rule "
            "for this non-linearity. Express it with a supported operation (an activation module, "
            "nn.LayerNorm, F.normalize, F.softmax, attention) or register a rule for it (isnet.lrp.Rules)."
        )
    return call.run()


def nonlinear(call: Call) -> Any:
    """Arithmetic without a rule: rejected on input-dependent tensors."""
    return _reject_if_input_dependent(call, [a for a in call.args if isinstance(a, Tensor)])


def division(call: Call) -> Any:
    """``a / b``: linear in ``a``; rejected when the divisor ``b`` depends on the input."""
    return _reject_if_input_dependent(call, list(call.args[1:2]))


def reversed_division(call: Call) -> Any:
    """``b / a`` written as ``a.__rdiv__(b)``: rejected when ``a`` depends on the input."""
    return _reject_if_input_dependent(call, list(call.args[:1]))


_NONLINEAR = (
    torch.exp, Tensor.exp, Tensor.exp_, torch.log, Tensor.log, torch.sqrt, Tensor.sqrt, torch.rsqrt, Tensor.rsqrt,
    torch.reciprocal, Tensor.reciprocal, torch.square, Tensor.square, torch.pow, Tensor.pow, Tensor.__pow__,
    Tensor.__rpow__, F.local_response_norm,
)
_DIVISIONS = (torch.div, Tensor.div, Tensor.div_, Tensor.__truediv__, Tensor.__itruediv__, torch.true_divide,
              Tensor.true_divide)
_HIDDEN = Unsupported(
    "computes non-linear arithmetic LRP-Flex has no rule for (recurrent gates, cross-channel normalisation). "
    "Replace this module, or register a rule for its type (isnet.lrp.Rules), to explain the model.")

RULES: dict[Callable, Rule] = {
    **{f: nonlinear for f in _NONLINEAR}, **{f: division for f in _DIVISIONS}, Tensor.__rdiv__: reversed_division,
    **{m: _HIDDEN for m in (nn.RNNBase, nn.RNNCellBase, nn.LocalResponseNorm, nn.CrossMapLRN2d)},
}
