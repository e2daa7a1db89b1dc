"""The ISNet heatmap loss: background relevance minimised, optionally foreground relevance kept in range.

Heatmaps are (B, K, C, h, w): K explained quantities per image. Masks are
(B, 1 or C, H, W); what counts as foreground, at any resolution, is :mod:`isnet.masks`' rule.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .gradients import Combined, combine_gradients
from .masks import foreground as foreground_of
from .recipe import default

_GWRP_TAIL = 1e-9  # GWRP weights below this share of the first are skipped (exactness ~1e-9)


def _at_least_float32(t: Tensor) -> Tensor:
    """Half precision heatmaps are upcast; float64 stays float64."""
    return t if t.dtype == torch.float64 else t.float()


@contextlib.contextmanager
def float32_region(x: Tensor) -> Iterator[None]:
    """Autocast off on ``x``'s device, so losses run in float32 under mixed precision."""
    device_type = x.device.type if x.device.type in ("cuda", "cpu", "xpu", "mps", "hpu") else "cpu"
    with torch.autocast(device_type=device_type, enabled=False):
        yield


def gwrp(values: Tensor, d: float) -> Tensor:
    """Global weighted ranked pooling over the last axis.

    Sorted descending, the i-th value weighs ``d**i``; ``d = 0`` is max pooling,
    ``d = 1`` the mean. Only the values whose weight matters are sorted.
    """
    n = values.shape[-1]
    if d >= 1.0:
        return values.mean(-1)
    if d <= 0.0:
        return values.amax(-1)
    keep = min(n, max(1, math.ceil(math.log(_GWRP_TAIL) / math.log(d))))
    top = values.topk(keep, dim=-1, sorted=True).values if keep < n else values.sort(-1, descending=True).values
    # weights in float64: d**i of a float32-rounded d drifts by ~i * 6e-8 relative
    weights = (d ** torch.arange(keep, dtype=torch.float64, device=values.device)).to(values.dtype)
    total = (1.0 - d**n) / (1.0 - d)
    return (top * weights).sum(-1) / total


Bound = float | Sequence[float]


