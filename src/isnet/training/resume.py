"""What ``--resume`` accepts: the checks that run before a resumed run touches its folder.

A resumed run keeps its recipe. Its ``config.json`` is the reference: an option given again
must have the saved value, except the :data:`isnet.config.RESUMABLE` options (``--epochs`` and
the hardware options) and the bookkeeping ones (``--out``, ``--quiet``, ``--workers``).
``--epochs`` may not fall below the epochs already completed (read from
``checkpoints/last.ckpt``), and a finished run resumes only to train longer. A refused resume
raises :class:`isnet.errors.UserError` and leaves the folder byte-identical.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..config import BOOKKEEPING, RESUMABLE, TrainConfig, flag
from ..errors import UserError, UserFileNotFoundError
from ..objectives import get_objective
from ..paths import CHECKPOINTS, CONFIG, MODEL, read_run_config, run_contents

__all__ = ["changed_options", "completed_epochs", "explicit_options", "resume_config"]

LAST = f"{CHECKPOINTS}/last.ckpt"


def explicit_options(config: TrainConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The options a caller set: a mapping's keys, or a dataclass's fields that differ from their defaults."""
    if isinstance(config, Mapping):
        return dict(config)
    values = config.to_dict()
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
                for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in values.items() if v != defaults[k] or k in ("out", "resume")}


def _same(name: str, new: Any, old: Any, saved: TrainConfig) -> bool:
    if name in ("train", "val") and new is not None and old is not None:
        return Path(new).expanduser().resolve() == Path(old).expanduser().resolve()
    if name == "background_swap":  # a run before swap values were resolved stored None
        swap = get_objective(saved.objective).swap_probability
        return swap(new) == swap(old)
    numbers = (int, float)
    if isinstance(new, numbers) and isinstance(old, numbers) and not isinstance(new, bool) \
            and not isinstance(old, bool):
        return float(new) == float(old)
    return new == old


def changed_options(given: Mapping[str, Any], saved: TrainConfig) -> list[str]:
    """``--option NEW (the run has OLD)`` for each given option that a resume may not change."""
    changed = []
    for name, value in given.items():
        if name in RESUMABLE or name in BOOKKEEPING or value is None:
            continue
        old = getattr(saved, name)
        if not _same(name, value, old, saved):
            changed.append(f"{flag(name)} {value} (the run has {old})")
    return changed


def completed_epochs(last: Path) -> int:
    """Epochs a run has completed, from its ``last.ckpt`` (saved at the end of each epoch)."""
    try:
        ckpt = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
        return int(ckpt["epoch"]) + 1
    except Exception as err:  # noqa: BLE001 - unreadable for any reason: the run cannot continue from it
        raise UserError(f"cannot read {last} ({type(err).__name__}), so the run cannot be resumed; start it again "
                        "with --overwrite (unfinished runs) or train into another --out") from None


def resume_config(given: Mapping[str, Any], run: Path, *, check: bool = True) -> tuple[TrainConfig, Path | None]:
    """The configuration of the resumed run ``run`` and the checkpoint to continue from (None: start over).

    ``given`` holds the options the caller set. With ``check`` (the launching process), an
    option that may not change, a lower ``epochs`` or a finished run without a larger
    ``epochs`` raises a :class:`UserError` before anything is written.
    """
    path = run / CONFIG
    if not path.is_file():
        hint = ("start it again with --overwrite" if run.is_dir() and run_contents(run)
                else "start the run without --resume")
        raise UserFileNotFoundError(f"nothing to resume: {path} does not exist ({hint})")
    saved = TrainConfig.from_dict(read_run_config(path))
    planned = saved.epochs
    if check:
        changed = changed_options(given, saved)
        if changed:
            allowed = ", ".join(flag(n) for n in RESUMABLE)
            raise UserError(f"cannot resume {run} with changed options: {'; '.join(changed)}. A resumed run keeps its "
                            f"recipe; only {allowed} may change. To train with other options, start a new run "
                            "with another --out")
    for name in RESUMABLE:
        if name in given and given[name] is not None:
            setattr(saved, name, given[name])
    saved.out, saved.resume, saved.overwrite = str(run), True, False
    saved.validate()
    last = run / LAST
    finished = (run / MODEL).is_file()
    if not last.is_file():
        if check and finished:
            raise UserError(f"{run} holds a trained {MODEL} but no {LAST} to continue from; train into another --out")
        return saved, None  # stopped before the first checkpoint: the run starts over
    if check:
        done = completed_epochs(last) + saved.warm_epochs()  # a warm start's calibration epochs count
        if finished:
            done = max(done, planned)
        if saved.epochs < done:
            raise UserError(f"--epochs {saved.epochs} is below the {done} epochs {run} has completed; a resumed run "
                            f"can only continue: give --epochs above {done}, or none to finish the planned "
                            f"{planned}")
        if finished and saved.epochs == done:
            raise UserError(f"{run} has finished its {done} epochs, so there is nothing to resume; give --epochs "
                            f"above {done} to train it longer")
    return saved, last
