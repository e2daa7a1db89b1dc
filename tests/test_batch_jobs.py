"""Training as a batch job: SIGTERM ends a run as Ctrl-C does, and a log file gets one line per epoch."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from isnet.cli import main
from isnet.data import write_dataset
from isnet.signals import EXIT_STATUS, Terminated, lightning_handles, raise_on_sigterm
from isnet.training.progress import EpochLines, console_progress


def test_sigterm_raises_terminated_unless_lightning_has_taken_it():
    before = signal.getsignal(signal.SIGTERM)
    with raise_on_sigterm():
        with pytest.raises(Terminated) as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs before this returns
        assert stop.value.code == EXIT_STATUS == 143
        with lightning_handles(lambda: True):
            os.kill(os.getpid(), signal.SIGTERM)  # left to Lightning: nothing is raised
            time.sleep(0.1)
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_progress_bar_stays_on_a_terminal_and_a_log_gets_epoch_lines(monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert console_progress(quiet=False) == []  # Lightning's own bar
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert [type(c) for c in console_progress(quiet=False)] == [EpochLines]
    assert console_progress(quiet=True) == []


@pytest.mark.e2e
def test_sigterm_keeps_the_last_checkpoint_and_the_run_resumes(tmp_path):
    """A scheduler's SIGTERM (to the whole process group, DataLoader workers included) mid-training: exit
    status 143, the message, no traceback, ``last.ckpt`` kept; ``--resume`` then finishes. The log (a pipe)
    holds one line per epoch and no carriage returns."""
    data = write_dataset(tmp_path / "bg", seed=0, n_train=64, n_val=16, n_test=8)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "isnet.cli", "train", "--train", str(data["train"]), "--val", str(data["val"]),
           "--objective", "standard", "--epochs", "40", "--batch-size", "8", "--workers", "2", "--out", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out = ""
        for line in proc.stdout:  # until the first epoch has ended (and written last.ckpt)
            out += line
            if line.startswith("epoch 1/"):
                break
        os.killpg(proc.pid, signal.SIGTERM)  # as SLURM does: every process of the job
        rest, err = proc.communicate(timeout=600)
        out += rest
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err[-3000:]
    assert err.rstrip().endswith("isnet train: terminated (SIGTERM); continue the run with --resume "
                                 "(from its last checkpoint)"), err[-3000:]
    assert "Traceback" not in err and "\r" not in out + err
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert lines and lines[0].startswith("epoch 1/40 train loss ") and "val acc" in lines[0]
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "model.pt").exists()
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--quiet"]) == 0
    assert (run / "model.pt").is_file()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 16  # 2 epochs x 8


@pytest.mark.e2e
def test_sigterm_ends_a_parallel_benchmark_and_its_training_processes(tmp_path):
    """``kill PID`` of ``isnet bench bias --jobs 2``: the grid stops its training processes and says how to go on."""
    cmd = [sys.executable, "-m", "isnet.cli", "bench", "bias", "--out", str(tmp_path / "bench"), "--methods",
           "standard", "masked", "--seeds", "1", "--n-train", "40", "--n-val", "10", "--n-test", "10", "--epochs",
           "50", "--jobs", "2", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for line in proc.stdout:  # a training process has finished an epoch
            if ": epoch 1/" in line:
                break
        proc.send_signal(signal.SIGTERM)  # the grid's process only
        _, err = proc.communicate(timeout=600)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # the training processes end with it
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("training processes outlived the benchmark by 300 s")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err[-3000:]
    assert err.rstrip().endswith("isnet bench: terminated (SIGTERM); run the same command again: finished runs "
                                 "are reused"), err[-3000:]
    assert "Traceback" not in err
