"""Keep API keys and auth headers out of every file, log, report and error message."""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

REDACTED = "***"
_SECRET_HEADER = re.compile(r"(auth|key|token|secret|cookie|password|credential)", re.I)


def is_secret_header(name: str) -> bool:
    return bool(_SECRET_HEADER.search(name))


_SECRET_QUERY = re.compile(r"(auth|key|token|secret|password|credential|sig|signature)", re.I)


def url_secrets(url: str) -> list[str]:
    """The secret parts of a URL: userinfo (user and password) and secret-looking query values
    (``?api_key=...``, ``?token=...``). Used to register them with the redactor."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    # The user name is not secret (and may be a common word); redact_url hides it in URLs.
    found = [parts.password] if parts.password else []
    found += [v for k, v in parse_qsl(parts.query) if v and _SECRET_QUERY.search(k)]
    return found


def redact_url(url: str) -> str:
    """The URL with its userinfo and secret-looking query values replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = "&".join(
        f"{k}={REDACTED}" if _SECRET_QUERY.search(k) else (f"{k}={v}" if v else k)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


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

    def add_url(self, url: str | None) -> None:
        """Register the secret parts of a URL (userinfo, key-like query values)."""
        for value in url_secrets(url or ""):
            # Passwords can be shorter than API keys; below 4 characters they would redact
            # ordinary text.
            self._add_any(value)

    def _add_any(self, value: str) -> None:
        if value and len(value) >= 4 and value not in self._secrets:
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
            if "://" in value and "@" in value:  # a URL with credentials (a proxy's)
                return redact_url(self(value))
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
