"""Reliability (issue 14): nothing a user owns is overwritten, a user's mistake ends in one message
(exit status 2, no traceback), a rejected resume leaves the run folder byte-identical, and
calibration, masks and random weights are not silent."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import digest
from isnet.cli import main
from isnet.data import write_dataset
from isnet.errors import IsnetWarning, UserError

FAST = ["--batch-size", "16", "--workers", "0", "--quiet"]




def _cli(argv: list[str]) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as stop:  # argparse
        return int(stop.code)


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """BG-Digits (32 training images), a finished 2-epoch selective run, and files to get wrong."""
    root = tmp_path_factory.mktemp("reliability")
    data = write_dataset(root / "bg", seed=0, n_train=32, n_val=16, n_test=16)
    run = root / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["train", "--train", str(data["train"]), "--val", str(data["val"]), "--objective", "selective",
                     "--calibrate-epochs", "1", "--epochs", "2", "--out", str(run), *FAST]) == 0
    photos = root / "photos"
    photos.mkdir()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(photos / "a.png")
    Image.fromarray(np.full((40, 48, 3), 30, np.uint8)).save(photos / "b.png")
    zebra = root / "zebra" / "images" / "zebra"
    zebra.mkdir(parents=True)
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(zebra / "z.png")
    from isnet.models import build_model

    torch.save(build_model("small_cnn", 2).state_dict(), root / "cnn2.pt")
    (root / "truncated.pt").write_bytes((root / "cnn2.pt").read_bytes()[:3000])
    (root / "garbage.ckpt").write_bytes(b"not a checkpoint" * 8)
    (root / "empty").mkdir()
    return {"root": root, "data": data, "run": run, "printed": printed.getvalue(), "photos": photos,
            "zebra": root / "zebra"}


def _mistakes(s: dict) -> list[tuple[str, list, str]]:
    """(name, argv, a phrase the message must hold)."""
    run, data, root, photos = s["run"], s["data"], s["root"], s["photos"]
    new = root / "new"  # never created by a refused command
    tr = ["--train", data["train"]]
    return [
        ("explain --out is the input", ["explain", "--arch", "small_cnn", "--images", photos, "--out", photos,
                                        "--image-size", "32"], "contains the input"),
        ("explain --out inside images/", ["explain", "--checkpoint", run, "--images", data["test/biased"], "--out",
                                          data["test/biased"] / "images" / "0" / "heat"], "is inside the input"),
        ("mixed sizes", ["explain", "--arch", "small_cnn", "--images", photos, "--out", new], "--image-size"),
        ("--target out of range", ["explain", "--checkpoint", run, "--images", photos, "--out", new,
                                   "--target", "10"], "--target 10"),
        ("--target foo", ["explain", "--checkpoint", run, "--images", photos, "--out", new, "--target", "foo"],
         "--target"),
        ("--target label, unknown class", ["explain", "--checkpoint", run, "--images", s["zebra"], "--out", new,
                                           "--target", "label"], "zebra"),
        ("--image-size vs trained size", ["explain", "--checkpoint", run, "--images", photos, "--out", new,
                                          "--image-size", "64"], "trained on 32x32"),
        ("--image-size -5", ["explain", "--checkpoint", run, "--images", photos, "--out", new, "--image-size",
                             "-5"], "--image-size"),
        ("--num-classes 0", ["explain", "--arch", "small_cnn", "--num-classes", "0", "--images", photos, "--out",
                             new], "--num-classes"),
        ("--batch-size 0", ["explain", "--checkpoint", run, "--images", photos, "--out", new, "--batch-size", "0"],
         "--batch-size"),
        ("weights of another arch", ["explain", "--arch", "resnet18", "--num-classes", "2", "--weights",
                                     root / "cnn2.pt", "--images", photos / "a.png", "--out", new], "missing"),
        ("weights of another class count", ["explain", "--arch", "small_cnn", "--num-classes", "3", "--weights",
                                            root / "cnn2.pt", "--images", photos / "a.png", "--out", new],
         "another shape"),
        ("truncated weights", ["explain", "--arch", "small_cnn", "--num-classes", "2", "--weights",
                               root / "truncated.pt", "--images", photos / "a.png", "--out", new], "truncated"),
        ("torchvision weights name", ["explain", "--arch", "resnet18", "--weights", "IMAGENET1K_V1", "--images",
                                      photos / "a.png", "--out", new], "torchvision weights name"),
        ("garbage checkpoint", ["explain", "--checkpoint", root / "garbage.ckpt", "--images", photos, "--out", new],
         "not a PyTorch file"),
        ("--checkpoint with another --arch", ["explain", "--checkpoint", run, "--arch", "resnet18", "--images",
                                              photos, "--out", new], "--arch resnet18"),
        ("--checkpoint with --normalize", ["explain", "--checkpoint", run, "--normalize", "imagenet", "--images",
                                           photos, "--out", new], "--normalize"),
        ("--devices 0", ["train", *tr, "--out", new, "--accelerator", "cpu", "--devices", "0", *FAST], "--devices"),
        ("--num-nodes 2 without a launcher", ["train", *tr, "--out", new, "--accelerator", "cpu", "--num-nodes", "2",
                                              *FAST], "MASTER_ADDR"),
        ("--image-size -5 (train)", ["train", *tr, "--out", new, "--image-size", "-5"], "--image-size"),
        ("--workers -1", ["train", *tr, "--out", new, "--workers", "-1"], "--workers"),
        ("unknown --arch", ["train", *tr, "--out", new, "--arch", "resnet999", *FAST], "resnet999"),
        ("resume below the completed epochs", ["train", "--resume", "--out", run, "--epochs", "1", "--quiet"],
         "2 epochs"),
        ("resume a finished run", ["train", "--resume", "--out", run, "--quiet"], "nothing to resume"),
        ("resume with another --lr and --train", ["train", "--resume", "--out", run, "--lr", "0.1", "--train",
                                                  data["test/biased"], "--epochs", "3"], "--lr 0.1"),
        ("train into a finished run", ["train", *tr, "--out", run, *FAST], "finished"),
        ("--overwrite a finished run", ["train", *tr, "--out", run, "--overwrite", *FAST], "never replaces"),
        ("--resume --overwrite", ["train", "--resume", "--overwrite", "--out", run], "give one of them"),
        ("resume where nothing ran", ["train", "--resume", "--out", root / "empty"], "nothing to resume"),
        ("eval --json is a folder", ["eval", "--checkpoint", run, "--test", f"b={data['test/biased']}",
                                     "--json", root / "empty"], "is a folder"),
        ("eval --json over an image", ["eval", "--checkpoint", run, "--test", f"b={data['test/biased']}",
                                       "--json", photos / "a.png"], "not a JSON file"),
        ("eval --device foo", ["eval", "--checkpoint", run, "--test", f"b={data['test/biased']}", "--device", "foo"],
         "--device"),
        ("eval --workers -1", ["eval", "--checkpoint", run, "--test", f"b={data['test/biased']}", "--workers", "-1"],
         "--workers"),
    ] + ([] if torch.cuda.is_available() else [
        ("--accelerator gpu without a GPU", ["train", *tr, "--out", new, "--accelerator", "gpu", *FAST], "GPU"),
        ("eval --device cuda without a GPU", ["eval", "--checkpoint", run, "--test", f"b={data['test/biased']}",
                                              "--device", "cuda"], "no CUDA GPU"),
    ])


@pytest.mark.e2e
def test_a_table_of_user_mistakes_ends_in_one_message_and_changes_nothing(space, capsys, monkeypatch):
    for name in ("MASTER_ADDR", "NODE_RANK", "WORLD_SIZE", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID", "LSB_JOBID",
                 "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        monkeypatch.delenv(name, raising=False)
    watched = [space["data"]["train"].parent, space["run"], space["photos"], space["zebra"], space["root"] / "empty"]
    before = digest(*watched)
    capsys.readouterr()
    failures = []
    for name, argv, phrase in _mistakes(space):
        code = _cli(argv)
        out, err = capsys.readouterr()
        if code != 2 or "Traceback" in out + err or phrase not in err or "error:" not in err:
            failures.append(f"{name}: exit {code}, stderr {err[-400:]!r}")
        if digest(*watched) != before or (space["root"] / "new").exists():
            failures.append(f"{name}: changed a file or created the output")
            break
    assert not failures, "\n".join(failures)


def test_a_bug_keeps_its_traceback_and_a_user_error_does_not(monkeypatch, tmp_path, capsys):
    import isnet.explain_files

    def broken(**kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(isnet.explain_files, "explain_files", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["explain", "--arch", "small_cnn", "--images", str(tmp_path), "--out", str(tmp_path / "o")])

    def mistake(**kwargs):
        raise UserError("--thing is wrong")

    monkeypatch.setattr(isnet.explain_files, "explain_files", mistake)
    assert main(["explain", "--arch", "small_cnn", "--images", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == "isnet explain: error: --thing is wrong"


@pytest.mark.e2e
def test_ctrl_c_in_training_says_how_to_continue_and_the_run_resumes(space, tmp_path, capsys, monkeypatch):
    from lightning.pytorch.callbacks import Callback

    fit_module = importlib.import_module("isnet.training.fit")  # the module (isnet.training.fit is the function)

    class CtrlC(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise KeyboardInterrupt

    real = fit_module._checkpoints
    monkeypatch.setattr(fit_module, "_checkpoints", lambda run, monitored: [*real(run, monitored), CtrlC()])
    run = tmp_path / "run"
    args = ["train", "--train", str(space["data"]["train"]), "--objective", "standard", "--epochs", "2",
            "--out", str(run), *FAST]
    assert main(args) == 130
    assert "isnet train: interrupted; continue the run with --resume" in capsys.readouterr().err
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "model.pt").exists()
    monkeypatch.setattr(fit_module, "_checkpoints", real)
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0 and (run / "model.pt").is_file()


def test_calibration_is_printed_and_the_config_records_the_values_used(space):
    printed = space["printed"]
    config = json.loads((space["run"] / "config.json").read_text())
    assert "calibrating C1 (C2 is recorded, unused with --foreground floor)" in printed  # the defaults: B 1, floor
    assert f"C1 = {config['C1']:.4g}, C2 = {config['C2']:.4g}" in printed
    assert config["background_swap"] == 1.0  # the selective default, not null
    # the last epoch: of --epochs 2, the warm start's calibration took 1
    assert config["calibration"]["epochs"] == 1 and config["warm_start"]
    assert torch.load(space["run"] / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0


@pytest.mark.e2e
def test_every_input_gets_its_own_heatmap_and_foreign_files_are_kept(tmp_path, capsys):
    images = tmp_path / "in"
    for name, value in (("003.png", 40), ("003.jpg", 200), ("004.png", 90)):
        folder = images / ("1" if name == "004.png" else "0")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(folder / name)
    out = tmp_path / "out"
    args = ["explain", "--arch", "small_cnn", "--num-classes", "2", "--images", images, "--out", out]
    assert _cli(args) == 0
    printed = capsys.readouterr()
    assert "wrote 3 heatmaps" in printed.out
    assert "isnet explain: warning: --arch small_cnn without --weights" in printed.err  # random weights
    listed = json.loads((out / "heatmaps.json").read_text())
    pngs = sorted(entry["heatmap"] for entry in listed)
    assert pngs == ["0/003-jpg.png", "0/003-png.png", "1/004.png"]
    assert all((out / e["heatmap"]).is_file() and (out / e["relevance"]).is_file() for e in listed)
    assert _cli(args) == 0  # its own files may be replaced
    Image.fromarray(np.full((16, 16, 3), 7, np.uint8)).save(images / "1" / "005.png")
    (out / "1" / "005.npy").write_text("mine")  # the user's file where the new image's heatmap would go
    capsys.readouterr()
    assert _cli(args) == 2
    assert "isnet did not write" in capsys.readouterr().err and (out / "1" / "005.npy").read_text() == "mine"


def test_explain_with_the_zplus_rule_writes_lrpflex_zplus_relevance(tmp_path):
    from isnet import LRPFlex
    from isnet.models import build_model

    torch.manual_seed(0)
    model = build_model("small_cnn", 2, image_size=16).eval()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    images = tmp_path / "in"
    images.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(images / "a.png")
    out = tmp_path / "out"
    assert _cli(["explain", "--arch", "small_cnn", "--num-classes", "2", "--weights", tmp_path / "w.pt",
                 "--rule", "z+", "--images", images, "--out", out]) == 0
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    expected = LRPFlex(model, rule="z+").explain(x, "argmax")[0]
    written = torch.from_numpy(np.load(out / "a.npy"))
    scale = expected.abs().max()
    assert scale > 0 and (written - expected).abs().max() < 1e-5 * scale
    assert (written - LRPFlex(model).explain(x, "argmax")[0]).abs().max() > 0.1 * scale  # not LRP-epsilon


@pytest.mark.e2e
def test_a_start_that_failed_on_a_truncated_image_restarts_with_overwrite(space, tmp_path, capsys):
    train = tmp_path / "train"
    shutil.copytree(space["data"]["train"], train)
    victim = sorted((train / "images" / "0").iterdir())[0]
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])  # the header is intact: the scan passes, loading fails
    run = tmp_path / "run"
    argv = ["train", "--train", train, "--objective", "standard", "--epochs", "1", "--out", run, *FAST]
    assert _cli(argv) == 2
    err = capsys.readouterr().err
    assert str(victim) in err and "--overwrite" in err and "Traceback" not in err
    assert _cli(argv) == 2 and "--overwrite" in capsys.readouterr().err  # the unfinished run blocks a plain start
    victim.write_bytes(good)
    assert _cli([*argv, "--overwrite"]) == 0
    assert "--overwrite: removed" in capsys.readouterr().out and (run / "model.pt").is_file()


def test_masks_without_foreground_or_background_and_jpeg_masks_are_reported(space, tmp_path):
    from isnet.training import MaskedDataModule

    train = tmp_path / "train"
    shutil.copytree(space["data"]["train"], train)
    masks = sorted((train / "masks").rglob("*.png"))
    for path in masks[:2]:
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(path)
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(masks[2])
    Image.open(masks[3]).convert("L").save(masks[3].with_suffix(".jpg"))
    masks[3].unlink()
    with pytest.warns(IsnetWarning) as seen:
        MaskedDataModule(train, batch_size=16, workers=0)
    messages = [str(w.message) for w in seen]
    assert any("2 of 32 masks" in m and "no foreground" in m for m in messages)
    assert any("1 of 32 masks" in m and "no background" in m for m in messages)
    assert any("JPEG" in m for m in messages)


def test_option_ranges_name_the_option():
    from isnet.config import TrainConfig

    for values, phrase in (({"workers": -1}, "--workers must be >= 0, got -1"),
                           ({"image_size": 0}, "--image-size must be >= 1"),
                           ({"P": 1.5}, "--P must be in [0, 1]"),
                           ({"devices": 0}, "--devices"),
                           ({"C1": 2.0, "C2": 1.0}, "--c1 <= --c2")):
        with pytest.raises(UserError, match=phrase.replace("[", r"\[").replace("]", r"\]")):
            TrainConfig(train="x", **values).validate()
