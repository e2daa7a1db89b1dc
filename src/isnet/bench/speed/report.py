"""Targets, Markdown tables, plots and JSON of a speed benchmark report.

Everything here reads the report dictionary that :func:`isnet.bench.speed.benchmark.run` builds
(``meta``, ``setup``, ``explain``, ``steps``, ``targets``) and measures nothing. JSON has no
NaN or infinity: :func:`to_json` writes non-finite numbers as ``null``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def to_json(report: dict) -> str:
    """The report as strict JSON: every non-finite float (NaN, infinity) becomes ``null``."""
    return json.dumps(_finite(report), indent=1, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


EXPLAIN_LIMITS = {"vit_b_16": 1.5, "convnext_tiny": 1.5, "swin_t": 1.5, "efficientnet_b0": 1.5}
"""Explain-time targets beyond ReLU networks (one factor per activation, a recomputed statistic per
normalisation, an explicit attention); every other architecture: 1.3x gradient x input."""


def targets(report: dict) -> list[dict]:
    """The issue's targets, measured (``met`` is None where this run has no number for it)."""
    out = []

    def add(target: str, value: float, limit: float, min_value: float | None = None, cpu_value: float | None = None,
            strict: bool = False) -> None:
        def ok(v):
            return None if v is None else (v < limit if strict else v <= limit)
        out.append({"target": target, "value": value, "min_value": min_value, "cpu_value": cpu_value, "limit": limit,
                    "met": ok(value), "met_min": ok(min_value)})

    for row in report.get("explain", []):
        limit = EXPLAIN_LIMITS.get(row["arch"], 1.3)
        add(f"explain <= {limit}x gradient x input ({row['arch']})", row["ratio_vs_gradient_x_input"]["lrp_flex"],
            limit, row["min_ratio_vs_gradient_x_input"]["lrp_flex"], row["cpu_ratio_vs_gradient_x_input"]["lrp_flex"])
    res = report.get("steps", {}).get("resnet18")
    if res:
        for v in ("selective", "stochastic"):
            ratios = res["ratio_vs_standard"].get(v, {})
            if ratios:
                add(f"{v} step <= 3.0x standard (resnet18, worst K)", max(ratios.values()), 3.0,
                    max(res["min_ratio_vs_standard"][v].values()), max(res["cpu_ratio_vs_standard"][v].values()))
        sel = res["ratio_vs_first_k"].get("selective", {})
        last = str(res["classes"][-1])
        if last in sel and res["classes"][-1] >= 1000:
            add(f"selective step at K={last} <= 1.15x K={res['classes'][0]} (resnet18)", sel[last], 1.15,
                res["min_ratio_vs_first_k"]["selective"][last], res["cpu_ratio_vs_first_k"]["selective"][last])
        mem = res["memory_ratio_vs_standard"].get("selective", {})
        if mem:
            add("selective peak memory <= 2.5x standard (resnet18, worst K)", max(mem.values()), 2.5)
        per_class = res["original_seconds_per_class"]
        if "original" in per_class and "original-naive" in per_class:
            best, cpu = res["original_min_seconds_per_class"], res["original_cpu_seconds_per_class"]
            add("original: time per class / naive per-class loop's (resnet18)",
                per_class["original"] / per_class["original-naive"], 1.0,
                best["original"] / best["original-naive"], cpu["original"] / cpu["original-naive"], strict=True)
    return out


def _fmt_ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.0f}"


def _fmt_x(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.2f}x"


