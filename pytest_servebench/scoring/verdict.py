"""From saved predictions to a case's :class:`Verdict`: the only place where answers are judged,
and the only module that knows a verdict's plain-dict form (reports under xdist, results files).
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pytest_servebench.scoring import metrics
from pytest_servebench.scoring.evaluators import Evaluator, strip_reasoning
from pytest_servebench.scoring.evaluators.limits import EvaluatorTimeout
from pytest_servebench.scoring.evaluators.registry import InvalidJudgement

TRUNCATED_REASONS = ("length",)
_PACKAGE = str(Path(__file__).resolve().parents[1])  # the whole pytest_servebench package

Status = Literal["passed", "failed", "error"]
ErrorKind = Literal["request", "evaluator"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The verdict on one case over its k samples (judge_case's rule).

    Per-sample tuples are in sample order; a sample whose request failed (or whose evaluator
    raised) is wrong, scores 0.0 and votes None. The controller keeps one per case until the
    session ends (50,000 live at once), so values are compact: tuples, the few recurring
    tuples of flags, scores and votes shared, short recurring strings interned.
    """

    status: Status
    correct: tuple[bool, ...]
    scores: tuple[float, ...]
    votes: tuple[str | None, ...]  # each sample's extracted answer (None: none)
    errors: int  # samples that failed (request or evaluator)
    truncated: int  # samples cut by the token limit (finish reason "length")
    unparsable: int  # served samples with nothing extracted
    error: str | None  # the first sample's error message
    error_kind: ErrorKind | None  # what made the case an error, else None
    reference: str
    extracted: str | None  # the first sample's vote
    latency: float | None  # mean over served samples, seconds
    prompt_tokens: int | None  # summed over served samples that report it
    completion_tokens: int | None
    finish_reason: str | None  # the first served sample's

    @property
    def score(self) -> float:
        """The case's score in 0..1: the mean of its samples' scores."""
        return metrics.case_score(self.scores)

    def to_dict(self) -> dict[str, Any]:
        """The plain form (what crosses to the controller in a report, and each case of a
        results file): every field in declaration order, tuples as lists."""
        return {
            "status": self.status,
            "correct": list(self.correct),
            "scores": list(self.scores),
            "votes": list(self.votes),
            "errors": self.errors,
            "truncated": self.truncated,
            "unparsable": self.unparsable,
            "error": self.error,
            "error_kind": self.error_kind,
            "reference": self.reference,
            "extracted": self.extracted,
            "latency": self.latency,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "finish_reason": self.finish_reason,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        """The verdict in `data` (to_dict's form; other keys, such as a report's "task" or a
        results file's "case", are ignored). A field missing from `data` (a results file of
        an older version) takes its empty value: no sample, no count, no text."""
        get = data.get
        return cls(
            status=_text(get("status", "")),
            correct=_shared(get("correct", ()), bool),
            scores=_shared(get("scores", ()), float),
            votes=_votes(get("votes", ())),
            errors=get("errors", 0),
            truncated=get("truncated", 0),
            unparsable=get("unparsable", 0),
            error=_text(get("error")),
            error_kind=_text(get("error_kind")),
            reference=_text(get("reference", "")),
            extracted=_text(get("extracted")),
            latency=get("latency"),
            prompt_tokens=get("prompt_tokens"),
            completion_tokens=get("completion_tokens"),
            finish_reason=_text(get("finish_reason")),
        )


# One object per recurring tuple of flags or scores ((True,), (0.0, 1.0)), one cache per item
# type: (0.0,) == (False,) in Python, and a shared (False,) would turn scores into false.
_SHARED: dict[type, dict[tuple[Any, ...], tuple[Any, ...]]] = {bool: {}, float: {}}
_NO_VOTES: dict[int, tuple[None, ...]] = {}  # samples -> (None,) * samples
_SHARED_LENGTH = 8  # longer tuples rarely recur


def _text(value: Any) -> Any:
    """A short string interned (answers and finish reasons recur; each reply decoded its own
    copy); anything else as it is."""
    return sys.intern(value) if type(value) is str and len(value) <= 32 else value


def _shared(values: Sequence[Any], kind: type) -> tuple[Any, ...]:
    """`values` as a tuple, one object per value when short and all of exact type `kind`."""
    as_tuple = tuple(values)
    if len(as_tuple) > _SHARED_LENGTH:
        return as_tuple
    for v in as_tuple:  # a plain loop: this runs for every case a session keeps
        if type(v) is not kind:
            return as_tuple
    return _SHARED[kind].setdefault(as_tuple, as_tuple)


def _votes(values: Sequence[str | None]) -> tuple[str | None, ...]:
    """The votes with their short answers interned; those without any answer shared."""
    answered = False
    votes: list[str | None] = []
    for v in values:
        if v is not None:
            answered = True
            if type(v) is str and len(v) <= 32:
                v = sys.intern(v)
        votes.append(v)
    if answered or len(votes) > _SHARED_LENGTH:
        return tuple(votes)
    return _NO_VOTES.setdefault(len(votes), (None,) * len(votes))


def evaluator_failure(evaluator: Evaluator, exc: Exception) -> str:
    """The case's error when its evaluator raised: the exception and the user's own frames
    (this package's frames say nothing about the user's bug)."""
    name = getattr(evaluator, "target", None) or getattr(evaluator, "name", "evaluator")
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not str(Path(f.filename).resolve()).startswith(_PACKAGE)
    ]
    if isinstance(exc, (InvalidJudgement, EvaluatorTimeout)):
        return str(exc)  # says it all; the user's frames are not the problem
    lines = [f"evaluator {name!r} failed: {type(exc).__name__}: {exc}"]
    if frames:
        lines.append("Traceback (the evaluator's frames, most recent call last):")
        lines += [line.rstrip("\n") for line in traceback.format_list(frames[-8:])]
    return "\n".join(lines)


