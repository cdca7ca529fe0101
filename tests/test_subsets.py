"""Sub-datasets end to end: one task per subset by default, one merged task with
--sb-merge-ds; the same overall accuracy both ways; summary rows; resume in both modes."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import completion_requests

from pytest_servebench.report.summary import build_rows
from pytest_servebench.scoring.aggregate import SubsetGroup, TaskResult
from pytest_servebench.scoring.verdict import Verdict
from pytest_servebench.session.options import Options
from pytest_servebench.testing.mockserver import MockServer, Reply

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

SUBJECTS = {"algebra": 7, "world_history": 5, "virology": 9}
SUITE = """\
kind: dataset
description: three-subject multiple choice, MMLU-like
abbr: toy
path: toy/test/{subset}_test.csv
format: csv
columns: [input, A, B, C, D, target]
answer_field: target
subsets:
  names: [algebra, world_history, virology]
  abbr: toy_{subset}
  groups: {science: [algebra, virology], humanities: [world_history]}
fewshot:
  path: toy/dev/{subset}_dev.csv
  k: 2
  example:
  - role: user
    content: "About {subset_text}.\\nQuestion: {input}\\nAnswer: "
  - role: assistant
    content: "{target}"
prompt:
- role: user
  content: "About {subset_text}.\\nQuestion: {input}\\nAnswer: "
evaluator: choice
"""
# Without --sb-merge-ds in this version of the options, a conftest turns merging on.
MERGE_SHIM = """
import pytest_servebench.session.options as o
_resolve = o.resolve
def resolve(config):
    options = _resolve(config)
    if options is not None:
        options.merge_subsets = True
    return options
