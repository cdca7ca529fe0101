"""The end of a session, made once by the controller: each task's result written, the summary
table and the model comparisons made, the summary files written, the resume command, and all
of it in one SessionOutcome (report/outcome.py) for the terminal summary, gates and html."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_servebench.redaction import redactor
from pytest_servebench.report.outcome import SessionOutcome, Table
from pytest_servebench.report.service import task_service
from pytest_servebench.report.summary import build_rows, comparisons, write_summary
from pytest_servebench.scoring.aggregate import SubsetGroup, TaskResult
from pytest_servebench.session import options as opts
from pytest_servebench.session.tasks import Run, Task
from pytest_servebench.store import write_json


def new_result(task: Task, run_mode: str) -> TaskResult:
    """An empty result for `task`; a subset task carries its group (summary group rows)."""
    dataset = task.dataset
    group = None
    if dataset.group is not None and dataset.subset is not None:
        parent, abbr = dataset.group
        spec = dataset.subset_spec
        categories = (
            tuple((f"{abbr}-{name}", members) for name, members in spec.groups) if spec else ()
        )
        group = SubsetGroup(parent, abbr, dataset.subset, categories)
    return TaskResult(
        key=task.key,
        model=task.model.abbr,
        model_name=task.model.name,
        dataset=dataset.config.abbr,
        dataset_name=dataset.config.name,
        version=dataset.version,
        mode=dataset.config.mode,
        run_mode=run_mode,
        samples=task.samples,
        case_ids=[c.id for c in task.cases],
        group=group,
        pass_ks=tuple(getattr(dataset.evaluator, "pass_ks", ())),
    )


def _frozen(table: tuple[Sequence[str], Sequence[Sequence[str]]]) -> Table:
    header, rows = table
    return tuple(header), tuple(tuple(row) for row in rows)


@dataclass
class Draft:
    """What the end of the session made so far. The outcome is built from it even when a
    step failed (a full disk, Ctrl-C), so the terminal still shows what there is."""

    service: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    table: Table | None = None
    comparisons: tuple[dict[str, Any], ...] | None = None
    files: tuple[Path, ...] = ()


def write_outcome(
    draft: Draft, run: Run, results: Sequence[TaskResult], stamp: str, extra: dict[str, Any]
) -> None:
    """Each task's results file, its service figures, the table, the comparisons and the
    summary files (csv, md, txt, json; `extra` goes into the json), recorded in `draft`."""
    work = run.work
    for result in results:
        write_json(work.results_file(result.model_name, result.dataset_name), result.to_json())
    draft.service = {
        r.key: task_service(work.predictions_file(r.model_name, r.dataset_name), set(r.case_ids))
        for r in results
    }
    draft.table = _frozen(build_rows(results))
    draft.comparisons = tuple(comparisons(results))
    draft.files = tuple(
        write_summary(
            work.summary_base(stamp), results, draft.table, draft.comparisons, extra, draft.service
        )
    )


def resume_args(options: opts.Options, run: Run, invocation_dir: Path) -> list[str]:
    """The command that continues this run; `--opt=value` so pytest's rootdir stays put."""
    o = options
    args = [
        "--sb-models",
        *o.models,
        "--sb-datasets",
        *o.datasets,
        f"--sb-work-dir={run.work.root.parent}",
        f"--sb-reuse={run.work.timestamp}",
    ]
    args += [f"--sb-suites={s}" for s in o.suites]
    if run.datasets_dir != (invocation_dir / "datasets").resolve():
        args.append(f"--sb-datasets-dir={run.datasets_dir}")
    args += [f"--sb-set={redactor(s)}" for s in o.overrides]
    if o.limit:
        args.append(f"--sb-limit={o.limit}")
    if o.mode != "all":
        args.append(f"--sb-mode={o.mode}")
    if o.merge_subsets:
        args.append("--sb-merge-ds")
    return args


def build_outcome(
    draft: Draft,
    run: Run,
    options: opts.Options,
    stamp: str,
    results: Sequence[TaskResult],
    *,
    aborted: str | None,
    interrupted: bool,
    terminated: bool,
    finish_error: str | None,
    code_execution: str | None = None,
    invocation_dir: Path,
) -> SessionOutcome:
    """The session's one outcome. What the draft lacks (a step that failed) is made here
    from the results there are."""
    work = run.work
    return SessionOutcome(
        work_dir=work.root,
        stamp=stamp,
        mode=options.mode,
        models=tuple(options.models),
        datasets=tuple(options.datasets),
        results=tuple(results),
        table=draft.table if draft.table is not None else _frozen(build_rows(results)),
        comparisons=(
            draft.comparisons if draft.comparisons is not None else tuple(comparisons(results))
        ),
        service=dict(draft.service),
        predictions={r.key: work.predictions_file(r.model_name, r.dataset_name) for r in results},
        files=draft.files,
        aborted=redactor(aborted) if aborted else None,
        engine_fatal=run.engine.fatal,
        interrupted=interrupted,
        terminated=terminated,
        finish_error=finish_error,
        code_execution=code_execution,
        resume_args=tuple(resume_args(options, run, invocation_dir)),
    )


def empty_outcome(run: Run, options: opts.Options, stamp: str) -> SessionOutcome:
    """The outcome before the end: what was selected and where (the html report's title)."""
    return SessionOutcome(
        work_dir=run.work.root,
        stamp=stamp,
        mode=options.mode,
        models=tuple(options.models),
        datasets=tuple(options.datasets),
    )
