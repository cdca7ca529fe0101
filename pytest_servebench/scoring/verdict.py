"""From saved predictions to a case verdict: the only place where answers are judged."""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_servebench.scoring.evaluators import Evaluator, strip_reasoning
from pytest_servebench.scoring.evaluators.limits import EvaluatorTimeout
from pytest_servebench.scoring.evaluators.registry import InvalidJudgement

TRUNCATED_REASONS = ("length",)
_PACKAGE = str(Path(__file__).resolve().parents[1])  # the whole pytest_servebench package


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
) -> dict[str, Any]:
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
    if errors:
        status = "error"
    elif mode == "infer":
        status = "passed"
    else:
        status = "passed" if sum(correct) * 2 > len(correct) else "failed"
    served = [r for r in records if r.get("ok")]
    latencies = [r.get("latency") or 0.0 for r in served]
    return {
        "status": status,
        "correct": correct,
        "scores": scores,
        "votes": votes,
        "errors": errors,
        "truncated": truncated,
        "unparsable": unparsable,
        "error": first_error,
        "error_kind": ("evaluator" if judged_error else "request") if errors else None,
        "reference": reference,
        "extracted": votes[0] if votes else None,
        "latency": round(sum(latencies) / len(latencies), 4) if latencies else None,
        "prompt_tokens": _total(served, "prompt_tokens"),
        "completion_tokens": _total(served, "completion_tokens"),
        "finish_reason": served[0].get("finish_reason") if served else None,
    }


def _total(records: Sequence[dict[str, Any]], key: str) -> int | None:
    values = [r.get(key) for r in records if isinstance(r.get(key), int)]
    return sum(values) if values else None
