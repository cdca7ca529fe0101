"""Keep API keys and auth headers out of every file, log, report and error message."""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "***"
_SECRET_HEADER = re.compile(r"(auth|key|token|secret|cookie|password|credential)", re.I)


def is_secret_header(name: str) -> bool:
    return bool(_SECRET_HEADER.search(name))


class Redactor:
    """Replaces every known secret value in text; shared process-wide."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: str | None) -> None:
        # Very short values would redact ordinary text; real keys are long.
        if value and len(value) >= 6 and value not in self._secrets:
            self._secrets.add(value)
            self._pattern = re.compile(
                "|".join(re.escape(s) for s in sorted(self._secrets, key=len, reverse=True))
            )

    def __call__(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(REDACTED, text)

    def scrub(self, value: Any) -> Any:
        """Redact secrets inside nested config data, and blank secret-looking headers."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                if k == "headers" and isinstance(v, dict):
                    out[k] = {
                        h: (REDACTED if is_secret_header(str(h)) else self.scrub(hv))
                        for h, hv in v.items()
                    }
                else:
                    out[k] = self.scrub(v)
            return out
        if isinstance(value, (list, tuple)):
            return [self.scrub(v) for v in value]
        return value


redactor = Redactor()


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redactor(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True
