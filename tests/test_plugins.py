"""The lean run protocol is invisible to real plugins: the same cases through it and through
pytest's own protocol give every reporting hook the same reports, phase by phase; plugins that
run a case themselves (pytest-rerunfailures) get pytest's protocol and work."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from conftest import completion_requests, summary_json, truth_fraction
from pytest_servebench.testing.mockserver import MockServer, dataset_responder, is_correct

# Records what a reporting plugin sees: each report as it is logged, and (as pytest-html does)
# every report of the case again when its teardown report is logged. Also whether the lean
# protocol ran the cases, so that a comparison cannot pass by both runs taking pytest's.
RECORDER = r"""
import json, os
import pytest

LOG = open(os.environ["SB_RECORD"], "a")
_seen = {}

def pytest_configure(config):
    if hasattr(config, "workerinput"):  # xdist: what the controller receives is recorded
        global LOG
        LOG = open(os.devnull, "w")

def _view(report):
    return {
        "nodeid": report.nodeid,
        "when": report.when,
        "outcome": report.outcome,
        "longrepr": report.longreprtext,
        "sections": [list(s) for s in report.sections],
        "user_properties": [[k, str(v)] for k, v in report.user_properties],
        "duration": report.duration > 0 and report.stop >= report.start,
        "keywords": sorted(report.keywords),
        "payload": sorted(getattr(report, "servebench", None) or {}),
        "location": list(report.location),
        "caplog": report.caplog, "capstdout": report.capstdout,
    }

@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report):
    LOG.write(json.dumps(["logreport", _view(report)]) + "\n")
    _seen.setdefault(report.nodeid, []).append(report)
    if report.when == "teardown":
        LOG.write(json.dumps(["at-teardown", [_view(r) for r in _seen.pop(report.nodeid)]]) + "\n")

def pytest_runtest_logstart(nodeid, location):
    LOG.write(json.dumps(["logstart", nodeid, list(location)]) + "\n")

def pytest_runtest_logfinish(nodeid, location):
    LOG.write(json.dumps(["logfinish", nodeid, list(location)]) + "\n")

@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    proto = session.config.pluginmanager.get_plugin("servebench-protocol")
    lean = bool(proto is not None and proto.enabled and proto.blocked_by == [])
    LOG.write(json.dumps(["lean", lean]) + "\n")
    LOG.close()
