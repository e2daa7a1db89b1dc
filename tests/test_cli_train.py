"""Tests for the ``isnet train`` and ``isnet eval`` commands (in process, and a 2-process DDP run)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import require
from isnet.cli import main
from isnet.data import write_dataset

FAST = ["--epochs", "1", "--batch-size", "32", "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("bgd") / "bg", seed=0, n_train=64, n_val=32, n_test=32)


def test_train_arguments_map_to_the_training_config(monkeypatch, capsys):
    import isnet.training

    seen = {}
    monkeypatch.setattr(isnet.training, "fit", lambda config: seen.update(config) or config["out"])
    assert main(["train", "--train", "tr", "--val", "va", "--out", "run", "--objective", "stochastic", "--P", "0.5",
                 "--c1", "2", "--c2", "30", "--no-zb", "--deep-supervision", "--devices", "2",
                 "--no-deterministic", "--p-warmup", "3", "--schedule", "cosine"]) == 0
    assert seen == {"train": "tr", "val": "va", "out": "run", "objective": "stochastic", "P": 0.5, "C1": 2.0,
                    "C2": 30.0, "zb": False, "deep_supervision": True, "devices": 2, "deterministic": False,
                    "p_warmup": 3.0, "schedule": "cosine"}
    seen.clear()
    assert main(["train", "--out", "run", "--resume", "--epochs", "5", "--deep-supervision", "layer1"]) == 0
    assert seen == {"out": "run", "resume": True, "epochs": 5, "deep_supervision": ["layer1"]}
    assert main(["train", "--out", "run"]) == 2
    assert "--train is required" in capsys.readouterr().err


def test_train_help_is_generated_from_the_config(capsys):
    """Every documented TrainConfig field is an option whose help states the field's default."""
    import argparse
    import dataclasses

    from isnet.cli import build_parser
    from isnet.config import TrainConfig
    from isnet.objectives import objective_names

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    actions = {a.dest: a for a in sub.choices["train"]._actions if a.help != argparse.SUPPRESS}  # not --variant
    for f in dataclasses.fields(TrainConfig):
        if "help" not in f.metadata:
            assert f.metadata.get("resolved") and f.name not in actions, f.name
            continue
        action = actions[f.name]
        assert (f.metadata["flag"] or "--" + f.name.replace("_", "-")) in action.option_strings
        assert action.default is None  # so that a resumed run can tell what was given
        if isinstance(f.default, bool):
            assert action.help.endswith(f"(default {'on' if f.default else 'off'})"), f.name
        elif f.default is not None:
            assert action.help.endswith(f"(default {f.default})"), f.name
    objective_help = actions["objective"].help
    assert all(name in objective_help for name in objective_names())
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert f"(default {TrainConfig().P})" in " ".join(capsys.readouterr().out.split())


@pytest.mark.e2e
def test_train_resume_and_eval(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--train", str(data["train"]), "--val", str(data["val"]), "--objective", "standard",
                 "--out", str(run), *FAST]) == 0
    assert (run / "model.pt").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--quiet"]) == 0
    assert json.loads((run / "config.json").read_text())["epochs"] == 2
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4  # 2 epochs x 2
    capsys.readouterr()

    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(run), "--test", f"biased={data['test/biased']}",
                 "--test", f"deceiving={data['test/deceiving']}", "--json", str(out), "--batch-size", "16"]) == 0
    printed = capsys.readouterr().out
    assert "biased" in printed and "deceiving" in printed and "accuracy" in printed
    results = json.loads(out.read_text())
    for name in ("biased", "deceiving"):
        assert {"accuracy", "macro_f1", "auroc", "background_relevance", "confusion_matrix", "n"} <= set(results[name])
        assert results[name]["n"] == 32 and 0 <= results[name]["background_relevance"] <= 1

    assert main(["eval", "--checkpoint", str(run), "--test", "nodir"]) == 2
    assert "NAME=DIR" in capsys.readouterr().err


@pytest.mark.e2e
@pytest.mark.parametrize("arch, objective", [("small_vit", "selective"), ("small_convnext", "stochastic"),
                                           ("small_vit", "dual"), ("small_convnext", "original"),
                                           ("timm:vit_tiny_patch16_224", "selective")])
