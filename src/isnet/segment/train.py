"""``isnet segment train``: a MONAI U-Net trained with Lightning on images and masks.

Loss: MONAI's ``DiceCELoss`` with a sigmoid (soft Dice plus binary cross-entropy: the Dice term
copes with small foregrounds, the cross-entropy term gives useful gradients from the first
step). Validation: MONAI's ``DiceMetric`` and ``MeanIoU`` on the thresholded prediction
(``val/dice``, ``val/iou``; an empty prediction of an empty mask scores 1). The run folder is
the one ``isnet train`` writes: ``config.json``, ``checkpoints/{last,best}.ckpt`` (best:
highest ``val/dice``, else lowest ``train/loss``), ``metrics.csv``, ``model.pt`` at the end.
``--resume`` continues from ``last.ckpt`` with the saved options; only ``--epochs`` (not below
the epochs done) and the hardware options may change.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

from ..data.folder import DatasetError
from ..errors import UserError, UserFileNotFoundError
from ..locks import holding_lock
from ..paths import CHECKPOINTS, CONFIG, MODEL, check_run_folder, clear_run, read_run_config
from ..training.data import MaskedDataModule
from ..training.fit import _check_hardware, _quiet_lightning, _RunFiles, _RunLogger, _trainer, run_trainer
from ..training.resume import completed_epochs
from ..training.run_folder import run_folder
from .config import SEGMENT_RESUMABLE, SegmentConfig
from .predict import build_unet

__all__ = ["SegmentModule", "fit_segmenter"]

_log = logging.getLogger("isnet.training")


class SegmentModule(L.LightningModule):
    """A U-Net with one output channel, trained with Dice + cross-entropy; logs Dice and IoU."""

    def __init__(self, config: SegmentConfig) -> None:
        super().__init__()
        from monai.losses import DiceCELoss
        from monai.metrics import DiceMetric, MeanIoU

        self.save_hyperparameters({"config": config.to_dict()})
        self.config = config
        self.net = build_unet(config)
        self.loss = DiceCELoss(sigmoid=True)
        self.dice = DiceMetric(include_background=True, reduction="mean", ignore_empty=False)
        self.iou = MeanIoU(include_background=True, reduction="mean", ignore_empty=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, masks, _ = batch
        loss = self.loss(self.net(x), (masks > 0.5).float())
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"segmentation training diverged: the loss is {loss.item()} at epoch "
                                     f"{self.current_epoch}, batch {batch_idx}; try a lower --lr")
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=x.shape[0])
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, masks, _ = batch
        pred = (torch.sigmoid(self.net(x).float()) > 0.5).float()
        truth = (masks > 0.5).float()
        self.dice(pred, truth)
        self.iou(pred, truth)

    def on_validation_epoch_end(self) -> None:
        dice, iou = self.dice.aggregate().item(), self.iou.aggregate().item()  # gathered over processes
        self.dice.reset()
        self.iou.reset()
        self.log("val/dice", dice, prog_bar=True, sync_dist=False)
        self.log("val/iou", iou, sync_dist=False)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.net.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.config.epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


class _Files(_RunFiles):
    """config.json and model.pt of a segmentation run (its module's ``net`` is the U-Net itself)."""

    def network(self, pl_module: L.LightningModule) -> torch.nn.Module:
        return pl_module.net


def _resume(given: Mapping[str, Any], run: Path) -> tuple[SegmentConfig, Path | None]:
    """The saved configuration with the resumable options applied, and the checkpoint to continue from."""
    if not (run / CONFIG).is_file():
        raise UserFileNotFoundError(f"nothing to resume: {run / CONFIG} does not exist")
    saved = SegmentConfig.from_dict(read_run_config(run / CONFIG))
    changed = [f"--{k.replace('_', '-')} {v} (the run has {getattr(saved, k)})" for k, v in given.items()
               if k not in (*SEGMENT_RESUMABLE, "out", "resume") and v is not None and v != getattr(saved, k)
               and not (k in ("train", "val") and Path(v).resolve() == Path(getattr(saved, k) or "").resolve())]
    if changed:
        raise UserError(f"cannot resume {run} with changed options: {'; '.join(changed)}; only --epochs and the "
                        "hardware options may change")
    planned = saved.epochs
    for name in SEGMENT_RESUMABLE:
        if given.get(name) is not None:
            setattr(saved, name, given[name])
    saved.out, saved.resume, saved.overwrite = str(run), True, False
    last = run / CHECKPOINTS / "last.ckpt"
    if not last.is_file():
        return saved, None
    done = max(completed_epochs(last), planned if (run / MODEL).is_file() else 0)
    if saved.epochs <= done and (run / MODEL).is_file() or saved.epochs < done:
        raise UserError(f"{run} has completed {done} epochs: give --epochs above {done} to train it longer")
    return saved, last


@holding_lock("isnet segment train", run_folder)
def fit_segmenter(config: SegmentConfig | Mapping[str, Any]) -> Path:
    """Train (or, with ``resume``, continue) a segmentation run; returns the run folder.

    Options, the run folder, the hardware and the datasets (masks required; a mask of another
    size than its image is reported with both files) are checked before anything is written.
    """
    if isinstance(config, Mapping):
        given = dict(config)
    else:  # the options a caller set: those that differ from the defaults
        defaults = SegmentConfig().to_dict()
        given = {k: v for k, v in config.to_dict().items() if v != defaults[k] or k in ("out", "resume")}
    cfg = SegmentConfig.from_dict(given)
    run = Path(cfg.out).expanduser()
    ckpt_path, clear = None, []
    if cfg.resume and cfg.overwrite:
        raise UserError("--resume continues a run and --overwrite starts it again; give one of them")
    if cfg.resume:
        cfg, ckpt_path = _resume(given, run)
    else:
        cfg.validate()
        clear = check_run_folder(run, overwrite=cfg.overwrite, datasets=[d for d in (cfg.train, cfg.val) if d])
    _check_hardware(cfg)  # type: ignore[arg-type]  # reads the hardware options only
    with _quiet_lightning(cfg.quiet):
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        data = MaskedDataModule(cfg.train, cfg.val, image_size=cfg.image_size, batch_size=cfg.batch_size,
                                workers=cfg.workers, seed=cfg.seed, hflip=cfg.hflip, train_masks=True,
                                channels=cfg.in_channels)
        if cfg.val is not None and not data.val_has_masks:
            raise DatasetError(f"validation set {cfg.val} has no masks/ folder; a segmenter is validated on masks")
        cfg.check_size(data.image_size)
        cfg.image_size = data.image_size
        if clear:
            clear_run(run, clear)
        if ckpt_path is not None:
            _log.info(f"resuming {run} from {ckpt_path.name}, to {cfg.epochs} epochs")
        run.mkdir(parents=True, exist_ok=True)
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        module = SegmentModule(cfg)
        monitor, mode = ("val/dice", "max") if cfg.val else ("train/loss_epoch", "min")
        best = ModelCheckpoint(dirpath=run / CHECKPOINTS, filename="best", monitor=monitor, mode=mode,
                               save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False)
        last = ModelCheckpoint(dirpath=run / CHECKPOINTS, filename="last", monitor=None, save_top_k=1,
                               enable_version_counter=False)
        trainer = _trainer(cfg, max_epochs=cfg.epochs, logger=_RunLogger(run), checkpointing=True,  # type: ignore
                           callbacks=[best, last, _Files(run, cfg.to_dict())], root=run / CHECKPOINTS)
        run_trainer(trainer, module, datamodule=data, ckpt_path=str(ckpt_path) if ckpt_path else None)
    return run