"""

TINY = "".join(f'{{"question": "q{i}", "answer": "#### {i}"}}\n' for i in range(8))


def _setup(pytester: pytest.Pytester) -> None:
    from conftest import write_suite

    write_suite(
        pytester.path,
        "tiny",
        "kind: dataset\npath: tiny.jsonl\nanswer_field: answer\n"
        "prompt: 'Question: {question}'\nevaluator: {type: gsm8k}\n",
    )
    (pytester.path / "datasets").mkdir(exist_ok=True)
    (pytester.path / "datasets" / "tiny.jsonl").write_text(TINY)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makeconftest(RECORDER)


def _answer(request) -> str:
    """Right for even questions, wrong for odd ones; q7 gets no answer at all (a 500)."""
    n = int(request.prompt_text.rsplit("q", 1)[1].split()[0])
    return f"answer: {n if n % 2 == 0 else n + 1}"


def _fail_q7(request, attempt):
    return "500" if request.prompt_text.rstrip().endswith("q7") else None


def _run(pytester, monkeypatch, url: str, name: str, lean: bool, *extra: str) -> list:
    record = pytester.path / f"{name}.jsonl"
    monkeypatch.setenv("SB_RECORD", str(record))
    args = [
        "--sb-models=vllm_chat",
        "--sb-datasets=tiny",
        f"--sb-set=vllm_chat.base_url={url}",
        "--sb-set=vllm_chat.model=m",
        "--sb-set=vllm_chat.retries=0",
        "--sb-work-dir=out",
        *([] if lean else ["-p", "no:servebench-protocol"]),
        *extra,
    ]
    pytester.runpytest_subprocess(*args)
    return [json.loads(line) for line in record.read_text().splitlines()]


def _comparable(events: list) -> tuple[list, bool]:
    lean = [e[1] for e in events if e[0] == "lean"]
    return [e for e in events if e[0] != "lean"], bool(lean and lean[-1])


PLUGIN_RUNS = {
    "junit-html": ("--junitxml=r.xml", "--html=r.html"),
    "randomly": ("-p", "randomly", "--randomly-seed=7"),
    "timeout": ("--timeout=60",),
    "tb-long-and-verbose": ("-v", "--tb=long", "-rA"),
}


@pytest.mark.parametrize("plugins", list(PLUGIN_RUNS), ids=list(PLUGIN_RUNS))
def test_plugins_see_the_same_reports_through_the_lean_protocol(pytester, monkeypatch, plugins):
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)  # pytest-randomly may run
    _setup(pytester)
    extra = PLUGIN_RUNS[plugins]
    if plugins != "randomly":
        extra = ("-p", "no:randomly", *extra)
    with MockServer(_answer, faults=_fail_q7) as srv:
        lean, lean_used = _comparable(_run(pytester, monkeypatch, srv.base_url, "a", True, *extra))
        own, own_used = _comparable(_run(pytester, monkeypatch, srv.base_url, "b", False, *extra))
    assert lean_used and not own_used
    assert lean == own
    outcomes = {
        (e[1]["nodeid"], e[1]["when"]): e[1]["outcome"] for e in lean if e[0] == "logreport"
    }
    assert sorted(outcomes.values()).count("failed") == 4  # q1, q3, q5 wrong; q7 setup error
    teardown_views = [e[1] for e in lean if e[0] == "at-teardown"]
    assert len(teardown_views) == 8
    # at teardown the call report still carries its verdict and JUnit properties
    calls = [r for view in teardown_views for r in view if r["when"] == "call"]
    assert len(calls) == 7 and all(r["payload"] and r["user_properties"] for r in calls)


def test_xdist_receives_the_same_reports_through_the_lean_protocol(pytester, monkeypatch):
    _setup(pytester)
    with MockServer(_answer, faults=_fail_q7) as srv:
        runs = [
            _comparable(_run(pytester, monkeypatch, srv.base_url, n, lean, "-n", "2"))
            for n, lean in (("a", True), ("b", False))
        ]
    (lean, _), (own, _) = runs

    def by_case(events):  # the controller sees the workers' reports; order between tasks varies
        return sorted(re.sub(r"\[gw\d+\]", "[gw]", json.dumps(e, sort_keys=True)) for e in events)

    assert by_case(lean) == by_case(own)
    assert sum(e[0] == "logreport" for e in lean) == 23  # q7's setup error has no call


def test_exitfirst_and_last_failed_see_the_same_runs(pytester, monkeypatch):
    _setup(pytester)
    with MockServer(_answer, faults=_fail_q7) as srv:
        seen = {}
        for name, lean in (("a", True), ("b", False)):
            shutil.rmtree(pytester.path / ".pytest_cache", ignore_errors=True)
            first = _comparable(_run(pytester, monkeypatch, srv.base_url, name + "x", lean, "-x"))
            again = _comparable(
                _run(pytester, monkeypatch, srv.base_url, name + "lf", lean, "--lf", "--sb-resend")
            )
            seen[name] = (first[0], again[0])
    assert seen["a"] == seen["b"]
    first, again = seen["a"]
    assert [e[1]["outcome"] for e in first if e[0] == "logreport"] == [
        "passed",
        "passed",
        "passed",
        "passed",
        "failed",
        "passed",
    ]  # q0 passes, q1 is wrong: -x stops there
    assert {e[1]["nodeid"].rpartition("_")[0] for e in again if e[0] == "logreport"} == {
        "servebench/vllm_chat/tiny::q0001"
    }


def test_reruns_reask_only_failed_requests_and_count_once(pytester, demo_records):
    """--reruns 2 against a server that fails some first attempts: no internal error; a wrong
    answer is judged again without a new request, a failed request is sent again; every case
    counts once in the summary, which agrees with pytest's count."""
    flaky = {r["question"][:40] for r in demo_records[:5]}

    def first_attempt_fails(request, attempt):
        return "500" if attempt == 0 and any(q in request.prompt_text for q in flaky) else None

    responder = dataset_responder(demo_records, p_correct=0.6, seed=1)
    with MockServer(responder, faults=first_attempt_fails) as srv:
        result = pytester.runpytest_subprocess(
            "--sb-models=vllm_chat",
            "--sb-datasets=demo_gsm8k",
            f"--sb-set=vllm_chat.base_url={srv.base_url}",
            "--sb-set=vllm_chat.retries=0",
            "--sb-work-dir=out",
            "--reruns",
            "2",
        )
        sent = completion_requests(srv)
    out = result.stdout.str()
    assert "KeyError" not in out and "INTERNALERROR" not in out
    outcomes = result.parseoutcomes()
    wrong = round(50 * (1 - truth_fraction(demo_records, 0.6, 1)))
    assert outcomes.get("errors", 0) == 0
    assert outcomes["failed"] == wrong and outcomes["passed"] == 50 - wrong
    # a wrong answer runs three times; a failed request that then comes right, twice
    flaky_right = sum(is_correct(r["question"], 0, 0.6, 1) for r in demo_records[:5])
    assert 0 < flaky_right < 5
    assert outcomes["rerun"] == 2 * wrong + flaky_right
    assert sent == 50 + 5  # only the five failed requests were asked again
    task = summary_json(pytester.path / "out")["tasks"][0]
    assert task["counts"]["evaluated"] == 50 and task["counts"]["errors"] == 0
    assert task["metrics"]["accuracy"] == pytest.approx(
        100 * truth_fraction(demo_records, 0.6, 1), abs=1e-3
    )


