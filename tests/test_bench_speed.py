"""Smoke test of the speed benchmark: tiny settings, every output key; no timing assertions."""

from __future__ import annotations

import json
import math

from isnet.bench.speed.benchmark import SpeedSetup, run
from isnet.bench.speed.explain import ExplainSetup
from isnet.bench.speed.report import to_json
from isnet.bench.speed.steps import StepSetup, per_class_cost
from isnet.cli import build_parser


def _no_constant(name: str) -> None:
    """``parse_constant`` for json.loads: NaN, Infinity and -Infinity are not JSON."""
    raise ValueError(f"not JSON: {name}")


def test_speed_benchmark_smoke(tmp_path):
    lines: list[str] = []
    setup = SpeedSetup(
        explain=ExplainSetup(archs=("small_cnn",), image_size=32, batch=2, num_classes=10, repeats=1, warmup=0),
        steps=[StepSetup("small_cnn", 32, 4, (2, 10), repeats=1, warmup=0, original_budget_s=0.0,
                         comparison_classes=(2,))],
    )
    report = run(setup, tmp_path, quick=True, progress=lines.append)

    saved = json.loads((tmp_path / "speed.json").read_text(), parse_constant=_no_constant)
    assert set(saved) >= {"meta", "setup", "explain", "steps", "targets"}
    row = saved["explain"][0]
    assert set(row["times_s"]) >= {"gradient_x_input", "lrp_flex", "lrp_flex_no_zb"}
    assert set(row["ratio_vs_gradient_x_input"]) >= {"lrp_flex", "lrp_flex_no_zb"}
    steps = saved["steps"]["small_cnn"]
    assert set(steps) >= {"variants", "ratio_vs_standard", "ratio_vs_first_k", "memory_ratio_vs_standard",
                          "original_seconds_per_class", "supervised_layers"}
    variants = steps["variants"]
    assert set(variants) == {"standard", "selective", "stochastic", "selective+ds", "stochastic+ds", "original",
                             "original-naive", "original-batched"}
    for v in ("standard", "selective", "stochastic", "selective+ds", "stochastic+ds"):
        assert set(variants[v]) == {"2", "10"} and not variants[v]["10"]["extrapolated"]
        assert variants[v]["2"]["peak_memory_bytes"] > 0
    # over budget: original measured at the first K only, extrapolated above it
    assert not variants["original"]["2"]["extrapolated"] and variants["original"]["10"]["extrapolated"]
    assert set(variants["original-naive"]) == {"2"}
    assert steps["ratio_vs_standard"]["standard"]["10"] == 1.0
    assert (tmp_path / "speed.md").read_text().startswith("# isnet speed benchmark")
    assert (tmp_path / "small_cnn.png").stat().st_size > 0
    assert report["steps"]["small_cnn"]["classes"] == [2, 10]
    assert any("selective" in line for line in lines)


def test_per_class_cost_and_cli():
    assert per_class_cost({2: 0.2, 10: 1.0}) == 0.1
    args = build_parser().parse_args(["bench", "speed", "--quick", "--out", "x"])
    assert args.command == "bench" and args.bench == "speed" and args.quick
    args = build_parser().parse_args(["bench", "explain", "--out", "x"])
    assert args.bench == "explain" and not args.quick


def test_report_json_has_no_nan():
    """JSON has no NaN or infinity: non-finite numbers are written as null, the rest unchanged."""
    report = {"a": math.nan, "b": [1.5, math.inf, (2, -math.inf)], "c": {"d": None, "e": "x", "f": 3}}
    assert json.loads(to_json(report), parse_constant=_no_constant) == {
        "a": None, "b": [1.5, None, [2, None]], "c": {"d": None, "e": "x", "f": 3}}


def test_original_batched_matches_original():
    """The benchmark's is_grads_batched form of the original ISNet: same heatmaps, same gradients."""
    import torch

    from isnet import ISNet, ISNetLoss
    from isnet.bench.speed.steps import _original_batched, _original_naive
    from isnet.small_models import small_cnn

    torch.manual_seed(0)
    model = small_cnn(4).train()
    x = torch.rand(3, 3, 32, 32)
    model(x)
    y, mask = torch.tensor([0, 1, 3]), torch.zeros(3, 1, 32, 32)
    mask[:, :, 8:24, 8:24] = 1
    net = ISNet(model, "original").train()
    results = []
    for heatmaps in (lambda: net(x, heatmaps=True), lambda: _original_batched(net, x),
                     lambda: _original_naive(net, x)):
        logits, heat = heatmaps()
        loss = ISNetLoss()(logits, y, heat, mask).total
        results.append((heat.detach(), torch.autograd.grad(loss, list(model.parameters()))))
    for heat, grads in results[1:]:
        assert torch.allclose(heat, results[0][0], rtol=1e-5, atol=1e-7)
        for a, b in zip(grads, results[0][1]):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
