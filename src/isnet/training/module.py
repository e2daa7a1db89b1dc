"""The Lightning module: one objective, one network, one criterion, optimised and logged.

:class:`ISNetModule` receives the network (an :class:`isnet.ISNet` around the classifier),
the criterion (:class:`isnet.ISNetLoss`) and the objective (:mod:`isnet.objectives`), and knows
no objective by name. :meth:`ISNetModule.from_config` builds all three from a resolved
:class:`isnet.config.TrainConfig`.

Logged: ``train/loss`` (what is optimised), the objective's terms as ``train/<term>``,
``train/acc``, ``train/bg_share`` (objectives that compute heatmaps), ``train/P`` (during the
warm-up of P), ``val/ce``, ``val/acc``, ``val/bg_share`` (the objective's heatmaps in eval mode).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from ..config import BOUND_GROUPS, TrainConfig
from ..data.augment import swap_backgrounds
from ..loss import ISNetLoss, calibrate, float32_region
from ..metrics import BackgroundRelevance
from ..models import build_model, resolve_normalize
from ..objectives import Objective, StepContext, StepOutput, get_objective
from ..network import ISNet, calibration_groups, epsilon_heatmaps, input_heatmaps
from .data import epoch_seed

__all__ = ["ISNetModule", "TrainingDiverged", "at_chance"]


def at_chance(accuracy: float, num_classes: int) -> bool:
    """Whether a training accuracy is still within a quarter of chance (below ``1.25 / K``): a network
    that has not learnt to classify, whose relevance totals cannot calibrate C1/C2."""
    return accuracy < 1.25 / num_classes


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite; training stopped before that step's update."""


