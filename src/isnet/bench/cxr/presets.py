"""What the BG-CXR benchmark runs: its test sets, metrics, sizes and presets.

The methods are the shared ones (:data:`~isnet.bench.presets.METHODS`, those of the BG-Digits
benchmark), trained on BG-CXR (:mod:`isnet.data.cxr.bg_cxr`) and evaluated on its four test
sets (:mod:`isnet.bench.cxr.benchmark`). Like :mod:`isnet.bench.presets`, this module holds
data only and imports no third-party package, so the command line builds its help from it
without loading PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..presets import METHODS, check_settings

__all__ = [
    "ABNORMAL_CI", "CXR_COMPARED", "CXR_FULL", "CXR_METRICS", "CXR_PLACES", "CXR_QUICK", "CXR_SIZES",
    "CXR_TEST_SETS", "CxrBenchConfig",
]

CXR_TEST_SETS = ("biased", "unbiased", "external", "deceiving")
"""BG-CXR test sets (:data:`isnet.data.cxr.bg_cxr.BIASES`): the same test patients imaged at the
class's own hospitals as in training, at the training hospitals independently of the class, at
two hospitals never seen in training, and at another class's hospitals."""
CXR_PLACES = ("deceiving-outside", "deceiving-inside")
"""Where a classifier reads the hospital, by intervention on the same test patients: another class's
hospital outside the lungs only (the biased set's lungs on the deceiving set's background) and inside
the lungs only (the deceiving set's lungs, with their exposure, noise, blur and field of view, on the
biased set's background). Evaluated like the test sets; in memory only."""
CXR_METRICS = ("accuracy", "auroc", "abnormal_auroc", "background_relevance", "shortcut_relevance")
"""Per test set: accuracy; macro one-vs-rest AUROC over the three classes; the binary AUROC of
*abnormal* (consolidation or ground glass) against normal, scored by 1 - p(normal); the share
of absolute relevance outside the lungs; the share on the hospital's marker and label box."""
CXR_COMPARED = (("external", "accuracy"), ("deceiving", "accuracy"), ("external", "abnormal_auroc"),
                ("biased", "background_relevance"))
"""(test set, metric) pairs of the paired comparisons: accuracy where the hospital is new or misleading,
the abnormal-vs-normal AUROC at new hospitals, and the relevance outside the lungs."""
ABNORMAL_CI = "abnormal_auroc_ci95"
"""Record key of the DeLong 95% interval of ``abnormal_auroc`` (one per run: the interval of a
three-class macro AUROC is not defined)."""


@dataclass
class CxrBenchConfig:
    """Sizes and methods of one BG-CXR benchmark run.

    ``epochs=None`` takes :class:`isnet.config.TrainConfig`'s default. ``correlation``: the
    share of each class imaged at the class's own hospitals in training, validation and the
    biased test set. ``image_size``: the side of the generated images (64 to 512); the
    classifiers see them at that size, grayscale replicated to three channels. ``jobs``,
    ``threads`` and ``train_options`` as in :class:`~isnet.bench.presets.BenchSettings`.
    """

    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: int = 3
    n_train: int = 1500
    n_val: int = 300
    n_test: int = 300
    epochs: int | None = None
    data_seed: int = 0
    arch: str = "resnet18"
    image_size: int = 128
    correlation: float = 0.95
    train_options: dict[str, Any] = field(default_factory=dict)
    n_examples: int = 3
    jobs: int = 1
    threads: int | None = None
    progress_bar: bool = False
    title: str = "BG-CXR background-bias benchmark"

    def validate(self) -> None:
        """Raise ValueError on what every benchmark refuses (:func:`isnet.bench.presets.check_settings`:
        methods, sizes, reserved options), an image size outside 64-512 or a correlation outside [0, 1]."""
        check_settings(self)
        if not 64 <= self.image_size <= 512:
            raise ValueError(f"image_size must be between 64 and 512, got {self.image_size}")
        if not 0.0 <= self.correlation <= 1.0:
            raise ValueError(f"correlation must be in [0, 1], got {self.correlation}")


CXR_QUICK: dict[str, Any] = dict(
    methods=["standard", "standard+swap", "selective", "selective+swap", "rrr+swap", "masked"],
    seeds=1, n_train=1000, n_val=200, n_test=300, epochs=6, arch="small_cnn", image_size=64, n_examples=2, jobs=2,
)
"""``--quick``: the standard classifier and the selective ISNet without and with the swap, RRR with
the swap and masked input; one seed, 1,000 training images at 64x64, small_cnn, 6 epochs, two
training processes (about 10 minutes on two CPU cores)."""
CXR_FULL: dict[str, Any] = dict(
    methods=list(METHODS), seeds=3, n_train=1500, n_val=300, n_test=300, epochs=8, arch="resnet18", image_size=128,
    jobs=2,
)
"""The full grid: every method, three seeds, ResNet18 from scratch on 1,500 training images at
128x128, 8 epochs, two training processes."""
CXR_SIZES = (
    f"Full run: {CXR_FULL['seeds']} seeds x {len(CXR_FULL['methods'])} methods, {CXR_FULL['arch']} at "
    f"{CXR_FULL['image_size']} px, {CXR_FULL['n_train']} images, {CXR_FULL['epochs']} epochs; --quick: "
    f"{', '.join(CXR_QUICK['methods'])}; {CXR_QUICK['arch']} at {CXR_QUICK['image_size']} px, {CXR_QUICK['seeds']} "
    f"seed, {CXR_QUICK['n_train']} images, {CXR_QUICK['epochs']} epochs. Finished runs in OUT are reused."
)
"""The presets in words, for the command's help."""
