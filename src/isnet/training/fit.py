"""``fit``: one training run from a configuration to a run folder.

Steps: scan the datasets (errors name the files, nothing is trained); calibrate C1/C2 with a
short standard run when a heatmap-loss objective has none; train from a fresh initialisation
with the same seed; write the run folder (:mod:`isnet.checkpoints`). A run killed at any
point resumes from its last checkpoint and ends where an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from ..checkpoints import CHECKPOINTS, CONFIG, MODEL, write_json
from ..config import RESUMABLE, TrainConfig
from ..objectives import get_objective
from .data import MaskedDataModule
from .module import ISNetModule, TrainingDiverged

__all__ = ["fit"]


class _RunFiles(Callback):
    """Writes config.json when training starts and model.pt when it ends (global rank 0 only)."""

    def __init__(self, run: Path, config: dict) -> None:
        self.run, self.config = run, config

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            write_json(self.run / CONFIG, self.config)

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            torch.save(pl_module.net.model.state_dict(), self.run / MODEL)


class _RunLogger(CSVLogger):
    """Lightning's ``CSVLogger`` writing ``RUN/metrics.csv``, appending to it on resume.

    (The stock writer deletes an existing metrics.csv when its folder is not empty.)
    """

    def __init__(self, run: Path) -> None:
        super().__init__(run, name="", version="")

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is None:
            from lightning.pytorch.loggers.csv_logs import ExperimentWriter

            class _Appending(ExperimentWriter):
                def _check_log_dir_exists(self) -> None:
                    if self._fs.isfile(self.metrics_file_path):  # keep the rows, know their columns
                        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                            self.metrics_keys = sorted(next(iter(csv.reader(file)), []))

            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _Appending(log_dir=self.log_dir)
        return self._experiment


@contextlib.contextmanager
def _quiet_lightning(quiet: bool) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")  # run folder, on resume
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")  # Lightning internals, torch 2.14
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated.*")  # Lightning's all_gather, DDP
        warnings.filterwarnings("ignore", message=".*Total length of .* across ranks is zero.*")  # no val set
        if quiet:
            for lg in loggers:
                lg.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _trainer(cfg: TrainConfig, *, max_epochs: int, logger, callbacks: Sequence[Callback],
             checkpointing: bool) -> L.Trainer:
    return L.Trainer(
        accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=cfg.strategy,
        precision=cfg.precision, max_epochs=max_epochs, logger=logger, callbacks=list(callbacks),
        enable_checkpointing=checkpointing, enable_progress_bar=not cfg.quiet, enable_model_summary=not cfg.quiet,
        gradient_clip_val=cfg.gradient_clip or None, gradient_clip_algorithm="norm",
        # "warn": deterministic algorithms wherever PyTorch has them (CUDA lacks a few backward kernels,
        # e.g. adaptive average pooling, which would otherwise raise)
        deterministic="warn" if cfg.deterministic else False,
        benchmark=False if cfg.deterministic else None,
        inference_mode=False,  # validation computes LRP heatmaps, which need autograd
        log_every_n_steps=10, num_sanity_val_steps=0,
    )


def _resume_config(given: Mapping[str, Any], run: Path) -> TrainConfig:
    path = run / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume: {path} does not exist (start the run without --resume)")
    saved = TrainConfig.from_dict(json.loads(path.read_text()))
    for name in RESUMABLE:
        if name in given:
            setattr(saved, name, given[name])
    saved.out, saved.resume = str(run), True
    return saved


def _calibrate(cfg: TrainConfig, datamodule: MaskedDataModule, run: Path) -> dict[str, float]:
    """Train a standard classifier for ``calibrate_epochs``; C1/C2 from its last epoch's heatmaps."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = ISNetModule.from_config(cfg, calibrate=True)
    logger = CSVLogger(run, name="calibration", version="")
    trainer = _trainer(cfg, max_epochs=cfg.calibrate_epochs, logger=logger, callbacks=[], checkpointing=False)
    trainer.fit(module, datamodule=datamodule)
    metrics = trainer.callback_metrics
    if "calibration/C1" not in metrics:
        raise RuntimeError("calibration run ended without recording relevance totals")
    result = {key: float(metrics[f"calibration/{key}"]) for key in ("C1", "C2", "mean", "std", "n")}
    result["n"] = int(result["n"])
    result["epochs"] = cfg.calibrate_epochs
    return result


