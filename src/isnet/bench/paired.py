"""Paired comparisons between benchmark methods, seed by seed.

Two methods trained with the same seed share their data order and initialisation, so the
per-seed difference of a metric removes much of the seed-to-seed spread. The comparison of a
method with its reference is the mean of these differences with a paired 95% t-interval
(mean ± t(0.975, n - 1) · s / sqrt(n), s the sample standard deviation of the n
differences); one seed gives a difference and no interval. Which pairs are compared is
:func:`isnet.bench.presets.comparison_pairs`: every method against the standard classifier
trained with the same swap setting, every ``X+swap`` against ``X``, and ``seg-classify``
against ``masked`` (predicted against true masks).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from .presets import comparison_pairs

__all__ = ["comparison_sentence", "mean_std", "paired_comparisons", "paired_differences", "paired_interval"]

_NAMES = {"accuracy": "{test} accuracy", "background_relevance": "background relevance ({test})",
          "abnormal_auroc": "{test} abnormal AUROC"}


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample sd of the given values (None and NaN left out); sd None with fewer than two."""
    xs = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not xs:
        return None, None
    mean = math.fsum(xs) / len(xs)
    return mean, (statistics.stdev(xs) if len(xs) > 1 else None)


def paired_interval(differences: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """The t-interval of the mean of paired differences; None with fewer than two."""
    from scipy.stats import t

    n = len(differences)
    if n < 2:
        return None
    mean = sum(differences) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half = float(t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def paired_differences(method: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]],
                       compared: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Per ``compared`` (test set, metric) pair: the per-seed differences of two runs' records (method minus
    reference), their mean and 95% interval.

    Records hold ``seed`` and ``results[test][metric]``; only seeds both ran, and values both have, are paired.
    """
    mine = {r["seed"]: r["results"] for r in method}
    theirs = {r["seed"]: r["results"] for r in reference}
    seeds = sorted(set(mine) & set(theirs))
    out = []
    for test, metric in compared:
        diffs = [mine[s][test][metric] - theirs[s][test][metric] for s in seeds
                 if mine[s][test][metric] is not None and theirs[s][test][metric] is not None]
        if not diffs:
            continue
        interval = paired_interval(diffs)
        out.append({"test_set": test, "metric": metric, "seeds": len(diffs), "differences": diffs,
                    "mean": sum(diffs) / len(diffs), "ci95": list(interval) if interval else None})
    return out


def paired_comparisons(records: Mapping[str, Sequence[Mapping[str, Any]]],
                       compared: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """:func:`paired_differences` of every pair of :func:`~isnet.bench.presets.comparison_pairs`, with its
    ``method`` and ``reference`` named."""
    return [{"method": method, "reference": reference, **entry}
            for method, reference in comparison_pairs(list(records))
            for entry in paired_differences(records[method], records[reference], compared)]


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def comparison_sentence(entries: Sequence[Mapping[str, Any]]) -> str:
    """One sentence for the compared metrics of one pair (differences in percentage points)."""
    first = entries[0]
    parts = []
    for e in entries:
        what = f"{_NAMES[e['metric']].format(test=e['test_set'])} {_points(e['mean'])} points"
        if e["ci95"] is not None:
            what += f" (95% CI {_points(e['ci95'][0])} to {_points(e['ci95'][1])})"
        parts.append(what)
    seeds = "one seed, no interval" if first["seeds"] == 1 else f"{first['seeds']} seeds, paired by seed"
    return f"{first['method']} vs {first['reference']}: {', '.join(parts)}; {seeds}."
