"""Grid modes of the BG-Digits benchmark: a hyper-parameter sweep, a swap dose and mask quality.

Each mode is a list of named runs (a benchmark method with some options changed) trained by the
resumable grid (:mod:`isnet.bench.grid`) on the benchmark's data, sizes and seeds, and evaluated
like the main grid (:mod:`isnet.bench.digits.benchmark`); an interrupted mode continues where it stopped.

* ``--sweep`` (:func:`run_sweep`): every value of :data:`~isnet.bench.digits.presets.SWEEP` for each
  method, without and with the swap. The value *selected* for a method is the one with the best
  accuracy on the biased validation split (what a practitioner without unbiased data would pick,
  last epoch, mean over seeds; among equals, the value the method uses now); the *oracle* pick
  is the best on the unbiased test set, an upper bound that peeks at the test data. Writes ``sweep.json`` and ``sweep.md``.
* ``--swap-dose`` (:func:`run_swap_dose`): each method at every swap probability of
  :data:`~isnet.bench.digits.presets.SWAP_PROBABILITIES`, compared seed by seed with ``standard`` at the
  same probability. Writes ``swap_dose.json``, ``swap_dose.md`` and ``figures/swap_dose.png``
  (deceiving and unbiased accuracy against the probability).
* ``--mask-quality`` (:func:`run_mask_quality`): each method trained with degraded training
  masks (:func:`isnet.data.digits.mask_quality.degrade_masks`; validation and test masks stay exact),
  compared seed by seed with the same method trained with exact masks. Writes
  ``mask_quality.json`` and ``mask_quality.md``.

With several seeds, tables give mean ± sd and comparisons a paired 95% t-interval
(:mod:`isnet.bench.paired`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from ...checkpoints import write_json
from ...config import TrainConfig
from ...figures import save_figure
from ...locks import holding_lock
from ...outputs import write_text
from ...tables import markdown_table, percent
from ..grid import Log, clock, console_log, run_grid
from ..paired import comparison_sentence, mean_std, paired_differences
from ..presets import METHODS, RELATIVE_COST, SEG_CLASSIFY, SWAP
from ..report import aggregate, swap_label
from ..run import claim_outputs, make_grid, measured_lrp
from .benchmark import BG_DIGITS, BiasTestSet
from .presets import (
    COMPARED, MASK_QUALITIES, MASK_QUALITY_METHODS, METRICS, OCCLUDED, SWAP_DOSE_METHODS, SWAP_PROBABILITIES, SWEEP,
    TEST_SETS, BiasBenchConfig,
)

__all__ = ["run_mask_quality", "run_swap_dose", "run_sweep"]

_log = console_log(BG_DIGITS.label)
Runs = dict[str, dict[str, Any]]
Records = dict[str, list[dict[str, Any]]]


def _check(methods: Sequence[str], allowed: Sequence[str], mode: str) -> list[str]:
    unknown = [m for m in methods if m not in allowed]
    if unknown or not methods:
        raise ValueError(f"{mode}: unknown or no methods {unknown}; choose from {list(allowed)}")
    return list(methods)


def _setup(cfg: BiasBenchConfig, out: str | Path, used: Sequence[str], log: Log
           ) -> tuple[Path, dict[str, Path], dict[str, BiasTestSet], float]:
    """Validate ``cfg`` for the methods whose options the runs use, check and claim ``out``'s outputs
    (:func:`isnet.bench.run.claim_outputs`); BG-Digits on disk and the test sets."""
    dataclasses.replace(cfg, methods=list(used)).validate()
    out = Path(out).expanduser()
    claim_outputs(out)
    if cfg.threads and cfg.jobs == 1:
        torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    data = BG_DIGITS.prepare_data(out / "data", cfg)
    log(f"{BG_DIGITS.ready(cfg)} in {out / 'data'}", start)
    return out, data, BG_DIGITS.make_test_sets(cfg), start


def _train(cfg: BiasBenchConfig, out: Path, folder: str, runs: Runs, data: dict[str, Path],
           tests: dict[str, BiasTestSet], start: float, log: Log,
           method_data: Mapping[str, Mapping[str, Path]] | None = None) -> tuple[dict[str, dict[str, Any]], Records]:
    """Train and evaluate ``runs`` into ``out/folder``.

    Returns per run its val accuracy, test accuracies and background relevance (means over seeds, each
    with its ``_std``), and the per-seed records.
    """
    cost = {name: RELATIVE_COST.get(name.partition(":")[0], 1) for name in runs}
    log(f"{len(runs)} run(s) x {cfg.seeds} seed(s) into {out / folder}", start)
    grid = make_grid(BG_DIGITS, cfg, out / folder, runs, data, tests, cost=cost, method_data=method_data)
    records = run_grid(grid, start, log)
    aggregated, train_time, _ = aggregate(records, METRICS)
    summary = {}
    for name, recs in records.items():
        sets = aggregated[name]
        val_mean, val_std = mean_std([r.get("val_accuracy") for r in recs])
        tested = [test for test in (*TEST_SETS, OCCLUDED) if test in sets]
        summary[name] = {
            "val_accuracy": val_mean, "val_accuracy_std": val_std,
            **{test: sets[test]["accuracy"] for test in tested},
            **{f"{test}_std": sets[test]["accuracy_std"] for test in tested},
            "background_relevance": sets["deceiving"]["background_relevance"],
            "background_relevance_std": sets["deceiving"]["background_relevance_std"],
            "seeds": len(recs), "train_time_s": train_time[name],
        }
    return summary, records


def _row(summary: Mapping[str, Any]) -> dict[str, str]:
    """Table cells of one run: means, with ± sd over seeds when there are several."""
    def cell(key: str) -> str:
        return percent(summary.get(key), summary.get(f"{key}_std") if summary["seeds"] > 1 else None)

    return {"val acc (%)": cell("val_accuracy"), **{f"{test} (%)": cell(test) for test in TEST_SETS},
            "bg rel. deceiving (%)": cell("background_relevance")}


def _compare(records: Records, pairs: Sequence[tuple[str, str]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Paired differences of each (run, reference run) pair, and one sentence per pair."""
    entries, sentences = [], []
    for method, reference in pairs:
        found = [{"method": method, "reference": reference, **e}
                 for e in paired_differences(records[method], records[reference], COMPARED)]
        if found:
            entries += found
            sentences.append(comparison_sentence(found))
    return entries, sentences