o.resolve = resolve
"""


def make_data(root: Path) -> dict[str, str]:
    """The files, and question -> right letter."""
    truth = {}
    for subject, n in SUBJECTS.items():
        for split, count in (("test", n), ("dev", 2)):
            path = root / "datasets" / "toy" / split / f"{subject}_{split}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                for i in range(count):
                    question = f"{subject} {split} question {i}: which one?"
                    letter = "ABCD"[(i * 7 + len(subject)) % 4]
                    writer.writerow([question, "w", "x", "y", "z", letter])
                    truth[question] = letter
    suite = root / "suites" / "datasets" / "toy_mc.yaml"
    suite.parent.mkdir(parents=True, exist_ok=True)
    suite.write_text(SUITE, encoding="utf-8")
    return truth


def right(question: str) -> bool:
    return hashlib.blake2b(question.encode(), digest_size=2).digest()[0] < 140


def responder(truth: dict[str, str]):
    def respond(request) -> Reply:
        last = request.body["messages"][-1]["content"]
        question = last.split("Question: ", 1)[1].split("\n", 1)[0]
        letter = truth[question]
        if not right(question):
            letter = "ABCD"[("ABCD".index(letter) + 1) % 4]
        return Reply(f"Thinking...\nThe answer is ({letter}).")

    return respond


def expected(truth: dict[str, str]) -> dict[str, float]:
    per = {}
    for subject in SUBJECTS:
        qs = [q for q in truth if q.startswith(f"{subject} test ")]
        per[subject] = 100.0 * sum(right(q) for q in qs) / len(qs)
    return per


def run(pytester, url: str, *extra: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "--sb-models",
        "vllm_chat",
        "--sb-datasets",
        "toy_mc",
        "--sb-datasets-dir=datasets",
        "--sb-set",
        f"vllm_chat.base_url={url}",
        "--sb-work-dir",
        "out",
        "-p",
        "no:randomly",
        *extra,
    )


def merge_args(pytester) -> list[str]:
    if "merge_subsets" in Options.__dataclass_fields__:
        return ["--sb-merge-ds"]
    pytester.makeconftest(MERGE_SHIM)
    return []


def summary(root: Path) -> dict:
    run_dir = sorted(p for p in (root / "out").iterdir() if p.is_dir())[-1]
    latest = max((run_dir / "summary").glob("summary_*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(latest.read_text())


def table(data: dict) -> dict[tuple[str, str], str]:
    return {(r[0], r[2]): r[4] for r in data["table"]["rows"]}


def test_split_is_the_default(pytester):
    truth = make_data(pytester.path)
    total = sum(SUBJECTS.values())
    with MockServer(responder(truth)) as server:
        result = run(pytester, server.base_url, "-v")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == total
    result.stdout.fnmatch_lines(["*servebench/vllm_chat/toy_mc/world_history::q0000_* PASSED*"])
    data = summary(pytester.path)
    assert [t["dataset"] for t in data["tasks"]] == [f"toy_{s}" for s in SUBJECTS]
    rows = table(data)
    per = expected(truth)
    for subject, accuracy in per.items():
        assert float(rows[(f"toy_{subject}", "accuracy")]) == pytest.approx(accuracy, abs=0.006)
    weighted = sum(per[s] * n for s, n in SUBJECTS.items()) / total
    assert float(rows[("toy", "weighted_average")]) == pytest.approx(weighted, abs=0.006)
    naive = sum(per.values()) / len(per)
    assert float(rows[("toy", "naive_average")]) == pytest.approx(naive, abs=0.006)
    assert rows[("toy", "errors")] == "0"
    science = (per["algebra"] + per["virology"]) / 2  # a category: naive over its subjects
    assert float(rows[("toy-science", "naive_average")]) == pytest.approx(science, abs=0.006)
    assert rows[("toy-humanities", "naive_average")] == rows[("toy_world_history", "accuracy")]
    # group rows come right after the subsets' rows, then one row per category
    names = [r[0] for r in data["table"]["rows"]]
    assert names[-7:] == ["toy"] * 5 + ["toy-science", "toy-humanities"]
    run_dir = sorted(p for p in (pytester.path / "out").iterdir() if p.is_dir())[-1]
    files = sorted(p.name for p in (run_dir / "predictions" / "vllm_chat" / "toy_mc").iterdir())
    assert files == [f"{s}.jsonl" for s in sorted(SUBJECTS)]


def test_merged_gives_the_same_overall_accuracy(pytester):
    truth = make_data(pytester.path)
    total = sum(SUBJECTS.values())
    with MockServer(responder(truth)) as server:
        split = run(pytester, server.base_url)
        split_data = summary(pytester.path)
        split_rows = table(split_data)
        group_version = next(r[1] for r in split_data["table"]["rows"] if r[0] == "toy")
        merged = run(pytester, server.base_url, *merge_args(pytester), "-v")
    merged.stdout.fnmatch_lines(["*servebench/vllm_chat/toy_mc::world_history/q0000_* PASSED*"])
    assert split.parseoutcomes() == merged.parseoutcomes()
    data = summary(pytester.path)
    assert len(data["tasks"]) == 1 and data["tasks"][0]["counts"]["cases"] == total
    metric_rows = [
        r for r in data["table"]["rows"] if r[2] not in ("errors", "truncated", "unparsable")
    ]
    assert [(r[0], r[2]) for r in metric_rows] == [("toy", "accuracy")]  # one summary line
    assert float(metric_rows[0][4]) == pytest.approx(float(split_rows[("toy", "weighted_average")]))
    assert metric_rows[0][1] == group_version  # one benchmark, one version, in both modes
    run_dir = sorted(p for p in (pytester.path / "out").iterdir() if p.is_dir())[-1]
    lines = (run_dir / "predictions" / "vllm_chat" / "toy_mc.jsonl").read_text().splitlines()
    ids = [json.loads(line)["case"] for line in lines]
    assert len(ids) == len(set(ids)) == total


@pytest.mark.parametrize("mode", ["split", "merged"])
def test_resume_sends_only_what_is_missing(pytester, mode):
    truth = make_data(pytester.path)
    extra = merge_args(pytester) if mode == "merged" else []
    with MockServer(responder(truth)) as server:
        first = run(pytester, server.base_url, *extra, "-k", "virology")
        assert completion_requests(server) == SUBJECTS["virology"]
        first_outcomes = first.parseoutcomes()
        assert first_outcomes.get("passed", 0) + first_outcomes.get("failed", 0) == 9
        second = run(pytester, server.base_url, *extra, "--sb-reuse")
        # only the subjects not asked before are sent; virology's answers are reused
        assert completion_requests(server) == sum(SUBJECTS.values())
        third = run(pytester, server.base_url, *extra, "--sb-reuse")
        assert completion_requests(server) == sum(SUBJECTS.values())  # nothing new
    assert second.parseoutcomes() == third.parseoutcomes()
    rows = table(summary(pytester.path))
    key = ("toy", "weighted_average") if mode == "split" else ("toy", "accuracy")
    total = sum(SUBJECTS.values())
    weighted = sum(expected(truth)[s] * n for s, n in SUBJECTS.items()) / total
    assert float(rows[key]) == pytest.approx(weighted, abs=0.006)


def _result(
    dataset: str,
    name: str,
    scores: list[float],
    model: str = "m",
    categories: tuple[tuple[str, tuple[str, ...]], ...] = (),
) -> TaskResult:
    """A task's result; "grp/<subset>" is a subset of the split dataset grp (abbr G)."""
    ids = [f"c{i}" for i in range(len(scores))]
    parent, sep, subset = name.rpartition("/")
    result = TaskResult(
        key=f"{model}/{name}",
        model=model,
        model_name=model,
        dataset=dataset,
        dataset_name=name,
        version="abc123",
        mode="gen",
        run_mode="all",
        samples=1,
        case_ids=ids,
        group=SubsetGroup(parent, "G", subset, categories) if sep else None,
    )
    for cid, score in zip(ids, scores):
        result.cases[cid] = Verdict.from_dict(
            {
                "status": "passed" if score else "failed",
                "scores": [score],
                "correct": [bool(score)],
                "votes": ["A"],
                "errors": 0,
                "truncated": 0,
                "unparsable": 0,
            }
        )
    return result


