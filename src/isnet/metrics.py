"""Evaluation metrics: classification scores with a DeLong AUROC interval, and relevance shares.

Classification scores come from :mod:`torchmetrics.functional`; this module adds the AUROC
over the classes a test set holds, DeLong's confidence interval for a binary AUROC, and the
share of absolute LRP relevance that falls in (or outside) an image region, as a function and
as a DDP-ready :class:`torchmetrics.Metric`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import norm, rankdata
from torch import Tensor
from torchmetrics import Metric

from .masks import background, foreground
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
)

__all__ = [
    "BackgroundRelevance",
    "background_share",
    "classification_metrics",
    "delong_auroc_ci",
    "present_class_auroc",
    "relevance_share",
]


def classification_metrics(logits: Tensor, labels: Tensor, num_classes: int) -> dict:
    """Accuracy, macro F1, AUROC and confusion matrix of a classifier's outputs.

    The AUROC is computed over the classes present in ``labels`` (a test set may lack some of
    the model's classes): for K == 2 the binary AUROC of class 1, for K > 2 the mean of the
    one-vs-rest AUROCs of the present classes, each scored by its softmax probability. With
    fewer than two classes present it is undefined (None).

    Parameters
    ----------
    logits : Tensor
        (N, K) scores (logits or probabilities); softmax is applied in float64.
    labels : Tensor
        (N,) integer class indices in [0, K).
    num_classes : int
        K, at least 2.

    Returns
    -------
    dict
        JSON-serialisable: ``accuracy`` (micro), ``macro_f1``, ``auroc`` (float, or None when
        undefined), ``auroc_classes`` (the sorted class indices it was computed over: those
        present in ``labels``), ``confusion_matrix`` (rows = true class, columns = predicted),
        ``n``; for K == 2 also ``auroc_ci95`` = [low, high] from DeLong's method (None when
        the AUROC is undefined).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise ValueError(f"logits must have shape (N, {num_classes}), got {tuple(logits.shape)}")
    probs = torch.softmax(logits.detach().double().cpu(), dim=1)
    target = labels.detach().long().cpu()
    if target.numel() and not 0 <= int(target.min()) <= int(target.max()) < num_classes:
        raise ValueError(f"labels must be class indices in [0, {num_classes}), got {int(target.min())} to "
                         f"{int(target.max())}")
    present = target.unique().tolist()
    result: dict = {
        "accuracy": multiclass_accuracy(probs, target, num_classes, average="micro").item(),
        "macro_f1": multiclass_f1_score(probs, target, num_classes, average="macro").item(),
        "auroc": present_class_auroc(probs, target) if len(present) >= 2 else None,
        "auroc_classes": present,
    }
    if num_classes == 2:
        result["auroc_ci95"] = None
        if result["auroc"] is not None:
            _, low, high = delong_auroc_ci(probs[:, 1], target, alpha=0.95)
            result["auroc_ci95"] = [low, high]
    result["confusion_matrix"] = multiclass_confusion_matrix(probs, target, num_classes).tolist()
    result["n"] = int(target.numel())
    return result


def present_class_auroc(probs: Tensor, labels: Tensor) -> float:
    """AUROC over the classes present in ``labels`` (at least two; see :func:`classification_metrics`).

    Parameters
    ----------
    probs : Tensor
        (N, K) class probabilities.
    labels : Tensor
        (N,) integer class indices.

    Returns
    -------
    float
        K == 2: the binary AUROC of class 1; K > 2: the macro one-vs-rest AUROC over the
        present classes (absent classes have no positives, so no AUROC, and are left out).
        Exact in float64 (the Mann-Whitney statistic of :func:`delong_auroc_ci`).
    """
    present = labels.unique()
    if present.numel() < 2:
        raise ValueError(f"AUROC needs at least two classes in the labels, got {present.tolist()}")
    if probs.shape[1] == 2:
        return delong_auroc_ci(probs[:, 1], labels)[0]
    return float(np.mean([delong_auroc_ci(probs[:, c], labels == c)[0] for c in present.tolist()]))


