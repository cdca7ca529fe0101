"""SIGTERM (a cancelled CI job) ends the run like Ctrl-C: what finished is saved and the
partial summary and the resume command are printed."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated("SIGTERM")


def install_sigterm() -> Any:
    """SIGTERM raises Terminated from now on; returns the handler it replaced (None when
    signals cannot be set here: not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return signal.signal(signal.SIGTERM, _raise_terminated)
    return None


def restore_sigterm(previous: Any) -> None:
    """Put back the handler install_sigterm() replaced, unless someone else replaced ours."""
    if previous is None or threading.current_thread() is not threading.main_thread():
        return
    with contextlib.suppress(ValueError, OSError, TypeError):
        if signal.getsignal(signal.SIGTERM) is _raise_terminated:
            signal.signal(signal.SIGTERM, previous)
