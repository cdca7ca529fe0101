"""Several tasks at once (xdist), repeated sampling, multi-endpoint, progress."""

from __future__ import annotations

import json
import re

import pytest

from conftest import completion_requests, stable, summary_json, write_jsonl
from pytest_servebench.testing.mockserver import FaultPlan, MockServer, dataset_responder

pytest.importorskip("xdist")


def matrix_args(url: str, data, *extra: str) -> list[str]:
    return [
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
        f"--sb-datasets-dir={data}",
        "-p",
        "no:benchmark",
        *extra,
    ]


def comparable(summary: dict) -> tuple:
    tasks = sorted(
        (
            t["model"],
            t["dataset_config"],
            json.dumps(t["metrics"], sort_keys=True),
            json.dumps(t["counts"], sort_keys=True),
        )
        for t in summary["tasks"]
    )
    return summary["table"]["header"], summary["table"]["rows"], tasks


def test_summary_identical_with_0_2_and_4_workers(pytester, demo_records):
    data = pytester.path / "data"
    write_jsonl(data / "gsm8k" / "test.jsonl", demo_records[10:30])
    with MockServer(stable(dataset_responder(demo_records, p_correct=0.6, seed=4))) as srv:
        summaries = []
        for n in ("0", "2", "4"):
            result = pytester.runpytest_subprocess(
                *matrix_args(srv.base_url, data, "--sb-work-dir", f"out{n}", "-n", n, "-v")
            )
            outcomes = result.parseoutcomes()
            assert outcomes["passed"] + outcomes["failed"] == 2 * (50 + 20)
            summaries.append(comparable(summary_json(pytester.path / f"out{n}")))
            if n != "0":
                workers: dict[str, set[str]] = {}
                for line in result.outlines:
                    match = re.match(r"\[(gw\d+)\] .*(PASSED|FAILED) (servebench/\S+)::", line)
                    if match:
                        workers.setdefault(match.group(3), set()).add(match.group(1))
                assert len(workers) == 4
                assert all(len(w) == 1 for w in workers.values()), workers  # tasks never split
    header, rows, _ = summaries[0]
    assert header[4:] == ["vllm_chat", "vllm_stream_chat"]
    assert sum(1 for r in rows if r[2] == "accuracy") == 2  # two datasets, four cells
    assert summaries[0] == summaries[1] == summaries[2]


def test_last_failed_with_workers_reruns_exactly_the_failed(pytester, demo_records):
    data = pytester.path / "data"
    write_jsonl(data / "gsm8k" / "test.jsonl", demo_records[10:20])
    broken = {r["question"][:40] for r in demo_records[:3]}

    def fault(request, attempt):
        return "500" if any(q in request.prompt_text for q in broken) else None

    responder = stable(dataset_responder(demo_records, p_correct=0.6, seed=4))
    with MockServer(responder, faults=fault) as srv:
        args = matrix_args(
            srv.base_url,
            data,
            "--sb-set",
            "vllm_chat.retries=0",
            "--sb-set",
            "vllm_stream_chat.retries=0",
        )
        first = pytester.runpytest_subprocess(*args, "-n", "2")
        failed = first.parseoutcomes()
        failed_ids = {
            line.split()[1]
            for line in first.outlines
            if line.startswith(("FAILED servebench", "ERROR servebench"))
        }
        assert failed["errors"] == 2 * 3
        retest = pytester.runpytest_subprocess(*args, "--lf", "-n", "2", "-rA")
    rerun_ids = {
        line.split()[1]
        for line in retest.outlines
        if line.startswith(("PASSED servebench", "FAILED servebench", "ERROR servebench"))
    }
    assert rerun_ids == failed_ids
    task = next(t for t in summary_json(pytester.path / "outputs" / "default")["tasks"])
    assert task["counts"]["evaluated"] == task["counts"]["cases"]


# Per-case truth table for k=4: True = the sample's answer is right.
TRUTH = [
    [False, False, False, False],  # c=0
    [True, False, False, False],  # c=1
    [True, True, False, False],  # c=2 (a tie)
    [False, True, True, False],  # c=2 (a tie)
    [True, True, True, False],  # c=3
    [True, True, True, True],  # c=4
]


def _sampling_responder(records):
    index = {r["question"][:50]: i for i, r in enumerate(records[: len(TRUTH)])}

    def respond(request):
        case = next(i for q, i in index.items() if q in request.prompt_text)
        reference = int(records[case]["answer"].split("####")[-1].replace(",", ""))
        right = TRUTH[case][request.sample_index]
        return f"Working it out.\nanswer: {reference if right else reference + 1}"

    return respond


