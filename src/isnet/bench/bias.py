"""The background-bias benchmark on BG-Digits: ISNets and baselines on one training pipeline.

``isnet bench bias --out DIR`` (and :func:`run_benchmark`):

1. writes BG-Digits to ``DIR/data`` (:func:`isnet.data.bg_digits.write_dataset`): biased
   train / val splits, and the ``biased`` / ``unbiased`` / ``deceiving`` test sets;
2. trains every method and seed with :func:`isnet.train.fit` (exactly what ``isnet train``
   runs: the same ``LightningModule``, C1/C2 calibration, checkpoints) into
   ``DIR/runs/<method>/seed<k>``; hyper-parameters are :class:`isnet.train.TrainConfig`'s
   defaults unless ``train_options`` overrides them;
3. evaluates each trained classifier (eval mode) on every test set: accuracy, the share of
   absolute LRP-Flex relevance (heatmap of the predicted class, as ``isnet eval``) outside the
   foreground mask and on the bias patch, and the **occlusion check**: accuracy on the biased
   test images with the bias patch replaced by neighbouring background;
4. writes ``results.json``, ``results.md``, ``results.csv``, figures (PNG) and a
   self-contained ``report.html``.

A finished run leaves ``result.json`` in its folder; running the benchmark again on the same
``DIR`` with the same settings reuses it (an interrupted full run continues where it stopped).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported when a benchmark runs, so `isnet --help` stays fast
    import torch
    from torch import Tensor

__all__ = [
    "FULL",
    "METHODS",
    "QUICK",
    "TEST_SETS",
    "RunFailed",
    "BiasBenchConfig",
    "evaluate_classifier",
    "format_table",
    "occlude_patches",
    "run_benchmark",
]

TEST_SETS = ("biased", "unbiased", "deceiving")
OCCLUDED = "biased_occluded"
"""Biased test images with the bias patch replaced by neighbouring background."""
RAW_INPUT = "@unmasked"
"""Suffix of the extra row of masked-input methods evaluated on the original images."""

METHODS: dict[str, dict[str, Any]] = {
    "standard": {"variant": "standard"},
    "original": {"variant": "original"},
    "selective": {"variant": "selective"},
    "stochastic": {"variant": "stochastic"},
    "selective+ds": {"variant": "selective", "deep_supervision": True},
    "stochastic+ds": {"variant": "stochastic", "deep_supervision": True},
    "rrr": {"variant": "rrr"},
    "gradcam": {"variant": "gradcam"},
    "masked": {"variant": "masked"},
    "swap": {"variant": "swap"},
}
"""Benchmark method -> training options (``+ds``: LRP deep supervision at the stage outputs).

