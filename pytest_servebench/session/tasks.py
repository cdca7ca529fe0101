"""One evaluation run as seen by one pytest process: configs, tasks, work dir, engine."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from pytest_servebench.catalog.config import DatasetConfig, ModelConfig
from pytest_servebench.catalog.datasets import Case, Dataset, expand
from pytest_servebench.engine.connection import environment_proxies
from pytest_servebench.engine.jobs import CaseJobs, Job, RunAborted, each_case
from pytest_servebench.engine.process import ProcessEngine
from pytest_servebench.engine.protocol import Engine, TaskHandle, TaskSpec
from pytest_servebench.engine.request_body import build_body, generation_kwargs, request_hash
from pytest_servebench.redaction import is_secret_header, redactor
from pytest_servebench.scoring.verdict import Verdict, judge_case
from pytest_servebench.session.options import Options
from pytest_servebench.store import WorkDir, load_predictions

log = logging.getLogger("servebench")


class TaskStartError(Exception):
    """The engine could not start a task (an internal error): each of its cases is an error
    that says so once, without an engine traceback per case."""


@dataclass
class Task:
    model: ModelConfig
    dataset: Dataset

    @property
    def key(self) -> str:
        return f"{self.model.name}/{self.dataset.config.name}"

    @property
    def cases(self) -> list[Case]:
        return self.dataset.cases

    @property
    def samples(self) -> int:
        return self.model.num_samples


class TaskState:
    """Per-process state of a task: its submission to the engine and the saved predictions."""

    def __init__(self, task: Task, run: Run):
        self.task = task
        self.run = run
        self.handle: TaskHandle | None = None
        self.ready: dict[str, list[dict[str, Any]]] = {}
        self.kept: dict[str, list[dict[str, Any]]] = {}  # saved samples of a case being resent
        self.started = False
        self.selected: list[Case] = []  # what pytest will run of this task (Run.select)
        # The records handed over, kept only while a plugin may run a case again (Run.keep_taken)
        self.taken: dict[str, list[dict[str, Any]]] = {}
        # "reused N saved answers, sending M" of a resumed task, until a report carries it to
        # the controller's terminal (plugin.pytest_runtest_makereport).
        self.resume_note: str | None = None
        self.follower: Any = None  # code tasks: runs programs as replies arrive (execution/)
        self.start_error: str | None = None  # the engine could not start this task

    @cached_property
    def saved(self) -> dict[tuple[str, int], dict[str, Any]]:
        return load_predictions(self.run.work.predictions_file(*self.file_key))

    @property
    def file_key(self) -> tuple[str, str]:
        return self.task.model.name, self.task.dataset.config.name

    def jobs_for(self, case: Case, model_name: str) -> list[Job]:
        task = self.task
        prompt = task.dataset.render(case)
        kwargs = generation_kwargs(task.model, task.dataset.config.generation_kwargs)
        k = task.samples
        n = k if k > 1 and task.model.supports_n else 1
        body = build_body(task.model, model_name, prompt, kwargs, n=n)
        # Hashed with the configured model name, so that any process (the controller too)
        # can check a saved prediction without asking the server which model it serves.
        digest = request_hash(task.model.type, {**body, "model": task.model.model})
        if n > 1:
            return [Job(case.id, 0, k, body, digest, case.reference)]
        return [Job(case.id, s, 1, body, digest, case.reference) for s in range(k)]

    def start(self, cases: list[Case]) -> None:
        """Submit every selected case of this task, in item order, reusing saved answers."""
        self.started = True
        mode = self.run.options.mode
        if mode == "eval":
            for case in cases:
                self.ready[case.id] = self._saved_records(case, None)
            self._prefetch(cases, None, 0)
            return
        engine = self.run.engine
        to_send: list[str] = []
        by_id: dict[str, Case] = {}
        resuming = bool(self.saved) or bool(self.run.options.reuse)
        kept_jobs: dict[str, set[int]] = {}  # case -> first sample of each job not sent again
        for case in cases:
            if not self.run.options.resend and self.saved:
                # The hash holds the configured model name: no need to ask the server yet.
                jobs = self.jobs_for(case, self.task.model.model)
                records = self._reusable(jobs, self.saved)
                if records is not None:
                    self.ready[case.id] = records
                    continue
                # k samples: send only the samples that are missing or failed.
                kept = [(job, r) for job in jobs if (r := self._reusable([job], self.saved))]
                if kept:
                    kept_jobs[case.id] = {job.first for job, _ in kept}
                    self.kept[case.id] = [record for _, records in kept for record in records]
            to_send.append(case.id)
            by_id[case.id] = case
        if to_send:
            model_name = engine.model_name(self.task.model)

            def unsent(case_id: str) -> list[Job]:
                jobs = self.jobs_for(by_id[case_id], model_name)
                return [job for job in jobs if job.first not in kept_jobs.get(case_id, ())]

            path = self.run.work.predictions_file(*self.file_key)
            offset = path.stat().st_size if path.exists() else 0
            self._prefetch(cases, path, offset, len(to_send) * self.task.samples)
            # Built as the engine pulls them: one case's prompts at a time, not the task's.
            try:
                self.handle = engine.start(
                    self._spec(to_send, each_case(self.task.key, to_send, unsent))
                )
            except RunAborted:
                raise
            except Exception as exc:  # our bug, not the server's: one clear error per case
                log.exception("%s: the engine could not start the task", self.task.key)
                self.start_error = (
                    f"internal error: the engine could not start task {self.task.key}: "
                    f"{type(exc).__name__}: {exc} (traceback in the run's log file)"
                )
        if not to_send:
            self._prefetch(cases, None, 0)
        self.saved.clear()  # what we need was copied out; free the memory
        if resuming:
            k = self.task.samples
            per_case = 1 if k > 1 and self.task.model.supports_n else k
            reused = sum(len(records) for records in self.ready.values())
            reused += sum(len(records) for records in self.kept.values())
            sending = sum(per_case - len(kept_jobs.get(cid, ())) for cid in to_send)
            self.resume_note = (
                f"{self.task.key}: reused {reused} saved answers, sending "
                f"{sending} (work dir {self.run.work.root})"
            )
            log.info("resume: %s", self.resume_note)

    def _prefetch(
        self, cases: list[Case], path: Path | None, offset: int, expected: int = 0
    ) -> None:
        """An evaluator that runs programs starts them now for the answers at hand, and as
        the engine appends the others to `path` (execution/prefetch.py)."""
        prefetch = getattr(self.task.dataset.evaluator, "prefetch", None)
        if prefetch is None or self.run.options.mode == "infer":
            return
        from pytest_servebench.session.prefetch import PredictionFollower, submit_records

        references = {case.id: case.reference for case in cases}
        for records in (*self.ready.values(), *self.kept.values()):
            submit_records(prefetch, references, records)
        if path is not None and expected:
            self.follower = PredictionFollower(path, offset, prefetch, references, expected)

    def all_saved(self) -> bool:
        """Whether every case of the task has a saved answer to the exact request it would
        send: then the task sends nothing, whatever is selected. Read from the store, and
        forgotten again (the controller asks before launching servers)."""
        if self.run.options.resend:
            return False
        saved = load_predictions(self.run.work.predictions_file(*self.file_key))
        return bool(saved) and all(
            self._reusable(self.jobs_for(case, self.task.model.model), saved) is not None
            for case in self.task.cases
        )

    @staticmethod
    def _reusable(
        jobs: list[Job], saved: dict[tuple[str, int], dict[str, Any]]
    ) -> list[dict[str, Any]] | None:
        records: list[dict[str, Any]] = []
        for job in jobs:
            for sample in range(job.first, job.first + job.count):
                record = saved.get((job.case_id, sample))
                if record is None or not record.get("ok") or record.get("hash") != job.hash:
                    return None
                records.append(record)
        return records

    def _saved_records(self, case: Case, _: Any) -> list[dict[str, Any]]:
        records = []
        for sample in range(self.task.samples):
            record = self.saved.get((case.id, sample))
            if record is None:
                record = {
                    "case": case.id,
                    "sample": sample,
                    "ok": False,
                    "error": "no saved prediction for this case in "
                    f"{self.run.work.root}; run with --sb-mode all or infer first",
                }
            records.append(record)
        return records

    def records_for(self, case: Case) -> list[dict[str, Any]]:
        if not self.started:
            self.start(self.selected)
        if self.start_error is not None:
            raise TaskStartError(self.start_error)
        again = self.taken.get(case.id)
        if again is not None and all(r.get("ok") for r in again):
            return again  # run again (pytest-rerunfailures): the served answer stands
        records = self.ready.pop(case.id, None)
        if records is None:
            if self.run.engine.fatal:
                raise RunAborted(self.run.engine.fatal)
            try:
                if self.handle is None:
                    raise KeyError(case.id)
                records = self._wait(self.handle, case.id)
            except KeyError:
                # A case run a second time (a plugin re-running failures): its answer was
                # handed over already, or its request failed: ask the model once more.
                records = self._send_again(case)
        if self.run.keep_taken:
            self.taken[case.id] = records
        return records

    def _spec(self, case_ids: list[str], cases: Iterator[CaseJobs]) -> TaskSpec:
        return TaskSpec(
            key=self.task.key,
            model=self.task.model,
            predictions=self.run.work.predictions_file(*self.file_key),
            samples=self.task.samples,
            case_ids=case_ids,
            cases=cases,
        )

    def _wait(self, handle: TaskHandle, case_id: str) -> list[dict[str, Any]]:
        while True:
            result = handle.wait(case_id, 0.5)
            if result is not None:
                records = result.records
                kept = self.kept.pop(case_id, None)
                if kept:
                    by_sample = {r["sample"]: r for r in kept}
                    by_sample.update((r["sample"], r) for r in records)
                    records = [by_sample[k] for k in sorted(by_sample)]
                return records
            self.run.on_wait()  # the progress view stays live while a case is slow

    def _send_again(self, case: Case) -> list[dict[str, Any]]:
        if self.run.options.mode == "eval":
            return self._saved_records(case, None)
        engine = self.run.engine
        model_name = engine.model_name(self.task.model)
        cases = each_case(self.task.key, [case.id], lambda _: self.jobs_for(case, model_name))
        return self._wait(engine.start(self._spec([case.id], cases)), case.id)

    def judge(self, case: Case, records: list[dict[str, Any]]) -> Verdict:
        return judge_case(
            self.task.dataset.evaluator, case.reference, records, self.run.options.mode
        )


def make_engine(
    kind: str, headers_for: Callable[[ModelConfig], dict[str, str]], logs: Path
) -> Engine:
    """The engine in a process of its own, or in a thread of pytest's. In a thread it shares
    pytest's GIL: at zero latency the two take turns (about 1.6x slower)."""
    if kind == "thread":
        from pytest_servebench.engine.local import ThreadEngine  # the HTTP stack: only here

        return ThreadEngine(headers_for)
    return ProcessEngine(headers_for, logs)


