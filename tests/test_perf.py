"""The performance work-arounds compute exactly what they replace."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import write_suite
from pytest_servebench import yamlio
from pytest_servebench.engine import RunAborted, TaskRun
from pytest_servebench.perf import index_teardown_reports
from pytest_servebench.testing.mockserver import MockServer

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
    run = TaskRun("m/d", None, None, 2, None, ["a", "b", "c"])  # type: ignore[arg-type]
    run.deliver("a", [{"sample": 0}], 0)
    assert run.wait("a", 0.01) is None  # one of two samples: not done
    run.deliver("a", [{"sample": 1}], 1)
    assert run.wait("a", 0.01) == [{"sample": 0}, {"sample": 1}]
    with pytest.raises(KeyError):
        run.wait("a", 0.01)  # taken
    with pytest.raises(KeyError):
        run.wait("zzz", 0.01)  # never submitted


def test_task_run_wakes_the_waiter_at_once():
    run = TaskRun("m/d", None, None, 1, None, ["a"])  # type: ignore[arg-type]
    timer = threading.Timer(0.1, run.deliver, ("a", [{"sample": 0}], 0))
    timer.start()
    start = time.monotonic()
    assert run.wait("a", 5.0) == [{"sample": 0}]
    assert time.monotonic() - start < 2.0


def test_task_run_abort_fails_only_what_was_not_delivered():
    run = TaskRun("m/d", None, None, 1, None, ["a", "b", "c"])  # type: ignore[arg-type]
    run.deliver("a", [{"sample": 0}], 0)
    threading.Timer(0.1, run.abort, (RunAborted("server gone"),)).start()
    with pytest.raises(RunAborted, match="server gone"):
        run.wait("b", 5.0)  # woken by the abort
    run.deliver("c", [{"sample": 0}], 0)  # too late: ignored
    with pytest.raises(RunAborted, match="server gone"):
        run.wait("c", 0.01)
    assert run.wait("a", 0.01) == [{"sample": 0}]  # delivered before the abort


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


# --------------------------------------------------------------------------- gc


def test_in_process_run_leaves_the_garbage_collector_as_it_was(pytester):
    write_suite(
        pytester.path,
        "tiny",
        "kind: dataset\npath: tiny.jsonl\nanswer_field: answer\n"
        "prompt: 'Question: {question}'\nevaluator: {type: gsm8k}\n",
    )
    (pytester.path / "datasets").mkdir()
    (pytester.path / "datasets" / "tiny.jsonl").write_text(
        "".join(f'{{"question": "q{i}", "answer": "#### 18"}}\n' for i in range(5))
    )
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    assert gc.get_freeze_count() == 0
    with MockServer(lambda r: "answer: 18") as srv:
        result = pytester.inline_run(
            "--sb-models",
            "vllm_chat",
            "--sb-datasets",
            "tiny",
            f"--sb-set=vllm_chat.base_url={srv.base_url}",
            "--sb-set=vllm_chat.model=m",
            "--sb-work-dir=out",
            "-p",
            "no:cacheprovider",
        )
    result.assertoutcome(passed=5)
    assert gc.get_freeze_count() == 0
