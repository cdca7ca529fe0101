"""Every AISBench dataset config name of our datasets resolves, and asks what AISBench asks.

tests/aisbench/configs.json is derived from AISBench's own config files (tests/aisbench/
extract.py). For each name: ours resolves (or, for what cannot run here, says why); the
evaluator is the family AISBench's postprocessor belongs to; and on the first records of the
real data the request body we send equals the one built from AISBench's template by the rules
of its PromptTemplate (each {field} replaced, the answer column blanked, in-context examples
from its FixKRetriever ids placed at the ice token, HUMAN/BOT -> user/assistant, stop words
from stopping_criteria).
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

from pytest_servebench.catalog.config import ModelConfig
from pytest_servebench.catalog.datasets import Dataset, read_records
from pytest_servebench.catalog.finder import BUILTIN_SUITES, UNSUPPORTED, SuiteIndex, load_configs
from pytest_servebench.engine.request_body import build_body, generation_kwargs
from pytest_servebench.errors import ServebenchError

AISBENCH = json.loads((Path(__file__).parent / "aisbench" / "configs.json").read_text("utf-8"))
INDEX = SuiteIndex([(BUILTIN_SUITES, "built-in")])
# ../shared/datasets beside a clone; a worktree sits one level deeper.
SHARED_DATASETS = next(
    (
        p
        for p in (REPO.parent / "shared" / "datasets", REPO.parent.parent / "shared" / "datasets")
        if p.is_dir()
    ),
    REPO.parent / "shared" / "datasets",
)
RECORDS = 3  # compared per (subject) dataset
SUBJECTS = 2  # of a per-subject config

# AISBench's postprocessor (or evaluator, when it has none) -> our evaluator family.
EVALUATOR_FAMILY = {
    "gsm8k_postprocess": "gsm8k",
    "math_postprocess_v2": "math",
    "MATHEvaluator": "math",
    "first_capital_postprocess": "choice",
    "first_option_postprocess": "choice",
    "last_option_postprocess": "choice",
    "humaneval_postprocess_v2": "code",
}


def supported() -> list[str]:
    return sorted(n for n in AISBENCH if n not in UNSUPPORTED)


def test_the_list_covers_our_families_and_demo_configs():
    assert len(AISBENCH) == 35
    for name in (
        "demo_gsm8k_gen_4_shot_cot_chat_prompt",
        "gsm8k_gen",
        "mmlu_gen",
        "ceval_gen",
        "math500_gen_0_shot_cot_chat_prompt",
    ):
        assert name in AISBENCH
    assert {n for n, e in AISBENCH.items() if e["family"] == "humaneval"} == {
        "humaneval_gen_0_shot",
        "humaneval_gen_0_shot_perf",
    }


@pytest.mark.parametrize("name", sorted(AISBENCH))
def test_every_aisbench_name_resolves(name):
    if name in UNSUPPORTED:
        with pytest.raises(ServebenchError) as exc:
            INDEX.find("dataset", name)
        message = str(exc.value)
        assert f"AISBench's dataset config {name!r} is" in message
        assert "family's default here is" in message
        return
    _, (config,) = load_configs(INDEX, [], [name], {})
    entry = AISBENCH[name]["datasets"][0]
    kind = entry["postprocessor"] or entry["evaluator"]
    spec = config.evaluator if isinstance(config.evaluator, dict) else {"type": config.evaluator}
    assert spec["type"] == EVALUATOR_FAMILY[kind], (name, kind)
    # AISBench's first_capital_postprocess takes the first capital letter of a completion.
    assert bool(spec.get("leading")) == (kind == "first_capital_postprocess"), name
    # humaneval_postprocess_v2 takes the first fenced block (v3 would take the last).
    assert (spec.get("block", "first") == "first") or kind != "humaneval_postprocess_v2", name
    test_range = entry["reader"].get("test_range")
    assert config.limit == (int(test_range.strip("[]").split(":")[1]) if test_range else None)
    if len(AISBENCH[name]["abbrs"]) > 1:
        assert config.subsets is not None
        abbr = config.subsets["abbr"]
        names = list(config.subsets["names"])
        assert [abbr.replace("{subset}", s) for s in names] == AISBENCH[name]["abbrs"]
    else:
        assert config.abbr == entry["abbr"], name


def test_short_names_and_the_aisbench_gen_names_read_the_same_file():
    defaults = {
        "gsm8k": "gsm8k_gen_0_shot_cot_chat_prompt",
        "mmlu": "mmlu_gen_0_shot_cot_chat_prompt",
        "ceval": "ceval_gen_0_shot_cot_chat_prompt",
        "aime2024": "aime2024_gen_0_shot_chat_prompt",
        "aime2025": "aime2025_gen_0_shot_chat_prompt",
        "math500": "math500_gen_0_shot_cot_chat_prompt",
        "ARC_c": "ARC_c_gen_0_shot_chat_prompt",
        "humaneval": "humaneval_gen_0_shot",
    }
    for short, full in defaults.items():
        assert INDEX.find("dataset", short).path == INDEX.find("dataset", full).path
    # AISBench's *_gen.py files read another config: ours name the same file.
    for name in ("gsm8k_gen", "mmlu_gen", "ceval_gen", "aime2024_gen", "aime2025_gen"):
        assert AISBENCH[name]["datasets"] == next(
            d
            for other in AISBENCH.values()
            for d in [other["datasets"]]
            if other is not AISBENCH[name]
            and INDEX.find("dataset", name).path.stem in other["file"]
        )


# -- what AISBench's template would send -------------------------------------------------------
def _fill(template: str, record: dict[str, Any]) -> str:
    for key, value in record.items():  # AISBench replaces each {key} in turn
        template = template.replace("{" + str(key) + "}", str(value))
    return template


def _messages(rounds: list[dict[str, str]], record: dict[str, Any]) -> list[dict[str, str]]:
    role = {"HUMAN": "user", "BOT": "assistant", "SYSTEM": "system"}
    return [{"role": role[r["role"]], "content": _fill(r["prompt"], record)} for r in rounds]


def aisbench_prompt(entry: dict[str, Any], record: dict[str, Any], train: list[dict[str, Any]]):
    reader = entry["reader"]
    ice_spec = entry["ice_template"]
    prompt_spec = entry["prompt_template"] or ice_spec
    template = prompt_spec["template"]
    ice_token = prompt_spec.get("ice_token")
    retriever = entry["retriever"]
    shots = [train[i] for i in retriever.get("fix_id_list", [])]
    asked = {**record, reader["output_column"]: ""}  # the generated answer's place
    if isinstance(template, str):
        text = template
        if ice_token:
            # An example is the ice template without its ice token (generate_ice_item).
            example = ice_spec["template"].replace(ice_spec.get("ice_token") or "\0", "")
            ice = "\n".join(_fill(example, s) for s in shots) + "\n" if shots else ""
            text = text.replace(ice_token, ice)
        return _fill(text, asked)
    messages = []
    if template.get("begin") == ice_token and shots:
        messages += [m for s in shots for m in _messages(ice_spec["template"]["round"], s)]
    return messages + _messages(template["round"], asked)


# How AISBench's readers name the fields of the same records.
def aisbench_record(family: str, record: dict[str, Any]) -> dict[str, Any]:
    if family == "ARC_c":
        letters = string.ascii_uppercase
        out = {f"text{letters[i]}": c for i, c in enumerate(record["choices"])}
        question = record["query"].removeprefix("Question: ")
        return {**out, "question": question, "answerKey": letters[record["gold"]]}
    if family == "aime2025":
        return {**record, "question": record["problem"]}
    return dict(record)


def _rows(path: Path, columns: list[str] | None, n: int | None = None) -> list[dict[str, Any]]:
    rows = []
    for _, record in read_records(path, "auto", columns):
        if n is not None and len(rows) >= n:
            break
        rows.append(record)
    return rows


def _train(name: str, family: str, dataset: Dataset, entry: dict[str, Any]) -> list[dict]:
    if entry["retriever"]["type"] != "FixKRetriever":
        return []
    if family == "math":  # AISBench's MATH reader: the one file is train and test split
        return _rows(dataset.path_for(None), None, 5)
    spec = dataset.config.fewshot or {}
    path = dataset.resolve(str(spec["path"]).replace("{subset}", dataset.subset or ""))
    return _rows(path, spec.get("columns", dataset.config.columns), 5)


@pytest.mark.skipif(not SHARED_DATASETS.is_dir(), reason="needs the shared real datasets")
@pytest.mark.parametrize("name", supported())
@pytest.mark.parametrize("model_type", ["openai-chat", "openai-completions"])
def test_request_bodies_match_aisbench(name, model_type):
    family = AISBENCH[name]["family"]
    _, (config,) = load_configs(INDEX, [], [name], {})
    model = ModelConfig(name="m", source="<test>", type=model_type)
    entries = AISBENCH[name]["datasets"][:SUBJECTS]
    for entry in entries:
        subset = entry["name"] if config.subsets else None
        dataset = Dataset(config, SHARED_DATASETS, limit=RECORDS, subset=subset)
        if config.builtin_data:  # our demo data is the first 50 GSM8K test records
            assert (
                dataset.data_path.read_text().splitlines()[:8]
                == ((SHARED_DATASETS / "gsm8k" / "test.jsonl").read_text().splitlines()[:8])
            )
        train = [aisbench_record(family, r) for r in _train(name, family, dataset, entry)]
        raw = _rows(dataset.path_for(subset), config.columns, RECORDS)
        kwargs = generation_kwargs(model, config.generation_kwargs)
        stops = entry["inferencer"].get("stopping_criteria") or []
        assert kwargs.get("stop", []) == stops, name
        for case, record in zip(dataset.cases, raw, strict=True):
            theirs = aisbench_prompt(entry, aisbench_record(family, record), train)
            ours = build_body(model, "m", dataset.render(case), kwargs)
            expected = build_body(model, "m", theirs, {"stop": stops} if stops else {})
            assert ours == expected, (name, subset, case.id)


def test_search_shows_the_family_and_marks_its_default():
    from pytest_servebench.catalog.finder import search_table

    table = search_table(INDEX, pattern="math500").splitlines()
    names = [line.split()[1] for line in table[1:]]
    assert set(names) == {
        "math500",
        "math500_gen_0_shot_cot_chat_prompt",
        "math_prm800k_500_0shot_cot_gen",
        "math_prm800k_500_5shot_cot_gen",
    }
    assert any(line.split()[1] == "math500" and "default of math" in line for line in table)
    gsm8k = search_table(INDEX, pattern="gsm8k")
    assert "default (gsm8k)" in gsm8k and "demo_gsm8k_gen_4_shot_cot_chat_prompt" in gsm8k


def test_search_with_names_prints_exactly_those(pytester):
    result = pytester.runpytest_subprocess(
        "--sb-search", "--sb-models", "vllm_chat", "--sb-datasets", "gsm8k", "mmlu_gen"
    )
    assert result.ret == 0
    rows = [line.split() for line in result.stdout.lines[1:] if line.strip()]
    assert [r[:2] for r in rows] == [
        ["model", "vllm_chat"],
        ["dataset", "gsm8k"],
        ["dataset", "mmlu_gen"],
    ]
    assert rows[1][2].endswith("gsm8k_gen_0_shot_cot_chat_prompt.yaml")
    bad = pytester.runpytest_subprocess("--sb-search", "--sb-datasets", "gsm8k_gen_8_shot")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    err = bad.stderr.str()
    assert "The gsm8k family:" in err and "gsm8k_gen_4_shot_cot_chat_prompt" in err
    assert "(default: gsm8k)" in err


def test_download_knows_each_aisbench_name():
    from pytest_servebench.catalog import download as dl
    from pytest_servebench.catalog.download import DownloadError

    for name in supported():
        if name.startswith("demo_"):
            with pytest.raises(DownloadError, match="ships with the package"):
                dl.resolve_names([name])
            continue
        (source,) = dl.resolve_names([name])
        assert source.name in dl.SOURCES