def markdown(report: dict) -> str:
    """``speed.md``: the tables of a report."""
    meta = report["meta"]
    lines = ["# isnet speed benchmark", "",
             f"Device: {meta['device']} ({meta['cpu']}), torch {meta['torch']}, {meta['threads']} threads, "
             f"{'quick' if meta['quick'] else 'full'} run, {meta['date']}. Load average before/after: "
             f"{meta['load_before']} / {meta['load_after']}.", "",
             "Times are medians over round-robin repeats after warm-up; ratios are ratios of medians (the fastest "
             "repeats are given too: other processes loading the machine inflate medians). "
             f"Peak memory: {meta['memory_method']}", ""]
    if report.get("targets"):
        lines += ["## Targets", "", "Ratios of median wall-clock times (the measurement), of the fastest repeats "
                  "(less sensitive to other load on the machine) and of median process CPU times (all threads).", "",
                  "| target | median | fastest | CPU | limit | met (median / fastest) |", "|---|---|---|---|---|---|"]
        for t in report["targets"]:
            def num(v):
                return "—" if v is None else f"{v:.2f}"
            met = " / ".join("—" if m is None else ("yes" if m else "NO") for m in (t["met"], t.get("met_min")))
            lines.append(f"| {t['target']} | {num(t['value'])} | {num(t.get('min_value'))} | "
                         f"{num(t.get('cpu_value'))} | {t['limit']} | {met} |")
        lines.append("")
    if report.get("explain"):
        names = sorted({n for row in report["explain"] for n in row["ratio_vs_gradient_x_input"]},
                       key=lambda n: (not n.startswith("lrp"), n))
        lines += ["## Explain time vs gradient x input", "",
                  "Ratio of median wall-clock times (in brackets: of the fastest repeats).", "",
                  "| model | input | grad x input (ms) | " + " | ".join(names) + " |",
                  "|---|---|---|" + "---|" * len(names)]
        for row in report["explain"]:
            ratios, best = row["ratio_vs_gradient_x_input"], row["min_ratio_vs_gradient_x_input"]
            lines.append(f"| {row['arch']} | {row['batch']}x3x{row['image_size']}x{row['image_size']} | "
                         f"{_fmt_ms(row['times_s']['gradient_x_input'])} | "
                         + " | ".join(f"{_fmt_x(ratios.get(n))} ({_fmt_x(best.get(n))})" if n in ratios else "—"
                                      for n in names) + " |")
        notes = [n for row in report["explain"] for n in row["notes"]]
        lines += [""] + [f"* {n}" for n in notes] + ([""] if notes else [])
    for arch, res in report.get("steps", {}).items():
        ks = [str(k) for k in res["classes"]]
        lines += [f"## Training step: {arch} ({res['batch']}x3x{res['image_size']}x{res['image_size']})", "",
                  "Median step time in ms (wall clock); in brackets x the standard step at the same K, from "
                  "the medians / from the fastest repeats; _italic_: extrapolated.", "",
                  "| variant | " + " | ".join(f"K={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
        for v, per_k in res["variants"].items():
            cells = []
            for k in ks:
                r = per_k.get(k)
                if r is None:
                    cells.append("—")
                    continue
                text = (f"{_fmt_ms(r['time_s'])} ({_fmt_x(res['ratio_vs_standard'].get(v, {}).get(k))} / "
                        f"{_fmt_x(res['min_ratio_vs_standard'].get(v, {}).get(k))})")
                cells.append(f"_{text}_" if r["extrapolated"] else text)
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
        lines += ["", f"Step time relative to K={ks[0]} (medians / fastest repeats):", "",
                  "| variant | " + " | ".join(f"K={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
        for v, per_k in res["ratio_vs_first_k"].items():
            cpu = res["min_ratio_vs_first_k"][v]
            cells = []
            for k in ks:
                if k not in per_k:
                    cells.append("—")
                    continue
                text = f"{_fmt_x(per_k[k])} / {_fmt_x(cpu[k])}"
                cells.append(f"_{text}_" if res["variants"][v][k]["extrapolated"] else text)
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
        mem_rows = [(v, k, r) for v, per_k in res["variants"].items() for k, r in per_k.items()
                    if r["peak_memory_bytes"]]
        if mem_rows:
            lines += ["", "Peak memory per step:", "", "| variant | K | peak (MiB) | x standard |", "|---|---|---|---|"]
            for v, k, r in mem_rows:
                lines.append(f"| {v} | {k} | {r['peak_memory_bytes'] / 2**20:.0f} | "
                             f"{_fmt_x(res['memory_ratio_vs_standard'].get(v, {}).get(k))} |")
        if res["original_seconds_per_class"]:
            cpu = res["original_min_seconds_per_class"]
            lines += ["", "Original ISNet, cost per class (least-squares slope of the step time above the standard "
                      "step, over K; medians / fastest repeats): " + ", ".join(
                          f"{v} {sec * 1e3:.0f} / {cpu[v] * 1e3:.0f} ms"
                          for v, sec in res["original_seconds_per_class"].items()) + "."]
        lines += ["", f"![step time vs K]({arch}.png)", ""]
    return "\n".join(lines) + "\n"


def plot_steps(res: dict, path: Path) -> Path | None:
    """Step time vs K (log-log), one line per variant; extrapolated points dashed."""
    from ... import figures

    ks = res["classes"]
    series: dict[str, list[float | None]] = {}
    dashed = []
    for v, per_k in res["variants"].items():
        measured = [per_k[str(k)]["time_s"] if str(k) in per_k and not per_k[str(k)]["extrapolated"] else None
                    for k in ks]
        series[v] = measured
        if any(str(k) in per_k and per_k[str(k)]["extrapolated"] for k in ks):
            last = max(i for i, t in enumerate(measured) if t is not None) if any(measured) else None
            ext = [per_k[str(k)]["time_s"] if str(k) in per_k and (per_k[str(k)]["extrapolated"] or i == last)
                   else None for i, k in enumerate(ks)]
            series[f"{v} (extrapolated)"] = ext
            dashed.append(f"{v} (extrapolated)")
    fig = figures.line_plot(ks, series, xlabel="classes K", ylabel="training step time (s)", logx=True, logy=True,
                            title=f"{res['arch']}, batch {res['batch']}, {res['image_size']}x{res['image_size']}",
                            dashed=dashed)
    return figures.save_figure(fig, path)
