"""Where isnet may write: the guards that keep outputs from overwriting what a user owns.

The rules, checked before any work starts:

* an output folder never contains, and is never inside, an input (``isnet explain``);
* isnet writes only files with the names it owns (:data:`RUN_FILES` in a run folder, the
  heatmaps listed in ``heatmaps.json``, a JSON result) and replaces an existing file only when
  isnet wrote it itself;
* a run folder is started once: a second start needs ``--resume`` (continue) or
  ``--overwrite`` (unfinished runs only: isnet never deletes a trained ``model.pt``).

Errors are :class:`isnet.errors.UserError` subclasses naming the path and what to do. This
module imports no third-party package.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import OutputExistsError, UserError

__all__ = ["CHECKPOINTS", "CONFIG", "MODEL", "RUN_FILES", "check_json_output", "check_new_files",
           "check_run_folder", "check_separate", "clear_run", "read_run_config", "run_contents"]

CONFIG = "config.json"
MODEL = "model.pt"
CHECKPOINTS = "checkpoints"
RUN_FILES = (CONFIG, MODEL, CHECKPOINTS, "metrics.csv", "hparams.yaml", "calibration", "tensorboard", "mlruns")
"""Everything ``isnet train`` writes into a run folder; nothing else there is ever touched."""


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_separate(out: Path, inputs: Iterable[Path], *, out_option: str, in_option: str) -> None:
    """Refuse an output folder that is, contains or is inside one of the inputs."""
    o = Path(out).expanduser().resolve()
    if o.exists() and not o.is_dir():
        raise OutputExistsError(f"{out_option} {out} is a file; give a folder (it is created if missing)")
    for given in inputs:
        i = Path(given).expanduser().resolve()
        if _inside(i, o):
            raise OutputExistsError(f"{out_option} {out} contains the input {in_option} {given}, whose files "
                                    "could be overwritten; choose an output folder outside it")
        if i.is_dir() and _inside(o, i):
            raise OutputExistsError(f"{out_option} {out} is inside the input {in_option} {given}: its files "
                                    "would be overwritten or read as input next time; choose a folder outside it")


def check_new_files(out: Path, planned: Sequence[Path], ours: Iterable[Path], *, out_option: str) -> None:
    """Refuse when a planned output already exists and is not one of ``ours`` (files isnet wrote earlier)."""
    owned = {Path(p).resolve() for p in ours}
    clash = [p for p in planned if p.exists() and Path(p).resolve() not in owned]
    if clash:
        more = f" and {len(clash) - 1} more" if len(clash) > 1 else ""
        raise OutputExistsError(f"{out_option} {out} already holds {clash[0]}{more}, which isnet did not write; "
                                "isnet does not overwrite it: choose another (or an empty) output folder")


def check_json_output(path: Path, *, option: str) -> None:
    """A JSON result may be written to ``path``: not a folder, and not a file other than a JSON document."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; give a file name such as {path / 'results.json'}")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"{option} {path}: {parent} is a file, not a folder")
    if path.exists():
        try:
            json.loads(path.read_text())
        except (UnicodeDecodeError, ValueError):
            raise OutputExistsError(f"{option} {path} exists and is not a JSON file; isnet does not overwrite "
                                    "it: give another file name") from None


def read_run_config(path: Path) -> dict:
    """A run's ``config.json`` as a dict; a :class:`UserError` when it is not one."""
    try:
        config = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, ValueError) as err:
        raise UserError(f"{path} is not a run configuration written by isnet train ({err})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a run configuration written by isnet train")
    return config


def run_contents(run: Path) -> list[str]:
    """The names of :data:`RUN_FILES` present in the folder ``run``."""
    return [name for name in RUN_FILES if (run / name).exists()]


def _looks_like_a_run(run: Path) -> bool:
    """Whether isnet wrote what is in ``run``: a config.json with a variant, or checkpoint/calibration logs."""
    config = run / CONFIG
    if config.is_file():
        try:
            return "variant" in json.loads(config.read_text())
        except (UnicodeDecodeError, ValueError):
            return False
    return any((run / CHECKPOINTS).glob("*.ckpt")) or (run / "calibration" / "metrics.csv").is_file()


def check_run_folder(run: Path, *, overwrite: bool, datasets: Iterable[Path] = ()) -> list[str]:
    """Check that a new run may start in ``run``; returns the names :func:`clear_run` will delete.

    A folder without isnet's files (or no folder) is fine. One that holds an unfinished run needs
    ``overwrite``; a finished run (``model.pt``) or files isnet did not write are never replaced.
    """
    if run.exists() and not run.is_dir():
        raise OutputExistsError(f"--out {run} is a file; give a folder for the run")
    for root in datasets:
        for sub in ("images", "masks"):
            if _inside(run.expanduser().resolve(), (Path(root) / sub).expanduser().resolve()):
                raise UserError(f"--out {run} is inside the dataset folder {Path(root) / sub}; choose a run folder "
                                "outside images/ and masks/")
    present = run_contents(run) if run.is_dir() else []
    if not present:
        return []
    listed = ", ".join(present)
    if (run / MODEL).exists():
        raise OutputExistsError(f"{run} already holds a run, finished ({MODEL}); isnet never replaces a trained "
                                "model: choose another --out, or train it longer with --resume --epochs N")
    if not _looks_like_a_run(run):
        raise OutputExistsError(f"{run} holds {listed}, which isnet did not write; choose another --out")
    if not overwrite:
        raise OutputExistsError(f"{run} already holds a run, unfinished ({listed}): continue it with --resume, "
                                "start it again with --overwrite, or choose another --out")
    return present


def clear_run(run: Path, names: Iterable[str]) -> None:
    """Delete isnet's own files (names from :data:`RUN_FILES`) from a run folder, for ``--overwrite``."""
    for name in names:
        if name not in RUN_FILES:
            raise ValueError(f"{name!r} is not a run file isnet writes")
        path = run / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
