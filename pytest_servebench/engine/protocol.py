"""The engine seam: what pytest's side hands an engine, what it gets back, and the methods it
calls. Both engines implement it: `local.ThreadEngine` (an event loop in a thread of pytest's
process) and `process.ProcessEngine` (the same loop in a process of its own, `child.py`).

A task goes in as one `TaskSpec` (its requests an iterator the engine pulls from, so that
nothing of the datasets is called by the engine and memory stays flat however many cases);
each case comes back, once, as one `CaseResult` from the `TaskHandle` that `start` returned.
Callers type against these protocols only."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pytest_servebench.catalog.config import ModelConfig
    from pytest_servebench.engine.jobs import CaseJobs, CaseResult, Progress


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """Everything `Engine.start` needs for one model x dataset task."""

    key: str  # "model/dataset", for logs and the progress view
    model: ModelConfig  # where to send, how many requests at once (max_concurrency), retries
    predictions: Path  # the JSONL file each finished request is appended to
    samples: int  # samples per case: a case is finished when this many records are in
    case_ids: Sequence[str]  # every case to wait for, in item order
    # The requests of each case in `case_ids`, built lazily as the engine pulls them.
    cases: Iterator[CaseJobs]


class TaskHandle(Protocol):
    """One started task, as pytest's main thread sees it."""

    @property
    def key(self) -> str: ...

    @property
    def samples(self) -> int: ...

    @property
    def progress(self) -> Progress:
        """Live counters (for the progress view)."""
        ...

    def wait(self, case_id: str, timeout: float) -> CaseResult | None:
        """The result of a case, once; None if it did not come within `timeout` seconds.
        Raises RunAborted for a case not finished before the run was aborted, KeyError for a
        case that was never submitted (or already taken)."""
        ...


class Engine(Protocol):
    """Sends the requests of started tasks, up to each model's max concurrency."""

    #: Called after requests finish (force=True when a task ends), from the thread that
    #: finished them: the progress view publishes its counters.
    on_progress: Callable[[bool], None]

    @property
    def fatal(self) -> str | None:
        """Why the run was aborted (endpoint down, credentials rejected, disk full), if it was."""
        ...

    @property
    def tasks(self) -> Sequence[TaskHandle]:
        """Every task started so far."""
        ...

    def warm_up(self) -> None:
        """Get ready to send (start the engine process), so that start-up overlaps pytest's."""
        ...

    def model_name(self, config: ModelConfig) -> str:
        """The model name requests carry; asks GET /models once when the config leaves it
        empty. Raises RunAborted when the endpoint refuses."""
        ...

    def start(self, spec: TaskSpec) -> TaskHandle:
        """Queue every case of a task, in order; return at once. Raises RunAborted when the
        predictions cannot be saved or the engine is gone."""
        ...

    def close(self, timeout: float = 5.0) -> None:
        """Stop sending, drop what is in flight, close files and connections."""
        ...
