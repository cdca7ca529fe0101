"""`--sb-debug`: the run's logs on the terminal as they are written (AISBench's --debug).

Every process writes its own files under logs/ (servebench*.log of pytest and each xdist
worker, the engine process's stderr, each launched server's <model>-server.log); the
controller follows them all, so the terminal shows the same under xdist."""

from __future__ import annotations

from pathlib import Path

PATTERNS = ("*.log", "*.stderr")


class LogTail:
    """The complete lines appended to the log files of a folder since the last poll (files
    that existed when it was made are followed from their end: a resumed run shows its own)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.offsets: dict[Path, int] = {p: p.stat().st_size for p in self._files()}

    def _files(self) -> list[Path]:
        return sorted(p for pattern in PATTERNS for p in self.folder.glob(pattern))

    def poll(self) -> list[str]:
        lines: list[str] = []
        for path in self._files():
            try:
                size = path.stat().st_size
                offset = self.offsets.get(path, 0)
                if size < offset:  # replaced or truncated: read it again from the start
                    offset = 0
                if size == offset:
                    continue
                with path.open("rb") as handle:
                    handle.seek(offset)
                    data = handle.read(size - offset)
            except OSError:
                continue
            end = data.rfind(b"\n")
            if end < 0:  # half a line so far: wait for the rest
                continue
            self.offsets[path] = offset + end + 1
            text = data[:end].decode("utf-8", errors="replace")
            lines += [f"[{path.name}] {line}" for line in text.splitlines()]
        return lines
