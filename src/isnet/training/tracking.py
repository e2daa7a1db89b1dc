"""Experiment tracking: the loggers a run writes to, and heatmap pictures per epoch.

``RUN/metrics.csv`` (Lightning's ``CSVLogger``) is always written. ``--logger tensorboard``
adds Lightning's ``TensorBoardLogger`` (event files in ``RUN/tensorboard``; ``tensorboard
--logdir RUN/tensorboard``), ``--logger mlflow`` its ``MLFlowLogger``: to the tracking server
or database in ``$MLFLOW_TRACKING_URI`` when set, else to a file store in ``RUN/mlruns``
(``MLFLOW_ALLOW_FILE_STORE=true`` ``mlflow ui --backend-store-uri RUN/mlruns``; MLflow 3 keeps
file stores behind that switch, which isnet sets for its own store). Both also receive, at the end of
every validation epoch, a picture of the first ``--log-images`` validation images above the
heatmaps the run validates (red: evidence for the explained class, blue: against).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger
from torch import Tensor

from ..config import TrainConfig
from ..errors import UserError
from ..network import input_heatmaps

__all__ = ["HeatmapPictures", "check_logger", "extra_loggers", "heatmap_picture"]

TENSORBOARD, MLRUNS = "tensorboard", "mlruns"


def check_logger(name: str) -> None:
    """Refuse a logger whose package is missing, before anything is written."""
    if name == "tensorboard":
        from lightning.pytorch.loggers.tensorboard import _TENSORBOARD_AVAILABLE

        if not _TENSORBOARD_AVAILABLE:
            raise UserError("--logger tensorboard needs the tensorboard package: pip install tensorboard")
    elif name == "mlflow":
        from lightning.pytorch.loggers.mlflow import _MLFLOW_AVAILABLE

        if not _MLFLOW_AVAILABLE:
            raise UserError("--logger mlflow needs the mlflow package: pip install mlflow (or mlflow-skinny); "
                            "or use --logger tensorboard")
    elif name != "csv":
        raise UserError(f"--logger must be csv, tensorboard or mlflow, got {name!r}")


def extra_loggers(cfg: TrainConfig, run: Path) -> list[Logger]:
    """The loggers besides ``metrics.csv`` that ``cfg.logger`` asks for."""
    if cfg.logger == "tensorboard":
        return [TensorBoardLogger(run, name=TENSORBOARD, version="", default_hp_metric=False)]
    if cfg.logger == "mlflow":
        uri = os.environ.get("MLFLOW_TRACKING_URI")  # a tracking server or database the user set up
        if not uri:  # else a file store in the run folder, which MLflow 3 keeps behind this switch
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (run / MLRUNS).resolve().as_uri()
        return [MLFlowLogger(experiment_name="isnet", run_name=run.resolve().name, tracking_uri=uri)]
    return []


def _colour(relevance: Tensor) -> Tensor:
    """(H, W) relevance -> (3, H, W) in [0, 1]: white at 0, red positive, blue negative (scaled by max |R|)."""
    r = relevance / relevance.abs().max().clamp_min(1e-12)
    pos, neg = r.clamp(min=0), (-r).clamp(min=0)
    return torch.stack([1 - neg, 1 - pos - neg, 1 - pos]).clamp(0, 1)


def heatmap_picture(images: Tensor, heatmaps: Tensor) -> Tensor:
    """A (3, 2H, N W) picture: the images (top) above their heatmaps summed over channels (bottom)."""
    rgb = images.float().cpu().clamp(0, 1)
    if rgb.shape[1] == 1:
        rgb = rgb.expand(-1, 3, -1, -1)
    maps = torch.stack([_colour(h.float().cpu().sum(0)) for h in heatmaps])
    top, bottom = torch.cat(list(rgb), dim=2), torch.cat(list(maps), dim=2)
    return torch.cat([top, bottom], dim=1)


class HeatmapPictures(Callback):
    """Logs :func:`heatmap_picture` of the first ``count`` validation images each validation epoch."""

    def __init__(self, count: int) -> None:
        self.count = count

    def _picture(self, trainer: L.Trainer, module: Any) -> Tensor | None:
        dataset = getattr(trainer.datamodule, "val_set", None)
        if dataset is None or self.count <= 0 or len(dataset) == 0:
            return None
        items = [dataset[i] for i in range(min(self.count, len(dataset)))]
        x = torch.stack([it[0] for it in items]).to(module.device)
        masks = torch.stack([it[1] for it in items]).to(module.device)
        labels = torch.tensor([it[2] for it in items], device=module.device)
        x = module.classifier_input(x, masks)
        training = module.net.training
        module.net.eval()
        try:
            with torch.enable_grad():
                _, heatmaps = module.net(x, heatmaps=True, labels=labels)
        finally:
            module.net.train(training)
        return heatmap_picture(x.detach(), input_heatmaps(heatmaps).detach()[:, 0])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        targets = [lg for lg in trainer.loggers if isinstance(lg, (TensorBoardLogger, MLFlowLogger))]
        if not targets:
            return
        picture = self._picture(trainer, pl_module)
        if picture is None:
            return
        epoch = trainer.current_epoch
        for logger in targets:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val/heatmaps", picture, global_step=epoch)
            else:
                array = (picture.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
                logger.experiment.log_image(logger.run_id, array, f"heatmaps/epoch_{epoch:03d}.png")
