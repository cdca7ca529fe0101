"""pytest nodes: a task (model x dataset) is a collector, a dataset record is an item."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pytest

from pytest_servebench.catalog.datasets import Case
from pytest_servebench.engine.jobs import RunAborted
from pytest_servebench.scoring.verdict import Verdict
from pytest_servebench.session.tasks import TaskStartError

if TYPE_CHECKING:
    from pytest_servebench.session.tasks import Task, TaskState

NODE_PREFIX = "servebench"


class RequestError(Exception):
    """The case's request could not be served: reported as an error, not a failure."""


class JudgeError(RequestError):
    """The case's output could not be judged (its evaluator raised, hung or returned
    something that is not a verdict): an error, not a failure."""


# Model output and server text shown on a terminal: control characters (escape sequences,
# NUL, carriage returns) are shown as visible escapes, never interpreted.
# Bidirectional overrides too: they reorder what a terminal shows ("Trojan source").
_CONTROL = {
    c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"
    for c in (
        *range(0x00, 0x20),
        *range(0x7F, 0xA0),
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
    )
    if c not in (9, 10)
}


def _error_text(exc: RequestError) -> str:
    if isinstance(exc, JudgeError):
        return f"case could not be judged: {printable(str(exc))}"
    return f"request could not be served: {printable(str(exc))}"


def printable(text: str) -> str:
    """`text` with every control character but tab and newline shown as an escape."""
    return text.translate(_CONTROL)


class WrongAnswer(Exception):
    """The case was served and judged wrong."""


# One marker object shared by every task (`pytest.mark.NAME` builds a new one on each access).
_SERVEBENCH_MARK = pytest.mark.servebench


class TaskCollector(pytest.Collector):
    def __init__(self, *, task: Task, state: TaskState, **kwargs: Any):
        super().__init__(**kwargs)
        self.task = task
        self.state = state
        # On the task, not on each case: `-m servebench` and `-k servebench` see the marks of
        # parents, and a case without marks of its own can take the lean run protocol (lean.py).
        self.add_marker(_SERVEBENCH_MARK)

    def collect(self) -> list[CaseItem]:
        return [CaseItem.from_parent(self, name=case.id, case=case) for case in self.task.cases]

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, self.nodeid


_NO_RECORDS: tuple[dict[str, Any], ...] = ()
_NO_EXTRA_KEYWORDS: frozenset[str] = frozenset()


class CaseItem(pytest.Item):
    def __init__(self, *, case: Case, **kwargs: Any):
        super().__init__(**kwargs)
        self.case = case
        self.verdict: Verdict | None = None
        self.records: Sequence[dict[str, Any]] = _NO_RECORDS
        # Only ever read (-k matching): one shared empty set instead of one per case.
        self.extra_keyword_matches = _NO_EXTRA_KEYWORDS  # type: ignore[assignment]

    @property
    def collector(self) -> TaskCollector:
        assert isinstance(self.parent, TaskCollector)
        return self.parent

    def setup(self) -> None:
        state = self.collector.state
        self.records = state.records_for(self.case)
        verdict = self.verdict = state.judge(self.case, self.records)
        # JUnit properties: --junitxml shows each case's score, answer and reference.
        self.user_properties = [
            *self.user_properties,
            ("score", verdict.score),
            ("extracted", str(verdict.extracted)),
            ("reference", verdict.reference),
        ]
        if verdict.status == "error":
            kind = JudgeError if verdict.error_kind == "evaluator" else RequestError
            raise kind(verdict.error)

    def runtest(self) -> None:
        assert self.verdict is not None
        if self.verdict.status == "failed":
            raise WrongAnswer()

    def teardown(self) -> None:
        # The reports of setup and call are made: they, and the controller, keep what they
        # need. Outputs and the verdict held here would only grow memory with every case.
        # A case left without a verdict (the run aborted, or was interrupted) keeps its
        # record: the summary judges it from the store at the end, which renders it again.
        judged = self.verdict is not None
        self.records = _NO_RECORDS
        self.verdict = None
        # A re-run (pytest-rerunfailures) renders the case again.
        if judged and not self.collector.state.run.keep_taken:
            self.case.release()

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, RequestError):
            return _error_text(excinfo.value)
        if isinstance(excinfo.value, WrongAnswer) and self.verdict is not None:
            return self._wrong_answer_message()
        return str(super().repr_failure(excinfo, style))

    def _repr_failure_py(
        self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None
    ) -> Any:
        # Setup errors are rendered through this path, not repr_failure: a case whose request
        # could not be served gets one line, not an engine traceback.
        if isinstance(excinfo.value, RequestError):
            return _error_text(excinfo.value)
        if isinstance(excinfo.value, TaskStartError):
            return str(excinfo.value)
        if isinstance(excinfo.value, RunAborted):
            # The reason is printed once, in the servebench summary ("aborted: ..."); pytest
            # repeats an item's text in its short summary (in full on CI).
            return "run aborted, nothing more is sent: the reason is under 'aborted:' below"
        return super()._repr_failure_py(excinfo, style)

    def _wrong_answer_message(self) -> str:
        verdict = self.verdict
        assert verdict is not None
        from pytest_servebench.report.terminal import compact, wrong_answer_line

        if compact(self.config):  # one line; -v or --tb give the full section (report/terminal.py)
            return wrong_answer_line(verdict)
        task = self.collector.task
        question = " ".join(task.dataset.question_text(self.case).split())
        outputs = [r.get("content") or "" for r in self.records if r.get("ok")]
        tail = outputs[0][-400:] if outputs else ""
        lines = [
            f"wrong answer ({sum(verdict.correct)}/{len(verdict.correct)} samples correct)",
            f"  question : {question[:300]}" + ("..." if len(question) > 300 else ""),
            f"  extracted: {list(verdict.votes)}"
            if len(verdict.votes) > 1
            else f"  extracted: {verdict.extracted!r}",
            f"  reference: {verdict.reference!r}",
            f"  output end: ...{tail}"
            if outputs and len(outputs[0]) > 400
            else f"  output   : {tail}",
        ]
        if self.records and self.records[0].get("finish_reason") == "length":
            lines.append("  note     : the output was truncated (finish_reason=length)")
        return printable("\n".join(lines))

    def reportinfo(self) -> tuple[Any, int | None, str]:
        # The domain heads the case's section in pytest's failure summary. pytest -v shows the
        # node id with the domain's dots as "::" when the id ends with it: a case id with dots
        # ("807.json") gets a domain that does not end the node id.
        name = self.name
        if "." in name or "[" in name:
            return self.path, None, f"{name} ({self.collector.task.key})"
        return self.path, None, name

    def details(self) -> dict[str, Any]:
        """What a report shows of the case beyond its verdict (untrusted model text)."""
        from pytest_servebench.catalog.datasets import prompt_preview

        task = self.collector.task
        return {
            "prompt": prompt_preview(task.dataset.render(self.case)),
            "outputs": [r.get("content") or "" for r in self.records],
            "reasonings": [r.get("reasoning") or "" for r in self.records],
        }
