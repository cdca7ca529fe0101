"""Run-to-run comparison with planted flips, a missing case, a failed request and planted
latencies; every figure checked against values computed by hand here."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pytest_servebench.report.compare import (
    RunView,
    TaskView,
    compare_runs,
    compare_tasks,
    load_run,
)
from pytest_servebench.scoring.metrics import mcnemar_exact
from pytest_servebench.testing.mockserver import FaultPlan, MockServer, dataset_responder

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

N = 30
WRONG_A = {0, 1, 2}
WRONG_B = {0, *range(3, 15)}  # flips: 1, 2 wrong->right; 3..14 right->wrong
MISSING_B = 29  # deselected in B
FAILED_B = 20  # HTTP 500 in B, no retry


def planted(records, wrong: set[int]):
    base = dataset_responder(records, p_correct=1.0)

    def respond(request):
        i = base.find_index(request.prompt_text)
        record = base.records[i]
        return base.render(record["question"], base.reference(record), i not in wrong, 0)

    return respond


def run(pytester, server: MockServer, out: str, *extra: str) -> Path:
    result = pytester.runpytest_subprocess(
        "--sb-models",
        "vllm_stream_chat",
        "--sb-datasets",
        "demo_gsm8k",
        "--sb-set",
        f"vllm_stream_chat.base_url={server.base_url}",
        "--sb-set",
        "vllm_stream_chat.retries=0",
        "--sb-limit",
        str(N),
        "--sb-work-dir",
        out,
        "--tb=no",
        *extra,
    )
    assert result.ret in (0, 1), result.stdout.str()
    [run_dir] = (pytester.path / out).iterdir()
    run_dir.joinpath("stdout.txt").write_text(result.stdout.str())
    return run_dir


@pytest.fixture
def two_runs(pytester, demo_records):
    records = demo_records[:N]
    respond_a = planted(records, WRONG_A)
    with MockServer(respond_a, latency=0.01) as server:
        run_a = run(pytester, server, "out_a")
    respond_b = planted(records, WRONG_B)
    failing = records[FAILED_B]["question"]
    plan = FaultPlan(custom=lambda req, attempt: "500" if failing in req.prompt_text else None)
    with MockServer(respond_b, latency=0.15, faults=plan) as server:
        baseline = f"--sb-baseline={run_a}"
        run_b = run(pytester, server, "out_b", "-k", f"not q{MISSING_B:04d}", baseline)
    return run_a, run_b


def ids(run_dir: Path) -> dict[int, str]:
    """Position -> case id, from the run's own results file."""
    data = json.loads((run_dir / "results" / "vllm_stream_chat" / "demo_gsm8k.json").read_text())
    return {int(c["case"][1:5]): c["case"] for c in data["cases"]}


