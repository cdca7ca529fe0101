"""Terminal output that scales with the dataset: one line per wrong answer by default.

pytest prints a section of several lines for every failed test and repeats each one in its
short summary, after the plugins' summaries: with GSM8K at 57% that was ~4,000 lines, ~570 of
them after the servebench table. By default (no -v, no --tb) a wrong answer is one line, in a
block of its own (task::case, extracted vs reference), and the servebench table comes last.
Errors (a request that could not be served) keep pytest's own sections. `-v` or any `--tb`
style gives every wrong answer pytest's full failure section again. The servebench summary
(the table, comparisons, service figures, baseline, how the run ended) is printed from the
session's SessionOutcome."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_servebench.errors import ServebenchError
from pytest_servebench.redaction import redactor
from pytest_servebench.report.compare import baseline_lines
from pytest_servebench.report.outcome import SessionOutcome
from pytest_servebench.report.service import SERVICE_NOTE, render_service_text, service_rows
from pytest_servebench.report.summary import comparison_lines, render_text
from pytest_servebench.scoring.verdict import Verdict

CELL = 60  # characters of an extracted answer or a reference on the line

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


def printable(text: str) -> str:
    """`text` with every control character but tab and newline shown as an escape."""
    return text.translate(_CONTROL)


def compact(config: pytest.Config) -> bool:
    """Whether wrong answers are shown one line each (the default)."""
    return config.option.verbose <= 0 and config.option.tbstyle == "auto"


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= CELL else text[: CELL - 4] + "...'"


def wrong_answer_line(verdict: Verdict) -> str:
    """'extracted '4', reference '3'' (with the samples and truncation when they matter)."""
    correct = verdict.correct
    votes = verdict.votes
    shown = _short(list(votes)) if len(votes) > 1 else _short(verdict.extracted)
    line = f"extracted {shown}, reference {_short(verdict.reference)}"
    if len(correct) > 1:
        line += f" ({sum(map(bool, correct))}/{len(correct)} samples correct)"
    if verdict.truncated:
        line += " (truncated: finish_reason=length)"
    return line


class WrongAnswers:
    """The call reports of wrong answers (controller), shown as one line each."""

    def __init__(self) -> None:
        self.reports: list[Any] = []  # the terminal keeps these reports anyway
        self.lines: dict[int, str] = {}  # id(report) -> its line (from the verdict: under xdist
        # the report's text starts with the worker's name)

    def note(self, report: Any, verdict: Verdict) -> None:
        if report.when == "call" and report.failed and verdict.status == "failed":
            self.reports.append(report)
            self.lines[id(report)] = wrong_answer_line(verdict)

    def hide(self, tr: Any) -> list[Any]:
        """Take the wrong answers out of the terminal's failures for its FAILURES section and
        short summary; returns them, in order, for show()."""
        wrong = {id(r) for r in self.reports}
        failed = tr.stats.get("failed", [])
        hidden = [r for r in failed if id(r) in wrong]
        if hidden:
            tr.stats["failed"] = [r for r in failed if id(r) not in wrong]
        return hidden

    def show(self, tr: Any, hidden: list[Any]) -> None:
        """Put them back (pytest's final count includes them) and print one line each."""
        if not hidden:
            return
        tr.stats["failed"] = [*hidden, *tr.stats.get("failed", [])]
        tr.write_sep("=", f"wrong answers: {len(hidden)} (-v or --tb=long for details)")
        for report in hidden:
            tr.write_line(f"{report.nodeid}: {self.lines.get(id(report), '')}")


def write_session_summary(tr: Any, outcome: SessionOutcome, baseline: Path | None) -> None:
    """The servebench summary, printed last: the table, the model comparisons, the service
    figures, the comparison with --sb-baseline, then how the run ended and where it is."""
    results = outcome.results
    if not results:
        return
    header, rows = outcome.table
    tr.write_sep("=", "servebench summary")
    for line in render_text(header, rows).splitlines():
        tr.write_line(line)
    for line in comparison_lines(outcome.comparisons):
        tr.write_line(line)
    srows = service_rows((r.dataset, r.model, outcome.service.get(r.key)) for r in results)
    if srows:
        tr.write_sep("-", "servebench service")
        for line in [*render_service_text(srows).splitlines(), SERVICE_NOTE]:
            tr.write_line(line)
    if baseline is not None and outcome.mode != "infer":
        tr.write_sep("-", "servebench vs baseline")
        try:
            lines = baseline_lines(baseline, results, outcome.service)
        except ServebenchError as exc:
            lines = [f"not compared: {exc}"]
        for line in lines:
            tr.write_line(line, red="significantly WORSE" in line)
    for r in results:
        if not r.complete:
            figures = r.figures()
            shown = ", ".join(f"{k} {v:.2f}" for k, v in figures.items()) or "no figures"
            tr.write_line(
                f"partial: {r.key} has {r.evaluated} of {len(r.case_ids)} cases "
                f"evaluated ({shown} over those only); the table shows '-'",
                yellow=True,
            )
    if outcome.aborted:
        tr.write_line(f"aborted: {printable(outcome.aborted)}", red=True, bold=True)
    elif outcome.interrupted:
        how = "SIGTERM" if outcome.terminated else "Ctrl-C"
        tr.write_line(f"interrupted ({how}): what finished is saved", yellow=True)
    if outcome.needs_resume:
        tr.write_line(f"resume: pytest {' '.join(outcome.resume_args)}", bold=True)
    if outcome.finish_error:
        tr.write_line(f"error: {redactor(outcome.finish_error)}", red=True)
    if outcome.code_execution:
        tr.write_line(outcome.code_execution)
    tr.write_line(f"work dir: {outcome.work_dir}")
    for path in outcome.files:
        if path.suffix == ".csv":
            tr.write_line(f"summary: {path.with_suffix('')}.{{csv,md,txt,json}}")
