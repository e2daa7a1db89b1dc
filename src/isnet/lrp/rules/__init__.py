"""The LRP rules, one module per family, and :data:`BUILTIN`, the table that maps operations to them.

epsilon
    ReLU-type activations (the factor that makes the layers feeding them LRP-epsilon).
activations
    Other element-wise activations: the identity rule.
normalisation
    LayerNorm, GroupNorm, RMSNorm, ``F.normalize``, batch norm: statistics held constant.
attention
    Products of input-dependent tensors, GLU, attention: the uniform rule.
zplus
    LRP-z+ on convolutions and linear layers, when an explainer asks for it.
zb
    The Z^B rule of the first block, and the follower that finds that block.
rejected
    Non-linear arithmetic and modules without a rule.
generic
    Rules for any module or function, for users' own operations.

Every built-in rule is an entry of :data:`BUILTIN`; a user's :class:`~isnet.lrp.registry.Rules`
extends it, replacing an entry where both name the same operation.
"""

from ..registry import Rules
from . import activations, attention, epsilon, normalisation, rejected, zplus

BUILTIN = Rules({**epsilon.RULES, **activations.RULES, **normalisation.RULES, **attention.RULES, **zplus.RULES,
                 **rejected.RULES})
