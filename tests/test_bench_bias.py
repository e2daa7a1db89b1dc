"""The background-bias benchmark: occlusion check, output files, CLI."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import torch

from isnet.audit_stats import NO_RELIANCE, RELIES, SENSITIVE
from isnet.bench.audit_columns import AUDIT_METRICS, audit_rows, audit_summary
from isnet.bench.digits.benchmark import occlude_patches
from isnet.bench.digits.presets import COMPARED, OCCLUDED, TEST_SETS, BiasBenchConfig
from isnet.bench.presets import METHODS
from isnet.errors import UserError


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
        BiasBenchConfig(train_options={"objective": "standard"}).validate()
    # a --set value is checked against its training option before any data or run is made
    with pytest.raises(UserError, match="--batch-stats must be one of"):
        BiasBenchConfig(train_options={"batch_stats": "frozen"}).validate()
    with pytest.raises(UserError, match="unknown training options"):
        BiasBenchConfig(train_options={"P_typo": 0.5}).validate()
    assert {"standard", "original+swap", "selective", "stochastic", "rrr", "gradcam", "masked"} <= set(METHODS)


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory):
    from isnet.cli import main

    out = tmp_path_factory.mktemp("bench") / "bias"
    argv = ["bench", "bias", "--out", str(out), "--methods", "standard", "masked", "--seeds", "1",
            "--n-train", "200", "--n-val", "40", "--n-test", "40", "--epochs", "1", "--examples", "1",
            "--threads", "1"]
    assert main(argv) == 0
    return out, argv


def checking_figures(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Every figure a benchmark report saves (``figures/NAME.png``), by file name: its texts cut off at its edges."""
    from isnet.bench import report
    from test_figures import texts_outside

    save, seen = report.save_figure, {}

    def checked(fig, path, **kwargs):
        seen[pathlib.Path(path).name] = texts_outside(fig)
        return save(fig, path, **kwargs)

    monkeypatch.setattr(report, "save_figure", checked)
    return seen


def check_readable_report(report: str, figures: dict[str, list[str]], names: set[str]) -> None:
    """The report as a browser shows it: no text past the figures' edges, no line past the page's right edge."""
    from test_figures import long_pre_lines

    assert set(figures) >= {f"{name}.png" for name in names} and not any(figures.values()), figures
    assert long_pre_lines(report) == []
    assert "<li>standard: " in report and "<li>lr = " in report  # the verdicts and the options, as lists


@pytest.mark.e2e
def test_bench_bias_writes_results_report_and_figures(tiny_bench, capsys, monkeypatch):
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
    check_audit_columns(out, results, ["standard", "masked"])
    assert results["audit"]["methods"]["masked"]["flip_rate"] == 0.0  # no background reaches the masked input
    assert "Background audit" in report

    # a second call with the same settings reuses the stored runs, also one stored before the audit existed
    from isnet.bench.digits.report import results_markdown
    from isnet.cli import main

    stored = out / "runs" / "standard" / "seed0" / "result.json"
    kept = stored.read_text()
    stored.write_text(json.dumps({k: v for k, v in json.loads(kept).items() if k != "audit"}))
    try:
        capsys.readouterr()
        assert main(argv) == 0
        assert capsys.readouterr().out.count("reused stored run") == 2
        old = json.loads((out / "results.json").read_text())
        assert old["audit"]["methods"]["standard"]["audited"] == 0
        assert old["audit"]["methods"]["standard"]["flip_rate"] is None
        assert old["audit"]["methods"]["masked"]["audited"] == 1
        table = (out / "results.md").read_text()
        assert "| standard |  |  |  |  |  |" in table and "Empty cells (standard)" in table
    finally:
        stored.write_text(kept)
    figures = checking_figures(monkeypatch)
    assert main(argv) == 0  # the results again with every run audited
    check_readable_report((out / "report.html").read_text(), figures,
                          {"accuracy", "background_relevance", "train_time", "heatmaps"})
    del old["audit"]  # results written before the audit existed
    assert "| standard |  |  |  |  |  |" in results_markdown(BiasBenchConfig(), old)


