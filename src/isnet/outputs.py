"""How isnet writes a file: whole or not at all, readable as the umask says, and recorded as its own.

* :func:`write_atomic` (:func:`write_text`, :func:`write_json`) writes a temporary file in the
  target's folder, then renames it onto the target (``os.replace``): a crash, Ctrl-C or a full
  disk never leaves a truncated file under the final name. The file gets the permissions a
  plain ``open`` gives (``0666`` less the umask, e.g. ``0644``), or those of the file it replaces.
* A full disk, an exceeded quota, a read-only file system or a refused permission while writing
  is a :class:`DiskError` (a :class:`~isnet.errors.UserError`: one line, exit status 2) naming
  the file, the cause and what to do; :func:`disk_errors` converts, and :func:`as_disk_error`
  does it for what other libraries' writers raise.
* ``FOLDER/.isnet-files.json`` (:data:`LEDGER`) records which files in or below FOLDER isnet
  wrote, and as what (``"evaluation"``, ``"explain"``, ``"bench"``): :func:`claim` adds files
  before they are written, so a run cut short still owns what it began; :func:`claimed` reads
  the record, which :mod:`isnet.paths` consults before replacing anything.

This module imports only the standard library.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import UserError

try:
    import fcntl
except ImportError:  # Windows: ledger updates are not serialised
    fcntl = None  # type: ignore[assignment]

__all__ = ["EVALUATION", "LEDGER", "DiskError", "as_disk_error", "claim", "claimed", "disk_errors", "write_atomic",
           "write_json", "write_result", "write_text"]

LEDGER = ".isnet-files.json"
EVALUATION = "evaluation"
"""What the ledger records an ``isnet eval`` / ``isnet segment eval`` JSON result as."""
_ABOUT = "files isnet wrote in this folder (and below), and as what; isnet replaces no other file"
_CAUSES = {
    errno.ENOSPC: ("the disk is full", "free space on that disk, or give an output on another disk"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space within the quota, or give an output elsewhere"),
    errno.EFBIG: ("the file is too large for this file system", "give an output on another file system"),
    errno.EROFS: ("the file system is read-only", "give an output on a writable file system"),
    errno.EACCES: ("permission denied", "give an output folder you may write to"),
    errno.EPERM: ("the operation is not permitted", "give an output folder you may write to"),
}


class DiskError(UserError):
    """A file could not be written: full disk, quota, read-only file system or permissions."""


def as_disk_error(error: OSError, path: str | Path | None = None, *, writing: bool = True) -> DiskError | None:
    """``error`` as a :class:`DiskError` naming ``path`` (else the error's file); None for other errors.

    ``writing=False``: the error may come from a read, so a refused permission is left alone; only
    what only a write meets (full disk, quota, read-only file system) is converted.
    """
    cause = _CAUSES.get(error.errno or 0)
    if cause is None or (not writing and error.errno in (errno.EACCES, errno.EPERM)):
        return None
    where = path if path is not None else (error.filename or "a file")
    return DiskError(f"cannot write {where}: {cause[0]} ({os.strerror(error.errno or 0)}); {cause[1]}")


@contextlib.contextmanager
def disk_errors(path: str | Path) -> Iterator[None]:
    """Turn an OSError of a full or read-only disk while writing ``path`` into a :class:`DiskError`."""
    try:
        yield
    except OSError as error:
        converted = as_disk_error(error, path)
        if converted is None:
            raise
        raise converted from None


def write_atomic(path: str | Path, fill: Callable[[IO[bytes]], Any]) -> Path:
    """Write ``path`` by calling ``fill`` on a temporary binary file in its folder, then rename it into place.

    Parent folders are created. ``fill`` writes the content (``np.save``, ``torch.save``,
    ``fig.savefig`` with an explicit format, ``file.write``). Returns ``path``.
    """
    path = Path(path)
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        handle = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
        try:
            with os.fdopen(handle, "wb") as file:
                fill(file)
            with contextlib.suppress(OSError):  # the mode of the file replaced, when there is one
                os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` with :func:`write_atomic`."""
    data = text.encode("utf-8")
    return write_atomic(path, lambda file: file.write(data))


def write_json(path: str | Path, data: Any, *, indent: int = 2) -> Path:
    """Write ``data`` as JSON (no NaN) to ``path`` with :func:`write_atomic`."""
    return write_text(path, json.dumps(data, indent=indent, allow_nan=False) + "\n")


def write_result(path: str | Path, data: Any, kind: str = EVALUATION) -> Path:
    """Write a JSON result to ``path``, recorded in its folder's ledger as ``kind`` (a later run may replace it)."""
    path = Path(path).expanduser()
    claim(path.parent, [path], kind)
    return write_json(path, data)


def _entries(folder: Path) -> dict[str, str]:
    """The ledger of ``folder``: relative path -> kind (empty when there is none or it is unreadable)."""
    try:
        files = json.loads((folder / LEDGER).read_text(encoding="utf-8")).get("files")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else {}


def claimed(folder: str | Path, kind: str | None = None) -> set[Path]:
    """The files (resolved paths) that :data:`LEDGER` in ``folder`` records, only those of ``kind`` when given."""
    folder = Path(folder).expanduser()
    root = folder.resolve()
    return {root / name for name, k in _entries(folder).items() if kind is None or k == kind}


@contextlib.contextmanager
def _serialised(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` itself while its ledger is updated (best effort)."""
    if fcntl is None:
        yield
        return
    handle = os.open(folder, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # e.g. a network file system without flock on folders
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


def claim(folder: str | Path, paths: Iterable[str | Path], kind: str) -> None:
    """Record ``paths`` (files in or below ``folder``) in its :data:`LEDGER` as written by isnet, as ``kind``.

    Call it before writing them: a file recorded but never written is harmless, one written but
    not recorded would be refused by the next run.
    """
    folder = Path(folder).expanduser()
    base = Path(os.path.abspath(folder))
    names = {Path(os.path.abspath(Path(p).expanduser())).relative_to(base).as_posix(): kind for p in paths}
    with disk_errors(folder / LEDGER):
        folder.mkdir(parents=True, exist_ok=True)
    with _serialised(folder):
        entries = _entries(folder)
        if any(entries.get(name) != k for name, k in names.items()):
            write_json(folder / LEDGER, {"about": _ABOUT, "files": {**entries, **names}}, indent=0)