def test_teardown_sections_of_failed_cases_are_shown(pytester, monkeypatch):
    """pytest 9.2+ looks up teardown reports by a structured NodeId: the index answers both."""
    _setup(pytester)
    pytester.makeconftest(
        RECORDER + "\ndef pytest_runtest_teardown(item):\n    print('TEARDOWN-SAYS-HI')\n"
    )
    with MockServer(_answer) as srv:
        _run(pytester, monkeypatch, srv.base_url, "a", True, "-p", "no:randomly")
        result = pytester.runpytest_subprocess(
            "--sb-models=vllm_chat",
            "--sb-datasets=tiny",
            f"--sb-set=vllm_chat.base_url={srv.base_url}",
            "--sb-set=vllm_chat.model=m",
            "--sb-work-dir=out",
            "--tb=long",
        )
    out = result.stdout.str()
    assert out.count("Captured stdout teardown") == 4  # q1, q3, q5, q7 are wrong


def test_a_pytest_outside_the_supported_range_runs_the_plain_protocol(pytester, monkeypatch):
    """One warning, then pytest's own protocol: the same reports, no crash."""
    _setup(pytester)
    pytester.makeconftest(RECORDER + "\npytest.__version__ = '99.1.0'\n")
    with MockServer(_answer, faults=_fail_q7) as srv:
        _, lean = _comparable(_run(pytester, monkeypatch, srv.base_url, "a", True, "-rw"))
        result = pytester.runpytest_subprocess(
            "--sb-models=vllm_chat",
            "--sb-datasets=tiny",
            f"--sb-set=vllm_chat.base_url={srv.base_url}",
            "--sb-set=vllm_chat.model=m",
            "--sb-set=vllm_chat.retries=0",
            "--sb-work-dir=out",
        )
    assert not lean
    result.assert_outcomes(passed=4, failed=3, errors=1)
    assert result.stdout.str().count("outside the range") == 1
