"""SIGTERM ends a command as Ctrl-C does: the run stops, its last checkpoint stays, the command says how to go on.

Batch schedulers (SLURM, PBS, Kubernetes, ...) end a job with SIGTERM, at its time limit or
when it is cancelled. Python's default for SIGTERM ends the process at once, without a word;
``isnet`` installs :func:`raise_on_sigterm` instead, which raises :class:`Terminated` (a
``SystemExit`` with status 143, 128 + SIGTERM, the status a shell reports for a job ended by
SIGTERM) so that the command prints how to continue, like it does after a Ctrl-C.

While Lightning trains, it has its own SIGTERM handler
(``lightning.pytorch.trainer.connectors.signal_connector``): it sets ``trainer.received_sigterm``,
and the training loops stop at the next batch with ``SIGTERMException``. It calls the handler
that was there before it too, so :func:`isnet.training.fit.run_trainer` registers the trainer
with :func:`lightning_handles`: a SIGTERM that Lightning has taken is left to it, and
``run_trainer`` turns the stop into :class:`Terminated`.

This module imports only the standard library.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["EXIT_STATUS", "Terminated", "install_sigterm_handler", "lightning_handles", "raise_on_sigterm"]

EXIT_STATUS = 128 + signal.SIGTERM
"""Exit status of a command ended by SIGTERM (143)."""

_taken: list[Callable[[], bool]] = []


class Terminated(SystemExit):
    """The process received SIGTERM; uncaught, it ends Python with status 143 and no traceback."""

    def __init__(self, code: int = EXIT_STATUS) -> None:
        super().__init__(code)


def _handler(signum: int, frame: object) -> None:
    if any(taken() for taken in _taken):
        return  # Lightning stops the run at the next batch
    raise Terminated()


def install_sigterm_handler() -> None:
    """Make SIGTERM raise :class:`Terminated` in this process (the main thread; elsewhere nothing changes)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _handler)


@contextmanager
def raise_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated`; the previous handler is restored after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def lightning_handles(received: Callable[[], bool]) -> Iterator[None]:
    """Within the block, a SIGTERM for which ``received()`` is True (``trainer.received_sigterm``) raises
    nothing: Lightning, whose handler runs first, ends the training at the next batch."""
    _taken.append(received)
    try:
        yield
    finally:
        _taken.remove(received)
