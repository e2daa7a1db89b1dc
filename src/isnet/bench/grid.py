"""A resumable grid of training runs: every method with every seed, trained and evaluated once.

Each run is :func:`isnet.training.fit` (what ``isnet train`` runs) into
``RUNS/<method>/seed<k>``, then evaluated by the benchmark's function in this process; its
record (timings, calibration, the last epoch's validation accuracy, evaluation) is stored as
``result.json`` next to the run, under two keys (:class:`RunKeys`): a hash of every training
option that changes the trained network (all but :data:`isnet.config.BOOKKEEPING`) and a hash
of the test data. A later grid with the same keys reuses the record, so an interrupted grid
continues where it stopped; with the same training key and other test data it evaluates the
stored network again instead of training it. Data folders inside the benchmark's folder count
relative to it, so a copied or moved benchmark folder keeps its runs. With ``jobs > 1`` the runs
train in that many fresh processes, the most expensive first; evaluation stays here.
"""

from __future__ import annotations

import concurrent.futures
import csv
import functools
import hashlib
import json
import multiprocessing
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from ..checkpoints import load_classifier, write_json
from ..config import BOOKKEEPING, RENAMED, TrainConfig
from ..signals import Terminated, install_sigterm_handler
from ..training import fit
from ..training.progress import epoch_line
from .presets import RUN_OPTIONS

__all__ = [
    "Grid", "Log", "RunFailed", "RunKeys", "StepTimer", "bench_path", "clock", "console_log", "last_val_accuracy",
    "load_run", "run_dir", "run_grid", "run_keys", "run_options", "settings_key", "threads_per_job",
]

Log = Callable[[str, float | None], None]
"""Receives a progress message and the grid's start time (a ``time.perf_counter`` value) or None."""


class RunFailed(RuntimeError):
    """A training process of the grid raised; the message names the method and seed."""


@dataclass
class Grid:
    """What to train and how to judge it.

    ``methods``: method -> its training options (with its ``objective``); ``options``: training
    options of every run; ``runs``: the runs' folder, inside the benchmark's folder (its parent:
    data folders count relative to it in the keys, :func:`run_keys`); ``data``: the ``train``
    and ``val`` dataset roots (``method_data``: other roots for some methods, e.g. training masks
    of another quality); ``evaluate(model, config)`` scores a trained classifier (eval mode,
    resolved config) and returns the entries it adds to the run's record; ``test_key``
    identifies its test data in the run's keys (``earlier_test_keys``: as earlier versions did);
    ``describe(record)`` summarises a finished run's evaluation in its progress line; ``cost``: a
    method's relative training time (default 1), for scheduling; ``name`` prefixes the progress
    lines of training processes.
    """

    methods: Mapping[str, Mapping[str, Any]]
    seeds: int
    arch: str
    options: Mapping[str, Any]
    data: Mapping[str, Path]
    runs: Path
    evaluate: Callable[[nn.Module, dict], dict[str, Any]]
    test_key: Mapping[str, Any]
    describe: Callable[[Mapping[str, Any]], str]
    name: str
    cost: Mapping[str, float] = field(default_factory=dict)
    jobs: int = 1
    threads: int | None = None
    progress_bar: bool = False
    method_data: Mapping[str, Mapping[str, Path]] = field(default_factory=dict)
    earlier_test_keys: Sequence[Mapping[str, Any]] = ()


def _print_line(name: str, message: str, start: float | None = None) -> None:
    stamp = f"[{clock(time.perf_counter() - start)}] " if start is not None else ""
    print(f"{name}: {stamp}{message}", flush=True)


def console_log(name: str) -> Log:
    """A :data:`Log` printing ``NAME: [m:ss] message`` (time since the start, when given)."""
    return functools.partial(_print_line, name)


def clock(seconds: float) -> str:
    """Seconds as ``m:ss``."""
    seconds = int(round(seconds))
    return f"{seconds // 60:d}:{seconds % 60:02d}"