def test_train_and_eval_a_transformer_and_a_modern_cnn(data, tmp_path, arch, objective):
    """ISNets train through the CLI on a ViT (GELU, LayerNorm, attention) and a ConvNeXt (LayerNorm stem, GELU)."""
    run = tmp_path / arch
    assert main(["train", "--train", str(data["train"]), "--val", str(data["val"]), "--objective", objective,
                 "--arch", arch, "--calibrate-epochs", "1", "--out", str(run), *FAST]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["arch"] == arch and 0 < config["C1"] < config["C2"]
    with open(run / "metrics.csv", newline="") as f:
        shares = [float(row["val/bg_share"]) for row in csv.DictReader(f) if row["val/bg_share"]]
    assert len(shares) == 1 and 0 <= shares[0] <= 1
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(run), "--test", f"biased={data['test/biased']}", "--json", str(out)]) == 0
    assert 0 <= json.loads(out.read_text())["biased"]["background_relevance"] <= 1


@pytest.mark.e2e
def test_missing_mask_fails_before_training(data, tmp_path, capsys):
    train = tmp_path / "train"
    shutil.copytree(data["train"], train)
    victim = sorted((train / "masks" / "3").iterdir())[0]
    victim.unlink()
    run = tmp_path / "run"
    assert main(["train", "--train", str(train), "--val", str(data["val"]), "--objective", "selective",
                 "--out", str(run), *FAST]) == 2
    err = capsys.readouterr().err
    assert "has no mask" in err and str(train / "images" / "3" / victim.name) in err
    assert not (run / "checkpoints").exists() and not (run / "config.json").exists()


@pytest.mark.e2e
def test_diverging_run_stops_with_a_message(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--train", str(data["train"]), "--objective", "selective", "--c1", "1", "--c2", "25",
                 "--lr", "1e30", "--out", str(run), *FAST]) == 2
    err = capsys.readouterr().err
    assert "training diverged" in err and "--lr" in err
    assert not (run / "model.pt").exists()


@pytest.mark.e2e
def test_ddp_two_processes_on_cpu(data, tmp_path):
    """``--strategy ddp --devices 2``: Lightning relaunches the command; calibration and training both run."""
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "isnet.cli", "train", "--train", str(data["train"]), "--val", str(data["val"]),
           "--objective", "selective", "--calibrate-epochs", "1", "--epochs", "1", "--batch-size", "16",
           "--workers", "0", "--quiet", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp",
           "--out", str(run)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run written to") == 1
    config = json.loads((run / "config.json").read_text())
    assert 0 < config["C1"] < config["C2"] and config["devices"] == 2 and config["calibration"]["n"] == 64
    for name in ("checkpoints/last.ckpt", "checkpoints/best.ckpt", "model.pt", "metrics.csv"):
        assert (run / name).is_file(), name
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2  # 64 images / (2 processes x 16) per epoch
    assert "val/bg_share" in (run / "metrics.csv").read_text().splitlines()[0]


@pytest.mark.e2e
@pytest.mark.parametrize("logger", ["tensorboard", "mlflow"])
def test_loggers_keep_metrics_csv_and_receive_heatmap_pictures(data, tmp_path, logger):
    """``--logger tensorboard|mlflow``: metrics.csv is still written; each epoch logs a picture of val heatmaps."""
    require(logger)
    run = tmp_path / "run"
    assert main(["train", "--train", str(data["train"]), "--val", str(data["val"]), "--objective", "standard",
                 "--logger", logger, "--log-images", "3", "--out", str(run), *FAST]) == 0
    assert "val/acc" in (run / "metrics.csv").read_text().splitlines()[0]
    if logger == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
        events.Reload()
        assert "val/heatmaps" in events.Tags()["images"] and "val/acc" in events.Tags()["scalars"]
        picture = events.Images("val/heatmaps")[0]
        assert (picture.width, picture.height) == (3 * 32, 2 * 32)  # 3 images above their heatmaps
    else:
        pictures = list((run / "mlruns").rglob("heatmaps/epoch_000.png"))
        assert len(pictures) == 1 and list((run / "mlruns").rglob("metrics/val/acc"))
