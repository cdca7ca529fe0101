"""The performance work-arounds compute exactly what they replace."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import eval_args

from pytest_servebench import yamlio
from pytest_servebench.engine.jobs import CaseResult, RunAborted
from pytest_servebench.engine.local import ThreadTask
from pytest_servebench.session.lean import index_teardown_reports

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- teardown index


class FakeReporter:
    """The two methods of pytest's TerminalReporter the index relies on, verbatim."""

    def __init__(self) -> None:
        self.stats: dict[str, list] = {}

    def getreports(self, name: str):
        return [x for x in self.stats.get(name, ()) if not hasattr(x, "_pdbshown")]

    def _get_teardown_reports(self, nodeid: str):
        reports = self.getreports("")
        return [r for r in reports if r.when == "teardown" and r.nodeid == nodeid]


def test_teardown_index_gives_the_same_reports_in_the_same_order():
    original = FakeReporter()
    indexed = FakeReporter()
    reports = []
    for i in range(300):
        for when in ("setup", "teardown", "teardown"):
            reports.append(SimpleNamespace(nodeid=f"t::{i % 37}", when=when))
    reports[5]._pdbshown = True
    assert index_teardown_reports(indexed)
    for chunk in (reports[:100], reports[100:]):  # the list grows between lookups
        for r in chunk:
            for tr in (original, indexed):
                tr.stats.setdefault("", []).append(r)
        for nodeid in [f"t::{i}" for i in range(40)]:
            assert indexed._get_teardown_reports(nodeid) == original._get_teardown_reports(nodeid)


def test_teardown_index_leaves_an_unknown_reporter_alone():
    assert not index_teardown_reports(object())


# --------------------------------------------------------------------------- case hand-off


def test_task_run_hands_each_case_over_once():
    run = ThreadTask("m/d", None, None, 2, ["a", "b", "c"], None)  # type: ignore[arg-type]
    run.deliver("a", [{"sample": 0}], 0)
    assert run.wait("a", 0.01) is None  # one of two samples: not done
    run.deliver("a", [{"sample": 1}], 1)
    assert run.wait("a", 0.01) == CaseResult("a", [{"sample": 0}, {"sample": 1}])
    with pytest.raises(KeyError):
        run.wait("a", 0.01)  # taken
    with pytest.raises(KeyError):
        run.wait("zzz", 0.01)  # never submitted


def test_task_run_wakes_the_waiter_at_once():
    run = ThreadTask("m/d", None, None, 1, ["a"], None)  # type: ignore[arg-type]
    timer = threading.Timer(0.1, run.deliver, ("a", [{"sample": 0}], 0))
    timer.start()
    start = time.monotonic()
    assert run.wait("a", 5.0) == CaseResult("a", [{"sample": 0}])
    assert time.monotonic() - start < 2.0


def test_task_run_abort_fails_only_what_was_not_delivered():
    run = ThreadTask("m/d", None, None, 1, ["a", "b", "c"], None)  # type: ignore[arg-type]
    run.deliver("a", [{"sample": 0}], 0)
    threading.Timer(0.1, run.abort, (RunAborted("server gone"),)).start()
    with pytest.raises(RunAborted, match="server gone"):
        run.wait("b", 5.0)  # woken by the abort
    run.deliver("c", [{"sample": 0}], 0)  # too late: ignored
    with pytest.raises(RunAborted, match="server gone"):
        run.wait("c", 0.01)
    assert run.wait("a", 0.01) == CaseResult("a", [{"sample": 0}])  # delivered before the abort


# --------------------------------------------------------------------------- YAML


def yaml_files() -> list[Path]:
    roots = [REPO / "pytest_servebench", REPO / "examples", REPO / "suites", REPO / "tests"]
    return sorted(p for root in roots if root.is_dir() for p in root.rglob("*.y*ml"))