def check_audit_columns(out: pathlib.Path, results: dict, methods: list[str]) -> None:
    """Each run's record and the aggregated results hold the audit's rates (shares) and verdict; results.md its table."""
    labels = {RELIES, SENSITIVE, NO_RELIANCE}
    audit = results["audit"]
    assert audit["test_set"] == "biased" and audit["seed"] == 0 and audit["resamples"] == 200
    assert list(audit["methods"]) == methods
    for method in methods:
        entry = audit["methods"][method]
        assert entry["audited"] == 1 and set(entry["verdicts"]) <= labels
        for metric in AUDIT_METRICS:
            assert f"{metric}_std" in entry
            assert (entry[metric] is None and metric == "follows_background") or 0.0 <= entry[metric] <= 1.0
        record = json.loads((out / "runs" / method / "seed0" / "result.json").read_text())["audit"]
        assert record["test_set"] == "biased" and record["verdict"] in labels
        assert record["n"] == results["config"]["bench"]["n_test"] and record["forward_passes_per_image"] == 4
        assert record["follows_overall"] == pytest.approx(record["flip_rate"] * (record["follows_background"] or 0))
        for key in ("follows_background_chance", "background_only_chance"):
            assert record[key] is None or 0.0 <= record[key] <= 1.0
    table = (out / "results.md").read_text()
    assert "## Background audit (biased test set)" in table and "follow donor bg overall (%)" in table
    assert "Cost: 4 forward passes per image of the biased test set" in table
    assert "masked sees only the true foreground" in table
    for row in audit_rows(results):
        assert row["verdict"] in labels
    rows = {r["method"]: r for r in csv.DictReader((out / "audit.csv").open())}
    assert list(rows) == methods
    for method in methods:
        entry, row = audit["methods"][method], rows[method]
        assert row["test_set"] == "biased" and int(row["audited"]) == 1
        assert float(row["flip_rate"]) == pytest.approx(entry["flip_rate"], rel=1e-5)
        assert row["verdict_counts"] == f"{entry['verdicts'][0]}=1"


def test_audit_summary_reads_runs_stored_before_the_audit():
    audited = [{"audit": {"flip_rate": f, "follows_background": 0.5, "background_only_accuracy": 0.2,
                          "follows_overall": f / 2, "verdict": v, "forward_passes_per_image": 4, "time_s": 1.0}}
               for f, v in ((0.2, RELIES), (0.4, SENSITIVE))]
    summary = audit_summary({"a": audited, "old": [{}, {"audit": None}]})
    a, old = summary["methods"]["a"], summary["methods"]["old"]
    assert a["flip_rate"] == pytest.approx(0.3) and a["flip_rate_std"] == pytest.approx(0.1414, abs=1e-3)
    assert a["audited"] == 2 and a["verdicts"] == [RELIES, SENSITIVE]
    assert old["audited"] == 0 and old["verdicts"] == [None, None]
    assert all(old[m] is None and old[f"{m}_std"] is None for m in AUDIT_METRICS)
    rows = audit_rows({"methods": {"a": {}, "old": {}}, "train_time_s": {"a": 1.0, "old": 1.0}, "audit": summary})
    assert rows[0]["flips, other bg (%)"] == "30.0 ± 14.1" and rows[0]["verdict"].startswith(f"{RELIES} (1/2 seeds)")
    assert set(rows[1].values()) == {"old", ""}  # empty, not a crash
    assert audit_rows({"methods": {"a": {}}, "train_time_s": {"a": 1.0}})[0]["verdict"] == ""  # no audit at all


@pytest.mark.e2e
def test_masked_method_sees_masked_inputs_at_test_time(tiny_bench):
    from isnet.bench.digits.benchmark import BG_DIGITS
    from isnet.checkpoints import load_classifier

    out, _ = tiny_bench
    model, config = load_classifier(out / "runs" / "masked" / "seed0")
    assert config["objective"] == "masked"
    seen = []
    # keep a reference only: any torch call on the input inside the LRP trace would change what it traces
    handle = model.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        test = BG_DIGITS.make_test_sets(BiasBenchConfig(n_test=10))["biased"]
        BG_DIGITS.evaluate_classifier(model, config, test)
        assert torch.all(seen[-1] * (1 - test.masks) == 0)
        BG_DIGITS.evaluate_classifier(model, config, test, raw_input=True)
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
    from isnet.bench.digits.benchmark import BG_DIGITS
    from isnet.bench.grid import RunFailed
    from isnet.bench.run import run_benchmark

    cfg = BiasBenchConfig(methods=["standard", "gradcam"], seeds=1, n_train=40, n_val=10, n_test=10, epochs=1,
                          jobs=2, threads=1, train_options={"gradcam_layer": "nope"})
    with pytest.raises(RunFailed, match=r"seed 0 failed: gradcam_layer 'nope' is not a module"):
        run_benchmark(BG_DIGITS, cfg, tmp_path / "bench")


