"""The math evaluator (MATH-500, AIME): boxed-answer extraction and math-verify equivalence."""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import pytest

from pytest_servebench.scoring.evaluators import get_evaluator, strip_reasoning
from pytest_servebench.scoring.evaluators.math_answer import (
    MathEvaluator,
    _Verifier,
    canonical_text,
    extract_math_answer,
)

math_verify = pytest.importorskip("math_verify")

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"

# (model output, expected extraction)
EXTRACTION = [
    (r"Thus the answer is $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
    (r"\boxed{18}", "18"),
    (r"First $\boxed{3}$ was wrong. Correcting: $\boxed{4}$", "4"),
    (
        r"The point is $\boxed{\left( 3, \frac{\pi}{2} \right)}$.",
        r"\left( 3, \frac{\pi}{2} \right)",
    ),
    (r"So $x \in \boxed{[-2, 7]}$.", "[-2, 7]"),
    (r"\fbox{42}", "42"),
    (r"The answer is \boxed 5.", "5"),
    (r"$\boxed{\text{Evelyn}}$", r"\text{Evelyn}"),
    (r"\[\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}\]", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"),
    (r"\boxed{\dfrac{14}{3}}.", r"\dfrac{14}{3}"),
    (r"Final Answer: The final answer is $\frac{14}{3}$. I hope it is correct.", r"\frac{14}{3}"),
    ("The final answer is 25.", "25"),
    ("**Answer:** 204", "204"),
    (r"Answer: \(\sqrt{51}\)", r"\sqrt{51}"),
    ("Therefore, the final answer is: $\\boxed{70}$", "70"),
    (r"\boxed{}" + " and then the answer is 7", "7"),  # an empty box is no answer
    ("I think it is 25 but I am not sure", None),  # no box, no statement: not guessed
    ("", None),
    (r"\boxed{3", None),  # unclosed
    ("<think>the answer is 9</think>", None),  # stripped reasoning leaves nothing
]


@pytest.mark.parametrize(("output", "expected"), EXTRACTION)
def test_extraction(output, expected):
    assert extract_math_answer(strip_reasoning(output)) == expected


# (model output, reference, correct): realistic MATH-500 / AIME cases, right and wrong.
JUDGE = [
    # fractions and decimals
    (r"\boxed{\frac{1}{2}}", "0.5", True),
    (r"\boxed{0.5}", r"\frac{1}{2}", True),
    (r"\boxed{\frac12}", r"\frac{1}{2}", True),
    (r"\boxed{\dfrac{17}{50}}", r"\dfrac{17}{50}", True),
    (r"\boxed{0.34}", r"\dfrac{17}{50}", True),
    (r"\boxed{\frac{1}{3}}", "0.5", False),
    (r"\boxed{0.33}", r"\frac{1}{3}", False),
    (r"\boxed{\frac{9}{5}}", r"1\frac{4}{5}", True),
    (r"\boxed{1.8}", r"1\frac{4}{5}", True),
    (r"\boxed{6.72\times 10^{-5}}", ".0000672", True),
    # tuples, points, intervals, sets
    (r"\boxed{(3, \frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)", True),
    (r"\boxed{\left(3,\frac{\pi}{2}\right)}", r"\left( 3, \frac{\pi}{2} \right)", True),
    (r"\boxed{(3, \pi/2)}", r"\left( 3, \frac{\pi}{2} \right)", True),
    (r"\boxed{(3, \frac{3\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)", False),
    (r"\boxed{(\frac{\pi}{2}, 3)}", r"\left( 3, \frac{\pi}{2} \right)", False),
    (r"\boxed{[-2,7]}", r"x \in [-2,7]", True),
    (r"\boxed{(-2,7)}", r"x \in [-2,7]", False),
    (r"\boxed{(-\infty, 0]}", r"(-\infty, 0]", True),
    (r"\boxed{(-\infty, 0)}", r"(-\infty, 0]", False),
    (r"\boxed{(0,9)\cup(9,36)}", r"(0,9) \cup (9,36)", True),
    (r"\boxed{(0,36)}", r"(0,9) \cup (9,36)", False),
    (r"\boxed{-2, 1}", "1,-2", True),
    (r"\boxed{1}", "1,-2", False),
    (r"\boxed{3,5,7}", "3, 5, 7", True),
    (r"\boxed{1+\sqrt{19}, 1-\sqrt{19}}", r"1 \pm \sqrt{19}", True),
    # units, degrees, money, thousands separators, text
    (r"\boxed{864}", r"864 \mbox{ inches}^2", True),
    (r"\boxed{864 \text{ square inches}}", r"864 \mbox{ inches}^2", True),
    (r"\boxed{5.4 \text{ cents}}", r"5.4 \text{ cents}", True),
    (r"\boxed{5.4}", r"5.4 \text{ cents}", True),
    (r"\boxed{90}", r"90^\circ", True),
    (r"\boxed{90^{\circ}}", r"90^\circ", True),
    (r"\boxed{45^\circ}", r"90^\circ", False),
    (r"\boxed{\$32,348}", r"\$32,\!348", True),
    (r"\boxed{32348}", r"\$32,\!348", True),
    (r"\boxed{32,349}", r"\$32,\!348", False),
    (r"\boxed{10080}", r"10,\!080", True),
    (r"\boxed{\text{Evelyn}}", r"\text{Evelyn}", True),
    (r"\boxed{Evelyn}", r"\text{Evelyn}", True),
    (r"\boxed{\text{Elveny}}", r"\text{Evelyn}", False),  # sympy would call an anagram equal
    (r"\boxed{\text{(C)}}", r"\text{(C)}", True),
    (r"\boxed{C}", r"\text{(C)}", True),
    (r"\boxed{(D)}", r"\text{(C)}", False),
    (r"\boxed{\text{even}}", r"\text{even}", True),
    (r"\boxed{\text{odd}}", r"\text{even}", False),
    # expressions, equations, radicals, complex numbers, bases, matrices
    (r"\boxed{2\sqrt{2}}", r"\sqrt{8}", True),
    (r"\boxed{\sqrt{117}}", r"3\sqrt{13}", True),
    (r"\boxed{3\sqrt{12}}", r"3\sqrt{13}", False),
    (r"\boxed{(x+5)(x+2)}", r"x^2+7x+10", True),
    (r"\boxed{x^2+7x+11}", r"x^2+7x+10", False),
    (r"\boxed{5}", "x=5", True),
    (r"\boxed{x = 5}", "x=5", True),
    (r"\boxed{x=-5}", "x=5", False),
    (r"\boxed{y=2x+3}", "y = 2x + 3", True),
    (r"\boxed{6-5i}", "6 - 5i", True),
    (r"\boxed{6+5i}", "6 - 5i", False),
    (r"\boxed{52_8}", "52_8", True),
    (r"\boxed{52_{8}}", "52_8", True),
    (r"\boxed{12\pi}", r"12\pi", True),
    (r"\boxed{37.699}", r"12\pi", False),
    (r"\boxed{p-q}", "p - q", True),
    (r"\boxed{q-p}", "p - q", False),
    (
        r"\boxed{\begin{pmatrix}-\frac{1}{3}\\\frac{2}{3}\\\frac{5}{3}\end{pmatrix}}",
        r"\begin{pmatrix} -1/3 \\ 2/3 \\ 5/3 \end{pmatrix}",
        True,
    ),
    (
        r"\boxed{\begin{pmatrix}1/3\\2/3\\5/3\end{pmatrix}}",
        r"\begin{pmatrix} -1/3 \\ 2/3 \\ 5/3 \end{pmatrix}",
        False,
    ),
    # AIME: integer answers, zero-padded references
    (r"... so $m+n = \boxed{25}$.", "025", True),
    (r"\boxed{025}", "25", True),
    (r"\boxed{24}", "025", False),
    ("The final answer is 73.", "073", True),
    ("I believe it's 73", "073", False),  # not given as an answer: unparsable, wrong
    (r"<think>maybe \boxed{70}</think>The answer is $\boxed{588}$.", "588", True),
]


@pytest.mark.parametrize(("output", "reference", "correct"), JUDGE)
def test_judge(output, reference, correct):
    ev = get_evaluator("math")
    judgement = ev.judge(strip_reasoning(output), ev.reference(reference))
    assert judgement.correct is correct, judgement
    assert judgement.score == (1.0 if correct else 0.0)


def test_canonical_text_is_cosmetic_only():
    assert canonical_text(r"\left( 3, \dfrac{\pi}{2} \right)") == r"(3,\frac{\pi}{2})"
    assert canonical_text(r"\$32,\!348") == "32348"
    assert canonical_text(r"90^\circ") == "90"
    assert canonical_text("1,-2") == "1,-2"  # a list, not a thousands separator


def test_unparsable_is_none_and_wrong():
    j = get_evaluator("math").judge("I could not solve it.", "5")
    assert j.extracted is None and not j.correct


def test_no_eval_of_model_text(tmp_path):
    """Model text goes through the LaTeX grammar only: never eval'd."""
    marker = tmp_path / "pwned"
    payloads = [
        rf"\boxed{{__import__('os').system('touch {marker}')}}",
        rf"The final answer is __import__('pathlib').Path('{marker}').touch()",
        rf"\boxed{{(lambda: open('{marker}', 'w'))()}}",
    ]
    ev = get_evaluator("math")
    for text in payloads:
        assert not ev.judge(text, "5").correct
    assert not marker.exists()


def test_time_limit_per_comparison():
    """A comparison that does not finish in time is killed and counts as not equal; the next
    comparison gets a fresh worker."""
    slow = "import json, sys, time\nprint(json.dumps({'ready': True}), flush=True)\n"
    slow += "for line in sys.stdin:\n    time.sleep(30)\n"
    verifier = _Verifier()
    verifier.worker_source = slow
    start = time.monotonic()
    assert verifier.equivalent("x^2", "(x)^2", timeout=1) is None
    assert time.monotonic() - start < 10
    assert verifier.timeouts == 1
    verifier.close()


def test_missing_math_verify_falls_back_to_text_rules():
    verifier = _Verifier()
    verifier.worker_source = "import json\nprint(json.dumps({'ready': False, 'error': 'x'}))\n"
    assert verifier.equivalent("x^2", "x*x", timeout=1) is None
    assert verifier.unavailable and "math-verify" in verifier.unavailable


def test_params_identity_and_pickle():
    ev = get_evaluator({"type": "math", "timeout": 3})
    assert ev.timeout == 3
    assert ev.identity() != get_evaluator("math").identity()
    assert "math-verify" in get_evaluator("math").identity()
    assert pickle.loads(pickle.dumps(ev)) == ev
    with pytest.raises(ValueError, match="timeout"):
        get_evaluator({"type": "math", "timeout": 0})
    assert isinstance(ev, MathEvaluator)


NASTY = ["\\boxed{" * 500, "}" * 1000, "\\boxed{\\frac{" + "1" * 5000 + "}{3}}", "$" * 999, "\x00"]


@pytest.mark.parametrize("text", NASTY)
def test_never_crashes(text):
    get_evaluator("math").judge(text, r"\frac{1}{3}")


@pytest.mark.skipif(not (SHARED / "math500" / "test.jsonl").is_file(), reason="no shared data")
def test_every_math500_reference_equals_itself_and_its_boxed_solution():
    """The references parse, and each equals the last \\boxed{} of its own solution."""
    ev = get_evaluator("math")
    records = [json.loads(line) for line in (SHARED / "math500" / "test.jsonl").open()]
    assert len(records) == 500
    wrong = []
    for record in records:
        ref = ev.reference(record["answer"])
        if not ev.judge(f"\\boxed{{{record['answer']}}}", ref).correct:
            wrong.append(("self", record["unique_id"]))
        if not ev.judge(record["solution"], ref).correct:
            wrong.append(("solution", record["unique_id"]))
    assert not wrong, wrong
