"""Each built-in dataset config end to end on the real files in ../shared/datasets, against a
mock server whose answers come from the raw files read here independently (never through the
package's reader): item counts equal the published sizes, and the accuracy in the summary is
exactly the share of questions the server answered right."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_servebench.testing.mockserver import MockServer, Reply

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"
pytestmark = [
    pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/datasets is absent"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]
TAIL = 30
BOX = "\\boxed{}"


def jsonl(rel: str) -> list[dict]:
    return [json.loads(line) for line in (SHARED / rel).open(encoding="utf-8") if line.strip()]


def csv_rows(rel: str, header: bool) -> list:
    with (SHARED / rel).open(encoding="utf-8") as handle:  # universal newlines, like AISBench
        return list(csv.DictReader(handle)) if header else list(csv.reader(handle))


MMLU_SUBJECTS = sorted(
    p.name[: -len("_test.csv")] for p in (SHARED / "mmlu" / "test").glob("*.csv")
)


def opts(a, b, c, d) -> str:
    return f"\nA. {a}\nB. {b}\nC. {c}\nD. {d}"


def aime25_text(record: dict) -> str:
    # The three records with mis-escaped LaTeX, restored as ../shared/datasets/README.md says.
    text = record["problem"].replace("\x0c", "\\f")
    return text.replace("\t", "\\t") if record["id"] == "19" else text


def cases(name: str) -> list[tuple[str, str, str]]:
    """(end of the expected prompt, reference answer, kind) for every question of a config."""
    out: list[tuple[str, str, str]] = []
    if name.startswith("aime2024"):
        tail = "\nPlease reason step by step, and put your final answer within " + BOX + "."
        out = [(r["question"] + tail, r["answer"], "math") for r in jsonl("aime2024/test.jsonl")]
    elif name.startswith("aime2025"):
        tail = "\nRemember to put your final answer within " + BOX + "."
        out = [
            (aime25_text(r) + tail, str(r["answer"]), "math") for r in jsonl("aime2025/test.jsonl")
        ]
    elif name.startswith(("math500", "math_prm800k_500_0shot")):
        tail = "\nPlease reason step by step, and put your final answer within " + BOX + "."
        out = [(r["problem"] + tail, r["answer"], "math") for r in jsonl("math500/test.jsonl")]
    elif name.startswith("ARC_c"):
        out = [
            (r["query"] + opts(*r["choices"]) + "\nAnswer:", "ABCD"[r["gold"]], "choice")
            for r in jsonl("arc_challenge/test.jsonl")
        ]
    elif name == "mmlu_gen_5_shot_chat_prompt":
        for subject in MMLU_SUBJECTS:
            hint = (
                f"There is a single choice question about {subject.replace('_', ' ')}. "
                "Answer the question by replying A, B, C or D.\nQuestion: "
            )
            for row in csv_rows(f"mmlu/test/{subject}_test.csv", header=False):
                out.append((hint + row[0] + opts(*row[1:5]) + "\nAnswer: ", row[5], "choice"))
    elif name == "mmlu_gen_5_shot_str":
        for subject in MMLU_SUBJECTS:
            for row in csv_rows(f"mmlu/test/{subject}_test.csv", header=False):
                out.append((row[0] + opts(*row[1:5]) + "\nAnswer:", row[5], "leading"))
    elif name.startswith("ceval"):
        mapping = json.loads((SHARED / "ceval" / "subject_mapping.json").read_text("utf-8"))
        for subject, (_, zh, _) in mapping.items():
            for r in csv_rows(f"ceval/val/{subject}_val.csv", header=True):
                body = r["question"] + opts(r["A"], r["B"], r["C"], r["D"])
                if name.endswith("_chat_prompt"):
                    cot = "回答之前先一步步思考。" if "_cot_" in name else ""
                    text = (
                        f"以下是中国关于{zh}考试的单项选择题，请选出其中的正确答案。回答的最后一行应采用"
                        "以下格式：”answer:$LETTER“（不带引号），其中LETTER 是ABCD之一。"
                        + cot
                        + "\n\n"
                        + body
                    )
                    out.append((text, r["answer"], "choice"))
                else:
                    out.append((body + "\n答案: ", r["answer"], "leading"))
    return out


def right(key: str) -> bool:
    return hashlib.blake2b(key.encode(), digest_size=4).digest()[0] < 154  # ~60%


def reply_for(reference: str, kind: str, correct: bool) -> str:
    if kind == "math":
        answer = reference if correct else "\\text{no idea}"
        return f"Working through it step by step.\nSo the answer is $\\boxed{{{answer}}}$."
    letter = reference if correct else "ABCD"[("ABCD".index(reference) + 1) % 4]
    if kind == "leading":
        return f" {letter}\n\nQuestion: and the next one?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: A"
    return f"Let me think about each option.\nThe answer is ({letter})."


def responder_for(name: str) -> tuple[Callable, dict[str, tuple[str, str] | None]]:
    """A responder recognising each question by the text the prompt must end with."""
    table: dict[str, tuple[str, str] | None] = {}
    for text, reference, kind in cases(name):
        if text in table and table[text] != (reference, kind):
            table[text] = None  # the same question twice with two answers: never answered
        else:
            table[text] = (reference, kind)
    buckets: dict[str, list[str]] = {}
    for text in table:
        buckets.setdefault(text[-TAIL:], []).append(text)

    def respond(request) -> Reply:
        body = request.body
        prompt = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
        ends = [t for t in buckets.get(prompt[-TAIL:], ()) if prompt.endswith(t)]
        found = table[max(ends, key=len)] if ends else None
        if found is None:
            return Reply("I don't know.")
        reference, kind = found
        return Reply(reply_for(reference, kind, right(max(ends, key=len))))

    return respond, table


def expected(name: str) -> tuple[int, float, int]:
    """(questions, accuracy in percent, questions the server cannot tell apart)."""
    _, table = responder_for(name)
    texts = [text for text, _, _ in cases(name)]
    good = sum(1 for t in texts if table[t] is not None and right(t))
    unknown = sum(1 for t in texts if table[t] is None)
    return len(texts), 100.0 * good / len(texts), unknown


def summary(path: Path) -> dict:
    run = sorted(p for p in path.iterdir() if p.is_dir())[-1]
    return json.loads(next((run / "summary").glob("summary_*.json")).read_text())


FULL = [
    ("aime2024_gen_0_shot_chat_prompt", "vllm_chat", 30),
    ("aime2024_gen_0_shot_str", "vllm_completions", 30),
    ("aime2025_gen_0_shot_chat_prompt", "vllm_chat", 30),
    ("math500_gen_0_shot_cot_chat_prompt", "vllm_chat", 500),
    ("ARC_c_gen_0_shot_chat_prompt", "vllm_chat", 1172),
    ("ceval_gen_0_shot_cot_chat_prompt", "vllm_chat", 1346),
    ("ceval_gen_5_shot_str", "vllm_completions", 1346),
    ("ceval_gen_0_shot_noncot_chat_prompt", "vllm_chat", 1346),
    ("ceval_gen_0_shot_str", "vllm_completions", 1346),
    ("math_prm800k_500_0shot_cot_gen", "vllm_completions", 500),
]


@pytest.mark.parametrize(("name", "model", "size"), FULL)
def test_builtin_config_end_to_end(pytester, name, model, size):
    respond, _ = responder_for(name)
    count, accuracy, unknown = expected(name)
    assert count == size
    assert unknown <= 2  # C-Eval repeats two questions with different answers
    with MockServer(respond) as server:
        result = pytester.runpytest_subprocess(
            "--sb-models",
            model,
            "--sb-datasets",
            name,
            f"--sb-datasets-dir={SHARED}",
            "--sb-set",
            f"{model}.base_url={server.base_url}",
            "--sb-work-dir",
            "out",
            "-q",
            "-p",
            "no:randomly",
        )
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == size, result.stdout.str()[
        -3000:
    ]
    assert "error" not in outcomes and "errors" not in outcomes
    data = summary(pytester.path / "out")
    tasks = data["tasks"]
    assert sum(t["counts"]["cases"] for t in tasks) == size
    assert sum(t["counts"]["unparsable"] for t in tasks) == unknown
    passed = sum(t["counts"]["passed"] for t in tasks)
    assert 100.0 * passed / size == pytest.approx(accuracy, abs=1e-9)
    if len(tasks) == 1:
        assert tasks[0]["metrics"]["accuracy"] == pytest.approx(accuracy, abs=1e-3)
    else:  # per subject rows, then the weighted average = the overall accuracy
        rows = {(r[0], r[2]): r[4] for r in data["table"]["rows"]}
        assert float(rows[("ceval", "weighted_average")]) == pytest.approx(accuracy, abs=0.006)


@pytest.mark.parametrize("name", ["mmlu_gen_5_shot_chat_prompt", "mmlu_gen_5_shot_str"])
def test_mmlu_collects_the_published_size_fast(pytester, name):
    result = pytester.runpytest_subprocess(
        "--sb-models",
        "vllm_chat",
        "--sb-datasets",
        name,
        f"--sb-datasets-dir={SHARED}",
        "--sb-work-dir",
        "out",
        "--collect-only",
        "-q",
    )
    out = result.stdout.str()
    assert "14042 tests collected" in out
    assert f"servebench/vllm_chat/{name}/abstract_algebra::q0000_" in out


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("mmlu_gen_5_shot_chat_prompt", "vllm_chat"),
        ("mmlu_gen_5_shot_str", "vllm_completions"),
        ("ceval_gen_5_shot_str", "vllm_completions"),
    ],
)
def test_split_and_merged_give_the_same_overall_accuracy(pytester, name, model):
    """The first questions of every subject, per subject (default) and merged."""
    respond, _ = responder_for(name)
    limit = 4
    group = "ceval" if name.startswith("ceval") else "mmlu"
    subjects = 52 if group == "ceval" else 57
    figures = {}
    with MockServer(respond) as server:
        for mode in ("split", "merged"):
            result = pytester.runpytest_subprocess(
                "--sb-models",
                model,
                "--sb-datasets",
                name,
                f"--sb-datasets-dir={SHARED}",
                "--sb-set",
                f"{model}.base_url={server.base_url}",
                "--sb-work-dir",
                f"out-{mode}",
                "--sb-limit",
                str(limit),
                "-q",
                *(["--sb-merge-ds"] if mode == "merged" else []),
            )
            outcomes = result.parseoutcomes()
            assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == subjects * limit
            data = summary(pytester.path / f"out-{mode}")
            assert sum(t["counts"]["unparsable"] for t in data["tasks"]) == 0
            rows = {(r[0], r[2]): r[4] for r in data["table"]["rows"]}
            if mode == "split":
                assert len(data["tasks"]) == subjects
                assert (group, "naive_average") in rows
                figures[mode] = float(rows[(group, "weighted_average")])
            else:
                assert len(data["tasks"]) == 1
                figures[mode] = float(rows[(group, "accuracy")])
    assert figures["split"] == figures["merged"]
