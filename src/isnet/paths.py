"""Where isnet may write: the guards that keep outputs from overwriting what a user owns.

The rules, checked before any work starts:

* an output folder never contains, and is never inside, an input (``isnet explain``);
* isnet writes only files with the names it owns (:data:`RUN_FILES` in a run folder, the
  heatmaps listed in ``heatmaps.json``, a JSON result) and replaces an existing file only when
  isnet wrote it itself: recorded in the folder's ledger (:mod:`isnet.outputs`), or, for files
  older than the ledger, listed in an ``isnet explain`` manifest;
* links are followed: an output reached through a link into an input is inside that input;
* a run folder is started once: a second start needs ``--resume`` (continue) or
  ``--overwrite`` (unfinished runs only: isnet never deletes a trained ``model.pt``, and
  deletes only the files a run writes, :data:`RUN_LAYOUT`).

Errors are :class:`isnet.errors.UserError` subclasses naming the path and what to do. This
module imports no third-party package.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from .config import current_names
from .errors import OutputExistsError, UserError
from .outputs import EVALUATION, LEDGER, claimed

__all__ = ["CHECKPOINTS", "CONFIG", "MODEL", "RUN_FILES", "RUN_LAYOUT", "check_json_output",
           "check_new_files", "check_run_folder", "check_separate", "clear_run", "read_run_config", "run_contents"]

CONFIG = "config.json"
MODEL = "model.pt"
CHECKPOINTS = "checkpoints"
RUN_FILES = (CONFIG, MODEL, CHECKPOINTS, "metrics.csv", "hparams.yaml", "calibration", "tensorboard", "mlruns")
"""Everything ``isnet train`` writes into a run folder; nothing else there is ever touched."""
RUN_LAYOUT = {CHECKPOINTS: ("best.ckpt", "last.ckpt", "hpc_ckpt_*.ckpt"),
              "calibration": ("metrics.csv", "hparams.yaml", "model.pt", "hpc_ckpt_*.ckpt"),
              "tensorboard": ("events.out.tfevents.*", "hparams.yaml"), "mlruns": ("*/meta.yaml", ".trash")}
"""The files (glob patterns) a run writes into each folder of :data:`RUN_FILES`: ``--overwrite`` deletes these
(an MLflow experiment: the folder holding ``meta.yaml``) and leaves the rest, e.g. a colleague's checkpoint."""


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _read_from(given: Path) -> list[tuple[Path, str]]:
    """The real folders (or file) an input is read from, each with how: the input resolved, and the targets of
    the links directly inside it (``OUT/images`` of ``isnet segment predict``)."""
    real = Path(given).expanduser().resolve()
    found = [(real, "")]
    if real.is_dir():
        with os.scandir(real) as entries:
            found += [(Path(e.path).resolve(), f" (through the link {Path(given) / e.name})")
                      for e in entries if e.is_symlink() and e.is_dir()]
    return found


def check_separate(out: Path, inputs: Iterable[Path], *, out_option: str, in_option: str) -> None:
    """Refuse an output folder that is, contains or is inside one of the inputs (links followed)."""
    o = Path(out).expanduser().resolve()
    if o.exists() and not o.is_dir():
        raise OutputExistsError(f"{out_option} {out} is a file; give a folder (it is created if missing)")
    for given in inputs:
        for i, how in _read_from(given):
            if _inside(i, o):
                raise OutputExistsError(f"{out_option} {out} contains the input {in_option} {given}{how}, whose "
                                        "files could be overwritten; choose an output folder outside it")
            if i.is_dir() and _inside(o, i):
                raise OutputExistsError(f"{out_option} {out} is inside the input {in_option} {given}{how}: its "
                                        "files would be overwritten or read as input next time; choose a folder "
                                        "outside it")