def test_group_rows_weighted_naive_and_partial():
    results = [
        _result("G_a", "grp/a", [1, 1, 1, 0]),  # 75%
        _result("G_b", "grp/b", [1, 0]),  # 50%
        _result("other", "other", [1]),
    ]
    _, rows = build_rows(results)
    cells = {(r[0], r[2]): r[4] for r in rows}
    assert cells[("G", "weighted_average")] == f"{100 * 4 / 6:.2f}"
    assert cells[("G", "naive_average")] == "62.50"
    assert [r[0] for r in rows].index("G") < [r[0] for r in rows].index("other")
    del results[1].cases["c1"]  # one subset partial: no average shown
    _, rows = build_rows(results)
    cells = {(r[0], r[2]): r[4] for r in rows}
    assert cells[("G", "weighted_average")] == "-" and cells[("G", "naive_average")] == "-"


def test_category_rows_are_naive_averages_of_their_subsets():
    categories = (("G-x", ("a", "b")), ("G-y", ("c",)), ("G-z", ("a", "missing")))
    results = [
        _result("G_a", "grp/a", [1, 1, 1, 0], categories=categories),  # 75%
        _result("G_b", "grp/b", [1, 0], categories=categories),  # 50%
        _result("G_c", "grp/c", [0, 0, 1, 1, 1], categories=categories),  # 60%
    ]
    _, rows = build_rows(results)
    cells = {(r[0], r[2]): r[4] for r in rows}
    assert cells[("G-x", "naive_average")] == "62.50"  # (75 + 50) / 2, not weighted
    assert cells[("G-y", "naive_average")] == "60.00"
    assert not any(r[0] == "G-z" for r in rows)  # one of its subsets did not run: no row
    names = [r[0] for r in rows]
    assert names.index("G") < names.index("G-x") < names.index("G-y")
    del results[1].cases["c1"]  # a partial subset: its categories show '-'
    _, rows = build_rows(results)
    cells = {(r[0], r[2]): r[4] for r in rows}
    assert cells[("G-x", "naive_average")] == "-" and cells[("G-y", "naive_average")] == "60.00"


