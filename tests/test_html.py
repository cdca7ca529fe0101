"""pytest-html reports: summary table, accuracy chart, escaped case details, JUnit properties,
and a check in headless Chromium that model output cannot run script in the report."""

from __future__ import annotations

import html as htmllib
import itertools
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import truth_fraction

from pytest_servebench.report.html_report import (
    HEADER_CELLS,
    HtmlReport,
    accuracy_chart,
    case_cells,
    case_details,
    esc,
    summary_section,
    write_self_contained,
)
from pytest_servebench.report.outcome import SessionOutcome
from pytest_servebench.report.summary import comparison_lines, comparisons
from pytest_servebench.scoring.aggregate import TaskResult
from pytest_servebench.scoring.verdict import Verdict
from pytest_servebench.testing.mockserver import MockServer, Reply, dataset_responder

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

CHROMIUM = Path("/usr/bin/chromium")
EVIL = "<script>document.title='PWNED'</script><img src=x onerror=\"document.title='PWNED'\">"


def task(model: str, dataset: str, right: int, n: int = 10, complete: bool = True) -> TaskResult:
    ids = [f"q{i}" for i in range(n)]
    done = ids if complete else ids[: n // 2]
    cases = {
        c: Verdict.from_dict(
            {
                "status": "passed" if i < right else "failed",
                "scores": [1.0 if i < right else 0.0],
                "correct": [i < right],
                "votes": ["1"],
                "errors": 0,
                "truncated": int(i == n - 1),
                "unparsable": 0,
            }
        )
        for i, c in enumerate(done)
    }
    return TaskResult(
        key=f"{model}/{dataset}",
        model=model,
        model_name=model,
        dataset=dataset,
        dataset_name=dataset,
        version="abc123",
        mode="gen",
        run_mode="all",
        samples=1,
        case_ids=ids,
        cases=cases,
    )


def payload(**extra) -> dict:
    return {
        "task": "vllm_chat/demo_gsm8k",
        "case": "q0000",
        "status": "failed",
        "scores": [0.0],
        "correct": [False],
        "votes": [EVIL],
        "extracted": EVIL,
        "reference": "<b>18</b>",
        "errors": 0,
        "truncated": 1,
        "unparsable": 0,
        "error": None,
        "latency": 0.123,
        "prompt_tokens": 12,
        "completion_tokens": 34,
        "finish_reason": "length",
        "prompt": "Question: " + EVIL,
        "outputs": [EVIL + "\nanswer: 3"],
        "reasonings": ["thinking " + EVIL],
        **extra,
    }


def no_markup_from(text: str) -> None:
    """None of EVIL's markup survived as markup."""
    assert "<script" not in text
    assert "<img" not in text
    assert "&lt;script&gt;document.title=&#x27;PWNED&#x27;&lt;/script&gt;" in text


# -- pieces --------------------------------------------------------------------------------


def test_esc():
    assert esc(None) == ""
    assert esc('<a href="x">&') == "&lt;a href=&quot;x&quot;&gt;&amp;"


def test_summary_section_has_every_metric_model_and_count():
    results = [task("m1", "d1", 6), task("m2", "d1", 9), task("m1", "d2", 3)]
    page = summary_section(results, comparisons(results), ["work dir: /x"], ["a note"])
    table = re.search(r'<table class="sb-table" id="sb-summary-table">.*?</table>', page).group(0)
    header = re.findall(r"<th>(.*?)</th>", table)
    assert header == ["dataset", "version", "metric", "mode", "m1", "m2"]
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in re.findall(r"<tr class.*?</tr>", table)]
    assert ["d1", "abc123", "accuracy", "gen", "60.00", "90.00"] in rows
    assert ["d1", "abc123", "truncated", "gen", "1", "1"] in rows
    assert ["d2", "abc123", "accuracy", "gen", "30.00", "-"] in rows
    assert {r[2] for r in rows} == {"accuracy", "errors", "truncated", "unparsable"}
    assert 'class="sb-num sb-bad">1</td>' in table  # non-zero counts stand out
    assert '<svg xmlns="http://www.w3.org/2000/svg" id="sb-accuracy-chart"' in page
    assert '<table class="sb-table" id="sb-comparisons">' in page
    assert '<p class="sb-meta">work dir: /x</p>' in page and "a note" in page