# --------------------------------------------------------------------------- equal terms: swap in the name


_KILLED_GRID = """
import concurrent.futures, multiprocessing, os, sys, time
from isnet.bench.grid import _exit_with_parent

if __name__ == "__main__":
    context = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=context, initializer=_exit_with_parent,
                                                  initargs=(os.getpid(),))
    print(pool.submit(os.getpid).result(), flush=True)
    pool.submit(time.sleep, 120)
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie that nobody reaped counts as ended)."""
    stat = pathlib.Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads process states from /proc")
def test_training_processes_end_when_the_grid_is_killed(tmp_path):
    script = tmp_path / "grid.py"
    script.write_text(_KILLED_GRID)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = None
    try:
        worker = int(parent.stdout.readline())
        assert _alive(worker)
        parent.send_signal(signal.SIGKILL)  # no handler runs: only the worker's own watch can end it
        parent.wait(timeout=10)
        deadline = time.monotonic() + 15
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(worker), "the training process outlived its grid"
    finally:
        parent.kill()
        if worker is not None and _alive(worker):
            os.kill(worker, signal.SIGKILL)


def test_every_method_states_its_swap_in_its_name():
    from isnet.bench.digits.presets import DEMO, FULL, QUICK
    from isnet.bench.presets import RELATIVE_COST, swap_setting

    for method, options in METHODS.items():
        assert options["background_swap"] in (0.0, 1.0), method
        assert options["background_swap"] == (1.0 if method.endswith("+swap") else 0.0), method
        assert swap_setting(method) == (None if method in ("masked", "seg-classify") else options["background_swap"])
    assert METHODS["standard+swap"]["objective"] == "swap"  # the standard loss with masks loaded
    assert METHODS["gxi+swap"] == {"objective": "selective", "epsilon": 0.0, "zb": False, "background_swap": 1.0}
    for preset in (QUICK, FULL):
        for base in ("standard", "rrr", "gradcam", "selective", "stochastic"):
            assert {base, base + "+swap"} <= set(preset["methods"])
    assert set(FULL["methods"]) == set(METHODS) == set(RELATIVE_COST)
    assert DEMO["methods"] == ["standard", "standard+swap", "selective+swap"]


def test_sweep_selection_keeps_the_value_in_use_among_equals():
    from isnet.bench.digits.modes import _best, _in_use
    from isnet.bench.digits.presets import SWEEP

    tied = {"0.1": {"val_accuracy": (0.1 + 0.2 + 0.3) / 3}, "1": {"val_accuracy": (0.3 + 0.2 + 0.1) / 3},
            "10": {"val_accuracy": 0.15}}
    assert tied["0.1"]["val_accuracy"] != tied["1"]["val_accuracy"]  # equal means, different float sums
    assert _best(tied, "val_accuracy", keep="1") == "1"
    assert _best(tied, "val_accuracy", keep="10") == "0.1"  # the value in use scores lower: first of the best
    assert _best(tied, "val_accuracy") == "0.1"
    assert _best({"1": {"val_accuracy": 0.9}, "10": {"val_accuracy": 0.8}}, "val_accuracy", keep="10") == "1"
    assert _best({"1": {"unbiased": None}}, "unbiased") is None
    # every method trains with one of the values its sweep tries, so the sweep can select it again
    for method in METHODS:
        base = method.removesuffix("+swap")
        if base in SWEEP:
            option, values = SWEEP[base]
            assert _in_use(method, option) in {f"{v:g}" for v in values}, method
    assert _in_use("rrr+swap", "rrr_lambda") == "1" and _in_use("rrr", "rrr_lambda") == "10"


def test_train_options_cannot_change_what_a_method_sets():
    with pytest.raises(ValueError, match="background_swap"):
        BiasBenchConfig(train_options={"background_swap": 0.5}).validate()
    with pytest.raises(ValueError, match="epsilon"):
        BiasBenchConfig(train_options={"epsilon": 0.1}).validate()  # gxi+swap sets it
    BiasBenchConfig(methods=["standard"], train_options={"epsilon": 0.1}).validate()
    with pytest.raises(ValueError, match="rrr_lambda"):
        BiasBenchConfig(methods=["rrr+swap"], train_options={"rrr_lambda": 10.0}).validate()  # its swept value
    BiasBenchConfig(methods=["rrr"], train_options={"rrr_lambda": 100.0}).validate()
    with pytest.raises(ValueError, match="cue"):
        BiasBenchConfig(cue="glow").validate()