def delong_auroc_ci(
    scores: np.ndarray | Tensor, labels: np.ndarray | Tensor, alpha: float = 0.95
) -> tuple[float, float, float]:
    """AUROC with DeLong's normal-approximation confidence interval.

    The structural components (placement values) are obtained from midranks in O(n log n):
    with ``m`` positives and ``n`` negatives, the component of positive ``i`` is
    ``(rank among all - rank among positives) / n`` and that of negative ``j`` is
    ``1 - (rank among all - rank among negatives) / m``. Ties count one half.

    Parameters
    ----------
    scores : array or Tensor
        (N,) scores, higher meaning more likely positive.
    labels : array or Tensor
        (N,) binary labels (1 = positive, 0 = negative).
    alpha : float
        Coverage of the interval, in (0, 1).

    Returns
    -------
    tuple of float
        ``(auc, low, high)``; the interval is clipped to [0, 1]. A class with a single sample
        contributes zero variance (its sample variance is undefined).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    s = np.asarray(scores.detach().cpu() if isinstance(scores, Tensor) else scores, dtype=np.float64)
    y = np.asarray(labels.detach().cpu() if isinstance(labels, Tensor) else labels).ravel()
    s = s.ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape[0]} vs {y.shape[0]}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be binary (0 or 1)")
    positive, negative = s[y == 1], s[y == 0]
    m, n = positive.size, negative.size
    if m == 0 or n == 0:
        raise ValueError("AUROC needs at least one positive and one negative sample")
    ranks_all = rankdata(np.concatenate([positive, negative]))
    v10 = (ranks_all[:m] - rankdata(positive)) / n
    v01 = 1.0 - (ranks_all[m:] - rankdata(negative)) / m
    auc = float(v10.mean())
    variance = (v10.var(ddof=1) / m if m > 1 else 0.0) + (v01.var(ddof=1) / n if n > 1 else 0.0)
    half_width = float(norm.ppf(0.5 + alpha / 2.0)) * math.sqrt(variance)
    return auc, max(0.0, auc - half_width), min(1.0, auc + half_width)


def relevance_share(relevance: Tensor, region: Tensor) -> Tensor:
    """Per sample, the share of absolute relevance that falls inside ``region``.

    Parameters
    ----------
    relevance : Tensor
        (B, C, H, W) heatmaps, or (B, K, C, H, W) with several heatmaps per sample; absolute
        values are summed over K and C (in at least float32).
    region : Tensor
        (B, 1 or C, H', W') masks, read with :func:`isnet.masks.foreground` (channels merged
        with "any"): a heatmap cell belongs to the region when any mask pixel it covers does.

    Returns
    -------
    Tensor
        (B,) shares in [0, 1]; a sample whose relevance is all zero gets 0.
    """
    if relevance.ndim not in (4, 5):
        raise ValueError(
            f"relevance must have shape (B, C, H, W) or (B, K, C, H, W), got {tuple(relevance.shape)}"
        )
    if region.shape[0] != relevance.shape[0]:
        raise ValueError(f"batch sizes differ: relevance {relevance.shape[0]}, region {region.shape[0]}")
    dtype = torch.promote_types(relevance.dtype, torch.float32)
    absolute = relevance.detach().to(dtype).abs().flatten(1, relevance.ndim - 3).sum(dim=1)
    inside = foreground(region.to(absolute.device), absolute.shape[-2:], merge_channels=True, dtype=dtype)[:, 0]
    total = absolute.flatten(1).sum(dim=1)
    part = (absolute * inside).flatten(1).sum(dim=1)
    return torch.where(total > 0, part / total.clamp_min(torch.finfo(dtype).tiny), 0.0)


def background_share(relevance: Tensor, masks: Tensor) -> Tensor:
    """Per sample, the share of absolute relevance outside the foreground mask.

    Parameters
    ----------
    relevance : Tensor
        (B, C, H, W) or (B, K, C, H, W) heatmaps; absolute values summed over K and C.
    masks : Tensor
        (B, 1 or C, H', W') foreground masks, read with :func:`isnet.masks.foreground`.

    Returns
    -------
    Tensor
        (B,) shares in [0, 1]; a sample whose relevance is all zero gets 0.
    """
    return relevance_share(relevance, background(masks, relevance.shape[-2:], merge_channels=True))


class BackgroundRelevance(Metric):
    """Mean over samples of :func:`background_share`, accumulated over batches.

    States are the sum of per-sample shares and the sample count, both reduced by summation,
    so the value is exact under distributed data parallel. ``compute`` before any update gives NaN.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    share_sum: Tensor
    count: Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("share_sum", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, relevance: Tensor, masks: Tensor) -> None:
        """Add the background shares of one batch of heatmaps and foreground masks."""
        shares = background_share(relevance, masks)
        self.share_sum += shares.sum().to(self.share_sum)
        self.count += shares.numel()

    def compute(self) -> Tensor:
        """Mean background share of every sample seen so far."""
        return self.share_sum / self.count
