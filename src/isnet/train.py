"""Training ISNets with Lightning: the module, the data module, and ``fit`` / ``load_classifier``.

* :class:`ISNetModule` wraps :class:`isnet.ISNet` and :class:`isnet.ISNetLoss` in a
  ``LightningModule``; what one training step optimises is looked up by variant in
  :data:`OBJECTIVES` (add a baseline with :func:`register_objective`).
* :class:`MaskedDataModule` serves :class:`isnet.data.MaskedImageFolder` train / val / test sets.
* :func:`fit` runs a whole training run from a :class:`TrainConfig` (calibrating C1/C2 first
  when they are not given) and writes the run folder; ``isnet train`` calls it.
* :func:`load_classifier` returns the plain classifier of a run folder or checkpoint.

A run folder holds ``config.json`` (the resolved configuration), ``checkpoints/last.ckpt`` and
``checkpoints/best.ckpt``, ``metrics.csv`` (Lightning's ``CSVLogger``), ``hparams.yaml`` and,
after a successful run, ``model.pt`` (the classifier's state dict).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import random
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from .data import MaskedImageFolder, make_transform
from .data.augment import swap_backgrounds
from .loss import ISNetLoss, calibrate
from .metrics import BackgroundRelevance
from .models import build_model
from .variants import ISNet

__all__ = [
    "OBJECTIVES", "ISNetModule", "MaskedDataModule", "StepOutput", "TrainConfig", "TrainingDiverged",
    "fit", "load_classifier", "register_objective",
]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "cosine", "step")
RUNTIME_FIELDS = ("epochs", "accelerator", "devices", "num_nodes", "strategy", "precision", "workers", "quiet")
"""Options that ``resume`` takes from the new call; everything else comes from the run's config.json."""


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite; training stopped before that step's update."""


# --------------------------------------------------------------------------------------------
# configuration


