"""The work dir: one timestamped folder per run, append-only predictions, resume lookups."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from pytest_servebench.errors import ServebenchError

TIMESTAMP_FORMAT = "%Y%m%d_%H%M%S"
_TS = re.compile(r"^\d{8}_\d{6}(_\d+)?$")


def new_timestamp() -> str:
    return time.strftime(TIMESTAMP_FORMAT)


class WorkDir:
    """DIR/<ts>/{configs,logs,predictions,results,summary}."""

    def __init__(self, root: Path):
        self.root = root
        self.timestamp = root.name

    @classmethod
    def create(cls, base: Path) -> WorkDir:
        base.mkdir(parents=True, exist_ok=True)
        stamp = new_timestamp()
        root = base / stamp
        n = 1
        while True:
            try:
                root.mkdir()
                break
            except FileExistsError:
                n += 1
                root = base / f"{stamp}_{n}"
        work = cls(root)
        work.make_layout()
        return work

    @classmethod
    def reuse(cls, base: Path, which: str) -> WorkDir:
        runs = list_runs(base)
        if which in ("", "latest"):
            if not runs:
                raise ServebenchError(
                    f"--sb-reuse latest: no earlier run under {base}. Start one "
                    f"without --sb-reuse first, or name --sb-work-dir."
                )
            root = runs[-1]
        else:
            root = Path(which) if Path(which).is_absolute() else base / which
            if not root.is_dir():
                names = ", ".join(r.name for r in runs[-5:]) or "none"
                raise ServebenchError(
                    f"--sb-reuse {which}: no such run under {base} (latest runs: {names})."
                )
        work = cls(root)
        work.make_layout()
        return work

    def make_layout(self) -> None:
        for sub in ("configs", "logs", "predictions", "results", "summary"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def predictions_file(self, model: str, dataset: str) -> Path:
        return self.root / "predictions" / model / f"{dataset}.jsonl"

    def results_file(self, model: str, dataset: str) -> Path:
        return self.root / "results" / model / f"{dataset}.json"

    def summary_base(self, stamp: str) -> Path:
        return self.root / "summary" / f"summary_{stamp}"

    def lock(self) -> WorkDirLock:
        """Become the only writer of this work dir, or fail with who holds it."""
        return WorkDirLock.acquire(self.root / LOCK_NAME)


LOCK_NAME = ".lock"


class WorkDirLock:
    """One writer per work dir: two runs appending to the same prediction files would send
    the same requests twice. The lock file says who holds it (pid, host, start time); the
    lock itself is an flock on it, which the kernel drops when its holder dies, so a lock
    left by a killed run is never in the way. Without flock (Windows) the file alone is the
    lock, and one whose pid is gone on this host counts as stale."""

    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path = path
        self._handle: IO[str] | None = handle

    @classmethod
    def acquire(cls, path: Path) -> WorkDirLock:
        try:
            import fcntl
        except ImportError:
            fcntl = None  # type: ignore[assignment]
        if fcntl is None:
            return cls._acquire_by_file(path)
        handle = path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip()
            handle.close()
            raise ServebenchError(_held_message(path, owner)) from None
        handle.seek(0)
        handle.truncate()
        handle.write(_owner())
        handle.flush()
        return cls(path, handle)

    @classmethod
    def _acquire_by_file(cls, path: Path) -> WorkDirLock:
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = path.read_text(encoding="utf-8", errors="replace").strip()
                if not _is_stale(owner):
                    raise ServebenchError(_held_message(path, owner)) from None
                path.unlink(missing_ok=True)
                continue
            handle = os.fdopen(fd, "w", encoding="utf-8")
            handle.write(_owner())
            handle.flush()
            return cls(path, handle)
        raise ServebenchError(_held_message(path, ""))

    def release(self) -> None:
        handle, self._handle = self._handle, None
        if handle is None:
            return
        with contextlib.suppress(OSError):
            handle.seek(0)
            handle.truncate()  # the file stays (unlinking it would race a waiting locker)
        with contextlib.suppress(OSError):
            handle.close()
        try:
            import fcntl  # noqa: F401
        except ImportError:
            with contextlib.suppress(OSError):
                self.path.unlink()


def _owner() -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    return f"pid {os.getpid()} on host {socket.gethostname()} since {started}\n"


def _is_stale(owner: str) -> bool:
    match = re.match(r"pid (\d+) on host (\S+)", owner)
    if match is None or match.group(2) != socket.gethostname():
        return match is None  # a lock of another host cannot be checked from here
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _held_message(path: Path, owner: str) -> str:
    who = f" by {owner}" if owner else ""
    return (
        f"the work dir {path.parent} is in use{who}: one run writes a work dir at a time "
        f"(two would send the same requests twice). Wait for that run to finish, or start a "
        f"new run without --sb-reuse/--lf."
    )


def list_runs(base: Path) -> list[Path]:
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.is_dir() and _TS.match(p.name))


class PredictionWriter:
    """Appends one JSON line per finished request, so a crash loses at most the requests in
    flight. Used from a single thread (the engine's event loop, in the engine process or in
    pytest's with --sb-engine thread).

    Inside an event loop the lines written in one step of the loop go out in one flush, at the
    start of its next step: one write call instead of one per request (with the thread engine,
    each write released the GIL that pytest's thread was waiting for). Outside a loop each
    line is flushed at once.

    A write that fails (a full disk, a folder gone read-only) is never swallowed: `failed`
    keeps the error, `on_error` hears of it (the engine stops the run), and nothing written
    after it counts as saved."""

    def __init__(
        self, path: Path, on_error: Callable[[PredictionWriter, OSError], None] | None = None
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.on_error = on_error
        self.failed: OSError | None = None
        self._handle: IO[str] | None = None
        self._flush_due = False

    def _open(self) -> IO[str]:
        handle = self.path.open("a", encoding="utf-8")
        # A process killed mid-write leaves a partial last line: start on a fresh line.
        if handle.tell() > 0:
            with self.path.open("rb") as check:
                check.seek(-1, os.SEEK_END)
                if check.read(1) != b"\n":
                    handle.write("\n")
        return handle

    def _fail(self, exc: OSError) -> None:
        if self.failed is None:
            self.failed = exc
            if self.on_error is not None:
                self.on_error(self, exc)

    def write(self, record: dict[str, Any]) -> None:
        if self.failed is not None:
            return
        try:
            if self._handle is None:
                self._handle = self._open()
            self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        except OSError as exc:
            self._fail(exc)
            return
        if self._flush_due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_due = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_due = False
        if self._handle is not None and self.failed is None:
            try:
                self._handle.flush()
            except OSError as exc:
                self._fail(exc)

    def close(self) -> None:
        self._flush_due = False
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                handle.close()
            except OSError as exc:  # the last buffered lines could not be written
                self._fail(exc)


def disk_error_message(path: Path, exc: OSError) -> str:
    """The run's abort message when predictions cannot be saved."""
    return (
        f"cannot save predictions to {path}: {exc.strerror or exc}. What was saved before "
        f"is kept; free some space (or choose another --sb-work-dir) and resume"
    )


def load_predictions(path: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """The latest record per (case, sample). A successful record is never replaced by a later
    failure of the same request; torn lines from a killed process are skipped. The prompt a
    case's first record carries (for people reading the file) is not kept in memory."""
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for key, record in iter_records(path):
        record.pop("prompt", None)
        previous = found.get(key)
        if (
            previous is not None
            and previous.get("ok")
            and not record.get("ok")
            and previous.get("hash") == record.get("hash")
        ):
            continue
        found[key] = record
    return found


def iter_records(path: Path) -> Iterator[tuple[tuple[str, int], dict[str, Any]]]:
    """((case, sample), record) for each whole line of a prediction file, in file order;
    torn lines from a killed process are skipped. Nothing when the file does not exist."""
    if not path.is_file():
        return
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                record = json.loads(line)
                key = (record["case"], int(record["sample"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
            yield key, record


def write_json(path: Path, data: Any) -> None:
    """Write atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of this process's own: two writers never share a temporary file.
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            _dump(data, handle)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def _dump(data: Any, handle: IO[str]) -> None:
    """JSON indented by 2, except that a top-level list of objects, or an iterator (a results
    file's cases), gets one object per line. Written line by line: json.dump to a file runs the pure-Python
    encoder on the whole tree (0.3 s for 10,000 cases), and json.dumps of the whole text would
    hold it (and its pieces) in memory; each line here is one call of the C encoder."""
    if not isinstance(data, dict) or not data:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        return
    handle.write("{")
    for n, (key, value) in enumerate(data.items()):
        handle.write(("\n" if n == 0 else ",\n") + "  " + json.dumps(str(key)) + ": ")
        if isinstance(value, Iterator) or (
            isinstance(value, list) and value and all(isinstance(v, dict) for v in value)
        ):
            handle.write("[")
            n_entries = 0
            for entry in value:
                handle.write(("\n" if n_entries == 0 else ",\n") + "    ")
                handle.write(json.dumps(entry, ensure_ascii=False))
                n_entries += 1
            handle.write("\n  ]" if n_entries else "]")
        else:
            # JSON text never holds a raw newline inside a string: re-indenting is safe
            handle.write(json.dumps(value, indent=2, ensure_ascii=False).replace("\n", "\n  "))
    handle.write("\n}")
