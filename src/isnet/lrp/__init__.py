"""LRP-Flex: Layer-wise Relevance Propagation for any network built from supported operations.

The heatmap pass is ordinary autograd with a rule per operation. Relevance of a tensor
``t`` is ``t * g_t``, with ``g_t`` the modified gradient. ReLU-type activations multiply
the incoming gradient by ``f(z) / (z + eps * sign(z))`` (``a / (a + eps)`` for a ReLU),
which makes layers feeding them LRP-epsilon (LRP-0 elsewhere; ``eps = 0`` gives gradient
x input on ReLU networks). Smooth activations pass relevance unchanged (identity rule),
normalisations hold their statistics constant, products of two activations split
relevance half and half (AttnLRP's uniform rule, also inside attention). The first
conv/linear layer can use the Z^B rule instead (pixel bounds ``low``/``high``), and
convolutions and linear layers can use LRP-z+.

Calls are intercepted with a thread-local :class:`~torch.overrides.TorchFunctionMode`
that is active only while a :class:`LRPFlex` traces a forward pass. Modules,
functional calls, tensor methods, reused and in-place calls are all covered, and
the model is never modified: no hooks stay, no flag is changed.

Which rule applies to which operation is data: :class:`Rules`, a table from functions and
module types to rules. Users extend it for their own modules (``LRPFlex(model, rules=...)``),
e.g. with :class:`Identity` (an element-wise activation) or :class:`ExplainAs` (a gate whose
relevance goes to its value path).

Modules
-------
core
    The mechanism: the backward switch, the intercepted call, input dependence.
registry
    :class:`Rules`, the table of rules.
rules
    The rules, one module per family (ReLU-type/epsilon, activations, normalisation,
    attention, z+, Z^B with its first-block follower, rejected operations, generic rules
    for users' operations) and the built-in table.
tracing
    The traced forward pass: call interception, module outputs.
explainer
    :class:`LRPFlex`, :class:`Trace` and :func:`explain`, built on the above.
"""

from .core import Call, UnsupportedModelError
from .explainer import LRPFlex, Relevance, Target, Trace, explain, select_logits
from .registry import Rules
from .rules import BUILTIN as BUILTIN_RULES
from .rules.generic import ExplainAs, Identity, Unsupported
from .rules.zb import Bounds, FirstBlock, ZBRule, zb_relevance
from .tracing import record_outputs

__all__ = [
    "BUILTIN_RULES", "Bounds", "Call", "ExplainAs", "FirstBlock", "Identity", "LRPFlex", "Relevance", "Rules",
    "Target", "Trace", "Unsupported", "UnsupportedModelError", "ZBRule", "explain", "record_outputs",
    "select_logits", "zb_relevance",
]