def test_compare_two_runs_with_planted_flips(pytester, two_runs):
    run_a, run_b = two_runs
    case = ids(run_a)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest_servebench",
            "compare",
            str(run_a),
            str(run_b),
            "--html",
            "cmp.html",
            "--json",
            "cmp.json",
            "--fail-on-worse",
        ],
        cwd=pytester.path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr  # significantly worse
    report = json.loads((pytester.path / "cmp.json").read_text())
    [row] = report["datasets"]
    # by hand: 30 cases; B misses 29 and failed on 20 -> 28 answered by both
    assert row["common"] == 28
    assert row["only_in_a"] == [case[MISSING_B]]
    assert row["only_in_b"] == []
    assert row["unanswered_in_b"] == [case[FAILED_B]]
    assert row["not_evaluated_b"] == 1
    assert sorted(row["right_to_wrong"]) == sorted(case[i] for i in range(3, 15))
    assert sorted(row["wrong_to_right"]) == [case[1], case[2]]
    # accuracy: A 27/30; B 15 of its 29 evaluated (the failed request counts wrong)
    assert row["a"] == pytest.approx(90.0)
    assert row["b"] == pytest.approx(round(100 * 15 / 29, 4))
    # paired, on the 28 common cases: A right on 25, B on 15; McNemar with 2 vs 12 discordant
    paired = row["paired"]
    assert paired["test"] == "mcnemar"
    assert paired["diff"] == pytest.approx(100 * (15 - 25) / 28)
    expected_p = 2 * (1 + 14 + 91) / 2**14
    assert paired["p_value"] == pytest.approx(expected_p) == mcnemar_exact(2, 12)
    assert paired["significant"] and row["significantly_worse"]
    assert report["significantly_worse"] == ["vllm_stream_chat/demo_gsm8k"]
    # the terminal shows the same
    assert "significantly WORSE (McNemar p=0.0129, 28 cases)" in proc.stdout
    assert "right->wrong: 12: " in proc.stdout and "wrong->right: 2: " in proc.stdout
    assert f"only in A: 1: {case[MISSING_B]}" in proc.stdout
    assert f"request failed in B: 1: {case[FAILED_B]}" in proc.stdout
    # the two summaries side by side
    assert (
        f"  summary A->B: accuracy 90.00->{100 * 15 / 29:.2f}; errors 0->1; truncated 0->0; "
        "unparsable 0->0"
    ) in proc.stdout.splitlines()
    # service differences: the figures of each run's summary, B - A, from the predictions
    service = {s["figure"]: s for s in row["service"]}
    for run_dir, side in ((run_a, "a"), (run_b, "b")):
        [predictions] = run_dir.glob("predictions/*/demo_gsm8k.jsonl")
        served = [json.loads(x) for x in predictions.read_text().splitlines()]
        latencies = [r["latency"] for r in served if r["ok"]]
        for q in (50, 90, 99):
            got = service[f"latency p{q} s"][side]
            assert got == pytest.approx(np.percentile(latencies, q), abs=1e-6)
    assert service["errors"]["a"] == 0 and service["errors"]["b"] == 1
    assert service["requests"]["b"] == 29
    # planted latencies: 0.01 s in A, 0.15 s in B
    assert service["latency p50 s"]["a"] < 0.15 <= service["latency p50 s"]["b"]
    lat = service["latency p50 s"]
    assert lat["change"] == pytest.approx(lat["b"] - lat["a"])
    assert lat["ratio"] == pytest.approx(lat["b"] / lat["a"])
    html = (pytester.path / "cmp.html").read_text()
    assert case[3] in html and "significantly WORSE" in html
    # without --fail-on-worse the exit status is 0; in reverse B got better
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_servebench", "compare", str(run_b), str(run_a)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0
    assert "significantly BETTER" in proc.stdout
    assert "only in B: 1: " + case[MISSING_B] in proc.stdout


def test_summary_json_files_work_too(pytester, two_runs):
    run_a, run_b = two_runs
    [summary_a] = run_a.glob("summary/summary_*.json")
    report = compare_runs(load_run(summary_a), load_run(run_b))
    assert report["datasets"][0]["common"] == 28
    # a summary copied away from its run (and its work dir gone): said, not silently empty
    lone = pytester.path / "lone.json"
    data = json.loads(summary_a.read_text())
    data["work_dir"] = str(pytester.path / "gone")
    lone.write_text(json.dumps(data))
    [row] = compare_runs(load_run(lone), load_run(run_b))["datasets"]
    assert row["common"] == 0 and row["notes"] == [
        f"A: no per-case results at {pytester.path / 'gone' / 'results' / 'vllm_stream_chat' / 'demo_gsm8k.json'}"
    ]


def view(scores: dict[str, float], errors=(), model="m", metric=None) -> TaskView:
    return TaskView(
        model=model,
        model_config=model,
        dataset="d",
        dataset_config="d",
        samples=1,
        complete=True,
        metrics={
            "accuracy": metric if metric is not None else 100 * sum(scores.values()) / len(scores)
        },
        cases=len(scores),
        scores=scores,
        errors=set(errors),
    )


