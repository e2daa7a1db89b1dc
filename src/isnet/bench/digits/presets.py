"""What the BG-Digits benchmark runs: its test sets, metrics, sizes, presets and grid modes.

The methods are the shared ones (:data:`~isnet.bench.presets.METHODS`), trained on BG-Digits
(:mod:`isnet.data.digits.bg_digits`) and evaluated on its test sets
(:mod:`isnet.bench.digits.benchmark`). Like :mod:`isnet.bench.presets`, this module holds data
only and imports no third-party package, so the command line builds its help from it without
loading PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..presets import METHODS, check_settings

__all__ = [
    "COMPARED",
    "CUES",
    "DEMO",
    "FULL",
    "MASK_QUALITIES",
    "MASK_QUALITY_METHODS",
    "METRICS",
    "OCCLUDED",
    "PLACEMENTS",
    "QUICK",
    "SWAP_DOSE_METHODS",
    "SWAP_PROBABILITIES",
    "SWEEP",
    "TEST_SETS",
    "BiasBenchConfig",
]

TEST_SETS = ("biased", "unbiased", "deceiving")
"""BG-Digits test sets: the bias cue as in training, absent, or pointing to another class."""
OCCLUDED = "biased_occluded"
"""Biased test images with the bias patch replaced by neighbouring background (patch cue only)."""
METRICS = ("accuracy", "background_relevance", "patch_relevance")
"""What :meth:`~isnet.bench.digits.benchmark.BGDigitsBenchmark.evaluate_classifier` measures on each test set."""
COMPARED = (("deceiving", "accuracy"), ("unbiased", "accuracy"), ("deceiving", "background_relevance"))
"""(test set, metric) pairs compared: the accuracies that expose a shortcut, and where the relevance lies."""
PLACEMENTS = ("centre", "anywhere")
"""BG-Digits digit placements (:data:`isnet.data.digits.bg_digits.PLACEMENTS`)."""
CUES = ("patch", "tint")
"""BG-Digits bias cues (:data:`isnet.data.digits.bg_digits.CUES`)."""
MASK_QUALITIES = ("exact", "dilated", "eroded", "bbox", "shifted")
"""Training-mask degradations (:data:`isnet.data.digits.mask_quality.MASK_DEGRADATIONS`)."""

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


@dataclass
class BiasBenchConfig:
    """Sizes and methods of one BG-Digits benchmark run (the shared fields:
    :class:`~isnet.bench.presets.BenchSettings`). ``placement`` and ``cue`` choose the BG-Digits
    variant (:func:`isnet.data.digits.bg_digits.generate`), ``mask`` its foreground masks.
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
        """Raise ValueError on what every benchmark refuses (:func:`isnet.bench.presets.check_settings`) or an
        unknown placement or cue."""
        check_settings(self)
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
