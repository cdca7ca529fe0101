"""A user grading function for servebench: (output, reference, **params) -> bool | float."""

from __future__ import annotations

import re

_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def within_tolerance(output: str, reference: str, tolerance: float = 0.01) -> bool:
    """Correct when the last number of the output is within `tolerance` (relative) of the
    reference. `output` has its <think> block removed already; `reference` is the answer field
    as text."""
    numbers = _NUMBER.findall(output)
    if not numbers:
        return False
    value = float(numbers[-1].replace(",", ""))
    expected = float(reference)
    return abs(value - expected) <= tolerance * max(abs(expected), 1e-9)
