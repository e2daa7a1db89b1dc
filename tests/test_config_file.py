"""``--config FILE`` and ``--print-config`` of ``isnet train`` and ``isnet segment train`` (isnet.config_file)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import isnet.segment.train
import isnet.training
from isnet.cli import main
from isnet.config import TrainConfig
from isnet.data import write_dataset
from isnet.segment.config import SegmentConfig


@pytest.fixture
def seen(monkeypatch) -> dict:
    """The options ``isnet train`` and ``isnet segment train`` pass on (training replaced by a stand-in)."""
    received: dict = {}
    monkeypatch.setattr(isnet.training, "fit", lambda config: received.update(config) or config["out"])
    monkeypatch.setattr(isnet.segment.train, "fit_segmenter", lambda config: received.update(config) or config["out"])
    return received


def test_print_config_lists_every_option_and_reads_back_as_a_config(tmp_path, capsys, seen):
    assert main(["train", "--print-config", "--epochs", "5", "--devices", "0,1", "--deep-supervision", "6", "10",
                 "--c1", "2", "--c2", "30"]) == 0
    printed = capsys.readouterr().out
    values = yaml.safe_load(printed)
    options = {f for f, field in TrainConfig.__dataclass_fields__.items() if "help" in field.metadata}
    assert set(values) == options  # every option, none of the resolved fields
    expected = TrainConfig.from_dict({"epochs": 5, "devices": [0, 1], "deep_supervision": ["6", "10"], "C1": 2,
                                      "C2": 30}).to_dict()
    assert values == {k: expected[k] for k in options}
    assert "# optimisation" in printed and not seen  # grouped as in --help; nothing trained
    config = tmp_path / "printed.yaml"
    config.write_text(printed)
    assert main(["train", "--config", str(config), "--print-config"]) == 0
    assert capsys.readouterr().out == printed
    assert main(["segment", "train", "--print-config", "--depth", "3"]) == 0
    segment = yaml.safe_load(capsys.readouterr().out)
    assert segment["depth"] == 3 and segment["out"] == SegmentConfig().out and "objective" not in segment


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_flags_override_the_file(tmp_path, seen, suffix):
    config = tmp_path / f"recipe{suffix}"
    values = {"train": "data/train", "out": "runs/a", "epochs": 4, "lr": 0.01, "objective": "stochastic"}
    config.write_text(json.dumps(values) if suffix == ".json" else yaml.safe_dump(values))
    assert main(["train", "--config", str(config), "--epochs", "6", "--out", "runs/b"]) == 0
    assert seen == {**values, "epochs": 6, "out": "runs/b"}
    seen.clear()
    (tmp_path / "seg.yaml").write_text("train: data/train\nout: seg\ndepth: 3\n")
    assert main(["segment", "train", "--config", str(tmp_path / "seg.yaml"), "--width", "8"]) == 0
    assert seen == {"train": "data/train", "out": "seg", "depth": 3, "width": 8}


def test_yaml_values_are_read_as_their_options_expect(tmp_path, seen):
    config = tmp_path / "recipe.yaml"
    config.write_text("train: t\nout: o\nlr: 1e-3\nP: 1\ndeep_supervision: [6, 10]\ngradcam_layer: 7\n")
    assert main(["train", "--config", str(config)]) == 0  # PyYAML reads 1e-3 as text, 1 as an integer
    assert seen == {"train": "t", "out": "o", "lr": 0.001, "P": 1.0, "deep_supervision": ["6", "10"],
                    "gradcam_layer": "7"}
    assert isinstance(seen["P"], float)


@pytest.mark.parametrize("text, message", [
    ("batch-size: 8\n", "'batch-size' is not an option of isnet train (did you mean batch_size?)"),
    ("width: 8\n", "'width' is not an option of isnet train"),
    ("epochs: ten\n", "epochs must be an integer, got 'ten'"),
    ("norm: yes\n", "quote the text"),
    ("- train\n", "must hold a mapping"),
    ("epochs: [1\n", "is not valid YAML"),
    ("P: 2\nout: o\ntrain: t\n", None),  # out of range: reported when training starts (fit validates)
])
def test_a_bad_file_is_one_message_naming_the_key(tmp_path, capsys, seen, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    if message is None:
        assert main(["train", "--config", str(config), "--print-config"]) == 2
        assert "--P must be in [0, 1], got 2" in capsys.readouterr().err
        return
    assert main(["train", "--config", str(config), "--out", "o", "--train", "t"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("isnet train: error: ") and message in err and not seen


def test_out_and_train_are_required_from_the_file_or_the_command_line(tmp_path, capsys, seen):
    assert main(["train", "--train", "t"]) == 2
    assert "--out is required" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.yaml"), "--out", "o"]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "resume.yaml").write_text("out: o\nresume: true\nepochs: 9\n")
    assert main(["train", "--config", str(tmp_path / "resume.yaml")]) == 0
    assert seen == {"out": "o", "resume": True, "epochs": 9}


def test_a_runs_config_json_reruns_it_without_what_training_resolved(tmp_path, seen):
    """Resolved fields, the calibrated bounds and how the run was started are left out; given bounds stay."""
    recorded = {**TrainConfig(train="t", out="old", objective="dual", C1_zplus=0.5, C2_zplus=9.0).to_dict(),
                "C1": 1.5, "C2": 4.2, "classes": ["a", "b"], "num_classes": 2, "resume": True,
                "calibration": {"C1": 1.5, "C2": 4.2, "mean": 2.8, "std": 0.4, "n": 64, "epochs": 2}}
    config = tmp_path / "config.json"
    config.write_text(json.dumps(recorded))
    assert main(["train", "--config", str(config), "--out", "new"]) == 0
    dropped = {"C1", "C2", "classes", "num_classes", "calibration", "resume", "overwrite"}
    assert seen == {**{k: v for k, v in recorded.items() if k not in dropped}, "out": "new"}
    assert seen["epochs"] == 30 and seen["C1_zplus"] == 0.5
    seen.clear()
    segment = {**SegmentConfig(train="t", out="seg").to_dict(), "image_size": 32}
    (tmp_path / "seg.json").write_text(json.dumps(segment))
    assert main(["segment", "train", "--config", str(tmp_path / "seg.json"), "--out", "seg2"]) == 0
    assert "objective" not in seen and seen["image_size"] == 32 and seen["out"] == "seg2"


@pytest.mark.e2e
def test_a_run_trained_again_from_its_config_json_gives_the_same_model(tmp_path, capsys):
    data = write_dataset(tmp_path / "bg", seed=0, n_train=32, n_val=16, n_test=8)
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["train", "--train", str(data["train"]), "--val", str(data["val"]), "--objective", "selective",
                 "--calibrate-epochs", "1", "--epochs", "2", "--batch-size", "16", "--workers", "0", "--quiet",
                 "--out", str(first)]) == 0
    capsys.readouterr()
    assert main(["train", "--config", str(first / "config.json"), "--out", str(second)]) == 0
    assert "is not used by --objective" not in capsys.readouterr().out  # options at their defaults are not flagged
    a, b = (json.loads((run / "config.json").read_text()) for run in (first, second))
    assert {k for k in a if a[k] != b[k]} == {"out"}  # calibrated again, to the same bounds
    weights = [torch.load(run / "model.pt", weights_only=True) for run in (first, second)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
