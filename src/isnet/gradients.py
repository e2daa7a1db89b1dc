"""How the gradients of the cross-entropy and of the heatmap loss are combined in one step.

The ISNet objective is ``(1 - P) CE + P HL``. Summed as they are, the heatmap loss's gradient
can dominate: its value is easy to lower by moving relevance around, and when its gradient
points against the cross-entropy's, a step that keeps relevance off the background undoes
classification progress. The combination rules, applied to the parameter gradients ``g_ce``
and ``g_hl`` of the two terms:

=========== ============================================================================
rule        gradient of one step
=========== ============================================================================
sum         ``(1 - P) g_ce + P g_hl``: the plain sum (the papers)
project     ``g_hl`` loses its component along ``g_ce`` when the two conflict
            (negative dot product), so the heatmap term cannot raise the cross-entropy
            to first order; then summed as above
balance     ``g_hl`` scaled down to at most ``ratio * |g_ce|`` in norm; then summed
guard       both: ``g_hl`` projected as in ``project``, then scaled as in ``balance``. To first
            order the step lowers the cross-entropy at least as fast as ``(1 - P) g_ce``
            alone would, and the heatmap term never outweighs it
=========== ============================================================================

Every rule but ``sum`` takes the two gradients separately (one more backward pass through
the classifier) and returns a surrogate scalar whose gradient is the combination, so the
training loop, gradient clipping and DDP's gradient averaging see an ordinary backward.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .config import GRADIENT_RULES
from .recipe import default

__all__ = ["GRADIENT_RULES", "Combined", "combine_gradients"]


@dataclass
class Combined:
    """A step's objective: ``loss`` is what to differentiate; ``stats`` are the gradient
    measurements (``grad_ce``, ``grad_heatmap``: norms; ``grad_cos``: their cosine; ``grad_scale``:
    the factor the heatmap gradient got), empty when the gradients were not taken apart."""

    loss: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """The dot product of two gradient lists, accumulated in float64 without float64 copies of them."""
    return sum(torch.sum(x * y, dtype=torch.float64) for x, y in zip(a, b))


def combine_gradients(ce: Tensor, heatmap: Tensor, P: float, parameters: Iterable[nn.Parameter], *,
                      rule: str = default("heatmap_gradient"), ratio: float = default("gradient_ratio"),
                      measure: bool = False) -> Combined:
    """The objective of one step whose gradient combines ``ce``'s and ``heatmap``'s by ``rule``.

    Parameters
    ----------
    ce, heatmap
        The two scalar losses, in the autograd graph of ``parameters``.
    P
        Weight of the heatmap loss in this step (after any warm-up).
    parameters
        The parameters the step updates (those with ``requires_grad``).
    rule
        ``"sum"``, ``"project"``, ``"balance"`` or ``"guard"`` (module docstring); the default is
        ``isnet train``'s.
    ratio
        ``balance`` and ``guard``: the largest heatmap-gradient norm, as a multiple of the
        cross-entropy's.
    measure
        With ``"sum"``: take the gradients apart anyway, to report their norms and cosine.
    """
    if rule not in GRADIENT_RULES:
        raise ValueError(f"rule must be one of {GRADIENT_RULES}, got {rule!r}")
    if not ratio > 0:
        raise ValueError(f"ratio must be > 0, got {ratio}")
    total = (1.0 - P) * ce + P * heatmap
    if (rule == "sum" and not measure) or P == 0.0 or not heatmap.requires_grad:
        return Combined(total)
    params = [p for p in parameters if p.requires_grad]
    g_ce = torch.autograd.grad(ce, params, retain_graph=True, allow_unused=True)
    g_hl = torch.autograd.grad(heatmap, params, retain_graph=False, allow_unused=True)
    g_ce = [torch.zeros_like(p) if g is None else g for p, g in zip(params, g_ce)]
    g_hl = [torch.zeros_like(p) if g is None else g for p, g in zip(params, g_hl)]
    ce_sq, hl_sq, dot = _dot(g_ce, g_ce), _dot(g_hl, g_hl), _dot(g_ce, g_hl)
    ce_norm, hl_norm = ce_sq.sqrt(), hl_sq.sqrt()
    # on the device, without a host sync: the multiple of g_ce added to the heatmap gradient, and its scale
    zero, one = torch.zeros_like(dot), torch.ones_like(dot)
    conflict = (dot < 0) & (ce_sq > 0)
    along = torch.where(conflict, -dot / ce_sq.clamp(min=1e-300), zero) if rule in ("project", "guard") else zero
    # the norm of g_hl + along * g_ce, the heatmap gradient after any projection
    kept_norm = (hl_sq - along * along * ce_sq).clamp(min=0).sqrt() if rule == "guard" else hl_norm
    scale = (torch.where(kept_norm > ratio * ce_norm, ratio * ce_norm / kept_norm.clamp(min=1e-300), one)
             if rule in ("balance", "guard") else one)
    combined = [(1.0 - P + P * (scale * along).to(gc.dtype)) * gc + (P * scale.to(gh.dtype)) * gh
                for gc, gh in zip(g_ce, g_hl)]
    surrogate = sum((p * g.detach()).sum() for p, g in zip(params, combined))
    stats = {"grad_ce": ce_norm.float(), "grad_heatmap": hl_norm.float(),
             "grad_cos": (dot / (ce_norm * hl_norm).clamp(min=1e-30)).float(), "grad_scale": scale.float()}
    return Combined(surrogate, stats)
