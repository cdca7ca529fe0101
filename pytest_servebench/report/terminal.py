"""Terminal output that scales with the dataset: one line per wrong answer by default.

pytest prints a section of several lines for every failed test and repeats each one in its
short summary, after the plugins' summaries: with GSM8K at 57% that was ~4,000 lines, ~570 of
them after the servebench table. By default (no -v, no --tb) a wrong answer is one line, in a
block of its own (task::case, extracted vs reference), and the servebench table comes last.
Errors (a request that could not be served) keep pytest's own sections. `-v` or any `--tb`
style gives every wrong answer pytest's full failure section again."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_servebench.scoring.verdict import Verdict

CELL = 60  # characters of an extracted answer or a reference on the line


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
