"""A run folder written by one process at a time, and its checkpoints written whole.

* :func:`run_folder` picks the folder that :func:`isnet.training.fit` (and the segmenter's
  training) lock for the whole run (:func:`isnet.locks.holding_lock`): only in the launching
  process (:func:`launching_process`); the processes Lightning starts for the other devices of a
  DDP run, and the other nodes, write into the run of the first one.
* Lightning's own checkpoint writer (``TorchCheckpointIO``) saves through an fsspec transaction
  whose temporary file lies in the system's temporary folder; moving it onto another file system
  is a copy into the final name, which a full disk leaves truncated. :class:`AtomicCheckpointIO`
  writes the temporary file next to the checkpoint and renames it
  (:func:`isnet.outputs.write_atomic`), and a full or read-only disk is a
  :class:`isnet.outputs.DiskError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..outputs import write_atomic

__all__ = ["AtomicCheckpointIO", "launching_process", "run_folder"]


def launching_process() -> bool:
    """Whether this is the process that checks and prepares the run folder (global rank 0).

    Lightning relaunches ``isnet train`` once per device; those processes (and the other nodes)
    trust the checks of the first one, which has already started writing.
    """
    return rank_zero_only.rank == 0 and int(os.environ.get("NODE_RANK", "0") or 0) == 0


def run_folder(arguments: Mapping[str, Any]) -> Any:
    """The ``out`` of a training function's ``config`` argument (a mapping or a config object) to lock, in the
    launching process; None elsewhere (no lock)."""
    config = arguments["config"]
    out = config.get("out") if isinstance(config, Mapping) else config.out
    return out if out and launching_process() else None


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose ``save_checkpoint`` writes a temporary file beside the target, then renames it."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        write_atomic(Path(path), lambda file: torch.save(checkpoint, file))
