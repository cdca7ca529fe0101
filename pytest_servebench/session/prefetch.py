"""Start running a code task's programs as its replies arrive, not when pytest reaches them.

pytest judges one case at a time, in item order; a program run only then would hold the run
loop for its whole duration, case after case. Instead a daemon thread follows the task's
prediction file (the store the engine appends each finished request to, flushed at once) and
hands every new reply to the evaluator's `prefetch`, which submits the program to the pool
and returns. When pytest reaches the case, `judge` finds the outcome ready or running (the
same program key). The engine never sees any of this: it only writes its file.

Prefetch is an optimisation only: a reply it misses (or reads twice) is judged the same way,
the program then runs when the case is judged.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pytest_servebench.scoring.evaluators.base import strip_reasoning

log = logging.getLogger("servebench.execution")

Prefetch = Callable[[str, str], None]
_POLL = 0.02  # seconds between looks at the file when nothing new came


def submit_records(
    prefetch: Prefetch, references: Mapping[str, str], records: Iterable[dict[str, Any]]
) -> None:
    """Hand the served records of known cases to `prefetch` (the judge's own input)."""
    for record in records:
        reference = references.get(record.get("case"))  # type: ignore[arg-type]
        if reference is None or not record.get("ok"):
            continue
        try:
            prefetch(strip_reasoning(record.get("content") or ""), reference)
        except Exception:  # the judge will meet the same problem and report it
            log.debug("prefetch of %s failed", record.get("case"), exc_info=True)


class PredictionFollower:
    """Follows one prediction file from `offset` on, until `expected` records were seen or
    it is stopped."""

    def __init__(
        self,
        path: Path,
        offset: int,
        prefetch: Prefetch,
        references: Mapping[str, str],
        expected: int,
    ) -> None:
        self.path = path
        self.offset = offset
        self.prefetch = prefetch
        self.references = references
        self.expected = expected
        self.seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="sb-prefetch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _follow(self) -> None:
        pending = b""
        try:
            handle = None
            while not self._stop.is_set() and self.seen < self.expected:
                if handle is None:
                    try:
                        handle = self.path.open("rb")
                        handle.seek(self.offset)
                    except OSError:
                        self._stop.wait(_POLL)
                        continue
                chunk = handle.read(1 << 20)
                if not chunk:
                    self._stop.wait(_POLL)
                    continue
                pending += chunk
                *lines, pending = pending.split(b"\n")
                records = []
                for line in lines:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue  # a torn line: its request is judged without prefetch
                    if isinstance(record, dict):
                        records.append(record)
                self.seen += len(records)
                submit_records(self.prefetch, self.references, records)
        except Exception:  # never let an optimisation take anything down
            log.debug("prediction follower of %s stopped", self.path, exc_info=True)
        finally:
            if handle is not None:
                handle.close()
