"""examples/custom_dataset works as its README says: a data file named directly (with and
without the YAML beside it), options lists, and a suites config with a user grading function."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pytest_servebench.testing.mockserver import MockServer, Reply

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom_dataset"
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def capitals() -> dict[str, str]:
    rows = [json.loads(line) for line in (EXAMPLE / "capitals.jsonl").open(encoding="utf-8")]
    return {r["question"]: r["answer"] for r in rows}


def respond(request) -> Reply:
    messages = request.body["messages"]
    last = messages[-1]["content"]
    if "Reply with the city name only" in last:
        answer = capitals()[last]
        if "Japan" in last:
            return Reply("Kyoto")  # wrong
        # the YAML beside the data file adds a system message
        return Reply(f"{answer}." if messages[0]["role"] == "system" else answer)
    if "Answer with the letter" in last:
        assert "\nA. " in last and "\nD. " in last
        right = {"Red Planet": "B", "gold": "B", "hexagon": "B", "photosynthesis": "C"}
        for key, letter in right.items():
            if key in last:
                return Reply(f"The answer is ({letter}).")
        return Reply("I'm not sure: A or B.")  # two letters: nothing extracted
    if "Give the result as a number" in last:
        values = {"miles": "8.05 km", "Fahrenheit": "37.8 °C", "kilograms": "5.0 lb"}
        for key, value in values.items():
            if key in last:
                return Reply(f"That is about {value}.")
        return Reply("I cannot convert that.")
    return Reply("?")


@pytest.fixture
def project(pytester) -> Path:
    shutil.copytree(EXAMPLE, pytester.path / "examples" / "custom_dataset")
    return pytester.path


def run(pytester, url: str, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "--sb-models", "vllm_chat", "--sb-set", f"vllm_chat.base_url={url}", "--sb-work-dir",
        "out", "-v", *args,
    )  # fmt: skip


def test_data_file_named_directly(pytester, project):
    with MockServer(respond) as server:
        result = run(
            pytester, server.base_url, "--sb-datasets", "examples/custom_dataset/capitals.jsonl"
        )
        result.assert_outcomes(passed=7, failed=1)
        result.stdout.fnmatch_lines(["*servebench/vllm_chat/capitals::q0000_* PASSED*"])
        # without the YAML beside it: the defaults (no system message; exact evaluator)
        (project / "examples" / "custom_dataset" / "capitals.yaml").unlink()
        result = run(
            pytester, server.base_url, "--sb-datasets", "examples/custom_dataset/capitals.jsonl"
        )
        result.assert_outcomes(passed=7, failed=1)


def test_options_list(pytester, project):
    with MockServer(respond) as server:
        result = run(
            pytester, server.base_url, "--sb-datasets", "examples/custom_dataset/trivia_mc.csv"
        )
    result.assert_outcomes(passed=4, failed=2)
    result.stdout.fnmatch_lines(["*servebench/vllm_chat/trivia_mc::t1 PASSED*"])
    assert "extracted: None" in result.stdout.str()


def test_suites_config_with_user_function(pytester, project):
    with MockServer(respond) as server:
        result = run(
            pytester,
            server.base_url,
            "--sb-suites",
            "examples/custom_dataset/suites",
            "--sb-datasets",
            "unit_conversions",
        )
    # 8.05 vs 8.04672 and 37.8 vs 37.7778 are within 1%; 5.0 vs 5.51156 is not
    result.assert_outcomes(passed=2, failed=3)
    result.stdout.fnmatch_lines(["*servebench/vllm_chat/unit_conversions::miles-to-km PASSED*"])