def test_chart_bars_values_and_escaping():
    results = [task("m1", "d1", 6), task("m<i>2", "d1", 9), task("m1", "d<2>", 3, complete=False)]
    svg = accuracy_chart(results)
    bars = re.findall(
        r'<rect class="sb-bar"[^>]*data-model="([^"]*)" data-dataset="([^"]*)" '
        r'data-value="([^"]*)"',
        svg,
    )
    assert bars == [("m1", "d1", "60.00"), ("m&lt;i&gt;2", "d1", "90.00")]
    assert "<i>" not in svg and "d<2>" not in svg
    assert "n/a<title>m1 on d&lt;2&gt;: partial: 5 of 10 cases evaluated</title>" in svg
    assert "<script" not in svg and "href" not in svg and "style=" not in svg
    assert accuracy_chart([]) == ""
    assert accuracy_chart([task("m1", "d1", 6, complete=False)]) == ""


def test_comparisons_in_html_and_terminal_lines():
    results = [task("a", "d1", 10, n=30), task("b", "d1", 0, n=30)]
    comps = comparisons(results)
    page = summary_section(results, comps)
    assert "significant (p &lt; 0.05)" in page
    assert "exact McNemar" in page
    lines = comparison_lines(comps)
    assert lines[0].startswith("paired comparisons")
    assert lines[1].startswith("  d1: a vs b: +33.33 points, McNemar p=")
    assert lines[1].endswith("SIGNIFICANT (30 cases)")
    assert comparison_lines([]) == []


def test_case_details_escape_everything():
    text = case_details(payload())
    no_markup_from(text)
    assert "&lt;b&gt;18&lt;/b&gt;" in text
    assert '<details class="sb-prompt"><summary>prompt</summary>' in text
    assert '<details class="sb-output" open><summary>output \u2717</summary>' in text
    assert '<details class="sb-reasoning"><summary>reasoning</summary>' in text  # folded
    assert "<th>finish reason</th><td>length</td>" in text
    assert "<th>tokens</th><td>12 in / 34 out</td>" in text
    assert "1 truncated" in text


def test_case_details_without_recorded_outputs():
    bare = {k: v for k, v in payload().items() if k not in ("prompt", "outputs", "reasonings")}
    assert "were not recorded" in case_details(bare)


def test_case_cells_match_header_and_escape():
    cells = case_cells(payload())
    assert len(cells) == len(HEADER_CELLS) == len(case_cells(None))
    joined = "".join(cells)
    assert "<script" not in joined and "<img" not in joined and "<b>" not in joined
    assert '<td class="col-sbscore">0.00</td>' in cells
    assert '<td class="col-sblatency">     0.12 s</td>' in cells
    assert '<td class="col-sbtokens">12 / 34</td>' in cells
    assert '<td class="col-sbfinish sb-length">length</td>' in cells


def test_row_hook_escapes_test_id_and_inserts_columns():
    report = SimpleNamespace(
        nodeid="servebench/m/d::<img src=x onerror=alert(1)>", when="call", servebench=payload()
    )
    cells = [
        '<td class="col-result">Failed</td>',
        f'<td class="col-testId">{report.nodeid}</td>',
        '<td class="col-duration">1 ms</td>',
        '<td class="col-links"></td>',
    ]
    html_report = HtmlReport(
        None,  # type: ignore[arg-type]
        SessionOutcome(Path("/w"), "s", "all", ("m",), ("d",)),
        "servebench",
    )
    html_report.pytest_html_results_table_row(report, cells)
    assert cells[1] == (
        '<td class="col-testId">servebench/m/d::&lt;img src=x onerror=alert(1)&gt;</td>'
    )
    assert len(cells) == 4 + len(HEADER_CELLS)
    assert cells[2].startswith('<td class="col-sbextracted"')
    header = ["<th>Result</th>", "<th>Test</th>", "<th>Duration</th>", "<th>Links</th>"]
    html_report.pytest_html_results_table_header(header)
    assert header[2:-2] == list(HEADER_CELLS)


