"""The work dir: one timestamped folder per run, append-only predictions, resume lookups."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import IO, Any

from .errors import ServebenchError

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


def list_runs(base: Path) -> list[Path]:
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.is_dir() and _TS.match(p.name))


class PredictionWriter:
    """Appends one JSON line per finished request and flushes it at once, so a crash loses at
    most the requests in flight. Used from a single thread (the engine's)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._handle: IO[str] | None = None

    def _open(self) -> IO[str]:
        handle = self.path.open("a", encoding="utf-8")
        # A process killed mid-write leaves a partial last line: start on a fresh line.
        if handle.tell() > 0:
            with self.path.open("rb") as check:
                check.seek(-1, os.SEEK_END)
                if check.read(1) != b"\n":
                    handle.write("\n")
        return handle

    def write(self, record: dict[str, Any]) -> None:
        if self._handle is None:
            self._handle = self._open()
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def load_predictions(path: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """The latest record per (case, sample). A successful record is never replaced by a later
    failure of the same request; torn lines from a killed process are skipped."""
    found: dict[tuple[str, int], dict[str, Any]] = {}
    if not path.is_file():
        return found
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                record = json.loads(line)
                key = (record["case"], int(record["sample"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
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


def write_json(path: Path, data: Any) -> None:
    """Write atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    # Streamed to the file: the same text, without holding it (and the encoder's pieces, 3x
    # its size) in memory; the results of a 50,000-case task peaked at 146 MB.
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, ensure_ascii=False)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
