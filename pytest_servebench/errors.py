"""Errors a user can cause, each carrying one message that says what to do."""

from __future__ import annotations

from pathlib import Path


class ServebenchError(Exception):
    """Bad input: reported as one clear message, never as a traceback."""


class ConfigError(ServebenchError):
    """A config or data file is wrong; names the file, the line and what was expected."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | str | None = None):
        self.path = str(path) if path is not None else None
        self.line = line
        where = ""
        if isinstance(line, str):  # the value came from an option (--sb-set), not the file
            where = f"{line}: "
            message += f" (the option overrides {self.path})" if self.path else ""
        elif self.path:
            where = self.path + (f":{line}" if line else "") + ": "
        super().__init__(where + message)


class DatasetMissingError(ServebenchError):
    """A dataset's data file is not where the config expects it."""