def _case_reports(nodeid: str) -> list[pytest.TestReport]:
    """A passed case's setup, call and teardown reports, as a worker serializes them."""
    verdict = {"servebench": payload(status="passed", scores=[1.0], correct=[True])}
    return [
        pytest.TestReport(
            nodeid=nodeid,
            location=("m/d", None, nodeid),
            keywords={nodeid.rpartition("::")[2]: 1, "d": 1},
            outcome="passed",
            longrepr=None,
            when=when,
            user_properties=[("score", "1.0")],
            **(verdict if when == "call" else {}),
        )
        for when in ("setup", "call", "teardown")
    ]


def test_lean_trim_waits_for_each_case_of_interleaved_workers():
    """The controller of `-n 2` logs the reports of two workers' cases in any interleaving.
    pytest-html builds a case's rows, from all its reports, when its teardown is logged; the
    lean path drops the payload once the case is finished (logfinish). In every interleaving
    each row gets its cells and each report its JUnit properties, and every payload is gone
    once its case finished. (The lean path once dropped the payloads of every case logged so
    far at any case's finish: B's row came out empty whenever A finished between B's call and
    B's teardown.)"""
    from pytest_servebench.session.lean import PerfPlugin

    html_report = HtmlReport(
        None,  # type: ignore[arg-type]
        SessionOutcome(Path("/w"), "s", "all", ("m",), ("d",)),
        "servebench",
    )
    cases = ("servebench/m/d::q1_a", "servebench/m/d::q2_b")
    steps = ("setup", "call", "teardown", "finish")
    interleavings = [  # which case takes each of the 8 steps, each case's steps in order
        order
        for order in itertools.product((0, 1), repeat=2 * len(steps))
        if order.count(0) == len(steps)
    ]
    assert len(interleavings) == 70
    for order in interleavings:
        lean = PerfPlugin(lambda item: True, "servebench/")
        reports = [_case_reports(nodeid) for nodeid in cases]
        taken = [0, 0]  # steps each case has taken
        rows: dict[str, str] = {}
        properties: dict[str, list[tuple[str, str]]] = {}
        for case in order:
            step, taken[case] = taken[case], taken[case] + 1
            if steps[step] == "finish":
                lean.pytest_runtest_logfinish(cases[case])
                continue
            lean.pytest_runtest_logreport(reports[case][step])
            if steps[step] == "teardown":  # what pytest-html does then, for each report
                for each in reports[case]:
                    cells = ['<td class="col-result">Passed</td>', "<td>id</td>"]
                    html_report.pytest_html_results_table_row(each, cells)
                    rows[f"{each.nodeid}::{each.when}"] = "".join(cells)
                    # junitxml reads the teardown's (and a failed call's) properties then
                    properties[f"{each.nodeid}::{each.when}"] = list(each.user_properties)
        for nodeid in cases:
            assert '<td class="col-sbscore">1.00</td>' in rows[f"{nodeid}::call"], order
            for when in ("setup", "call", "teardown"):
                assert properties[f"{nodeid}::{when}"] == [("score", "1.0")], (order, when)
        assert not any(hasattr(r, "servebench") for case in reports for r in case), order
        assert all(r.user_properties == () for case in reports for r in case), order


def test_write_self_contained_inlines_css(tmp_path):
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "style.css").write_text("body { color: red; }")
    source = tmp_path / "report.html"
    source.write_text(
        '<html><head><link href="assets/style.css" rel="stylesheet" type="text/css"/></head></html>'
    )
    target = tmp_path / "out" / "copy.html"
    write_self_contained(source, target)
    assert target.read_text() == (
        '<html><head><style type="text/css">body { color: red; }</style></head></html>'
    )


# -- end to end ----------------------------------------------------------------------------


def evil_responder(records: list[dict]):
    """Answers like the demo model, each output and reasoning wrapped in script fragments."""
    base = dataset_responder(records, p_correct=0.6, seed=1)

    def respond(request):
        reply = base(request)
        text = reply.content if isinstance(reply, Reply) else reply
        return Reply(content=f"{EVIL}\n{text}", reasoning=f"thinking {EVIL}")

    return respond


