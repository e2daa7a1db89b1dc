"""What the background-bias benchmark runs: its methods, test sets, sizes and presets.

A *method* is a set of training options (an objective and, for ``+ds``, deep supervision)
given to the one training pipeline; the benchmark trains every method with several seeds
(:mod:`isnet.bench.grid`) and evaluates each classifier on BG-Digits' test sets
(:mod:`isnet.bench.bias`). This module holds data only and imports no third-party package,
so the command line builds its help from it without loading PyTorch.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from ..config import TrainConfig, validate_ranges

__all__ = [
    "CUES",
    "DEMO",
    "FULL",
    "MASK_QUALITIES",
    "MASK_QUALITY_METHODS",
    "METHODS",
    "OCCLUDED",
    "PLACEMENTS",
    "QUICK",
    "RAW_INPUT",
    "RELATIVE_COST",
    "RUN_OPTIONS",
    "SWAP",
    "SWAP_DOSE_METHODS",
    "SWAP_PROBABILITIES",
    "SWEEP",
    "TEST_SETS",
    "BiasBenchConfig",
    "bench_config",
    "comparison_pairs",
    "method_order",
    "parse_option",
    "swap_setting",
]

TEST_SETS = ("biased", "unbiased", "deceiving")
"""BG-Digits test sets: the bias cue as in training, absent, or pointing to another class."""
OCCLUDED = "biased_occluded"
"""Biased test images with the bias patch replaced by neighbouring background (patch cue only)."""
SEG_CLASSIFY = "seg-classify"
"""The benchmark method that needs a segmenter (:mod:`isnet.bench.segmenter` trains it)."""
RAW_INPUT = "@unmasked"
"""Suffix of the extra row of masked-input methods evaluated on the original images."""
SWAP = "+swap"
"""Suffix of the methods trained with the mask-based background swap (probability 1)."""
PLACEMENTS = ("centre", "anywhere")
"""BG-Digits digit placements (:data:`isnet.data.digits.bg_digits.PLACEMENTS`)."""
CUES = ("patch", "tint")
"""BG-Digits bias cues (:data:`isnet.data.digits.bg_digits.CUES`)."""
MASK_QUALITIES = ("exact", "dilated", "eroded", "bbox", "shifted")
"""Training-mask degradations (:data:`isnet.data.digits.mask_quality.MASK_DEGRADATIONS`)."""

METHODS: dict[str, dict[str, Any]] = {
    "standard": {"variant": "standard", "background_swap": 0.0},
    "standard+swap": {"variant": "swap", "background_swap": 1.0},
    "rrr": {"variant": "rrr", "background_swap": 0.0},
    "rrr+swap": {"variant": "rrr", "rrr_lambda": 1.0, "background_swap": 1.0},
    "gradcam": {"variant": "gradcam", "background_swap": 0.0},
    "gradcam+swap": {"variant": "gradcam", "background_swap": 1.0},
    "selective": {"variant": "selective", "background_swap": 0.0},
    "selective+swap": {"variant": "selective", "background_swap": 1.0},
    "stochastic": {"variant": "stochastic", "background_swap": 0.0},
    "stochastic+swap": {"variant": "stochastic", "background_swap": 1.0},
    "original+swap": {"variant": "original", "background_swap": 1.0},
    "selective+ds+swap": {"variant": "selective", "deep_supervision": True, "background_swap": 1.0},
    "stochastic+ds+swap": {"variant": "stochastic", "deep_supervision": True, "background_swap": 1.0},
    "gxi+swap": {"variant": "selective", "epsilon": 0.0, "zb": False, "background_swap": 1.0},
    "dual+swap": {"variant": "dual", "background_swap": 1.0},
    "masked": {"variant": "masked", "background_swap": 0.0},
    "seg-classify": {"variant": "seg-classify", "background_swap": 0.0},
}
"""Benchmark method -> training options. Every method states its background swap: names ending
in ``+swap`` train with the mask-based swap (each training image gets another image's
background, the donor's own object removed), the others without, so each method can be read
next to ``standard`` or ``standard+swap``, its equal. ``+ds``: LRP deep supervision at the
architecture's default layers (:func:`isnet.variants.default_supervised_layers`). ``gxi+swap``:
the selective ISNet loss on gradient x input heatmaps (``epsilon=0``, no Z^B), the papers'
ablation. ``dual+swap``: the Dual ISNet (the selective quantity's LRP-epsilon and LRP-z+
heatmaps both penalised). ``masked`` classifies background-zeroed images, so a swap would change
nothing. ``seg-classify`` classifies images whose background a U-Net predicts and zeroes
(:mod:`isnet.bench.segmenter`).
``standard+swap`` uses the ``swap`` objective: the standard loss, with masks loaded.
Each method trains with the value of its :data:`SWEEP` option that the validation sweep
selected (docs/benchmark.md): ``rrr+swap`` with ``rrr_lambda`` 1; for every other method
it is ``isnet train``'s default."""

RELATIVE_COST: dict[str, float] = {
    "standard": 1, "standard+swap": 1, "masked": 1, "seg-classify": 1.2, "gradcam": 1.1, "gradcam+swap": 1.1,
    "rrr": 2.5,
    "rrr+swap": 2.5, "selective": 3, "selective+swap": 3, "stochastic": 3, "stochastic+swap": 3, "gxi+swap": 3,
    "dual+swap": 5, "selective+ds+swap": 3.5, "stochastic+ds+swap": 3.5, "original+swap": 15,
}
"""Rough training cost of each method relative to ``standard``: parallel runs start with the
most expensive, so the last ones to finish are short."""

RUN_OPTIONS = ("variant", "arch", "train", "val", "out", "seed", "resume")
"""Training options the grid sets for every run: the method's objective, the architecture, the
data, the run's folder and seed, and a fresh start. ``train_options`` cannot set them."""

SWEEP: dict[str, tuple[str, tuple[float, ...]]] = {
    "rrr": ("rrr_lambda", (1.0, 10.0, 100.0, 1e3, 1e4)),
    "gradcam": ("gradcam_weight", (0.1, 1.0, 10.0)),
    "selective": ("P", (0.5, 0.7, 0.9)),
    "stochastic": ("P", (0.5, 0.7, 0.9)),
}
"""``--sweep``: method -> the hyper-parameter swept and its values; each value is trained
without and with the swap (``rrr`` and ``rrr+swap``, ...). The value selected per method is the
one with the best accuracy on the biased validation split."""
SWAP_DOSE_METHODS = ("standard", "selective", "stochastic", "rrr", "gradcam")
"""``--swap-dose``: methods trained at every swap probability."""
SWAP_PROBABILITIES = (0.0, 0.25, 0.5, 0.75, 1.0)
"""``--swap-dose``: the background-swap probabilities."""
MASK_QUALITY_METHODS = ("standard+swap", "selective+swap", "stochastic+swap", "rrr+swap", "gradcam+swap", "masked")
"""``--mask-quality``: methods trained with every training-mask quality (default list)."""


def check_segmenter_available(methods: list[str]) -> None:
    """Raise ValueError when ``seg-classify`` is selected but MONAI (its U-Net) is not installed."""
    if SEG_CLASSIFY in methods and importlib.util.find_spec("monai") is None:
        raise ValueError("method seg-classify trains a MONAI U-Net: pip install 'isnet[seg]' (or pip install monai), "
                         "or leave seg-classify out of --methods")


def swap_setting(method: str) -> float | None:
    """The swap probability a benchmark method trains with; None where it is irrelevant (masked input)."""
    options = METHODS[method.removesuffix(RAW_INPUT)]
    return None if options["variant"] in ("masked", "seg-classify") else options["background_swap"]


def method_order(name: str) -> tuple[int, int]:
    """Sort key that puts benchmark rows in :data:`METHODS` order (each ``@unmasked`` row after
    its method, unknown names last), so every method sits next to its swap counterpart."""
    base = name.removesuffix(RAW_INPUT)
    return (list(METHODS).index(base) if base in METHODS else len(METHODS), int(name != base))


def comparison_pairs(methods: list[str]) -> list[tuple[str, str]]:
    """(method, reference) pairs to compare among ``methods``, each on equal terms.

    Every method with the swap against ``standard+swap``, every one without against
    ``standard``, then what the swap changes: ``X+swap`` against ``X`` (``standard+swap``
    against ``standard`` first). Masked-input methods are compared only with each other:
    ``seg-classify`` (predicted masks) against ``masked`` (true masks).
    """
    present = set(methods)
    same, swap = [], []
    for method in sorted(present, key=method_order):
        if swap_setting(method) is None:
            continue
        reference = "standard+swap" if swap_setting(method) else "standard"
        if method != reference and reference in present:
            same.append((method, reference))
        if method.endswith(SWAP) and method.removesuffix(SWAP) in present:
            swap.append((method, method.removesuffix(SWAP)))
    if SEG_CLASSIFY in present and "masked" in present:
        same.append((SEG_CLASSIFY, "masked"))
    return same + swap


@dataclass
class BiasBenchConfig:
    """Sizes and methods of one benchmark run.

    ``epochs=None`` takes :class:`isnet.config.TrainConfig`'s default. ``train_options``
    override any other training option for every method (e.g. ``{"P": 0.9}``), except those a
    selected method sets itself (its swap, for one). ``placement`` and ``cue`` choose the
    BG-Digits variant (:func:`isnet.data.digits.bg_digits.generate`).
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
    placement: str = "centre"
    cue: str = "patch"
    train_options: dict[str, Any] = field(default_factory=dict)
    n_examples: int = 3
    jobs: int = 1
    threads: int | None = None
    progress_bar: bool = False
    title: str = "BG-Digits background-bias benchmark"

    def validate(self) -> None:
        """Raise ValueError on an unknown method, a size out of range or a reserved training option;
        :class:`isnet.errors.UserError` on an unknown training option or a value out of its range."""
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
        validate_ranges(TrainConfig.from_dict(dict(self.train_options)))  # before any data or run is made
        clash = sorted(set(RUN_OPTIONS) & set(self.train_options))
        if clash:
            raise ValueError(f"train_options cannot set {clash}; the benchmark sets them")
        own = {m: keys for m in self.methods if (keys := sorted(set(METHODS[m]) & set(self.train_options)))}
        if own:
            raise ValueError(f"train_options cannot set what a selected method sets itself: {own} (the swap is "
                             "part of a method's name, a tuned value part of its definition; --swap-dose trains "
                             "other swap probabilities, --sweep other values)")
        check_segmenter_available(self.methods)
        if self.placement not in PLACEMENTS or self.cue not in CUES:
            raise ValueError(f"placement must be one of {PLACEMENTS} and cue one of {CUES}, "
                             f"got {self.placement!r}, {self.cue!r}")


QUICK: dict[str, Any] = dict(
    methods=["standard", "standard+swap", "rrr", "rrr+swap", "gradcam", "gradcam+swap", "selective",
             "selective+swap", "stochastic", "stochastic+swap", "masked"],
    seeds=1, n_train=2000, n_val=200, n_test=300, epochs=12, n_examples=2, jobs=2,
)
"""``--quick``: the five base methods without and with the swap, and masked input; one seed,
2,000 training images, 12 epochs, two training processes."""
FULL: dict[str, Any] = dict(methods=list(METHODS), seeds=3, n_train=3300, n_val=500, n_test=500, epochs=15, jobs=2)
"""The full grid: every method, three seeds, two training processes."""
DEMO: dict[str, Any] = dict(
    methods=["standard", "standard+swap", "selective+swap"], seeds=1, n_train=2000, n_val=200, n_test=300,
    epochs=12, n_examples=3,
    title="isnet demo: standard classifier, with and without background swap, vs selective ISNet on BG-Digits",
)
"""``isnet demo``: methods and sizes (the benchmark's other settings keep their defaults). The
selective ISNet trains with the swap, so it is shown next to the standard classifier with the
swap as well as without."""


Config = TypeVar("Config")


def parse_option(item: str) -> tuple[str, Any]:
    """A ``--set KEY=VALUE`` item: the key and the value read as JSON (as text when it is not JSON)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def bench_config(kind: type[Config], base: Mapping[str, Any], given: Mapping[str, Any],
                 options: Sequence[str]) -> Config:
    """A benchmark config of dataclass ``kind``: the preset ``base``, overridden by the fields in ``given``
    that are not None (the command's options), with the ``--set`` ``options`` as its ``train_options``."""
    values = {**base, **{f.name: given[f.name] for f in fields(kind)
                         if f.name != "train_options" and given.get(f.name) is not None}}
    parsed = dict(parse_option(item) for item in options)
    if parsed:
        values["train_options"] = parsed
    return kind(**values)
