"""The audit's numbers: rates over images with seeded bootstrap intervals, their chance levels, and the verdict.

Every rate is a share of the audited images, with a 95% percentile-bootstrap interval: the images are
resampled with replacement ``resamples`` times (one seeded draw shared by every rate of an audit) and the
interval runs from the 2.5th to the 97.5th percentile of the resampled rate. At 0% or 100% it collapses
to the point.

Each rate is read against what chance gives:

* **accuracy on the background only**: the accuracy of predictions unrelated to the labels,
  ``sum_k p(predicted k) p(label k)``, the expectation under a random relabelling (Cohen's chance
  agreement). A model that always answers one class gets exactly that class's share.
* **follows-the-background** (the share of changed predictions that go to the donor's class): each
  change going to a random class other than the original prediction, ``1 / (K - 1)`` when the donor's
  class is not the original prediction and 0 when it is, averaged over the changes. With two classes
  every change of a correct prediction goes to the donor's class, so this chance is near 100% and the
  rate cannot exceed it; the accuracy on the background only decides there.

The verdict (:func:`verdict`) never uses the heatmap: it quotes its background share beside the
interventions, which a shortcut can hide from (docs/shortcut-study.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .tables import text_table

__all__ = ["BACKGROUND", "COLUMNS", "CONDITIONS", "FOREGROUND", "NO_RELIANCE", "ORIGINAL", "OTHER", "REGIONS",
           "RELIES", "SENSITIVE", "audit_table", "chance_accuracy", "cost_text", "summarise", "table_rows", "verdict"]

ORIGINAL, OTHER, BACKGROUND, FOREGROUND, REGIONS = (
    "original", "other_background", "background_only", "foreground_only", "regions_removed")
CONDITIONS = {ORIGINAL: "original", OTHER: "background from another class", BACKGROUND: "background only",
              FOREGROUND: "foreground only", REGIONS: "regions painted out"}
"""The audit's conditions (the originals and the counterfactuals) and their titles."""

COLUMNS = ("In %, with [95% interval]: accuracy on the originals, with the background of another class, on the "
           "background only and on the foreground only; flips: predictions changed by the background of another "
           "class; follows bg: the share of those that went to the donor's class; chance levels beside; flips regions: "
           "predictions changed by painting out the given regions; heatmap bg: the share of heatmap relevance on "
           "the background.")
"""What the columns of :func:`table_rows` mean."""

RELIES, SENSITIVE, NO_RELIANCE = (
    "relies on the background", "sensitive to the background", "no measurable reliance on the background")
"""The verdict's labels, strongest first."""


def _interval(samples: np.ndarray) -> list[float] | None:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return None
    low, high = np.percentile(finite, [2.5, 97.5])
    return [float(low), float(high)]


def _rate(hits: np.ndarray, draws: np.ndarray) -> tuple[float, list[float] | None]:
    """The share of ``hits`` and its bootstrap interval."""
    return float(hits.mean()), _interval(hits[draws].mean(axis=1))


def _share(hits: np.ndarray, among: np.ndarray, draws: np.ndarray) -> tuple[float | None, list[float] | None]:
    """The share of ``among`` that are ``hits`` and its interval (None when ``among`` is empty)."""
    if not among.any():
        return None, None
    with np.errstate(invalid="ignore", divide="ignore"):
        resampled = (hits & among)[draws].sum(axis=1) / among[draws].sum(axis=1)
    return float((hits & among).sum() / among.sum()), _interval(resampled)


