"""What every background-bias benchmark runs: its methods, their settings and the shared checks.

A *method* is a set of training options (an objective and, for ``+ds``, deep supervision)
given to the one training pipeline; a benchmark (:mod:`isnet.bench.interface`) trains every
method with several seeds (:mod:`isnet.bench.grid`) and evaluates each classifier on its test
sets. Each benchmark's own test sets, sizes and presets are in its package
(:mod:`isnet.bench.digits.presets`, :mod:`isnet.bench.cxr.presets`). This module holds data
only and imports no third-party package, so the command line builds its help from it without
loading PyTorch.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any, Protocol, TypeVar

from ..config import TrainConfig, current_names, validate_ranges

__all__ = [
    "METHODS",
    "RAW_INPUT",
    "RELATIVE_COST",
    "RUN_OPTIONS",
    "SEG_CLASSIFY",
    "SWAP",
    "BenchSettings",
    "bench_config",
    "check_settings",
    "comparison_pairs",
    "method_order",
    "parse_option",
    "swap_setting",
]

SEG_CLASSIFY = "seg-classify"
"""The benchmark method that needs a segmenter (:mod:`isnet.bench.segmenter` trains it)."""
RAW_INPUT = "@unmasked"
"""Suffix of the extra row of masked-input methods evaluated on the original images."""
SWAP = "+swap"
"""Suffix of the methods trained with the mask-based background swap (probability 1)."""
METHODS: dict[str, dict[str, Any]] = {
    "standard": {"objective": "standard", "background_swap": 0.0},
    "standard+swap": {"objective": "swap", "background_swap": 1.0},
    "rrr": {"objective": "rrr", "background_swap": 0.0},
    "rrr+swap": {"objective": "rrr", "rrr_lambda": 1.0, "background_swap": 1.0},
    "gradcam": {"objective": "gradcam", "background_swap": 0.0},
    "gradcam+swap": {"objective": "gradcam", "background_swap": 1.0},
    "selective": {"objective": "selective", "background_swap": 0.0},
    "selective+swap": {"objective": "selective", "background_swap": 1.0},
    "stochastic": {"objective": "stochastic", "background_swap": 0.0},
    "stochastic+swap": {"objective": "stochastic", "background_swap": 1.0},
    "original+swap": {"objective": "original", "background_swap": 1.0},
    "selective+ds+swap": {"objective": "selective", "deep_supervision": True, "background_swap": 1.0},
    "stochastic+ds+swap": {"objective": "stochastic", "deep_supervision": True, "background_swap": 1.0},
    "gxi+swap": {"objective": "selective", "epsilon": 0.0, "zb": False, "background_swap": 1.0},
    "dual+swap": {"objective": "dual", "background_swap": 1.0},
    "masked": {"objective": "masked", "background_swap": 0.0},
    "seg-classify": {"objective": "seg-classify", "background_swap": 0.0},
}
"""Benchmark method -> training options. A method is a training objective (its ``objective`` option,
:mod:`isnet.objectives`) with its background-swap setting and any options it fixes: ``selective``
and ``selective+swap`` are one objective without and with the swap. Every method states its
background swap: names ending in ``+swap`` train with the mask-based swap (each training image
gets another image's background, the donor's own object removed), the others without, so each method can be read
next to ``standard`` or ``standard+swap``, its equal. ``+ds``: LRP deep supervision at the
architecture's default layers (:func:`isnet.network.default_supervised_layers`). ``gxi+swap``:
the selective ISNet loss on gradient x input heatmaps (``epsilon=0``, no Z^B), the papers'
ablation. ``dual+swap``: the Dual ISNet (the selective quantity's LRP-epsilon and LRP-z+
heatmaps both penalised). ``masked`` classifies background-zeroed images, so a swap would change
nothing. ``seg-classify`` classifies images whose background a U-Net predicts and zeroes
(:mod:`isnet.bench.segmenter`).
``standard+swap`` uses the ``swap`` objective: the standard loss, with masks loaded.
Each method trains with the value of its :data:`~isnet.bench.digits.presets.SWEEP` option that the
validation sweep
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

