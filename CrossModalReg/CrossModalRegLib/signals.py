"""SIGINT / SIGTERM for the command line: exit 130 / 143 with one line and nothing half-written.

:func:`installed` (around ``cli.main``) makes both signals raise :class:`Interrupted` (a ``KeyboardInterrupt``, so
every ``except KeyboardInterrupt`` and ``finally`` cleans up as for Ctrl-C). Inside :func:`deferred` (the
registration engine, whose ITK optimisers call back into Python) a signal is only recorded: an exception raised in
an ITK callback would be printed by SWIG and turned into an ITK error ("... could not run ... Python Callable").
The engine polls :func:`received` with its cancel check and stops within a second; leaving the block raises the
recorded signal. Only the first signal raises: a second one during clean-up cannot interrupt the clean-up.
"""

from __future__ import annotations

import contextlib
import signal
import threading

_state = {"signum": None, "deferred": 0, "raised": False}


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; ``exit_code`` is 128 + the signal number (130 SIGINT, 143 SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


def received() -> int | None:
    """The signal received since :func:`installed` was entered (or None)."""
    return _state["signum"]


def _raise_once():
    if not _state["raised"]:
        _state["raised"] = True
        raise Interrupted(_state["signum"])


def _handler(signum, frame):
    if _state["signum"] is None:
        _state["signum"] = signum
    if _state["deferred"] == 0:
        _raise_once()


@contextlib.contextmanager
def installed():
    """Handle SIGINT and SIGTERM as described above inside the block, then restore the previous handlers (main
    thread only; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.update(signum=None, deferred=0, raised=False)
    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def deferred():
    """Record signals instead of raising them inside this block; raise the recorded one when it ends."""
    _state["deferred"] += 1
    try:
        yield
    finally:  # also replaces the engine's RegistrationCancelled that the signal caused
        _state["deferred"] -= 1
        if _state["deferred"] == 0 and _state["signum"] is not None:
            _raise_once()


def with_signals(cancel):
    """A cancel check for ``engine.register`` that is also true once a signal was received."""
    from .progress import cancel_checker

    user = cancel_checker(cancel)
    return lambda: _state["signum"] is not None or user()
