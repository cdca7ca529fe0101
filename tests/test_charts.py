"""The html report's charts: accuracy rows readable at 57 subjects, latency CDF per model,
accuracy by output length; figures checked by hand."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import SHARED_DATASETS
from test_html import CHROMIUM, chromium_dom

from pytest_servebench.report.charts import (
    _cdf_points,
    accuracy_chart,
    latency_cdf_chart,
    length_accuracy_chart,
    length_buckets,
    merge_buckets,
    model_charts,
    read_latencies,
)
from pytest_servebench.scoring.aggregate import TaskResult
from pytest_servebench.scoring.verdict import Verdict
from pytest_servebench.testing.mockserver import MockServer, Reply


def task(model: str, dataset: str, verdicts: dict[str, dict], samples: int = 1) -> TaskResult:
    result = TaskResult(
        key=f"{model}/{dataset}",
        model=model,
        model_name=model,
        dataset=dataset,
        dataset_name=dataset,
        version="v",
        mode="gen",
        run_mode="all",
        samples=samples,
        case_ids=list(verdicts),
    )
    for case, verdict in verdicts.items():
        result.add(case, Verdict.from_dict(verdict))
    return result


def verdict(right: bool, tokens: int | None, truncated: bool = False, error: bool = False):
    return {
        "status": "error" if error else ("passed" if right else "failed"),
        "correct": [right],
        "scores": [1.0 if right else 0.0],
        "votes": ["1"],
        "errors": int(error),
        "truncated": int(truncated),
        "unparsable": 0,
        "completion_tokens": tokens,
    }


def test_accuracy_chart_is_readable_at_57_subjects():
    subjects = [f"high_school_subject_number_{i:02d}" for i in range(57)]
    results = [
        task(m, s, {f"q{j}": verdict(j < i % 10, 10) for j in range(10)})
        for s, i in zip(subjects, range(57))
        for m in ("model_a", "model_b")
    ]
    svg = accuracy_chart(results)
    root = ET.fromstring(svg)
    width, height = float(root.get("width")), float(root.get("height"))
    # one row per subject: the picture grows in height, its width stays under a screen's
    assert width <= 1000
    assert height >= 57 * 2 * 10
    bars = re.findall(r'<rect class="sb-bar"[^>]*width="([\d.]+)"[^>]*data-value="([\d.]+)"', svg)
    assert len(bars) == 114
    # a bar's length is proportional to its value (420 px for 100 %)
    for length, value in bars:
        assert float(length) == pytest.approx(4.2 * float(value), abs=0.06)
    # every subject's full name is there, as a label, not cut
    for s in subjects:
        assert f">{s}<title>{s}</title>" in svg
    # labels do not overlap: each row's label sits at least 10 px below the previous one
    label_y = [
        float(y)
        for y in re.findall(r'<text x="\d+" y="([\d.]+)" text-anchor="end" fill="#222">high', svg)
    ]
    assert len(label_y) == 57 and min(b - a for a, b in itertools.pairwise(label_y)) >= 10


def test_cdf_points_and_chart(tmp_path):
    values = [0.1 * i for i in range(1, 11)]
    points = _cdf_points(values, points=200)
    assert points[0] == (0.1, 0.1) and points[-1] == (values[-1], 1.0)
    assert len(points) == 10
    many = [i / 1000 for i in range(10_000)]
    assert len(_cdf_points(many)) == 200
    svg = latency_cdf_chart({"m<1>": values, "empty": []})
    ET.fromstring(svg)
    assert svg.count('class="sb-cdf"') == 1
    assert "m&lt;1&gt;: 10 requests; p50 0.550 s, p90 0.910 s, p99 0.991 s" in svg
    assert "<script" not in svg and "style=" not in svg
    assert latency_cdf_chart({}) == ""


def test_read_latencies_from_prediction_files(tmp_path):
    lines = [
        {"case": "a", "sample": 0, "hash": "h", "ok": True, "latency": 0.3, "time": 1.0},
        {"case": "b", "sample": 0, "hash": "h", "ok": False, "latency": 9.0, "time": 2.0},
        {"case": "c", "sample": 0, "hash": "h", "ok": True, "latency": 0.1, "time": 3.0},
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    other = tmp_path / "q.jsonl"
    other.write_text(json.dumps({**lines[0], "latency": 0.2}) + "\n")
    assert list(read_latencies([path, other, tmp_path / "missing.jsonl"])) == [0.1, 0.2, 0.3]


def test_accuracy_by_output_length_by_hand():
    verdicts = {
        "a": verdict(True, 10),  # 0-63
        "b": verdict(False, 63),  # 0-63
        "c": verdict(True, 64),  # 64-127
        "d": verdict(True, 200),  # 128-255
        "e": verdict(False, 250),  # 128-255
        "f": verdict(False, 255),  # 128-255
        "g": verdict(False, 512, truncated=True),  # truncated
        "h": verdict(True, 300, truncated=True),  # truncated
        "i": verdict(False, None, error=True),  # no reply: not in a bucket
    }
    buckets = length_buckets(task("m", "d", verdicts))
    assert buckets == [
        ("0-63", 2, 50.0),
        ("64-127", 1, 100.0),
        ("128-255", 3, pytest.approx(100 / 3)),
        ("truncated", 2, 50.0),
    ]
    merged = merge_buckets([buckets, [("0-63", 2, 100.0), ("256-511", 1, 0.0)]])
    assert merged[0] == ("0-63", 4, 75.0)
    assert [b[0] for b in merged] == ["0-63", "64-127", "128-255", "256-511", "truncated"]
    svg = length_accuracy_chart({"m": buckets})
    ET.fromstring(svg)
    bars = re.findall(r'data-bucket="([^"]+)" data-cases="(\d+)" data-value="([\d.]+)"', svg)
    assert bars == [("0-63", "2", "50.00"), ("64-127", "1", "100.00"),
                    ("128-255", "3", "33.33"), ("truncated", "2", "50.00")]  # fmt: skip
    assert 'fill="#D55E00" data-model="m" data-bucket="truncated"' in svg


def test_model_charts_section(tmp_path: Path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        json.dumps({"case": "a", "sample": 0, "hash": "h", "ok": True, "latency": 0.5, "time": 1})
        + "\n"
    )
    result = task("m", "d", {"a": verdict(True, 10)})
    section = model_charts([result], {result.key: path})
    assert "<h3>Latency distribution per model</h3>" in section
    assert 'id="sb-latency-cdf"' in section and 'id="sb-length-accuracy"' in section


# -- a 57-subject MMLU run, its report opened in headless Chromium ---------------------------

# the shared data beside the checkout, or wherever $SERVEBENCH_DATASETS points
DATA_DIR = next(
    (
        Path(d)
        for d in (SHARED_DATASETS, os.environ.get("SERVEBENCH_DATASETS", ""))
        if d and (Path(d) / "mmlu").is_dir()
    ),
    SHARED_DATASETS,
)
MMLU_DIR = DATA_DIR / "mmlu"


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium not installed")
@pytest.mark.skipif(not MMLU_DIR.is_dir(), reason=f"MMLU not found under {MMLU_DIR}")
def test_mmlu_57_subjects_report_in_chromium(pytester, tmp_path):
    def responder(request):
        h = int(hashlib.md5(request.prompt_text.encode()).hexdigest(), 16)
        words = " ".join(["w"] * (h % 300))
        finish = "length" if h % 7 == 0 else "stop"
        return Reply(f"{words} The answer is {'ABCD'[h % 4]}", finish_reason=finish)

    with MockServer(responder, latency=0.005) as server:
        result = pytester.runpytest_subprocess(
            "--sb-models",
            "vllm_chat",
            "--sb-datasets",
            "mmlu_gen_5_shot_chat_prompt",
            f"--sb-datasets-dir={DATA_DIR}",
            "--sb-set",
            f"vllm_chat.base_url={server.base_url}",
            "--sb-limit",
            "2",
            "--sb-work-dir",
            "out",
            "--tb=no",
            "-q",
            "--html",
            "report.html",
            "--self-contained-html",
        )
    assert result.ret == 1, result.stdout.str()[-2000:]
    dom = chromium_dom(pytester.path / "report.html", tmp_path / "profile")
    chart = re.search(r'<svg[^>]*id="sb-accuracy-chart".*?</svg>', dom, re.S).group(0)
    assert chart.count('<rect class="sb-bar"') == 57
    width = float(re.search(r'<svg[^>]*width="([\d.]+)"', chart).group(1))
    assert width <= 1000  # rows, not a 9,906 px wide picture squeezed into the page
    assert '<div class="sb-scroll">' in dom
    cdf = re.search(r'<svg[^>]*id="sb-latency-cdf".*?</svg>', dom, re.S).group(0)
    assert 'data-model="vllm_chat" data-requests="114"' in cdf
    lengths = re.search(r'<svg[^>]*id="sb-length-accuracy".*?</svg>', dom, re.S).group(0)
    cases = re.findall(r'data-cases="(\d+)"', lengths)
    assert sum(map(int, cases)) == 114  # every case in exactly one bucket