RUN_OPTIONS = ("objective", "arch", "train", "val", "out", "seed", "resume")
"""Training options the grid sets for every run: the method's objective, the architecture, the
data, the run's folder and seed, and a fresh start. ``train_options`` cannot set them."""


class BenchSettings(Protocol):
    """The settings every benchmark's settings dataclass has (and the shared code reads).

    ``epochs=None`` takes :class:`isnet.config.TrainConfig`'s default. ``train_options``
    override any other training option for every method (e.g. ``{"P": 0.9}``), except those a
    selected method sets itself (its swap, for one). ``jobs``: training processes at a time
    (each trains one method/seed; evaluation stays in the benchmark's process). ``threads``:
    torch CPU threads per process (None: torch's default with one job, else the CPU count
    divided by ``jobs``). ``n_examples``: heatmap examples per test set.
    """

    methods: list[str]
    seeds: int
    n_train: int
    n_val: int
    n_test: int
    epochs: int | None
    data_seed: int
    arch: str
    image_size: int
    train_options: dict[str, Any]
    n_examples: int
    jobs: int
    threads: int | None
    progress_bar: bool
    title: str

    def validate(self) -> None:
        """Raise ValueError on settings the benchmark refuses (:func:`check_settings` and its own)."""


def check_settings(cfg: BenchSettings) -> None:
    """Raise ValueError on an unknown method, a size out of range or a reserved training option;
    :class:`isnet.errors.UserError` on an unknown training option or a value out of its range."""
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
    if not cfg.methods:
        raise ValueError("no methods to run")
    if len(set(cfg.methods)) != len(cfg.methods):
        raise ValueError(f"methods listed twice: {cfg.methods}")
    if cfg.seeds < 1 or cfg.n_train < 10 or cfg.n_val < 1 or cfg.n_test < 10:
        raise ValueError("need seeds >= 1, n_train >= 10, n_val >= 1 and n_test >= 10")
    if cfg.jobs < 1 or (cfg.threads is not None and cfg.threads < 1):
        raise ValueError(f"jobs and threads must be >= 1, got jobs={cfg.jobs}, threads={cfg.threads}")
    if cfg.epochs is not None and cfg.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {cfg.epochs}")
    validate_ranges(TrainConfig.from_dict(dict(cfg.train_options)))  # before any data or run is made
    clash = sorted(set(RUN_OPTIONS) & set(cfg.train_options))
    if clash:
        raise ValueError(f"train_options cannot set {clash}; the benchmark sets them")
    own = {m: keys for m in cfg.methods if (keys := sorted(set(METHODS[m]) & set(cfg.train_options)))}
    if own:
        raise ValueError(f"train_options cannot set what a selected method sets itself: {own} (the swap is "
                         "part of a method's name, a tuned value part of its definition; --swap-dose trains "
                         "other swap probabilities, --sweep other values)")
    check_segmenter_available(cfg.methods)


def check_segmenter_available(methods: list[str]) -> None:
    """Raise ValueError when ``seg-classify`` is selected but MONAI (its U-Net) is not installed."""
    if SEG_CLASSIFY in methods and importlib.util.find_spec("monai") is None:
        raise ValueError("method seg-classify trains a MONAI U-Net: pip install 'isnet[seg]' (or pip install monai), "
                         "or leave seg-classify out of --methods")


def swap_setting(method: str) -> float | None:
    """The swap probability a benchmark method trains with; None where it is irrelevant (masked input)."""
    options = METHODS[method.removesuffix(RAW_INPUT)]
    return None if options["objective"] in ("masked", "seg-classify") else options["background_swap"]


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


Config = TypeVar("Config")
"""A benchmark's settings dataclass."""


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
    parsed = current_names(dict(parse_option(item) for item in options), source="--set")
    if parsed:
        values["train_options"] = parsed
    return kind(**values)
