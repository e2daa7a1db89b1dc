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

Modules
-------
rules
    The ReLU-type rules and the Z^B rule of the first block; the switch between the
    relevance backward and the ordinary one.
activations, normalisation, attention, zplus
    The identity rule; normalisations with constant statistics; the uniform rule for
    products and attention; LRP-z+ on convolutions and linear layers.
first_block
    Follows the input through the first layer, for Z^B.
tracing
    The traced forward pass: call interception, module outputs.
explainer
    :class:`LRPFlex`, :class:`Trace` and :func:`explain`, built on the above.
"""

from .explainer import LRPFlex, Relevance, Target, Trace, explain, select_logits
from .rules import Bounds, FirstBlock, ZBRule, zb_relevance
from .tracing import UNSUPPORTED_MODULES, UnsupportedModelError, check_activations, record_outputs

__all__ = [
    "UNSUPPORTED_MODULES", "Bounds", "FirstBlock", "LRPFlex", "Relevance", "Target", "Trace",
    "UnsupportedModelError", "ZBRule", "check_activations", "explain", "record_outputs",
    "select_logits", "zb_relevance",
]
