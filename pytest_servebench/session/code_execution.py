"""The session's side of running model-written programs (code datasets): the pool set up in
each pytest process, the isolation check before any request, and what the end reports.

The programs themselves run in execution/ (sandbox, limits, pool, cache); the evaluator asks
the pool, and tasks.py starts programs as replies arrive (session/prefetch.py)."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_servebench.execution import pool, report
from pytest_servebench.execution.sandbox import NoSandbox
from pytest_servebench.session.tasks import Run


def allowed_unsandboxed(config: pytest.Config) -> bool:
    return bool(config.getoption("sb_allow_unsandboxed_code", False))


def configure(run: Run, config: pytest.Config, tag: str) -> None:
    """Every pytest process that may judge code gets its pool settings (xdist workers too)."""
    if not run.runs_code:
        return
    workers = config.getoption("sb_code_workers", None)
    if workers is not None and workers < 1:
        raise pytest.UsageError(f"--sb-code-workers must be at least 1, got {workers}")
    pool.configure(
        allow_unsandboxed=allowed_unsandboxed(config),
        cache_dir=report.cache_dir(run.work.root),
        workers=workers,
        tag=tag,
    )


def check_isolation(run: Run, config: pytest.Config, mode: str) -> str | None:
    """How programs will run, described; a run that would execute model-written code with
    no sandbox stops here, before any request, unless the user accepted that risk."""
    if not run.runs_code or mode == "infer":
        return None
    try:
        return report.check_isolation(allowed_unsandboxed(config))
    except NoSandbox as exc:
        raise pytest.UsageError(str(exc)) from None


def session_figures(
    run: Run, mode: str, isolation: str | None
) -> tuple[dict[str, Any], str | None]:
    """(the summary json's `code_execution` entry, the terminal's line), both empty when the
    session ran no program."""
    if not run.runs_code or mode == "infer":
        return {}, None
    figures = report.collect(report.cache_dir(run.work.root))
    line = report.summary_line(figures, isolation)
    return {"code_execution": figures or {"describe": isolation}}, line