``swap`` is the standard classifier trained with the mask-based background swap that the ISNet
variants use by default (``TrainConfig.background_swap``): the control that tells what the
swap alone achieves."""


@dataclass
class BiasBenchConfig:
    """Sizes and methods of one benchmark run.

    ``epochs=None`` takes :class:`isnet.train.TrainConfig`'s default. ``train_options``
    override any other training option for every method (e.g. ``{"P": 0.9}``).
    ``jobs``: training processes at a time (each trains one method/seed; evaluation stays in
    this process). ``threads``: torch CPU threads per process (None: torch's default with one
    job, else the CPU count divided by ``jobs``).
    """

    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: int = 3
    n_train: int = 3300
    n_val: int = 500
    n_test: int = 500
    epochs: int | None = None
    data_seed: int = 0
    arch: str = "small_cnn"
    image_size: int = 32
    mask: str = "box"
    train_options: dict[str, Any] = field(default_factory=dict)
    n_examples: int = 3
    jobs: int = 1
    threads: int | None = None
    progress_bar: bool = False
    title: str = "BG-Digits background-bias benchmark"

    def validate(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
        if not self.methods:
            raise ValueError("no methods to run")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods listed twice: {self.methods}")
        if self.seeds < 1 or self.n_train < 10 or self.n_val < 1 or self.n_test < 10:
            raise ValueError("need seeds >= 1, n_train >= 10, n_val >= 1 and n_test >= 10")
        if self.jobs < 1 or (self.threads is not None and self.threads < 1):
            raise ValueError(f"jobs and threads must be >= 1, got jobs={self.jobs}, threads={self.threads}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        reserved = {"train", "val", "out", "variant", "seed", "arch", "resume"}
        clash = sorted(reserved & set(self.train_options))
        if clash:
            raise ValueError(f"train_options cannot set {clash}; the benchmark sets them")


QUICK: dict[str, Any] = dict(
    methods=["standard", "selective", "stochastic", "rrr", "gradcam", "masked", "swap"],
    seeds=1, n_train=2000, n_val=200, n_test=300, epochs=12, n_examples=2, jobs=2,
)
"""``--quick``: seven methods, one seed, 2,000 training images, 12 epochs, two training
processes (under 10 minutes on 2 cores)."""
FULL: dict[str, Any] = dict(methods=list(METHODS), seeds=3, n_train=3300, n_val=500, n_test=500, epochs=15, jobs=2)
"""The full grid: every method, three seeds, two training processes (69 minutes on 2 CPU cores;
``original`` takes about half of the training time)."""


# ------------------------------------------------------------------------------------------
# data


def _log(message: str, start: float | None = None) -> None:
    stamp = f"[{_clock(time.perf_counter() - start)}] " if start is not None else ""
    print(f"bench bias: {stamp}{message}", flush=True)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60:d}:{seconds % 60:02d}"


def _prepare_data(root: Path, cfg: BiasBenchConfig) -> dict[str, Path]:
    """BG-Digits on disk (reused when ``root/bg-digits.json`` matches the settings)."""
    from ..data.bg_digits import write_dataset

    meta = root / "bg-digits.json"
    wanted = {"seed": cfg.data_seed, "image_size": cfg.image_size, "mask": cfg.mask,
              "n": {"train": cfg.n_train, "val": cfg.n_val, "test/biased": cfg.n_test}}
    if meta.is_file():
        saved = json.loads(meta.read_text())
        have = {"seed": saved.get("seed"), "image_size": saved.get("image_size"), "mask": saved.get("mask"),
                "n": {k: saved.get("splits", {}).get(k, {}).get("n") for k in wanted["n"]}}
        if have == wanted:
            return {name: root / name for name in ("train", "val")}
        raise FileExistsError(f"{root} holds BG-Digits made with other settings ({have}); choose another --out")
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not a BG-Digits folder; choose another --out")
    paths = write_dataset(root, seed=cfg.data_seed, n_train=cfg.n_train, n_val=cfg.n_val, n_test=cfg.n_test,
                          mask=cfg.mask, image_size=cfg.image_size)
    return {"train": paths["train"], "val": paths["val"]}


@dataclass
class _TestSet:
    images: Tensor  # (N, 3, H, W) in [0, 1]
    masks: Tensor  # (N, 1, H, W)
    labels: Tensor  # (N,)
    patches: Tensor  # (N, 1, H, W), the bias patch pixels


def occlude_patches(images: Tensor, patches: Tensor, masks: Tensor) -> Tensor:
    """Replace each image's bias patch by the background block next to it.

    For every image with a patch, the patch's bounding box is filled with the pixels of the
    same-sized block shifted by one box width or height (the first of right, left, down, up
    that lies inside the image and touches neither the patch nor the foreground mask). Images
    without a patch are returned unchanged.
    """
    out = images.clone()
    height, width = images.shape[-2:]
    for i in range(images.shape[0]):
        where = patches[i].reshape(height, width).nonzero()
        if where.numel() == 0:
            continue
        r0, c0 = where.min(0).values.tolist()
        r1, c1 = (where.max(0).values + 1).tolist()
        h, w = r1 - r0, c1 - c0
        fg = masks[i].reshape(-1, height, width).amax(0) > 0
        patch = patches[i].reshape(height, width) > 0
        for dr, dc in ((0, w), (0, -w), (h, 0), (-h, 0)):
            a, b = r0 + dr, c0 + dc
            if a < 0 or b < 0 or a + h > height or b + w > width:
                continue
            if fg[a:a + h, b:b + w].any() or patch[a:a + h, b:b + w].any():
                continue
            out[i, :, r0:r1, c0:c1] = images[i, :, a:a + h, b:b + w]
            break
    return out


def _test_sets(cfg: BiasBenchConfig) -> dict[str, _TestSet]:
    """The test sets in memory (identical to the files under DATA/test), plus the occluded set."""
    import torch

    from ..data.bg_digits import generate, to_tensors

    sets: dict[str, _TestSet] = {}
    for bias in TEST_SETS:
        d = generate(cfg.n_test, split="test", seed=cfg.data_seed, bias=bias, mask=cfg.mask,
                     image_size=cfg.image_size)
        images, masks, labels = to_tensors(d)
        sets[bias] = _TestSet(images, masks, labels, torch.from_numpy(d.patch_masks).float()[:, None])
    b = sets["biased"]
    sets[OCCLUDED] = _TestSet(occlude_patches(b.images, b.patches, b.masks), b.masks, b.labels,
                              torch.zeros_like(b.patches))
    return sets


# ------------------------------------------------------------------------------------------
# evaluation


def _model_input(config: Mapping[str, Any], images: Tensor, masks: Tensor, raw: bool) -> Tensor:
    from ..train import classifier_input

    return images if raw else classifier_input(images, masks, config.get("variant", "standard"))


def evaluate_classifier(model: torch.nn.Module, config: Mapping[str, Any], test: _TestSet, *,
                        raw_input: bool = False, batch_size: int = 100) -> dict[str, Any]:
    """Accuracy and relevance shares of a trained classifier (eval mode) on one test set.

    Heatmaps: LRP-Flex of the predicted class with the run's ``epsilon`` / ``zb``. The
    ``background_relevance`` is the mean share of absolute relevance outside the mask;
    ``patch_relevance`` the mean share on the bias patch over the images that have one (None
    when none has). Masked-input methods see ``x * mask`` unless ``raw_input``.
    """
    import torch

    from ..lrp import LRPFlex
    from ..metrics import background_share, relevance_share

    model.eval()
    lrp = LRPFlex(model, epsilon=config.get("epsilon", 0.01), zb=config.get("zb", True))
    correct, bg, patch = [], [], []
    for start in range(0, len(test.labels), batch_size):
        part = slice(start, start + batch_size)
        x = _model_input(config, test.images[part], test.masks[part], raw_input)
        trace = lrp.trace(x)
        logits = trace.output.detach()
        heat = trace.heatmap(logits.argmax(1)).detach()
        correct.append(logits.argmax(1) == test.labels[part])
        bg.append(background_share(heat, test.masks[part]))
        has_patch = test.patches[part].flatten(1).any(1)
        if has_patch.any():
            patch.append(relevance_share(heat[has_patch], test.patches[part][has_patch]))
    return {
        "accuracy": torch.cat(correct).float().mean().item(),
        "background_relevance": torch.cat(bg).double().mean().item(),
        "patch_relevance": torch.cat(patch).double().mean().item() if patch else None,
        "n": int(len(test.labels)),
    }


def _heatmaps(model: torch.nn.Module, config: Mapping[str, Any], images: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    from ..lrp import LRPFlex

    model.eval()
    trace = LRPFlex(model, epsilon=config.get("epsilon", 0.01), zb=config.get("zb", True)).trace(
        _model_input(config, images, masks, raw=False))
    pred = trace.output.detach().argmax(1)
    return trace.heatmap(pred).detach(), pred


# ------------------------------------------------------------------------------------------
# training


def _stage_layers(arch: str, num_classes: int, image_size: int) -> list[str]:
    """Deep-supervision layers: the ISNet defaults, else the outputs of the max-pool stages."""
    from torch import nn

    from ..models import build_model
    from ..variants import default_supervised_layers

    model = build_model(arch, num_classes, image_size=image_size)
    try:
        return default_supervised_layers(model)
    except ValueError:
        stages = [name for name, m in model.named_modules() if isinstance(m, nn.MaxPool2d)]
        if not stages:
            raise
        return stages


def _train_options(method: str, cfg: BiasBenchConfig, data: Mapping[str, Path], seed: int, out: Path) -> dict:
    options = dict(METHODS[method])
    if options.get("deep_supervision") is True:
        options["deep_supervision"] = _stage_layers(cfg.arch, 10, cfg.image_size)
    config = {"workers": 0, "quiet": not cfg.progress_bar, **cfg.train_options, **options,
              "train": str(data["train"]), "val": str(data["val"]), "out": str(out), "arch": cfg.arch,
              "seed": seed}
    if cfg.epochs is not None:
        config["epochs"] = cfg.epochs
    return config


def _settings_key(config: Mapping[str, Any], cfg: BiasBenchConfig) -> str:
    """What a stored run depends on: every training option (defaults included) and the test data."""
    from ..train import TrainConfig

    resolved = TrainConfig.from_dict(config).to_dict()
    relevant = {k: v for k, v in resolved.items() if k not in ("out", "quiet", "workers")}
    relevant["test"] = {"n": cfg.n_test, "data_seed": cfg.data_seed}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _step_timer(label: str | None = None, start: float | None = None):
    """A callback that sums the training-step time; with ``label``, it also logs each epoch."""
    from lightning.pytorch.callbacks import Callback

    class StepTimer(Callback):
        """Sums the wall time of training steps (forward, backward, optimiser step) of the main run."""

        def __init__(self) -> None:
            self.seconds, self.epochs, self._start = 0.0, 0, 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.seconds += time.perf_counter() - self._start

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.epochs += 1
            if label is not None:
                metrics = trainer.callback_metrics
                shown = [f"{name} {float(metrics[key]):.3f}" for name, key in
                         (("train acc", "train/acc_epoch"), ("val acc", "val/acc"), ("val bg share", "val/bg_share"))
                         if key in metrics]
                _log(f"{label}: epoch {self.epochs}/{trainer.max_epochs} {', '.join(shown)}", start)

    return StepTimer()


def _run_dir(method: str, seed: int, runs: Path) -> Path:
    return runs / _dirname(method) / f"seed{seed}"


def _stored_record(method: str, seed: int, runs: Path, key: str) -> dict | None:
    """The stored result of a finished run whose settings key is ``key``, else None."""
    stored = _run_dir(method, seed, runs) / "result.json"
    if stored.is_file():
        record = json.loads(stored.read_text())
        if record.get("settings_key") == key:
            return record
    return None


def _train_run(method: str, seed: int, config: Mapping[str, Any], threads: int | None = None,
               start: float | None = None) -> dict[str, Any]:
    """Train one method/seed from scratch (what ``isnet train`` runs); returns its timings.

    ``threads`` sets torch's CPU threads first. With ``start`` (a ``time.perf_counter`` value,
    also across processes) it logs the start and every epoch.
    """
    import torch

    from ..train import fit

    if threads:
        torch.set_num_threads(threads)
    if start is not None:
        _log(f"{method} seed {seed}: training" + (f" (process {os.getpid()})" if threads else ""), start)
    out = Path(config["out"])
    if out.exists():
        shutil.rmtree(out)  # an interrupted or outdated run of this benchmark
    timer = _step_timer(f"{method} seed {seed}" if start is not None else None, start)
    began = time.perf_counter()
    fit(config, callbacks=[timer])
    return {"train_time_s": time.perf_counter() - began, "step_time_s": timer.seconds, "epochs": timer.epochs}


def _evaluate_run(method: str, seed: int, key: str, tests: Mapping[str, _TestSet], runs: Path,
                  timing: Mapping[str, Any]) -> dict:
    """Evaluate a trained run on every test set and store its record (settings ``key``) as ``result.json``."""
    from ..train import load_classifier, needs_masked_input

    out = _run_dir(method, seed, runs)
    model, resolved = load_classifier(out)
    results = {name: evaluate_classifier(model, resolved, test) for name, test in tests.items()}
    raw = {}
    if needs_masked_input(resolved["variant"]):
        raw = {name: evaluate_classifier(model, resolved, test, raw_input=True) for name, test in tests.items()}
    record = {
        "method": method, "seed": seed, "settings_key": key,
        **timing, "calibration": resolved.get("calibration"), "C1": resolved.get("C1"), "C2": resolved.get("C2"),
        "results": results, "raw_input_results": raw or None,
    }
    (out / "result.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


class RunFailed(RuntimeError):
    """A training process of the benchmark raised; the message names the method and seed."""


RELATIVE_COST = {"standard": 1, "masked": 1, "swap": 1, "rrr": 2, "gradcam": 2, "selective": 4, "stochastic": 4,
                 "selective+ds": 5, "stochastic+ds": 5, "original": 16}
"""Approximate training time of each method relative to ``standard`` (BG-Digits, small_cnn, CPU):
parallel runs start with the most expensive, so the last ones to finish are short."""


def _train_all(cfg: BiasBenchConfig, data: Mapping[str, Path], tests: Mapping[str, _TestSet], runs: Path,
               start: float, log: Callable[[str, float | None], None]) -> dict[str, list[dict]]:
    """Train and evaluate every method/seed (``cfg.jobs`` training processes at a time)."""
    import concurrent.futures
    import multiprocessing

    tasks = [(method, seed) for method in cfg.methods for seed in range(cfg.seeds)]
    configs = {(method, seed): _train_options(method, cfg, data, seed, _run_dir(method, seed, runs))
               for method, seed in tasks}
    keys = {task: _settings_key(config, cfg) for task, config in configs.items()}
    found: dict[tuple[str, int], dict] = {}
    for method, seed in tasks:
        record = _stored_record(method, seed, runs, keys[method, seed])
        if record is not None:
            found[method, seed] = record
            _log_record(record, "reused stored run", len(found), len(tasks), start, log)
    todo = sorted((t for t in tasks if t not in found), key=lambda t: -RELATIVE_COST.get(t[0], 1))
    if cfg.jobs <= 1 or len(todo) <= 1:
        for method, seed in todo:
            timing = _train_run(method, seed, configs[method, seed], start=None if cfg.progress_bar else start)
            found[method, seed] = _evaluate_run(method, seed, keys[method, seed], tests, runs, timing)
            _log_record(found[method, seed], "done", len(found), len(tasks), start, log)
    else:
        threads = _threads_per_job(cfg)
        log(f"training {len(todo)} run(s) in {cfg.jobs} processes ({threads} torch thread(s) each)", start)
        context = multiprocessing.get_context("spawn")  # fresh interpreters: no inherited torch or Lightning state
        with concurrent.futures.ProcessPoolExecutor(cfg.jobs, mp_context=context) as pool:
            running = {pool.submit(_train_run, method, seed, configs[method, seed], threads, start): (method, seed)
                       for method, seed in todo}
            for future in concurrent.futures.as_completed(running):
                method, seed = running[future]
                try:
                    timing = future.result()
                except Exception as err:  # queued runs are dropped; running ones finish and are stored
                    pool.shutdown(wait=False, cancel_futures=True)
                    log(f"{method} seed {seed}: failed ({err}); waiting for the runs in progress", start)
                    raise RunFailed(f"{method} seed {seed} failed: {err}") from err
                found[method, seed] = _evaluate_run(method, seed, keys[method, seed], tests, runs, timing)
                _log_record(found[method, seed], "done", len(found), len(tasks), start, log)
    records: dict[str, list[dict]] = {}
    for method, seed in tasks:
        records.setdefault(method, []).append(found[method, seed])
    return records


def _threads_per_job(cfg: BiasBenchConfig) -> int:
    return cfg.threads or max(1, (os.cpu_count() or 1) // cfg.jobs)


def _log_record(record: Mapping[str, Any], what: str, done: int, total: int, start: float,
                log: Callable[[str, float | None], None]) -> None:
    r = record["results"]
    log(f"({done}/{total}) {record['method']} seed {record['seed']}: {what} (fit {record['train_time_s']:.0f} s) "
        f"accuracy biased {100 * r['biased']['accuracy']:.1f}% unbiased {100 * r['unbiased']['accuracy']:.1f}% "
        f"deceiving {100 * r['deceiving']['accuracy']:.1f}% occluded {100 * r[OCCLUDED]['accuracy']:.1f}%; "
        f"background relevance {100 * r['biased']['background_relevance']:.1f}%", start)


def _dirname(method: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in method)


# ------------------------------------------------------------------------------------------
# aggregation and output


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    import numpy as np

    xs = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not xs:
        return None, None
    mean = float(np.mean(xs))
    return mean, (float(np.std(xs, ddof=1)) if len(xs) > 1 else None)


def _aggregate(records: Mapping[str, list[dict]]) -> tuple[dict, dict, dict]:
    """results["methods"], train_time_s and step_time_s from the per-seed records."""
    import numpy as np

    methods: dict[str, dict] = {}
    train_time: dict[str, float] = {}
    step_time: dict[str, float] = {}
    for method, recs in records.items():
        rows = [(method, "results")]
        if any(r.get("raw_input_results") for r in recs):
            rows.append((method + RAW_INPUT, "raw_input_results"))
        for name, key in rows:
            per_set: dict[str, dict] = {}
            for test in recs[0][key]:
                entry: dict[str, Any] = {}
                for metric in ("accuracy", "background_relevance", "patch_relevance"):
                    mean, std = _mean_std([r[key][test][metric] for r in recs])
                    entry[metric], entry[f"{metric}_std"] = mean, std
                entry["seeds"] = len(recs)
                per_set[test] = entry
            methods[name] = per_set
        train_time[method] = float(np.mean([r["train_time_s"] for r in recs]))
        step_time[method] = float(np.mean([r["step_time_s"] for r in recs]))
    return methods, train_time, step_time


def _pct(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "-"
    text = f"{100 * value:.1f}"
    return text + (f" ± {100 * std:.1f}" if std is not None else "")


_SET_TITLES = {"biased": "biased", "unbiased": "unbiased", "deceiving": "deceiving", OCCLUDED: "patch occluded"}


def _table_rows(results: Mapping[str, Any]) -> list[dict[str, str]]:
    rows = []
    for method, sets in results["methods"].items():
        base = method.removesuffix(RAW_INPUT)
        row = {"method": method}
        for test in (*TEST_SETS, OCCLUDED):
            if test in sets:
                row[f"acc {_SET_TITLES[test]} (%)"] = _pct(sets[test]["accuracy"], sets[test]["accuracy_std"])
        for test in TEST_SETS:
            if test in sets:
                row[f"bg rel. {test} (%)"] = _pct(sets[test]["background_relevance"],
                                                 sets[test]["background_relevance_std"])
        if "biased" in sets:
            row["patch rel. biased (%)"] = _pct(sets["biased"]["patch_relevance"], sets["biased"]["patch_relevance_std"])
        t = results["train_time_s"].get(base)
        row["train time (s)"] = f"{t:.0f}" if t is not None and method == base else ""
        rows.append(row)
    return rows


def format_table(results: Mapping[str, Any]) -> str:
    """A Markdown table of a results dict (accuracy, relevance shares, training time)."""
    rows = _table_rows(results)
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" if c == "method" else "---:" for c in columns) + "|"]
    lines += ["| " + " | ".join(row.get(c, "") for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _write_csv(results: Mapping[str, Any], path: Path) -> None:
    metrics = ("accuracy", "background_relevance", "patch_relevance")
    header = ["method", "test_set", *[f"{m}{s}" for m in metrics for s in ("", "_std")], "seeds",
              "train_time_s", "step_time_s"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for method, sets in results["methods"].items():
        base = method.removesuffix(RAW_INPUT)
        for test, entry in sets.items():
            writer.writerow([method, test, *["" if entry[f"{m}{s}"] is None else f"{entry[f'{m}{s}']:.6g}"
                                             for m in metrics for s in ("", "_std")], entry["seeds"],
                             f"{results['train_time_s'][base]:.2f}", f"{results['step_time_s'][base]:.2f}"])
    path.write_text(buffer.getvalue())


def _findings(results: Mapping[str, Any]) -> list[str]:
    """One plain sentence per method, from its numbers."""
    lines = []
    for method, sets in results["methods"].items():
        b, u, d = (sets[t]["accuracy"] for t in TEST_SETS)
        occ = sets.get(OCCLUDED, {}).get("accuracy")
        bg = sets["biased"]["background_relevance"]
        patch = sets["biased"]["patch_relevance"]
        facts = (f"biased {100 * b:.1f}%, unbiased {100 * u:.1f}%, deceiving {100 * d:.1f}%"
                 + (f", patch occluded {100 * occ:.1f}%" if occ is not None else "")
                 + f"; background relevance {100 * bg:.1f}%" + (f", on the patch {100 * patch:.1f}%" if patch is not None else ""))
        accuracies = [a for a in (b, u, d, occ) if a is not None]
        if max(accuracies) < 0.3:
            verdict = "did not learn the task (accuracy below 30% on every test set)"
        elif d < b - 0.2:
            if bg <= 0.1 or (patch is not None and patch <= 0.05):
                verdict = ("uses the shortcut although little relevance lies on the background or the patch: "
                           "it hides the shortcut from its heatmap")
            else:
                verdict = "learned the background shortcut (its heatmaps show it)"
        elif occ is not None and occ < b - 0.2:
            verdict = "depends on the patch (occluding it costs more than 20 points)"
        elif max(accuracies) - min(accuracies) > 0.2:
            verdict = "is not robust: its accuracy varies by more than 20 points with what the background holds"
        else:
            verdict = "is robust to the background bias on these test sets (within 20 points everywhere)"
        lines.append(f"{method}: {verdict} ({facts}).")
    return lines


def _figures(results: Mapping[str, Any], grid) -> dict[str, Any]:
    from ..figures import accuracy_bars, bar_plot

    acc = {m: {_SET_TITLES[t]: s[t]["accuracy"] for t in (*TEST_SETS, OCCLUDED) if t in s}
           for m, s in results["methods"].items()}
    err = {m: {_SET_TITLES[t]: (s[t]["accuracy_std"] or 0.0) for t in (*TEST_SETS, OCCLUDED) if t in s}
           for m, s in results["methods"].items()}
    several = any(s[t]["seeds"] > 1 for s in results["methods"].values() for t in s)
    figures = {
        "accuracy": accuracy_bars(acc, errors=err if several else None, title="Accuracy per test set"),
        "background_relevance": bar_plot(
            {m: 100 * s["biased"]["background_relevance"] for m, s in results["methods"].items()},
            ylabel="background relevance (%)", title="Share of |relevance| outside the mask (biased test set)"),
        "train_time": bar_plot(results["train_time_s"], ylabel="seconds",
                               title="Training time per method (fit, incl. calibration and validation)"),
    }
    if grid is not None:
        figures["heatmaps"] = grid
    return figures


def _heatmap_grid(cfg: BiasBenchConfig, tests: Mapping[str, _TestSet], runs: Path):
    """Methods x example images from each test set (seed-0 models), heatmaps of the predicted class."""
    import torch

    from ..figures import heatmap_grid
    from ..train import load_classifier

    picks = [(name, i) for name in TEST_SETS for i in range(min(cfg.n_examples, cfg.n_test))]
    if not picks:
        return None
    images = torch.stack([tests[n].images[i] for n, i in picks])
    masks = torch.stack([tests[n].masks[i] for n, i in picks])
    labels = [int(tests[n].labels[i]) for n, i in picks]
    maps, preds = {}, {}
    for method in cfg.methods:
        model, config = load_classifier(_run_dir(method, 0, runs))
        maps[method], preds[method] = _heatmaps(model, config, images, masks)
    fig = heatmap_grid(images, maps, col_titles=[f"{n}, label {y}" for (n, _), y in zip(picks, labels)])
    count = len(picks)
    for row, method in enumerate(maps, start=1):
        for col in range(count):
            fig.axes[row * count + col].set_title(f"pred {int(preds[method][col])}", fontsize=7)
    return fig


_READING = (
    "How to read this. A classifier that learned the background shortcut keeps its accuracy on the "
    "biased test set and collapses on the deceiving one (whose patch points to another class). "
    "A low share of relevance on the background alone proves nothing: a network can learn to hide "
    "the shortcut from its heatmap while still using it (measured with the reference ISNet code on a "
    "task like this one: 0.5-3% of the relevance on the patch, yet occluding the patch dropped accuracy "
    "from 99% to 28%). Judge a method by its unbiased and deceiving accuracies and by the occlusion "
    "check (biased test images whose patch is replaced by neighbouring background), read next to the "
    "relevance shares, never by the heatmaps alone."
)


def _report(out: Path, cfg: BiasBenchConfig, results: Mapping[str, Any], figures: Mapping[str, Any]) -> Path:
    from ..figures import save_figure, write_html_report

    for name, fig in figures.items():
        save_figure(fig, out / "figures" / f"{name}.png", dpi=110)
    occlusion = [
        {"method": m, "biased (%)": _pct(s["biased"]["accuracy"]),
         "patch occluded (%)": _pct(s.get(OCCLUDED, {}).get("accuracy")),
         "deceiving (%)": _pct(s["deceiving"]["accuracy"]),
         "relevance on patch, biased (%)": _pct(s["biased"]["patch_relevance"]),
         "relevance on background, biased (%)": _pct(s["biased"]["background_relevance"])}
        for m, s in results["methods"].items()
    ]
    c = results["config"]
    setup = (
        f"BG-Digits (scikit-learn handwritten digits on textured, noisy 32x32 backgrounds; a white 4x4 patch on "
        f"the border whose position encodes the class, 100% correlated in training). {cfg.n_train} training, "
        f"{cfg.n_val} validation and {cfg.n_test} images per test set (data seed {cfg.data_seed}, mask: digit "
        f"{cfg.mask}). Architecture {cfg.arch}; {c['train']['epochs']} epochs; {cfg.seeds} seed(s) per method "
        f"(mean ± standard deviation over seeds where there are several). Every method is trained by "
        f"isnet.train.fit, the pipeline behind `isnet train`."
    )
    swapped = [f"{m} ({p:g})" for m, p in c["background_swap"].items() if p > 0]
    setup += (" Trained with mask-based background swap (probability that an image gets another image's "
              f"background): {', '.join(swapped)}; the other methods without." if swapped else
              " No method was trained with background swap.")
    options = "\n".join(f"{k} = {v}" for k, v in c["train"].items() if k != "seed")
    timing = [{"method": m, "fit wall time (s)": f"{results['train_time_s'][m]:.1f}",
               "training steps only (s)": f"{results['step_time_s'][m]:.1f}"} for m in results["train_time_s"]]
    sections = [
        ("Setup", [setup, "Training options (isnet.train.TrainConfig defaults plus benchmark overrides):\n" + options
                   + "\n", f"Host: {c['host']}; {c.get('jobs', 1)} training process(es) at a time, {c['torch_threads']} torch "
                   f"thread(s) each; total time {c['total_time_s']:.0f} s."]),
        ("Results", [_READING, _table_rows(results), figures["accuracy"]]),
        ("Occlusion check", [
            "Accuracy on the biased test images with their bias patch replaced by neighbouring background, next to "
            "the biased and deceiving accuracies and the relevance shares. A model that does not use the patch "
            "keeps its biased accuracy when the patch is occluded.", occlusion,
            figures["background_relevance"]]),
        ("What the numbers say", ["\n".join(_findings(results)) + "\n"]),
    ]
    if "heatmaps" in figures:
        sections.append(("Heatmaps", [
            "LRP-Flex heatmaps of the predicted class (seed-0 model of each method; red positive, blue negative), "
            f"{cfg.n_examples} example(s) from each test set. Masked-input methods are explained on their masked input.",
            figures["heatmaps"]]))
    sections.append(("Training time", [figures["train_time"], timing]))
    return write_html_report(out / "report.html", cfg.title, sections)


def _background_swap(method: str, cfg: BiasBenchConfig) -> float:
    """Probability that a training image of ``method`` gets another image's background."""
    from ..train import background_swap_for

    return background_swap_for(METHODS[method]["variant"], cfg.train_options.get("background_swap"))