@dataclass
class TrainConfig:
    """Everything a training run depends on; ``fit`` fills in the resolved fields.

    Data: ``train``, ``val`` (dataset roots, ``images/`` + ``masks/``), ``image_size`` (None:
    the side of the first training image, which must then be square), ``hflip``.
    Model: ``arch`` (``small_cnn`` or a torchvision name), ``variant`` (a key of
    :data:`OBJECTIVES`), ``deep_supervision`` (False, True or module names), LRP options
    ``epsilon``, ``zb``, ``selective_class``, ``selective_eps``.
    Loss: ``P`` (heatmap-loss weight), ``p_warmup`` (epochs of linear warm-up of P, 0 = none;
    safe with the background swap, which keeps the shortcut out while P is small),
    ``d``, ``E``, ``A``, ``B``, ``C1``, ``C2`` (None: calibrated), ``foreground``, ``norm``,
    ``d_loss``, ``calibrate_epochs``, ``background_swap`` (probability that a training image
    gets another image's background; None: the objective's default, 1 for the ISNets and
    ``swap``, 0 otherwise).
    Baselines (:mod:`isnet.baselines`): ``rrr_lambda``, ``gradcam_weight``, ``gradcam_layer``
    (None: the last convolutional feature map).
    Optimisation: ``epochs``, ``batch_size``, ``lr``, ``optimizer`` (sgd | adam | adamw),
    ``momentum`` (SGD), ``weight_decay`` (None: 0, or 0.01 for AdamW), ``schedule``
    (none | cosine | step), ``lr_step`` (epochs per step decay, None: epochs // 3), ``lr_gamma``,
    ``gradient_clip`` (norm; None or 0 = off).
    Run: ``seed``, ``out``, ``deterministic``, ``workers``, ``quiet``, ``resume`` and the
    Lightning ``accelerator``, ``devices``, ``num_nodes``, ``strategy``, ``precision``.
    Resolved by ``fit``: ``classes``, ``num_classes``, ``image_size``, ``C1``/``C2``,
    ``calibration`` (statistics of the calibration run).
    """

    train: str | None = None
    val: str | None = None
    out: str = "run"
    arch: str = "small_cnn"
    variant: str = "selective"
    deep_supervision: bool | list[str] = False
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.001
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float | None = None
    schedule: str = "cosine"
    lr_step: int | None = None
    lr_gamma: float = 0.1
    image_size: int | None = None
    hflip: bool = False
    P: float = 0.7
    p_warmup: float = 3.0
    d: float = 0.99
    E: float = 1.0
    A: float = 1.0
    B: float = 1.0
    C1: float | None = None
    C2: float | None = None
    foreground: str = "L2"
    norm: str = "absRoIMean"
    d_loss: float = 1.0
    epsilon: float = 0.01
    zb: bool = True
    selective_class: str = "lowest"
    selective_eps: float = 0.01
    calibrate_epochs: int = 2
    background_swap: float | None = None
    rrr_lambda: float = 10.0
    gradcam_weight: float = 1.0
    gradcam_layer: str | None = None
    seed: int = 0
    gradient_clip: float | None = 1.0
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    deterministic: bool = True
    workers: int = 2
    resume: bool = False
    quiet: bool = False
    classes: list[str] | None = None
    num_classes: int | None = None
    calibration: dict | None = None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training options {unknown}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("train", "val", "out"):
            if out[key] is not None:
                out[key] = str(out[key])
        return out

    def validate(self) -> None:
        """Raise ValueError on an option out of range."""
        if self.variant not in OBJECTIVES:
            raise ValueError(f"unknown variant {self.variant!r}; choose one of {sorted(OBJECTIVES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if not 0.0 <= self.P <= 1.0:
            raise ValueError(f"P must be in [0, 1], got {self.P}")
        if self.p_warmup < 0 or self.calibrate_epochs < 1 or self.workers < 0 or self.seed < 0:
            raise ValueError("p_warmup, workers and seed must be >= 0 and calibrate_epochs >= 1")
        if (self.C1 is None) != (self.C2 is None):
            raise ValueError("give both C1 and C2, or neither (then they are calibrated)")
        if self.C1 is not None and not 0.0 < self.C1 <= self.C2:
            raise ValueError(f"need 0 < C1 <= C2, got C1={self.C1}, C2={self.C2}")
        if self.background_swap is not None and not 0.0 <= self.background_swap <= 1.0:
            raise ValueError(f"background_swap must be in [0, 1], got {self.background_swap}")
        if self.train is None:
            raise ValueError("no training set: set train to a dataset root (images/ + masks/)")


def _needs_masks(variant: str) -> bool:
    return OBJECTIVES[variant].needs_masks


def _uses_heatmap_loss(variant: str) -> bool:
    return OBJECTIVES[variant].heatmap_loss


# --------------------------------------------------------------------------------------------
# objectives: what one training step optimises, per variant


@dataclass
class StepOutput:
    """What an objective returns for one batch.

    ``loss`` is optimised; ``terms`` are logged as ``train/<name>``; ``heatmaps``
    (detached input heatmaps, (B, K, C, H, W)), when given, feed the logged background share.
    """

    loss: Tensor
    logits: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    heatmaps: Tensor | None = None


ObjectiveFn = Callable[["ISNetModule", Tensor, Tensor, Tensor], StepOutput]


@dataclass(frozen=True)
class Objective:
    """A training objective: ``fn(module, images, masks, labels) -> StepOutput``.

    ``isnet_variant`` is the :class:`isnet.ISNet` variant the module wraps (its heatmaps are
    the ones validated); ``heatmap_loss`` says whether the objective uses C1/C2 (and so
    triggers calibration); ``needs_masks`` whether training masks are required;
    ``background_swap`` the default probability of training on another image's background.
    """

    fn: ObjectiveFn
    isnet_variant: str = "standard"
    heatmap_loss: bool = False
    needs_masks: bool = True
    background_swap: float = 0.0


@contextlib.contextmanager
def float32_region(x: Tensor):
    """Autocast off (so losses run in float32 under ``bf16-mixed`` / ``16-mixed``)."""
    device_type = x.device.type if x.device.type in ("cuda", "cpu", "xpu", "mps", "hpu") else "cpu"
    with torch.autocast(device_type=device_type, enabled=False):
        yield


def _input_maps(heatmaps: Tensor | Mapping[str, Tensor]) -> Tensor:
    return heatmaps["input"] if isinstance(heatmaps, Mapping) else heatmaps


def _as_float(heatmaps: Tensor | Mapping[str, Tensor]) -> Tensor | dict[str, Tensor]:
    if isinstance(heatmaps, Mapping):
        return {name: h.float() for name, h in heatmaps.items()}
    return heatmaps.float()


def standard_objective(module: ISNetModule, x: Tensor, masks: Tensor, labels: Tensor) -> StepOutput:
    """Cross-entropy only: the plain classifier."""
    logits = module.net(x)
    with float32_region(x):
        ce = F.cross_entropy(logits.float(), labels)
    return StepOutput(ce, logits, {"ce": ce})


def isnet_objective(module: ISNetModule, x: Tensor, masks: Tensor, labels: Tensor) -> StepOutput:
    """``(1 - P) * CE + P * heatmap loss`` on the variant's heatmaps (loss in float32)."""
    logits, heatmaps = module.net(x, heatmaps=True, labels=labels)
    with float32_region(x):
        terms = module.criterion(logits.float(), labels, _as_float(heatmaps), masks.float())
        p = module.current_P()
        total = (1.0 - p) * terms.cross_entropy + p * terms.heatmap
    return StepOutput(total, logits, {"ce": terms.cross_entropy, "heatmap": terms.heatmap},
                      _input_maps(heatmaps).detach())


OBJECTIVES: dict[str, Objective] = {
    "standard": Objective(standard_objective, "standard", heatmap_loss=False, needs_masks=False),
    "original": Objective(isnet_objective, "original", heatmap_loss=True, background_swap=1.0),
    "selective": Objective(isnet_objective, "selective", heatmap_loss=True, background_swap=1.0),
    "stochastic": Objective(isnet_objective, "stochastic", heatmap_loss=True, background_swap=1.0),
    "swap": Objective(standard_objective, "standard", heatmap_loss=False, background_swap=1.0),
}
"""Variant name -> :class:`Objective`. Baselines (RRR, Grad-CAM supervision, ...) register here."""


def classifier_input(x: Tensor, masks: Tensor | None, variant: str) -> Tensor:
    """What the trained classifier of ``variant`` sees at inference: ``x``, or ``x * mask`` for
    masked-input baselines (segment-then-classify, :mod:`isnet.baselines`)."""
    try:
        from .baselines import model_input
    except ImportError:  # pragma: no cover - baselines not installed
        return x
    return model_input(x, masks, variant)


def needs_masked_input(variant: str) -> bool:
    """Whether ``variant``'s classifier expects background-masked inputs."""
    try:
        from .baselines import needs_masked_input as needs
    except ImportError:  # pragma: no cover
        return False
    return needs(variant)


def background_swap_for(variant: str, given: float | None) -> float:
    """The swap probability a run trains ``variant`` with: ``given``, or the objective's default."""
    return OBJECTIVES[variant].background_swap if given is None else float(given)


def register_objective(name: str, fn: ObjectiveFn, *, isnet_variant: str = "standard",
                       heatmap_loss: bool = False, needs_masks: bool = True) -> None:
    """Make ``variant=name`` train with ``fn(module, images, masks, labels) -> StepOutput``.

    ``module.net`` is ``ISNet(model, isnet_variant)``, ``module.criterion`` the configured
    :class:`isnet.ISNetLoss`, ``module.config`` the resolved configuration (a dict) and
    ``module.current_P()`` the (warmed-up) heatmap-loss weight.
    """
    OBJECTIVES[name] = Objective(fn, isnet_variant, heatmap_loss, needs_masks)


# --------------------------------------------------------------------------------------------
# Lightning module


def _epoch_seed(seed: int, epoch: int, rank: int, stream: int = 0) -> int:
    """A 32-bit seed derived from (seed, epoch, rank, stream)."""
    return int(np.random.SeedSequence([seed, epoch, rank, stream]).generate_state(1)[0])


class ISNetModule(L.LightningModule):
    """An ISNet (or baseline) classifier as a ``LightningModule``.

    Parameters
    ----------
    config
        A resolved :class:`TrainConfig` as a dict (``num_classes``, ``image_size`` and, for
        heatmap variants, ``C1``/``C2`` set).
    calibrate_for
        For a ``standard`` calibration run: the heatmap variant whose relevance totals are
        recorded during the last epoch; C1/C2 are then logged as ``calibration/C1|C2`` and
        kept in :attr:`calibration`.

    Logged: ``train/loss``, ``train/ce``, ``train/heatmap``, ``train/acc``, ``train/bg_share``
    (from the training heatmaps), ``train/P`` (with warm-up), ``val/ce``, ``val/acc``,
    ``val/bg_share`` (the variant's heatmaps in eval mode).
    """

    def __init__(self, config: Mapping[str, Any], calibrate_for: str | None = None) -> None:
        super().__init__()
        config = TrainConfig.from_dict(config).to_dict()
        self.save_hyperparameters({"config": config, "calibrate_for": calibrate_for})
        self.config = config
        objective = OBJECTIVES.get(config["variant"])
        if objective is None:
            raise ValueError(f"unknown variant {config['variant']!r}; choose one of {sorted(OBJECTIVES)}")
        if objective.heatmap_loss and (config["C1"] is None or config["C2"] is None):
            raise ValueError(f"variant {config['variant']!r} needs C1 and C2 (fit() calibrates them)")
        self.objective = objective
        self.background_swap = background_swap_for(config["variant"], config["background_swap"])
        model = build_model(config["arch"], config["num_classes"], image_size=config["image_size"])
        layer = config["gradcam_layer"]
        if layer is not None and layer not in dict(model.named_modules()):
            raise ValueError(f"gradcam_layer {layer!r} is not a module of {config['arch']}; names come from "
                             "model.named_modules()")
        lrp = dict(epsilon=config["epsilon"], zb=config["zb"], selective_eps=config["selective_eps"],
                   selective_class=config["selective_class"])
        self.net = ISNet(model, objective.isnet_variant, deep_supervision=config["deep_supervision"], **lrp)
        self.criterion = ISNetLoss(
            config["P"], d=config["d"], E=config["E"], A=config["A"], B=config["B"],
            C1=config["C1"] if config["C1"] is not None else 1.0,
            C2=config["C2"] if config["C2"] is not None else 25.0,
            foreground=config["foreground"], norm=config["norm"], d_loss=config["d_loss"])
        k = config["num_classes"]
        self.train_acc, self.val_acc = MulticlassAccuracy(k, average="micro"), MulticlassAccuracy(k, average="micro")
        self.train_bg, self.val_bg = BackgroundRelevance(), BackgroundRelevance()
        self.val_ce = MeanMetric()
        self.train_means = nn.ModuleDict()
        # the calibration network shares the model; kept out of the module tree (and state dict)
        self.__dict__["_calibration_net"] = (
            ISNet(model, calibrate_for, **lrp) if calibrate_for is not None else None)
        self._totals: list[Tensor] = []
        self._recording = False
        self.calibration: dict[str, float] | None = None

    # ---- helpers
    def current_P(self) -> float:
        """The heatmap-loss weight at this step: ``P``, linearly warmed up over ``p_warmup`` epochs."""
        P, warmup = self.config["P"], self.config["p_warmup"]
        if warmup <= 0 or self._trainer is None:
            return P
        steps = warmup * max(1, int(self.trainer.num_training_batches))
        return P * min(1.0, (self.global_step + 1) / steps)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _check_finite(self, out: StepOutput, batch_idx: int) -> None:
        finite = torch.isfinite(out.loss.detach())
        ok = self.trainer.strategy.reduce_boolean_decision(finite, all=True) if self._trainer else bool(finite)
        if not ok:
            terms = ", ".join(f"{name} {value.detach().float().item():.4g}" for name, value in out.terms.items())
            raise TrainingDiverged(
                f"training diverged: the loss is {out.loss.detach().float().item()} at epoch "
                f"{self.current_epoch}, batch {batch_idx} ({terms}); training stopped before this update. "
                "Try a lower --lr, a smaller --P or a --p-warmup, keep gradient clipping on, or use "
                "--precision 32-true.")

    # ---- hooks
    def on_train_epoch_start(self) -> None:
        # RNG streams as a function of (seed, epoch, rank): a resumed run draws what an uninterrupted one does
        s = _epoch_seed(self.config["seed"], self.current_epoch, self.global_rank)
        torch.manual_seed(s)
        random.seed(s)
        np.random.seed(s % 2**32)
        self._recording = (self._calibration_net is not None
                           and self.current_epoch == self.trainer.max_epochs - 1)
        self._totals = []

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, masks, labels = batch
        if self.background_swap > 0:
            x = swap_backgrounds(x, masks, self.background_swap)
        out = self.objective.fn(self, x, masks, labels)
        self._check_finite(out, batch_idx)
        n = labels.shape[0]
        self._log_mean("loss", out.loss, n, prog_bar=True)
        for name, value in out.terms.items():
            self._log_mean(name, value, n)
        self.train_acc(out.logits.detach(), labels)
        self.log("train/acc", self.train_acc, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        if out.heatmaps is not None:
            self.train_bg(out.heatmaps, masks)
            self.log("train/bg_share", self.train_bg, on_step=True, on_epoch=True, batch_size=n)
        if self.config["p_warmup"] > 0 and self.objective.heatmap_loss:
            self.log("train/P", self.current_P(), on_step=True, on_epoch=True, batch_size=n, sync_dist=False)
        if self._recording:
            self._record_totals(x, labels)
        return out.loss

    def _log_mean(self, name: str, value: Tensor, n: int, prog_bar: bool = False) -> None:
        # a MeanMetric per term: local values per step, exact means over all ranks per epoch,
        # without a collective per step
        if name not in self.train_means:
            self.train_means[name] = MeanMetric().to(self.device)
        metric = self.train_means[name]
        metric(value.detach().float(), n)
        self.log(f"train/{name}", metric, on_step=True, on_epoch=True, prog_bar=prog_bar, batch_size=n,
                 metric_attribute=f"train_means.{name}")

    def _record_totals(self, x: Tensor, labels: Tensor) -> None:
        # A fresh pass with the model in train mode (as in the papers) but no graph kept: the
        # wrapper's own flag is off (ISNet builds the graph only when it is training); the shared
        # model keeps its mode. (ISNet's heatmaps cannot be computed under torch.no_grad().)
        self._calibration_net.training = False
        _, heatmaps = self._calibration_net(x, heatmaps=True, labels=labels)
        maps = _input_maps(heatmaps).detach().float()
        self._totals.append(maps.abs().sum((2, 3, 4)).flatten())  # one total per explained heatmap

    def on_train_epoch_end(self) -> None:
        if not self._recording:
            return
        totals = self.all_gather(torch.cat(self._totals)).flatten()
        c1, c2 = calibrate(totals)
        self.calibration = {"C1": c1, "C2": c2, "mean": totals.double().mean().item(),
                            "std": totals.double().std().item(), "n": int(totals.numel())}
        # logged so the values also reach the launching process under ddp_spawn
        for key in ("C1", "C2", "mean", "std", "n"):
            self.log(f"calibration/{key}", float(self.calibration[key]), on_epoch=True, sync_dist=True)
        self._recording, self._totals = False, []

    def validation_step(self, batch, batch_idx: int) -> None:
        x, masks, labels = batch
        x = classifier_input(x, masks, self.config["variant"])
        with torch.enable_grad():  # LRP needs autograd; eval mode keeps the heatmap out of any graph
            logits, heatmaps = self.net(x, heatmaps=True, labels=labels)
        logits, maps = logits.detach(), _input_maps(heatmaps).detach().float()
        n = labels.shape[0]
        with float32_region(x):
            self.val_ce.update(F.cross_entropy(logits.float(), labels), n)
        self.val_acc.update(logits, labels)
        self.log("val/ce", self.val_ce, on_epoch=True, batch_size=n)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True, batch_size=n)
        if getattr(self.trainer.datamodule, "val_has_masks", True):
            self.val_bg.update(maps, masks)
            self.log("val/bg_share", self.val_bg, on_epoch=True, batch_size=n)

    def configure_optimizers(self):
        c = self.config
        params = self.net.model.parameters()
        if c["optimizer"] == "sgd":
            opt = torch.optim.SGD(params, lr=c["lr"], momentum=c["momentum"], weight_decay=c["weight_decay"] or 0.0)
        elif c["optimizer"] == "adam":
            opt = torch.optim.Adam(params, lr=c["lr"], weight_decay=c["weight_decay"] or 0.0)
        else:
            wd = 0.01 if c["weight_decay"] is None else c["weight_decay"]
            opt = torch.optim.AdamW(params, lr=c["lr"], weight_decay=wd)
        if c["schedule"] == "none":
            return opt
        if c["schedule"] == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=c["epochs"])
        else:
            step = c["lr_step"] or max(1, c["epochs"] // 3)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=step, gamma=c["lr_gamma"])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


# --------------------------------------------------------------------------------------------
# data


class _EpochSampler(DistributedSampler):
    """Shuffles as a function of (seed, epoch) and shards over ranks (one rank: no padding).

    It also reseeds the DataLoader generator, which seeds the workers' RNGs (augmentation), so a
    resumed epoch sees the batches and augmentations an uninterrupted run sees.
    """

    def __init__(self, dataset, *, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.generator = torch.Generator()
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.generator.manual_seed(_epoch_seed(self.seed, epoch, self.rank, stream=1))


def _has_masks(root: Path) -> bool:
    return (Path(root) / "masks").is_dir()


def _probe_image_size(dataset: MaskedImageFolder) -> int:
    from PIL import Image

    path = dataset.samples[0][0]
    with Image.open(path) as im:
        width, height = im.size
    if width != height:
        raise ValueError(f"image {path} is {width}x{height}; pass an image size (--image-size) to resize "
                         "images to a square")
    return width


class MaskedDataModule(L.LightningDataModule):
    """Train / val / named test sets in the masked dataset layout (``images/`` + ``masks/``).

    The folders are scanned (and every problem reported, naming the files) when the module is
    built, before any training. Class names come from the training set (or ``classes``); the
    other sets use the same list. Training batches are shuffled as a function of ``(seed,
    epoch)``, also under DDP (each rank gets a shard).

    Parameters
    ----------
    train, val
        Dataset roots (``val`` optional).
    image_size
        Square side images and masks are resized to (None: the first training image's side).
    batch_size, workers
        DataLoader options (per process).
    seed
        Shuffling seed.
    hflip
        Random horizontal flips in training (image and mask together).
    classes
        Class list (default: the training set's sorted folder names).
    tests
        Name -> root of test sets (masks used when ``ROOT/masks`` exists).
    train_masks
        Require masks for the training set (False: all-ones masks).
    """

    def __init__(self, train: str | Path | None, val: str | Path | None = None, *, image_size: int | None = None,
                 batch_size: int = 64, workers: int = 2, seed: int = 0, hflip: bool = False,
                 classes: Sequence[str] | None = None, tests: Mapping[str, str | Path] | None = None,
                 train_masks: bool = True) -> None:
        super().__init__()
        self.batch_size, self.workers, self.seed = batch_size, workers, seed
        self.train_set = self.val_set = None
        if train is not None:
            probe = MaskedImageFolder(train, masks=train_masks, classes=classes)
            if len(probe) == 0:
                raise ValueError(f"dataset {train} holds no images")
            self.image_size = image_size or _probe_image_size(probe)
            self.classes = list(probe.classes)
            probe.transform = make_transform(self.image_size, train=True, hflip=hflip)
            self.train_set = probe
        else:
            if classes is None or image_size is None:
                raise ValueError("without a training set, give classes and image_size")
            self.image_size, self.classes = image_size, list(classes)
        eval_transform = make_transform(self.image_size, train=False)
        if val is not None:
            self.val_set = MaskedImageFolder(val, transform=eval_transform, masks=_has_masks(val),
                                             classes=self.classes)
        self.val_has_masks = bool(self.val_set is not None and self.val_set.has_masks)
        self.tests = {name: MaskedImageFolder(root, transform=eval_transform, masks=_has_masks(root),
                                              classes=self.classes)
                      for name, root in (tests or {}).items()}

    def _loader(self, dataset, **kwargs) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, num_workers=self.workers,
                          pin_memory=torch.cuda.is_available(), **kwargs)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world, rank, epoch = (1, 0, 0)
        if trainer is not None:
            # the epoch Lightning passes to set_epoch; on resume, trainer.current_epoch is not yet
            # updated here, and with workers the iterator (and its first indices) is built right away
            world, rank = trainer.world_size, trainer.global_rank
            epoch = trainer.fit_loop.epoch_progress.current.processed
        sampler = _EpochSampler(self.train_set, num_replicas=world, rank=rank, seed=self.seed)
        sampler.set_epoch(epoch)
        return self._loader(self.train_set, sampler=sampler, generator=sampler.generator)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set) if self.val_set is not None else []

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(ds) for ds in self.tests.values()]


