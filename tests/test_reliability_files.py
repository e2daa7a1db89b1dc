"""Reliability, second round (issue 25): files the user owns, concurrent runs, full or read-only disks,
worker tracebacks and wrapped state dicts. One test per class of fault; each checks the exit status, that no
traceback is printed, that the message names the file and what to do, and the checksums of the user's files."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import digest
from isnet.cli import main
from isnet.data import write_dataset
from isnet.errors import IsnetWarning
from isnet.locks import LOCK, FolderLock
from isnet.outputs import LEDGER

FAST = ["--batch-size", "16", "--workers", "0", "--quiet"]




def _cli(argv: list) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as stop:  # argparse
        return int(stop.code)


def _refused(capsys, argv: list, *phrases: str) -> str:
    """Run a command that must end in one error message holding ``phrases``; returns the message."""
    code = _cli(argv)
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in out + err and err.startswith("isnet "), (code, err)
    assert len(err.strip().splitlines()) == 1, err
    for phrase in phrases:
        assert phrase in err, (phrase, err)
    return err


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """BG-Digits (20 training images), a finished 1-epoch standard run written under umask 022, two photos."""
    root = tmp_path_factory.mktemp("files")
    data = write_dataset(root / "bg", seed=0, n_train=20, n_val=10, n_test=10)
    old = os.umask(0o022)
    try:
        assert main(["train", "--train", str(data["train"]), "--objective", "standard", "--epochs", "1",
                     "--out", str(root / "run"), *FAST]) == 0
    finally:
        os.umask(old)
    for name, value in (("a", 90), ("b", 30)):
        (root / "photos" / name).mkdir(parents=True)
        Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(root / "photos" / name / f"{name}.png")
    torch.save(torch.load(root / "run" / "model.pt", weights_only=True), root / "cnn.pt")
    return {"root": root, "data": data, "run": root / "run", "photos": root / "photos"}


def _explain(space: dict, images: Path, out: Path) -> list:
    return ["explain", "--arch", "small_cnn", "--num-classes", "10", "--weights", space["root"] / "cnn.pt",
            "--images", images, "--out", out]


@pytest.mark.e2e
def test_files_the_user_owns_are_never_replaced(space, tmp_path, capsys, monkeypatch):
    run, data, photos = space["run"], space["data"], space["photos"]
    biased = f"b={data['test/biased']}"
    # eval --json: only a file isnet wrote as an evaluation result is replaced
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"cat": 0, "dog": 1}))
    mine = digest(labels)
    _refused(capsys, ["eval", "--checkpoint", run, "--test", biased, "--json", labels, "--no-relevance"],
             str(labels), "isnet did not write it", "give another file name")
    _refused(capsys, ["segment", "eval", "--model", tmp_path / "none", "--test", biased, "--json", labels],
             str(labels), "isnet did not write it")
    _refused(capsys, ["eval", "--checkpoint", run, "--test", biased, "--json", run / "config.json"],
             "config.json", "isnet did not write it")
    result = tmp_path / "eval.json"
    for _ in range(2):  # a new file, then isnet's own result again
        assert _cli(["eval", "--checkpoint", run, "--test", biased, "--json", result, "--no-relevance"]) == 0
    assert digest(labels) == mine and json.loads(result.read_text())["b"]["n"] == 10
    assert json.loads((tmp_path / LEDGER).read_text())["files"] == {"eval.json": "evaluation"}

    # bench and demo refuse a folder holding the user's results before any work
    bench = tmp_path / "bench"
    bench.mkdir()
    for name in ("results.md", "report.html"):
        (bench / name).write_text(f"my own {name}\n")
    mine = digest(bench)
    _refused(capsys, ["bench", "bias", "--out", bench, "--quick"], str(bench), "isnet did not write")
    _refused(capsys, ["demo", "--out", bench], str(bench), "isnet did not write")
    assert digest(bench) == mine and sorted(p.name for p in bench.iterdir()) == ["report.html", "results.md"]

    # train --overwrite deletes only what a run writes
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished)
    (unfinished / "model.pt").unlink()
    (unfinished / "checkpoints" / "colleague.ckpt").write_bytes(b"a colleague's weights")
    (unfinished / "tensorboard").mkdir()
    (unfinished / "tensorboard" / "notes.txt").write_text("my notes")
    (unfinished / "tensorboard" / "events.out.tfevents.1.host.1.0").write_bytes(b"isnet's events")
    kept = digest(unfinished / "checkpoints" / "colleague.ckpt", unfinished / "tensorboard" / "notes.txt")
    capsys.readouterr()
    assert _cli(["train", "--train", data["train"], "--objective", "standard", "--epochs", "1", "--out", unfinished,
                 "--overwrite", *FAST]) == 0
    assert "--overwrite: removed" in capsys.readouterr().out
    assert digest(*map(Path, kept)) == kept and (unfinished / "model.pt").is_file()
    assert not (unfinished / "tensorboard" / "events.out.tfevents.1.host.1.0").exists()

    # explain: a second run into the same folder adds to heatmaps.json; a run cut short may be run again
    out = tmp_path / "heat"
    assert _cli(_explain(space, photos / "a", out)) == 0
    assert _cli(_explain(space, photos / "b", out)) == 0
    assert sorted(e["heatmap"] for e in json.loads((out / "heatmaps.json").read_text())) == ["a.png", "b.png"]
    import isnet.figures

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    cut = tmp_path / "cut"
    monkeypatch.setattr(isnet.figures, "save_figure", ctrl_c)
    assert _cli(_explain(space, photos, cut)) == 130  # a/a.npy written, not yet listed
    assert (cut / "a" / "a.npy").is_file() and json.loads((cut / "heatmaps.json").read_text()) == []
    monkeypatch.undo()
    capsys.readouterr()
    assert _cli(_explain(space, photos, cut)) == 0 and len(json.loads((cut / "heatmaps.json").read_text())) == 2

    # the out-of-input guard follows links: A/images is a link to the dataset's images
    linked = tmp_path / "A"
    linked.mkdir()
    os.symlink(data["test/biased"] / "images", linked / "images", target_is_directory=True)
    before = digest(data["test/biased"])
    _refused(capsys, [*_explain(space, linked, data["test/biased"] / "images" / "heat")], "is inside the input",
             "through the link")
    assert digest(data["test/biased"]) == before and not (data["test/biased"] / "images" / "heat").exists()


def test_one_run_at_a_time_per_folder_and_a_dead_holder_is_taken_over(space, tmp_path, capsys):
    data = space["data"]
    held = tmp_path / "held"
    train = ["train", "--train", data["train"], "--objective", "standard", "--epochs", "1", "--out", held, *FAST]
    with FolderLock(held, "isnet train"):  # another process would hold it the same way
        _refused(capsys, train, str(held), "in use by isnet train (process", "choose another output folder")
        _refused(capsys, _explain(space, space["photos"], held), "in use by isnet train")
        _refused(capsys, ["bench", "bias", "--out", held, "--quick"], "in use by isnet train")
        _refused(capsys, ["data", "bg-digits", "--out", held, "--n-train", "10"], "in use by isnet train")
        assert sorted(p.name for p in held.iterdir()) == [LOCK]  # the refused runs wrote nothing
    assert not held.exists()  # the lock created the folder, and removed it empty
    assert main(["data", "bg-digits", "--out", str(held), "--n-train", "10", "--n-val", "10", "--n-test", "10"]) == 0
    assert (held / "bg-digits.json").is_file() and not (held / LOCK).exists()  # a dataset writer holds it too

    # a holder killed without releasing: the OS drops its lock, the next run says so and takes over
    crashed = tmp_path / "crashed"
    code = (f"import os; from isnet.locks import FolderLock; FolderLock({str(crashed)!r}, 'isnet explain').acquire(); "
            "os.kill(os.getpid(), 9)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == -9
    assert "isnet explain" in (crashed / LOCK).read_text()
    with pytest.warns(IsnetWarning, match="no longer running"):
        FolderLock(crashed, "isnet train").acquire().release()
    assert not (crashed / LOCK).exists()


def test_only_the_launching_process_of_a_ddp_run_takes_the_lock(monkeypatch):
    from isnet.config import TrainConfig
    from isnet.training import run_folder

    assert run_folder.run_folder({"config": {"out": "runs/x"}}) == "runs/x"
    assert run_folder.run_folder({"config": TrainConfig(out="runs/y")}) == "runs/y"
    monkeypatch.setenv("NODE_RANK", "1")  # another node of a multi-node run
    assert run_folder.run_folder({"config": {"out": "runs/x"}}) is None


def _failing_replace(monkeypatch, suffix: str, code: int) -> None:
    """``os.replace`` onto a file ending in ``suffix`` fails as a full (ENOSPC) or read-only (EROFS) disk does."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith(suffix):
            raise OSError(code, os.strerror(code))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def _no_temporary_files(folder: Path) -> bool:
    return not any(p.name.endswith(".tmp") for p in folder.rglob(".*"))


