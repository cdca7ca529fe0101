"""Nothing lost: faults, retries, fatal endpoints, kills, resume, --lf, eval mode, secrets."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import completion_requests, stable, summary_json, truth_fraction
from pytest_servebench.testing.mockserver import FaultPlan, MockServer, dataset_responder

FAST_RETRY = [
    "--sb-set",
    "vllm_chat.retry_backoff=0.01",
    "--sb-set",
    "vllm_chat.retry_backoff_max=0.05",
]


def sb(url: str, *extra: str, model: str = "vllm_chat") -> list[str]:
    return [
        "--sb-models",
        model,
        "--sb-datasets",
        "demo_gsm8k",
        "--sb-set",
        f"{model}.base_url={url}",
        "--sb-work-dir",
        "out",
        *extra,
    ]


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*args)


def ok_lines(path: Path) -> list[dict]:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["ok"]]


def predictions(pytester: pytest.Pytester) -> Path:
    runs = sorted((pytester.path / "out").iterdir())
    return runs[-1] / "predictions" / "vllm_chat" / "demo_gsm8k.jsonl"


@pytest.mark.parametrize("stream", [False, True])
def test_faulty_server_every_case_answered_and_accuracy_is_truth(pytester, demo_records, stream):
    plan = FaultPlan({"500": 0.1, "reset": 0.1, "garbage": 0.1, "cut": 0.1}, seed=3)
    model = "vllm_stream_chat" if stream else "vllm_chat"
    with MockServer(dataset_responder(demo_records, p_correct=0.6, seed=1), faults=plan) as srv:
        result = run(
            pytester,
            *sb(srv.base_url, model=model),
            "--sb-set",
            f"{model}.retries=8",
            "--sb-set",
            f"{model}.retry_backoff=0.01",
        )
        faults = srv.stats.snapshot()["faults"]
    assert sum(faults.values()) >= 10, faults  # the faults really happened
    outcomes = result.parseoutcomes()
    assert "errors" not in outcomes and "error" not in outcomes
    task = summary_json(pytester.path / "out")["tasks"][0]
    assert task["counts"]["errors"] == 0
    assert task["metrics"]["accuracy"] == pytest.approx(
        100 * truth_fraction(demo_records, 0.6, 1), abs=1e-3
    )


def test_retry_after_is_honoured(pytester):
    plan = FaultPlan({"429": 1.0}, only_first_attempt=True, retry_after=0.6)
    with MockServer(lambda r: "answer: 18", faults=plan) as srv:
        start = time.monotonic()
        result = run(
            pytester,
            *sb(srv.base_url),
            "--sb-limit",
            "1",
            *FAST_RETRY,
            "--sb-set",
            "vllm_chat.retry_backoff_max=5",
        )
        elapsed = time.monotonic() - start
        assert completion_requests(srv) == 2
    result.assert_outcomes(passed=1)
    assert elapsed >= 0.6


def test_client_errors_are_not_retried(pytester):
    with MockServer(lambda r: "answer: 18") as srv:
        result = run(
            pytester,
            *sb(srv.base_url.replace("/v1", "/nope"), "--sb-limit", "2"),
            "--sb-set",
            "vllm_chat.model=m",
        )
        assert sum(srv.stats.requests.values()) <= 2  # at most one 404 each, no retry
    # A 404 before any success is the endpoint's (wrong path or model): one stop, not an
    # error per case.
    out = result.stdout.str()
    assert result.ret == 1
    assert "HTTP 404" in out and out.count("aborted: ") == 1


def test_stalled_reply_times_out_and_is_retried(pytester):
    plan = FaultPlan({"stall": 1.0}, only_first_attempt=True, stall_seconds=30)
    with MockServer(lambda r: "answer: 18", faults=plan) as srv:
        start = time.monotonic()
        result = run(
            pytester,
            *sb(srv.base_url, "--sb-limit", "2"),
            *FAST_RETRY,
            "--sb-set",
            "vllm_chat.read_timeout=0.5",
        )
        assert time.monotonic() - start < 15
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 2


def test_rejected_key_ends_the_run_at_once(pytester, monkeypatch):
    monkeypatch.setenv("SB_TEST_KEY", "wrong-key-123456")
    with MockServer(lambda r: "answer: 18", api_key="right-key-abcdef") as srv:
        result = run(
            pytester,
            *sb(srv.base_url),
            "--sb-set",
            "vllm_chat.api_key_env=SB_TEST_KEY",
            "--sb-set",
            "vllm_chat.model=m",
        )
        assert sum(srv.stats.requests.values()) <= 64  # not 50 x retries
    out = result.stdout.str()
    assert result.ret != 0
    assert out.count("rejected the credentials") <= 3
    assert "api_key_env" in out
    assert "wrong-key-123456" not in out + result.stderr.str()
    assert result.parseoutcomes().get("errors", 0) <= 1


def test_unreachable_server_ends_the_run_at_once(pytester):
    result = run(pytester, *sb("http://127.0.0.1:9/v1"))
    assert result.ret != 0
    out = result.stdout.str()
    assert "not reachable" in out or "cannot reach" in out
    assert "--sb-set vllm_chat.base_url=" in out
    assert result.parseoutcomes().get("errors", 0) == 1


def _popen(pytester: pytest.Pytester, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_lines(path_glob, pytester, n: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = list((pytester.path / "out").glob(path_glob))
        if files and len(files[0].read_text().splitlines()) >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {n} predictions after {timeout}s")


def test_sigkill_then_resume_resends_only_the_missing(pytester, demo_records):
    concurrency = 4
    responder = stable(dataset_responder(demo_records, p_correct=0.6, seed=1))
    with MockServer(responder, latency=0.05) as srv:
        args = sb(srv.base_url, "--sb-set", f"vllm_chat.max_concurrency={concurrency}")
        proc = _popen(pytester, args)
        _wait_for_lines("*/predictions/vllm_chat/demo_gsm8k.jsonl", pytester, 20)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        first = completion_requests(srv)
        saved = len(ok_lines(predictions(pytester)))
        assert 20 <= saved < 50
        result = run(pytester, *args, "--sb-reuse", "latest")
        total = completion_requests(srv)
    assert total <= 50 + concurrency
    assert total - first == 50 - saved  # only what never succeeded is sent again
    lines = ok_lines(predictions(pytester))
    assert len(lines) == 50 == len({(r["case"], r["sample"]) for r in lines})  # no duplicates
    task = summary_json(pytester.path / "out")["tasks"][0]
    assert task["complete"] and task["counts"]["evaluated"] == 50
    assert task["metrics"]["accuracy"] == pytest.approx(
        100 * truth_fraction(demo_records, 0.6, 1), abs=1e-3
    )
    assert result.ret == 1  # wrong answers are failures


def test_sigint_keeps_work_says_how_to_resume_and_shows_no_accuracy(pytester, demo_records):
    responder = stable(dataset_responder(demo_records, p_correct=0.6, seed=1))
    with MockServer(responder, latency=0.1) as srv:
        args = sb(srv.base_url, "--sb-set", "vllm_chat.max_concurrency=2")
        proc = _popen(pytester, args)
        _wait_for_lines("*/predictions/vllm_chat/demo_gsm8k.jsonl", pytester, 6)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode != 0
        saved = len(ok_lines(predictions(pytester)))
        assert "resume: pytest" in out
        assert "--sb-reuse" in out
        assert "partial" in out
        summary = summary_json(pytester.path / "out")
        assert summary["interrupted"] is True
        accuracy_row = next(r for r in summary["table"]["rows"] if r[2] == "accuracy")
        assert accuracy_row[-1] == "-"
        # resuming sends exactly the cases that were not saved
        before = completion_requests(srv)
        result = run(pytester, *args, "--sb-reuse", "latest")
        assert completion_requests(srv) - before == 50 - saved
    assert summary_json(pytester.path / "out")["tasks"][0]["complete"]
    assert result.ret == 1


def test_last_failed_resends_errors_rescores_wrong_and_summarises_all(pytester, demo_records):
    failing = {r["question"] for r in demo_records[:5]}

    def fail_some(request, attempt):
        return "500" if any(q[:40] in request.prompt_text for q in failing) else None

    responder = dataset_responder(demo_records, p_correct=0.6, seed=1)
    args = sb("URL", "--sb-set", "vllm_chat.retries=0")
    with MockServer(responder, faults=fail_some) as srv:
        args[5] = f"vllm_chat.base_url={srv.base_url}"
        first = pytester.runpytest_subprocess(*args)
        assert first.parseoutcomes()["errors"] == 5
        wrong = first.parseoutcomes()["failed"]
        sent = completion_requests(srv)
    with MockServer(responder) as srv2:  # the server is healthy again, on a new port
        retest = pytester.runpytest_subprocess(
            "--lf", "--sb-set", f"vllm_chat.base_url={srv2.base_url}"
        )
        resent = completion_requests(srv2)
    assert sent == 50
    assert resent == 5  # only the errors are sent again; wrong answers are re-scored
    outcomes = retest.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 5 + wrong
    summary = summary_json(pytester.path / "out")
    task = summary["tasks"][0]
    assert task["complete"] and task["counts"]["evaluated"] == 50
    assert task["metrics"]["accuracy"] == pytest.approx(
        100 * truth_fraction(demo_records, 0.6, 1), abs=1e-3
    )


def test_eval_mode_rescores_saved_predictions_without_sending(pytester, demo_records):
    responder = dataset_responder(demo_records, p_correct=0.6, seed=1)
    with MockServer(responder) as srv:
        infer = run(pytester, *sb(srv.base_url, "--sb-mode", "infer"))
        infer.assert_outcomes(passed=50)
        sent = completion_requests(srv)
        evaluated = run(pytester, *sb(srv.base_url, "--sb-mode", "eval"))
        assert completion_requests(srv) == sent == 50
    task = summary_json(pytester.path / "out")["tasks"][0]
    assert task["metrics"]["accuracy"] == pytest.approx(
        100 * truth_fraction(demo_records, 0.6, 1), abs=1e-3
    )
    assert evaluated.parseoutcomes()["passed"] == round(50 * truth_fraction(demo_records, 0.6, 1))


def test_planted_key_appears_in_no_produced_file(pytester, demo_records, monkeypatch):
    key = "sk-planted-SECRET-4f9a1c77"
    monkeypatch.setenv("SB_PLANTED_KEY", key)
    responder = dataset_responder(demo_records, p_correct=0.6, seed=1)
    plan = FaultPlan({"500": 0.2}, seed=2)
    with MockServer(responder, api_key=key, faults=plan) as srv:
        result = run(
            pytester,
            *sb(srv.base_url, "--sb-limit", "10"),
            *FAST_RETRY,
            "--sb-set",
            "vllm_chat.api_key_env=SB_PLANTED_KEY",
            "--sb-set",
            "vllm_chat.headers.X-Api-Key=${SB_PLANTED_KEY}",
            "--junitxml",
            "junit.xml",
            "-rA",
        )
        assert srv.stats.snapshot()["auth_failures"] == 0  # the key was really sent
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) > 0
    assert key not in result.stdout.str() + result.stderr.str()
    checked = 0
    for path in pytester.path.rglob("*"):
        if path.is_file():
            checked += 1
            assert key.encode() not in path.read_bytes(), path
    assert checked > 8
