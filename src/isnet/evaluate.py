"""Evaluating a trained classifier on named test sets: scores and background relevance.

``evaluate(checkpoint, {"biased": DIR, ...})`` returns, per test set, accuracy, macro-F1,
AUROC (binary: with a 95% DeLong interval), the confusion matrix (from
:func:`isnet.metrics.classification_metrics`) and, when the set has masks, the mean share of
absolute LRP-Flex relevance (heatmap of the predicted class, eval mode) outside the
foreground mask. ``isnet eval`` calls it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from .data import MaskedImageFolder, make_transform
from .lrp import LRPFlex
from .metrics import background_share, classification_metrics

__all__ = ["evaluate", "format_table", "write_json"]


def _has_masks(root: Path) -> bool:
    return (Path(root) / "masks").is_dir()


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _clean(value: Any) -> Any:
    """NaN -> None, recursively (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def _predict(model, lrp: LRPFlex | None, loader: DataLoader, device: torch.device, variant: str):
    from .train import classifier_input

    logits, labels, shares = [], [], []
    for x, masks, y in loader:
        x = classifier_input(x.to(device), masks.to(device), variant)
        if lrp is None:
            with torch.no_grad():
                out = model(x)
        else:
            # one forward serves the logits and the heatmap; not under no_grad (LRP needs autograd
            # for the explained quantity), and no graph is kept (create_graph=False)
            trace = lrp.trace(x)
            out = trace.output.detach()
            heat = trace.heatmap(out.argmax(1)).detach()
            shares.append(background_share(heat, masks.to(device)).cpu())
        logits.append(out.float().cpu())
        labels.append(torch.as_tensor(y))
    share = torch.cat(shares).double().mean().item() if shares else None
    return torch.cat(logits), torch.cat(labels), share


def evaluate(checkpoint: str | Path, tests: Mapping[str, str | Path], *, batch_size: int = 64, workers: int = 0,
             device: str | torch.device | None = None, relevance: bool = True) -> dict[str, dict[str, Any]]:
    """Scores of a trained classifier on each named test set.

    Parameters
    ----------
    checkpoint
        A run folder or checkpoint file (see :func:`isnet.train.load_classifier`).
    tests
        Name -> dataset root (``images/<class>/...``, optional ``masks/``). The training
        class list is used, so label indices match; a test set may lack some classes.
    batch_size, workers, device
        Loader and device options (device None / "auto": CUDA when available).
    relevance
        Compute the background-relevance share (test sets with masks only).

    Returns
    -------
    dict
        ``{name: {"accuracy", "macro_f1", "auroc", ["auroc_ci95" for two classes],
        "background_relevance" (None without masks), "confusion_matrix", "n"}}``; NaN becomes None.
    """
    from .train import load_classifier, needs_masked_input

    if not tests:
        raise ValueError("no test sets given (NAME=DIR)")
    dev = _resolve_device(device)
    model, config = load_classifier(checkpoint, map_location=dev)
    classes, image_size = config["classes"], config["image_size"]
    transform = make_transform(image_size, train=False)
    datasets = {name: MaskedImageFolder(root, transform=transform, masks=_has_masks(root), classes=classes)
                for name, root in tests.items()}  # scanned first: errors before any work
    lrp = LRPFlex(model, epsilon=config.get("epsilon", 0.01), zb=config.get("zb", True))
    results: dict[str, dict[str, Any]] = {}
    for name, dataset in datasets.items():
        if len(dataset) == 0:
            raise ValueError(f"test set {name} ({dataset.root}) holds no images")
        variant = config.get("variant", "standard")
        if needs_masked_input(variant) and not dataset.has_masks:
            raise ValueError(f"variant {variant!r} classifies background-masked images, but test set {name} "
                             f"({dataset.root}) has no masks/ folder")
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
        use_lrp = relevance and dataset.has_masks
        logits, labels, share = _predict(model, lrp if use_lrp else None, loader, dev, variant)
        scores = classification_metrics(logits, labels, len(classes))
        scores["background_relevance"] = share
        results[name] = _clean(scores)
    return results


def format_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A plain-text table: one row per test set."""

    def num(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}"

    header = f"{'test set':<20} {'n':>6} {'accuracy':>9} {'macro-F1':>9} {'AUROC':>9} {'bg share':>9}"
    rows = [header, "-" * len(header)]
    for name, r in results.items():
        row = (f"{name:<20} {r['n']:>6} {num(r['accuracy']):>9} {num(r['macro_f1']):>9} {num(r['auroc']):>9} "
               f"{num(r['background_relevance']):>9}")
        if r.get("auroc_ci95") and None not in r["auroc_ci95"]:
            low, high = r["auroc_ci95"]
            row += f"  AUROC 95% CI [{low:.4f}, {high:.4f}]"
        rows.append(row)
    return "\n".join(rows)


def write_json(results: Mapping[str, Any], path: str | Path) -> Path:
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    return path
