"""The end of a session as one value: what the terminal summary, the gates and the html
report show. Built once, by the controller, at the end of its sessionfinish (session/outcome.py);
the reports read it and nothing else of the session."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_servebench.scoring.aggregate import TaskResult

Table = tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]  # (header, rows): summary.build_rows


@dataclass(frozen=True)
class SessionOutcome:
    """What an evaluation session ended with (the controller's view)."""

    work_dir: Path
    stamp: str  # this session's timestamp: its summary and report files carry it
    mode: str  # all / infer / eval
    models: tuple[str, ...]  # as selected (--sb-models)
    datasets: tuple[str, ...]  # as selected (--sb-datasets)
    #: one per task that has a result, in run order (every task once the summary is made)
    results: tuple[TaskResult, ...] = ()
    table: Table = ((), ())
    comparisons: tuple[dict[str, Any], ...] = ()  # summary.comparisons(): model vs model
    service: Mapping[str, dict[str, Any] | None] = field(default_factory=dict)  # task key ->
    predictions: Mapping[str, Path] = field(default_factory=dict)  # task key -> its file
    files: tuple[Path, ...] = ()  # the summary files written (csv, md, txt, json)
    #: why the run stopped early (a crashed managed server named as the cause), redacted
    aborted: str | None = None
    engine_fatal: str | None = None  # the engine's own reason, when it stopped the run
    interrupted: bool = False  # by the user: Ctrl-C or SIGTERM
    terminated: bool = False  # the interruption was SIGTERM
    finish_error: str | None = None  # the engine did not stop or the summary is incomplete
    resume_args: tuple[str, ...] = ()  # `pytest ARGS` continues this run
    code_execution: str | None = None  # code datasets: the isolation used, programs run

    @property
    def needs_resume(self) -> bool:
        """Some work is left: the run was cut short or a task is partial."""
        return self.interrupted or bool(self.aborted) or any(not r.complete for r in self.results)
