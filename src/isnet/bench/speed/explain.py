"""Explain time of the speed benchmark (``isnet bench explain``).

LRP-Flex heatmap time, with and without the Z^B rule on the first layer, against a plain
gradient x input (one forward, one backward, the same selected logit) on one model per
architecture, and zennit's attributors when zennit is installed. All contenders of one
architecture run round-robin (:func:`~isnet.bench.speed.timing.round_robin`); ratios are against
gradient x input.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...lrp import LRPFlex
from ...models import build_model
from .timing import Progress, median, round_robin


@dataclass
class ExplainSetup:
    """One explain-time comparison per architecture."""

    archs: tuple[str, ...] = ("resnet18", "vgg11", "densenet121", "vit_b_16", "convnext_tiny", "swin_t",
                              "efficientnet_b0")
    image_size: int = 64
    batch: int = 16
    num_classes: int = 1000
    repeats: int = 7
    warmup: int = 1
    zennit: bool = True


def gradient_x_input(model: nn.Module, x: Tensor) -> Tensor:
    """The baseline: one forward, one backward of the top logit, times the input."""
    x = x.detach().requires_grad_(True)
    out = model(x)
    (grad,) = torch.autograd.grad(out.gather(1, out.detach().argmax(1, keepdim=True)).sum(), x)
    return grad * x


def _zennit_contenders(model: nn.Module, x: Tensor, stack: contextlib.ExitStack,
                       arch: str) -> tuple[dict[str, Callable[[], Any]], list[str]]:
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
        times = {name: median(s) for name, s in samples.items()}
        cpu_times = {name: median(s) for name, s in cpu_samples.items()}
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
