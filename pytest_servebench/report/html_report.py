"""pytest-html integration: the summary table, an accuracy chart and every case's details.

Registered (by the plugin, on the controller) only when pytest-html is installed and a report
is asked for with ``--html``. The report then opens with the servebench summary (every metric,
every model, the error/truncated/unparsable counts), a bar chart of accuracy per dataset and
model (inline SVG: no external asset, works offline and as a CI artifact) and the paired
significance of the differences between models; each case row carries its extracted answer,
reference, score, latency, tokens and finish reason, and its extras show the prompt, the raw
output and the reasoning.

Model output, prompts and dataset text are untrusted: everything this module writes into the
page goes through :func:`esc`. pytest-html itself escapes the log and the title but inserts row
cells and "html" extras as markup (``innerHTML``) and does not escape the test id cell, so this
module rewrites that cell escaped.

A copy of the report is written to ``<work dir>/summary/report_<timestamp>.html``, always
self-contained (pytest-html's CSS inlined), so the work dir holds a report that opens anywhere.
"""

from __future__ import annotations

import html
import re
import shutil
from collections.abc import Generator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from pytest_servebench.report.charts import accuracy_chart, model_charts
from pytest_servebench.report.outcome import SessionOutcome
from pytest_servebench.report.summary import HEADER, build_rows
from pytest_servebench.scoring.aggregate import COUNT_ROWS, TaskResult
from pytest_servebench.scoring.verdict import Verdict

PLUGIN_NAME = "servebench-html"
MAX_TEXT = 50_000  # characters of one prompt / output / reasoning shown in the report
CELL_TEXT = 60  # characters of an extracted answer or reference shown in a row cell

CSS = """
.sb{color:#222;font-size:13px;margin:0 0 16px 0}
.sb h2{margin:8px 0}
.sb h3{font-size:14px;color:#000;margin:14px 0 6px 0}
.sb p.sb-meta{color:#444;margin:2px 0}
.sb table.sb-table{border-collapse:collapse;margin:4px 0 8px 0}
.sb table.sb-table th,.sb table.sb-table td{border:1px solid #ddd;padding:3px 8px}
.sb table.sb-table th{background:#f3f3f3;text-align:left}
.sb table.sb-table td.sb-num{text-align:right;font-variant-numeric:tabular-nums}
.sb table.sb-table tr.sb-count td{color:#666}
.sb td.sb-bad{color:#b00020;font-weight:bold}
.sb td.sb-ok{color:#1b7a1b;font-weight:bold}
.sb td.sb-skip{color:#777}
.sb .sb-warn{color:#a05a00}
.sb .sb-sig{color:#b00020;font-weight:bold}
.sb svg{display:block;margin:6px 0;max-width:100%;height:auto}
.sb .sb-scroll{max-height:640px;overflow:auto;border:1px solid #eee;display:inline-block;max-width:100%}
.sb .sb-scroll svg{max-width:none;margin:0}
.sb-case{color:#222;font-size:12px;padding:4px 0}
.sb-case table{border-collapse:collapse;margin-bottom:6px}
.sb-case th,.sb-case td{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top}
.sb-case th{background:#f3f3f3;font-weight:bold}
.sb-case details{margin:4px 0}
.sb-case summary{cursor:pointer;font-weight:bold;color:#000}
.sb-case .sb-warn{color:#a05a00}
.sb-case pre{white-space:pre-wrap;word-break:break-word;background:#f7f7f7;border:1px solid #e0e0e0;
 padding:6px;margin:2px 0;max-height:420px;overflow:auto;color:#111}
td.col-sbfinish.sb-length{color:#a05a00;font-weight:bold}
"""


def esc(value: Any) -> str:
    """Text for HTML content or a quoted attribute; None is empty."""
    return "" if value is None else html.escape(str(value), quote=True)


def _short(value: Any, limit: int = CELL_TEXT) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _clip(text: str) -> str:
    if len(text) <= MAX_TEXT:
        return text
    return text[:MAX_TEXT] + f"\n\u2026 ({len(text) - MAX_TEXT} more characters in the work dir)"


# -- the summary section -------------------------------------------------------------------