def _bullets(title: str, sentences: Sequence[str]) -> str:
    return f"\n## {title}\n\n" + "".join(f"* {s}\n" for s in sentences) if sentences else ""


def _config(cfg: BiasBenchConfig, runs: Runs, start: float) -> dict[str, Any]:
    return {"bench": dataclasses.asdict(cfg), "runs": runs, "measured_lrp": measured_lrp(cfg),
            "total_time_s": time.perf_counter() - start}


def _best(values: Mapping[str, Mapping[str, Any]], key: str, keep: str | None = None) -> str | None:
    """The value whose run scores highest on ``key``; among equals ``keep`` (the value in use), else the first.

    Scores are means of per-seed accuracies, so equal ones may differ in the last bits of a float.
    """
    scored = [(v, s[key]) for v, s in values.items() if s.get(key) is not None]
    if not scored:
        return None
    top = max(score for _, score in scored)
    best = [v for v, score in scored if math.isclose(score, top, rel_tol=0.0, abs_tol=1e-9)]
    return keep if keep in best else best[0]


def _in_use(method: str, option: str) -> str:
    """The value of ``option`` the benchmark trains ``method`` with (its own setting, else isnet train's default)."""
    return f"{METHODS[method].get(option, getattr(TrainConfig(), option)):g}"


def _pair(summary: Mapping[str, Any] | None) -> str:
    if summary is None:
        return "-"
    return f"{percent(summary['unbiased'])} / {percent(summary['deceiving'])}"


