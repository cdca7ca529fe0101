"""What both sides of the engine speak of: a request to send, a task's counters, the abort.

Kept apart from engine.py so that pytest's process imports no HTTP stack when the requests
are sent from the engine process."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


class RunAborted(Exception):
    """The run cannot go on (endpoint unreachable, credentials rejected, interrupted)."""


@dataclass
class Progress:
    """Counters of one task, read by the progress view."""

    total: int = 0
    reused: int = 0
    posted: int = 0
    received: int = 0
    finished: int = 0
    failed: int = 0
    retried: int = 0
    started: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class Job:
    """One HTTP request: `count` samples of one case starting at sample index `first`."""

    case_id: str
    first: int
    count: int
    body: dict[str, Any]
    hash: str
    # The case's reference answer: saved with the prompt in the case's first record, so a
    # prediction file shows what was asked and what was expected (AISBench's origin_prompt
    # and gold). The engine never judges with it.
    reference: str | None = None

    def failed(self, message: str) -> list[dict[str, Any]]:
        """The records of this request's samples when it could not be made or served."""
        return [
            {
                "case": self.case_id,
                "sample": self.first + i,
                "hash": self.hash,
                "ok": False,
                "error": message,
            }
            for i in range(self.count)
        ]


def unbuilt(case_id: str, samples: int, exc: Exception) -> list[dict[str, Any]]:
    """The records of a case whose requests could not be built (a template or data bug)."""
    message = f"internal error building the request: {type(exc).__name__}: {exc}"
    return Job(case_id, 0, samples, {}, "").failed(message)