@pytest.mark.parametrize("use_n", [False, True])
def test_repeated_sampling_metrics_per_case(pytester, demo_records, use_n):
    from math import comb

    k = 4
    with MockServer(_sampling_responder(demo_records)) as srv:
        result = pytester.runpytest_subprocess(
            "--sb-models",
            "vllm_chat",
            "--sb-datasets",
            "demo_gsm8k",
            "--sb-set",
            f"vllm_chat.base_url={srv.base_url}",
            "--sb-set",
            f"vllm_chat.generation_kwargs.num_return_sequences={k}",
            "--sb-set",
            f"vllm_chat.supports_n={str(use_n).lower()}",
            "--sb-limit",
            str(len(TRUTH)),
            "--sb-work-dir",
            "out",
        )
        assert completion_requests(srv) == (len(TRUTH) if use_n else len(TRUTH) * k)
    counts = [sum(row) for row in TRUTH]
    n = len(TRUTH)
    expected = {
        f"avg@{k}": 100 * sum(c / k for c in counts) / n,
        f"accuracy ({k} runs average)": 100 * sum(c / k for c in counts) / n,
        f"pass@{k}": 100 * sum(1 - comb(k - c, k) / comb(k, k) for c in counts) / n,
        f"cons@{k}": 100 * sum(c > k / 2 for c in counts) / n,
        # majority vote: the right answer wins with c=3,4; a 2-2 tie has no winner
        f"maj@{k}": 100 * sum([False, False, False, False, True, True]) / n,
    }
    metrics = summary_json(pytester.path / "out")["tasks"][0]["metrics"]
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-3), name
    # a case passes when more than half of its samples are right
    outcomes = result.parseoutcomes()
    assert outcomes["passed"] == sum(c > k / 2 for c in counts)
    table = result.stdout.str()
    assert f"pass@{k}" in table and f"cons@{k}" in table and f"maj@{k}" in table


def test_replicas_share_load_and_a_failing_one_is_avoided(pytester, demo_records):
    responder = dataset_responder(demo_records, p_correct=0.6, seed=1)
    with (
        MockServer(responder) as good,
        MockServer(responder, faults=FaultPlan({"500": 1.0})) as bad,
    ):
        result = pytester.runpytest_subprocess(
            "--sb-models",
            "vllm_chat",
            "--sb-datasets",
            "demo_gsm8k",
            "--sb-set",
            f"vllm_chat.base_url=[{good.base_url}, {bad.base_url}]",
            "--sb-set",
            "vllm_chat.model=m",
            "--sb-set",
            "vllm_chat.retries=3",
            "--sb-set",
            "vllm_chat.retry_backoff=0.01",
            "--sb-set",
            "vllm_chat.max_concurrency=4",
        )
        bad_hits = completion_requests(bad)
        good_hits = completion_requests(good)
    outcomes = result.parseoutcomes()
    assert "errors" not in outcomes
    assert good_hits == 50
    assert 1 <= bad_hits < 25  # tried, then avoided while it keeps failing


def test_two_popen_gateways(pytester, demo_records):
    with MockServer(stable(dataset_responder(demo_records, p_correct=0.6, seed=4))) as srv:
        base = [
            "--sb-models",
            "vllm_chat",
            "vllm_stream_chat",
            "--sb-datasets",
            "demo_gsm8k",
            "--sb-set",
            f"vllm_chat.base_url={srv.base_url}",
            "--sb-set",
            f"vllm_stream_chat.base_url={srv.base_url}",
            "-p",
            "no:benchmark",
        ]
        pytester.runpytest_subprocess(*base, "--sb-work-dir", "local")
        remote = pytester.runpytest_subprocess(
            *base, "--sb-work-dir", "gw", "--dist", "load", "--tx", "popen", "--tx", "popen"
        )
    assert "2 workers" in remote.stdout.str() or "[gw1]" in remote.stdout.str()
    assert comparable(summary_json(pytester.path / "local")) == comparable(
        summary_json(pytester.path / "gw")
    )


def test_progress_lines_in_a_ci_log(pytester, demo_records):
    with MockServer(dataset_responder(demo_records, p_correct=0.6, seed=1), latency=0.3) as srv:
        result = pytester.runpytest_subprocess(
            "--sb-models",
            "vllm_chat",
            "--sb-datasets",
            "demo_gsm8k",
            "--sb-set",
            f"vllm_chat.base_url={srv.base_url}",
            "--sb-set",
            "vllm_chat.max_concurrency=10",
            "--sb-progress",
            "0.5",
        )
    lines = [
        line for line in result.outlines if line.startswith("[servebench] vllm_chat/demo_gsm8k")
    ]
    assert lines, result.stdout.str()
    assert all(re.search(r"posted \d+ received \d+ finished \d+ failed \d+", x) for x in lines)
    assert "\x1b" not in result.stdout.str()  # no escape codes when not a terminal


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_a_missing_data_file_stops_the_run_with_its_message_also_under_xdist(pytester, workers):
    """Under xdist the workers' collection error used to vanish: '2 workers [0 items]', exit 0.
    The controller now checks the data files before any worker or server starts."""
    result = pytester.runpytest_subprocess(
        "--sb-models", "vllm_chat", "--sb-datasets", "gsm8k", "-p", "no:randomly", *workers
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "dataset 'gsm8k' expects its data file at" in err
    assert "python -m pytest_servebench download gsm8k" in err
    assert "Traceback" not in err + result.stdout.str()