class Run:
    """What one pytest process knows of the evaluation."""

    def __init__(
        self,
        options: Options,
        models: list[ModelConfig],
        datasets: list[DatasetConfig],
        work: WorkDir,
        datasets_dir: Path,
    ):
        self.options = options
        self.work = work
        self.models = models
        # A config with subsets runs as one task per subset, or one merged task with
        # --sb-merge-ds (options.merge_subsets); dataset_configs are the per-task configs.
        merge = bool(getattr(options, "merge_subsets", False))
        expanded = [ds for d in datasets for ds in expand(d, datasets_dir, options.limit, merge)]
        self.datasets_dir = datasets_dir
        self.dataset_configs = [ds.config for ds in expanded]
        self.datasets = {ds.config.name: ds for ds in expanded}
        self.tasks = [Task(m, ds) for m in models for ds in expanded]
        self.states = {t.key: TaskState(t, self) for t in self.tasks}
        self.engine = make_engine(options.engine, self._headers, work.root / "logs")
        self.keep_taken = False  # a plugin may run a case again: keep what each was given
        self.on_wait: Callable[[], None] = lambda: None
        for model in models:
            redactor.add(model.api_key())
            for url in model.base_urls:
                redactor.add_url(url)  # user:password@ and ?api_key= in a URL
            redactor.add_url(model.proxy)
            for name, value in model.resolved_headers().items():
                if is_secret_header(name):
                    redactor.add(value)
        for proxy in environment_proxies().values():
            redactor.add_url(proxy)

    def _headers(self, model: ModelConfig) -> dict[str, str]:
        headers = model.resolved_headers()
        key = model.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def select(self, selected: dict[str, list[Case]]) -> None:
        """The cases pytest will run, per task key, in run order (after -k, --lf, deselection)."""
        for key, state in self.states.items():
            state.selected = selected.get(key, [])
            for case in state.selected:  # the models of a run share a dataset's cases
                case.runs_left += 1

    def sends_to(self, model: ModelConfig) -> bool:
        """Whether any task of `model` may need a request (a task whose data cannot be read
        counts as needing one: collection reports the problem)."""
        try:
            return any(
                not state.all_saved() for state in self.states.values() if state.task.model is model
            )
        except Exception:
            return True

    def close(self) -> None:
        for state in self.states.values():
            if state.follower is not None:
                state.follower.stop()
        self.engine.close()
        if self.runs_code:
            from pytest_servebench.execution import pool, report

            report.write_stats(report.cache_dir(self.work.root))
            pool.shutdown()

    @property
    def runs_code(self) -> bool:
        """Whether a task's evaluator runs model-written programs (execution/)."""
        return any(hasattr(t.dataset.evaluator, "prefetch") for t in self.tasks)