def summary_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ['<table class="sb-table" id="sb-summary-table"><thead><tr>']
    out += [f"<th>{esc(h)}</th>" for h in header]
    out.append("</tr></thead><tbody>")
    for row in rows:
        metric = row[2]
        count = metric in COUNT_ROWS
        out.append(f'<tr class="{"sb-count" if count else "sb-metric"}">')
        for i, cell in enumerate(row):
            classes = []
            if i >= len(HEADER):
                classes.append("sb-num")
                if count and cell not in ("0", "-"):
                    classes.append("sb-bad")
            cls = f' class="{" ".join(classes)}"' if classes else ""
            out.append(f"<td{cls}>{esc(cell)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def comparisons_table(comparisons: Sequence[dict[str, Any]], results: Sequence[TaskResult]) -> str:
    if not comparisons:
        return ""
    abbr = {r.dataset_name: r.dataset for r in results}
    out = [
        '<table class="sb-table" id="sb-comparisons"><thead><tr>',
        "<th>dataset</th><th>model A</th><th>model B</th><th>A \u2212 B (points)</th>"
        "<th>test</th><th>p-value</th><th>cases</th><th>verdict</th>",
        "</tr></thead><tbody>",
    ]
    for c in comparisons:
        significant = bool(c.get("significant"))
        test = "exact McNemar" if c.get("test") == "mcnemar" else "paired bootstrap"
        verdict = (
            '<span class="sb-sig">significant (p &lt; 0.05)</span>'
            if significant
            else "not significant"
        )
        out.append(
            f"<tr><td>{esc(abbr.get(c.get('dataset'), c.get('dataset')))}</td>"
            f"<td>{esc(c.get('a'))}</td><td>{esc(c.get('b'))}</td>"
            f'<td class="sb-num">{float(c.get("diff", 0.0)):+.2f}</td><td>{esc(test)}</td>'
            f'<td class="sb-num">{float(c.get("p_value", 1.0)):.4g}</td>'
            f'<td class="sb-num">{int(c.get("n", 0))}</td><td>{verdict}</td></tr>'
        )
    out.append("</tbody></table>")
    return "".join(out)


def gates_table(outcomes: Sequence[Any], decision: str | None = None) -> str:
    """The CI gates (gates.GateOutcome), broken ones first, and what they decided."""
    if not outcomes:
        return ""
    order = {"broke": 0, "held": 1, "skipped": 2}
    out = [
        '<table class="sb-table" id="sb-gates"><thead><tr><th>gate</th><th>task</th>'
        "<th>outcome</th><th>where</th></tr></thead><tbody>"
    ]
    for o in sorted(outcomes, key=lambda o: order.get(o.status, 3)):
        cls = {"broke": "sb-bad", "held": "sb-ok"}.get(o.status, "sb-skip")
        where = o.gate.where if getattr(o, "gate", None) is not None else ""
        out.append(
            f'<tr class="sb-gate-{esc(o.status)}"><td class="{cls}">{esc(o.status.upper())}</td>'
            f"<td>{esc(o.subject)}</td><td>{esc(o.message)}</td><td>{esc(where)}</td></tr>"
        )
    out.append("</tbody></table>")
    if decision:
        out.append(f'<p class="sb-meta">{esc(decision)}</p>')
    return "".join(out)


def summary_section(
    results: Sequence[TaskResult],
    comparisons: Sequence[dict[str, Any]] = (),
    meta: Sequence[str] = (),
    notes: Sequence[str] = (),
    gates: str = "",
    charts: str = "",
    table: tuple[Sequence[str], Sequence[Sequence[str]]] | None = None,
) -> str:
    """The block the report opens with. ``meta`` and ``notes`` are plain text lines; ``gates``
    is gates_table()'s markup, ``charts`` charts.model_charts()'; ``table`` is the session's
    summary table (build_rows(results) when not given)."""
    out = [f"<style>{CSS}</style>", '<section class="sb" id="servebench-summary">']
    out.append("<h2>servebench summary</h2>")
    out += [f'<p class="sb-meta">{esc(line)}</p>' for line in meta]
    if gates:
        out.append("<h3>CI gates</h3>")
        out.append(gates)
    if not results:
        out.append('<p class="sb-warn">No task finished: nothing to summarise.</p></section>')
        return "".join(out)
    out.append("<h3>Figures</h3>")
    out.append(summary_table(*(table if table is not None else build_rows(results))))
    out += [f'<p class="sb-warn">{esc(n)}</p>' for n in notes]
    chart = accuracy_chart(results)
    if chart:
        out.append("<h3>Accuracy per dataset and model</h3>")
        out.append(f'<div class="sb-scroll">{chart}</div>')
    out.append(charts)
    table = comparisons_table(comparisons, results)
    if table:
        out.append("<h3>Is the difference between two models significant?</h3>")
        out.append(
            '<p class="sb-meta">Paired on the same cases: exact McNemar test for right/wrong '
            "scores, paired bootstrap otherwise; significant at the 5% level.</p>"
        )
        out.append(table)
    out.append("</section>")
    return "".join(out)


def partial_notes(results: Sequence[TaskResult]) -> list[str]:
    return [
        f"partial: {r.key} has {r.evaluated} of {len(r.case_ids)} cases evaluated; "
        f"the table shows '-'"
        for r in results
        if not r.complete and r.run_mode != "infer"
    ]


# -- one case ------------------------------------------------------------------------------

# pytest-html sorts a "sortable" column by its cells' text, compared as strings: scores have
# a fixed width and latencies are padded (HTML collapses the spaces on screen).
HEADER_CELLS = (
    '<th class="sortable" data-column-type="sbextracted">Extracted</th>',
    '<th class="sortable" data-column-type="sbreference">Reference</th>',
    '<th class="sortable" data-column-type="sbscore">Score</th>',
    '<th class="sortable" data-column-type="sblatency">Latency</th>',
    '<th data-column-type="sbtokens">Tokens (in / out)</th>',
    '<th class="sortable" data-column-type="sbfinish">Finish</th>',
)


def _score(verdict: Verdict) -> float | None:
    """The case's score; None for a case without judged samples (infer mode)."""
    return verdict.score if verdict.scores else None


def case_cells(payload: Mapping[str, Any] | None) -> list[str]:
    """The row cells for the columns of HEADER_CELLS (empty for a report without a case).
    `payload` is a case report's ``servebench`` attribute: its verdict's plain form."""
    if payload is None:
        return [
            f'<td class="col-{name}"></td>'
            for name in (
                "sbextracted",
                "sbreference",
                "sbscore",
                "sblatency",
                "sbtokens",
                "sbfinish",
            )
        ]
    verdict = Verdict.from_dict(payload)
    extracted = verdict.extracted
    votes = verdict.votes
    if len(votes) > 1:
        counts: dict[str, int] = {}
        for v in votes:
            key = "\u2205" if v is None else str(v)
            counts[key] = counts.get(key, 0) + 1
        shown = ", ".join(f"{k}\u00d7{n}" for k, n in counts.items())
    else:
        shown = "" if extracted is None else str(extracted)
    score = _score(verdict)
    latency = verdict.latency
    tokens_in, tokens_out = verdict.prompt_tokens, verdict.completion_tokens
    tokens = "" if tokens_in is None and tokens_out is None else f"{tokens_in} / {tokens_out}"
    finish = verdict.finish_reason
    finish_cls = "col-sbfinish sb-length" if finish == "length" else "col-sbfinish"
    return [
        f'<td class="col-sbextracted" title="{esc(shown)}">{esc(_short(shown))}</td>',
        f'<td class="col-sbreference" title="{esc(verdict.reference)}">'
        f"{esc(_short(verdict.reference))}</td>",
        f'<td class="col-sbscore">{"" if score is None else f"{score:.2f}"}</td>',
        f'<td class="col-sblatency">{"" if latency is None else f"{latency:9.2f} s"}</td>',
        f'<td class="col-sbtokens">{esc(tokens)}</td>',
        f'<td class="{finish_cls}">{esc(finish)}</td>',
    ]


def _pre_block(title: str, text: str, open_: bool, cls: str) -> str:
    return (
        f'<details class="{cls}"{" open" if open_ else ""}><summary>{esc(title)}</summary>'
        f"<pre>{esc(_clip(text))}</pre></details>"
    )


def case_details(payload: Mapping[str, Any]) -> str:
    """The extras block of a case: its facts, then prompt, outputs and reasonings (folded).
    `payload` is a case report's ``servebench`` attribute: its verdict's plain form and, when
    recorded, its details (session.items.CaseItem.details)."""
    verdict = Verdict.from_dict(payload)
    correct = verdict.correct
    facts: list[tuple[str, str]] = [
        ("status", verdict.status),
        ("extracted", "" if verdict.extracted is None else str(verdict.extracted)),
        ("reference", verdict.reference),
    ]
    if len(correct) > 1:
        facts.append(("samples", f"{sum(map(bool, correct))} of {len(correct)} correct"))
        facts.append(("votes", ", ".join("\u2205" if v is None else str(v) for v in verdict.votes)))
    score = _score(verdict)
    if score is not None:
        facts.append(("score", f"{score:.2f}"))
    if verdict.latency is not None:
        facts.append(("latency", f"{verdict.latency:.3f} s (mean per sample)"))
    if verdict.prompt_tokens is not None or verdict.completion_tokens is not None:
        facts.append(("tokens", f"{verdict.prompt_tokens} in / {verdict.completion_tokens} out"))
    facts.append(("finish reason", str(verdict.finish_reason)))
    flags = [
        f"{count} {name}"
        for name, count in (
            ("errors", verdict.errors),
            ("truncated", verdict.truncated),
            ("unparsable", verdict.unparsable),
        )
        if count
    ]
    if flags:
        facts.append(("flags", ", ".join(flags)))
    if verdict.error:
        facts.append(("error", verdict.error))
    out = ['<div class="sb-case"><table>']
    out += [f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts]
    out.append("</table>")
    if "prompt" in payload:
        out.append(_pre_block("prompt", str(payload.get("prompt") or ""), False, "sb-prompt"))
    outputs = payload.get("outputs")
    reasonings = payload.get("reasonings") or []
    if outputs is None:
        out.append(
            '<p class="sb-warn">Prompt and output were not recorded on this report '
            "(see the predictions in the work dir).</p>"
        )
    else:
        many = len(outputs) > 1
        for i, text in enumerate(outputs):
            which = f", sample {i + 1} of {len(outputs)}" if many else ""
            mark = ""
            if i < len(correct):
                mark = " \u2713" if correct[i] else " \u2717"
            out.append(_pre_block(f"output{which}{mark}", str(text or ""), i == 0, "sb-output"))
            if i < len(reasonings) and reasonings[i]:
                out.append(
                    _pre_block(f"reasoning{which}", str(reasonings[i]), False, "sb-reasoning")
                )
    out.append("</div>")
    return "".join(out)


# -- the plugin ----------------------------------------------------------------------------


class HtmlReport:
    """pytest-html hooks for servebench (controller only). ``outcome`` is the session's
    SessionOutcome: at first the empty one (what was selected, where), replaced at the end
    of the controller's sessionfinish, before pytest-html writes the report."""

    def __init__(self, config: pytest.Config, outcome: SessionOutcome, node_prefix: str):
        self.config = config
        self.outcome = outcome
        self.node_prefix = node_prefix  # the node ids of servebench's items start with it
        self.copy_path: Path | None = None
        self.copy_error: str | None = None

    # -- title, header, rows ---------------------------------------------------------------
    @pytest.hookimpl(optionalhook=True)
    def pytest_html_report_title(self, report: Any) -> None:
        models = ", ".join(dict.fromkeys(self.outcome.models))
        datasets = ", ".join(dict.fromkeys(self.outcome.datasets))
        report.title = f"servebench: {models} on {datasets}"

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_header(self, cells: list[Any]) -> None:
        cells[2:2] = list(HEADER_CELLS)

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_row(self, report: Any, cells: list[Any]) -> None:
        payload = getattr(report, "servebench", None)
        nodeid = str(getattr(report, "nodeid", ""))
        if payload is not None or nodeid.startswith(self.node_prefix + "/"):
            # pytest-html puts the test id into the cell unescaped
            when = getattr(report, "when", "call")
            test_id = nodeid if when == "call" else f"{nodeid}::{when}"
            for i, cell in enumerate(cells):
                if isinstance(cell, str) and cell.startswith('<td class="col-testId">'):
                    cells[i] = f'<td class="col-testId">{esc(test_id)}</td>'
        cells[2:2] = case_cells(payload if isinstance(payload, dict) else None)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        payload = getattr(report, "servebench", None)
        if not isinstance(payload, dict):
            return
        from pytest_html import extras

        report.extras = [*getattr(report, "extras", []), extras.html(case_details(payload))]

    # -- the summary -----------------------------------------------------------------------
    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_summary(
        self, prefix: list[str], summary: list[str], postfix: list[str], session: Any
    ) -> None:
        outcome = self.outcome
        gates = self.config.pluginmanager.get_plugin("servebench-gates")
        prefix.append(
            summary_section(
                outcome.results,
                outcome.comparisons,
                self._meta(),
                self._notes(),
                gates_table(gates.outcomes, gates.decision) if gates is not None else "",
                model_charts(outcome.results, outcome.predictions),
                outcome.table,
            )
        )

    def _meta(self) -> list[str]:
        lines = [f"work dir: {self.outcome.work_dir}", f"mode: {self.outcome.mode}"]
        if self.copy_target() is not None:
            lines.append(f"copy of this report: {self.copy_target()}")
        return lines

    def _notes(self) -> list[str]:
        outcome = self.outcome
        notes = partial_notes(outcome.results)
        if outcome.engine_fatal:
            notes.append(f"aborted: {outcome.engine_fatal}")
        if outcome.interrupted:
            notes.append("interrupted: the run did not finish")
        if outcome.finish_error:
            notes.append(f"error: {outcome.finish_error}")
        return notes

    # -- the copy in the work dir ----------------------------------------------------------
    def report_path(self) -> Path | None:
        from pytest_html.basereport import BaseReport

        for other in self.config.pluginmanager.get_plugins():
            if isinstance(other, BaseReport):
                path = getattr(other, "_report_path", None)
                if path is not None:
                    return Path(path)
        raw = self.config.getoption("htmlpath", None)
        if not raw:
            return None
        import os

        return Path.cwd() / Path(os.path.expandvars(raw)).expanduser()

    def copy_target(self) -> Path | None:
        return self.outcome.work_dir / "summary" / f"report_{self.outcome.stamp}.html"

    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> Generator[None, None, None]:
        # trylast: the innermost wrapper, so the copy is made after pytest-html's trylast
        # sessionfinish wrote the report and before the terminal summary is printed.
        result = yield
        source = self.report_path()
        target = self.copy_target()
        if source is None or target is None or not source.is_file():
            return result
        try:
            write_self_contained(source, target)
            self.copy_path = target
        except OSError as exc:
            self.copy_error = f"{target}: {exc.strerror or exc}"
        return result

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.copy_path is not None:
            terminalreporter.write_line(f"html report: {self.copy_path}")
        elif self.copy_error:
            terminalreporter.write_line(f"html report copy failed: {self.copy_error}", red=True)


_CSS_LINK = re.compile(r'<link href="([^"<>]+)" rel="stylesheet" type="text/css"\s*/?>')


def write_self_contained(source: Path, target: Path) -> None:
    """Copy a pytest-html report; a linked stylesheet (the default, without
    --self-contained-html) is inlined so the copy needs no assets/ folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    text = source.read_text(encoding="utf-8")
    match = _CSS_LINK.search(text)
    if match is None:
        shutil.copyfile(source, target)
        return
    css_file = source.parent / html.unescape(match.group(1))
    try:
        css = css_file.read_text(encoding="utf-8").replace("</", "<\\/")
    except OSError:
        shutil.copyfile(source, target)
        return
    tmp = target.with_suffix(".html.tmp")
    tmp.write_text(
        text[: match.start()] + f'<style type="text/css">{css}</style>' + text[match.end() :],
        encoding="utf-8",
    )
    tmp.replace(target)


def html_active(config: pytest.Config) -> bool:
    """pytest-html is installed, not disabled (-p no:html), and a report is asked for."""
    return (
        config.pluginmanager.hasplugin("html")
        and bool(config.getoption("htmlpath", None))
        and not hasattr(config, "workerinput")
    )


def register_html(
    config: pytest.Config, outcome: SessionOutcome, node_prefix: str
) -> HtmlReport | None:
    """Register the pytest-html integration when it applies (call from pytest_configure with
    the session's empty outcome; hand the final one over at the end: ``report.outcome``)."""
    if not html_active(config):
        return None
    existing = config.pluginmanager.get_plugin(PLUGIN_NAME)
    if existing is not None:
        return existing
    report = HtmlReport(config, outcome, node_prefix)
    config.pluginmanager.register(report, PLUGIN_NAME)
    return report