def test_rows_are_grouped_by_method_and_pairs_compare_equal_swap():
    from isnet.bench.presets import comparison_pairs, method_order

    shuffled = ["selective+swap", "masked@unmasked", "standard", "masked", "selective", "standard+swap", "rrr+swap"]
    assert sorted(shuffled, key=method_order) == [
        "standard", "standard+swap", "rrr+swap", "selective", "selective+swap", "masked", "masked@unmasked"]
    assert comparison_pairs(shuffled) == [
        ("rrr+swap", "standard+swap"), ("selective", "standard"), ("selective+swap", "standard+swap"),
        ("standard+swap", "standard"), ("selective+swap", "selective")]
    assert comparison_pairs(["selective+swap", "masked"]) == []  # no equal reference ran
    assert comparison_pairs(["masked", "seg-classify", "standard"]) == [("seg-classify", "masked")]


def test_paired_interval_is_the_t_interval_of_the_seed_differences():
    from isnet.bench.paired import comparison_sentence, paired_comparisons, paired_interval

    # differences 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.302653 -> 2 -/+ 4.302653 / sqrt(3)
    low, high = paired_interval([1.0, 2.0, 3.0])
    assert low == pytest.approx(2 - 2.4841377, abs=1e-6) and high == pytest.approx(2 + 2.4841377, abs=1e-6)
    assert paired_interval([0.4]) is None

    def record(seed, deceiving, unbiased=0.5):
        sets = {"deceiving": {"accuracy": deceiving, "background_relevance": 0.1},
                "unbiased": {"accuracy": unbiased, "background_relevance": 0.1}}
        return {"seed": seed, "results": sets}

    records = {"standard+swap": [record(0, 0.90), record(1, 0.80), record(2, 0.85)],
               "selective+swap": [record(0, 0.91), record(1, 0.82), record(2, 0.88)]}
    entries = paired_comparisons(records, COMPARED)
    deceiving = next(e for e in entries if e["test_set"] == "deceiving" and e["metric"] == "accuracy")
    assert deceiving["differences"] == pytest.approx([0.01, 0.02, 0.03])
    assert deceiving["ci95"] == pytest.approx([0.02 - 0.024841377, 0.02 + 0.024841377])
    sentence = comparison_sentence([e for e in entries if e["method"] == "selective+swap"])
    assert sentence.startswith("selective+swap vs standard+swap: deceiving accuracy +2.0 points (95% CI -0.5 to +4.5)")
    assert "3 seeds, paired by seed" in sentence
    one = paired_comparisons({k: v[:1] for k, v in records.items()}, COMPARED)
    assert comparison_sentence(one).endswith("one seed, no interval.")


def test_report_states_each_rows_swap(tiny_bench):
    out, _ = tiny_bench
    table = (out / "results.md").read_text()
    assert "| method | swap |" in table
    assert "| standard | no |" in table and "| masked | - |" in table and "| masked@unmasked | - |" in table
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["background_swap"] == {"standard": 0.0, "masked": None}
    assert results["paired"] == []  # no pair on equal terms among standard and masked
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["background_swap"] for r in rows if r["method"] == "standard"} == {"0"}
    record = json.loads((out / "runs" / "standard" / "seed0" / "result.json").read_text())
    assert 0.0 <= record["val_accuracy"] <= 1.0