def test_fractional_scores_use_the_bootstrap():
    a = view({f"c{i}": 0.5 for i in range(20)})
    b = view({f"c{i}": 0.5 if i else 1.0 for i in range(20)})
    row = compare_tasks(a, b)
    assert row["paired"]["test"] == "paired_bootstrap"
    assert row["notes"] == []
    b.version, a.version = "v2", "v1"
    assert compare_tasks(a, b)["notes"] == [
        "dataset version v1 in A, v2 in B: the data, prompt or evaluator changed, not only "
        "the server"
    ]
    assert row["wrong_to_right"] == ["c0"] and row["right_to_wrong"] == []
    assert row["paired"]["diff"] == pytest.approx(100 * 0.5 / 20)
    assert not math.isnan(row["paired"]["p_value"])


def test_bad_run_paths_say_what_to_give(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_servebench", "compare", str(tmp_path / "empty"), "x"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "no summary/summary_*.json in this folder" in proc.stderr


def test_sb_baseline_prints_flips_and_significance(two_runs):
    run_a, run_b = two_runs
    case = ids(run_a)
    out = (run_b / "stdout.txt").read_text()
    section = out[out.index("servebench vs baseline") :]
    lines = section.splitlines()
    assert lines[1].startswith(f"baseline (A): {run_a}/summary/summary_")
    # B's own accuracy is over its 29 evaluated cases (the run is partial: -k)
    assert (
        f"demo_gsm8k / vllm_stream_chat: accuracy 90.00 -> {100 * 15 / 29:.2f} "
        f"({100 * 15 / 29 - 90:+.2f}); significantly WORSE (McNemar p=0.0129, 28 cases)"
    ) in lines
    flipped = ", ".join(case[i] for i in range(3, 13))
    assert f"  right->wrong: 12: {flipped}, ... (2 more)" in lines
    assert f"  wrong->right: 2: {case[1]}, {case[2]}" in lines
    assert f"  only in A: 1: {case[MISSING_B]}" in lines
    assert f"  request failed in B: 1: {case[FAILED_B]}" in lines
    assert any(line.startswith("  service A->B: errors 0->1; retries 0->0;") for line in lines)


def test_sb_baseline_wrong_path_stops_before_any_request(pytester):
    result = pytester.runpytest_subprocess(
        "--sb-models",
        "vllm_chat",
        "--sb-datasets",
        "demo_gsm8k",
        "--sb-set",
        "vllm_chat.base_url=http://127.0.0.1:9/v1",
        "--sb-baseline=nowhere",
    )
    assert result.ret == 4  # usage error
    result.stderr.fnmatch_lines(["*--sb-baseline */nowhere: no such file or folder*"])


def test_subsets_are_also_compared_as_one_group():
    def subject(name, scores):
        return TaskView(
            model="m",
            model_config="m",
            dataset=f"mmlu_{name}",
            dataset_config=f"mmlu_cfg/{name}",
            samples=1,
            complete=True,
            metrics={"accuracy": 100 * sum(scores.values()) / len(scores)},
            cases=len(scores),
            scores=scores,
        )

    a = RunView("A", Path("a.json"), [subject("x", {"1": 1.0, "2": 1.0, "3": 0.0}),
                                      subject("y", {"1": 1.0, "2": 0.0})])  # fmt: skip
    b = RunView("B", Path("b.json"), [subject("x", {"1": 0.0, "2": 1.0, "3": 0.0}),
                                      subject("y", {"1": 0.0, "2": 0.0})])  # fmt: skip
    rows = compare_runs(a, b)["datasets"]
    assert [r["dataset"] for r in rows] == ["mmlu_x", "mmlu_y", "mmlu_cfg (all 2 subsets)"]
    group = rows[2]
    # by hand: A 3 of 5 right, B 1 of 5; two right->wrong, none the other way
    assert group["a"] == pytest.approx(60.0) and group["b"] == pytest.approx(20.0)
    assert group["right_to_wrong"] == ["x/1", "y/1"] and group["wrong_to_right"] == []
    assert group["paired"]["p_value"] == pytest.approx(0.5)  # 2 * C(2,0) / 2^2
    assert group["common"] == 5