def check_new_files(out: Path, planned: Sequence[Path], ours: Iterable[Path], *, out_option: str) -> None:
    """Refuse when a planned output already exists and isnet did not write it: it is neither recorded in
    ``out``'s ledger (:func:`isnet.outputs.claimed`) nor one of ``ours`` (older records, e.g. a manifest)."""
    owned = {Path(p).resolve() for p in ours} | claimed(out)
    clash = [p for p in planned if p.exists() and Path(p).resolve() not in owned]
    if clash:
        more = f" and {len(clash) - 1} more" if len(clash) > 1 else ""
        raise OutputExistsError(f"{out_option} {out} already holds {clash[0]}{more}, which isnet did not write; "
                                "isnet does not overwrite it: choose another (or an empty) output folder")


def _older_evaluation(data: object) -> bool:
    """Whether a JSON document is an evaluation result written before the ledger: test set -> scores."""
    return isinstance(data, dict) and bool(data) and all(
        isinstance(v, dict) and "n" in v and ("confusion_matrix" in v or "dice" in v) for v in data.values())


def check_json_output(path: Path, *, option: str, kind: str = EVALUATION) -> None:
    """A JSON result may be written to ``path``: a new file, or one isnet wrote as a ``kind`` result.

    isnet's own results are recognised by the ledger of their folder (:mod:`isnet.outputs`; the
    writer records the file with :func:`isnet.outputs.claim`), evaluation results written before
    it by their fields. Anything else, JSON or not, is the user's and is never replaced.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; give a file name such as {path / 'results.json'}")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"{option} {path}: {parent} is a file, not a folder")
    if not (path.exists() or path.is_symlink()) or path.parent.resolve() / path.name in claimed(path.parent, kind):
        return
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        raise OutputExistsError(f"{option} {path} exists and is not a JSON file; isnet does not overwrite "
                                "it: give another file name") from None
    if not (kind == EVALUATION and _older_evaluation(data)):
        raise OutputExistsError(f"{option} {path} exists and isnet did not write it as an {kind} result (it is "
                                f"not recorded in {path.parent / LEDGER}); isnet does not overwrite it: give "
                                "another file name, or delete it first")


def read_run_config(path: Path) -> dict:
    """A run's ``config.json`` as a dict, options renamed since it was written under today's names
    (:func:`isnet.config.current_names`); a :class:`UserError` when it is not one."""
    try:
        config = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, ValueError) as err:
        raise UserError(f"{path} is not a run configuration written by isnet train ({err})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a run configuration written by isnet train")
    return current_names(config)


def run_contents(run: Path) -> list[str]:
    """The names of :data:`RUN_FILES` present in the folder ``run``."""
    return [name for name in RUN_FILES if (run / name).exists()]


def _looks_like_a_run(run: Path) -> bool:
    """Whether isnet wrote what is in ``run``: a config.json with an objective, or checkpoint/calibration logs."""
    config = run / CONFIG
    if config.is_file():
        try:
            recorded = json.loads(config.read_text())
            return isinstance(recorded, dict) and "objective" in current_names(recorded)
        except (UnicodeDecodeError, ValueError):
            return False
    return any((run / CHECKPOINTS / name).is_file() for name in RUN_LAYOUT[CHECKPOINTS]) or (
        run / "calibration" / "metrics.csv").is_file()


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


def clear_run(run: Path, names: Iterable[str]) -> list[str]:
    """Delete isnet's own files (from the :data:`RUN_FILES` ``names``, :data:`RUN_LAYOUT` inside their folders)
    from a run folder, for ``--overwrite``; a folder goes only once empty. Returns what was deleted, relative."""
    removed = []
    for name in names:
        if name not in RUN_FILES:
            raise ValueError(f"{name!r} is not a run file isnet writes")
        path = run / name
        if not path.is_dir():
            if path.exists() or path.is_symlink():
                path.unlink()
                removed.append(name)
            continue
        for pattern in RUN_LAYOUT.get(name, ()):
            for found in sorted(path.glob(pattern)):
                target = found.parent if found.name == "meta.yaml" else found  # an MLflow experiment
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
                else:
                    continue
                removed.append(target.relative_to(run).as_posix())
        if not any(path.iterdir()):
            path.rmdir()
    return removed