@holding_lock("isnet bench bias --sweep")
def run_sweep(cfg: BiasBenchConfig, out: str | Path, *, methods: Sequence[str] | None = None,
              sweep: Mapping[str, tuple[str, Sequence[float]]] = SWEEP, log: Log = _log) -> dict[str, Any]:
    """The hyper-parameter sweep (module docstring); returns what ``sweep.json`` holds."""
    bases = _check(methods or list(sweep), list(sweep), "sweep")
    swept = sorted({sweep[b][0] for b in bases} & set(cfg.train_options))
    if swept:
        raise ValueError(f"sweep: train_options set {swept}, which the sweep varies")
    variants = [m for b in bases for m in (b, b + SWAP)]
    out, data, tests, start = _setup(cfg, out, variants, log)
    runs: Runs = {}
    for method in variants:
        option, values = sweep[method.removesuffix(SWAP)]
        for value in values:
            runs[f"{method}:{option}={value:g}"] = {**METHODS[method], option: value}
    summary, _ = _train(cfg, out, "runs-sweep", runs, data, tests, start, log)
    picks: dict[str, Any] = {}
    rows, chosen = [], []
    for method in variants:
        option, values = sweep[method.removesuffix(SWAP)]
        by_value = {f"{v:g}": summary[f"{method}:{option}={v:g}"] for v in values}
        selected = _best(by_value, "val_accuracy", keep=_in_use(method, option))
        oracle = _best(by_value, "unbiased")
        picks[method] = {"option": option, "values": by_value, "selected": selected, "oracle": oracle,
                         "background_swap": METHODS[method]["background_swap"]}
        for value, s in by_value.items():
            pick = ", ".join(name for name, v in (("selected", selected), ("oracle", oracle)) if v == value)
            rows.append({"method": method, "swap": swap_label(METHODS[method]["background_swap"]),
                         "option": option, "value": value, **_row(s), "pick": pick})
        chosen.append({"method": method, "option": option,
                       "selected (val)": str(selected), "its unbiased / deceiving (%)": _pair(by_value.get(selected)),
                       "oracle (unbiased test)": str(oracle),
                       "oracle's unbiased / deceiving (%)": _pair(by_value.get(oracle))})
    result = {"sweep": picks, "config": _config(cfg, runs, start)}
    write_json(out / "sweep.json", result)
    write_text(out / "sweep.md",
        "# Hyper-parameter sweep\n\nSelected: best accuracy on the biased validation split (last epoch; among equals, "
        "the value the benchmark uses). Oracle: best accuracy on the unbiased test set (peeks at the test data).\n\n"
        f"{markdown_table(chosen)}\n\n{markdown_table(rows)}\n")
    log(f"wrote {out / 'sweep.json'} and sweep.md (total {clock(time.perf_counter() - start)})", start)
    return result


