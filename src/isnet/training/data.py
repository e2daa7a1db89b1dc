"""The data side of training: masked image folders as a Lightning data module.

Training batches are shuffled as a function of ``(seed, epoch)`` and each rank gets its shard,
so a resumed run sees exactly the batches (and augmentations) an uninterrupted run sees.
"""

from __future__ import annotations

import os
import signal
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, DistributedSampler

from ..data import MaskedImageFolder, make_transform
from ..data.folder import DatasetError, mask_warnings
from ..data.imageio import probe_size
from ..errors import IsnetWarning, UserError

__all__ = ["MaskedDataModule", "epoch_seed"]


def epoch_seed(seed: int, epoch: int, rank: int, stream: int = 0) -> int:
    """A 32-bit seed derived from (seed, epoch, rank, stream)."""
    return int(np.random.SeedSequence([seed, epoch, rank, stream]).generate_state(1)[0])


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
        self.generator.manual_seed(epoch_seed(self.seed, epoch, self.rank, stream=1))


class _WorkerStart:
    """``worker_init_fn`` of the loaders: a worker ignores SIGTERM as it ignores Ctrl-C (a scheduler signals every
    process of a job; the main process stops the run and ends its workers), and seeds its generators with
    Lightning's ``pl_worker_init_function``, which Lightning adds only to loaders without a ``worker_init_fn``."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if int(os.environ.get("PL_SEED_WORKERS", 0)):  # seed_everything(workers=True), as Lightning checks it
            pl_worker_init_function(worker_id, rank=self.rank)


def _probe_image_size(dataset: MaskedImageFolder) -> int:
    path = dataset.samples[0][0]
    width, height = probe_size(path)
    if width != height:
        raise UserError(f"image {path} is {width}x{height}; pass an image size (--image-size) to resize "
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
    acquisition
        Strength of random exposure, contrast, blur and noise of training images (None: none).
    classes
        Class list (default: the training set's sorted folder names).
    tests
        Name -> root of test sets (masks used when ``ROOT/masks`` exists).
    train_masks
        Require masks for the training set (False: all-ones masks).
    channels
        Image channels the model reads (3, or 1 for grayscale).
    """

    def __init__(self, train: str | Path | None, val: str | Path | None = None, *, image_size: int | None = None,
                 batch_size: int = 64, workers: int = 2, seed: int = 0, hflip: bool = False,
                 acquisition: float | None = None, classes: Sequence[str] | None = None,
                 tests: Mapping[str, str | Path] | None = None, train_masks: bool = True, channels: int = 3) -> None:
        super().__init__()
        self.batch_size, self.workers, self.seed = batch_size, workers, seed
        self.train_set = self.val_set = None
        if train is not None:
            probe = MaskedImageFolder(train, masks=train_masks, classes=classes, channels=channels)
            if len(probe) == 0:
                raise DatasetError(f"dataset {train} holds no images")
            if train_masks and rank_zero_only.rank == 0:  # under DDP, one process reports
                for message in mask_warnings(probe, threads=min(8, os.cpu_count() or 1)):
                    warnings.warn(message, IsnetWarning, stacklevel=2)
            self.image_size = image_size or _probe_image_size(probe)
            self.classes = list(probe.classes)
            probe.transform = make_transform(self.image_size, train=True, hflip=hflip,
                                             acquisition=acquisition)
            self.train_set = probe
        else:
            if classes is None or image_size is None:
                raise UserError("without a training set, give classes and image_size")
            self.image_size, self.classes = image_size, list(classes)
        eval_transform = make_transform(self.image_size, train=False)
        if val is not None:
            self.val_set = MaskedImageFolder(val, transform=eval_transform, masks=None,
                                             classes=self.classes, channels=channels)
        self.val_has_masks = bool(self.val_set is not None and self.val_set.has_masks)
        self.tests = {name: MaskedImageFolder(root, transform=eval_transform, masks=None,
                                              classes=self.classes, channels=channels)
                      for name, root in (tests or {}).items()}

    def _loader(self, dataset, **kwargs) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        return DataLoader(dataset, batch_size=self.batch_size, num_workers=self.workers,
                          pin_memory=torch.cuda.is_available(), worker_init_fn=_WorkerStart(rank), **kwargs)

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
