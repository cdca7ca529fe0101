"""A live view of the requests: posted / received / finished / failed, rate and ETA per task.

Each process that sends requests publishes its counters to `logs/progress-<id>.json` (whenever
the engine reports progress, at most twice a second); the controller reads them all, so the view
works the same under pytest-xdist. Not on a terminal (CI logs): plain lines every few seconds. On a
terminal: LiveBlock, one line per active task kept in place below pytest's own output.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_servebench.engine.protocol import Engine


def snapshot(engine: Engine) -> dict[str, dict[str, Any]]:
    out = {}
    for task in engine.tasks:
        p = task.progress
        out[task.key] = {
            "total": p.total * task.samples,
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
    """Decides when to print; the caller supplies how (the terminal reporter), or a LiveBlock
    to keep one line per active task in place."""

    def __init__(
        self,
        source: Callable[[], dict[str, dict[str, Any]]],
        write: Callable[[str], None],
        interval: float,
        live: LiveBlock | None = None,
        accuracy: Callable[[str], float | None] = lambda key: None,
        log: str = "",
    ):
        self.source = source
        self.write = write
        self.interval = interval
        self.live = live
        self.accuracy = accuracy
        self.log = log
        self.lines: list[str] = []  # the live block's current lines
        self._last = time.monotonic()

    def tick(self) -> None:
        if self.interval <= 0:
            return
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        if self.live is None:
            for line in render(self.source()):
                self.write(line)
            return
        width = self.live.width()
        self.lines = [
            task_line(key, c, self.accuracy(key), self.log, width)
            for key, c in sorted(self.source().items())
            if not (c["total"] and c["finished"] + c["failed"] >= c["total"])
        ]
        self.live.draw(self.lines)

    def redraw(self) -> None:
        """After pytest wrote: the block again, with what it showed."""
        if self.live is not None:
            self.live.draw(self.lines)


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def task_line(key: str, c: dict[str, Any], accuracy: float | None, log: str, width: int) -> str:
    """`key [#####-----] done/total acc % req/s elapsed ETA status log`, cut to `width`."""
    total, done = c["total"], c["finished"] + c["failed"]
    elapsed = max(c["elapsed"], 1e-6)
    rate = done / elapsed
    bar_width = 16
    filled = int(bar_width * done / total) if total else 0
    bar = "#" * filled + "-" * (bar_width - filled)
    eta = _clock((total - done) / rate) if rate > 0 else "?"
    if done >= total and total:
        status = "done"
    elif c["posted"] < total:
        status = "sending"
    else:
        status = "waiting"
    if c["failed"]:
        status += f", {c['failed']} failed"
    if c["retried"]:
        status += f", {c['retried']} retried"
    acc = f"acc {accuracy:5.1f}%" if accuracy is not None else "acc     -"
    line = (
        f"{key} [{bar}] {done}/{total} {acc} {rate:.1f} req/s {_clock(elapsed)} "
        f"ETA {eta} {status} | {log}"
    )
    return line if len(line) < width else line[: max(width - 2, 1)] + "~"


class LiveBlock:
    """Lines kept in place under pytest's output on a terminal, without breaking it.

    The block is drawn below the line pytest is writing (its progress dots), and the cursor
    goes back to where pytest left it (relative moves, right after drawing, so a scroll does
    not misplace it). Before pytest writes anything (the plugin wraps its report hooks, see
    plugin.LiveViewPlugin) the block is erased from the cursor down, so pytest's text never
    mixes with ours. One lock serializes drawing, erasing and pytest's writes in our hooks."""

    ERASE_BELOW = "\x1b[J"

    def __init__(self, file: IO[str], column: Callable[[], int], width: Callable[[], int]):
        self.file = file
        self.column = column  # where pytest's cursor is on its current line
        self.width = width
        self.lock = threading.RLock()
        self.drawn = 0  # lines of ours below the cursor
        self.held = 0  # >0 while pytest writes (inside our hook wrappers): no drawing

    def draw(self, lines: list[str]) -> None:
        with self.lock:
            if self.held:
                return
            self._erase()
            if not lines:
                return
            width = self.width()
            text = "\n".join(line[: max(width - 1, 1)] for line in lines)
            # Down below pytest's line, the block, then back up to pytest's column.
            back = f"\x1b[{len(lines)}A\x1b[{self.column() + 1}G"
            self.file.write("\n" + text + back)
            self.file.flush()
            self.drawn = len(lines)

    def erase(self) -> None:
        with self.lock:
            self._erase()

    def _erase(self) -> None:
        if self.drawn:
            self.file.write(self.ERASE_BELOW)
            self.file.flush()
            self.drawn = 0