def _resolved_train_options(cfg: BiasBenchConfig) -> dict[str, Any]:
    from ..train import TrainConfig

    defaults = TrainConfig().to_dict()
    keep = {k: v for k, v in defaults.items()
            if k not in ("train", "val", "out", "variant", "deep_supervision", "resume", "classes", "num_classes",
                         "calibration", "accelerator", "devices", "num_nodes", "strategy", "quiet")}
    keep.update({"workers": 0, **cfg.train_options, "arch": cfg.arch})
    if cfg.epochs is not None:
        keep["epochs"] = cfg.epochs
    keep["image_size"] = cfg.image_size
    return keep


def run_benchmark(cfg: BiasBenchConfig, out: str | Path, *, log: Callable[[str, float | None], None] = _log) -> dict:
    """Run the benchmark into ``out`` and return the results dict (also written as results.json)."""
    import torch

    cfg.validate()
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads and cfg.jobs == 1:
        torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    log(f"{len(cfg.methods)} method(s) x {cfg.seeds} seed(s): {', '.join(cfg.methods)}; output {out}", None)
    data = _prepare_data(out / "data", cfg)
    tests = _test_sets(cfg)
    log(f"BG-Digits ready ({cfg.n_train} train, {cfg.n_val} val, {cfg.n_test} per test set) in {out / 'data'}", start)
    records = _train_all(cfg, data, tests, out / "runs", start, log)
    methods, train_time, step_time = _aggregate(records)
    results: dict[str, Any] = {
        "methods": methods,
        "train_time_s": train_time,
        "step_time_s": step_time,
        "config": {
            "bench": dataclasses.asdict(cfg),
            "train": _resolved_train_options(cfg),
            "method_options": {m: METHODS[m] for m in cfg.methods},
            "background_swap": {m: _background_swap(m, cfg) for m in cfg.methods},
            "test_sets": [*TEST_SETS, OCCLUDED],
            "calibration": {m: [r.get("calibration") for r in recs] for m, recs in records.items()},
            "host": f"{platform.platform()}, {platform.processor() or platform.machine()}",
            "torch_threads": torch.get_num_threads() if cfg.jobs == 1 else _threads_per_job(cfg),
            "jobs": cfg.jobs,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        },
    }
    log("evaluating heatmaps and writing the report", start)
    grid = _heatmap_grid(cfg, tests, out / "runs")
    results["config"]["total_time_s"] = time.perf_counter() - start
    (out / "results.json").write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    (out / "results.md").write_text(f"# {cfg.title}\n\n{format_table(results)}\n")
    _write_csv(results, out / "results.csv")
    _report(out, cfg, results, _figures(results, grid))
    log(f"wrote {out / 'results.json'}, results.md, results.csv, figures/ and report.html "
        f"(total {_clock(time.perf_counter() - start)})", start)
    return results
