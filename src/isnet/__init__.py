"""isnet: LRP-Flex explanations for ReLU, attention and modern CNN classifiers, and ISNet / Faster ISNet training.

Explain: :func:`explain`, :class:`LRPFlex` (with :class:`Rules` for a model's own operations), :func:`plot_heatmap`.
Train: :class:`ISNet`, :func:`heatmap_loss`, :class:`ISNetLoss`, :func:`calibrate`, :func:`swap_backgrounds`,
with ``isnet train``'s defaults (:mod:`isnet.recipe`, which also holds the papers' values);
:mod:`isnet.training` (Lightning) runs whole training runs, :mod:`isnet.checkpoints` loads them.
Audit: :func:`audit`, how much a classifier relies on the background, by intervention.
"""

from .loss import ISNetLoss, calibrate, heatmap_loss
from .lrp import LRPFlex, Relevance, Rules, Trace, UnsupportedModelError, explain
from .network import ISNet

__all__ = [
    "ISNet", "ISNetLoss", "LRPFlex", "Relevance", "Rules", "Trace", "UnsupportedModelError",
    "audit", "calibrate", "explain", "heatmap_loss", "plot_heatmap", "swap_backgrounds",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "plot_heatmap":  # matplotlib is imported only when pictures are asked for
        from .figures import plot_heatmap

        return plot_heatmap
    if name == "swap_backgrounds":  # isnet.data loads the dataset code (torchvision, PIL) only when asked for
        from .data.augment import swap_backgrounds

        return swap_backgrounds
    if name == "audit":  # likewise: the audit's counterfactuals are the swap's, in isnet.data
        from .background_audit import audit

        return audit
    raise AttributeError(f"module 'isnet' has no attribute {name!r}")
