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

Modules
-------
rules
    The rules: the modified activation backward and the Z^B rule of the first block.
tracing
    The traced forward pass: activation interception, first-block tracking, module outputs.
explainer
    :class:`LRPFlex`, :class:`Trace` and :func:`explain`, built on the two above.
"""

from .explainer import LRPFlex, Relevance, Target, Trace, explain, select_logits
from .rules import Bounds, FirstBlock, ZBRule, zb_relevance
from .tracing import UNSUPPORTED_MODULES, UnsupportedModelError, check_activations, record_outputs

__all__ = [
    "UNSUPPORTED_MODULES", "Bounds", "FirstBlock", "LRPFlex", "Relevance", "Target", "Trace",
    "UnsupportedModelError", "ZBRule", "check_activations", "explain", "record_outputs",
    "select_logits", "zb_relevance",
]
