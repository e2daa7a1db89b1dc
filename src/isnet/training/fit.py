"""``fit``: one training run from a configuration to a run folder.

Steps: check everything that can be checked before writing (options, run folder, resume
rules, hardware, datasets, architecture and objective); for a heatmap-loss objective, train a
standard classifier first (the warm start's first phase; it calibrates C1/C2 when the loss uses
them and they are not given); train from its weights, or from a fresh initialisation with the
same seed; write the run folder (:mod:`isnet.checkpoints`). A run killed at any point resumes from
its last checkpoint and ends where an uninterrupted run would; a run that failed is started
again with ``overwrite`` (:mod:`isnet.paths` says what may be replaced).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from ..checkpoints import CHECKPOINTS, CONFIG, MODEL, write_json
from ..config import BOUND_GROUPS, TrainConfig, current_names
from ..data.folder import DatasetError
from ..errors import UserError, short_message
from ..locks import holding_lock
from ..models import resolve_normalize
from ..objectives import Objective, foreign_options, get_objective
from ..outputs import write_atomic
from ..paths import check_run_folder, clear_run
from ..pretrained import is_weights_name
from ..signals import Terminated, lightning_handles
from ..network import calibration_groups
from .data import MaskedDataModule
from .module import ISNetModule, TrainingDiverged, at_chance
from .progress import console_progress
from .resume import explicit_options, resume_config
from .run_folder import AtomicCheckpointIO, launching_process, run_folder
from .tracking import HeatmapPictures, check_logger, extra_loggers

__all__ = ["fit"]

_log = logging.getLogger("isnet.training")
WEAK_SWAP = 0.5
"""Below this background-swap probability, a heatmap-loss run is warned that its heatmaps can hide a shortcut."""


class _RunFiles(Callback):
    """Writes config.json when training starts and model.pt when it ends (global rank 0 only)."""

    def __init__(self, run: Path, config: dict) -> None:
        self.run, self.config = run, config

    def network(self, pl_module: L.LightningModule) -> torch.nn.Module:
        """The network whose weights model.pt holds."""
        return pl_module.net.model

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            write_json(self.run / CONFIG, self.config)

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            state = self.network(pl_module).state_dict()
            write_atomic(self.run / MODEL, lambda file: torch.save(state, file))


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


def run_trainer(trainer: L.Trainer, module: L.LightningModule, **kwargs: Any) -> None:
    """``trainer.fit(module, **kwargs)``; a Ctrl-C stays a KeyboardInterrupt (Lightning ends the process with
    ``sys.exit(1)`` after its graceful shutdown), and a SIGTERM ends it with :class:`isnet.signals.Terminated`
    (Lightning stops at the next batch; a DataLoader worker killed by the same signal counts too), so the
    command line can say how to continue."""
    try:
        with lightning_handles(lambda: trainer.received_sigterm):
            trainer.fit(module, **kwargs)
    except Terminated:
        raise
    except BaseException as err:
        if trainer.received_sigterm:
            raise Terminated() from None
        if isinstance(err, SystemExit) and trainer.interrupted:
            raise KeyboardInterrupt from None
        raise


def _trainer(cfg: TrainConfig, *, max_epochs: int, logger, callbacks: Sequence[Callback],
             checkpointing: bool, root: Path | None = None) -> L.Trainer:
    """A Trainer for ``cfg``'s hardware options; ``root`` (Lightning's ``default_root_dir``) receives the
    ``hpc_ckpt_*.ckpt`` of Lightning's SLURM auto-requeue, which isnet's ``--resume`` does not read."""
    return L.Trainer(
        accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=cfg.strategy,
        precision=cfg.precision, max_epochs=max_epochs, logger=logger, default_root_dir=root,
        plugins=[AtomicCheckpointIO()],  # a full disk never leaves a truncated checkpoint
        callbacks=[*callbacks, *console_progress(cfg.quiet)],
        enable_checkpointing=checkpointing, enable_progress_bar=not cfg.quiet, enable_model_summary=not cfg.quiet,
        gradient_clip_val=cfg.gradient_clip or None, gradient_clip_algorithm="norm",
        # "warn": deterministic algorithms wherever PyTorch has them (CUDA lacks a few backward kernels,
        # e.g. adaptive average pooling, which would otherwise raise)
        deterministic="warn" if cfg.deterministic else False,
        benchmark=False if cfg.deterministic else None,
        inference_mode=False,  # validation computes LRP heatmaps, which need autograd
        log_every_n_steps=10, num_sanity_val_steps=0,
    )


_LAUNCHERS = ("MASTER_ADDR", "NODE_RANK", "WORLD_SIZE", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID", "LSB_JOBID",
              "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def _check_hardware(cfg: TrainConfig) -> None:
    """Refuse hardware options that cannot work here, before anything is written."""
    if cfg.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(f"--accelerator {cfg.accelerator}: no CUDA GPU is available here "
                        "(torch.cuda.is_available() is False); use --accelerator cpu or auto")
    if cfg.num_nodes > 1 and not any(os.environ.get(name) for name in _LAUNCHERS):
        raise UserError(f"--num-nodes {cfg.num_nodes} needs a multi-node launch, or the run waits forever for the "
                        "other nodes: start the command on every node with MASTER_ADDR, MASTER_PORT and NODE_RANK "
                        "set, or under SLURM or torchrun (WORLD_SIZE)")
    try:
        with _quiet_lightning(True):
            _trainer(cfg, max_epochs=1, logger=False, callbacks=[], checkpointing=False)
    except (MisconfigurationException, ValueError, TypeError) as err:  # Lightning's words for bad values
        options = (f"--accelerator {cfg.accelerator} --devices {cfg.devices} --num-nodes {cfg.num_nodes} "
                   f"--strategy {cfg.strategy} --precision {cfg.precision}")
        raise UserError(f"the hardware options ({options}) do not work here: {err}") from None


def _check_model(cfg: TrainConfig, *, pretrained: bool) -> None:
    """Build the module once (architecture, weights, deep-supervision layers, the objective's own checks)."""
    probe = TrainConfig.from_dict(cfg.to_dict())
    for suffix in BOUND_GROUPS:
        if getattr(probe, "C1" + suffix) is None:  # placeholders: only the construction is checked
            setattr(probe, "C1" + suffix, 1.0)
            setattr(probe, "C2" + suffix, 25.0)
    ISNetModule.from_config(probe, pretrained=pretrained)


def _resolve_inputs(cfg: TrainConfig, objective: Objective, *, new: bool) -> None:
    """Settle what the model starts from and reads: weights path, normalisation, segmenter, logger."""
    check_logger(cfg.logger)
    if cfg.segmenter and "segmenter" not in objective.hyperparameters:
        raise UserError(f"--segmenter is used by --objective seg-classify only, not by {cfg.objective}")
    if new:  # config.json records absolute paths, so that eval and explain work from any folder
        if cfg.weights is not None and not is_weights_name(cfg.weights):
            cfg.weights = str(Path(cfg.weights).expanduser().resolve())
        if cfg.segmenter:
            cfg.segmenter = str(Path(cfg.segmenter).expanduser().resolve())
    cfg.normalize = resolve_normalize(cfg.normalize, cfg.weights, cfg.arch)


def _objective(name: str) -> Objective:
    try:
        return get_objective(name)
    except ValueError as err:
        raise UserError(f"--objective: {err}") from None


@contextlib.contextmanager
def _unfinished_run_hints(run: Path) -> Iterator[None]:
    """Errors after the run folder was written say how to continue or start again."""
    try:
        yield
    except TrainingDiverged as err:
        raise TrainingDiverged(f"{err} To train with other options, run the command again with --overwrite "
                               "(this unfinished run is replaced) or another --out.") from None
    except DatasetError as err:
        raise DatasetError(f"{short_message(err)}\n{run} now holds an unfinished run: fix the file, then continue "
                           "with --resume, or start again with --overwrite.") from None


def _calibrate(cfg: TrainConfig, datamodule: MaskedDataModule, run: Path,
               groups: Sequence[str]) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Train a standard classifier until it has learnt; C1/C2 of the heatmap ``groups`` (their suffixes,
    :func:`isnet.network.calibration_groups`) from its last epoch's heatmaps, and the classifier's weights.

    It trains :meth:`~isnet.config.TrainConfig.first_phase_epochs` epochs, then on while its training
    accuracy is at chance (:func:`isnet.training.module.at_chance`), up to half of ``epochs``; a network
    still at chance is warned about: an ISNet calibrated on it, or starting from it, can satisfy its
    heatmap loss without learning to classify. ``groups`` may be empty (bounds given: only the warm start).
    """
    first = cfg.first_phase_epochs()
    limit = max(first, cfg.epochs // 2)
    calibrating = cfg.uses_bounds() and bool(groups)
    if calibrating:
        what = "calibrating C1 " + ("(C2 is recorded, unused with --foreground floor)" if cfg.foreground == "floor"
                                    else "and C2")
    else:
        what = "the warm start's first phase (C1 and C2 are " + ("recorded, unused with --B 0)" if groups else "given)")
    _log.info(f"{what}: a standard classifier trains for {first} epoch(s) (up to {limit} while at "
              f"chance); its last epoch records the total relevance of the {cfg.objective} heatmaps")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = ISNetModule.from_config(cfg, calibrate=True)
    logger = CSVLogger(run, name="calibration", version="")
    trainer = _trainer(cfg, max_epochs=limit, logger=logger, callbacks=[], checkpointing=False,
                       root=run / "calibration")
    run_trainer(trainer, module, datamodule=datamodule)
    metrics = trainer.callback_metrics
    if "calibration/C1" not in metrics:
        raise RuntimeError("calibration run ended without recording relevance totals")
    result: dict[str, float] = {}
    for suffix in groups:
        keys = [key + suffix for key in ("C1", "C2", "mean", "std", "n")]
        result |= {key: float(metrics[f"calibration/{key}"]) for key in keys}
        result["n" + suffix] = int(result["n" + suffix])
        _log.info(f"calibrated C1{suffix} = {result['C1' + suffix]:.4g}, C2{suffix} = {result['C2' + suffix]:.4g} "
                  f"(relevance totals of {result['n' + suffix]} heatmaps: mean {result['mean' + suffix]:.4g}, "
                  f"std {result['std' + suffix]:.4g})")
    result["epochs"] = int(trainer.current_epoch)
    result["train_accuracy"] = float(metrics["calibration/train_accuracy"])
    if at_chance(result["train_accuracy"], cfg.num_classes):
        how = " and ".join(w for w, on in (("starts from", cfg.warm_start), ("is calibrated on", calibrating)) if on)
        risk = f"the ISNet {how} a network that has not learnt, and"
        _log.warning(f"the calibration network was still at chance after {result['epochs']} epoch(s) (training "
                     f"accuracy {100 * result['train_accuracy']:.1f}%, chance {100 / cfg.num_classes:.1f}%): {risk} "
                     "can satisfy its heatmap loss without learning to classify. Check that the labels match the "
                     "images; train longer (--epochs, up to half of which calibration may use) or change --lr")
    elif result["epochs"] > first:
        _log.info(f"the calibration network learnt in {result['epochs']} epochs (training accuracy "
                  f"{100 * result['train_accuracy']:.1f}%)")
    state = module.net.model.state_dict()
    if cfg.warm_start:  # the weights the heatmap-loss training starts from
        write_atomic(run / "calibration" / MODEL, lambda file: torch.save(state, file))
    return result, state


def _checkpoints(run: Path, monitored: bool) -> list[ModelCheckpoint]:
    """``best.ckpt`` (best monitored accuracy) and ``last.ckpt``, written at the end of every epoch.

    ``last`` is a callback of its own: Lightning's ``save_last`` skips epochs that did not
    improve the monitored metric, and a resume from such a ``last.ckpt`` would repeat them.
    """
    metric = "val/acc" if monitored else "train/acc_epoch"
    best = ModelCheckpoint(dirpath=run / CHECKPOINTS, filename="best", monitor=metric, mode="max", save_top_k=1,
                           auto_insert_metric_name=False, enable_version_counter=False)
    last = ModelCheckpoint(dirpath=run / CHECKPOINTS, filename="last", monitor=None, save_top_k=1,
                           enable_version_counter=False)
    return [best, last]


@holding_lock("isnet train", run_folder)  # in the launching process: a DDP run's others write into its run
def fit(config: TrainConfig | Mapping[str, Any], *, callbacks: Sequence[Callback] = ()) -> Path:
    """Train a classifier as configured and return the run folder.

    Steps: check the options, the run folder, the hardware, the datasets (errors name the
    files), the architecture and the objective, all before anything is written; for a
    heatmap-loss objective with ``warm_start``, or whose loss uses C1/C2 (``B > 0``) without
    them given, train a ``standard`` run of ``calibrate_epochs`` first (:func:`_calibrate`);
    train from its weights (``warm_start``) or a fresh initialisation (same seed); write
    ``config.json`` (the resolved configuration, with the background-swap probability used),
    checkpoints, ``metrics.csv`` and ``model.pt`` to ``config.out``. Progress lines (calibration
    and its values, resume, overwrite) go to the ``isnet.training`` logger at INFO level; the
    command prints them.

    A folder that already holds a run is refused unless ``resume`` or ``overwrite``
    (:func:`isnet.paths.check_run_folder`). With ``resume=True`` the run folder's
    ``config.json`` is reused and training continues from ``checkpoints/last.ckpt``, written at
    the end of every epoch (a run killed mid-epoch repeats that epoch from its start); only the
    :data:`isnet.config.RESUMABLE` options may differ from the saved ones, and ``epochs`` may
    not fall below the epochs completed (:mod:`isnet.training.resume`).

    Raises
    ------
    isnet.errors.UserError
        An option, folder or file that cannot work (the run folder is left as it was).
    isnet.data.DatasetError
        A malformed dataset (missing mask, unreadable image, ...), before training.
    TrainingDiverged
        NaN / infinite loss; the last good checkpoint stays in ``checkpoints/last.ckpt``.
    """
    if isinstance(config, Mapping):
        config = current_names(config, source="fit()")  # an earlier option name, with a warning
    given = explicit_options(config)
    cfg = TrainConfig.from_dict(config if isinstance(config, Mapping) else config.to_dict())
    run = Path(cfg.out).expanduser()
    checks = launching_process()  # the other processes of a DDP run trust its checks
    clear: list[str] = []
    ckpt_path = None
    if cfg.resume and cfg.overwrite:
        raise UserError("--resume continues a run and --overwrite starts it again; give one of them")
    if cfg.resume:
        cfg, ckpt_path = resume_config(given, run, check=checks)
    else:
        cfg.validate()
        if checks:
            clear = check_run_folder(run, overwrite=cfg.overwrite, datasets=[d for d in (cfg.train, cfg.val) if d])
    objective = _objective(cfg.objective)
    defaults = TrainConfig().to_dict()  # an option at its default (a --config file lists them all) is not flagged
    for name in foreign_options(objective, [k for k, v in given.items() if v != defaults.get(k)]):
        _log.warning(f"--{name.replace('_', '-')} is not used by --objective {cfg.objective}; it has no effect")
    cfg.background_swap = objective.swap_probability(cfg.background_swap)  # config.json records the value used
    if objective.heatmap_loss and cfg.background_swap < WEAK_SWAP and not cfg.resume:
        _log.warning(f"--objective {cfg.objective} with --background-swap {cfg.background_swap:g}: on BG-Digits, "
                     f"ISNets trained with less than {WEAK_SWAP:g} swap read a background shortcut more than a plain "
                     "classifier with the same swap, while their heatmaps hide it (docs/benchmark.md, swap dose); "
                     "judge this run by its accuracy on data without the shortcut, not by its heatmaps")
    _resolve_inputs(cfg, objective, new=not cfg.resume)
    _check_hardware(cfg)
    with _quiet_lightning(cfg.quiet):
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule = MaskedDataModule(
            cfg.train, cfg.val, image_size=cfg.image_size, batch_size=cfg.batch_size, workers=cfg.workers,
            seed=cfg.seed, hflip=cfg.hflip, acquisition=cfg.acquisition, classes=cfg.classes,
            train_masks=objective.needs_masks or cfg.background_swap > 0,  # the swap reads the masks too
            channels=cfg.in_channels)
        if len(datamodule.classes) < 2:
            raise DatasetError(f"dataset {cfg.train} has {len(datamodule.classes)} class folder(s); need at least 2")
        cfg.classes, cfg.num_classes = datamodule.classes, len(datamodule.classes)
        cfg.image_size = datamodule.image_size
        _check_model(cfg, pretrained=ckpt_path is None)  # a resumed run's checkpoint replaces the weights
        # every check passed: from here on the run folder is written
        if clear:
            removed = clear_run(run, clear)
            _log.info(f"--overwrite: removed the unfinished run's {', '.join(removed)} from {run}")
        if ckpt_path is not None:
            _log.info(f"resuming {run} from {ckpt_path.name}, to {cfg.epochs} epochs")
        run.mkdir(parents=True, exist_ok=True)
        with _unfinished_run_hints(run):
            missing = [g for g in calibration_groups(objective.explains) if getattr(cfg, "C1" + g) is None]
            warm = None
            if objective.heatmap_loss and ckpt_path is None and (cfg.warm_start or (cfg.uses_bounds() and missing)):
                cfg.calibration, warm = _calibrate(cfg, datamodule, run, missing)
                for suffix in missing:  # bounds given on the command line are kept
                    for key in ("C1" + suffix, "C2" + suffix):
                        setattr(cfg, key, cfg.calibration[key])

            L.seed_everything(cfg.seed, workers=True, verbose=False)  # the ISNet starts from a fresh init
            resolved = cfg.to_dict()
            module = ISNetModule.from_config(cfg, pretrained=ckpt_path is None)
            if warm is not None and cfg.warm_start and ckpt_path is None:
                module.net.model.load_state_dict(warm)
                _log.info("warm start: training continues from the calibration network's weights")
            loggers = [_RunLogger(run), *extra_loggers(cfg, run)]
            pictures = [HeatmapPictures(cfg.log_images)] if len(loggers) > 1 and cfg.log_images else []
            trainer = _trainer(cfg, max_epochs=cfg.main_epochs(), logger=loggers, checkpointing=True,
                               callbacks=[*_checkpoints(run, cfg.val is not None), _RunFiles(run, resolved),
                                          *pictures, *callbacks], root=run / CHECKPOINTS)
            last = run / CHECKPOINTS / "last.ckpt"
            try:
                run_trainer(trainer, module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
            except TrainingDiverged as err:
                kept = (f"the last good checkpoint is {last}" if last.is_file()
                        else "no checkpoint had been written yet")
                raise TrainingDiverged(f"{err} Nothing was saved from the diverged epoch; {kept}.") from None
    return run