def judge_case(
    evaluator: Evaluator, reference: str, records: Sequence[dict[str, Any]], mode: str
) -> Verdict:
    """The verdict of one case over its k samples.

    Rule: a request that could not be served makes the case an error (and its sample counts
    as wrong); otherwise the case passes when more than half of its samples are correct
    (with one sample: when it is correct). In `infer` mode a served case passes."""
    correct: list[bool] = []
    scores: list[float] = []
    votes: list[str | None] = []
    errors = truncated = unparsable = 0
    first_error = None
    judged_error = False  # an evaluator failure, not a request failure
    for record in records:
        if not record.get("ok"):
            errors += 1
            first_error = first_error or record.get("error", "request failed")
            correct.append(False)
            scores.append(0.0)
            votes.append(None)
            continue
        if record.get("finish_reason") in TRUNCATED_REASONS:
            truncated += 1
        if mode == "infer":
            continue
        try:
            judgement = evaluator.judge(strip_reasoning(record.get("content") or ""), reference)
        except Exception as exc:  # the user's code: its failure is this case's error
            errors += 1
            judged_error = True
            first_error = first_error or evaluator_failure(evaluator, exc)
            correct.append(False)
            scores.append(0.0)
            votes.append(None)
            continue
        if judgement.extracted is None:
            unparsable += 1
        correct.append(bool(judgement.correct))
        scores.append(float(judgement.score))
        votes.append(judgement.extracted)
    status: Status
    if errors:
        status = "error"
    elif mode == "infer":
        status = "passed"
    else:
        status = "passed" if sum(correct) * 2 > len(correct) else "failed"
    served = [r for r in records if r.get("ok")]
    latencies = [r.get("latency") or 0.0 for r in served]
    voted = _votes(votes)
    return Verdict(
        status=status,
        correct=_shared(correct, bool),
        scores=_shared(scores, float),
        votes=voted,
        errors=errors,
        truncated=truncated,
        unparsable=unparsable,
        error=first_error,
        error_kind=("evaluator" if judged_error else "request") if errors else None,
        reference=_text(reference),
        extracted=voted[0] if voted else None,
        latency=round(sum(latencies) / len(latencies), 4) if latencies else None,
        prompt_tokens=_total(served, "prompt_tokens"),
        completion_tokens=_total(served, "completion_tokens"),
        finish_reason=_text(served[0].get("finish_reason") if served else None),
    )


def _total(records: Sequence[dict[str, Any]], key: str) -> int | None:
    values = [r.get(key) for r in records if isinstance(r.get(key), int)]
    return sum(values) if values else None
