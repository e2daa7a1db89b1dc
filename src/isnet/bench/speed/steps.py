"""Training-step time and peak memory of the ISNet variants (``isnet bench speed``).

One training step is forward, loss, backward, gradient clipping and an SGD step, with the
papers' loss and batch-norm options (:data:`isnet.recipe.REFERENCE`), as in the reference
implementation whose step times the bench is compared with. All variants of one architecture
and class count K run round-robin (:func:`~isnet.bench.speed.timing.round_robin`) on the same model,
batch and optimiser; peak memory is measured in one extra step at chosen K
(:func:`~isnet.bench.speed.timing.peak_memory`). Ratios are against the standard step at the same K
and against the same variant at the first K.

The ``original`` variant costs one relevance pass per class; a K whose estimated step time
exceeds a budget is not run: its time is the standard step at that K plus K times the
per-class cost (the least-squares slope over the measured K), marked ``"extrapolated": true``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...loss import ISNetLoss
from ...lrp import zb_relevance
from ...models import build_model
from ...recipe import REFERENCE
from ...network import ISNet, default_supervised_layers
from .timing import Progress, median, peak_memory, round_robin

ALL_VARIANTS = ("standard", "selective", "stochastic", "dual", "selective+ds", "stochastic+ds", "original",
                "original-naive", "original-batched")
"""``+ds``: with LRP deep supervision. ``original-naive``: a new forward pass per class (how the
original ISNet is written without a reusable trace). ``original-batched``: all classes in one
vmapped backward (``torch.autograd.grad(..., is_grads_batched=True)``), kept for comparison."""


@dataclass
class StepSetup:
    """Training-step times of the variants of one architecture over class counts."""

    arch: str
    image_size: int
    batch: int
    classes: tuple[int, ...]
    variants: tuple[str, ...] = ("standard", "selective", "stochastic", "selective+ds", "stochastic+ds",
                                 "original")
    repeats: int = 3
    warmup: int = 1
    original_budget_s: float = 10.0  # skip original (and its naive / batched forms) above this step time
    comparison_classes: tuple[int, ...] = ()  # K at which original-naive and original-batched also run
    memory_classes: tuple[int, ...] | None = None  # K with a peak-memory step (None: the first and last)


def _original_batched(net: ISNet, x: Tensor) -> tuple[Tensor, Tensor]:
    """All class heatmaps from one vmapped backward (``is_grads_batched``); Z^B, no deep supervision."""
    trace = net.lrp.trace(x)
    logits = trace.output
    classes = logits.shape[1]
    block = trace._block  # noqa: SLF001 - a benchmark of an alternative, reusing the trace internals
    start = block.relu_out if block is not None else trace.x
    grad_outputs = torch.eye(classes, dtype=logits.dtype, device=logits.device)[:, None, :].expand(
        classes, logits.shape[0], classes)
    trace._switch.lrp = True  # noqa: SLF001
    try:
        (grads,) = torch.autograd.grad(logits, [start], grad_outputs, is_grads_batched=True, create_graph=True)
    finally:
        trace._switch.lrp = False  # noqa: SLF001
    if block is None:
        maps = [trace.x * grads[k] for k in range(classes)]
    else:
        maps = [zb_relevance(block, start * grads[k], net.lrp.epsilon, net.lrp.bounds) for k in range(classes)]
    return logits, torch.stack(maps, 1)


def _original_naive(net: ISNet, x: Tensor) -> tuple[Tensor, Tensor]:
    """One forward and one relevance pass per class."""
    first = net.lrp.trace(x)
    maps = [first.relevance(first.output[:, 0].sum(), create_graph=True).input]
    for k in range(1, first.output.shape[1]):
        trace = net.lrp.trace(x)
        maps.append(trace.relevance(trace.output[:, k].sum(), create_graph=True).input)
    return first.output, torch.stack(maps, 1)


def make_step(model: nn.Module, variant: str, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
              mask: Tensor, layers: Sequence[str] = ()) -> Callable[[], Tensor]:
    """One training step of ``variant`` (see :data:`ALL_VARIANTS`); returns a function running it."""
    criterion = ISNetLoss(P=REFERENCE["P"], d=REFERENCE["d"], foreground=REFERENCE["foreground"])
    params = [p for p in model.parameters() if p.requires_grad]
    if variant == "standard":
        def heatmaps():
            return model(x), None
    else:
        base = variant.split("+")[0].split("-")[0]
        net = ISNet(model, base, deep_supervision=list(layers) if variant.endswith("+ds") else False,
                    batch_stats=REFERENCE["batch_stats"]).train()
        if variant == "original-naive":
            def heatmaps():
                return _original_naive(net, x)
        elif variant == "original-batched":
            def heatmaps():
                return _original_batched(net, x)
        else:
            def heatmaps():
                return net(x, heatmaps=True, labels=y)

    def step() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        logits, heat = heatmaps()
        loss = criterion(logits, y, heat, mask).total
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        return loss.detach()

    return step


def per_class_cost(excess: dict[int, float]) -> float:
    """Least-squares slope through the origin of the extra step time over K (``excess[K] = t(K) - t_standard(K)``)."""
    return sum(k * e for k, e in excess.items()) / sum(k * k for k in excess)


def bench_steps(setup: StepSetup, *, device: torch.device = torch.device("cpu"),
                progress: Progress = print) -> dict:
    """Step time (and peak memory) of each variant at each K; original extrapolated above the budget."""
    variants = [v for v in setup.variants if v in ALL_VARIANTS]
    memory_classes = setup.memory_classes
    if memory_classes is None:
        memory_classes = (setup.classes[0], setup.classes[-1])
    results: dict[str, dict[str, dict]] = {v: {} for v in variants}
    extra = [v for v in ("original-naive", "original-batched") if setup.comparison_classes and "original" in variants]
    results.update({v: {} for v in extra})
    layers: list[str] = []
    for classes in setup.classes:
        torch.manual_seed(0)
        model = build_model(setup.arch, classes, image_size=setup.image_size).to(device).train()
        layers = default_supervised_layers(model)
        x = torch.rand(setup.batch, 3, setup.image_size, setup.image_size, device=device)
        y = torch.randint(0, classes, (setup.batch,), device=device)
        mask = torch.zeros(setup.batch, 1, setup.image_size, setup.image_size, device=device)
        quarter = setup.image_size // 4
        mask[:, :, quarter:-quarter, quarter:-quarter] = 1
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
        chosen = []
        for v in variants + extra:
            if v.startswith("original"):
                if v != "original" and classes not in setup.comparison_classes:
                    continue
                excess = _excess(results, "original")
                if excess and classes != setup.classes[0]:
                    last_standard = results["standard"][str(max(excess))]["time_s"]
                    factor = 1.0 if v == "original" else 1.5
                    if (last_standard + max(per_class_cost(excess), 0.0) * classes) * factor > setup.original_budget_s:
                        continue
            chosen.append(v)
        steps = {v: make_step(model, v, optimizer, x, y, mask, layers) for v in chosen}
        samples, cpu_samples = round_robin(steps, repeats=setup.repeats, warmup=setup.warmup, device=device)
        memory_ok = classes in memory_classes
        for v in chosen:
            entry = {"time_s": median(samples[v]), "min_time_s": min(samples[v]),
                     "cpu_time_s": median(cpu_samples[v]), "samples_s": samples[v], "extrapolated": False,
                     "peak_memory_bytes": None}
            if memory_ok:
                model.zero_grad(set_to_none=True)
                entry["peak_memory_bytes"] = peak_memory(steps[v], device)
            results[v][str(classes)] = entry
            mem = entry["peak_memory_bytes"]
            progress(f"step     {setup.arch:<12} K={classes:<5} {v:<17} {entry['time_s'] * 1e3:9.1f} ms"
                     + (f"   peak {mem / 2**20:8.1f} MiB" if mem is not None else ""))
        del steps, model, optimizer
    # extrapolate original to every K it skipped: the standard step at that K plus K relevance passes
    excess = _excess(results, "original")
    if excess and "standard" in results:
        cost = per_class_cost(excess)
        costs = {key: per_class_cost(_excess(results, "original", key)) for key in ("min_time_s", "cpu_time_s")}
        for classes in setup.classes:
            std = results["standard"].get(str(classes))
            if str(classes) not in results["original"] and std is not None:
                t = std["time_s"] + cost * classes
                results["original"][str(classes)] = {
                    "time_s": t, **{key: std[key] + c * classes for key, c in costs.items()}, "samples_s": [],
                    "extrapolated": True, "peak_memory_bytes": None}
                progress(f"step     {setup.arch:<12} K={classes:<5} original          {t * 1e3:9.1f} ms   "
                         f"(extrapolated: standard step + K x {cost * 1e3:.1f} ms)")
        results["original"] = dict(sorted(results["original"].items(), key=lambda kv: int(kv[0])))
    return {
        "arch": setup.arch, "image_size": setup.image_size, "batch": setup.batch, "classes": list(setup.classes),
        "repeats": setup.repeats, "supervised_layers": layers, "variants": results,
        **_step_ratios(results, setup.classes),
    }


def _excess(results: dict, variant: str, key: str = "time_s") -> dict[int, float]:
    """Measured step time of ``variant`` above the standard step at the same K."""
    std = results.get("standard", {})
    return {int(k): r[key] - std[k][key] for k, r in results.get(variant, {}).items()
            if not r["extrapolated"] and k in std}


def _step_ratios(results: dict[str, dict[str, dict]], classes: Sequence[int]) -> dict:
    std = results.get("standard", {})
    first = str(classes[0])
    ratios: dict[str, dict] = {name: {} for name in ("ratio_vs_standard", "ratio_vs_first_k", "min_ratio_vs_standard",
                                                     "min_ratio_vs_first_k", "cpu_ratio_vs_standard",
                                                     "cpu_ratio_vs_first_k")}
    memory = {}
    for v, per_k in results.items():
        for prefix, key in (("", "time_s"), ("min_", "min_time_s"), ("cpu_", "cpu_time_s")):
            ratios[f"{prefix}ratio_vs_standard"][v] = {k: r[key] / std[k][key] for k, r in per_k.items() if k in std}
            if first in per_k:
                ratios[f"{prefix}ratio_vs_first_k"][v] = {k: r[key] / per_k[first][key] for k, r in per_k.items()}
        memory[v] = {k: r["peak_memory_bytes"] / std[k]["peak_memory_bytes"] for k, r in per_k.items()
                     if k in std and r["peak_memory_bytes"] and std[k]["peak_memory_bytes"]}
    per_class = {v: per_class_cost(_excess(results, v)) for v in ("original", "original-naive", "original-batched")
                 if _excess(results, v)}
    cpu_per_class = {v: per_class_cost(_excess(results, v, "cpu_time_s")) for v in per_class}
    min_per_class = {v: per_class_cost(_excess(results, v, "min_time_s")) for v in per_class}
    return {**ratios, "memory_ratio_vs_standard": memory, "original_seconds_per_class": per_class,
            "original_min_seconds_per_class": min_per_class, "original_cpu_seconds_per_class": cpu_per_class}
