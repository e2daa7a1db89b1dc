"""The BG-CXR benchmark: the data command, a tiny benchmark run, its outputs and its reuse of stored runs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from isnet.bench.cxr.presets import (CXR_COMPARED, CXR_FULL, CXR_METRICS, CXR_PLACES, CXR_QUICK, CXR_TEST_SETS,
                                    CxrBenchConfig)
from isnet.bench.digits.presets import BiasBenchConfig
from isnet.bench.presets import METHODS, bench_config
from isnet.bench.cxr.report import results_markdown
from isnet.cli import main
from test_bench_bias import check_audit_columns, check_readable_report, checking_figures

TINY = ["--seeds", "1", "--n-train", "60", "--n-val", "12", "--n-test", "12", "--epochs", "1", "--image-size", "64",
        "--arch", "small_cnn", "--examples", "1", "--jobs", "1", "--threads", "1"]


def test_data_command_writes_the_dataset_layout(tmp_path):
    from isnet.data import MaskedImageFolder

    out = tmp_path / "cxr"
    assert main(["data", "bg-cxr", "--out", str(out), "--n-train", "6", "--n-val", "3", "--n-test", "3",
                 "--image-size", "64", "--correlation", "1", "--unbiased"]) == 0
    meta = json.loads((out / "bg-cxr.json").read_text())
    assert meta["image_size"] == 64 and meta["correlation"] == 1.0
    assert list(meta["splits"]) == ["train", "val", "test/biased", "test/unbiased", "test/external", "test/deceiving"]
    for split, info in meta["splits"].items():
        root = out / split
        rows = list(csv.DictReader((root / "index.csv").open()))
        assert len(rows) == info["n"]
        for row in rows:
            for tree in ("images", "masks", "shortcuts"):
                assert (root / tree / row["file"]).is_file()
    train = MaskedImageFolder(out / "train")
    image, mask, label = train[0]
    assert train.classes == ["consolidation", "ground_glass", "normal"]
    assert image.shape == (3, 64, 64) and mask.shape == (1, 64, 64) and 0 <= label < 3
    assert torch.equal(image[0], image[1])  # grayscale replicated


def test_composites_put_another_hospital_only_outside_or_only_inside_the_lungs():
    from isnet.bench.cxr.benchmark import BG_CXR
    from isnet.bench.cxr.report import findings, place_rows

    tests = BG_CXR.make_test_sets(CxrBenchConfig(n_test=9, image_size=64))
    biased, deceiving = tests["biased"], tests["deceiving"]
    assert list(tests) == [*CXR_TEST_SETS, *CXR_PLACES]
    for name, lungs, background in ((CXR_PLACES[0], biased, deceiving), (CXR_PLACES[1], deceiving, biased)):
        made = tests[name]
        assert torch.equal(made.labels, biased.labels) and torch.equal(made.masks, lungs.masks)
        inside, neither = lungs.masks.bool().expand_as(made.images), ~(lungs.masks + background.masks).bool()
        assert torch.equal(made.images[inside], lungs.images[inside])  # the lungs, pixel for pixel
        assert torch.equal(made.images[neither.expand_as(made.images)], background.images[neither.expand_as(
            made.images)])  # the other hospital's background, pixel for pixel
        # where only the background's own lungs were: filled from that image's background, never its lungs
        filled = (background.masks.bool() & ~lungs.masks.bool()).expand_as(made.images)
        for i in range(len(made.labels)):
            around = background.images[i][~background.masks[i].bool().expand_as(background.images[i])]
            values = made.images[i][filled[i]]
            assert values.min() >= around.min() - 1e-6 and values.max() <= around.max() + 1e-6
        assert torch.equal(made.shortcuts, background.shortcuts * (1 - lungs.masks))
        assert torch.equal(made.hospitals, lungs.hospitals)
    assert (tests[CXR_PLACES[0]].images != biased.images).any() and (tests[CXR_PLACES[1]].images != biased.images).any()

    def entry(acc: float) -> dict:
        return {m: v for metric in CXR_METRICS for m, v in ((metric, acc), (f"{metric}_std", None))} | {"seeds": 1}

    places = {"biased": 0.9, "unbiased": 0.5, "external": 0.55, "deceiving": 0.3, CXR_PLACES[0]: 0.89,
              CXR_PLACES[1]: 0.31}
    results = {"methods": {"new": {t: entry(a) for t, a in places.items()},
                           "old": {t: entry(a) for t, a in places.items() if t in CXR_TEST_SETS}},
               "config": {}, "train_time_s": {}}
    assert place_rows(results) == [{"method": "new", "nowhere (biased)": "90.0", "outside the lungs only": "89.0",
                                    "inside the lungs only": "31.0", "everywhere (deceiving)": "30.0"}]
    new, old = findings(results)
    assert "only outside the lungs 89.0%, only inside them 31.0%" in new and "only inside" not in old
    assert "Another class's hospital outside or inside the lungs" in results_markdown(CxrBenchConfig(), results)
    without = {**results, "methods": {"old": results["methods"]["old"]}}
    assert "Another class's hospital" not in results_markdown(CxrBenchConfig(), without)


def test_runs_stored_before_the_composites_are_recognised():
    """The test key isnet wrote before the composites, literally: its runs are evaluated again, not trained."""
    from isnet.bench.cxr.benchmark import BG_CXR

    cfg = CxrBenchConfig(n_test=300, image_size=64)
    before = {"dataset": "bg-cxr", "n": 300, "data_seed": 0, "image_size": 64, "correlation": 0.95,
              "tests": ["biased", "unbiased", "external", "deceiving"]}
    assert BG_CXR.earlier_test_keys(cfg) == [before] and BG_CXR.test_key(cfg) != before


def test_presets_use_the_bias_benchmarks_methods_and_validate():
    for preset in (CXR_QUICK, CXR_FULL):
        assert set(preset["methods"]) <= set(METHODS)
        CxrBenchConfig(**preset).validate()
    assert set(CXR_FULL["methods"]) == set(METHODS)
    assert CXR_QUICK["arch"] == "small_cnn" and CXR_FULL["arch"] == "resnet18"
    with pytest.raises(ValueError, match="image_size"):
        CxrBenchConfig(image_size=32).validate()
    with pytest.raises(ValueError, match="correlation"):
        CxrBenchConfig(correlation=1.5).validate()
    with pytest.raises(ValueError, match="unknown methods"):
        CxrBenchConfig(methods=["nope"]).validate()
    with pytest.raises(ValueError, match="background_swap"):
        CxrBenchConfig(train_options={"background_swap": 0.5}).validate()


def test_bench_config_takes_the_preset_then_the_given_options():
    given = {"seeds": 2, "arch": None, "image_size": 96, "placement": "anywhere", "out": "ignored"}
    cfg = bench_config(CxrBenchConfig, CXR_QUICK, given, ["P=0.9", "gradcam_layer=features"])
    assert (cfg.seeds, cfg.arch, cfg.image_size, cfg.n_train) == (2, "small_cnn", 96, CXR_QUICK["n_train"])
    assert cfg.train_options == {"P": 0.9, "gradcam_layer": "features"}
    assert bench_config(BiasBenchConfig, {}, given, []).placement == "anywhere"
    with pytest.raises(ValueError, match="KEY=VALUE"):
        bench_config(CxrBenchConfig, {}, {}, ["P"])


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "cxr"
    argv = ["bench", "cxr", "--out", str(out), "--methods", "standard", "masked", "seg-classify", *TINY]
    assert main(argv) == 0
    return out, argv


@pytest.mark.e2e
def test_bench_cxr_writes_results_report_and_figures(tiny_bench):
    out, _ = tiny_bench
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"methods", "train_time_s", "step_time_s", "paired", "audit", "config"}
    assert list(results["methods"]) == ["standard", "masked", "masked@unmasked", "seg-classify"]
    for sets in results["methods"].values():
        assert list(sets) == [*CXR_TEST_SETS, *CXR_PLACES]
        for entry in sets.values():
            for metric in CXR_METRICS:
                assert 0.0 <= entry[metric] <= 1.0 and f"{metric}_std" in entry
            [(low, high)] = entry["abnormal_auroc_ci95"]  # one seed: one DeLong interval
            assert low <= entry["abnormal_auroc"] <= high
            assert entry["seeds"] == 1
    config = results["config"]
    assert config["test_sets"] == list(CXR_TEST_SETS) and config["train"]["epochs"] == 1
    assert config["bench"]["arch"] == "small_cnn" and config["train"]["image_size"] == 64
    assert config["background_swap"] == {"standard": 0.0, "masked": None, "seg-classify": None}
    segmenter = config["segmenter"]  # trained once on the training split, scored on every test set
    assert segmenter["options"]["components"] == 2 and segmenter["options"]["in_channels"] == 1
    assert list(segmenter["scores"]) == list(CXR_TEST_SETS)
    for score in segmenter["scores"].values():
        assert 0 <= score["dice"] <= 1 and 0 <= score["outside"] <= 1
    seg_run = json.loads((out / "runs" / "seg-classify" / "seed0" / "config.json").read_text())
    assert seg_run["segmenter"] == segmenter["run"] == str(out / "segmenter")
    assert {(p["method"], p["reference"]) for p in results["paired"]} == {("seg-classify", "masked")}
    assert {(p["test_set"], p["metric"]) for p in results["paired"]} == set(CXR_COMPARED)
    record = json.loads((out / "runs" / "standard" / "seed0" / "result.json").read_text())
    assert np.asarray(record["results"]["deceiving"]["confusion_matrix"]).sum() == 12

    table = (out / "results.md").read_text()
    assert "## Accuracy (%)" in table and "| method | swap | biased | unbiased | external | deceiving |" in table
    assert "| standard | no |" in table and "| masked | - |" in table and "| seg-classify | - |" in table
    assert "## Another class's hospital outside or inside the lungs" in table
    assert config["places"] == list(CXR_PLACES)
    assert "seg-classify: a MONAI U-Net" in table and "Dice of its masks per test set: biased" in table
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {(r["method"], r["test_set"]) for r in rows} >= {("standard", "external"), ("masked", "deceiving")}
    assert "shortcut_relevance" in rows[0] and "abnormal_auroc_std" in rows[0]
    for name in ("accuracy", "background_relevance", "shortcut_relevance", "train_time", "heatmaps", "examples",
                 "swap"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64") >= 7
    assert "pastes one patient&#x27;s lungs into another&#x27;s body" in report
    assert "<script" not in report and 'src="http' not in report  # self-contained
    check_audit_columns(out, results, ["standard", "masked", "seg-classify"])
    assert results["audit"]["methods"]["masked"]["flip_rate"] == 0.0  # no background reaches the masked input
    assert "Background audit" in report and "Where the hospital is read" in report
    old = {k: v for k, v in results.items() if k != "audit"}  # results written before the audit existed
    assert "| standard |  |  |  |  |  |" in results_markdown(CxrBenchConfig(), old)


@pytest.mark.e2e
def test_test_sets_in_memory_are_the_files_on_disk(tiny_bench):
    from isnet.bench.cxr.benchmark import BG_CXR

    out, _ = tiny_bench
    cfg = CxrBenchConfig(n_test=12, image_size=64)
    tests = BG_CXR.make_test_sets(cfg)
    for name in ("external", "deceiving"):
        first = next(csv.DictReader((out / "data" / "test" / name / "index.csv").open()))
        image = np.array(Image.open(out / "data" / "test" / name / "images" / first["file"]))
        shortcut = np.asarray(Image.open(out / "data" / "test" / name / "shortcuts" / first["file"])) > 0
        assert torch.equal(tests[name].images[0, 0], torch.from_numpy(image).float() / 255)
        assert torch.equal(tests[name].shortcuts[0, 0], torch.from_numpy(shortcut).float())
        assert int(tests[name].labels[0]) == int(first["label"])


@pytest.mark.e2e
def test_a_second_call_reuses_the_stored_runs_and_other_data_settings_are_refused(tiny_bench, capsys, monkeypatch):
    out, argv = tiny_bench
    capsys.readouterr()
    figures = checking_figures(monkeypatch)
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("reused stored run") == 3 and "training the seg-classify segmenter" not in printed
    check_readable_report((out / "report.html").read_text(), figures,
                          {"accuracy", "background_relevance", "shortcut_relevance", "train_time", "examples", "swap"})
    monkeypatch.chdir(out.parent)  # the same folder written relatively: the same runs
    relative = [a if a != str(out) else out.name for a in argv]
    assert main(relative) == 0 and capsys.readouterr().out.count("reused stored run") == 3
    # other training options would replace finished runs: refused before anything is trained or deleted
    stored = (out / "runs" / "standard" / "seed0" / "result.json").read_text()
    assert main([*argv, "--set", "lr=0.01"]) == 2
    assert "finished runs trained with other settings" in capsys.readouterr().err
    assert (out / "runs" / "standard" / "seed0" / "result.json").read_text() == stored
    other = [a if a != "60" else "66" for a in argv]  # another --n-train into the same folder
    assert main(other) == 2
    assert "BG-CXR made with other settings" in capsys.readouterr().err


def test_findings_name_what_each_method_does():
    from isnet.bench.cxr.report import findings

    def sets(*accuracies: float, bg: float = 0.5) -> dict:
        return {t: {"accuracy": a, "background_relevance": bg, "shortcut_relevance": 0.1}
                for t, a in zip(CXR_TEST_SETS, accuracies)}

    methods = {"shortcut": sets(0.95, 0.35, 0.33, 0.02), "hidden": sets(0.95, 0.35, 0.33, 0.02, bg=0.05),
               "external": sets(0.8, 0.75, 0.5, 0.7), "robust": sets(0.8, 0.78, 0.77, 0.79),
               "chance": sets(0.3, 0.35, 0.33, 0.3)}
    lines = dict(zip(methods, findings({"methods": methods})))
    assert "reads the hospital" in lines["shortcut"] and "little relevance" not in lines["shortcut"]
    assert "little relevance lies outside the lungs" in lines["hidden"]
    assert "more than 20 points below biased on external)" in lines["external"]
    assert "is robust" in lines["robust"] and "did not learn" in lines["chance"]
    assert lines["robust"].startswith("robust: ") and "external 77.0%" in lines["robust"]


@pytest.mark.e2e
def test_a_moved_bench_folder_evaluates_seg_classify_with_its_own_segmenter(tiny_bench, tmp_path, capsys,
                                                                            monkeypatch):
    """The moved folder's runs are reused and evaluated again on new test data, seg-classify with the segmenter
    of the moved folder: the original location is gone while it runs."""
    import shutil

    import isnet.bench.grid as grid
    from isnet.bench.cxr.benchmark import BG_CXR

    out, argv = tiny_bench
    moved = tmp_path / "moved" / "cxr"
    shutil.copytree(out, moved, ignore=shutil.ignore_patterns(".isnet.lock"))
    away = out.with_name("away")
    out.rename(away)
    try:
        monkeypatch.setattr(grid, "_train_run", lambda *a, **k: pytest.fail("a stored run was trained again"))
        moved_argv = [str(moved) if a == str(out) else a for a in argv]
        capsys.readouterr()
        assert main(moved_argv) == 0 and capsys.readouterr().out.count("reused stored run") == 3
        earlier = type(BG_CXR).test_key
        monkeypatch.setattr(type(BG_CXR), "test_key", lambda self, cfg: {**earlier(self, cfg), "more": "tests"})
        assert main(moved_argv) == 0
        assert capsys.readouterr().out.count("stored run evaluated on the new test data") == 3
        record = json.loads((moved / "runs" / "seg-classify" / "seed0" / "result.json").read_text())
        stored = json.loads((away / "runs" / "seg-classify" / "seed0" / "result.json").read_text())
        assert record["results"]["external"]["accuracy"] == stored["results"]["external"]["accuracy"]
    finally:
        away.rename(out)