def sb_args(url: str, *extra: str, models: tuple[str, ...] = ("vllm_chat",)) -> list[str]:
    args = ["--sb-models", *models, "--sb-datasets", "demo_gsm8k", "--sb-work-dir", "out"]
    for model in models:
        args += ["--sb-set", f"{model}.base_url={url}"]
    return [*args, "--tb=short", *extra]


def report_data(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    blob = re.search(r'<div id="data-container" data-jsonblob="([^"]*)"', text).group(1)
    return json.loads(htmllib.unescape(blob))


def run_html(pytester: pytest.Pytester, url: str, *extra: str, **kw) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*sb_args(url, "--html", "report.html", *extra, **kw))


@pytest.fixture
def evil_server(demo_records):
    with MockServer(evil_responder(demo_records)) as server:
        yield server


def test_html_report_summary_rows_and_details(pytester, evil_server, demo_records):
    result = run_html(pytester, evil_server.base_url)
    truth = 100 * truth_fraction(demo_records, 0.6, 1)
    assert result.ret == 1
    page = (pytester.path / "report.html").read_text(encoding="utf-8")
    assert '<section class="sb" id="servebench-summary">' in page
    assert '<title id="head-title">servebench: vllm_chat on demo_gsm8k</title>' in page
    summary = page[page.index('<section class="sb"') : page.index("</section>")]
    assert f'<td class="sb-num">{truth:.2f}</td>' in summary
    for count in ("errors", "truncated", "unparsable"):
        assert f"<td>{count}</td>" in summary
    assert 'id="sb-accuracy-chart"' in summary
    assert page.count("<script") == 1  # pytest-html's own app.js, nothing from the model
    tests = report_data(pytester.path / "report.html")["tests"]
    assert len(tests) == 50
    for rows in tests.values():
        row = rows[-1]
        cells = "".join(row["resultsTableRow"])
        assert "<script" not in cells and "<img" not in cells
        assert 'class="col-sbscore"' in cells and 'class="col-sbtokens"' in cells
        details = [e["content"] for e in row["extras"] if e["format_type"] == "html"]
        assert len(details) == 1
        no_markup_from(details[0])
        assert "Question: " in details[0] and "thinking &lt;script&gt;" in details[0]
        assert "&lt;script&gt;" in row["log"] or row["result"] == "Passed"
    copy = next((pytester.path / "out").glob("*/summary/report_*.html"))
    text = copy.read_text(encoding="utf-8")
    assert '<link href="assets/style.css"' not in text and '<style type="text/css">' in text
    result.stdout.fnmatch_lines([f"html report: {copy}"])


def _cell_texts(row: dict) -> dict[str, str]:
    cells = {}
    for cell in row["resultsTableRow"]:
        match = re.match(r'<td class="col-(sb\w+)[^"]*"[^>]*>(.*)</td>$', cell, re.S)
        if match:
            cells[match.group(1)] = htmllib.unescape(match.group(2))
    return cells


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "pytest-protocol"])
def test_html_rows_match_the_results_json_cell_by_cell(pytester, gsm8k_server, lean):
    """Every case row shows its extracted answer, reference, score, latency, tokens and finish
    reason, equal to the results file; the same with the lean protocol and with pytest's."""
    args = [] if lean else ["-p", "no:servebench-protocol"]
    run_html(pytester, gsm8k_server.base_url, "--sb-limit", "12", *args)
    data = report_data(pytester.path / "report.html")
    results = next((pytester.path / "out").glob("*/results/vllm_chat/demo_gsm8k.json"))
    cases = {c["case"]: c for c in json.loads(results.read_text())["cases"]}
    assert len(cases) == 12
    rows = {}
    for test_rows in data["tests"].values():
        for row in test_rows:
            test_id = re.search(r'col-testId">([^<]*)<', "".join(row["resultsTableRow"])).group(1)
            if "::" in test_id and not test_id.endswith(("::setup", "::teardown")):
                rows[test_id.rpartition("::")[2]] = row
    assert sorted(rows) == sorted(cases)
    for case_id, case in cases.items():
        cells = _cell_texts(rows[case_id])
        score = sum(case["scores"]) / len(case["scores"])
        assert cells["sbextracted"] == ("" if case["extracted"] is None else str(case["extracted"]))
        assert cells["sbreference"] == str(case["reference"])
        assert float(cells["sbscore"]) == pytest.approx(score, abs=0.005)
        assert float(cells["sblatency"].removesuffix(" s")) == pytest.approx(
            case["latency"], abs=0.005
        )
        assert cells["sbtokens"] == f"{case['prompt_tokens']} / {case['completion_tokens']}"
        assert cells["sbfinish"] == case["finish_reason"]
        # a sortable column's value is in the row's data, as pytest-html sorts on it
        assert rows[case_id]["sbscore"] == cells["sbscore"]