def test_fast_yaml_loader_reads_every_config_like_the_pure_one(tmp_path):
    if yamlio._FastLoader is None:
        pytest.skip("PyYAML without libyaml")
    files = yaml_files()
    extra = tmp_path / "tricky.yaml"
    extra.write_text(
        "a: &x {b: 1, c: [1, 2.5, null, true, '3']}\nd:\n  <<: *x\n  e: |\n    line\n"
        "f: 2026-01-01\ng: 0x1f\nh: ~\n",
        encoding="utf-8",
    )
    files.append(extra)
    assert len(files) > 10
    for path in files:
        text = path.read_text(encoding="utf-8")
        try:
            pure = yaml.load(text, Loader=yamlio._Loader)
        except yaml.YAMLError:
            continue
        fast = yamlio.load_yaml(path)
        assert fast == pure, path
        assert _lines(fast) == _lines(pure), path


def _lines(data):
    if isinstance(data, dict):
        return (
            getattr(data, "lines", None),
            getattr(data, "start_line", None),
            {k: _lines(v) for k, v in data.items()},
        )
    if isinstance(data, list):
        return [_lines(v) for v in data]
    return None


@pytest.mark.parametrize("text", ["a: [1, 2\n", "a: 1\n b: 2\n", "a: b: c\n", "- a\nb: 1\n"])
def test_yaml_errors_keep_the_pure_loaders_message(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(yamlio.ConfigError) as fast:
        yamlio.load_yaml(path)
    try:
        yaml.load(text, Loader=yamlio._Loader)
    except yaml.MarkedYAMLError as exc:
        expected = f"not valid YAML: {exc.problem}"
    assert expected in str(fast.value)


def test_failure_summary_of_a_run_is_complete_with_the_index(pytester):
    from pytest_servebench.testing.mockserver import MockServer

    _tiny_eval(pytester)
    with MockServer(lambda r: "answer: 3") as srv:
        result = pytester.runpytest_inprocess(
            *_eval_args(srv.base_url), "-p", "no:cacheprovider", "--tb=long"
        )
    result.assert_outcomes(passed=1, failed=5)
    # The failure sections (the short summary repeats the messages in full on CI).
    out, _, short = result.stdout.str().partition("short test summary info")
    assert out.count("wrong answer (0/1 samples correct)") == 5
    assert short.count("FAILED servebench/vllm_chat/tiny::") == 5


# --------------------------------------------------------------------------- lean run protocol


def _tiny_eval(pytester, records: str = "", extra: str = "", name: str = "tiny") -> None:
    """A dataset `name` of six questions (q0..q5, the answer to qN is N) or of `records`."""
    from conftest import write_suite

    write_suite(
        pytester.path,
        name,
        f"kind: dataset\npath: {name}.jsonl\nanswer_field: answer\n{extra}"
        "prompt: 'Question: {question}'\nevaluator: {type: gsm8k}\n",
    )
    (pytester.path / "datasets").mkdir(exist_ok=True)
    (pytester.path / "datasets" / f"{name}.jsonl").write_text(
        records or "".join(f'{{"question": "q{i}", "answer": "#### {i}"}}\n' for i in range(6))
    )
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")


def _eval_args(url: str, dataset: str = "tiny") -> list[str]:
    return eval_args(url, dataset, model="m")


def _run_tiny(pytester, url: str, *extra: str):
    return pytester.runpytest_subprocess(*_eval_args(url), "-rA", "--tb=long", *extra)


# A conftest that hooks a run phase: every case then takes pytest's own protocol.
PHASE_CONFTEST = "def pytest_runtest_setup(item):\n    pass\n"


def _junit_cases(path: Path) -> list[tuple]:
    import xml.etree.ElementTree as ET

    out = []
    for case in ET.parse(path).getroot().iter("testcase"):
        props = tuple((p.get("name"), p.get("value")) for p in case.iter("property"))
        kinds = tuple(sorted(child.tag for child in case if child.tag != "properties"))
        texts = tuple(child.text for child in case if child.tag in ("failure", "error"))
        out.append((case.get("classname"), case.get("name"), props, kinds, texts))
    return out


def _normalized(text: str) -> list[str]:
    """The output without timings and paths that differ between two runs."""
    import re

    lines = []
    service = False  # the service table's timings differ from run to run
    for line in text.splitlines():
        service = (service or "servebench service" in line) and not line.startswith("service:")
        if service:
            line = re.sub(r"[ -]+", " ", re.sub(r"\d+\.\d+", "X", line))
        line = re.sub(r"in [\d.]+s", "in Xs", line)
        line = re.sub(r"\d{8}_\d{6}(_\d+)?", "STAMP", line)  # two runs in one second: _2
        line = re.sub(r"[\d.]+ req/s.*", "", line)
        line = re.sub(r"(lean|pytest)\.xml", "X.xml", line)
        if "rootdir:" in line or "platform" in line or "servebench] " in line:
            continue
        lines.append(line)
    return lines


def test_lean_protocol_reports_exactly_what_pytests_own_does(pytester):
    """Same outcomes, same terminal output (-rA), same JUnit XML, same failure texts, with and
    without the lean protocol (a conftest hooking a phase turns it off for every case)."""
    from pytest_servebench.testing.mockserver import MockServer

    _tiny_eval(pytester)
    runs = {}
    with MockServer(lambda r: "answer: 3") as srv:
        for name, conftest in (("lean", ""), ("pytest", PHASE_CONFTEST)):
            pytester.makeconftest(conftest)
            result = _run_tiny(
                pytester, srv.base_url, f"--junitxml={name}.xml", "-p", "no:cacheprovider"
            )
            runs[name] = (result, _junit_cases(pytester.path / f"{name}.xml"))
    (lean, lean_junit), (own, own_junit) = runs["lean"], runs["pytest"]
    lean.assert_outcomes(passed=1, failed=5)
    own.assert_outcomes(passed=1, failed=5)
    assert lean_junit == own_junit
    assert len(lean_junit) == 6 and all(dict(c[2])["reference"] for c in lean_junit)
    assert _normalized(lean.stdout.str()) == _normalized(own.stdout.str())
    # the failure sections are headed by the case, not by "test session"
    out = lean.stdout.str()
    assert "_ q0000_" in out and "_ test session _" not in out


def test_lean_protocol_leaves_marked_cases_and_stops_to_pytest(pytester):
    """A case marked xfail by a conftest runs under pytest's own protocol (and xfails); -x
    stops after the first failure as usual; --lf then reruns exactly the failures."""
    from pytest_servebench.testing.mockserver import MockServer

    _tiny_eval(pytester)
    pytester.makeconftest(
        "import pytest\n"
        "def pytest_collection_modifyitems(items):\n"
        "    for item in items:\n"
        "        if item.name.startswith('q0002'):\n"
        "            item.add_marker(pytest.mark.xfail(reason='known bad'))\n"
    )
    with MockServer(lambda r: "answer: 3") as srv:
        result = _run_tiny(pytester, srv.base_url)
        result.assert_outcomes(passed=1, failed=4, xfailed=1)
        stopped = _run_tiny(pytester, srv.base_url, "-x", "--sb-resend")
        stopped.assert_outcomes(failed=1)
        again = _run_tiny(pytester, srv.base_url, "--lf")
        again.assert_outcomes(failed=4, deselected=2)


def test_kept_reports_are_trimmed_after_every_plugin_read_them(pytester):
    """The terminal keeps the reports; the plugin drops what none reads after logreport."""
    from pytest_servebench.testing.mockserver import MockServer

    _tiny_eval(pytester)
    pytester.makeconftest(
        "import pytest\n"
        "seen = []\n"
        "def pytest_runtest_logreport(report):\n"
        "    if report.when == 'call':\n"
        "        seen.append((report.servebench['status'], dict(report.user_properties)))\n"
        "@pytest.hookimpl(trylast=True)\n"
        "def pytest_sessionfinish(session):\n"
        "    tr = session.config.pluginmanager.get_plugin('terminalreporter')\n"
        "    kept = [r for reps in tr.stats.values() for r in reps if hasattr(r, 'when')]\n"
        "    assert len(seen) == 6 and all(props['reference'] for _, props in seen)\n"
        "    assert sorted(r.when for r in kept) == ['call'] * 6\n"
        "    assert not any(hasattr(r, 'servebench') or r.user_properties for r in kept)\n"
        "    assert len({id(r.keywords) for r in kept}) == 1\n"
        "    assert all(item.case.record == {} for item in session.items)\n"
        "    print('TRIM-CHECKED')\n"
    )
    with MockServer(lambda r: "answer: 3") as srv:
        result = _run_tiny(pytester, srv.base_url, "-s")
    result.assert_outcomes(passed=1, failed=5)
    assert "TRIM-CHECKED" in result.stdout.str()


def test_a_case_whose_request_cannot_be_built_fails_without_stalling_the_task(tmp_path):
    from pytest_servebench.catalog.config import ModelConfig
    from pytest_servebench.engine.jobs import Job, each_case
    from pytest_servebench.engine.local import ThreadEngine
    from pytest_servebench.engine.protocol import TaskSpec
    from pytest_servebench.testing.mockserver import MockServer

    def make_jobs(case_id: str) -> list[Job]:
        if case_id == "b":
            raise ValueError("no template")
        return [Job(case_id, 0, 1, {"prompt": case_id}, "h")]

    with MockServer(lambda r: "answer: 1") as srv:
        model = ModelConfig(
            name="m", source="test", type="openai-completions", base_url=srv.base_url, model="x"
        )
        engine = ThreadEngine(lambda cfg: {})
        try:
            order = ["a", "b", "c"]
            cases = each_case("m/d", order, make_jobs)
            run = engine.start(TaskSpec("m/d", model, tmp_path / "p.jsonl", 1, order, cases))
            got = {cid: run.wait(cid, 10.0).records for cid in order}
        finally:
            engine.close()
    assert got["a"][0]["ok"] and got["c"][0]["ok"]
    assert not got["b"][0]["ok"] and "no template" in got["b"][0]["error"]


# --------------------------------------------------------------------------- compact storage


def test_results_json_is_written_as_json_reads_it(tmp_path):
    import json

    from pytest_servebench.store import write_json

    data = {
        "model": "m",
        "nested": {"a": [1, 2, {"b": "x\ny"}], "empty": {}},
        "list": [1, "two"],
        "empty_list": [],
        "unicode": "中文",
        "cases": ({"case": f"c{i}", "v": [i, None, True]} for i in range(3)),
        "no_cases": (x for x in ()),
    }
    expected = {**data, "cases": [{"case": f"c{i}", "v": [i, None, True]} for i in range(3)]}
    expected["no_cases"] = []
    write_json(tmp_path / "r.json", data)
    text = (tmp_path / "r.json").read_text(encoding="utf-8")
    assert json.loads(text) == expected
    assert '\n    {"case": "c1", "v": [1, null, true]},\n' in text
    assert "中文" in text
    for plain in ([1, 2], "s", {}, {"a": {"b": 1}}):
        write_json(tmp_path / "p.json", plain)
        assert json.loads((tmp_path / "p.json").read_text()) == plain


def test_verdict_crosses_as_the_same_plain_dict_and_is_kept_compact():
    import json

    from pytest_servebench.scoring.aggregate import TaskResult
    from pytest_servebench.scoring.evaluators import get_evaluator
    from pytest_servebench.scoring.verdict import Verdict, judge_case

    evaluator = get_evaluator("gsm8k")
    records = [
        {"ok": True, "content": "answer: 3", "latency": 0.5, "finish_reason": "stop"},
        {"ok": True, "content": "answer: 4", "latency": 0.25, "completion_tokens": 7},
    ]
    verdict = judge_case(evaluator, "3", records, "all")
    # The plain form: the keys and their order of the dict judge_case made before the type.
    assert verdict.to_dict() == {
        "status": "failed",
        "correct": [True, False],
        "scores": [1.0, 0.0],
        "votes": ["3", "4"],
        "errors": 0,
        "truncated": 0,
        "unparsable": 0,
        "error": None,
        "error_kind": None,
        "reference": "3",
        "extracted": "3",
        "latency": 0.375,
        "prompt_tokens": None,
        "completion_tokens": 7,
        "finish_reason": "stop",
    }
    assert list(verdict.to_dict()) == [
        "status", "correct", "scores", "votes", "errors", "truncated", "unparsable", "error",
        "error_kind", "reference", "extracted", "latency", "prompt_tokens",
        "completion_tokens", "finish_reason",
    ]  # fmt: skip
    payload = {"task": "m/d", "case": "c", **verdict.to_dict(), "prompt": "p", "outputs": []}
    again = Verdict.from_dict(payload)  # what the controller reads from a report
    assert again == verdict and again.score == 0.5
    # Recurring per-sample tuples and short strings are one object each across cases.
    other = Verdict.from_dict(json.loads(json.dumps(verdict.to_dict())))
    assert other.correct is verdict.correct and other.scores is verdict.scores
    assert other.finish_reason is verdict.finish_reason and other.votes[1] is verdict.votes[1]
    result = TaskResult("m/d", "m", "m", "d", "d", "v", "gen", "all", 2, ["c"])
    result.add("c", again)
    assert result.to_json()["metrics"]
    assert next(iter(result.to_json()["cases"])) == {"case": "c", **verdict.to_dict()}


def test_only_the_process_own_command_line_leaves_its_objects_at_exit(pytester, monkeypatch):
    from pytest_servebench.session.lean import is_process_command_line

    config = pytester.parseconfig("-q", "x.py")
    assert not is_process_command_line(config)  # pytest.main() / pytester: the process goes on
    monkeypatch.setattr("sys.argv", ["pytest", *config.invocation_params.args])
    assert is_process_command_line(config)


def test_case_ids_with_dots_keep_their_node_id_in_verbose_output(pytester):
    from pytest_servebench.testing.mockserver import MockServer

    _tiny_eval(
        pytester,
        records='{"id": "test_807.json", "question": "q", "answer": "#### 1"}\n',
        extra="id_field: id\n",
        name="dotted",
    )
    with MockServer(lambda r: "answer: 3") as srv:
        result = pytester.runpytest_subprocess(*_eval_args(srv.base_url, "dotted"), "-v")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "servebench/vllm_chat/dotted::test_807.json FAILED*",
            "*_ test_807.json (vllm_chat/dotted) _*",
        ]
    )


