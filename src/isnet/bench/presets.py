"""What the background-bias benchmark runs: its methods, test sets, sizes and presets.

A *method* is a set of training options (an objective and, for ``+ds``, deep supervision)
given to the one training pipeline; the benchmark trains every method with several seeds
(:mod:`isnet.bench.grid`) and evaluates each classifier on BG-Digits' test sets
(:mod:`isnet.bench.bias`). This module holds data only and imports no third-party package,
so the command line builds its help from it without loading PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEMO",
    "FULL",
    "METHODS",
    "OCCLUDED",
    "QUICK",
    "RAW_INPUT",
    "RELATIVE_COST",
    "RUN_OPTIONS",
    "TEST_SETS",
    "BiasBenchConfig",
]

TEST_SETS = ("biased", "unbiased", "deceiving")
"""BG-Digits test sets: the bias patch as in training, absent, or pointing to another class."""
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
"""Benchmark method -> training options (``+ds``: LRP deep supervision at the architecture's
default layers, :func:`isnet.variants.default_supervised_layers`).

``swap`` is the standard classifier trained with the mask-based background swap that the ISNet
variants use by default (``TrainConfig.background_swap``): the control that tells what the
swap alone achieves."""

RELATIVE_COST: dict[str, float] = {
    "standard": 1, "masked": 1, "swap": 1, "rrr": 2, "gradcam": 2, "selective": 4, "stochastic": 4,
    "selective+ds": 5, "stochastic+ds": 5, "original": 16,
}
"""Rough training cost of each method relative to ``standard``: parallel runs start with the
most expensive, so the last ones to finish are short."""

RUN_OPTIONS = ("variant", "arch", "train", "val", "out", "seed", "resume")
"""Training options the grid sets for every run: the method's objective, the architecture, the
data, the run's folder and seed, and a fresh start. ``train_options`` cannot set them."""


@dataclass
class BiasBenchConfig:
    """Sizes and methods of one benchmark run.

    ``epochs=None`` takes :class:`isnet.config.TrainConfig`'s default. ``train_options``
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
        """Raise ValueError on an unknown method, a size out of range or a reserved training option."""
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
        clash = sorted(set(RUN_OPTIONS) & set(self.train_options))
        if clash:
            raise ValueError(f"train_options cannot set {clash}; the benchmark sets them")


QUICK: dict[str, Any] = dict(
    methods=["standard", "selective", "stochastic", "rrr", "gradcam", "masked", "swap"],
    seeds=1, n_train=2000, n_val=200, n_test=300, epochs=12, n_examples=2, jobs=2,
)
"""``--quick``: seven methods, one seed, 2,000 training images, 12 epochs, two training processes."""
FULL: dict[str, Any] = dict(methods=list(METHODS), seeds=3, n_train=3300, n_val=500, n_test=500, epochs=15, jobs=2)
"""The full grid: every method, three seeds, two training processes."""
DEMO: dict[str, Any] = dict(
    methods=["standard", "selective"], seeds=1, n_train=2000, n_val=200, n_test=300, epochs=12, n_examples=3,
    title="isnet demo: standard classifier vs selective ISNet on BG-Digits",
)
"""``isnet demo``: methods and sizes (the benchmark's other settings keep their defaults)."""