# --------------------------------------------------------------------------------------------
# fit


class _RunFiles(Callback):
    """Writes config.json when training starts and model.pt when it ends (global rank 0 only)."""

    def __init__(self, run: Path, config: dict) -> None:
        self.run, self.config = run, config

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            _write_json(self.run / "config.json", self.config)

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            torch.save(pl_module.net.model.state_dict(), self.run / "model.pt")


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


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    tmp.replace(path)


@contextlib.contextmanager
def _quiet_lightning(quiet: bool):
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
    path = run / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume: {path} does not exist (start the run without --resume)")
    saved = TrainConfig.from_dict(json.loads(path.read_text()))
    for name in RUNTIME_FIELDS:
        if name in given:
            setattr(saved, name, given[name])
    saved.out, saved.resume = str(run), True
    return saved


def _calibrate(cfg: TrainConfig, datamodule: MaskedDataModule, run: Path) -> dict[str, float]:
    """Train a standard classifier for ``calibrate_epochs``; C1/C2 from its last epoch's heatmaps."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    config = cfg.to_dict() | {"variant": "standard", "C1": None, "C2": None, "p_warmup": 0.0,
                              "background_swap": background_swap_for(cfg.variant, cfg.background_swap)}
    module = ISNetModule(config, calibrate_for=OBJECTIVES[cfg.variant].isnet_variant)
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
    :data:`RUNTIME_FIELDS` present in a ``config`` mapping replace the saved ones, e.g. a larger
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
    elif (run / "config.json").exists() or (run / "checkpoints").exists():
        raise FileExistsError(f"{run} already holds a run; pass resume (--resume) or choose another output folder")
    cfg.validate()
    with _quiet_lightning(cfg.quiet):
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule = MaskedDataModule(
            cfg.train, cfg.val, image_size=cfg.image_size, batch_size=cfg.batch_size, workers=cfg.workers,
            seed=cfg.seed, hflip=cfg.hflip, classes=cfg.classes, train_masks=_needs_masks(cfg.variant))
        if len(datamodule.classes) < 2:
            raise ValueError(f"dataset {cfg.train} has {len(datamodule.classes)} class folder(s); need at least 2")
        cfg.classes, cfg.num_classes, cfg.image_size = datamodule.classes, len(datamodule.classes), datamodule.image_size
        run.mkdir(parents=True, exist_ok=True)
        if _uses_heatmap_loss(cfg.variant) and cfg.C1 is None:
            cfg.calibration = _calibrate(cfg, datamodule, run)
            cfg.C1, cfg.C2 = cfg.calibration["C1"], cfg.calibration["C2"]

        L.seed_everything(cfg.seed, workers=True, verbose=False)  # the ISNet starts from a fresh init
        resolved = cfg.to_dict()
        module = ISNetModule(resolved)
        monitor = ("val/acc", "best") if cfg.val is not None else ("train/acc_epoch", "best")
        checkpoint = ModelCheckpoint(dirpath=run / "checkpoints", filename=monitor[1], monitor=monitor[0],
                                     mode="max", save_top_k=1, save_last=True, auto_insert_metric_name=False)
        logger = _RunLogger(run)
        trainer = _trainer(cfg, max_epochs=cfg.epochs, logger=logger,
                           callbacks=[checkpoint, _RunFiles(run, resolved), *callbacks], checkpointing=True)
        last = run / "checkpoints" / "last.ckpt"
        ckpt_path = str(last) if cfg.resume and last.is_file() else None
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        except TrainingDiverged as err:
            kept = (f"the last good checkpoint is {last}" if last.is_file()
                    else "no checkpoint had been written yet")
            raise TrainingDiverged(f"{err} Nothing was saved from the diverged epoch; {kept}.") from None
    return run


# --------------------------------------------------------------------------------------------
# loading


def _load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a checkpoint we wrote"
        raise ValueError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err


def load_classifier(path: str | Path, *, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The plain classifier of a training run, in eval mode, and its resolved config.

    ``path`` is a run folder (``model.pt``, else ``checkpoints/best.ckpt``, else
    ``checkpoints/last.ckpt``, with ``config.json``), a ``.ckpt`` file written by :func:`fit`, or
    a ``.pt`` state dict next to (or one folder below) a ``config.json``.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        candidates = [path / "model.pt", path / "checkpoints" / "best.ckpt", path / "checkpoints" / "last.ckpt"]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{path} holds no model.pt or checkpoints/{{best,last}}.ckpt")
        path = found
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint or run folder: {path}")
    if path.suffix == ".ckpt":
        ckpt = _load_checkpoint(path)
        try:
            config = dict(ckpt["hyper_parameters"]["config"])
        except (KeyError, TypeError):
            raise ValueError(f"{path} is not a checkpoint written by isnet train (no config inside)") from None
        prefix = "net.model."
        state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    else:
        config_path = next((p / "config.json" for p in (path.parent, path.parent.parent)
                            if (p / "config.json").is_file()), None)
        if config_path is None:
            raise FileNotFoundError(f"no config.json next to {path}; give the run folder or a .ckpt file")
        config = json.loads(config_path.read_text())
        state = _load_checkpoint(path)
    model = build_model(config["arch"], config["num_classes"], image_size=config["image_size"])
    model.load_state_dict(state)
    return model.to(map_location).eval(), config


def _register_baselines() -> None:
    """``rrr``, ``gradcam`` and ``masked`` (:mod:`isnet.baselines`) join :data:`OBJECTIVES`."""
    import importlib.util

    if importlib.util.find_spec(f"{__package__}.baselines") is not None:
        from . import baselines

        baselines.register()


_register_baselines()
