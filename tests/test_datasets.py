"""Dataset configs and readers: the built-in sets on the real files, prompts identical to
AISBench's, sub-datasets, custom data files, options lists, LaTeX repair and versions."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest

from pytest_servebench.catalog.config import DatasetConfig, build
from pytest_servebench.catalog.datasets import Dataset, expand, group_version, repair_latex
from pytest_servebench.catalog.finder import BUILTIN_SUITES, SuiteIndex, load_configs
from pytest_servebench.errors import ConfigError, DatasetMissingError

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason="../shared/datasets is absent (real data files)"
)

INDEX = SuiteIndex([(BUILTIN_SUITES, "built-in")])


def builtin(name: str) -> DatasetConfig:
    _, (config,) = load_configs(INDEX, [], [name], {})
    return config


def datasets_of(name: str, root: Path = SHARED, merge: bool = False) -> list[Dataset]:
    return expand(builtin(name), root, None, merge)


def config(tmp_path: Path, **fields) -> DatasetConfig:
    return build(DatasetConfig, "t", str(tmp_path / "t.yaml"), fields)


# -- the built-in sets on the real files ---------------------------------------------------------

PUBLISHED = {
    "gsm8k_gen_0_shot_cot_str": (1319, 1),
    "gsm8k_gen_0_shot_cot_chat_prompt": (1319, 1),
    "math500_gen_0_shot_cot_chat_prompt": (500, 1),
    "aime2024_gen_0_shot_chat_prompt": (30, 1),
    "aime2024_gen_0_shot_str": (30, 1),
    "aime2025_gen_0_shot_chat_prompt": (30, 1),
    "ARC_c_gen_0_shot_chat_prompt": (1172, 1),
    "mmlu_gen_5_shot_chat_prompt": (14042, 57),
    "mmlu_gen_5_shot_str": (14042, 57),
    "ceval_gen_0_shot_cot_chat_prompt": (1346, 52),
    "ceval_gen_5_shot_str": (1346, 52),
}


def test_every_builtin_config_has_source_and_license():
    for name in INDEX.names("dataset"):
        cfg = builtin(name)
        assert cfg.data_source.startswith("https://"), name
        assert cfg.license, name
        assert cfg.description, name


@needs_shared
@pytest.mark.parametrize(("name", "size"), sorted(PUBLISHED.items()))
def test_published_sizes(name, size):
    count, tasks = size
    split = datasets_of(name)
    assert len(split) == tasks
    assert sum(len(d.cases) for d in split) == count
    (merged,) = datasets_of(name, merge=True)
    assert len(merged.cases) == count
    ids = [c.id for c in merged.cases]
    assert len(set(ids)) == count
    if tasks > 1:  # merged ids are the split ids with their subset in front
        split_ids = {f"{d.subset}/{c.id}" for d in split for c in d.cases}
        assert set(ids) == split_ids
    for ds in split[:3]:  # every prompt field is filled, references are letters/numbers
        for case in ds.cases[:20]:
            prompt = ds.render(case)
            text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
            for field in ds.placeholders:
                assert "{" + field + "}" not in text
            assert case.reference


@needs_shared
def test_mmlu_per_subject_sizes_and_names():
    split = datasets_of("mmlu_gen_5_shot_chat_prompt")
    sizes = {d.subset: len(d.cases) for d in split}
    assert sizes["professional_law"] == 1534 and sizes["abstract_algebra"] == 100
    first = split[0]
    assert first.config.name == "mmlu_gen_5_shot_chat_prompt/college_biology"
    assert first.config.abbr == "lukaemon_mmlu_college_biology"
    assert first.group == ("mmlu_gen_5_shot_chat_prompt", "mmlu")
    assert {c.reference for d in split for c in d.cases} == set("ABCD")


def _mmlu_rows(split: str, subject: str) -> list[list[str]]:
    path = SHARED / "mmlu" / split / f"{subject}_{split}.csv"
    with path.open(encoding="utf-8") as handle:  # universal newlines, as AISBench reads it
        return list(csv.reader(handle))


@needs_shared
def test_mmlu_chat_prompt_is_aisbench_s():
    ds = next(d for d in datasets_of("mmlu_gen_5_shot_chat_prompt") if d.subset == "anatomy")
    hint = (
        "There is a single choice question about anatomy. Answer the question by replying "
        "A, B, C or D.\nQuestion: {}\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer: "
    )
    expected = []
    for row in _mmlu_rows("dev", "anatomy")[:5]:
        expected += [
            {"role": "user", "content": hint.format(*row[:5])},
            {"role": "assistant", "content": row[5] + "\n"},
        ]
    row = _mmlu_rows("test", "anatomy")[7]
    expected.append({"role": "user", "content": hint.format(*row[:5])})
    assert ds.render(ds.cases[7]) == expected
    assert ds.cases[7].reference == row[5]


@needs_shared
def test_mmlu_str_prompt_is_aisbench_s():
    ds = next(d for d in datasets_of("mmlu_gen_5_shot_str") if d.subset == "high_school_physics")
    item = "{}\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer:"
    shots = [item.format(*r[:5]) + f" {r[5]}\n" for r in _mmlu_rows("dev", "high_school_physics")]
    row = _mmlu_rows("test", "high_school_physics")[0]
    expected = (
        "The following are multiple choice questions (with answers) about  high school physics.\n\n"
        + "\n".join(shots[:5])
        + "\n"
        + item.format(*row[:5])
    )
    assert ds.render(ds.cases[0]) == expected


@needs_shared
def test_ceval_prompts_are_aisbench_s():
    cot = next(d for d in datasets_of("ceval_gen_0_shot_cot_chat_prompt") if d.subset == "logic")
    case = cot.cases[0]
    r = case.record
    assert cot.render(case) == [
        {
            "role": "user",
            "content": "以下是中国关于逻辑学考试的单项选择题，请选出其中的正确答案。回答的最后一行应采用"
            "以下格式：”answer:$LETTER“（不带引号），其中LETTER 是ABCD之一。回答之前先一步步思考。\n\n"
            f"{r['question']}\nA. {r['A']}\nB. {r['B']}\nC. {r['C']}\nD. {r['D']}",
        }
    ]
    five = next(d for d in datasets_of("ceval_gen_5_shot_str") if d.subset == "logic")
    head = "以下是中国关于逻辑学考试的单项选择题，请选出其中的正确答案。\n"
    with (SHARED / "ceval" / "dev" / "logic_dev.csv").open(encoding="utf-8") as handle:
        dev = list(csv.DictReader(handle))
    body = "{question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\n答案: "
    shots = [head + body.format(**d) + d["answer"] for d in dev[:5]]
    expected = head + "\n".join(shots) + "\n" + body.format(**r)
    assert five.render(five.cases[0]) == expected
    assert five.config.abbr == "ceval-logic"


@needs_shared
def test_zero_shot_prompts_are_aisbench_s():
    (aime,) = datasets_of("aime2024_gen_0_shot_chat_prompt")
    case = aime.cases[0]
    assert case.id == "60" and case.reference == "204"
    assert aime.render(case) == [
        {
            "role": "user",
            "content": case.record["question"]
            + "\nPlease reason step by step, and put your final answer within \\boxed{}.",
        }
    ]
    (aime_str,) = datasets_of("aime2024_gen_0_shot_str")
    assert aime_str.render(case) == aime.render(case)[0]["content"]
    (aime25,) = datasets_of("aime2025_gen_0_shot_chat_prompt")
    assert aime25.render(aime25.cases[0])[0]["content"].endswith(
        "\nRemember to put your final answer within \\boxed{}."
    )
    (math,) = datasets_of("math500_gen_0_shot_cot_chat_prompt")
    assert math.config.abbr == "math_prm800k_500"
    assert math.cases[0].id == "test_precalculus_807.json"
    assert math.cases[0].reference == r"\left( 3, \frac{\pi}{2} \right)"
    (arc,) = datasets_of("ARC_c_gen_0_shot_chat_prompt")
    r = json.loads(arc.data_path.read_text(encoding="utf-8").splitlines()[0])
    assert arc.render(arc.cases[0]) == [
        {
            "role": "user",
            "content": f"{r['query']}\nA. {r['choices'][0]}\nB. {r['choices'][1]}\n"
            f"C. {r['choices'][2]}\nD. {r['choices'][3]}\nAnswer:",
        }
    ]
    assert r["query"].startswith("Question: ")
    assert arc.cases[0].reference == "ABCD"[r["gold"]]


@needs_shared
def test_aime2025_latex_is_repaired():
    (ds,) = datasets_of("aime2025_gen_0_shot_chat_prompt")
    by_id = {c.id: c.record["problem"] for c in ds.cases}
    assert "\\frac{\\log_k" in by_id["18"] and "\x0c" not in by_id["18"]
    assert "$\\triangle DEF" in by_id["19"] and "\t" not in by_id["19"]
    assert "\\frac{m}{n}" in by_id["27"]
    for text in by_id.values():
        assert not any(ord(ch) < 32 and ch != "\n" for ch in text)
    assert [c.reference for c in ds.cases][:3] == ["70", "588", "16"]


def test_repair_latex_rules():
    assert repair_latex("\x0crac{1}{2}") == "\\frac{1}{2}"
    assert repair_latex("$\triangle ABC$") == "$\\triangle ABC$"
    assert repair_latex("\x08inom{5}{2}") == "\\binom{5}{2}"
    assert repair_latex("a\tb\tc") == "a\tb\tc"  # real tabs stay
    assert repair_latex("line\r\nnext") == "line\r\nnext"
    assert repair_latex("x \rightarrow y") == "x \\rightarrow y"


# -- sub-datasets on synthetic data --------------------------------------------------------------


def make_subsets(root: Path, n: int = 4) -> None:
    for subject in ("alpha", "beta_gamma"):
        for split, count in (("test", n), ("dev", 2)):
            path = root / "mc" / split / f"{subject}_{split}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                for i in range(count):
                    writer.writerow([f"{subject} {split} q{i}?", "w", "x", "y", "z", "ABCD"[i % 4]])


MC = {
    "path": "mc/test/{subset}_test.csv",
    "format": "csv",
    "columns": ["input", "A", "B", "C", "D", "target"],
    "answer_field": "target",
    "subsets": {"names": ["alpha", "beta_gamma"], "abbr": "mc-{subset}"},
    "fewshot": {
        "path": "mc/dev/{subset}_dev.csv",
        "k": 2,
        "example": [
            {"role": "user", "content": "About {subset_text}: {input}"},
            {"role": "assistant", "content": "{target}"},
        ],
    },
    "prompt": [{"role": "user", "content": "About {subset_text}: {input}"}],
    "evaluator": {"type": "choice"},
}


def test_subsets_split_and_merged(tmp_path):
    make_subsets(tmp_path)
    cfg = config(tmp_path, **MC)
    split = expand(cfg, tmp_path)
    assert [d.config.name for d in split] == ["t/alpha", "t/beta_gamma"]
    assert [d.config.abbr for d in split] == ["mc-alpha", "mc-beta_gamma"]
    beta = split[1]
    assert beta.render(beta.cases[1]) == [
        {"role": "user", "content": "About beta gamma: beta_gamma dev q0?"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "About beta gamma: beta_gamma dev q1?"},
        {"role": "assistant", "content": "B"},
        {"role": "user", "content": "About beta gamma: beta_gamma test q1?"},
    ]
    (merged,) = expand(cfg, tmp_path, merge=True)
    assert merged.config.name == "t" and merged.merged
    assert [c.id for c in merged.cases] == [f"{d.subset}/{c.id}" for d in split for c in d.cases]
    by_id = {c.id: c for c in merged.cases}
    case = by_id[f"beta_gamma/{beta.cases[1].id}"]
    assert merged.render(case) == beta.render(beta.cases[1])  # same prompt in both modes
    # --sb-limit applies to each subset
    assert [len(d.cases) for d in expand(cfg, tmp_path, limit=2)] == [2, 2]
    assert len(expand(cfg, tmp_path, limit=2, merge=True)[0].cases) == 4


def test_subset_fields_from_mapping_and_file(tmp_path):
    make_subsets(tmp_path)
    mapping = {"alpha": {"name_zh": "甲"}, "beta_gamma": {"name_zh": "乙"}}
    cfg = config(
        tmp_path,
        **{
            **MC,
            "subsets": {"names": mapping},
            "prompt": "{name_zh} {subset} {input}",
            "fewshot": None,
        },
    )
    split = expand(cfg, tmp_path)
    assert split[1].render(split[1].cases[0]) == "乙 beta_gamma beta_gamma test q0?"
    assert split[0].config.abbr == "t_alpha"  # default abbr pattern
    (tmp_path / "mc" / "subjects.json").write_text(
        json.dumps({"beta_gamma": ["Beta", "乙"], "alpha": ["Alpha", "甲"]})
    )
    cfg = config(
        tmp_path,
        **{
            **MC,
            "subsets": {"file": "mc/subjects.json", "fields": ["en", "zh"]},
            "prompt": "{en}/{zh}: {input}",
            "fewshot": None,
        },
    )
    split = expand(cfg, tmp_path)
    assert [d.subset for d in split] == ["beta_gamma", "alpha"]
    assert split[0].render(split[0].cases[0]) == "Beta/乙: beta_gamma test q0?"
    mixed = dataclasses.replace(cfg, fewshot=MC["fewshot"])
    with pytest.raises(ConfigError, match="must be a string for a string prompt"):
        expand(mixed, tmp_path)[0].render(expand(mixed, tmp_path)[0].cases[0])
    (tmp_path / "mc" / "subjects.txt").write_text("# comment\nalpha\n\n")
    cfg = config(tmp_path, **{**MC, "subsets": {"file": "mc/subjects.txt"}})
    assert [d.subset for d in expand(cfg, tmp_path)] == ["alpha"]


@pytest.mark.parametrize(
    ("subsets", "path", "message"),
    [
        ({"names": ["a"]}, "x.csv", "needs {subset} in `path`"),
        ({"names": ["a"], "file": "x"}, "{subset}.csv", "exactly one of"),
        ({}, "{subset}.csv", "exactly one of"),
        ({"names": ["a", "a"]}, "{subset}.csv", "listed twice"),
        ({"names": ["a/b"]}, "{subset}.csv", "may only hold"),
        ({"names": ["a"], "abbr": "x"}, "{subset}.csv", "containing {subset}"),
        ({"names": ["a"], "color": 1}, "{subset}.csv", "unknown key 'color'"),
        ({"names": {"a": 3}}, "{subset}.csv", "must be a mapping"),
    ],
)
def test_subsets_validation(tmp_path, subsets, path, message):
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        config(tmp_path, path=path, subsets=subsets)


def test_missing_data_names_the_download_command(tmp_path):
    cfg = config(tmp_path, **MC)
    (split, *_) = expand(cfg, tmp_path)
    with pytest.raises(DatasetMissingError) as err:
        _ = split.cases
    text = str(err.value)
    assert "Put the data files there" in text  # not a downloadable set
    assert str(tmp_path / "mc" / "test" / "alpha_test.csv") in text
    cfg = config(tmp_path, **{**MC, "subsets": {"file": "mc/list.txt"}})
    with pytest.raises(DatasetMissingError, match="lists its subsets"):
        expand(cfg, tmp_path)


@needs_shared
def test_missing_builtin_data_message(tmp_path):
    (ds,) = datasets_of("math500_gen_0_shot_cot_chat_prompt", root=tmp_path)
    with pytest.raises(DatasetMissingError, match="download math500 --to"):
        _ = ds.cases


# -- options lists, custom files ------------------------------------------------------------------


def test_choices_field(tmp_path):
    data = tmp_path / "qa.jsonl"
    rows = [
        {"q": "Capital of France?", "opts": ["Rome", "Paris", "Oslo"], "ans": "Paris"},
        {"q": "2+2?", "opts": ["3", "4", "5"], "ans": 1},
        {"q": "Sky?", "opts": '["blue", "green"]', "ans": "A"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config(
        tmp_path,
        path=str(data),
        choices_field="opts",
        answer_field="ans",
        prompt="{q}\n{options}\nAnswer with the letter.",
        evaluator={"type": "choice", "choices": "ABC"},
    )
    ds = Dataset(cfg, tmp_path)
    assert [c.reference for c in ds.cases] == ["B", "B", "A"]
    assert (
        ds.render(ds.cases[0])
        == "Capital of France?\nA. Rome\nB. Paris\nC. Oslo\nAnswer with the letter."
    )
    assert set(ds.cases[0].record) == ds.placeholders  # a case keeps what its prompt uses
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"q": "x", "opts": "not a list", "ans": "A"}) + "\n")
    with pytest.raises(ConfigError, match="choices_field 'opts'"):
        _ = Dataset(dataclasses.replace(cfg, path=str(bad)), tmp_path).cases


def test_path_next_to_the_config(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "data.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    cfg = build(DatasetConfig, "mine", str(folder / "mine.yaml"), {"path": "./data.jsonl"})
    assert Dataset(cfg, tmp_path / "elsewhere").data_path == folder / "data.jsonl"
    cfg = build(DatasetConfig, "mine", str(folder / "mine.yaml"), {"path": "mine/data.jsonl"})
    assert Dataset(cfg, tmp_path).data_path == folder / "data.jsonl"  # under the datasets dir


def test_data_file_named_directly(tmp_path):
    data = tmp_path / "qa.csv"
    data.write_text("question,answer\nCapital of France?,Paris\n2+2?,4\n", encoding="utf-8")
    _, (cfg,) = load_configs(SuiteIndex([(BUILTIN_SUITES, "built-in")]), [], [str(data)], {})
    assert cfg.name == "qa" and cfg.evaluator == "exact" and cfg.prompt == "{question}"
    ds = Dataset(cfg, tmp_path / "unused")
    assert [c.reference for c in ds.cases] == ["Paris", "4"]
    assert ds.evaluator.judge("paris.", "Paris").correct
    # a YAML beside it with the same stem overrides the defaults (and needs no path)
    (tmp_path / "qa.yaml").write_text('prompt: "Q: {question}\\nA:"\nevaluator: numeric\n')
    _, (cfg,) = load_configs(SuiteIndex([(BUILTIN_SUITES, "built-in")]), [], [str(data)], {})
    assert cfg.evaluator == "numeric" and cfg.source == str(tmp_path / "qa.yaml")
    assert Dataset(cfg, tmp_path).render(Dataset(cfg, tmp_path).cases[1]) == "Q: 2+2?\nA:"
    (tmp_path / "qa.yaml").write_text("evaluatr: numeric\n")
    fresh = SuiteIndex([(BUILTIN_SUITES, "built-in")])  # the index caches what it read
    with pytest.raises(ConfigError, match=r"qa\.yaml:1: unknown field 'evaluatr'"):
        load_configs(fresh, [], [str(data)], {})


def test_user_function_evaluator_by_import_path(tmp_path):
    (tmp_path / "grade.py").write_text(
        "def close_enough(output, reference):\n"
        "    return abs(float(output) - float(reference)) < 0.1\n"
    )
    data = tmp_path / "num.jsonl"
    data.write_text(json.dumps({"question": "pi?", "answer": "3.14"}) + "\n")
    cfg = config(tmp_path, path=str(data), evaluator=f"{tmp_path / 'grade.py'}:close_enough")
    ds = Dataset(cfg, tmp_path)
    assert ds.evaluator.judge("3.1", ds.cases[0].reference).correct


# -- version -----------------------------------------------------------------------------------


def test_version_changes_with_what_defines_the_benchmark(tmp_path):
    make_subsets(tmp_path)
    base = config(tmp_path, **MC)

    def versions(cfg, root=tmp_path):
        return [d.version for d in expand(cfg, root)] + [expand(cfg, root, merge=True)[0].version]

    v0 = versions(base)
    assert len(set(v0)) == 3 and all(len(v) == 6 for v in v0)
    # the merged task has the version of the split run's group row
    assert v0[2] == group_version([v0[1], v0[0]])
    assert versions(base) == v0  # stable
    # not: names, descriptions, licences, aliases, where the files lie
    same = dataclasses.replace(
        base, abbr="other", description="d", data_source="https://x", license="MIT", aliases=["z"]
    )
    assert versions(same) == v0
    moved = tmp_path / "moved"
    (moved / "mc").mkdir(parents=True)
    for sub in ("test", "dev"):
        (tmp_path / "mc" / sub).rename(moved / "mc" / sub)
    assert versions(base, moved) == v0
    for sub in ("test", "dev"):
        (moved / "mc" / sub).rename(tmp_path / "mc" / sub)
    assert (
        versions(dataclasses.replace(base, subsets={**MC["subsets"], "abbr": "x-{subset}"})) == v0
    )

    def changed(**fields):
        return versions(dataclasses.replace(base, **fields))

    # the prompt, the few-shot examples, the evaluator, the dataset's generation settings
    assert changed(prompt=[{"role": "user", "content": "On {subset_text}: {input}"}]) != v0
    assert changed(fewshot={**MC["fewshot"], "k": 1}) != v0
    assert changed(evaluator={"type": "choice", "leading": True}) != v0
    assert changed(generation_kwargs={"stop": ["\n"]}) != v0
    assert changed(subsets={"names": {"alpha": {"x": 1}, "beta_gamma": None}}) != v0
    # the data: one test row, or one few-shot row of one subset
    test_file = tmp_path / "mc" / "test" / "alpha_test.csv"
    original = test_file.read_bytes()
    test_file.write_bytes(original.replace(b"q0?", b"q0!"))
    v1 = versions(base)
    assert v1[0] != v0[0] and v1[1] == v0[1] and v1[2] != v0[2]
    test_file.write_bytes(original)
    dev_file = tmp_path / "mc" / "dev" / "beta_gamma_dev.csv"
    dev_file.write_bytes(dev_file.read_bytes().replace(b"q1?", b"q1!"))
    v2 = versions(base)
    assert v2[0] == v0[0] and v2[1] != v0[1] and v2[2] != v0[2]


@needs_shared
def test_builtin_versions_are_stable():
    first = {name: [d.version for d in datasets_of(name)] for name in PUBLISHED}
    second = {name: [d.version for d in datasets_of(name)] for name in PUBLISHED}
    assert first == second
    # the two GSM8K prompts differ, so do their versions
    assert first["gsm8k_gen_0_shot_cot_str"] != first["gsm8k_gen_0_shot_cot_chat_prompt"]
