"""The background-bias benchmark: occlusion check, output files, CLI."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from isnet.bench.bias import occlude_patches
from isnet.bench.presets import METHODS, OCCLUDED, TEST_SETS, BiasBenchConfig


def test_occlusion_replaces_only_the_patch_with_neighbouring_background():
    images = torch.rand(3, 3, 32, 32) * 0.5
    masks = torch.zeros(3, 1, 32, 32)
    masks[:, :, 8:24, 8:24] = 1
    patches = torch.zeros(3, 1, 32, 32)
    patches[0, :, 0:4, 0:4] = 1  # corner: filled from the block to its right
    patches[1, :, 28:32, 28:32] = 1  # opposite corner: from the block to its left
    for i, (r, c) in enumerate([(0, 0), (28, 28)]):
        images[i, :, r:r + 4, c:c + 4] = 1.0
    out = occlude_patches(images, patches, masks)
    torch.testing.assert_close(out[0, :, 0:4, 0:4], images[0, :, 0:4, 4:8])
    torch.testing.assert_close(out[1, :, 28:32, 28:32], images[1, :, 28:32, 24:28])
    torch.testing.assert_close(out[2], images[2])  # no patch: unchanged
    keep = ~patches.bool().expand_as(images)
    assert torch.equal(out[keep], images[keep])


def test_config_validation():
    with pytest.raises(ValueError, match="unknown methods"):
        BiasBenchConfig(methods=["nope"]).validate()
    with pytest.raises(ValueError, match="cannot set"):
        BiasBenchConfig(train_options={"variant": "standard"}).validate()
    assert {"standard", "original", "selective", "stochastic", "rrr", "gradcam", "masked"} <= set(METHODS)


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory):
    from isnet.cli import main

    out = tmp_path_factory.mktemp("bench") / "bias"
    argv = ["bench", "bias", "--out", str(out), "--methods", "standard", "masked", "--seeds", "1",
            "--n-train", "200", "--n-val", "40", "--n-test", "40", "--epochs", "1", "--examples", "1",
            "--threads", "1"]
    assert main(argv) == 0
    return out, argv


@pytest.mark.e2e
def test_bench_bias_writes_results_report_and_figures(tiny_bench, capsys):
    out, argv = tiny_bench
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"methods", "train_time_s", "config"}
    assert set(results["methods"]) == {"standard", "masked", "masked@unmasked"}
    for method, sets in results["methods"].items():
        assert set(TEST_SETS) <= set(sets) and OCCLUDED in sets
        for test in TEST_SETS:
            entry = sets[test]
            for key in ("accuracy", "accuracy_std", "background_relevance", "background_relevance_std",
                        "patch_relevance"):
                assert key in entry
            assert 0.0 <= entry["accuracy"] <= 1.0
            assert 0.0 <= entry["background_relevance"] <= 1.0
        assert sets["unbiased"]["patch_relevance"] is None  # no patch there
        assert 0.0 <= sets["biased"]["patch_relevance"] <= 1.0
    assert set(results["train_time_s"]) == {"standard", "masked"}
    assert all(t > 0 for t in results["train_time_s"].values())
    assert results["config"]["train"]["epochs"] == 1
    assert results["config"]["bench"]["n_train"] == 200

    table = (out / "results.md").read_text()
    assert "| standard |" in table and "| masked@unmasked |" in table
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {(r["method"], r["test_set"]) for r in rows} >= {("standard", "deceiving"), ("masked", "biased")}
    for name in ("accuracy", "heatmaps", "train_time", "background_relevance"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64") >= 3
    assert "proves nothing" in report and "Occlusion check" in report
    assert "<script" not in report and 'src="http' not in report  # self-contained

    # a second call with the same settings reuses the stored runs
    from isnet.cli import main

    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("reused stored run") == 2


@pytest.mark.e2e
def test_masked_method_sees_masked_inputs_at_test_time(tiny_bench):
    from isnet.bench.bias import evaluate_classifier, make_test_sets
    from isnet.checkpoints import load_classifier

    out, _ = tiny_bench
    model, config = load_classifier(out / "runs" / "masked" / "seed0")
    assert config["variant"] == "masked"
    seen = []
    # keep a reference only: any torch call on the input inside the LRP trace would change what it traces
    handle = model.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        test = make_test_sets(BiasBenchConfig(n_test=10))["biased"]
        evaluate_classifier(model, config, test)
        assert torch.all(seen[-1] * (1 - test.masks) == 0)
        evaluate_classifier(model, config, test, raw_input=True)
        assert torch.equal(seen[-1], test.images)
    finally:
        handle.remove()


@pytest.mark.e2e
def test_parallel_training_processes_give_the_sequential_results(tiny_bench, tmp_path, capsys):
    from isnet.cli import main

    out, argv = tiny_bench
    parallel = tmp_path / "parallel"
    argv = [a if a != str(out) else str(parallel) for a in argv] + ["--jobs", "2"]
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "in 2 processes (1 torch thread(s) each)" in printed
    assert printed.count(": done (fit") == 2
    sequential = json.loads((out / "results.json").read_text())
    results = json.loads((parallel / "results.json").read_text())
    assert results["methods"] == sequential["methods"]  # one thread each: bitwise the same training
    assert list(results["methods"]) == list(sequential["methods"])
    assert results["config"]["jobs"] == 2


def test_jobs_and_threads_must_be_positive():
    with pytest.raises(ValueError, match="jobs and threads"):
        BiasBenchConfig(jobs=0).validate()
    with pytest.raises(ValueError, match="jobs and threads"):
        BiasBenchConfig(threads=0).validate()


@pytest.mark.e2e
def test_a_failing_parallel_run_is_named(tmp_path):
    from isnet.bench.bias import run_benchmark
    from isnet.bench.grid import RunFailed

    cfg = BiasBenchConfig(methods=["standard", "gradcam"], seeds=1, n_train=40, n_val=10, n_test=10, epochs=1,
                          jobs=2, threads=1, train_options={"gradcam_layer": "nope"})
    with pytest.raises(RunFailed, match=r"seed 0 failed: gradcam_layer 'nope' is not a module"):
        run_benchmark(cfg, tmp_path / "bench")