@pytest.mark.e2e
def test_grid_modes_write_their_results(tmp_path):
    from isnet.bench.digits.modes import run_mask_quality, run_swap_dose, run_sweep

    cfg = BiasBenchConfig(seeds=1, n_train=60, n_val=20, n_test=20, epochs=1, threads=1, cue="tint")
    out = tmp_path / "modes"
    sweep = run_sweep(cfg, out, methods=["gradcam"], sweep={"gradcam": ("gradcam_weight", (0.1, 10.0))})
    saved = json.loads((out / "sweep.json").read_text())
    assert set(saved["sweep"]) == {"gradcam", "gradcam+swap"}
    for method, pick in saved["sweep"].items():
        assert set(pick["values"]) == {"0.1", "10"} and pick["selected"] in pick["values"]
        assert pick["oracle"] in pick["values"] and pick["option"] == "gradcam_weight"
        assert all(0.0 <= v["val_accuracy"] <= 1.0 for v in pick["values"].values())
    assert sweep["sweep"]["gradcam+swap"]["background_swap"] == 1.0
    assert "| gradcam+swap | yes | gradcam_weight |" in (out / "sweep.md").read_text()

    dose = run_swap_dose(cfg, out, methods=["standard"], probabilities=(1.0, 0.0))  # reported in order
    assert dose["methods"]["standard"]["probabilities"] == [0.0, 1.0]
    assert len(json.loads((out / "swap_dose.json").read_text())["methods"]["standard"]["deceiving"]) == 2
    assert (out / "figures" / "swap_dose.png").stat().st_size > 1000

    masks = run_mask_quality(cfg, out, methods=["standard+swap"], qualities=("exact", "dilated", "bbox"))
    assert masks["skipped"] == ["bbox"] and set(masks["methods"]["standard+swap"]) == {"exact", "dilated"}
    trained = json.loads((out / "runs-mask-quality" / "standard-swap-dilated" / "seed0" / "config.json").read_text())
    assert trained["train"] == str(out / "data-masks" / "dilated" / "train")
    assert json.loads((out / "data-masks" / "dilated" / "bg-digits.json").read_text())["train_mask"] == "dilated"
    assert (out / "mask_quality.md").is_file() and (out / "mask_quality.json").is_file()


def test_settings_key_changes_with_what_changes_the_network_only(monkeypatch):
    import dataclasses

    import isnet.bench.grid as grid
    from isnet.bench.grid import settings_key
    from isnet.config import TrainConfig

    base = {"train": "t", "val": "v", "objective": "selective", "seed": 0}
    key = settings_key(base, {"n": 10})
    assert settings_key({**base, "C1_zplus": None, "quiet": True, "workers": 3}, {"n": 10}) == key
    assert settings_key({**base, "P": 0.9}, {"n": 10}) != key
    assert settings_key({**base, "P": 1}, {"n": 10}) == settings_key({**base, "P": 1.0}, {"n": 10})  # --set P=1
    assert settings_key({**base, "C1": 1.0, "C2": 2.0}, {"n": 10}) != key
    assert settings_key(base, {"n": 11}) != key
    # an option added by a later version (None unless given) keeps the keys of stored runs
    later = dataclasses.make_dataclass("Later", [("added", float | None, dataclasses.field(default=None))],
                                       bases=(TrainConfig,))
    monkeypatch.setattr(grid, "TrainConfig", later)
    assert settings_key(base, {"n": 10}) == key and settings_key({**base, "added": 0.5}, {"n": 10}) != key