def test_html_report_with_xdist(pytester, evil_server):
    result = run_html(
        pytester,
        evil_server.base_url,
        "-n",
        "2",
        "-p",
        "no:benchmark",
        "--self-contained-html",
        models=("vllm_chat", "vllm_stream_chat"),
    )
    assert result.ret == 1
    data = report_data(pytester.path / "report.html")
    assert len(data["tests"]) == 100
    for rows in data["tests"].values():
        details = [e["content"] for e in rows[-1]["extras"] if e["format_type"] == "html"]
        no_markup_from(details[0])  # the payload travelled from the worker
    page = (pytester.path / "report.html").read_text(encoding="utf-8")
    assert page.count('<rect class="sb-bar"') == 2
    assert '<table class="sb-table" id="sb-comparisons">' in page
    copy = next((pytester.path / "out").glob("*/summary/report_*.html"))
    assert copy.read_bytes() == (pytester.path / "report.html").read_bytes()


def _case_rows(report: Path) -> dict[str, dict[str, str]]:
    """The servebench cells of every case's row (its call, or its setup when that concluded)."""
    rows: dict[str, dict[str, str]] = {}
    for test_rows in report_data(report)["tests"].values():
        for row in test_rows:
            test_id = re.search(r'col-testId">([^<]*)<', "".join(row["resultsTableRow"])).group(1)
            if not test_id.endswith("::teardown"):
                rows.setdefault(test_id.removesuffix("::setup"), {}).update(
                    {k: v for k, v in _cell_texts(row).items() if v}
                )
    return rows


def test_html_rows_with_xdist_are_all_filled_as_without_the_lean_path(pytester, gsm8k_server):
    """Under -n 2 the controller gets the reports of two workers' cases interleaved; every case
    row still shows the cells of its results, and every JUnit testcase its properties, as with
    servebench's lean path switched off (which once trimmed the reports of one worker's case when the other's finished, leaving
    ~5% of the rows empty, different ones each run)."""
    models = ("vllm_chat", "vllm_stream_chat", "vllm_completions")
    for lean in (True, False):
        args = ["-n", "2", "-p", "no:benchmark", "-p", "no:cacheprovider"]
        args += ["--junitxml", "junit.xml", *([] if lean else ["-p", "no:servebench-perf"])]
        run_html(pytester, gsm8k_server.base_url, *args, models=models)
        rows = _case_rows(pytester.path / "report.html")
        junit = {
            f"{case.get('classname').replace('.', '/')}::{case.get('name')}": {
                p.get("name"): p.get("value") for p in case.findall("properties/property")
            }
            for case in ET.parse(pytester.path / "junit.xml").getroot().iter("testcase")
        }
        assert len(rows) == 50 * len(models)
        empty = sorted(case for case, cells in rows.items() if "sbscore" not in cells)
        assert not empty, f"{len(empty)} rows without servebench cells (lean={lean}): {empty[:5]}"
        for results in (pytester.path / "out").glob("*/results/*/*.json"):
            task = f"servebench/{results.parent.name}/{results.stem}"
            for case in json.loads(results.read_text())["cases"]:
                cells = rows.pop(f"{task}::{case['case']}")
                props = junit.pop(f"{task}::{case['case']}")
                assert props["score"] == str(float(case["scores"][0]))
                assert props["extracted"] == str(case["extracted"])
                assert props["reference"] == case["reference"]
                assert cells.get("sbextracted", "") == str(case["extracted"] or "")
                assert cells["sbreference"] == str(case["reference"])
                assert cells["sbtokens"] == f"{case['prompt_tokens']} / {case['completion_tokens']}"
                assert float(cells["sbscore"]) == sum(case["scores"]) / len(case["scores"])
        assert not rows and not junit  # every row and testcase was a case of the results
        shutil.rmtree(pytester.path / "out")


