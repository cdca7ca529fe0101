"""The controller's view: per-case verdicts from reports (or from saved predictions) become
per-task figures. Reads only what reports and the store carry."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import metrics

COUNT_ROWS = ("errors", "truncated", "unparsable")

# What scoring.judge_case returns for a case, in its order.
VERDICT_FIELDS = (
    "status",
    "correct",
    "scores",
    "votes",
    "errors",
    "truncated",
    "unparsable",
    "error",
    "error_kind",  # "request" or "evaluator" (what made the case an error), else None
    "reference",
    "extracted",
    "latency",
    "prompt_tokens",
    "completion_tokens",
    "finish_reason",
)
_FIELD_INDEX = {name: i for i, name in enumerate(VERDICT_FIELDS)}
_ABSENT = object()
_ONE_VOTE = object()
_VOTES, _EXTRACTED = _FIELD_INDEX["votes"], _FIELD_INDEX["extracted"]
_SHARED: dict[tuple[Any, ...], tuple[Any, ...]] = {}  # (True,), (0.0,), ...: one object each


def _compact(value: Any) -> Any:
    """Lists as tuples; the few tuples of per-sample flags and scores that recur, shared; short
    strings that recur ("stop", "42") shared (each reply decoded its own copy)."""
    if type(value) is str:
        return sys.intern(value) if len(value) <= 32 else value
    if not isinstance(value, list):
        return value
    as_tuple = tuple(value)
    if len(as_tuple) <= 8 and all(v is None or type(v) in (bool, float) for v in as_tuple):
        # Keyed with the types: (0.0,) == (False,) in Python, and a shared (False,) would
        # turn the scores of a results file into true/false.
        key = tuple((type(v), v) for v in as_tuple)
        return _SHARED.setdefault(key, as_tuple)
    return as_tuple


class Verdict(Mapping[str, Any]):
    """A case's verdict as the controller keeps it until the session ends: a tuple of
    values instead of a dict of lists (~350 bytes instead of ~1,900; 50,000 cases live at
    once). Reads as the mapping judge_case made, with tuples for its lists."""

    __slots__ = ("_values",)

    def __init__(self, verdict: Mapping[str, Any]) -> None:
        values = [_compact(verdict.get(name, _ABSENT)) for name in VERDICT_FIELDS]
        votes = values[_VOTES]
        if isinstance(votes, tuple) and len(votes) == 1 and votes[0] is values[_EXTRACTED]:
            values[_VOTES] = _ONE_VOTE  # one sample: its vote is the extracted answer
        self._values = tuple(values)

    def __getitem__(self, key: str) -> Any:
        index = _FIELD_INDEX.get(key)
        value = _ABSENT if index is None else self._values[index]
        if value is _ABSENT:
            raise KeyError(key)
        if value is _ONE_VOTE:
            return (self._values[_EXTRACTED],)
        return value

    def __iter__(self) -> Iterator[str]:
        return (name for name, v in zip(VERDICT_FIELDS, self._values) if v is not _ABSENT)

    def __len__(self) -> int:
        return sum(v is not _ABSENT for v in self._values)


@dataclass
class TaskResult:
    key: str
    model: str  # model abbr (summary column)
    model_name: str  # model config name (file names)
    dataset: str  # dataset abbr (summary row)
    dataset_name: str  # dataset config name
    version: str
    mode: str  # the dataset's mode column ("gen")
    run_mode: str  # all / infer / eval
    samples: int
    case_ids: list[str]
    cases: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    # More pass@k figures than pass@n, each k <= n (code datasets: HumanEval's 1, 10, 100).
    pass_ks: tuple[int, ...] = ()

    def add(self, case_id: str, verdict: Mapping[str, Any]) -> None:
        """Keep a case's verdict: judge_case's fields of `verdict` (a report's payload also
        carries the task, the case and what reports show; those are not kept)."""
        self.cases[case_id] = Verdict(verdict)

    @property
    def evaluated(self) -> int:
        return sum(1 for c in self.case_ids if c in self.cases)

    @property
    def complete(self) -> bool:
        return self.evaluated == len(self.case_ids)

    def counts(self) -> dict[str, int]:
        verdicts = [self.cases[c] for c in self.case_ids if c in self.cases]
        return {
            "cases": len(self.case_ids),
            "evaluated": len(verdicts),
            "passed": sum(v["status"] == "passed" for v in verdicts),
            "failed": sum(v["status"] == "failed" for v in verdicts),
            "errors": sum(v["status"] == "error" for v in verdicts),
            "truncated": sum(bool(v.get("truncated")) for v in verdicts),
            "unparsable": sum(bool(v.get("unparsable")) for v in verdicts),
            "error_samples": sum(v.get("errors", 0) for v in verdicts),
        }

    def figures(self) -> dict[str, float]:
        """Metric name -> percent, over the evaluated cases. Failed requests count as wrong."""
        verdicts = [self.cases[c] for c in self.case_ids if c in self.cases]
        if not verdicts or self.run_mode == "infer":
            return {}
        k = self.samples
        per_case = [sum(v["scores"]) / len(v["scores"]) if v["scores"] else 0.0 for v in verdicts]
        if k == 1:
            return {"accuracy": metrics.accuracy(per_case)}
        samples = [v["correct"] for v in verdicts]
        votes = [v["votes"] for v in verdicts]
        figures = metrics.case_metrics(samples, votes, k)
        for extra in sorted(set(self.pass_ks)):
            if extra < k:  # per case, the unbiased estimator over that case's n samples
                figures[f"pass@{extra}"] = 100.0 * metrics.mean_pass_at_k(samples, extra)
        return figures

    def intervals(self) -> dict[str, tuple[float, float]]:
        verdicts = [self.cases[c] for c in self.case_ids if c in self.cases]
        if not verdicts or self.run_mode == "infer":
            return {}
        per_case = [sum(v["scores"]) / len(v["scores"]) if v["scores"] else 0.0 for v in verdicts]
        name = "accuracy" if self.samples == 1 else f"avg@{self.samples}"
        return {name: metrics.confidence_interval(per_case)}

    def per_case_scores(self) -> dict[str, float]:
        return {
            c: (sum(v["scores"]) / len(v["scores"]) if v["scores"] else 0.0)
            for c, v in self.cases.items()
        }

    def to_json(self, include_cases: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "model": self.model,
            "model_config": self.model_name,
            "dataset": self.dataset,
            "dataset_config": self.dataset_name,
            "version": self.version,
            "mode": self.mode,
            "run_mode": self.run_mode,
            "samples": self.samples,
            "complete": self.complete,
            "counts": self.counts(),
            "metrics": {k: round(v, 4) for k, v in self.figures().items()},
            "ci95": {k: [round(lo, 4), round(hi, 4)] for k, (lo, hi) in self.intervals().items()},
        }
        if include_cases:
            # Made one case at a time as the file is written (store.write_json).
            data["cases"] = ({"case": c, **self.cases[c]} for c in self.case_ids if c in self.cases)
        return data
