"""The run's log file: servebench's loggers write there (redacted), never into pytest's
capture."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from pytest_servebench.redaction import RedactingFilter


class _QuietFileHandler(logging.FileHandler):
    """The run's log file. A line that cannot be written (a full disk) is dropped: the run
    reports the disk problem itself, once, instead of a logging traceback per line."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass

    def close(self) -> None:
        try:
            super().close()
        except OSError:
            with contextlib.suppress(OSError):
                if self.stream is not None:
                    self.stream.close()  # its buffer is lost; the file's lines so far stay
            self.stream = None  # type: ignore[assignment]


def setup_logging(folder: Path, worker: str | None, write: bool) -> logging.Handler:
    """Send the `servebench` loggers to `folder`/servebench[-<worker>].log (nowhere when
    `write` is false: --collect-only writes nothing). Returns the handler to close at the end."""
    name = f"servebench-{worker}.log" if worker else "servebench.log"
    handler: logging.Handler = (
        _QuietFileHandler(folder / name, encoding="utf-8") if write else logging.NullHandler()
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    # The per-request log stays out of pytest's capture, under any run protocol: pytest
    # (9.2+) attaches its capture handler to the root logger and to every non-propagating
    # logger it knows, so servebench's loggers pass their records to a parent that pytest
    # does not know (not registered with logging's manager) and that stops there.
    sink = logging.Logger("servebench-log")
    sink.handlers[:] = [handler]
    sink.propagate = False
    root = logging.getLogger("servebench")
    root.handlers[:] = []
    root.setLevel(logging.INFO)
    root.propagate = True
    root.parent = sink
    return handler


def teardown_logging(handler: logging.Handler) -> None:
    """Close the run's log file and give the `servebench` logger back to logging's tree, so
    that a later session in the same process (pytester, an IDE) starts from a plain logger."""
    handler.close()
    root = logging.getLogger("servebench")
    if root.parent is not logging.root:
        root.parent = logging.root
