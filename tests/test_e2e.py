"""End to end: dataset records become pytest items against a mock server on loopback."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import completion_requests, summary_json, truth_fraction, write_jsonl, write_suite
from pytest_servebench.testing.mockserver import MockServer

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*args)


def sb_args(
    url: str, model: str = "vllm_chat", dataset: str = "demo_gsm8k", *extra: str
) -> list[str]:
    return [
        "--sb-models",
        model,
        "--sb-datasets",
        dataset,
        "--sb-set",
        f"{model}.base_url={url}",
        "--sb-work-dir",
        "out",
        *extra,
    ]


@pytest.mark.parametrize(
    "model", ["vllm_chat", "vllm_stream_chat", "vllm_completions", "vllm_api_general_chat"]
)
def test_accuracy_equals_truth_served(pytester, gsm8k_server, demo_records, model):
    result = run(pytester, *sb_args(gsm8k_server.base_url, model))
    truth = truth_fraction(demo_records, 0.6, 1)
    right = round(truth * len(demo_records))
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) == right
    assert outcomes.get("failed", 0) == len(demo_records) - right
    assert "error" not in outcomes and "errors" not in outcomes
    summary = summary_json(pytester.path / "out")
    task = summary["tasks"][0]
    assert task["counts"]["cases"] == len(demo_records) == 50
    assert task["metrics"]["accuracy"] == pytest.approx(100 * truth, abs=1e-3)
    assert f"{100 * truth:.2f}" in result.stdout.str()
    assert completion_requests(gsm8k_server) == len(demo_records)


def test_work_dir_layout_and_csv(pytester, gsm8k_server):
    run(pytester, *sb_args(gsm8k_server.base_url))
    runs = list((pytester.path / "out").iterdir())
    assert len(runs) == 1
    root = runs[0]
    for sub in ("configs", "logs", "predictions", "results", "summary"):
        assert (root / sub).is_dir()
    lines = (root / "predictions" / "vllm_chat" / "demo_gsm8k.jsonl").read_text().splitlines()
    assert len(lines) == 50
    record = json.loads(lines[0])
    for key in (
        "case",
        "sample",
        "hash",
        "ok",
        "content",
        "finish_reason",
        "latency",
        "prompt_tokens",
        "completion_tokens",
    ):
        assert key in record
    results = json.loads((root / "results" / "vllm_chat" / "demo_gsm8k.json").read_text())
    assert len(results["cases"]) == 50
    csv_file = next((root / "summary").glob("summary_*.csv"))
    rows = list(csv.reader(csv_file.open()))
    assert rows[0] == ["dataset", "version", "metric", "mode", "vllm_chat"]
    assert rows[1][0] == "demo_gsm8k" and rows[1][2] == "accuracy" and rows[1][3] == "gen"
    assert len(rows[1][1]) == 6
    for suffix in (".md", ".txt", ".json"):
        assert csv_file.with_suffix(suffix).is_file()


def test_failure_message_shows_question_answer_reference(pytester, demo_records):
    def wrong(request):
        return "Let me think. 2 + 2 = 4.\nanswer: 123456"

    with MockServer(wrong) as server:
        compact = run(pytester, *sb_args(server.base_url), "--sb-limit", "2")
        result = run(pytester, *sb_args(server.base_url), "--sb-limit", "2", "-v")
    # by default one line per wrong answer, before the table; -v gives the full section
    compact.assert_outcomes(failed=2)
    reference = demo_records[0]["answer"].split("#### ")[-1]
    compact.stdout.fnmatch_lines(
        [
            "*= wrong answers: 2 *",
            f"servebench/vllm_chat/demo_gsm8k::q0000_*: extracted '123456', reference '{reference}'",
            "servebench/vllm_chat/demo_gsm8k::q0001_*: extracted '123456', reference *",
            "*= servebench summary =*",
        ]
    )
    assert demo_records[0]["question"][:60] not in compact.stdout.str()
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert demo_records[0]["question"][:60] in out
    assert "extracted: '123456'" in out
    assert f"reference: '{reference}'" in out
    assert "answer: 123456" in out  # the end of the raw output


def test_matrix_of_models_and_datasets(pytester, gsm8k_server):
    url = gsm8k_server.base_url
    result = run(
        pytester,
        "--sb-models",
        "vllm_chat",
        "vllm_stream_chat",
        "--sb-datasets",
        "demo_gsm8k",
        "gsm8k_gen_0_shot_cot_chat_prompt",
        "--sb-set",
        f"vllm_chat.base_url={url}",
        "--sb-set",
        f"vllm_stream_chat.base_url={url}",
        "--sb-datasets-dir",
        str(Path(__file__).resolve().parent.parent / "pytest_servebench" / "data" / "gsm8k_like"),
        "--collect-only",
        "-q",
    )
    # gsm8k's data is not in that folder: a clear message, nothing collected
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "gsm8k/test.jsonl" in result.stderr.str()
    assert "python -m pytest_servebench download gsm8k" in result.stderr.str()


def test_two_by_two_matrix_runs_four_tasks(pytester, gsm8k_server, demo_records):
    url = gsm8k_server.base_url
    data = pytester.path / "data"
    write_jsonl(data / "gsm8k" / "test.jsonl", demo_records[:10])
    result = run(
        pytester,
        "--sb-models",
        "vllm_chat",
        "vllm_stream_chat",
        "--sb-datasets",
        "demo_gsm8k",
        "gsm8k_gen_4_shot_cot_chat_prompt",
        "--sb-set",
        f"vllm_chat.base_url={url}",
        "--sb-set",
        f"vllm_stream_chat.base_url={url}",
        "--sb-datasets-dir",
        str(data),
        "--sb-work-dir",
        "out",
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 2 * (50 + 10)
    summary = summary_json(pytester.path / "out")
    assert {(t["model"], t["dataset_config"]) for t in summary["tasks"]} == {
        (m, d)
        for m in ("vllm_chat", "vllm_stream_chat")
        for d in ("demo_gsm8k", "gsm8k_gen_4_shot_cot_chat_prompt")
    }
    header = summary["table"]["header"]
    assert header == ["dataset", "version", "metric", "mode", "vllm_chat", "vllm_stream_chat"]


def test_node_ids_are_stable_and_selectable(pytester, gsm8k_server):
    first = run(pytester, *sb_args(gsm8k_server.base_url), "--collect-only", "-q")
    second = run(pytester, *sb_args(gsm8k_server.base_url), "--collect-only", "-q")
    ids = [line for line in first.outlines if line.startswith("servebench/")]
    assert len(ids) == 50
    assert ids == [line for line in second.outlines if line.startswith("servebench/")]
    assert ids[0].startswith("servebench/vllm_chat/demo_gsm8k::q0000_")
    case = ids[3].split("::")[1]
    result = run(pytester, *sb_args(gsm8k_server.base_url), "-k", case)
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 1
    assert "partial" in result.stdout.str()  # 1 of 50 cases: no accuracy shown as complete


def test_server_error_is_an_error_and_counts_wrong(pytester):
    def fail_janet(request, attempt):
        return "500" if "Janet" in request.prompt_text else None

    with MockServer(lambda r: "The answer is 3.", faults=fail_janet) as server:
        result = run(
            pytester,
            *sb_args(server.base_url),
            "--sb-limit",
            "3",
            "--sb-set",
            "vllm_chat.retries=1",
            "--sb-set",
            "vllm_chat.retry_backoff=0.01",
        )
        assert completion_requests(server) == 2 + 2  # the failing case was retried once
    outcomes = result.parseoutcomes()
    assert outcomes.get("errors", outcomes.get("error")) == 1
    assert "request could not be served: HTTP 500" in result.stdout.str()
    summary = summary_json(pytester.path / "out")
    task = summary["tasks"][0]
    assert task["counts"]["errors"] == 1
    assert task["counts"]["cases"] == 3
    # the error stays in the denominator
    right = task["counts"]["passed"]
    assert task["metrics"]["accuracy"] == pytest.approx(100 * right / 3, abs=1e-3)


def test_unknown_name_lists_near_matches(pytester):
    result = run(pytester, "--sb-models", "vllm_chatt", "--sb-datasets", "demo_gsm8k")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "unknown model config 'vllm_chatt'" in err
    assert "vllm_chat" in err
    assert "Traceback" not in err
    assert "collected" not in result.stdout.str()


def test_search_lists_configs(pytester):
    result = run(pytester, "--sb-search")
    assert result.ret == 0
    out = result.stdout.str()
    assert "vllm_api_general_chat" in out
    assert "gsm8k_gen_4_shot_cot_str" in out
    assert "demo_gsm8k.yaml" in out
    narrowed = run(pytester, "--sb-search", "stream")
    assert "vllm_stream_chat" in narrowed.stdout.str()
    assert "demo_gsm8k" not in narrowed.stdout.str()


def test_user_suite_folder_and_bad_yaml(pytester):
    write_suite(
        pytester.path, "mine", "kind: dataset\npath: x.jsonl\nprompt: '{q}'\nevaluater: exact\n"
    )
    result = run(pytester, "--sb-models", "vllm_chat", "--sb-datasets", "mine")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "mine.yaml:4" in err and "evaluator" in err


def test_malformed_dataset_line_names_file_and_line(pytester):
    write_suite(
        pytester.path,
        "mine",
        "kind: dataset\npath: mine/test.jsonl\nprompt: '{question}'\nevaluator: exact\n",
    )
    data = pytester.path / "datasets" / "mine"
    data.mkdir(parents=True)
    (data / "test.jsonl").write_text('{"question": "a", "answer": "b"}\n{"question": \n')
    result = run(pytester, "--sb-models", "vllm_chat", "--sb-datasets", "mine")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "test.jsonl:2" in result.stderr.str()


def test_wrong_field_type_names_file_line_and_expectation(pytester):
    write_suite(pytester.path, "m", "kind: model\nmax_concurrency: lots\n", kind="models")
    result = run(pytester, "--sb-models", "m", "--sb-datasets", "demo_gsm8k")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "m.yaml:2" in err and "max_concurrency" in err and "integer" in err


def test_custom_dataset_with_chat_prompt_and_fewshot(pytester):
    records = [
        {"id": f"r{i}", "question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(6)
    ]
    write_jsonl(pytester.path / "datasets" / "add" / "test.jsonl", records[2:])
    write_jsonl(pytester.path / "datasets" / "add" / "train.jsonl", records[:2])
    write_suite(
        pytester.path,
        "add",
        """
kind: dataset
path: add/test.jsonl
id_field: id
prompt:
  - {role: system, content: "Add numbers."}
  - {role: user, content: "Q: {question}"}
fewshot:
  path: add/train.jsonl
  k: 2
  example:
    - {role: user, content: "Q: {question}"}
    - {role: assistant, content: "{answer}"}
evaluator: numeric
""",
    )
    seen = []

    def responder(request):
        seen.append(request.body["messages"])
        question = request.body["messages"][-1]["content"]
        n = int(question.split("What is ")[1].split(" ")[0])
        return str(2 * n)

    with MockServer(responder) as server:
        result = run(pytester, *sb_args(server.base_url, dataset="add"))
    result.assert_outcomes(passed=4)
    messages = seen[0]
    assert messages[0] == {"role": "system", "content": "Add numbers."}
    assert messages[1] == {"role": "user", "content": "Q: What is 0 + 0?"}
    assert messages[2] == {"role": "assistant", "content": "0"}
    assert len(messages) == 6
    assert (
        "servebench/vllm_chat/add::r2"
        in run(
            pytester, *sb_args("http://127.0.0.1:9/v1", dataset="add"), "--collect-only", "-q"
        ).stdout.str()
    )