@pytest.mark.e2e
def test_a_full_or_read_only_disk_is_one_message_and_never_a_truncated_file(space, tmp_path, capsys, monkeypatch):
    run, data = space["run"], space["data"]
    biased = f"b={data['test/biased']}"
    assert (run / "config.json").stat().st_mode & 0o777 == 0o644  # written under umask 022
    result = tmp_path / "eval.json"
    old = os.umask(0o027)
    try:
        assert _cli(["eval", "--checkpoint", run, "--test", biased, "--json", result, "--no-relevance"]) == 0
    finally:
        os.umask(old)
    assert result.stat().st_mode & 0o777 == 0o640
    earlier = digest(result)

    _failing_replace(monkeypatch, "eval.json", errno.ENOSPC)
    _refused(capsys, ["eval", "--checkpoint", run, "--test", biased, "--json", result, "--no-relevance"],
             f"cannot write {result}", "the disk is full", "free space", "run the command again")
    assert digest(result) == earlier and _no_temporary_files(tmp_path)

    monkeypatch.undo()
    _failing_replace(monkeypatch, ".npy", errno.EROFS)
    out = tmp_path / "heat"
    _refused(capsys, _explain(space, space["photos"], out), ".npy", "read-only", "writable")
    assert not list(out.rglob("*.npy")) and _no_temporary_files(out)
    monkeypatch.undo()
    assert _cli(_explain(space, space["photos"], out)) == 0  # the rerun may replace what the first began

    train = ["train", "--train", data["train"], "--objective", "standard", "--epochs", "1", *FAST]
    _failing_replace(monkeypatch, "best.ckpt", errno.ENOSPC)
    unfinished = tmp_path / "run"
    _refused(capsys, [*train, "--out", unfinished], "best.ckpt", "the disk is full", "--resume")
    assert not list((unfinished / "checkpoints").iterdir()) and _no_temporary_files(unfinished)
    monkeypatch.undo()

    from lightning.pytorch.loggers.csv_logs import ExperimentWriter  # another library's writer: a raw OSError

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.metrics_file_path)

    monkeypatch.setattr(ExperimentWriter, "save", full)
    _refused(capsys, [*train, "--out", tmp_path / "run2"], "metrics.csv", "the disk is full")


