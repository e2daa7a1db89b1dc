"""The background audit of every benchmark run, and its columns in the results (``isnet bench bias`` / ``cxr``).

Each run's evaluation (:func:`isnet.bench.run._evaluate_run`) also audits its classifier with
:func:`isnet.audit` on the **biased** test set (the training correlation), at the run's training size,
with a fixed seed (:data:`AUDIT_SEED`) and :data:`AUDIT_RESAMPLES` bootstrap resamples, without the LRP
pass (the benchmark measures the heatmap shares itself). The run's record keeps, under ``audit``
(:func:`audit_run`): the follows-the-background rate, the flip rate under another class's background,
the accuracy on the background only, the share of all predictions that follow the donor's background
(flip rate x follows rate), their chance levels and the verdict's label. :func:`audit_summary` gives
their mean and sample sd over seeds per method (``results["audit"]``), :func:`audit_rows` the table.

Masked-input methods (``masked``, ``seg-classify``) are audited on the input they classify
(:func:`isnet.checkpoints.classifier_input`), as ``isnet eval --audit`` does: the pipeline is what is
judged. ``masked`` multiplies by the true mask, so no background reaches it and its flips are 0 by
construction; ``seg-classify`` masks with the segmenter's prediction on the changed image, so what its
segmenter lets through counts. Their ``@unmasked`` rows are not audited.

Runs stored before the audit existed have no ``audit`` entry: their cells stay empty.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..audit_stats import BACKGROUND, OTHER
from ..background_audit import audit
from ..checkpoints import classifier_input
from ..outputs import write_text
from ..tables import csv_number, csv_text, markdown_table, percent
from .interface import TestSet
from .paired import mean_std

__all__ = ["AUDIT_METRICS", "AUDIT_RESAMPLES", "AUDIT_SEED", "AUDIT_SET", "audit_markdown", "audit_note", "audit_rows",
           "audit_run", "audit_section", "audit_summary", "write_audit_csv"]

AUDIT_SET, AUDIT_SEED, AUDIT_RESAMPLES = "biased", 0, 200
AUDIT_METRICS = ("follows_background", "flip_rate", "background_only_accuracy", "follows_overall")
"""The audit's rates in a run's record, each a share in [0, 1] (``follows_background`` None without flips)."""

_TITLES = {"follows_background": "follows bg (%)", "flip_rate": "flips, other bg (%)",
           "background_only_accuracy": "acc bg only (%)", "follows_overall": "follow donor bg overall (%)"}


def audit_run(model: nn.Module, config: Mapping[str, Any], test: TestSet) -> dict[str, Any]:
    """A run's ``audit`` record entry: :func:`isnet.audit` of ``model`` on ``test`` (``images``, ``masks``,
    ``labels``, already at the run's training size) through the run's classifier input; ``skipped`` (a reason)
    instead of the rates when the test set holds fewer than two classes."""
    model.eval()
    entry: dict[str, Any] = {"test_set": AUDIT_SET, "n": int(len(test.labels)),
                             "settings": {"seed": AUDIT_SEED, "resamples": AUDIT_RESAMPLES}}
    if len(test.labels.unique()) < 2:
        return {**entry, "skipped": "fewer than two classes: no background of another class to swap in"}
    began = time.perf_counter()
    result = audit(model, test.images, test.masks, test.labels, seed=AUDIT_SEED, resamples=AUDIT_RESAMPLES,
                   model_input=lambda x, m: classifier_input(x, m, config))
    other, alone = result["conditions"][OTHER], result["conditions"][BACKGROUND]
    follows = other["follows_background"]
    return {**entry, "flip_rate": other["flip_rate"], "follows_background": follows,
            "follows_background_chance": other["follows_background_chance"],
            "background_only_accuracy": alone["accuracy"], "background_only_chance": alone["accuracy_chance"],
            "follows_overall": other["flip_rate"] * (follows or 0.0), "verdict": result["verdict"]["label"],
            "forward_passes_per_image": result["cost"]["forward_passes_per_image"],
            "time_s": time.perf_counter() - began}


def _verdicts(labels: list[str | None]) -> str:
    """The seeds' verdict labels: one label, or each label with its count of seeds; empty when none."""
    counts: dict[str, int] = {}
    for label in labels:
        if label is not None:
            counts[label] = counts.get(label, 0) + 1
    if len(counts) == 1 and len(labels) == 1:
        return next(iter(counts))
    return ", ".join(f"{label} ({k}/{len(labels)} seeds)" for label, k in counts.items())


