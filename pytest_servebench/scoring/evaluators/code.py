"""Code generation: take the program out of a reply, add the problem's tests, run it sandboxed.

A case's reference is the problem as JSON (``{"prompt", "test", "entry_point"}`` or
``{"tests", "setup"}``), built from the record's fields (:meth:`CodeEvaluator.record_reference`).

From a reply to a program (:func:`extract_code`, :func:`assemble`):

* the first fenced block (```` ```python ... ``` ````) when there is one, else the reply as is
  (AISBench's ``humaneval_postprocess_v2``); a fence left open (the reply was cut) counts
  from its first line on;
* a full function (it defines the entry point at the top level): the prompt, then the reply
  (the prompt's imports and helpers stay; the reply's definition replaces the stub);
* otherwise a completion that continues the prompt: prompt + reply (HumanEval's own rule).

Then the tests: HumanEval's ``test`` and ``check(entry_point)``, or MBPP's setup code and
``test_list`` asserts. The verdict's ``extracted`` is the reason ("passed", "failed assertion:
line 12: assert ...", "timeout: ...") so reports show why each sample passed or failed; a reply
with no code is unparsable (``None``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pytest_servebench.execution.runner import Limits, Outcome

from .base import Judgement, as_text, make_identity

#: Bump when extraction or assembly changes (feeds the dataset version).
VERSION = 1
_FENCED = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)
_OPEN_FENCE = re.compile(r"```[^\n`]*\n(.*)\Z", re.DOTALL)


def extract_code(text: str, block: str = "first") -> str:
    """The code of a reply: a fenced block (the first or the last), else the whole text."""
    text = as_text(text)
    blocks = _FENCED.findall(text)
    if blocks:
        return blocks[0] if block == "first" else blocks[-1]
    cut = _OPEN_FENCE.search(text)
    if cut:
        return cut.group(1)
    return text


def defines(code: str, name: str) -> bool:
    """Whether `code` defines function `name` at the top level."""
    return (
        bool(name)
        and re.search(rf"^(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.M) is not None
    )


def assemble(code: str, problem: dict[str, Any]) -> str:
    """The program to run: the solution (completed from the prompt if need be) and its tests."""
    prompt = problem.get("prompt") or ""
    entry = problem.get("entry_point") or ""
    if prompt and not defines(code, entry) and entry:
        solution = prompt + code
    elif prompt and entry:
        solution = prompt + "\n\n" + code
    else:
        solution = code
    parts = [solution, ""]
    if problem.get("setup"):
        parts.append(problem["setup"])
    if problem.get("test"):
        parts.append(problem["test"])
    for line in problem.get("tests") or ():
        parts.append(line)
    if entry and problem.get("test"):
        parts.append(f"check({entry})")
    return "\n".join(parts) + "\n"


def _field(record: dict[str, Any], name: str | None) -> Any:
    if not name:
        return None
    if name not in record:
        fields = ", ".join(map(str, record))
        raise ValueError(f"the code evaluator reads field {name!r}; the record has: {fields}")
    return record[name]


@dataclass(frozen=True)
class CodeEvaluator:
    """Run the reply's program with the problem's tests in a sandbox: pass or fail, with why.

    Fields read from each record: ``prompt_field`` (code the completion continues; empty for
    MBPP-style records), ``test_field`` (a test program defining ``check``), ``entry_point_field``
    (the function ``check`` is given), ``tests_field`` (a list of assert lines, MBPP) and
    ``setup_field`` (code run before those). Limits: ``timeout`` seconds (wall clock; the CPU
    limit is the same), ``memory_mb``, ``max_processes``, ``max_output_kb``.
    """

    prompt_field: str | None = "prompt"
    test_field: str | None = "test"
    entry_point_field: str | None = "entry_point"
    tests_field: str | None = None
    setup_field: str | None = None
    block: str = "first"
    timeout: float = 10.0
    memory_mb: int = 1024
    max_processes: int = 64
    max_output_kb: int = 1024
    #: pass@k figures reported besides pass@n (each k < n), as AISBench's HumanEval k.
    pass_ks: tuple[int, ...] = (1, 10, 100)
    name = "code"

    def __post_init__(self) -> None:
        ks = self.pass_ks
        if not isinstance(ks, (list, tuple)) or not all(
            isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks
        ):
            raise ValueError(
                f"parameter 'pass_ks' must be a list of whole numbers >= 1, got {ks!r}"
            )
        object.__setattr__(self, "pass_ks", tuple(ks))
        if self.block not in ("first", "last"):
            raise ValueError(f"parameter 'block' must be 'first' or 'last', got {self.block!r}")
        if not self.test_field and not self.tests_field:
            raise ValueError("the code evaluator needs 'test_field' or 'tests_field'")
        for name in ("timeout", "memory_mb", "max_processes", "max_output_kb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"parameter '{name}' must be a number above 0, got {value!r}")

    @property
    def limits(self) -> Limits:
        return Limits(
            float(self.timeout),
            int(self.memory_mb),
            int(self.max_processes),
            int(self.max_output_kb),
        )

    # -- references ------------------------------------------------------------------------
    def record_reference(self, record: dict[str, Any]) -> str:
        """The problem of one record, as the case's reference (JSON text)."""
        problem: dict[str, Any] = {}
        for key, name in (
            ("prompt", self.prompt_field),
            ("test", self.test_field),
            ("entry_point", self.entry_point_field),
            ("setup", self.setup_field),
        ):
            value = _field(record, name)
            if value:
                problem[key] = as_text(value)
        tests = _field(record, self.tests_field)
        if tests:
            if isinstance(tests, str):
                tests = [tests]
            problem["tests"] = [as_text(t) for t in tests]
        return json.dumps(problem, ensure_ascii=False, sort_keys=True)

    def reference(self, raw: object) -> str:
        """A reference from the answer field alone: that field holds the test code."""
        if isinstance(raw, list):
            return json.dumps({"tests": [as_text(t) for t in raw]}, ensure_ascii=False)
        return json.dumps({"test": as_text(raw)}, ensure_ascii=False)

    # -- judging ---------------------------------------------------------------------------
    def program(self, output: str, reference: str) -> str | None:
        """The program to run for one reply, or None when the reply holds no code."""
        code = extract_code(output, self.block)
        if not code.strip():
            return None
        return assemble(code, json.loads(reference))

    def prefetch(self, output: str, reference: str) -> None:
        """Start running the reply's program now; its verdict is read later by judge."""
        program = self.program(output, reference)
        if program is not None:
            from pytest_servebench.execution.pool import get_executor

            get_executor().submit(program, self.limits)

    def judge(self, output: str, reference: str) -> Judgement:
        program = self.program(output, reference)
        if program is None:
            return Judgement(None, False, 0.0)
        from pytest_servebench.execution.pool import get_executor

        outcome: Outcome = get_executor().run(program, self.limits)
        return Judgement(outcome.reason, outcome.passed, 1.0 if outcome.passed else 0.0)

    def identity(self) -> str:
        params = {
            name: getattr(self, name)
            for name in (
                "prompt_field",
                "test_field",
                "entry_point_field",
                "tests_field",
                "setup_field",
                "block",
                "timeout",
                "memory_mb",
                "max_processes",
                "max_output_kb",
            )
        }
        defaults = {name: getattr(CodeEvaluator, name) for name in params}
        return make_identity(self.name, VERSION, params, defaults)
