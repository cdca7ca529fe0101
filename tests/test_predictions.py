"""What a run leaves for a person to read: predictions with the prompt and the reference, a
resume that says what it reused and sent, and scores written as numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import completion_requests, eval_args

from pytest_servebench.scoring.aggregate import TaskResult
from pytest_servebench.scoring.verdict import Verdict

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def only_run(base: Path) -> Path:
    (run,) = [p for p in base.iterdir() if p.is_dir()]
    return run


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_prediction_records_hold_prompt_and_reference_once_per_case(pytester, gsm8k_server):
    k = 3
    result = pytester.runpytest_subprocess(
        *eval_args(
            gsm8k_server.base_url,
            "demo_gsm8k",
            f"--sb-set=vllm_chat.generation_kwargs.num_return_sequences={k}",
            "--sb-limit=4",
        )
    )
    assert result.ret in (0, 1)
    run = only_run(pytester.path / "out")
    records = lines(run / "predictions" / "vllm_chat" / "demo_gsm8k.jsonl")
    assert len(records) == 4 * k
    questions = [
        json.loads(line)
        for line in (Path(__file__).parent.parent / "pytest_servebench/data/gsm8k_demo/test.jsonl")
        .read_text()
        .splitlines()[:4]
    ]
    firsts = sorted((r for r in records if r["sample"] == 0), key=lambda r: r["case"])
    assert len(firsts) == 4
    for record in records:
        assert ("prompt" in record) == (record["sample"] == 0)
    by_question = {q["question"]: q for q in questions}
    for record in firsts:
        (message,) = record["prompt"]
        assert message["role"] == "user"
        question = message["content"].rsplit("Question: ", 1)[1]
        expected = by_question[question]["answer"].rsplit("####", 1)[1].strip()
        assert record["reference"] == expected
        assert record["content"]  # the output sits beside them
    # Scores are numbers in the results file (0.0 and False once shared one cached tuple).
    results = json.loads((run / "results" / "vllm_chat" / "demo_gsm8k.json").read_text())
    for case in results["cases"]:
        assert all(type(s) is float for s in case["scores"])
        assert all(type(c) is bool for c in case["correct"])


def test_verdicts_keep_scores_as_floats_whatever_came_first():
    result = TaskResult("t", "m", "m", "d", "d", "v", "gen", "all", 1, ["a", "b"])
    result.add("a", Verdict.from_dict({"status": "failed", "correct": [False], "scores": [0.0]}))
    result.add("b", Verdict.from_dict({"status": "failed", "scores": [0.0], "correct": [False]}))
    for case in result.to_json()["cases"]:
        assert json.dumps(case["scores"]) == "[0.0]" and json.dumps(case["correct"]) == "[false]"


@pytest.mark.parametrize("workers", [[], ["-n", "2"]])
def test_resume_says_what_it_reused_and_sent(pytester, gsm8k_server, workers):
    first = pytester.runpytest_subprocess(*eval_args(gsm8k_server.base_url), "--sb-limit=20")
    assert "saved answers" not in first.stdout.str()
    assert "servebench work dir: " in first.stdout.str()
    before = completion_requests(gsm8k_server)
    assert before == 20
    second = pytester.runpytest_subprocess(
        *eval_args(gsm8k_server.base_url), "--sb-reuse=latest", *workers
    )
    sent = completion_requests(gsm8k_server) - before
    assert sent == 30
    out = second.stdout.str()
    assert f"vllm_chat/demo_gsm8k: reused 20 saved answers, sending {sent}" in out
    run = only_run(pytester.path / "out")
    logs = "".join(p.read_text() for p in (run / "logs").glob("servebench*.log"))
    assert "reused 20 saved answers, sending 30" in logs


def test_quiet_run_prints_the_work_dir_first(pytester, gsm8k_server):
    result = pytester.runpytest_subprocess(*eval_args(gsm8k_server.base_url), "-q", "--sb-limit=2")
    run = only_run(pytester.path / "out")
    assert result.stdout.lines[0] == f"servebench work dir: {run}"


@pytest.mark.parametrize("workers", [[], ["-n", "2"]])
def test_debug_shows_the_logs_live(pytester, workers):
    from pytest_servebench.testing.mockserver import FaultPlan, MockServer, Reply

    every_500 = FaultPlan(rates={"500": 1.0})  # every request fails: the engine logs each
    reply = Reply(content="The answer is 1.")
    with MockServer(lambda request: reply, faults=every_500, latency=0.05) as server:
        result = pytester.runpytest_subprocess(
            *eval_args(server.base_url),
            "--sb-limit=3",
            "--sb-set=vllm_chat.retries=0",
            "--sb-debug",
            *workers,
        )
    out = result.stdout.str()
    # Under -n the task runs on whichever worker xdist gives it.
    log = r"servebench-gw\d\.log" if workers else r"servebench\.log"
    shown = [line for line in out.splitlines() if re.match(rf"\[{log}\] ", line)]
    assert shown, out
    assert any("failed" in line and "500" in line for line in shown), shown
    quiet = pytester.runpytest_subprocess(*eval_args("http://127.0.0.1:9/v1"), "--sb-limit=1")
    assert ".log] " not in quiet.stdout.str()
