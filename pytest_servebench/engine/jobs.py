"""What both sides of the engine speak of: a request to send, a case's requests and its result,
a task's counters, the abort.

Kept apart from local.py so that pytest's process imports no HTTP stack when the requests
are sent from the engine process."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_servebench.store import disk_error_message

log = logging.getLogger("servebench.engine")

#: The error of a case its task's iterator never gave (a caller's bug): it fails, never hangs.
NOT_GIVEN = "internal error: no request was built for this case"


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


@dataclass(frozen=True, slots=True)
class CaseJobs:
    """The requests of one case, as the caller hands them to the engine: the case is finished
    once they are all answered. `error` says why none could be built (the case fails alone)."""

    case_id: str
    jobs: list[Job]
    error: str | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        # Sent to the engine process in every instalment: plain arguments unpickle at about
        # half the cost of a frozen dataclass's generated __setstate__.
        return CaseJobs, (self.case_id, self.jobs, self.error)

    def failed(self, samples: int) -> CaseResult:
        """The result of a case whose requests could not be built."""
        records = Job(self.case_id, 0, samples, {}, "").failed(self.error or NOT_GIVEN)
        return CaseResult(self.case_id, records)


@dataclass(frozen=True, slots=True)
class CaseResult:
    """Every sample of one finished case, in sample order, as the engine hands it back."""

    case_id: str
    records: list[dict[str, Any]]

    def __reduce__(self) -> tuple[Any, ...]:
        return CaseResult, (self.case_id, self.records)  # one per case: see CaseJobs


def each_case(
    key: str, case_ids: Iterable[str], build: Callable[[str], list[Job]]
) -> Iterator[CaseJobs]:
    """The requests of each case, built as the engine pulls them (so that a 50,000-case task
    never holds every prompt at once). A case whose requests cannot be built (a template or
    data bug) comes with the error instead, and the others go on."""
    for case_id in case_ids:
        try:
            jobs = build(case_id)
        except Exception as exc:
            log.exception("%s %s: cannot build the request", key, case_id)
            yield CaseJobs(
                case_id, [], f"internal error building the request: {type(exc).__name__}: {exc}"
            )
        else:
            yield CaseJobs(case_id, jobs)


def pull_case(cases: Iterator[CaseJobs], key: str) -> CaseJobs | None:
    """The next case of the caller's iterator; None when it is done, or broke (logged): the
    cases it did not give then fail when the task settles."""
    try:
        return next(cases, None)
    except Exception:
        log.exception("%s: cannot build the requests", key)
        return None


def prepare_folder(path: Path) -> str | None:
    """Create the folder of a predictions file; the run's abort message if it cannot be."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return disk_error_message(path, exc)
    return None
