"""The controller's view: per-case verdicts from reports (or from saved predictions) become
per-task figures. Reads only what reports and the store carry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pytest_servebench.scoring import metrics
from pytest_servebench.scoring.verdict import Verdict

COUNT_ROWS = ("errors", "truncated", "unparsable")


@dataclass(frozen=True)
class SubsetGroup:
    """The split dataset a subset task belongs to: what the summary's group rows need."""

    name: str  # the parent config's name: the tasks averaged together
    abbr: str  # the group rows' name (the parent's abbr)
    subset: str  # this task's subset
    #: (row name, its subsets): a naive_average row each (mmlu-humanities, ceval-hard...)
    categories: tuple[tuple[str, tuple[str, ...]], ...] = ()


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
    cases: dict[str, Verdict] = field(default_factory=dict)
    group: SubsetGroup | None = None  # a subset of a split dataset: its group
    # More pass@k figures than pass@n, each k <= n (code datasets: HumanEval's 1, 10, 100).
    pass_ks: tuple[int, ...] = ()

    def add(self, case_id: str, verdict: Verdict) -> None:
        self.cases[case_id] = verdict

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
            "passed": sum(v.status == "passed" for v in verdicts),
            "failed": sum(v.status == "failed" for v in verdicts),
            "errors": sum(v.status == "error" for v in verdicts),
            "truncated": sum(bool(v.truncated) for v in verdicts),
            "unparsable": sum(bool(v.unparsable) for v in verdicts),
            "error_samples": sum(v.errors for v in verdicts),
        }

    def figures(self) -> dict[str, float]:
        """Metric name -> percent, over the evaluated cases. Failed requests count as wrong."""
        verdicts = [self.cases[c] for c in self.case_ids if c in self.cases]
        if not verdicts or self.run_mode == "infer":
            return {}
        k = self.samples
        if k == 1:
            return {"accuracy": metrics.accuracy([v.score for v in verdicts])}
        samples = [v.correct for v in verdicts]
        votes = [v.votes for v in verdicts]
        figures = metrics.case_metrics(samples, votes, k)
        for extra in sorted(set(self.pass_ks)):
            if extra < k:  # per case, the unbiased estimator over that case's n samples
                figures[f"pass@{extra}"] = 100.0 * metrics.mean_pass_at_k(samples, extra)
        return figures

    def intervals(self) -> dict[str, tuple[float, float]]:
        verdicts = [self.cases[c] for c in self.case_ids if c in self.cases]
        if not verdicts or self.run_mode == "infer":
            return {}
        name = metrics.headline_metric(self.samples)
        return {name: metrics.confidence_interval([v.score for v in verdicts])}

    def per_case_scores(self) -> dict[str, float]:
        return {c: v.score for c, v in self.cases.items()}

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
            data["cases"] = (
                {"case": c, **self.cases[c].to_dict()} for c in self.case_ids if c in self.cases
            )
        return data