def _per_heatmap(value: Bound, k: int, like: Tensor) -> float | Tensor:
    """A float, or a sequence of G values repeated over K = G n heatmaps (heatmap k gets value k mod G)."""
    if isinstance(value, numbers.Real) or (isinstance(value, Tensor) and value.dim() == 0):
        return float(value)
    values = [float(v) for v in value]
    if not values or k % len(values):
        raise ValueError(f"{len(values)} C1/C2 values cannot be shared over {k} heatmaps per image")
    return torch.tensor(values * (k // len(values)), dtype=like.dtype, device=like.device)


def _foreground_penalty(total: Tensor, C1: Bound, C2: Bound, foreground: str) -> Tensor:
    """Keeps the foreground relevance ``total`` (B, K) inside [C1, C2] (per heatmap when sequences)."""
    C1, C2 = _per_heatmap(C1, total.shape[1], total), _per_heatmap(C2, total.shape[1], total)
    scaled = total / C1
    left = (scaled.clamp(max=1.0) - 1.0) ** 2
    if foreground == "floor":  # no penalty above C2
        return left
    right = (scaled.clamp(min=C2 / C1) - C2 / C1) ** 2
    if foreground == "hybrid":
        right = torch.where(total > C1 + C2, (total - (C1 + C2)).abs() + 1.0, right)
    elif foreground != "L2":
        raise ValueError(f"foreground must be 'L2', 'hybrid' or 'floor', got {foreground!r}")
    return left + right


def _single_heatmap_loss(heatmaps: Tensor, masks: Tensor, *, d: float, E: float, A: float, B: float,
                         C1: Bound, C2: Bound, foreground: str, norm: str) -> Tensor:
    """Per-sample loss (B,) of heatmaps (B, K, C, h, w)."""
    if heatmaps.dim() != 5:
        raise ValueError(f"heatmaps must be (B, K, C, h, w), got shape {tuple(heatmaps.shape)}")
    fg = foreground_of(masks, heatmaps.shape[-2:], dtype=heatmaps.dtype).unsqueeze(1)  # (B, 1, 1|C, h, w)
    fg_count = fg.expand_as(heatmaps).sum((2, 3, 4)).clamp(min=1.0)  # an empty mask: all background
    absolute = heatmaps.abs()
    fg_total = (absolute * fg).sum((2, 3, 4))  # (B, K)
    if norm == "absRoIMean":
        normalised = absolute / (fg_total / fg_count + 1e-10)[..., None, None, None]
    elif norm == "RoIMean":
        signed_mean = (heatmaps * fg).sum((2, 3, 4)) / fg_count
        normalised = (heatmaps / (signed_mean + 1e-10)[..., None, None, None]).abs()
    else:
        raise ValueError(f"norm must be 'absRoIMean' or 'RoIMean', got {norm!r}")
    background = (normalised * (1.0 - fg)).flatten(3)
    pooled = gwrp(background, d)  # (B, K, C)
    share = (pooled / (pooled + E)).clamp(max=1.0 - 1e-7)
    background_loss = -torch.log1p(-share).mean((1, 2))
    foreground_loss = _foreground_penalty(fg_total, C1, C2, foreground).mean(1)
    return A * background_loss + B * foreground_loss


def heatmap_loss(heatmaps: Tensor | Mapping[str, Tensor], masks: Tensor, *, d: float = default("d"),
                 E: float = default("E"), A: float = default("A"), B: float = default("B"), C1: Bound = 1.0,
                 C2: Bound = 25.0, foreground: str = default("foreground"), norm: str = default("norm"),
                 d_loss: float = default("d_loss")) -> Tensor:
    """ISNet heatmap loss, averaged over the batch.

    The defaults are ``isnet train``'s (:mod:`isnet.recipe`); the papers use ``d=0.9,
    foreground="L2"``.

    Parameters
    ----------
    heatmaps
        (B, K, C, h, w), or for LRP deep supervision a mapping of such maps per layer;
        the per-layer losses are then pooled with GWRP of decay ``d_loss``.
    masks
        (B, 1|C, H, W) foreground masks (:func:`isnet.masks.foreground`).
    d, E
        GWRP decay over background pixels and the background-term scale.
    A, B
        Weights of the background and foreground terms. The background term measures background
        relevance against the foreground's mean, so it does not depend on the heatmap's scale;
        the foreground term keeps that scale, and so the network's confidence, above ``C1`` and,
        except with ``foreground="floor"`` (the default), below ``C2``. ``B = 0`` leaves it out.
    C1, C2
        Range kept for the summed absolute foreground relevance: floats, or G values each, one
        per group of heatmaps (heatmap k gets value k mod G; the Dual ISNet's LRP-epsilon and
        LRP-z+ maps have their own ranges). The recipe calibrates them (:func:`calibrate`) on a
        plain classifier's heatmaps; the defaults 1 and 25 are placeholders.
    foreground
        ``"floor"`` (the lower side only: relevance below ``C1`` is penalised, no cap above),
        ``"L2"`` (quadratic on both sides) or ``"hybrid"`` (linear far above ``C1 + C2``).
    norm
        ``"absRoIMean"``: ``|H|`` over the foreground mean of ``|H|``; ``"RoIMean"``: ``|H / mean(H)|``.
    """
    options = dict(d=d, E=E, A=A, B=B, C1=C1, C2=C2, foreground=foreground, norm=norm)
    if isinstance(heatmaps, Tensor):
        return _single_heatmap_loss(_at_least_float32(heatmaps), masks, **options).mean()
    per_layer = torch.stack([_single_heatmap_loss(_at_least_float32(h), masks, **options).mean()
                             for h in heatmaps.values()])
    return gwrp(per_layer, d_loss)


@dataclass
class LossTerms:
    """The parts of the ISNet objective for one batch; ``total`` is what is minimised."""

    total: Tensor
    cross_entropy: Tensor
    heatmap: Tensor
    P: float

    def combined(self, parameters: Iterable[nn.Parameter], *, rule: str = default("heatmap_gradient"),
                 ratio: float = default("gradient_ratio"), measure: bool = False) -> Combined:
        """The scalar to differentiate for one step of ``parameters``: its gradient joins the two terms'
        gradients by ``rule`` (:func:`isnet.gradients.combine_gradients`; the default is ``isnet train``'s).
        ``terms.combined(model.parameters()).loss.backward()`` replaces ``terms.total.backward()``."""
        return combine_gradients(self.cross_entropy, self.heatmap, self.P, parameters, rule=rule, ratio=ratio,
                                 measure=measure)


class ISNetLoss(nn.Module):
    """``(1 - P) * cross_entropy + P * heatmap_loss``; options as :func:`heatmap_loss`.

    ``P`` defaults to ``isnet train``'s (:mod:`isnet.recipe`; the papers use 0.7).
    ``warmup`` (in [0, 1], passed per call) scales ``P``: a run can ramp the heatmap loss in
    (``isnet train``: linearly over its first ``p_warmup`` epochs), and the weight actually
    used is returned with the terms.
    """

    def __init__(self, P: float = default("P"), **heatmap_options) -> None:
        super().__init__()
        if not 0.0 <= P <= 1.0:
            raise ValueError(f"P must be in [0, 1], got {P}")
        self.P = P
        self.heatmap_options = heatmap_options

    def weight(self, warmup: float = 1.0) -> float:
        """The heatmap-loss weight at warm-up fraction ``warmup``."""
        if not 0.0 <= warmup <= 1.0:
            raise ValueError(f"warmup must be in [0, 1], got {warmup}")
        return self.P * warmup

    def forward(self, logits: Tensor, labels: Tensor, heatmaps: Tensor | Mapping[str, Tensor] | None,
                masks: Tensor | None, *, warmup: float = 1.0) -> LossTerms:
        ce = F.cross_entropy(logits.float(), labels)
        if heatmaps is None:
            return LossTerms(ce, ce, torch.zeros_like(ce), 0.0)
        hl = heatmap_loss(heatmaps, masks, **self.heatmap_options)
        p = self.weight(warmup)
        return LossTerms((1.0 - p) * ce + p * hl, ce, hl, p)


def calibrate(relevance_totals: Tensor) -> tuple[float, float]:
    """C1 and C2 from per-image total absolute relevance of a standard network.

    ``C1 = max(m / 5, m - 3 s)`` and ``C2 = min(25 C1, m + 3 s)`` with mean ``m`` and
    standard deviation ``s`` of the totals (``sum |H|`` per image).
    """
    totals = relevance_totals.detach().double().flatten()
    if totals.numel() < 2 or not torch.isfinite(totals).all():
        raise ValueError("calibration needs at least two finite relevance totals")
    mean, std = totals.mean().item(), totals.std().item()
    c1 = max(mean / 5.0, mean - 3.0 * std)
    c2 = min(25.0 * c1, mean + 3.0 * std)
    return c1, c2
