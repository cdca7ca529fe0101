"""A time limit for code we do not control (user evaluator functions).

On the main thread of a POSIX process a real-time interval timer interrupts the call (a loop,
a sleep, a blocking read) with `EvaluatorTimeout`, at the cost of two system calls. Elsewhere,
or when another tool (pytest-timeout) has that timer armed, the call runs in a daemon thread
that is abandoned when the limit passes: the case gets its error and the run goes on, though
the stray thread may keep a core busy."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any


class EvaluatorTimeout(Exception):
    """The evaluator did not return within its time limit."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise EvaluatorTimeout


def call_with_time_limit(seconds: float, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    if (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getitimer(signal.ITIMER_REAL)[0] == 0  # not armed by someone else
    ):
        previous = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return fn(*args, **kwargs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append((True, fn(*args, **kwargs)))
        except BaseException as exc:  # handed to the caller below
            outcome.append((False, exc))

    thread = threading.Thread(target=target, name="servebench-evaluator", daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        raise EvaluatorTimeout
    ok, value = outcome[0]
    if not ok:
        raise value
    return value