def _dose_figure(curves: Mapping[str, Mapping[str, list]]) -> Figure:
    """Deceiving and unbiased accuracy against the swap probability, one line per method (± sd over seeds)."""
    figure = Figure(figsize=(9.0, 3.6), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    for ax, test in zip(axes, ("deceiving", "unbiased")):
        for method, curve in curves.items():
            spread = [100 * s if s is not None else 0.0 for s in curve[f"{test}_std"]]
            ax.errorbar(curve["probabilities"], [100 * v for v in curve[test]], yerr=spread, marker="o",
                        capsize=3, label=method)
        ax.set_title(f"{test} test set")
        ax.set_xlabel("background-swap probability")
        ax.set_ylim(0.0, 102.0)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[1].legend(fontsize=8)
    return figure


@holding_lock("isnet bench bias --swap-dose")
def run_swap_dose(cfg: BiasBenchConfig, out: str | Path, *, methods: Sequence[str] | None = None,
                  probabilities: Sequence[float] = SWAP_PROBABILITIES, log: Log = _log) -> dict[str, Any]:
    """Each method at every swap probability (module docstring); returns what ``swap_dose.json`` holds."""
    bases = _check(methods or list(SWAP_DOSE_METHODS), SWAP_DOSE_METHODS, "swap dose")
    bad = [p for p in probabilities if not 0.0 <= p <= 1.0]
    if bad or not probabilities or len(set(probabilities)) != len(probabilities):
        raise ValueError(f"swap dose: probabilities must be distinct values in [0, 1], got {list(probabilities)}")
    probabilities = sorted(float(p) for p in probabilities)
    out, data, tests, start = _setup(cfg, out, [b + SWAP for b in bases], log)
    runs = {f"{b}:swap={p:g}": {**METHODS[b + SWAP], "background_swap": float(p)} for b in bases for p in probabilities}
    summary, records = _train(cfg, out, "runs-swap-dose", runs, data, tests, start, log)
    keys = [k for key in ("val_accuracy", *TEST_SETS, "background_relevance") for k in (key, f"{key}_std")]
    curves = {b: {"probabilities": [float(p) for p in probabilities],
                  **{key: [summary[f"{b}:swap={p:g}"][key] for p in probabilities] for key in keys}} for b in bases}
    rows = [{"method": b, "swap probability": f"{p:g}", **_row(summary[f"{b}:swap={p:g}"])}
            for b in bases for p in probabilities]
    against_standard = [(f"{b}:swap={p:g}", f"standard:swap={p:g}") for p in probabilities for b in bases
                        if b != "standard"] if "standard" in bases else []
    paired, sentences = _compare(records, against_standard)
    save_figure(_dose_figure(curves), out / "figures" / "swap_dose.png", dpi=110)
    result = {"methods": curves, "paired": paired, "config": _config(cfg, runs, start)}
    write_json(out / "swap_dose.json", result)
    write_text(out / "swap_dose.md",
        "# Background-swap dose\n\n" + markdown_table(rows) + "\n"
        + _bullets("Each method against the standard classifier at the same swap probability (points)", sentences))
    log(f"wrote {out / 'swap_dose.json'}, swap_dose.md and figures/swap_dose.png "
        f"(total {clock(time.perf_counter() - start)})", start)
    return result


@holding_lock("isnet bench bias --mask-quality")
def run_mask_quality(cfg: BiasBenchConfig, out: str | Path, *, methods: Sequence[str] | None = None,
                     qualities: Sequence[str] = MASK_QUALITIES, log: Log = _log) -> dict[str, Any]:
    """Each method trained with each training-mask quality (module docstring); returns ``mask_quality.json``'s content.

    ``bbox`` equals ``exact`` for box masks and is then skipped (say ``mask="strokes"`` to study it).
    """
    # seg-classify reads the segmenter's masks, not the training masks
    chosen = _check(methods or list(MASK_QUALITY_METHODS), [m for m in METHODS if m != SEG_CLASSIFY], "mask quality")
    unknown = [q for q in qualities if q not in MASK_QUALITIES]
    if unknown:
        raise ValueError(f"mask quality: unknown qualities {unknown}; choose from {list(MASK_QUALITIES)}")
    skipped = ["bbox"] if cfg.mask == "box" and "bbox" in qualities else []
    kept = [q for q in qualities if q not in skipped]
    out, data, tests, start = _setup(cfg, out, chosen, log)
    if skipped:
        log("mask quality: bbox skipped, the bounding box of a box mask is the box itself", start)
    roots = {q: data if q == "exact" else BG_DIGITS.prepare_data(out / "data-masks" / q, cfg, train_mask=q)
             for q in kept}
    runs = {f"{m}:{q}": dict(METHODS[m]) for m in chosen for q in kept}
    method_data = {f"{m}:{q}": roots[q] for m in chosen for q in kept}
    summary, records = _train(cfg, out, "runs-mask-quality", runs, data, tests, start, log, method_data=method_data)
    table = {m: {q: summary[f"{m}:{q}"] for q in kept} for m in chosen}
    rows = [{"method": m, "training masks": q, **_row(table[m][q])} for m in chosen for q in kept]
    paired, sentences = _compare(records, [(f"{m}:{q}", f"{m}:exact") for m in chosen for q in kept
                                           if q != "exact" and "exact" in kept])
    result = {"methods": table, "skipped": skipped, "paired": paired, "config": _config(cfg, runs, start)}
    write_json(out / "mask_quality.json", result)
    write_text(out / "mask_quality.md",
        "# Training-mask quality\n\nTraining masks degraded as named (validation and test masks exact).\n\n"
        + markdown_table(rows) + "\n"
        + _bullets("Each degradation against the same method trained with exact masks (points)", sentences))
    log(f"wrote {out / 'mask_quality.json'} and mask_quality.md (total {clock(time.perf_counter() - start)})", start)
    return result
