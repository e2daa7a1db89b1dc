"""``isnet demo`` smoke test with tiny sizes (hidden options)."""

from __future__ import annotations

import json

import pytest

from isnet.demo import DEMO, demo_config


def test_demo_is_the_bias_benchmark_with_standard_and_selective():
    cfg = demo_config()
    assert cfg.methods == ["standard", "standard+swap", "selective+swap"] and cfg.seeds == 1
    assert demo_config(epochs=2, n_train=None).epochs == 2
    assert demo_config(n_train=None).n_train == DEMO["n_train"]


@pytest.mark.e2e
def test_demo_cli_prints_table_and_writes_report(tmp_path, capsys):
    from isnet.cli import main

    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--n-train", "120", "--n-val", "20", "--n-test", "20", "--epochs", "1",
            "--threads", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "biased acc" in printed and "deceiving acc" in printed
    assert "standard" in printed and "selective" in printed
    assert "selective+swap vs standard+swap:" in printed and "one seed, no interval" in printed
    assert str(out / "report.html") in printed
    report = (out / "report.html").read_text()
    assert "data:image/png;base64" in report
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"standard", "standard+swap", "selective+swap"}