def test_without_pytest_html(pytester, gsm8k_server):
    result = pytester.runpytest_subprocess(
        *sb_args(gsm8k_server.base_url, "-p", "no:html", "--sb-limit", "5")
    )
    assert result.ret in (0, 1)
    result.stdout.fnmatch_lines(["*servebench summary*"])
    assert not list((pytester.path / "out").glob("*/summary/report_*.html"))
    assert "html report" not in result.stdout.str()


def test_junit_properties(pytester, gsm8k_server, demo_records):
    result = pytester.runpytest_subprocess(
        *sb_args(gsm8k_server.base_url, "--junitxml", "junit.xml", "--sb-limit", "10")
    )
    assert result.ret in (0, 1)
    root = ET.parse(pytester.path / "junit.xml").getroot()
    cases = root.findall(".//testcase")
    assert len(cases) == 10
    results = json.loads(next((pytester.path / "out").glob("*/results/*/*.json")).read_text())
    verdicts = {c["case"]: c for c in results["cases"]}
    for case in cases:
        props = {p.get("name"): p.get("value") for p in case.findall("properties/property")}
        verdict = verdicts[case.get("name")]
        assert props["score"] == str(float(verdict["scores"][0]))
        assert props["extracted"] == str(verdict["extracted"])
        assert props["reference"] == verdict["reference"]
        failed = case.find("failure") is not None
        assert failed == (verdict["status"] == "failed")


# -- a real browser --------------------------------------------------------------------------


def chromium_dom(page: Path, profile: Path) -> str:
    """The DOM after load (scripts and image error handlers have run), from headless Chromium."""
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def title_of(dom: str) -> str:
    match = re.search(r"<title[^>]*>(.*?)</title>", dom, re.S)
    return match.group(1) if match else ""


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="headless Chromium not installed (/usr/bin/chromium): apt-get install -y chromium",
)
def test_report_in_headless_chromium_runs_no_injected_script(pytester, evil_server, tmp_path):
    # Control: the same fragments unescaped do change the title in this browser, so the check
    # below cannot pass for want of a browser that runs script.
    control = tmp_path / "control.html"
    control.write_text(f"<html><head><title>control</title></head><body>{EVIL}</body></html>")
    assert title_of(chromium_dom(control, tmp_path / "profile0")) == "PWNED"

    result = run_html(pytester, evil_server.base_url, "--sb-limit", "12")
    assert result.ret == 1
    copy = next((pytester.path / "out").glob("*/summary/report_*.html"))
    for i, page in enumerate((pytester.path / "report.html", copy)):
        dom = chromium_dom(page, tmp_path / f"profile{i + 1}")
        assert title_of(dom) == "servebench: vllm_chat on demo_gsm8k"
        assert "PWNED" not in title_of(dom)
        # the summary table and the chart are there
        assert 'id="sb-summary-table"' in dom and "<td>accuracy</td>" in dom
        assert re.search(r'<svg[^>]*id="sb-accuracy-chart"', dom)
        assert dom.count('<rect class="sb-bar"') == 1
        # pytest-html's script rendered the rows, with our columns and case details
        assert dom.count('class="col-sbscore"') >= 12
        assert dom.count('class="sb-case"') >= 1
        # the fragments are text, not elements
        assert "&lt;script&gt;document.title='PWNED'&lt;/script&gt;" in dom
        assert '<img src="x"' not in dom and "<script>document.title" not in dom
        assert dom.count("<script") == 1  # pytest-html's own