def fit(config: TrainConfig | Mapping[str, Any], *, callbacks: Sequence[Callback] = ()) -> Path:
    """Train a classifier as configured and return the run folder.

    Steps: scan the datasets (errors name the files, nothing is trained); calibrate C1/C2 with
    a ``standard`` run of ``calibrate_epochs`` when they are not given and the variant uses the
    heatmap loss; train from a fresh initialisation (same seed); write ``config.json``,
    checkpoints, ``metrics.csv`` and ``model.pt`` to ``config.out``.

    With ``resume=True`` the run folder's ``config.json`` is reused (only the
    :data:`isnet.config.RESUMABLE` present in a ``config`` mapping replace the saved ones, e.g. a larger
    ``epochs``) and training continues from ``checkpoints/last.ckpt``, written at the end of
    every epoch (a run killed mid-epoch repeats that epoch from its start).

    Raises
    ------
    isnet.data.DatasetError
        A malformed dataset (missing mask, unreadable image, ...), before training.
    TrainingDiverged
        NaN / infinite loss; the last good checkpoint stays in ``checkpoints/last.ckpt``.
    """
    given = dict(config) if isinstance(config, Mapping) else config.to_dict()
    cfg = TrainConfig.from_dict(given)
    run = Path(cfg.out).expanduser()
    if cfg.resume:
        cfg = _resume_config(given, run)
    elif (run / CONFIG).exists() or (run / CHECKPOINTS).exists():
        raise FileExistsError(f"{run} already holds a run; pass resume (--resume) or choose another output folder")
    cfg.validate()
    objective = get_objective(cfg.variant)
    with _quiet_lightning(cfg.quiet):
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule = MaskedDataModule(
            cfg.train, cfg.val, image_size=cfg.image_size, batch_size=cfg.batch_size, workers=cfg.workers,
            seed=cfg.seed, hflip=cfg.hflip, classes=cfg.classes, train_masks=objective.needs_masks)
        if len(datamodule.classes) < 2:
            raise ValueError(f"dataset {cfg.train} has {len(datamodule.classes)} class folder(s); need at least 2")
        cfg.classes, cfg.num_classes, cfg.image_size = datamodule.classes, len(datamodule.classes), datamodule.image_size
        run.mkdir(parents=True, exist_ok=True)
        if objective.heatmap_loss and cfg.C1 is None:
            cfg.calibration = _calibrate(cfg, datamodule, run)
            cfg.C1, cfg.C2 = cfg.calibration["C1"], cfg.calibration["C2"]

        L.seed_everything(cfg.seed, workers=True, verbose=False)  # the ISNet starts from a fresh init
        resolved = cfg.to_dict()
        module = ISNetModule.from_config(cfg)
        monitor = ("val/acc", "best") if cfg.val is not None else ("train/acc_epoch", "best")
        checkpoint = ModelCheckpoint(dirpath=run / CHECKPOINTS, filename=monitor[1], monitor=monitor[0],
                                     mode="max", save_top_k=1, save_last=True, auto_insert_metric_name=False)
        logger = _RunLogger(run)
        trainer = _trainer(cfg, max_epochs=cfg.epochs, logger=logger,
                           callbacks=[checkpoint, _RunFiles(run, resolved), *callbacks], checkpointing=True)
        last = run / CHECKPOINTS / "last.ckpt"
        ckpt_path = str(last) if cfg.resume and last.is_file() else None
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        except TrainingDiverged as err:
            kept = (f"the last good checkpoint is {last}" if last.is_file()
                    else "no checkpoint had been written yet")
            raise TrainingDiverged(f"{err} Nothing was saved from the diverged epoch; {kept}.") from None
    return run
