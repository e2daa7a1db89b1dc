"""What counts as a user's mistake, and how isnet reports it.

A :class:`UserError` is raised when what the user asked for cannot be done as asked: an
option out of range, a file that is not what it should be, an output that would overwrite
something. Its message names the option or file and says what to do. The ``isnet`` command
prints it as one line (``isnet CMD: error: ...``) and exits with status 2; any other
exception is a bug and keeps its traceback.

``UserError`` is a ``ValueError``, so code that catches ``ValueError`` keeps working. The
subclasses that are also ``FileExistsError`` / ``FileNotFoundError`` keep the standard
meaning for callers that test for those.

:class:`IsnetWarning` marks warnings about suspicious but usable input (empty masks, random
weights); the command prints them as ``isnet CMD: warning: ...``. :class:`IsnetDeprecationWarning`,
one of them, marks an earlier name of an option that still works (shown to command-line users,
unlike Python's ``DeprecationWarning``).

This module imports only the standard library, so every other module may import it.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["IsnetDeprecationWarning", "IsnetWarning", "OutputExistsError", "UserError", "UserFileNotFoundError",
           "command_warnings", "short_message"]


class UserError(ValueError):
    """A mistake in what the user asked for; the message says which option or file, and what to do."""


class OutputExistsError(UserError, FileExistsError):
    """An output would overwrite a file or run folder that isnet may not replace."""


class UserFileNotFoundError(UserError, FileNotFoundError):
    """An input file or folder the user named does not exist."""


class IsnetWarning(UserWarning):
    """Input that isnet can use, but probably not as the user meant (the command shows it as a warning)."""


class IsnetDeprecationWarning(IsnetWarning, FutureWarning):
    """An earlier name of an option or setting, still read; the message names the one to use."""


def short_message(error: BaseException) -> str:
    """The message of an error, without the traceback text a DataLoader worker puts around it."""
    text = str(error)
    if "Traceback (most recent call last)" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(f"{type(error).__name__}: ", 1)[-1]
    return text


@contextmanager
def command_warnings(command: str) -> Iterator[None]:
    """Show :class:`IsnetWarning` as ``isnet COMMAND: warning: ...`` on stderr; other warnings as usual."""
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, IsnetWarning):
            print(f"isnet {command}: warning: {message}", file=sys.stderr, flush=True)
        else:
            original(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original