@pytest.mark.e2e
def test_a_moved_bench_folder_keeps_its_runs_and_new_test_data_reevaluate_them(tiny_bench, tmp_path, capsys,
                                                                                 monkeypatch):
    import shutil
    from pathlib import Path

    import isnet.bench.grid as grid
    from isnet.bench.digits.benchmark import BG_DIGITS
    from isnet.cli import main

    out, argv = tiny_bench
    moved = tmp_path / "elsewhere" / "bias"
    shutil.copytree(out, moved, ignore=shutil.ignore_patterns(".isnet.lock"))
    moved_argv = [str(moved) if a == str(out) else a for a in argv]
    trained, keys = [], {}
    monkeypatch.setattr(grid, "_train_run", lambda *a, **k: trained.append(a) or {})
    original_keys = grid.run_keys

    def spy(options, test_key, folder, earlier=()):
        keys[Path(options["out"]).parent.name] = found = original_keys(options, test_key, folder, earlier)
        return found

    monkeypatch.setattr(grid, "run_keys", spy)
    stored = moved / "runs" / "standard" / "seed0" / "result.json"
    before = json.loads(stored.read_text())
    capsys.readouterr()
    assert main(moved_argv) == 0 and capsys.readouterr().out.count("reused stored run") == 2 and not trained
    assert keys["standard"].training == before["training_key"] and keys["standard"].test == before["test_key"]

    # a run stored by an earlier isnet under one key (absolute paths and the test data): reused, given both keys
    legacy = {k: v for k, v in before.items() if k not in ("training_key", "test_key")}
    stored.write_text(json.dumps({**legacy, "settings_key": keys["standard"].legacy[0]}))
    assert main(moved_argv) == 0 and capsys.readouterr().out.count("reused stored run") == 2 and not trained
    assert json.loads(stored.read_text())["training_key"] == before["training_key"]
    stored.write_text(json.dumps({**legacy, "settings_key": "0123456789abcdef"}))  # another earlier run: refused
    assert main(moved_argv) == 2 and "finished runs trained with other settings" in capsys.readouterr().err
    stored.write_text(json.dumps(before))

    # other test data: the stored networks are evaluated again (with their timings), not trained again, also a
    # run stored by an earlier isnet under one key with the test data as that version identified them
    stored.write_text(json.dumps({**legacy, "settings_key": keys["standard"].legacy[0]}))
    earlier = type(BG_DIGITS).test_key
    monkeypatch.setattr(type(BG_DIGITS), "test_key", lambda self, cfg: {**earlier(self, cfg), "another": "test set"})
    monkeypatch.setattr(type(BG_DIGITS), "earlier_test_keys", lambda self, cfg: [earlier(self, cfg)])
    assert main(moved_argv) == 0 and not trained
    assert capsys.readouterr().out.count("stored run evaluated on the new test data") == 2
    after = json.loads(stored.read_text())
    assert after["training_key"] == before["training_key"] and after["test_key"] == keys["standard"].test
    masked = json.loads((moved / "runs" / "masked" / "seed0" / "result.json").read_text())
    assert keys["standard"].test != before["test_key"] and masked["test_key"] == keys["masked"].test
    assert after["train_time_s"] == before["train_time_s"] and after["results"] == before["results"]
    assert main(moved_argv) == 0 and capsys.readouterr().out.count("reused stored run") == 2
    # new test data again, and one network is gone: refused with what to do, nothing trained or deleted
    (moved / "runs" / "standard" / "seed0" / "model.pt").unlink()
    monkeypatch.setattr(type(BG_DIGITS), "test_key", lambda self, cfg: {**earlier(self, cfg), "yet": "another"})
    assert main(moved_argv) == 2 and not trained
    assert "no model.pt to evaluate again; put model.pt back" in capsys.readouterr().err
    assert json.loads(stored.read_text()) == after


def test_swap_dose_probabilities_are_checked(tmp_path):
    from isnet.bench.command import add_parser, run
    from isnet.bench.digits.modes import run_swap_dose
    import argparse

    cfg = BiasBenchConfig(seeds=1, n_train=60, n_val=20, n_test=20, epochs=1, threads=1)
    for bad in ((0.5, 1.5), (0.5, 0.5), ()):
        with pytest.raises(ValueError, match="probabilities must be distinct values in"):
            run_swap_dose(cfg, tmp_path / "dose", methods=["standard"], probabilities=bad)
    assert not (tmp_path / "dose").exists()  # refused before anything is written
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "bias", "--out", str(tmp_path / "x"), "--quick", "--probabilities", "0.1"])
    with pytest.raises(UserError, match="--probabilities sets the swap probabilities of --swap-dose"):
        run(args)
    assert not (tmp_path / "x").exists()


def test_bench_bias_takes_an_architecture():
    from isnet.bench.command import add_parser
    from isnet.bench.digits.presets import QUICK
    from isnet.bench.presets import bench_config
    import argparse

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "bias", "--out", "x", "--quick", "--arch", "small_vit"])
    assert bench_config(BiasBenchConfig, QUICK, vars(args), args.train_options).arch == "small_vit"


