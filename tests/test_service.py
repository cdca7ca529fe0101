"""Service figures per task: exact percentiles, errors by kind, tokens, concurrency; read back
from the prediction file, checked against values computed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import summary_json
from pytest_servebench.report.service import (
    busy_time,
    error_kind,
    percentile,
    render_service_text,
    service_rows,
    task_service,
)
from pytest_servebench.testing.mockserver import FaultPlan, MockServer, dataset_responder

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def ok(case, latency, tokens, end, ttft=None, finish="stop", attempts=1, sample=0, h="h"):
    return {
        "case": case,
        "sample": sample,
        "hash": h,
        "ok": True,
        "attempts": attempts,
        "latency": latency,
        "time": end,
        "content": "x",
        "finish_reason": finish,
        "prompt_tokens": 5,
        "completion_tokens": tokens,
        "ttft": ttft,
    }


def failed(case, error, latency=0.0, end=100.0, attempts=3, h="h"):
    return {
        "case": case,
        "sample": 0,
        "hash": h,
        "ok": False,
        "attempts": attempts,
        "latency": latency,
        "time": end,
        "error": error,
    }


def write(path: Path, records: list[dict], torn: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + torn, encoding="utf-8")
    return path


def test_percentile_is_numpys_linear():
    rng = np.random.default_rng(3)
    for n in (1, 2, 3, 10, 101, 1000):
        values = sorted(rng.exponential(size=n).tolist())
        for q in (0, 1, 50, 90, 99, 100):
            assert percentile(values, q) == pytest.approx(np.percentile(values, q), abs=1e-12)
    assert percentile([], 50) is None
    # by hand: 4 values, p50 halfway between the 2nd and 3rd, p90 at h = 2.7
    assert percentile([1.0, 2.0, 3.0, 7.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 7.0], 90) == pytest.approx(3.0 + 0.7 * 4.0)


def test_busy_time_is_the_union_of_spans():
    assert busy_time([(0, 1), (0.5, 2), (5, 6), (5.2, 5.4)]) == pytest.approx(3.0)
    assert busy_time([]) == 0.0


@pytest.mark.parametrize(
    "message, kind",
    [
        ("timed out (ReadTimeout) (after 3 attempts)", "timeout"),
        ("no full reply within request_timeout 5.0s (after 3 attempts)", "timeout"),
        ("HTTP 503: overloaded (after 3 attempts)", "http"),
        ("HTTP 400: bad request", "http"),
        ("HTTP 504: gateway timeout (after 3 attempts)", "http"),
        ("cannot connect to http://127.0.0.1:1/v1: refused (after 3 attempts)", "connection"),
        ("connection dropped: reset by peer (after 3 attempts)", "connection"),
        ("malformed reply: body is not JSON (after 3 attempts)", "bad_body"),
        ("stream cut before the reply finished (after 3 attempts)", "bad_body"),
        ("server returned 1 choices, expected 2", "bad_body"),
        ("internal error: KeyError: x", "other"),
    ],
)
def test_error_kinds(message, kind):
    assert error_kind(message) == kind


def test_figures_by_hand(tmp_path):
    records = [
        # a, b, c, d served; latencies 1, 2, 3, 7 s; tokens 10, 20, 30, 41
        ok("a", 1.0, 10, end=101.0, ttft=0.1),
        ok("b", 2.0, 20, end=102.0, ttft=0.2, attempts=2),
        ok("c", 3.0, 30, end=103.0, ttft=0.3, finish="length"),
        # e failed first, then served: the later success counts
        failed("e", "HTTP 503: busy (after 3 attempts)", latency=0.5, end=100.5),
        ok("d", 7.0, 41, end=107.0, ttft=1.0),
        # f served first, then a failure of the same request: the success stands
        ok("f", 1.0, 10, end=109.0, h="hf"),
        failed("f", "timed out (ReadTimeout)", h="hf", end=120.0),
        ok("e", 1.0, 1, end=111.0, ttft=0.5),
        failed("g", "timed out (ReadTimeout) (after 3 attempts)", latency=2.0, end=113.0),
        failed("h", "HTTP 500: boom (after 3 attempts)", latency=1.0, end=112.0),
        ok("not-selected", 99.0, 999, end=500.0),
    ]
    path = write(tmp_path / "p.jsonl", records, torn='{"case": "a", "sam')
    s = task_service(path, {"a", "b", "c", "d", "e", "f", "g", "h"})
    assert s is not None
    assert s["requests"] == 8 and s["ok"] == 6 and s["errors"] == 2
    assert s["error_kinds"] == {
        "timeout": 1,
        "connection": 0,
        "http": 1,
        "bad_body": 0,
        "other": 0,
    }
    assert s["http_status"] == {"500": 1}
    # attempts 1, 2, 1, 1, 1, 1 (served) and 3, 3 (failed): 1 + 2 + 2 retries
    assert s["retries"] == 5
    # served latencies sorted: 1, 1, 1, 2, 3, 7 -> p50 at h=2.5: 1.5; p90 at h=4.5: 5; p99 at
    # h=4.95: 3 + 0.95 * 4 = 6.8
    assert s["latency_s"] == {"p50": 1.5, "p90": 5.0, "p99": pytest.approx(6.8)}
    # ttft of the streamed ones: 0.1, 0.2, 0.3, 0.5, 1.0 -> p50 0.3; p99 at h=3.96
    assert s["ttft_s"]["p50"] == 0.3
    assert s["ttft_s"]["p99"] == pytest.approx(0.5 + 0.96 * 0.5)
    # inter-token time (latency - ttft) / (tokens - 1): a 0.1, b 0.094737, c 0.093103,
    # d 0.15; e has one token (none)
    itl = sorted([0.9 / 9, 1.8 / 19, 2.7 / 29, 6.0 / 40])
    assert s["itl_s"]["p50"] == pytest.approx((itl[1] + itl[2]) / 2, abs=1e-6)
    # tokens 1, 10, 10, 20, 30, 41
    assert s["completion_tokens"] == {
        "p50": 15.0,
        "p99": pytest.approx(30 + 0.95 * 11),
        "total": 112,
    }
    assert s["truncated"] == 1 and s["truncated_share"] == pytest.approx(1 / 6, abs=1e-4)
    # tokens/s per request: 10, 10, 10, 5.857, 10, 1 -> sorted 1, 5.857, 10, 10, 10, 10
    assert s["tokens_per_s_request"]["p50"] == pytest.approx(10.0)
    # spans: a [100,101] b [100,102] c [100,103] d [100,107] f [108,109] e [110,111]
    # g [111,113] h [111,112]: union 7 + 1 + 3 = 11 s; in flight 1+2+3+7+1+1+2+1 = 18 s
    assert s["wall_s"] == 11.0
    assert s["concurrency"] == pytest.approx(18 / 11, abs=0.01)
    assert s["tokens_per_s"] == pytest.approx(112 / 11, abs=0.01)


def test_n_choices_of_one_request_count_once(tmp_path):
    records = [ok("a", 2.0, 10, end=10.0, sample=i) for i in range(4)]
    s = task_service(write(tmp_path / "p.jsonl", records))
    assert s["requests"] == 1 and s["samples"] == 4
    assert s["completion_tokens"]["total"] == 40
    assert s["concurrency"] == 1.0


def test_no_file_no_figures(tmp_path):
    assert task_service(tmp_path / "missing.jsonl") is None


def test_table_rows():
    s = {
        "requests": 3,
        "errors": 2,
        "error_kinds": {"timeout": 1, "connection": 0, "http": 1, "bad_body": 0, "other": 0},
        "http_status": {"503": 1},
        "retries": 4,
        "latency_s": {"p50": 0.5, "p90": 0.9, "p99": 0.99},
        "ttft_s": {"p50": None, "p99": None},
        "itl_s": {"p50": None, "p99": None},
        "completion_tokens": {"p50": 12.0, "p99": 30.0, "total": 42},
        "truncated_share": 0.5,
        "tokens_per_s_request": {"p50": 20.0},
        "tokens_per_s": 84.0,
        "wall_s": 0.5,
        "concurrency": 1.5,
    }
    [row] = service_rows([("gsm8k", "m", s), ("other", "m", None)])
    assert row[:5] == ["gsm8k", "m", "3", "2 (timeout 1; http 503x1)", "4"]
    assert row[5:10] == ["0.500", "0.900", "0.990", "-", "-"]
    text = render_service_text([row])
    assert text.splitlines()[0].startswith("dataset")


# -- end to end: latencies planted with the mock's slow first byte ---------------------------


def test_run_reports_service_figures(pytester, demo_records):
    slow = {r["question"] for r in demo_records[:5]}  # 5 of 20 cases answer 0.3 s late
    fail = {r["question"] for r in demo_records[5:7]}  # 2 always answer HTTP 503

    def faults(request, attempt):
        text = request.prompt_text
        if any(q in text for q in fail):
            return "503"
        if any(q in text for q in slow):
            return "slow_first_byte"
        return None

    plan = FaultPlan(custom=faults, slow_first_byte=0.3)
    responder = dataset_responder(demo_records, p_correct=0.6, seed=1)
    with MockServer(responder, latency=0.02, faults=plan) as server:
        result = pytester.runpytest_subprocess(
            "--sb-models",
            "vllm_stream_chat",
            "--sb-datasets",
            "demo_gsm8k",
            "--sb-set",
            f"vllm_stream_chat.base_url={server.base_url}",
            "--sb-set",
            "vllm_stream_chat.retries=1",
            "--sb-set",
            "vllm_stream_chat.retry_backoff=0.01",
            "--sb-limit",
            "20",
            "--sb-work-dir",
            "out",
            "--tb=no",
        )
    result.stdout.fnmatch_lines(
        ["*- servebench service -*", "dataset*model*requests*errors*", "demo_gsm8k*"]
    )
    s = summary_json(pytester.path / "out")["tasks"][0]["service"]
    [predictions] = (pytester.path / "out").glob("*/predictions/*/demo_gsm8k.jsonl")
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    served = [r for r in records if r["ok"]]
    assert s["requests"] == 20 and s["ok"] == 18 == len(served)
    assert s["errors"] == 2 and s["error_kinds"]["http"] == 2 and s["http_status"] == {"503": 2}
    assert s["retries"] == 2  # retries=1: each failed case was sent twice
    latencies = [r["latency"] for r in served]
    for q in (50, 90, 99):
        assert s["latency_s"][f"p{q}"] == pytest.approx(np.percentile(latencies, q), abs=1e-6)
    ttfts = [r["ttft"] for r in served]
    assert s["ttft_s"]["p50"] == pytest.approx(np.percentile(ttfts, 50), abs=1e-6)
    # the planted delays: 5 of 18 served are >= 0.32 s, the rest well below
    assert sorted(latencies)[-5] >= 0.32 > sorted(latencies)[-6]
    assert s["latency_s"]["p99"] >= 0.32 and s["latency_s"]["p50"] < 0.3
    tokens = [r["completion_tokens"] for r in served]
    assert s["completion_tokens"]["total"] == sum(tokens)
    assert s["completion_tokens"]["p50"] == pytest.approx(np.percentile(tokens, 50))
    # the same table in the txt and md files
    [txt] = (pytester.path / "out").glob("*/summary/summary_*.txt")
    [md] = (pytester.path / "out").glob("*/summary/summary_*.md")
    assert "tok/s req" in txt.read_text() and "| dataset | model | requests |" in md.read_text()


def test_service_figures_under_xdist(pytester, gsm8k_server):
    result = pytester.runpytest_subprocess(
        "--sb-models",
        "vllm_chat",
        "vllm_stream_chat",
        "--sb-datasets",
        "demo_gsm8k",
        "--sb-set",
        f"vllm_chat.base_url={gsm8k_server.base_url}",
        "--sb-set",
        f"vllm_stream_chat.base_url={gsm8k_server.base_url}",
        "--sb-limit",
        "10",
        "--sb-work-dir",
        "out",
        "--tb=no",
        "-n",
        "2",
    )
    result.stdout.fnmatch_lines(["*- servebench service -*"])
    tasks = summary_json(pytester.path / "out")["tasks"]
    assert [t["service"]["requests"] for t in tasks] == [10, 10]
    # ttft only where streamed
    ttft = {t["model"]: t["service"]["ttft_s"]["p50"] for t in tasks}
    assert ttft["vllm_chat"] is None and ttft["vllm_stream_chat"] is not None