def test_categories_come_from_a_subset_field_and_from_named_lists(tmp_path):
    from pytest_servebench.catalog.config import DatasetConfig
    from pytest_servebench.catalog.datasets import load_subsets

    config = DatasetConfig(
        name="ce",
        source="t",
        path="ce/{subset}.csv",
        prompt="{question}",
        subsets={
            "names": {
                "phys": {"category": "STEM"},
                "law": {"category": "Social Science"},
                "math": {"category": "STEM"},
            },
            "group_by": "category",
            "groups": {"hard": ["phys", "math"]},
        },
    )
    spec = load_subsets(config, tmp_path)
    assert spec.groups == (
        ("stem", ("phys", "math")),
        ("social-science", ("law",)),
        ("hard", ("phys", "math")),
    )


def test_built_in_categories_split_every_subject_once():
    """The built-in MMLU and C-Eval configs: AISBench's summary groups cover each subject in
    exactly one category (C-Eval's `hard` aside, a subset of STEM)."""
    import yaml

    from pytest_servebench.catalog.config import DatasetConfig, build
    from pytest_servebench.catalog.datasets import load_subsets

    root = Path(__file__).resolve().parent.parent / "suites" / "datasets"
    seen = 0
    for path in sorted(root.glob("*/*.yaml")):
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not raw.get("subsets"):
            continue
        spec = load_subsets(build(DatasetConfig, path.stem, str(path), raw), path.parent)
        groups = dict(spec.groups)
        hard = groups.pop("hard", ())
        members = [m for ms in groups.values() for m in ms]
        assert sorted(members) == sorted(spec.names), path.name
        assert set(hard) <= set(groups.get("stem", ())), path.name
        assert list(groups)[:2] in (["humanities", "stem"], ["stem", "social-science"])
        seen += 1
    assert seen == 8  # MMLU: 3 configs, C-Eval: 5


def test_results_carry_their_group_so_any_caller_gets_the_group_rows(tmp_path):
    """The table's group and category rows come from the results alone: a caller that never
    expanded the config in this process (no state left by an earlier expand) gets them."""
    from pytest_servebench.catalog.datasets import expand
    from pytest_servebench.catalog.finder import SuiteIndex, load_configs, suite_folders
    from pytest_servebench.session.outcome import new_result

    make_data(tmp_path)
    index = SuiteIndex(suite_folders(tmp_path, []))
    models, (config,) = load_configs(index, ["vllm_chat"], ["toy_mc"], {})
    split = expand(config, tmp_path / "datasets")
    results = []
    for dataset in split:
        task = SimpleNamespace(
            key=f"m/{dataset.config.name}",
            model=models[0],
            dataset=dataset,
            samples=1,
            cases=dataset.cases,
        )
        result = new_result(task, "all")  # type: ignore[arg-type]
        assert result.group == SubsetGroup(
            "toy_mc",
            "toy",
            dataset.subset,
            (("toy-science", ("algebra", "virology")), ("toy-humanities", ("world_history",))),
        )
        for case_id in result.case_ids:
            result.add(
                case_id, Verdict.from_dict({"status": "passed", "scores": [1.0], "correct": [True]})
            )
        results.append(result)
    _, rows = build_rows(results)
    names = [(r[0], r[2]) for r in rows]
    assert ("toy", "weighted_average") in names and ("toy", "naive_average") in names
    assert ("toy-science", "naive_average") in names
    assert ("toy-humanities", "naive_average") in names
    merged = expand(config, tmp_path / "datasets", merge=True)[0]
    task = SimpleNamespace(key="m/toy", model=models[0], dataset=merged, samples=1, cases=[])
    assert new_result(task, "all").group is None  # type: ignore[arg-type]