@pytest.mark.e2e
def test_a_worker_error_shows_its_cause_without_the_worker_traceback(space, tmp_path, capsys):
    test = tmp_path / "test"
    shutil.copytree(space["data"]["test/biased"], test)
    victim = sorted((test / "images").rglob("*.png"))[0]
    victim.write_bytes(victim.read_bytes()[:200])  # the header is intact: the scan passes, loading fails
    _refused(capsys, ["eval", "--checkpoint", space["run"], "--test", f"t={test}", "--workers", "2",
                      "--no-relevance"], victim.name)


def test_a_wrapped_state_dict_is_read_and_a_foreign_checkpoint_says_how(space, tmp_path, capsys):
    plain = torch.load(space["root"] / "cnn.pt", weights_only=True)
    torch.save({"state_dict": plain, "epoch": 3}, tmp_path / "wrapped.pt")
    torch.save({"state_dict": {f"model.{k}": v for k, v in plain.items()}, "epoch": 3}, tmp_path / "lightning.ckpt")
    photo = space["photos"] / "a" / "a.png"
    maps = []
    for name in ("cnn.pt", "wrapped.pt", "lightning.ckpt"):
        where = space["root"] if name == "cnn.pt" else tmp_path
        out = tmp_path / f"out-{name}"
        assert _cli(["explain", "--arch", "small_cnn", "--num-classes", "10", "--weights", where / name,
                     "--images", photo, "--out", out]) == 0
        maps.append(np.load(out / "a.npy"))
    assert np.array_equal(maps[0], maps[1]) and np.array_equal(maps[0], maps[2])
    err = _refused(capsys, ["explain", "--checkpoint", tmp_path / "lightning.ckpt", "--images", photo, "--out",
                            tmp_path / "o"], "lightning.ckpt", "--weights FILE")
    assert "--checkpoint" not in err.split("isnet train")[-1]  # it does not send the user back to --checkpoint
