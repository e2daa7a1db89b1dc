"""The training recipe's defaults: one source for the Python API and ``isnet train``.

:class:`isnet.config.TrainConfig`'s field defaults are the recipe. :class:`isnet.ISNet`,
:class:`isnet.ISNetLoss`, :func:`isnet.heatmap_loss` and :func:`isnet.network.selective_quantity`
read their defaults from it (:func:`default`), so a training loop written with them and
``isnet train`` train the same network. The background swap, on by default for the ISNet
objectives of ``isnet train``, is :func:`isnet.swap_backgrounds`.

The recipe departs from the papers in a few values, which :data:`REFERENCE` holds by field
name. In Python the papers' recipe is::

    net = isnet.ISNet(model, "selective", batch_stats="gradient")   # a freshly initialised model
    criterion = isnet.ISNetLoss(P=0.7, d=0.9, foreground="L2", C1=C1, C2=C2)   # and no swap
    criterion(...).total.backward()

and on the command line ``isnet train --P 0.7 --d 0.9 --foreground L2 --batch-stats gradient
--background-swap 0 --calibration-swap 0 --p-warmup 0 --no-warm-start --heatmap-gradient sum``.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any

from .config import TrainConfig

__all__ = ["REFERENCE", "default"]

_DEFAULTS = MappingProxyType({f.name: f.default for f in dataclasses.fields(TrainConfig)
                              if f.default is not dataclasses.MISSING})


def default(name: str) -> Any:
    """The recipe's default for the :class:`~isnet.config.TrainConfig` field ``name`` (``"P"`` -> 0.5).

    A KeyError names fields that have no plain default (a list built per instance).
    """
    try:
        return _DEFAULTS[name]
    except KeyError:
        raise KeyError(f"TrainConfig has no field {name!r} with a plain default") from None


REFERENCE = MappingProxyType({
    "P": 0.7,                    # the papers' heatmap-loss weight
    "d": 0.9,                    # the papers' GWRP decay
    "foreground": "L2",          # the ISNet paper's foreground penalty: total foreground relevance kept in [C1, C2]
    "batch_stats": "gradient",   # the reference implementation differentiates batch-norm statistics
    "background_swap": 0.0,      # the papers train on the data as it is
    "calibration_swap": 0.0,
    "p_warmup": 0.0,             # no warm-up of P: without the swap it lets the network learn a shortcut
    "warm_start": False,         # the ISNet trained from a fresh initialisation after calibration
    "heatmap_gradient": "sum",   # (1 - P) CE + P heatmap loss, differentiated as it is
})
"""The papers' recipe (Bassi et al. 2024, and the authors' reference implementation) where
``isnet train``'s departs from it, by :class:`~isnet.config.TrainConfig` field name:
``TrainConfig(**REFERENCE, ...)`` trains the papers' way (``docs/training.md`` advises
``p_warmup`` 0 without the swap)."""
