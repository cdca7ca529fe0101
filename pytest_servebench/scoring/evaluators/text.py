"""String answers: normalised exact match, and a user regex that picks the answer out first.

Normalisation (:func:`normalize_text`): strip surrounding whitespace, collapse internal runs of
whitespace to one space, drop trailing periods (``.`` / ``。``), and case-fold when
``ignore_case`` (the default).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .base import Judgement, as_text, make_identity, verdict

#: Bump whenever normalisation or matching logic changes (feeds the dataset version hash).
VERSION = 1

_SPACES = re.compile(r"\s+")


def normalize_text(text: str, ignore_case: bool = True) -> str:
    """``"  Paris.  "`` -> ``"paris"``; ``"New   York"`` -> ``"new york"``."""
    text = _SPACES.sub(" ", as_text(text)).strip()
    text = text.rstrip(".。").rstrip()
    return text.casefold() if ignore_case else text


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"parameter '{name}' must be true or false, got {value!r}")
    return value


@dataclass(frozen=True)
class ExactEvaluator:
    """The whole (reasoning-stripped) output must equal the reference after normalisation."""

    ignore_case: bool = True
    name = "exact"

    def __post_init__(self) -> None:
        _check_bool("ignore_case", self.ignore_case)

    def reference(self, raw: object) -> str:
        return as_text(raw).strip()

    def judge(self, output: str, reference: str) -> Judgement:
        extracted = normalize_text(output, self.ignore_case)
        if not extracted:
            return verdict(None, False)
        return verdict(extracted, extracted == normalize_text(reference, self.ignore_case))

    def identity(self) -> str:
        return make_identity(
            self.name, VERSION, {"ignore_case": self.ignore_case}, {"ignore_case": True}
        )


@dataclass(frozen=True)
class RegexEvaluator:
    """``pattern`` (with at least one group) picks the answer; group 1 is compared like ``exact``.

    ``select`` chooses which match counts when the pattern matches several times: ``"first"``
    (default, like AISBench's ``match_answer_pattern``) or ``"last"`` (the final answer).
    The pattern is the user's: keep it free of nested unbounded repetition, since Python's
    ``re`` has no time limit.
    """

    pattern: str = ""
    ignore_case: bool = True
    select: str = "first"
    name = "regex"

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ValueError("parameter 'pattern' is required: a regular expression with a group")
        try:
            compiled = re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"parameter 'pattern' is not a valid regex: {exc}") from None
        if compiled.groups < 1:
            raise ValueError(
                f"parameter 'pattern' must contain a capturing group, got {self.pattern!r}"
            )
        _check_bool("ignore_case", self.ignore_case)
        if self.select not in ("first", "last"):
            raise ValueError(f"parameter 'select' must be 'first' or 'last', got {self.select!r}")

    @property
    def compiled(self) -> re.Pattern[str]:
        return re.compile(self.pattern)  # re caches compiled patterns

    def reference(self, raw: object) -> str:
        return as_text(raw).strip()

    def judge(self, output: str, reference: str) -> Judgement:
        text = as_text(output)
        if self.select == "first":
            match = self.compiled.search(text)
        else:
            match = None
            for match in self.compiled.finditer(text):  # noqa: B007 - keep the last one
                pass
        if match is None or match.group(1) is None:
            return verdict(None, False)
        extracted = normalize_text(match.group(1), self.ignore_case)
        if not extracted:
            return verdict(None, False)
        return verdict(extracted, extracted == normalize_text(reference, self.ignore_case))

    def identity(self) -> str:
        params = {"pattern": self.pattern, "ignore_case": self.ignore_case, "select": self.select}
        return make_identity(self.name, VERSION, params, {"ignore_case": True, "select": "first"})