def test_a_mark_on_the_task_applies_to_its_cases(pytester):
    """A mark put on the task (not on each case) reaches its cases through pytest's protocol."""
    from pytest_servebench.testing.mockserver import MockServer

    _tiny_eval(pytester)
    pytester.makeconftest(
        "import pytest\n"
        "def pytest_collection_modifyitems(items):\n"
        "    items[0].parent.add_marker(pytest.mark.xfail(reason='whole task known bad'))\n"
    )
    with MockServer(lambda r: "answer: 3") as srv:
        result = _run_tiny(pytester, srv.base_url)
    result.assert_outcomes(xfailed=5, xpassed=1)


def test_in_process_run_leaves_the_garbage_collector_as_it_was(pytester):
    import gc

    from pytest_servebench.session.lean import GC_YOUNG_THRESHOLD
    from pytest_servebench.testing.mockserver import MockServer

    _tiny_eval(pytester)
    pytester.makeconftest(
        "import gc\n"
        "def pytest_runtest_logreport(report):\n"
        "    if report.when == 'call':\n"
        "        print('THRESHOLD', gc.get_threshold()[0])\n"
    )
    before = gc.get_threshold()
    with MockServer(lambda r: "answer: 3") as srv:
        result = pytester.runpytest_inprocess(*_eval_args(srv.base_url), "-s")
    result.assert_outcomes(passed=1, failed=5)
    assert f"THRESHOLD {max(before[0], GC_YOUNG_THRESHOLD)}" in result.stdout.str()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0  # not the process's own command line: nothing frozen
    # nor its logging: servebench's records reach the root logger again (and caplog)
    assert logging.getLogger("servebench").parent is logging.root


def test_the_failed_subtest_counts_read_the_same_without_storing_zeros():
    from collections import defaultdict

    from pytest_servebench.session.lean import count_without_inserting

    subtests = pytest.importorskip("_pytest.subtests")
    config = SimpleNamespace(stash=pytest.Stash())
    config.stash[subtests.failed_subtests_key] = defaultdict(int, {"a": 2})
    assert count_without_inserting(config)
    counts = config.stash[subtests.failed_subtests_key]
    assert counts["a"] == 2 and counts["never-failed"] == 0 and "never-failed" not in counts
    counts["b"] += 1
    assert counts == {"a": 2, "b": 1}
    assert not count_without_inserting(config)  # once is enough
