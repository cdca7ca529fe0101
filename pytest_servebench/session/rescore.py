"""Re-scoring from saved predictions: the cases this session did not run (deselected by --lf
or -k, or every case with --sb-mode eval) are judged from the answers already in the work
dir, so the summary always covers the whole dataset."""

from __future__ import annotations

from pytest_servebench.scoring.aggregate import TaskResult
from pytest_servebench.scoring.verdict import judge_case
from pytest_servebench.session.tasks import Run, Task
from pytest_servebench.store import load_predictions


def judge_saved(run: Run, task: Task, result: TaskResult, mode: str) -> None:
    """Judge each case of `task` that `result` lacks, when every one of its samples has a
    saved answer to the same request (same hash)."""
    missing = [c for c in task.cases if c.id not in result.cases]
    if not missing:
        return
    saved = load_predictions(run.work.predictions_file(task.model.name, task.dataset.config.name))
    if not saved:
        return
    state = run.states[task.key]
    for case in missing:
        try:
            jobs = state.jobs_for(case, task.model.model)
        except Exception:  # a case whose request cannot be built has no saved answer
            continue
        records = []
        for job in jobs:
            for sample in range(job.first, job.first + job.count):
                record = saved.get((case.id, sample))
                if record is None or record.get("hash") != job.hash:
                    break
                records.append(record)
        if len(records) == task.samples:
            result.add(case.id, judge_case(task.dataset.evaluator, case.reference, records, mode))
