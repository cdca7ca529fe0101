"""The code evaluator's pure parts: extraction, assembly, references, parameters; the gzip
reader. Nothing here runs a program (tests/test_sandbox.py and test_code_humaneval.py do)."""

from __future__ import annotations

import gzip
import json

import pytest

from pytest_servebench.catalog.datasets import read_records
from pytest_servebench.scoring.evaluators import get_evaluator
from pytest_servebench.scoring.evaluators.code import CodeEvaluator, assemble, extract_code

PROMPT = 'def add(a, b):\n    """Sum."""\n'
PROBLEM = {
    "prompt": PROMPT,
    "test": "def check(f):\n    assert f(1, 2) == 3\n",
    "entry_point": "add",
}


@pytest.mark.parametrize(
    ("reply", "block", "code"),
    [
        ("Sure:\n```python\nx = 1\n```\nand\n```python\ny = 2\n```", "first", "x = 1\n"),
        ("Sure:\n```python\nx = 1\n```\nand\n```python\ny = 2\n```", "last", "y = 2\n"),
        ("```\nplain fence\n```", "first", "plain fence\n"),
        (
            "cut short:\n```python\ndef add(a, b):\n    return a +",
            "first",
            "def add(a, b):\n    return a +",
        ),
        ("    return a + b\n", "first", "    return a + b\n"),
    ],
)
def test_extract_code(reply, block, code):
    assert extract_code(reply, block) == code


def test_a_completion_continues_the_prompt():
    program = assemble("    return a + b\n", PROBLEM)
    assert program.startswith(PROMPT + "    return a + b\n")
    assert program.rstrip().endswith("check(add)")


def test_a_full_function_replaces_the_stub_and_keeps_the_prompts_imports():
    problem = {**PROBLEM, "prompt": "import math\n\n" + PROMPT}
    program = assemble("def add(a, b):\n    return math.floor(a) + b\n", problem)
    assert program.index("import math") < program.index("return math.floor")
    assert program.count("def add(") == 2  # the stub, then the reply's definition wins
    compile(program, "program.py", "exec")


def test_mbpp_style_tests_and_setup():
    program = assemble(
        "def sq(x):\n    return x * x\n", {"tests": ["assert sq(2) == 4"], "setup": "import os"}
    )
    assert program.splitlines()[-2:] == ["import os", "assert sq(2) == 4"]
    assert "check(" not in program


def test_reference_from_record_and_program():
    ev = CodeEvaluator()
    record = {**PROBLEM, "task_id": "X/1", "canonical_solution": "    return a + b\n"}
    ref = ev.record_reference(record)
    assert json.loads(ref) == PROBLEM
    assert ev.program("", ref) is None and ev.program("   \n", ref) is None
    assert "check(add)" in ev.program("```python\n    return a + b\n```", ref)


def test_a_missing_field_names_the_fields_there_are():
    with pytest.raises(ValueError, match=r"reads field 'test'.*prompt, entry_point"):
        CodeEvaluator().record_reference({"prompt": "x", "entry_point": "f"})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"timeout": 0}, "timeout"),
        ({"memory_mb": -1}, "memory_mb"),
        ({"block": "middle"}, "block"),
        ({"pass_ks": [0]}, "pass_ks"),
        ({"test_field": None}, "test_field"),
    ],
)
def test_bad_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        get_evaluator({"type": "code", **params})


def test_identity_changes_with_limits_and_fields_only():
    assert CodeEvaluator().identity() == "code@v1"
    assert CodeEvaluator(timeout=3).identity() != CodeEvaluator().identity()
    assert get_evaluator({"type": "code"}).identity() == "code@v1"


def test_gzip_data_files_are_read_directly(tmp_path):
    rows = [{"a": 1}, {"a": 2}]
    path = tmp_path / "set.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    assert [r for _, r in read_records(path)] == rows
    as_json = tmp_path / "set.json.gz"
    as_json.write_bytes(gzip.compress(json.dumps(rows).encode()))
    assert [r for _, r in read_records(as_json)] == rows
