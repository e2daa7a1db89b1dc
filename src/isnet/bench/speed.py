"""Speed and memory benchmark: ``isnet bench speed`` and ``isnet bench explain``.

Two measurements, in one process, on one device:

* **explain**: LRP-Flex heatmap time against a plain gradient x input (one forward, one
  backward, the same selected logit) on torchvision models, and zennit's when installed;
* **steps**: the time of one training step (forward, loss, backward, gradient clipping,
  SGD step) of every ISNet variant at several class counts K, and its peak memory.

Timing: after warm-up calls, the contenders of one setting run in turn (round-robin) for
``repeats`` rounds, so a change of machine load hits them alike; each time is the median of
its rounds. Ratios are ratios of those medians.

Peak memory per step: on CUDA ``torch.cuda.max_memory_allocated`` minus the memory allocated
before the step; on CPU the running total of the CPU allocator's allocations and frees
during one step, recorded by ``torch.profiler`` (``profile_memory=True``), and its maximum.
Both count tensor storages (activations, saved tensors, gradients, temporaries) made during
the step over what existed before it (parameters, optimiser state), not allocator caching or
oneDNN scratch space.

The ``original`` variant costs one relevance pass per class; a K whose estimated step time
exceeds a budget is not run: its time is extrapolated linearly in K from the measured K and
marked ``"extrapolated": true``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..loss import ISNetLoss
from ..lrp import LRPFlex, zb_relevance
from ..models import build_model
from ..variants import ISNet, default_supervised_layers

Progress = Callable[[str], None]

ALL_VARIANTS = ("standard", "selective", "stochastic", "selective+ds", "stochastic+ds", "original",
                "original-naive", "original-batched")
"""``+ds``: with LRP deep supervision. ``original-naive``: a new forward pass per class (how the
original ISNet is written without a reusable trace). ``original-batched``: all classes in one
vmapped backward (``torch.autograd.grad(..., is_grads_batched=True)``), kept for comparison."""


@dataclass
class ExplainSetup:
    """One explain-time comparison per architecture."""

    archs: tuple[str, ...] = ("resnet18", "vgg11", "densenet121")
    image_size: int = 64
    batch: int = 16
    num_classes: int = 1000
    repeats: int = 7
    warmup: int = 1
    zennit: bool = True


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


@dataclass
class SpeedSetup:
    explain: ExplainSetup | None
    steps: list[StepSetup] = field(default_factory=list)


def full_setup() -> SpeedSetup:
    """The full benchmark (about 20-30 minutes on 2 CPU cores)."""
    classes = (2, 10, 100, 1000)
    return SpeedSetup(
        explain=ExplainSetup(),
        steps=[
            StepSetup("resnet18", 64, 16, classes, comparison_classes=(2, 10)),
            StepSetup("densenet121", 64, 16, classes, repeats=3, original_budget_s=12.0),
            StepSetup("small_cnn", 32, 16, classes, repeats=5, original_budget_s=4.0, comparison_classes=(2, 10)),
        ],
    )


def quick_setup() -> SpeedSetup:
    """A smoke-sized run (under about 3 minutes on 2 CPU cores): smaller inputs, fewer K and repeats."""
    return SpeedSetup(
        explain=ExplainSetup(archs=("resnet18",), image_size=32, batch=8, repeats=5, warmup=1),
        steps=[
            StepSetup("small_cnn", 32, 16, (2, 10, 100, 1000), variants=(
                "standard", "selective", "stochastic", "selective+ds", "original"), repeats=3,
                original_budget_s=0.5, comparison_classes=(2,)),
            StepSetup("resnet18", 32, 8, (2, 1000), variants=("standard", "selective", "stochastic", "original"),
                      repeats=3, original_budget_s=1.0),
        ],
    )


# ------------------------------------------------------------------------------------ timing tools

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def round_robin(fns: dict[str, Callable[[], Any]], *, repeats: int, warmup: int,
                device: torch.device = torch.device("cpu")) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and process CPU seconds per call of each function.

    All functions run once per round, ``repeats`` rounds. The CPU time (all threads of this
    process) barely moves when other processes load the machine, the wall time does.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def peak_memory(fn: Callable[[], Any], device: torch.device = torch.device("cpu")) -> int | None:
    """Peak bytes allocated by ``fn`` above what was allocated when it started (see module doc)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # no "gpuGetDeviceCount failed" on CPU-only machines
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    results = getattr(prof.profiler, "kineto_results", None)
    if results is None:
        return None
    cpu = torch._C._autograd.DeviceType.CPU
    events = sorted((e for e in results.events() if e.name() == "[memory]" and e.device_type() == cpu),
                    key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return int(peak)


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler's C++ start/stop lines (file descriptor 2) for the duration."""
    try:
        saved = os.dup(2)
    except OSError:  # pragma: no cover - no usable stderr
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - platform without getloadavg
        return None


# ------------------------------------------------------------------------------------ explain

def gradient_x_input(model: nn.Module, x: Tensor) -> Tensor:
    """The baseline: one forward, one backward of the top logit, times the input."""
    x = x.detach().requires_grad_(True)
    out = model(x)
    (grad,) = torch.autograd.grad(out.gather(1, out.detach().argmax(1, keepdim=True)).sum(), x)
    return grad * x


def _zennit_contenders(model: nn.Module, x: Tensor, stack: contextlib.ExitStack, arch: str) -> tuple[dict, list[str]]:
    """zennit attributors on a copy of the model (its hooks stay on the copy while timing)."""
    try:
        from zennit.attribution import Gradient
        from zennit.composites import EpsilonPlusFlat, SpecialFirstLayerMapComposite, layer_map_base
        from zennit.rules import Epsilon, ZBox
        from zennit.types import Convolution
    except ImportError:
        return {}, ["zennit not installed"]
    notes = []
    canonizers = []
    if arch.startswith("resnet"):
        from zennit.torchvision import ResNetCanonizer

        canonizers = [ResNetCanonizer()]
    elif arch.startswith("vgg") and "_bn" in arch:
        from zennit.torchvision import VGGCanonizer

        canonizers = [VGGCanonizer()]
    elif any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        notes.append(f"zennit has no canonizer for {arch}: its batch norms pass the plain gradient")
    composites = {
        # the rules LRP-Flex computes: epsilon on conv/linear layers, Z^B on the first conv
        "zennit_epsilon_zbox": SpecialFirstLayerMapComposite(
            layer_map=layer_map_base() + [(Convolution, Epsilon(0.01)), (nn.Linear, Epsilon(0.01))],
            first_map=[(Convolution, ZBox(0.0, 1.0, stabilizer=0.01))], canonizers=canonizers),
        "zennit_epsilon_plus_flat": EpsilonPlusFlat(canonizers=canonizers),
    }
    contenders = {}
    for name, composite in composites.items():
        twin = copy.deepcopy(model)
        attributor = stack.enter_context(Gradient(twin, composite))

        def run(attributor=attributor):
            return attributor(x, lambda out: F.one_hot(out.argmax(1), out.shape[1]).to(out))[1]

        try:
            run()
        except Exception as error:  # noqa: BLE001 - report, do not hide
            notes.append(f"{name} failed on {arch}: {type(error).__name__}: {error}")
            continue
        contenders[name] = run
    return contenders, notes


def bench_explain(setup: ExplainSetup, *, device: torch.device = torch.device("cpu"),
                  progress: Progress = print) -> list[dict]:
    """Explain time of LRP-Flex (Z^B and without) and zennit against gradient x input."""
    rows = []
    for arch in setup.archs:
        torch.manual_seed(0)
        model = build_model(arch, setup.num_classes, image_size=setup.image_size).to(device).eval()
        x = torch.rand(setup.batch, 3, setup.image_size, setup.image_size, device=device)
        lrp, lrp_no_zb = LRPFlex(model), LRPFlex(model, zb=False)
        with contextlib.ExitStack() as stack:
            contenders = {
                "gradient_x_input": lambda: gradient_x_input(model, x),
                "lrp_flex": lambda: lrp.explain(x, "argmax"),
                "lrp_flex_no_zb": lambda: lrp_no_zb.explain(x, "argmax"),
            }
            notes: list[str] = []
            if setup.zennit:
                extra, notes = _zennit_contenders(model, x, stack, arch)
                contenders.update(extra)
            samples, cpu_samples = round_robin(contenders, repeats=setup.repeats, warmup=setup.warmup, device=device)
        times = {name: _median(s) for name, s in samples.items()}
        cpu_times = {name: _median(s) for name, s in cpu_samples.items()}
        min_times = {name: min(s) for name, s in samples.items()}

        def versus(values: dict[str, float]) -> dict[str, float]:
            return {name: t / values["gradient_x_input"] for name, t in values.items() if name != "gradient_x_input"}

        ratios = versus(times)
        base = times["gradient_x_input"]
        rows.append({"arch": arch, "image_size": setup.image_size, "batch": setup.batch, "times_s": times,
                     "min_times_s": min_times, "cpu_times_s": cpu_times, "samples_s": samples,
                     "ratio_vs_gradient_x_input": ratios, "min_ratio_vs_gradient_x_input": versus(min_times),
                     "cpu_ratio_vs_gradient_x_input": versus(cpu_times), "notes": notes})
        progress(f"explain  {arch:<12} grad x input {base * 1e3:8.1f} ms | "
                 + " | ".join(f"{n} {r:.2f}x" for n, r in ratios.items()))
        for note in notes:
            progress(f"explain  {arch:<12} note: {note}")
    return rows


# ------------------------------------------------------------------------------------ training steps

def _supervised_layers(model: nn.Module) -> list[str]:
    try:
        return default_supervised_layers(model)
    except ValueError:  # e.g. small_cnn: the outputs of its max-pooling stages
        return [name for name, m in model.named_modules() if isinstance(m, nn.MaxPool2d)]


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
    criterion = ISNetLoss(P=0.7)
    params = [p for p in model.parameters() if p.requires_grad]
    if variant == "standard":
        def heatmaps():
            return model(x), None
    else:
        base = variant.split("+")[0].split("-")[0]
        net = ISNet(model, base, deep_supervision=list(layers) if variant.endswith("+ds") else False).train()
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
        layers = _supervised_layers(model)
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
            entry = {"time_s": _median(samples[v]), "min_time_s": min(samples[v]),
                     "cpu_time_s": _median(cpu_samples[v]), "samples_s": samples[v], "extrapolated": False,
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


# ------------------------------------------------------------------------------------ targets and report

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
        add(f"explain <= 1.3x gradient x input ({row['arch']})", row["ratio_vs_gradient_x_input"]["lrp_flex"], 1.3,
            row["min_ratio_vs_gradient_x_input"]["lrp_flex"], row["cpu_ratio_vs_gradient_x_input"]["lrp_flex"])
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
    from .. import figures

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


def _meta(device: torch.device, quick: bool) -> dict:
    cpu = platform.processor() or platform.machine()
    if device.type == "cuda":
        cpu = torch.cuda.get_device_name(device)
    memory_method = ("torch.cuda.max_memory_allocated above the memory allocated before the step."
                     if device.type == "cuda" else
                     "maximum of the running total of CPU allocator allocations minus frees during one step, "
                     "recorded by torch.profiler (profile_memory=True); counts tensors made during the step "
                     "(activations, saved tensors, gradients, temporaries), not parameters or optimiser state "
                     "that existed before it, nor allocator caching or oneDNN scratch space.")
    return {"device": str(device), "cpu": cpu, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "quick": quick, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "load_before": _load(), "load_after": None,
            "memory_method": memory_method, "python": platform.python_version()}


def run(setup: SpeedSetup, out: str | Path, *, quick: bool = False, device: str | torch.device = "cpu",
        progress: Progress = print, name: str = "speed", threads: int | None = None) -> dict:
    """Run a benchmark setup and write ``<name>.json``, ``<name>.md`` and one plot per architecture.

    ``threads``: torch CPU threads for the run (None: torch's default).
    """
    device = torch.device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"meta": _meta(device, quick), "setup": asdict(setup)}
    started = time.perf_counter()
    if setup.explain is not None:
        report["explain"] = bench_explain(setup.explain, device=device, progress=progress)
    report["steps"] = {}
    for step_setup in setup.steps:
        report["steps"][step_setup.arch] = bench_steps(step_setup, device=device, progress=progress)
    report["meta"]["load_after"] = _load()
    report["meta"]["seconds"] = time.perf_counter() - started
    report["targets"] = targets(report)
    for res in report["steps"].values():
        plot_steps(res, out / f"{res['arch']}.png")
    (out / f"{name}.json").write_text(json.dumps(report, indent=1))
    (out / f"{name}.md").write_text(markdown(report))
    for t in report["targets"]:
        best = f" (fastest repeats: {t['min_value']:.2f})" if t.get("min_value") is not None else ""
        progress(f"target   {t['target']}: {t['value']:.2f}{best} (limit {t['limit']}) "
                 f"{'met' if t['met'] else 'NOT met'}")
    progress(f"wrote {out / f'{name}.json'}, {out / f'{name}.md'} ({report['meta']['seconds']:.0f} s)")
    return report


def run_speed(out: str | Path, *, quick: bool = False, device: str = "cpu", progress: Progress = print,
              threads: int | None = None) -> dict:
    """``isnet bench speed``: explain time and training-step time / memory of every variant vs K."""
    setup = quick_setup() if quick else full_setup()
    return run(setup, out, quick=quick, device=device, progress=progress, name="speed", threads=threads)


def run_explain(out: str | Path, *, quick: bool = False, device: str = "cpu", progress: Progress = print,
                threads: int | None = None) -> dict:
    """``isnet bench explain``: LRP-Flex explain time against gradient x input (and zennit)."""
    setup = SpeedSetup(explain=quick_setup().explain if quick else ExplainSetup(), steps=[])
    return run(setup, out, quick=quick, device=device, progress=progress, name="explain", threads=threads)
