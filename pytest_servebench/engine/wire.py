"""What pytest and its engine process say to each other: one small class per kind of message,
sent as frames of a 4-byte length, then a pickle.

Both ends are this package, over a socket pair nobody else holds, so pickle is safe here and
keeps records (dicts, floats, None) as they are at a fraction of JSON's cost. Each side
dispatches on the message's type (process.py reads `FromChild`, child.py reads `ToChild`)."""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_servebench.catalog.config import ModelConfig
    from pytest_servebench.engine.jobs import CaseJobs, CaseResult

# -- pytest -> engine process ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """A task begins: its requests follow in `Feed` instalments."""

    task: int
    key: str
    model: ModelConfig
    headers: dict[str, str]
    predictions: Path
    samples: int
    total: int  # cases, for the progress counters


@dataclass(frozen=True, slots=True)
class Feed:
    """The requests of the next cases of a task; `last` when no more will come."""

    task: int
    cases: list[CaseJobs]
    last: bool


@dataclass(frozen=True, slots=True)
class AskModel:
    """Which model does this endpoint serve? (GET /models; answered by `ModelName`)"""

    request: int
    model: ModelConfig
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class Close:
    """Stop sending, drop what is in flight, close the files; answered by `Closed`."""


# -- engine process -> pytest ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Done:
    """Cases of a task that finished (their records saved) in one step of the child's loop."""

    task: int
    results: list[CaseResult]


@dataclass(frozen=True, slots=True)
class Counters:
    """Each task's (posted, received, finished, failed, retried); `force` when a task ended."""

    counts: dict[int, tuple[int, int, int, int, int]]
    force: bool


@dataclass(frozen=True, slots=True)
class LogLine:
    level: int
    logger: str
    text: str


@dataclass(frozen=True, slots=True)
class Aborted:
    """The run cannot go on; every case not done fails with `message`."""

    message: str


@dataclass(frozen=True, slots=True)
class ModelName:
    """The answer to `AskModel`: the served model's name, or why there is none."""

    request: int
    name: str | None
    error: str | None


@dataclass(frozen=True, slots=True)
class Closed:
    """The answer to `Close`: files and connections are closed."""


ToChild = Start | Feed | AskModel | Close
FromChild = Done | Counters | LogLine | Aborted | ModelName | Closed

# -- frames --------------------------------------------------------------------------------------

_LENGTH = struct.Struct("!I")
HEADER = _LENGTH.size


def frame(message: Any) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


def unframe(buffer: bytearray) -> list[Any]:
    """Take every whole message off the front of `buffer` (a partial one stays)."""
    messages = []
    start = 0
    end = len(buffer)
    while end - start >= HEADER:
        (size,) = _LENGTH.unpack_from(buffer, start)
        if end - start - HEADER < size:
            break
        begin = start + HEADER
        messages.append(pickle.loads(buffer[begin : begin + size]))
        start = begin + size
    if start:
        del buffer[:start]
    return messages
