"""The benchmark interface: BG-Digits and BG-CXR implement it, the shared code reads only it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from isnet.bench.cxr.benchmark import BG_CXR, CxrTestSet
from isnet.bench.cxr.presets import CXR_FULL, CXR_METRICS, CXR_QUICK, CXR_TEST_SETS, CxrBenchConfig
from isnet.bench.digits.benchmark import BG_DIGITS
from isnet.bench.digits.presets import FULL, METRICS, OCCLUDED, QUICK, TEST_SETS, BiasBenchConfig
from isnet.bench.interface import Benchmark
from isnet.bench.presets import BenchSettings, bench_config


def test_both_benchmarks_implement_the_interface():
    for benchmark, kind in ((BG_DIGITS, BiasBenchConfig), (BG_CXR, CxrBenchConfig)):
        assert isinstance(benchmark, Benchmark) and benchmark.settings_type is kind
        assert not getattr(type(benchmark), "__abstractmethods__", None)  # every abstract method implemented
        assert {f.name for f in dataclasses.fields(kind)} >= set(BenchSettings.__annotations__)
    assert (BG_DIGITS.name, BG_DIGITS.label, BG_CXR.name, BG_CXR.label) == ("bias", "bench bias", "cxr", "bench cxr")
    assert (BG_DIGITS.test_sets, BG_DIGITS.metrics) == (TEST_SETS, METRICS)
    assert (BG_CXR.test_sets, BG_CXR.metrics) == (CXR_TEST_SETS, CXR_METRICS)
    assert (BG_DIGITS.segmenter_input, BG_CXR.segmenter_input) == ((1, 3), (2, 1))


def test_settings_take_the_benchmarks_presets():
    given = {"seeds": 2, "arch": None}
    for benchmark, quick, full in ((BG_DIGITS, QUICK, FULL), (BG_CXR, CXR_QUICK, CXR_FULL)):
        kind = benchmark.settings_type
        assert benchmark.settings(True, given, ["P=0.9"]) == bench_config(kind, quick, given, ["P=0.9"])
        cfg = benchmark.settings(False, given, [])
        assert cfg == kind(**{**full, "seeds": 2}) and cfg.train_options == {}


def test_results_entries_name_what_was_evaluated():
    tests = {name: None for name in (*TEST_SETS, OCCLUDED)}
    assert BG_DIGITS.results_entries(tests) == {"test_sets": [*TEST_SETS, OCCLUDED]}
    assert BG_DIGITS.results_entries({t: None for t in TEST_SETS}) == {"test_sets": list(TEST_SETS)}  # tint cue
    entries = BG_CXR.results_entries({})
    assert entries["test_sets"] == list(CXR_TEST_SETS) and entries["metrics"] == list(CXR_METRICS)
    assert entries["classes"] == ["consolidation", "ground_glass", "normal"]
    assert BG_CXR.class_name(2) == "normal" and BG_DIGITS.class_name(7) == "7"


def test_cxr_intervals_join_the_aggregated_metrics():
    records = {"standard": [{"results": {"biased": {"abnormal_auroc_ci95": [0.1 * s, 0.2 * s]}},
                             "raw_input_results": None} for s in (1, 2)]}
    methods = {"standard": {"biased": {"abnormal_auroc": 0.5}}}
    BG_CXR.complete_aggregate(methods, records)
    assert methods["standard"]["biased"]["abnormal_auroc_ci95"] == [[0.1, 0.2], [0.2, 0.4]]


def test_example_titles_name_the_image():
    labels, hospitals = torch.tensor([4, 1]), torch.tensor([0, 7])
    empty = torch.zeros(2, 1, 2, 2)
    cxr = {"external": CxrTestSet(empty, empty, labels % 3, empty, hospitals)}
    assert BG_CXR.example_title(cxr, "external", 1).split("\n")[:2] == ["external", "ground_glass"]
    digits = {"biased": CxrTestSet(empty, empty, labels, empty, hospitals)}
    assert BG_DIGITS.example_title(digits, "biased", 0) == "biased, label 4"


def test_a_benchmark_without_its_attributes_is_refused():
    methods = {name: (lambda self, *args, **kwargs: None) for name in Benchmark.__abstractmethods__}
    incomplete = type("Incomplete", (Benchmark,), {**methods, "name": "x", "dataset": "X", "test_sets": ("a",)})
    with pytest.raises(TypeError, match=r"benchmark Incomplete does not set \['settings_type', 'quick', 'full', "
                                        r"'metrics', 'compared', 'segmenter_input', 'report'\]"):
        incomplete()

    class Report:  # what a benchmark's report module provides
        format_table = staticmethod(lambda results: f"table of {sorted(results)}")
        results_markdown = staticmethod(lambda cfg, results: "results.md")
        findings = staticmethod(lambda results: ["a finding"])
        setup = staticmethod(lambda cfg, results: f"setup of {cfg}")

    attributes = {"settings_type": BiasBenchConfig, "quick": {}, "full": {}, "metrics": ("accuracy",),
                  "compared": (), "segmenter_input": (1, 3), "report": Report}
    complete = type("Complete", (incomplete,), attributes)()
    assert complete.label == "bench x" and complete.results_entries({}) == {"test_sets": ["a"]}
    # the report texts come from the report module
    assert complete.format_table({"m": 1}) == "table of ['m']" and complete.findings({}) == ["a finding"]
    assert complete.setup("cfg", {}) == "setup of cfg" and complete.results_markdown("cfg", {}) == "results.md"
    with pytest.raises(TypeError, match="abstract"):
        type("Abstract", (Benchmark,), {"name": "x"})()
