"""Testing helpers: a fault-injecting OpenAI-compatible mock server.

Names are imported lazily from :mod:`pytest_servebench.testing.mockserver` so that
``python -m pytest_servebench.testing.mockserver`` does not import the module twice.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = (
    "FAULT_KINDS",
    "DatasetResponder",
    "FaultPlan",
    "MockRequest",
    "MockServer",
    "MockStats",
    "Reply",
    "body_key",
    "dataset_responder",
    "gsm8k_reference",
    "is_correct",
    "load_jsonl",
)

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        from . import mockserver

        return getattr(mockserver, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
