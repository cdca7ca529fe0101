"""A live view of the requests: posted / received / finished / failed, rate and ETA per task.

Each process that sends requests publishes its counters to `logs/progress-<id>.json` (from the
engine thread, at most twice a second); the controller reads them all, so the view works the
same under pytest-xdist. Plain lines, never escape codes: readable on a terminal and in a CI log.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import Engine


def snapshot(engine: Engine) -> dict[str, dict[str, Any]]:
    out = {}
    for run in engine.runs:
        p = run.progress
        out[run.key] = {
            "total": p.total * run.samples,
            "posted": p.posted,
            "received": p.received,
            "finished": p.finished,
            "failed": p.failed,
            "retried": p.retried,
            "elapsed": time.monotonic() - p.started,
        }
    return out


class Publisher:
    """Writes this process's counters where the controller can read them."""

    def __init__(self, engine: Engine, folder: Path, ident: str):
        self.engine = engine
        self.path = folder / f"progress-{ident}.json"
        self._last = 0.0

    def publish(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.5:
            return
        self._last = now
        data = snapshot(self.engine)
        if not data:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)


def read_all(folder: Path) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("progress-*.json")):
        try:
            merged.update(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return merged


def render(tasks: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for key, c in sorted(tasks.items()):
        done = c["finished"] + c["failed"]
        if done >= c["total"] and c["total"]:
            continue  # finished tasks drop out of the live view
        elapsed = max(c["elapsed"], 1e-6)
        rate = done / elapsed
        eta = f"{(c['total'] - done) / rate:.0f}s" if rate > 0 else "?"
        lines.append(
            f"[servebench] {key}: {done}/{c['total']} done | posted {c['posted']} "
            f"received {c['received']} finished {c['finished']} failed {c['failed']} "
            f"retried {c['retried']} | {rate:.1f} req/s | ETA {eta}"
        )
    return lines


class View:
    """Decides when to print; the caller supplies how (the terminal reporter)."""

    def __init__(
        self,
        source: Callable[[], dict[str, dict[str, Any]]],
        write: Callable[[str], None],
        interval: float,
    ):
        self.source = source
        self.write = write
        self.interval = interval
        self._last = time.monotonic()

    def tick(self) -> None:
        if self.interval <= 0:
            return
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        for line in render(self.source()):
            self.write(line)