def audit_summary(records: Mapping[str, list[dict]]) -> dict[str, Any]:
    """``results["audit"]``: the settings, then per method each rate's mean and sample sd over the audited seeds,
    ``verdicts`` (per seed, None where not audited), ``audited`` (seeds with an audit) and ``time_s`` (mean)."""

    methods: dict[str, dict[str, Any]] = {}
    for method, recs in records.items():
        audits = [r.get("audit") if isinstance(r.get("audit"), dict) else None for r in recs]
        audits = [a if a is not None and "skipped" not in a else None for a in audits]
        entry: dict[str, Any] = {}
        for metric in AUDIT_METRICS:
            entry[metric], entry[f"{metric}_std"] = mean_std([a.get(metric) if a else None for a in audits])
        entry["verdicts"] = [a.get("verdict") if a else None for a in audits]
        entry["audited"] = sum(a is not None for a in audits)
        entry["time_s"] = mean_std([a.get("time_s") if a else None for a in audits])[0]
        passes = {a.get("forward_passes_per_image") for a in audits if a}
        entry["forward_passes_per_image"] = passes.pop() if len(passes) == 1 else None
        methods[method] = entry
    return {"test_set": AUDIT_SET, "seed": AUDIT_SEED, "resamples": AUDIT_RESAMPLES, "methods": methods}


def _cell(entry: Mapping[str, Any], metric: str) -> str:
    return "" if entry.get(metric) is None else percent(entry[metric], entry.get(f"{metric}_std"))


def audit_rows(results: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per method of ``results["methods"]`` (``@unmasked`` rows left out): the audit's rates (mean ± sd
    over seeds) and verdicts; empty cells for runs stored before the audit (or results without one)."""
    audited = results.get("audit", {}).get("methods", {})
    rows = []
    for method in results["methods"]:
        if method not in results.get("train_time_s", {}):
            continue  # a masked-input method's raw-input row: not a classifier input, not audited
        entry = audited.get(method, {})
        row = {"method": method, **{title: _cell(entry, metric) for metric, title in _TITLES.items()}}
        row["verdict"] = _verdicts(entry.get("verdicts", []))
        rows.append(row)
    return rows


def audit_note(results: Mapping[str, Any]) -> str:
    """What the audit columns mean, what it costs, and how masked-input methods are audited."""
    summary = results.get("audit", {})
    methods = summary.get("methods", {})
    passes = {e.get("forward_passes_per_image") for e in methods.values()} - {None}
    times = [e["time_s"] for e in methods.values() if e.get("time_s") is not None]
    n = results.get("config", {}).get("bench", {}).get("n_test")
    cost = (f"{passes.pop() if len(passes) == 1 else 4} forward passes per image of the biased test set"
            + (f" ({n} images)" if n else "") + f" and {summary.get('resamples', AUDIT_RESAMPLES)} bootstrap "
            "resamples per run, no LRP pass"
            + (f"; {sum(times) / len(times):.1f} s per run on average" if times else ""))
    missing = [m for m, e in methods.items() if e.get("audited", 0) < len(e.get("verdicts", []))]
    return ("Background audit (isnet.audit) of each run on the biased test set, seed "
            f"{summary.get('seed', AUDIT_SEED)}, mean ± sd over seeds: follows bg, the share of the predictions "
            "changed by another class's background that went to the donor's class; flips, other bg, the share "
            "changed; acc bg only, accuracy with the object removed; follow donor bg overall, flips x follows bg, "
            "the share of all predictions that follow the donor's background; verdict per seed (docs/audit.md). "
            "Masked-input methods are audited on the input they classify: masked sees only the true foreground, so "
            "no background reaches it (0 flips by construction); seg-classify sees what its segmenter keeps of the "
            f"changed image. Cost: {cost}."
            + (f" Empty cells ({', '.join(missing)}): runs stored before the audit was added (train them again in "
               "a new --out to audit them), or skipped (the run's result.json says why)." if missing else ""))


def audit_markdown(results: Mapping[str, Any]) -> str:
    """The audit's section of ``results.md``: a heading, the table and :func:`audit_note`."""
    rows = audit_rows(results)
    if not rows:
        return ""
    return f"## Background audit (biased test set)\n\n{markdown_table(rows)}\n\n{audit_note(results)}\n"


def audit_section(results: Mapping[str, Any]) -> tuple[str, list]:
    """The audit's section of ``report.html``."""
    return "Background audit", [audit_note(results), audit_rows(results)]


def write_audit_csv(results: Mapping[str, Any], path: Path) -> None:
    """``audit.csv``: one row per audited method, each rate's mean and sd over seeds (shares in [0, 1]),
    the seeds audited and how many of them got each verdict (``verdict_counts``: ``label=n; ...``)."""
    header = ["method", "test_set", *[f"{m}{s}" for m in AUDIT_METRICS for s in ("", "_std")], "audited",
              "verdict_counts"]
    rows = []
    for method, entry in results.get("audit", {}).get("methods", {}).items():
        if not entry.get("audited"):
            continue
        counts = Counter(verdict for verdict in entry["verdicts"] if verdict is not None)
        values = [csv_number(entry[f"{m}{s}"]) for m in AUDIT_METRICS for s in ("", "_std")]
        rows.append([method, results["audit"]["test_set"], *values, entry["audited"],
                     "; ".join(f"{label}={n}" for label, n in sorted(counts.items()))])
    write_text(path, csv_text(header, rows))
