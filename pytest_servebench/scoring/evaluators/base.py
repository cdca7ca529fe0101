"""What every evaluator shares: the verdict type, the evaluator protocol and reasoning stripping.

An evaluator turns one model output (reasoning already stripped) and one canonical reference
into a :class:`Judgement`. Evaluators are small, immutable and picklable (they travel to
pytest-xdist workers); their :meth:`Evaluator.identity` feeds the dataset version hash.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

THINK_START = "<think>"
THINK_END = "</think>"

#: ``text.translate(ASCII_LOWER)`` lower-cases A-Z only, so positions stay valid.
ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


@dataclass(frozen=True, slots=True)
class Judgement:
    """The judgement of one output (a case's ``scoring.verdict.Verdict`` is made of the
    judgements of its samples).

    ``extracted`` is the canonical answer read from the output ("1234", "B", ...) or ``None``
    when nothing could be extracted (the output is *unparsable*); ``score`` is 1.0 / 0.0 for
    the built-in families (a user function may give partial credit).
    """

    extracted: str | None
    correct: bool
    score: float


@runtime_checkable
class Evaluator(Protocol):
    """An answer-checking family. Implementations must never raise on any output string."""

    name: str

    def reference(self, raw: object) -> str:
        """The canonical reference from the dataset's answer field."""
        ...

    def judge(self, output: str, reference: str) -> Judgement:
        """Judge one (reasoning-stripped) output against a canonical reference."""
        ...

    def identity(self) -> str:
        """Stable string of name + params + the extraction logic's VERSION."""
        ...


def strip_reasoning(text: str) -> str:
    """Drop ``<think>...</think>`` blocks from a model output.

    * Every complete ``<think>...</think>`` block is removed (non-greedy, like AISBench's
      ``extract_non_reasoning_content``) and the rest is stripped of surrounding whitespace.
    * A closing ``</think>`` without an opening one (the chat template put ``<think>`` in the
      prompt) keeps only what follows the last such closing tag.
    * An unclosed ``<think>`` (the output was cut while thinking) drops everything from it
      on: a number in unfinished reasoning is not an answer, so such an output is unparsable
      rather than scored on a guess (lm-evaluation-harness #3244).

    Linear in the length of the text (plain ``str.find``, no regex backtracking).
    """
    if not isinstance(text, str):
        return "" if text is None else str(text)
    if THINK_END not in text:
        start = text.find(THINK_START)
        return text if start < 0 else text[:start].strip()
    pieces: list[str] = []
    pos = 0
    while True:
        start = text.find(THINK_START, pos)
        if start < 0:
            pieces.append(text[pos:])
            break
        end = text.find(THINK_END, start + len(THINK_START))
        if end < 0:  # unclosed block: the reply was cut while thinking
            pieces.append(text[pos:start])
            break
        pieces.append(text[pos:start])
        pos = end + len(THINK_END)
    result = "".join(pieces)
    orphan = result.rfind(THINK_END)
    if orphan >= 0:
        result = result[orphan + len(THINK_END) :]
    return result.strip()


def make_identity(
    name: str, version: int | str, params: Mapping[str, Any], defaults: Mapping[str, Any]
) -> str:
    """``name@vVERSION`` plus the parameters that differ from their defaults, as sorted JSON.

    Only non-default parameters are listed so that adding a new parameter (with a default that
    keeps the old behaviour) does not change the identity of existing datasets; a change of
    logic or of a default must bump ``VERSION``.
    """
    changed = {k: v for k, v in params.items() if k not in defaults or defaults[k] != v}
    text = f"{name}@v{version}"
    if changed:
        text += json.dumps(
            changed, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str
        )
    return text


def as_text(value: object) -> str:
    """Coerce an output to ``str`` (``None`` -> ``""``) so judges never crash on bad input."""
    if isinstance(value, str):
        return value
    return "" if value is None else str(value)


def verdict(extracted: str | None, correct: bool) -> Judgement:
    """A 1.0 / 0.0 judgement."""
    return Judgement(extracted=extracted, correct=correct, score=1.0 if correct else 0.0)


def reverse_anchors(
    searches: Sequence[tuple[re.Pattern[str], str]], length: int, window: int = 4096
) -> Iterator[tuple[int, re.Match[str]]]:
    """Yield ``(index into searches, match)`` for the matches of several short anchor patterns,
    the LAST one in the text first, without collecting every match of a huge text up front.

    Each search is ``(pattern, haystack)``; all haystacks have the same ``length`` (the text and
    its :data:`ASCII_LOWER` copy). The text is scanned in windows from its end; a pattern's
    matches must be shorter than 64 characters (anchors are short literals).
    """
    end = length
    while end > 0:
        start = max(0, end - window)
        stop = min(length, end + 64)
        batch = [
            (m.start(), index, m)
            for index, (pattern, haystack) in enumerate(searches)
            for m in pattern.finditer(haystack, start, stop)
            if m.start() < end
        ]
        batch.sort(key=lambda item: (item[0], item[1]))
        for _pos, index, m in reversed(batch):
            yield index, m
        end = start
