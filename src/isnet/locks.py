"""One isnet process at a time per output folder: ``FOLDER/.isnet.lock``.

A :class:`FolderLock` holds an exclusive ``flock`` on the lock file for the whole run (train,
explain, a benchmark). The operating system releases it when the process ends, however it ends,
so a crash never leaves a folder locked. The file names its holder (command, process id, host,
start time): a second process is refused with that name (:class:`FolderInUseError`), and one
that finds the record of a holder that ended without releasing (killed, crashed) says so and
takes the folder over. A clean release deletes the file, and the folders the lock created when
they are still empty (a run refused by its checks leaves nothing behind). Without ``fcntl``
(Windows) runs are not serialised.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .errors import IsnetWarning, OutputExistsError, UserError
from .outputs import disk_errors

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK", "FolderInUseError", "FolderLock", "holding_lock"]

LOCK = ".isnet.lock"
F = TypeVar("F", bound=Callable[..., Any])


class FolderInUseError(UserError):
    """Another isnet process is writing to the output folder."""


def _holder(record: str) -> str:
    """A lock file's record in words."""
    try:
        r = json.loads(record)
        return f"{r['command']} (process {r['pid']} on {r['host']}, started {r['started']})"
    except (ValueError, KeyError, TypeError):
        return "another isnet process"


class FolderLock:
    """An exclusive lock on ``folder`` (created when missing) for ``command`` (e.g. ``"isnet train"``)."""

    def __init__(self, folder: str | Path, command: str) -> None:
        self.folder, self.command = Path(folder).expanduser(), command
        self.path = self.folder / LOCK
        self._handle: int | None = None
        self._created: list[Path] = []

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _read(self, handle: int) -> str:
        return os.pread(handle, 4096, 0).decode("utf-8", "replace").strip()

    def acquire(self) -> FolderLock:
        """Take the lock; a :class:`FolderInUseError` naming the holder when another process has it."""
        if fcntl is None or self._handle is not None:
            return self
        if self.folder.exists() and not self.folder.is_dir():
            raise OutputExistsError(f"{self.folder} is a file; give a folder for the output (it is created if missing)")
        with disk_errors(self.path):
            self._created = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
            self.folder.mkdir(parents=True, exist_ok=True)
            while True:
                handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = _holder(self._read(handle))
                    os.close(handle)
                    self._remove_created()
                    raise FolderInUseError(f"{self.folder} is in use by {holder}; two runs in one folder would mix "
                                           "their files: wait until it ends, or choose another output folder") from None
                with contextlib.suppress(FileNotFoundError):
                    if os.path.samestat(os.fstat(handle), os.stat(self.path)):
                        break  # else a holder released (deleted) the file in between: lock the new one
                os.close(handle)
            left = self._read(handle)
            if left:
                warnings.warn(f"{self.path} was left by {_holder(left)}, which is no longer running (killed or "
                              f"crashed before it released {self.folder}); {self.command} takes the folder over",
                              IsnetWarning, stacklevel=2)
            record = {"command": self.command, "pid": os.getpid(), "host": socket.gethostname(),
                      "started": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.ftruncate(handle, 0)
            os.pwrite(handle, (json.dumps(record) + "\n").encode(), 0)
        self._handle = handle
        return self

    def release(self) -> None:
        """Delete the lock file and let go of the lock; remove the folders it created if they are empty."""
        if self._handle is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._handle)
        self._handle = None
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in self._created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break
        self._created = []


def _out(arguments: dict[str, Any]) -> Any:
    return arguments["out"]


def holding_lock(command: str, folder: Callable[[dict[str, Any]], str | Path | None] = _out) -> Callable[[F], F]:
    """Decorate a function so that it runs holding a :class:`FolderLock` for ``command`` on the folder that
    ``folder`` picks from its arguments (by name; default ``out``); None: no lock (e.g. a DDP worker)."""
    def decorate(function: F) -> F:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def locked(*args: Any, **kwargs: Any) -> Any:
            where = folder(signature.bind(*args, **kwargs).arguments)
            with FolderLock(where, command) if where is not None else contextlib.nullcontext():
                return function(*args, **kwargs)

        return locked  # type: ignore[return-value]

    return decorate