def chance_accuracy(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """The accuracy of predictions unrelated to the labels: ``sum_k p(predicted k) p(label k)``."""
    p = np.bincount(predicted, minlength=num_classes) / predicted.size
    q = np.bincount(labels, minlength=num_classes) / labels.size
    return float(p @ q)


def summarise(predicted: Mapping[str, np.ndarray], labels: np.ndarray, donor_labels: np.ndarray, num_classes: int,
              *, resamples: int, seed: int) -> dict[str, dict[str, Any]]:
    """Per condition: ``accuracy``; beside the originals also ``flip_rate`` (predictions that changed); on the
    originals and the background only ``accuracy_chance``; with the background of another class
    ``follows_background`` (the changes that went to the donor's class) and ``follows_background_chance``. Each
    rate has ``<name>_ci95``.

    ``predicted`` maps each condition (:data:`CONDITIONS`, the originals included) to (N,) predicted classes;
    ``donor_labels`` (N,) is the class of each image's donor.
    """
    n = labels.size
    draws = np.random.default_rng(seed).integers(0, n, (resamples, n), dtype=np.int32)
    original = predicted[ORIGINAL]
    summary: dict[str, dict[str, Any]] = {}
    for name, pred in predicted.items():
        entry: dict[str, Any] = {}
        entry["accuracy"], entry["accuracy_ci95"] = _rate(pred == labels, draws)
        if name != ORIGINAL:
            flips = pred != original
            entry["flip_rate"], entry["flip_rate_ci95"] = _rate(flips, draws)
        if name in (ORIGINAL, BACKGROUND):
            entry["accuracy_chance"] = chance_accuracy(pred, labels, num_classes)
        if name == OTHER:
            entry["follows_background"], entry["follows_background_ci95"] = _share(pred == donor_labels, flips, draws)
            chance = np.where(donor_labels != original, 1.0 / (num_classes - 1), 0.0)
            entry["follows_background_chance"] = float(chance[flips].mean()) if flips.any() else None
        summary[name] = entry
    return summary


def _pct(value: float | None, unit: str = "%") -> str:
    return "-" if value is None else f"{100 * value:.1f}{unit}"


def _with_ci(entry: Mapping[str, Any] | None, key: str, unit: str = "%") -> str:
    """``entry[key]`` in percent with its 95% interval (``-`` when absent)."""
    if entry is None or entry.get(key) is None:
        return "-"
    ci = entry.get(f"{key}_ci95")
    return f"{100 * entry[key]:.1f}{unit}" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def _low(entry: Mapping[str, Any], key: str) -> float:
    ci = entry.get(f"{key}_ci95")
    return ci[0] if ci else float("nan")


def verdict(conditions: Mapping[str, Mapping[str, Any]], heatmap_share: float | None, margin: float) -> dict[str, str]:
    """The audit's verdict: ``label`` (:data:`RELIES`, :data:`SENSITIVE` or :data:`NO_RELIANCE`) and ``text``.

    "Clearly above" means the lower end of the 95% interval lies at least ``margin`` above. **Relies on the
    background**: the background alone predicts the class clearly above chance, or the background of another
    class changes clearly more than ``margin`` of the predictions and the changes follow the donor's class clearly
    above chance. **Sensitive to the background**: the background of another class changes clearly more than
    ``margin`` of the predictions, without either sign of its class information. Otherwise **no measurable
    reliance**. The heatmap's background share is quoted, never used.
    """
    other, alone = conditions[OTHER], conditions[BACKGROUND]
    changes = _low(other, "flip_rate") >= margin
    chance = other["follows_background_chance"]
    follows = changes and chance is not None and _low(other, "follows_background") >= chance + margin
    predicts = _low(alone, "accuracy") >= alone["accuracy_chance"] + margin
    label = RELIES if follows or predicts else SENSITIVE if changes else NO_RELIANCE
    swap = f"the background of another class changes {_with_ci(other, 'flip_rate')} of the predictions"
    if other["follows_background"] is not None:
        swap += f", {_with_ci(other, 'follows_background')} of them to the donor's class (chance {_pct(chance)})"
    only = (f"on the background alone (object removed) {_with_ci(alone, 'accuracy')} are right "
            f"(chance {_pct(alone['accuracy_chance'])})")
    points = f"{100 * margin:.0f} points"
    if label == RELIES:
        signs = [sign for sign, met in (("the changes follow the donor's class", follows),
                                        ("the background alone predicts the class", predicts)) if met]
        reading = f"{' and '.join(signs).capitalize()} clearly above chance (95% interval at least {points} above)."
    elif label == SENSITIVE:
        blind = chance is not None and chance > 1 - margin
        reading = ("The changes are not tied to the class the background came from"
                   + (f" (at a chance level of {_pct(chance)} the follows-the-background rate cannot show it)"
                      if blind else "") + ", and the background alone does not predict the class.")
    else:
        reading = (f"No rate clears its reference by {points} at 95% confidence (chance for the two class-specific "
                   "rates, zero for the changes).")
    fg = conditions[FOREGROUND]
    sentences = [f"{label[0].upper()}{label[1:]}: {swap}; {only}.", reading,
                 f"With a neutral background (foreground only) {_with_ci(fg, 'accuracy')} are right, "
                 f"{_with_ci(conditions[ORIGINAL], 'accuracy')} on the originals."]
    original = conditions[ORIGINAL]
    if _low(original, "accuracy") < original["accuracy_chance"] + margin:
        sentences.append(f"Caution: on the originals it is not clearly above chance ({_with_ci(original, 'accuracy')}, "
                         f"chance {_pct(original['accuracy_chance'])}), so there is little decision to attribute.")
    if REGIONS in conditions:
        sentences.append(f"Painting out the given regions changes {_with_ci(conditions[REGIONS], 'flip_rate')} "
                         f"of the predictions.")
    if heatmap_share is not None:
        sentences.append(f"Its heatmaps put {_pct(heatmap_share)} of the relevance on the background; the verdict "
                         "rests on the interventions, not on the heatmap.")
    return {"label": label, "text": " ".join(sentences)}


def table_rows(results: Mapping[str, Mapping[str, Any]]) -> list[dict[str, str]]:
    """One row per audited test set (percent, with 95% intervals), for :mod:`isnet.tables`; see :data:`COLUMNS`."""
    regions = any(REGIONS in r["conditions"] for r in results.values())
    rows = []
    for name, r in results.items():
        c = r["conditions"]
        other, alone = c[OTHER], c[BACKGROUND]
        row = {"test set": name, "n": str(r["n"]), "acc original": _with_ci(c[ORIGINAL], "accuracy", ""),
               "acc other bg": _with_ci(other, "accuracy", ""), "flips": _with_ci(other, "flip_rate", ""),
               "follows bg": _with_ci(other, "follows_background", ""),
               "follows chance": _pct(other["follows_background_chance"], ""),
               "acc bg only": _with_ci(alone, "accuracy", ""), "bg only chance": _pct(alone["accuracy_chance"], ""),
               "acc fg only": _with_ci(c[FOREGROUND], "accuracy", "")}
        if regions:
            row["flips regions"] = _with_ci(c.get(REGIONS), "flip_rate", "")
        row |= {"heatmap bg": _pct(r["heatmap_background_share"], ""), "verdict": r["verdict"]["label"]}
        rows.append(row)
    return rows


def cost_text(result: Mapping[str, Any]) -> str:
    """The audit's cost per image, in words."""
    cost = result["cost"]
    forward = cost["forward_passes_per_image"]
    text = f"{forward} forward passes per image (the original and {forward - 1} counterfactuals)"
    return text + (" and 1 LRP-Flex pass for the heatmap share" if cost["heatmap_passes_per_image"] else "")


def audit_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A plain-text table of the audited test sets (percent, 95% intervals), each verdict and the cost."""
    lines = [text_table(table_rows(results)), COLUMNS, ""]
    lines += [f"{name}: {r['verdict']['text']}" for name, r in results.items()]
    lines += [f"cost: {text}" for text in dict.fromkeys(cost_text(r) for r in results.values())]
    return "\n".join(lines)