def threads_per_job(jobs: int, threads: int | None) -> int:
    """Torch CPU threads of each training process: ``threads``, else the CPU count divided by ``jobs``."""
    return threads or max(1, (os.cpu_count() or 1) // jobs)


def run_dir(runs: Path, method: str, seed: int) -> Path:
    """The run folder of ``method`` and ``seed``."""
    return runs / "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in method) / f"seed{seed}"


def load_run(grid: Grid, method: str, seed: int) -> tuple[nn.Module, dict[str, Any]]:
    """A trained run's classifier and resolved configuration, the segmenter (which it reads at test time) taken
    from the grid: a moved benchmark folder's, not the one its ``config.json`` names."""
    model, resolved = load_classifier(run_dir(grid.runs, method, seed))
    if resolved.get("segmenter"):
        resolved["segmenter"] = run_options(grid, method, seed).get("segmenter") or resolved["segmenter"]
    return model, resolved


def run_options(grid: Grid, method: str, seed: int) -> dict[str, Any]:
    """The training options of one run: the grid's options, the method's, then :data:`RUN_OPTIONS`."""
    data = grid.method_data.get(method, grid.data)
    per_run = {"objective": grid.methods[method]["objective"], "arch": grid.arch, "train": str(data["train"]),
               "val": str(data["val"]), "out": str(run_dir(grid.runs, method, seed)), "seed": seed,
               "resume": False}
    return {"workers": 0, "quiet": not grid.progress_bar, **grid.options, **grid.methods[method],
            **{key: per_run[key] for key in RUN_OPTIONS}}


def bench_path(path: str | Path, folder: Path | None) -> str:
    """``path`` as a stored run's key counts it: relative to the benchmark ``folder`` when inside it (written
    ``<bench>/...``, so that a moved folder keeps its runs), else resolved."""
    resolved = Path(path).expanduser().resolve()
    if folder is not None and resolved.is_relative_to(folder := Path(folder).expanduser().resolve()):
        return f"<bench>/{resolved.relative_to(folder).as_posix()}"
    return str(resolved)


def _relevant_options(options: Mapping[str, Any], folder: Path | None) -> dict[str, Any]:
    """The training options a stored run depends on (see :func:`run_keys`), data folders as :func:`run_keys` says."""
    resolved = TrainConfig.from_dict(options).to_dict()
    unset = {k for k, v in TrainConfig().to_dict().items() if v is None and resolved[k] is None}
    earlier = {new: old for old, new in RENAMED.items()}
    relevant = {earlier.get(k, k): v for k, v in resolved.items() if k not in BOOKKEEPING and k not in unset}
    for name in ("train", "val", "segmenter"):  # the same folder however it is written (relative, absolute)
        if relevant.get(name):
            relevant[name] = bench_path(relevant[name], folder)
    return relevant


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunKeys:
    """What a stored run depends on: its training options (``training``) and the test data (``test``).

    ``legacy`` holds the single keys under which isnet stored runs before the two were separate
    (:func:`settings_key`): with today's test data first, then with the benchmark's earlier test
    data. Such runs are given today's keys, and evaluated again when their test data were earlier ones.
    """

    training: str
    test: str
    legacy: tuple[str, ...]


def run_keys(options: Mapping[str, Any], test_key: Mapping[str, Any], folder: Path,
             earlier_test_keys: Sequence[Mapping[str, Any]] = ()) -> RunKeys:
    """The keys of a run with training ``options`` evaluated on the test data ``test_key`` (once identified by
    ``earlier_test_keys``, for runs stored under :func:`settings_key`).

    Every training option counts (defaults included) but those None by default and in this
    run, so an option added to a later isnet (None unless given) leaves the keys of stored
    runs unchanged; an option renamed since (:data:`isnet.config.RENAMED`) counts under its
    earlier name. Data and segmenter folders inside ``folder`` (the benchmark's folder) count
    relative to it, others as resolved paths: ``--out runs/x`` and ``--out /abs/runs/x`` give
    the same keys, and so does the folder after a move.
    """
    return RunKeys(training=_digest(_relevant_options(options, folder)), test=_digest(dict(test_key)),
                   legacy=tuple(settings_key(options, key) for key in (test_key, *earlier_test_keys)))


def settings_key(options: Mapping[str, Any], test_key: Mapping[str, Any]) -> str:
    """The single key of runs stored by earlier versions: the options as in :func:`run_keys` with every data
    folder as a resolved path, and the test data."""
    return _digest({**_relevant_options(options, None), "test": dict(test_key)})


def _stored_record(out: Path, keys: RunKeys) -> tuple[dict | None, bool]:
    """The stored record of a finished run trained with ``keys.training``, else None; and whether the network must
    be evaluated again (it was evaluated on other test data, which needs its ``model.pt``)."""
    stored = out / "result.json"
    if not stored.is_file():
        return None, False
    record = json.loads(stored.read_text())
    legacy = record.get("training_key") is None and record.get("settings_key") in keys.legacy
    if legacy:  # stored by an earlier isnet: today's keys (its test data are today's under the first legacy key)
        record.update(training_key=keys.training, test_key=keys.test if record["settings_key"] == keys.legacy[0]
                      else None)
    if record.get("training_key") != keys.training:
        return None, False
    evaluate = record.get("test_key") != keys.test
    if evaluate and not (out / "model.pt").is_file():
        return None, False
    if legacy and not evaluate:  # a record evaluated again is written anew
        write_json(stored, record)
    return record, evaluate


class StepTimer(Callback):
    """Sums the wall time of training steps (forward, backward, optimiser step) of the main run.

    With a ``log`` it also reports each epoch as ``label: epoch i/n ...``
    (:func:`isnet.training.progress.epoch_line`).
    """

    def __init__(self, label: str = "", log: Log | None = None, start: float | None = None) -> None:
        self.label, self.progress, self.start = label, log, start
        self.seconds, self.epochs, self._began = 0.0, 0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._began = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seconds += time.perf_counter() - self._began

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs += 1
        if self.progress is not None:
            self.progress(f"{self.label}: {epoch_line(trainer)}", self.start)


def _train_run(name: str, method: str, seed: int, options: Mapping[str, Any], threads: int | None = None,
               start: float | None = None) -> dict[str, Any]:
    """Train one method/seed from scratch; returns its timings.

    ``threads`` sets torch's CPU threads first. With ``start`` (a ``time.perf_counter`` value,
    also across processes) it logs the start and every epoch.
    """
    if threads:
        torch.set_num_threads(threads)
    log = console_log(name) if start is not None else None
    if log is not None:
        log(f"{method} seed {seed}: training" + (f" (process {os.getpid()})" if threads else ""), start)
    out = Path(options["out"])
    if out.exists():
        shutil.rmtree(out)  # an interrupted run of this grid (finished ones were refused by run_grid)
    timer = StepTimer(f"{method} seed {seed}", log, start)
    began = time.perf_counter()
    fit(options, callbacks=[timer])
    return {"train_time_s": time.perf_counter() - began, "step_time_s": timer.seconds, "epochs": timer.epochs}


def _exit_with_parent(parent: int) -> None:
    """Training-process initializer: end this process once ``parent`` (the grid's process) is gone.

    A grid killed from outside (``kill``, a scheduler's time limit) would otherwise leave its
    training processes running, still taking queued runs and writing into run folders that the
    restarted grid trains again. A SIGTERM ends the process's run as in ``isnet train``.
    """
    install_sigterm_handler()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-grid", daemon=True).start()


def last_val_accuracy(run: Path) -> float | None:
    """``val/acc`` of a run's last logged epoch (``RUN/metrics.csv``), None without validation."""
    found = None
    with (run / "metrics.csv").open(newline="") as rows:
        for row in csv.DictReader(rows):
            if row.get("val/acc"):
                found = float(row["val/acc"])  # a repeated epoch's later rows count
    return found


def _evaluate_run(grid: Grid, method: str, seed: int, keys: RunKeys, timing: Mapping[str, Any]) -> dict:
    """Evaluate a trained run and store its record (with its ``keys``) as ``result.json``."""
    out = run_dir(grid.runs, method, seed)
    model, resolved = load_run(grid, method, seed)
    record = {
        "method": method, "seed": seed, "training_key": keys.training, "test_key": keys.test,
        **timing, "calibration": resolved.get("calibration"), "C1": resolved.get("C1"), "C2": resolved.get("C2"),
        "val_accuracy": last_val_accuracy(out), **grid.evaluate(model, resolved),
    }
    write_json(out / "result.json", record)
    return record


def _listed(folders: list[Path]) -> str:
    more = f" and {len(folders) - 3} more" if len(folders) > 3 else ""
    return ", ".join(str(f) for f in folders[:3]) + more


def _training_key(folder: Path) -> str | None:
    try:
        return json.loads((folder / "result.json").read_text()).get("training_key")
    except (OSError, ValueError, AttributeError):
        return None


def _check_no_finished_run_replaced(folders: Mapping[Path, RunKeys]) -> None:
    """Raise FileExistsError, before anything is trained, when a run to train holds a finished run
    (``model.pt`` or ``result.json``): one of other settings, or one of these settings whose test
    data changed but whose ``model.pt`` is gone. Stored runs are never deleted silently; unfinished
    runs (an interrupted grid) are trained again."""
    finished = [f for f in folders if (f / "model.pt").is_file() or (f / "result.json").is_file()]
    without_model = [f for f in finished if _training_key(f) == folders[f].training]
    if without_model:
        raise FileExistsError(
            f"{_listed(without_model)} hold(s) results of these training settings on other test data but no "
            "model.pt to evaluate again; put model.pt back, or delete those folders to train them again")
    if finished:
        raise FileExistsError(
            f"{_listed(finished)} hold(s) finished runs trained with other settings (other options, data or isnet "
            "version), which this grid would replace; choose another --out, or delete those folders to train them "
            "again")


def run_grid(grid: Grid, start: float, log: Log) -> dict[str, list[dict]]:
    """Train and evaluate every method/seed (``grid.jobs`` training processes at a time).

    Returns method -> the records of its seeds, in seed order. A failing training process
    raises :class:`RunFailed` (queued runs are dropped; those in progress finish and are stored).
    """
    tasks = [(method, seed) for method in grid.methods for seed in range(grid.seeds)]
    options = {task: run_options(grid, *task) for task in tasks}
    keys = {task: run_keys(opts, grid.test_key, grid.runs.parent, grid.earlier_test_keys)
            for task, opts in options.items()}
    found: dict[tuple[str, int], dict] = {}

    def report(record: Mapping[str, Any], what: str) -> None:
        log(f"({len(found)}/{len(tasks)}) {record['method']} seed {record['seed']}: {what} "
            f"(fit {record['train_time_s']:.0f} s) {grid.describe(record)}", start)

    for task in tasks:
        record, evaluate = _stored_record(run_dir(grid.runs, *task), keys[task])
        if record is not None and evaluate:
            timing = {k: record[k] for k in ("train_time_s", "step_time_s", "epochs") if k in record}
            found[task] = _evaluate_run(grid, *task, keys[task], timing)
            report(found[task], "stored run evaluated on the new test data")
        elif record is not None:
            found[task] = record
            report(record, "reused stored run")
    _check_no_finished_run_replaced({run_dir(grid.runs, *t): keys[t] for t in tasks if t not in found})
    todo = sorted((t for t in tasks if t not in found), key=lambda t: -grid.cost.get(t[0], 1))
    if grid.jobs <= 1 or len(todo) <= 1:
        for method, seed in todo:
            timing = _train_run(grid.name, method, seed, options[method, seed],
                                start=None if grid.progress_bar else start)
            found[method, seed] = _evaluate_run(grid, method, seed, keys[method, seed], timing)
            report(found[method, seed], "done")
    else:
        threads = threads_per_job(grid.jobs, grid.threads)
        log(f"training {len(todo)} run(s) in {grid.jobs} processes ({threads} torch thread(s) each)", start)
        context = multiprocessing.get_context("spawn")  # fresh interpreters: no inherited torch or Lightning state
        with concurrent.futures.ProcessPoolExecutor(grid.jobs, mp_context=context, initializer=_exit_with_parent,
                                                    initargs=(os.getpid(),)) as pool:
            running = {pool.submit(_train_run, grid.name, method, seed, options[method, seed], threads, start):
                       (method, seed) for method, seed in todo}
            try:
                for future in concurrent.futures.as_completed(running):
                    method, seed = running[future]
                    try:
                        timing = future.result()
                    except Exception as err:  # queued runs are dropped; running ones finish and are stored
                        pool.shutdown(wait=False, cancel_futures=True)
                        log(f"{method} seed {seed}: failed ({err}); waiting for the runs in progress", start)
                        raise RunFailed(f"{method} seed {seed} failed: {err}") from err
                    found[method, seed] = _evaluate_run(grid, method, seed, keys[method, seed], timing)
                    report(found[method, seed], "done")
            except (KeyboardInterrupt, Terminated):  # Ctrl-C or SIGTERM: the training processes stop too
                pool.shutdown(wait=False, cancel_futures=True)
                for process in multiprocessing.active_children():
                    process.terminate()  # SIGTERM: each ends its run at the next batch
                raise
    records: dict[str, list[dict]] = {}
    for method, seed in tasks:
        records.setdefault(method, []).append(found[method, seed])
    return records
