"""examples/code_dataset: an MBPP-style code dataset ({text, code, test_list}) works by a config
only, in the real sandbox, with each sample's reason in the results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import completion_requests, needs_sandbox, summary_json

from pytest_servebench.testing.mockserver import MockServer, Reply

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "code_dataset"
pytestmark = [
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    needs_sandbox(),
]


def records() -> list[dict]:
    return [json.loads(line) for line in (EXAMPLE / "mbpp_style.jsonl").open(encoding="utf-8")]


def respond(request) -> Reply:
    text = request.body["messages"][-1]["content"]
    for record in records():
        if record["text"] in text:
            assert record["test_list"][0] in text  # the prompt shows the tests
            if "Fibonacci" in text:  # off by one
                return Reply("```python\ndef fib(n):\n    return n\n```")
            return Reply(f"Here you go:\n```python\n{record['code']}\n```\nDone.")
    return Reply("?")


def test_mbpp_style_records_by_config_only(pytester):
    shutil.copytree(EXAMPLE, pytester.path / "examples" / "code_dataset")
    with MockServer(respond) as server:
        result = pytester.runpytest_subprocess(
            "--sb-models", "vllm_chat", "--sb-set", f"vllm_chat.base_url={server.base_url}",
            "--sb-suites", "examples/code_dataset/suites", "--sb-datasets", "mbpp_style",
            "--sb-work-dir", "out", "-v",
        )  # fmt: skip
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        ["*mbpp_style::4 FAILED*", "*failed assertion: line * fib(10) == 55*"]
    )
    task = summary_json(pytester.path / "out")["tasks"][0]
    assert task["metrics"]["accuracy"] == pytest.approx(75.0)
    root = next((pytester.path / "out").iterdir())
    cases = json.loads(next((root / "results").rglob("*.json")).read_text())["cases"]
    assert [c["extracted"] for c in cases][:3] == ["passed"] * 3


def test_without_a_sandbox_the_run_stops_before_any_request_unless_allowed(pytester, monkeypatch):
    shutil.copytree(EXAMPLE, pytester.path / "examples" / "code_dataset")
    empty = pytester.path / "no-bwrap-here"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # bwrap cannot be found
    with MockServer(respond) as server:
        args = [
            "--sb-models", "vllm_chat", "--sb-set", f"vllm_chat.base_url={server.base_url}",
            "--sb-suites", "examples/code_dataset/suites", "--sb-datasets", "mbpp_style",
            "--sb-work-dir", "out",
        ]  # fmt: skip
        refused = pytester.runpytest_subprocess(*args)
        assert refused.ret == pytest.ExitCode.USAGE_ERROR
        err = refused.stderr.str()
        assert "refusing to run model-written code without a sandbox" in err
        assert "--sb-allow-unsandboxed-code" in err
        assert completion_requests(server) == 0
        allowed = pytester.runpytest_subprocess(*args, "--sb-allow-unsandboxed-code")
    allowed.assert_outcomes(passed=3, failed=1)
    assert "code execution: UNSANDBOXED process" in allowed.stdout.str()
    summary = summary_json(pytester.path / "out")
    assert summary["code_execution"]["isolation"] == "process"


def test_code_workers_sets_the_pool_size_and_refuses_nonsense(pytester):
    shutil.copytree(EXAMPLE, pytester.path / "examples" / "code_dataset")
    args = [
        "--sb-models", "vllm_chat", "--sb-suites", "examples/code_dataset/suites",
        "--sb-datasets", "mbpp_style", "--sb-work-dir", "out",
    ]  # fmt: skip
    with MockServer(respond) as server:
        args += ["--sb-set", f"vllm_chat.base_url={server.base_url}"]
        bad = pytester.runpytest_subprocess(*args, "--sb-code-workers=0")
        assert bad.ret == pytest.ExitCode.USAGE_ERROR
        bad.stderr.fnmatch_lines(["*--sb-code-workers must be at least 1, got 0*"])
        assert server.stats.total_requests == 0
        result = pytester.runpytest_subprocess(*args, "--sb-code-workers=3")
    result.assert_outcomes(passed=3, failed=1)
    assert summary_json(pytester.path / "out")["code_execution"]["workers"] == 3
    result.stdout.fnmatch_lines(["code execution: *3 at a time*"])