def test_test_sets_are_evaluated_at_the_runs_training_size(monkeypatch):
    # a run trained with --set image_size=64 on 32x32 BG-Digits sees its test images resized as its training
    # images were; before, it was scored on 32x32 images and fell to chance
    import torch.nn.functional as F
    from torchvision.transforms import v2

    from isnet.bench.digits.benchmark import BiasTestSet
    import isnet.bench.run as run_module
    from isnet.bench.run import _evaluate_run, at_training_size

    g = torch.Generator().manual_seed(0)
    masks = torch.rand(4, 1, 32, 32, generator=g) > 0.5
    test = BiasTestSet(torch.rand(4, 3, 32, 32, generator=g), masks.float(), torch.arange(4),
                       torch.rand(4, 1, 32, 32, generator=g) > 0.9)
    assert at_training_size(test, None) is test and at_training_size(test, 32) is test
    big = at_training_size(test, 64)
    assert torch.equal(big.labels, test.labels)
    assert torch.equal(big.masks, F.interpolate(test.masks, scale_factor=2, mode="nearest"))
    assert big.patches.dtype == torch.bool
    assert torch.equal(big.patches, F.interpolate(test.patches.float(), scale_factor=2, mode="nearest").bool())
    assert torch.allclose(big.images, v2.Resize((64, 64), antialias=True)(test.images), atol=1e-6)

    seen, audited = [], []
    def evaluate(model, config, t, raw_input=False):
        seen.append(tuple(t.images.shape[-2:]))
        return {}
    monkeypatch.setattr(run_module, "audit_run", lambda model, config, t: audited.append(tuple(t.images.shape[-2:])))
    _evaluate_run(evaluate, {"biased": test}, {}, None, {"objective": "selective", "image_size": 64})
    _evaluate_run(evaluate, {"biased": test}, {}, None, {"objective": "selective", "image_size": None})
    assert seen == audited == [(64, 64), (32, 32)]  # the audit sees the test set as the run's training size


def test_grid_modes_report_spread_and_paired_differences_over_seeds(tmp_path, monkeypatch):
    """With several seeds the dose and mask-quality tables give mean ± sd, and each run is compared seed by seed
    with its reference (standard at the same probability; the same method with exact masks)."""
    import statistics

    import isnet.bench.digits.modes as modes
    from scipy.stats import t

    def value(name: str, seed: int, test: str, metric: str) -> float:  # distinct, reproducible per run and seed
        return (sum(map(ord, f"{name}/{test}/{metric}")) % 97 + 3 * seed * seed) / 100

    def fake_grid(grid, start, log):
        return {name: [{"seed": s, "val_accuracy": value(name, s, "val", "acc"), "train_time_s": 1.0,
                        "step_time_s": 1.0,
                        "results": {test: {m: value(name, s, test, m) for m in ("accuracy", "background_relevance",
                                                                                  "patch_relevance")}
                                    for test in (*TEST_SETS, OCCLUDED)}} for s in range(grid.seeds)]
                for name in grid.methods}

    monkeypatch.setattr(modes, "run_grid", fake_grid)
    cfg = BiasBenchConfig(seeds=3, n_train=40, n_val=20, n_test=20, epochs=1, threads=1)
    dose = modes.run_swap_dose(cfg, tmp_path, methods=["selective", "standard"], probabilities=(0.1, 0.5))
    curve = dose["methods"]["selective"]
    decv = [value("selective:swap=0.5", s, "deceiving", "accuracy") for s in range(3)]
    assert curve["deceiving"][1] == pytest.approx(statistics.mean(decv))
    assert curve["deceiving_std"][1] == pytest.approx(statistics.stdev(decv))
    ref = [value("standard:swap=0.5", s, "deceiving", "accuracy") for s in range(3)]
    diffs = [a - b for a, b in zip(decv, ref)]
    half = t.ppf(0.975, 2) * statistics.stdev(diffs) / 3 ** 0.5
    entry, = [e for e in dose["paired"] if e["method"] == "selective:swap=0.5"
              and (e["test_set"], e["metric"]) == ("deceiving", "accuracy")]
    assert entry["reference"] == "standard:swap=0.5" and entry["mean"] == pytest.approx(statistics.mean(diffs))
    assert entry["ci95"] == pytest.approx([statistics.mean(diffs) - half, statistics.mean(diffs) + half])
    assert {e["method"] for e in dose["paired"]} == {"selective:swap=0.1", "selective:swap=0.5"}
    text = (tmp_path / "swap_dose.md").read_text()
    assert f"{100 * statistics.mean(decv):.1f} ± {100 * statistics.stdev(decv):.1f}" in text
    assert "selective:swap=0.5 vs standard:swap=0.5: deceiving accuracy" in text and "3 seeds, paired by seed" in text

    masks = modes.run_mask_quality(cfg, tmp_path, methods=["rrr+swap"], qualities=("exact", "eroded"))
    assert [(e["method"], e["reference"]) for e in masks["paired"]][:1] == [("rrr+swap:eroded", "rrr+swap:exact")]
    assert "rrr+swap:eroded vs rrr+swap:exact" in (tmp_path / "mask_quality.md").read_text()