class ISNetModule(L.LightningModule):
    """A classifier trained with an objective, as a ``LightningModule``.

    Parameters
    ----------
    net
        :class:`isnet.ISNet` wrapping the classifier with the heatmaps of the objective's ``explains``.
    criterion
        The ISNet loss (``P``, heatmap-loss options, C1/C2).
    objective
        What one training step optimises.
    config
        The resolved run configuration (optimiser, schedule, warm-up, seed, swap).
    calibrate_for
        For a calibration run: the heatmap network (sharing ``net.model``) whose relevance
        totals are recorded in the last epoch; C1/C2 are then logged as ``calibration/C1|C2``
        (and ``calibration/C1_zplus|C2_zplus`` for the dual objective's LRP-z+ maps, see
        :func:`isnet.network.calibration_groups`) and kept in :attr:`calibration`.
    """

    def __init__(self, net: ISNet, criterion: ISNetLoss, objective: Objective, config: TrainConfig, *,
                 calibrate_for: ISNet | None = None) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config.to_dict()})
        self.net, self.criterion, self.objective, self.config = net, criterion, objective, config
        self.background_swap = objective.swap_probability(config.background_swap)
        k = config.num_classes
        self.train_acc, self.val_acc = MulticlassAccuracy(k, average="micro"), MulticlassAccuracy(k, average="micro")
        self.train_bg, self.val_bg = BackgroundRelevance(), BackgroundRelevance()
        self.val_ce = MeanMetric()
        self.train_means = nn.ModuleDict()
        # the calibration network shares the model; kept out of the module tree (and state dict)
        self.__dict__["_calibration_net"] = calibrate_for
        self._totals: list[Tensor] = []
        self._hits = torch.zeros(2)  # correct and seen training images while recording
        self._recording = False
        self.calibration: dict[str, float] | None = None

    @classmethod
    def from_config(cls, config: TrainConfig | Mapping[str, Any], *, calibrate: bool = False,
                    pretrained: bool = True) -> ISNetModule:
        """The module a resolved configuration describes (``num_classes`` and ``image_size`` set).

        With ``calibrate``, the module trains the plain classifier and records the relevance
        totals of the configured objective's heatmaps in its last epoch. ``pretrained=False``
        builds the architecture without reading ``config.weights`` (a resumed run's checkpoint
        replaces them anyway).
        """
        cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
        objective = get_objective(cfg.objective)
        groups = calibration_groups(objective.explains)
        bounds = [(getattr(cfg, "C1" + g), getattr(cfg, "C2" + g)) for g in groups]
        if objective.heatmap_loss and not calibrate and cfg.uses_bounds() and any(None in pair for pair in bounds):
            names = ", ".join(f"C1{g} and C2{g}" for g in groups)
            raise ValueError(f"objective {cfg.objective!r} needs {names} (fit() calibrates them)")
        c1 = [1.0 if low is None else low for low, _ in bounds]
        c2 = [25.0 if high is None else high for _, high in bounds]
        model = build_model(cfg.arch, cfg.num_classes, image_size=cfg.image_size, new_head=True,
                            weights=cfg.weights if pretrained else None, in_channels=cfg.in_channels,
                            normalize=resolve_normalize(cfg.normalize, cfg.weights, cfg.arch))
        if objective.check is not None:
            objective.check(model, cfg)
        lrp = dict(cfg.lrp_options(), selective_eps=cfg.selective_eps, selective_class=cfg.selective_class)
        criterion = ISNetLoss(cfg.P, d=cfg.d, E=cfg.E, A=cfg.A, B=cfg.B, C1=c1[0] if len(c1) == 1 else c1,
                              C2=c2[0] if len(c2) == 1 else c2, foreground=cfg.foreground, norm=cfg.norm,
                              d_loss=cfg.d_loss)
        if not calibrate:
            net = ISNet(model, objective.explains, deep_supervision=cfg.deep_supervision, **lrp)
            return cls(net, criterion, objective, cfg)
        unset = {f"{bound}{group}": None for bound in ("C1", "C2") for group in BOUND_GROUPS}
        plain = TrainConfig.from_dict(cfg.to_dict() | unset | {"objective": "standard", "p_warmup": 0.0,
                                                                "background_swap": cfg.calibration_swap})
        return cls(ISNet(model, "standard", **lrp), criterion, get_objective("standard"), plain,
                   calibrate_for=ISNet(model, objective.explains, **lrp))

    # ---- helpers
    def warmup(self) -> float:
        """The fraction of P reached at this step (linear over ``p_warmup`` epochs; 1 without a trainer)."""
        epochs = self.config.p_warmup
        if epochs <= 0 or self._trainer is None:
            return 1.0
        steps = epochs * max(1, int(self.trainer.num_training_batches))
        return min(1.0, (self.global_step + 1) / steps)

    def objective_step(self, x: Tensor, masks: Tensor, labels: Tensor) -> StepOutput:
        """The objective's output for one (already augmented) training batch."""
        return self.objective.step(StepContext(self.net, self.criterion, self.config, self.warmup()), x, masks, labels)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def classifier_input(self, x: Tensor, masks: Tensor) -> Tensor:
        """What the classifier sees (:meth:`isnet.objectives.Objective.classifier_input`)."""
        return self.objective.classifier_input(x, masks, self.config)

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
        s = epoch_seed(self.config.seed, self.current_epoch, self.global_rank)
        torch.manual_seed(s)
        random.seed(s)
        np.random.seed(s % 2**32)
        self._recording = (self._calibration_net is not None
                           and self.current_epoch >= self.config.first_phase_epochs() - 1)
        self._totals = []
        self._hits = torch.zeros(2, device=self.device)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, masks, labels = batch
        if self.background_swap > 0:
            x = swap_backgrounds(x, masks, self.background_swap)
        out = self.objective_step(x, masks, labels)
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
        if self.config.p_warmup > 0 and self.objective.heatmap_loss:
            self.log("train/P", self.criterion.weight(self.warmup()), on_step=True, on_epoch=True, batch_size=n,
                     sync_dist=False)
        if self._recording:
            self._record_totals(x, labels)
            self._hits += torch.stack([(out.logits.detach().argmax(1) == labels).sum(), labels.new_tensor(n)])
        return out.loss if out.backward is None else out.backward

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
        maps = input_heatmaps(heatmaps).detach().float()
        self._totals.append(maps.abs().sum((2, 3, 4)))  # (B, K): one total per explained heatmap

    def on_train_epoch_end(self) -> None:
        if not self._recording:
            return
        totals = self.all_gather(torch.cat(self._totals))
        totals = totals.reshape(-1, totals.shape[-1])  # (N, K), gathered over ranks
        groups = calibration_groups(self._calibration_net.objective)
        self.calibration = {}
        for i, suffix in enumerate(groups):
            group = totals[:, i::len(groups)].flatten()
            c1, c2 = calibrate(group)
            self.calibration |= {f"C1{suffix}": c1, f"C2{suffix}": c2, f"mean{suffix}": group.double().mean().item(),
                                 f"std{suffix}": group.double().std().item(), f"n{suffix}": int(group.numel())}
        hits = self.all_gather(self._hits).reshape(-1, 2).sum(0)  # (correct, seen), summed over ranks
        self.calibration["train_accuracy"] = float(hits[0] / hits[1].clamp(min=1))
        # logged so the values also reach the launching process under ddp_spawn
        for key, value in self.calibration.items():
            self.log(f"calibration/{key}", float(value), on_epoch=True, sync_dist=True)
        self._recording, self._totals = False, []
        if self._trainer is not None and not at_chance(self.calibration["train_accuracy"], self.config.num_classes):
            self.trainer.should_stop = True  # the network has learnt: these totals are the calibration

    def validation_step(self, batch, batch_idx: int) -> None:
        x, masks, labels = batch
        x = self.classifier_input(x, masks)
        with torch.enable_grad():  # LRP needs autograd; eval mode keeps the heatmap out of any graph
            logits, heatmaps = self.net(x, heatmaps=True, labels=labels)
        logits, maps = logits.detach(), epsilon_heatmaps(heatmaps, self.net.objective).detach().float()
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
        if c.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay or 0.0)
        elif c.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay or 0.0)
        else:
            wd = 0.01 if c.weight_decay is None else c.weight_decay
            opt = torch.optim.AdamW(params, lr=c.lr, weight_decay=wd)
        if c.schedule == "none":
            return opt
        if c.schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=c.main_epochs())
        else:
            step = c.lr_step or max(1, c.main_epochs() // 3)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=step, gamma=c.lr_gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
