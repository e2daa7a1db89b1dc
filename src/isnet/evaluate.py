"""Evaluating a trained classifier on named test sets: scores and background relevance.

``evaluate(checkpoint, {"biased": DIR, ...})`` returns, per test set, accuracy, macro-F1,
AUROC (binary: with a 95% DeLong interval) over the classes the set holds, the confusion
matrix (from :func:`isnet.metrics.classification_metrics`) and, when the set has masks, the
mean share of absolute LRP-Flex relevance (heatmap of the predicted class, eval mode) outside
the foreground mask; with ``audit``, also the background audit (:mod:`isnet.background_audit`).
``isnet eval`` calls it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .audit_stats import audit_table
from .background_audit import audit as audit_background
from .background_audit import check_auditable, dataset_tensors
from .checkpoints import classifier_input, explainer, load_classifier
from .data import MaskedImageFolder, make_transform
from .errors import UserError
from .lrp import LRPFlex
from .metrics import background_share, classification_metrics
from .objectives import get_objective
from .tables import text_table

__all__ = ["evaluate", "format_table", "predict_batch", "resolve_device"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch device for ``device`` (None / "auto": CUDA when available); a :class:`UserError` if unusable."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {device!r} is not a device: use auto, cpu, cuda, cuda:1, mps, ...") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"--device {device}: no CUDA GPU is available here; use --device cpu (or auto)")
        if dev.index is not None and dev.index >= count:
            raise UserError(f"--device {device}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device}: MPS is not available here; use --device cpu (or auto)")
    return dev


def _clean(value: Any) -> Any:
    """NaN -> None, recursively (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def predict_batch(model: nn.Module, lrp: LRPFlex | None, config: Mapping[str, Any], images: Tensor,
                  masks: Tensor | None, *, raw_input: bool = False) -> tuple[Tensor, Tensor | None]:
    """Logits of a trained classifier for one batch, and with ``lrp`` the heatmaps of its predictions.

    The classifier sees what it was trained to see (:func:`isnet.checkpoints.classifier_input`)
    unless ``raw_input``. Heatmaps: LRP-Flex of the predicted class, eval mode, no graph kept.
    """
    x = images if raw_input else classifier_input(images, masks, config)
    if lrp is None:
        with torch.no_grad():
            return model(x), None
    return lrp.explain_prediction(x)


def _predict(model: nn.Module, lrp: LRPFlex | None, config: Mapping[str, Any], loader: DataLoader,
             device: torch.device) -> tuple[Tensor, Tensor, float | None]:
    logits, labels, shares = [], [], []
    for x, masks, y in loader:
        masks = masks.to(device)
        out, heat = predict_batch(model, lrp, config, x.to(device), masks)
        if heat is not None:
            shares.append(background_share(heat, masks).cpu())
        logits.append(out.float().cpu())
        labels.append(torch.as_tensor(y))
    share = torch.cat(shares).double().mean().item() if shares else None
    return torch.cat(logits), torch.cat(labels), share


def evaluate(checkpoint: str | Path, tests: Mapping[str, str | Path], *, batch_size: int = 64, workers: int = 0,
             device: str | torch.device | None = None, relevance: bool = True,
             audit: bool = False) -> dict[str, dict[str, Any]]:
    """Scores of a trained classifier on each named test set.

    Parameters
    ----------
    checkpoint
        A run folder or checkpoint file (see :func:`isnet.checkpoints.load_classifier`).
    tests
        Name -> dataset root (``images/<class>/...``, optional ``masks/``). The training
        class list is used, so label indices match; a test set may lack some classes.
    batch_size, workers, device
        Loader and device options (device None / "auto": CUDA when available).
    relevance
        Compute the background-relevance share (test sets with masks only).
    audit
        Also audit the classifier's use of the background (:func:`isnet.background_audit.audit`, default
        settings; every test set needs masks and two classes): 4 more forward passes per image.

    Returns
    -------
    dict
        ``{name: {"accuracy", "macro_f1", "auroc", "auroc_classes", ["auroc_ci95" for two classes],
        "background_relevance" (None without masks), "confusion_matrix", "n", ["audit" with ``audit``]}}``;
        NaN becomes None. ``auroc`` is over the classes present in the set, named in ``auroc_classes``,
        and None (undefined) when it holds fewer than two.
    """
    if not tests:
        raise UserError("no test sets given (NAME=DIR)")
    if batch_size < 1 or workers < 0:
        raise UserError(f"need --batch-size >= 1 and --workers >= 0, got {batch_size} and {workers}")
    dev = resolve_device(device)
    model, config = load_classifier(checkpoint, map_location=dev)
    classes, image_size = config["classes"], config["image_size"]
    transform = make_transform(image_size, train=False)
    datasets = {name: MaskedImageFolder(root, transform=transform, masks=None, classes=classes,
                                        channels=config.get("in_channels", 3))
                for name, root in tests.items()}  # scanned first: errors before any work
    lrp = explainer(model, config)
    masked_input = get_objective(config["objective"]).masked_input
    for name, dataset in datasets.items():  # every test set is checked before the first is evaluated
        if len(dataset) == 0:
            raise UserError(f"test set {name} ({dataset.root}) holds no images")
        if audit:
            check_auditable(dataset.targets, has_masks=dataset.has_masks, what=f"test set {name} ({dataset.root})")
        if masked_input and not dataset.has_masks:
            raise UserError(f"objective {config['objective']!r} classifies background-masked images, but test set "
                            f"{name} ({dataset.root}) has no masks/ folder")
    results: dict[str, dict[str, Any]] = {}
    for name, dataset in datasets.items():
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
        use_lrp = relevance and dataset.has_masks
        logits, labels, share = _predict(model, lrp if use_lrp and not audit else None, config, loader, dev)
        scores = classification_metrics(logits, labels, len(classes))
        scores["auroc_classes"] = [classes[i] for i in scores["auroc_classes"]]
        if audit:  # the audit measures the heatmap share on its originals, so it is computed once
            scores["audit"] = audit_background(model, *dataset_tensors(dataset, batch_size=batch_size, workers=workers),
                                               lrp=lrp if use_lrp else None, batch_size=batch_size,
                                               model_input=lambda x, m: classifier_input(x, m, config))
            share = scores["audit"]["heatmap_background_share"]
        scores["background_relevance"] = share
        results[name] = _clean(scores)
    return results


def _auroc_note(name: str, result: Mapping[str, Any]) -> str | None:
    """A line saying which classes a test set's AUROC is over, when not all of the model's, or why it is undefined."""
    over, total = result["auroc_classes"], len(result["confusion_matrix"])
    listed = ", ".join(map(str, over))
    if result["auroc"] is None:
        return f"AUROC of {name}: undefined, its labels hold {len(over)} class(es) ({listed}); it needs two"
    if len(over) < total:
        return f"AUROC of {name}: one-vs-rest over the {len(over)} of {total} classes present ({listed})"
    return None


def format_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A plain-text table: one row per test set (AUROC interval for two classes), then a line for each
    test set whose AUROC is over only some of the classes, or undefined; then the audit's table, if any."""

    def num(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}"

    rows = []
    for name, r in results.items():
        ci = r.get("auroc_ci95")
        rows.append({"test set": name, "n": str(r["n"]), "accuracy": num(r["accuracy"]),
                     "macro-F1": num(r["macro_f1"]), "AUROC": "undefined" if r["auroc"] is None else num(r["auroc"]),
                     "bg share": num(r["background_relevance"]),
                     "AUROC 95% CI": f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci and None not in ci else "-"})
    table = text_table(rows, {"test set": 20, "n": 6, "accuracy": 9, "macro-F1": 9, "AUROC": 9, "bg share": 9})
    notes = [note for name, r in results.items() if (note := _auroc_note(name, r)) is not None]
    audited = {name: r["audit"] for name, r in results.items() if r.get("audit")}
    return "\n".join([table, *notes, *(["", "Background audit:", audit_table(audited)] if audited else [])])
