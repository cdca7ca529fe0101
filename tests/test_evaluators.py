"""Evaluators judged on real-looking model outputs, as a careful human grader would."""

from __future__ import annotations

import pickle
import sys
import textwrap
import time

import pytest

from pytest_servebench.scoring.evaluators import (
    Evaluator,
    Judgement,
    available_evaluators,
    extract_choice,
    extract_number,
    get_evaluator,
    register_evaluator,
    strip_reasoning,
)
from pytest_servebench.scoring.evaluators import registry as registry_module
from pytest_servebench.scoring.evaluators.numeric import canonical_number

# --------------------------------------------------------------------------- strip_reasoning

STRIP_CASES = [
    ("<think>9*2=18, no wait 20</think>The answer is 18.", "The answer is 18."),
    ("<think>a</think>\n\n<think>b</think>\nFinal: 3", "Final: 3"),
    ("Start<think>reasoning here</think> End", "Start End"),
    # only the closing tag: the chat template opened the block in the prompt
    ("Let me compute 16-3-4 = 9.\n</think>\n\n#### 18", "#### 18"),
    ("first</think>second</think>third", "third"),
    # unclosed block (cut while thinking) and plain text: left alone
    ("<think>still thinking about 42", ""),
    ("Sure. <think>cut while thinking 42", "Sure."),
    ("  plain answer 7  ", "  plain answer 7  "),
    ("", ""),
    ("<think></think>", ""),
]


@pytest.mark.parametrize(("text", "expected"), STRIP_CASES)
def test_strip_reasoning(text, expected):
    assert strip_reasoning(text) == expected


def test_strip_reasoning_huge_is_linear():
    text = "<think>" * 50_000 + "x" * 100_000
    start = time.perf_counter()
    assert strip_reasoning(text) == ""
    text2 = ("<think>" + "y" * 10 + "</think>") * 20_000 + "42"
    assert strip_reasoning(text2) == "42"
    assert time.perf_counter() - start < 0.5


# --------------------------------------------------------------------------- gsm8k

JANET = textwrap.dedent(
    """\
    Janet's ducks lay 16 eggs per day. She eats 3 for breakfast and bakes muffins with 4.
    So she has 16 - 3 - 4 = 9 eggs left.
    She sells them for $2 each, so she makes 9 * 2 = $18 every day."""
)

# (output, reference, extracted, correct)
GSM8K_CASES = [
    # explicit statements
    ("The answer is 18.", "18", "18", True),
    ("answer: 18", "18", "18", True),
    ("Answer: $18", "18", "18", True),
    ("**Answer:** 18", "18", "18", True),
    ("**Answer**: $18.00", "18", "18", True),
    ("**Answer: 18**", "18", "18", True),
    ("The final answer is 1,234", "1234", "1234", True),
    ("#### 18", "18", "18", True),
    ("####18", "18", "18", True),
    (JANET + "\n#### 18", "18", "18", True),
    (JANET + "\nThe answer is 18.", "18", "18", True),
    ("Final Answer: The final answer is $18$. I hope it is correct.", "18", "18", True),
    ("The answer is 18. I hope this helps!", "18", "18", True),
    (
        "The answer is 18. Let me know if you need anything else, e.g. 5 more examples.",
        "18",
        "18",
        True,
    ),
    ("Answer: 18 dollars per day (9 eggs at $2 each)", "18", "18", True),
    ("Answer:\n\n18", "18", "18", True),
    ("The answer is: Janet makes $18 every day at the farmers' market.", "18", "18", True),
    ("Answer: 16 - 3 - 4 = 9 eggs, 9 x 2 = $18", "18", "18", True),
    ("The answer is 9 \\times 2 = 18.", "18", "18", True),
    ("答案是 18 元。", "18", "18", True),
    ("The answer is -5.", "-5", "-5", True),
    ("The temperature ends at −5 degrees. The answer is −5", "-5", "-5", True),
    ("The answer is 0.5", ".5", "0.5", True),
    ("The answer is .5", "0.5", "0.5", True),
    ("The answer is 3/4.", "0.75", "0.75", True),
    ("The answer is 18%.", "18", "18", True),
    ("The answer is 1,234,567.", "1234567", "1234567", True),
    ("The answer is $1{,}234$.", "1234", "1234", True),
    # \boxed
    ("So Janet makes \\boxed{18} dollars.", "18", "18", True),
    ("Therefore the total is $\\boxed{\\$18.00}$", "18", "18", True),
    ("\\[\n\\boxed{18\\text{ dollars}}\n\\]", "18", "18", True),
    ("The final answer is $\\boxed{18}$.", "18", "18", True),
    ("\\boxed{\\frac{1}{2}}", "0.5", "0.5", True),
    ("\\boxed{\\dfrac{3}{4}}", "0.75", "0.75", True),
    ("\\boxed{3\\frac{1}{2}}", "3.5", "3.5", True),  # mixed number
    ("The answer is $-\\frac{1}{4}$.", "-0.25", "-0.25", True),
    ("\\boxed{x = 18}", "18", "18", True),
    ("\\boxed{1{,}234}", "1234", "1234", True),
    # last number fallback
    (JANET, "18", "18", True),
    ("She makes $18.", "18", "18", True),
    ("She makes 18.00 dollars.", "18", "18", True),
    ("Total: 1,234 apples", "1234", "1234", True),
    ("We count 1,2,3", "3", "3", True),
    ("The price went from 5 to 10-3", "3", "3", True),
    # the last statement wins, and explicit beats the last number
    ("The answer is 20.\nWait, I made a mistake: 9 * 2 = 18.\nThe answer is 18.", "18", "18", True),
    ("\\boxed{20}\n\nActually, recomputing: the answer is 18.", "18", "18", True),
    ("The answer is 18.\n\nNote: if she sold 10 eggs she would make $20.", "18", "18", True),
    ("#### 18\n\nThis uses 3 steps.", "18", "18", True),
    # a wordy statement followed by more computation does not count
    ("So the answer is the number of eggs times $2.\n9 * 2 = 18", "18", "18", True),
    # hallucinated follow-up questions are cut
    ("The answer is 18.\n\nQuestion: Tom has 5 apples. How many?\nAnswer: 5", "18", "18", True),
    (JANET + "\n\nQuestion: A bakery sells 30 pies a day at $4. Answer: 120", "18", "18", True),
    ("Question: Janet has 16 eggs... \nShe makes 9 * 2 = 18.", "18", "18", True),
    ("She makes 18.\n\n**Question:** Tom has 5 apples.", "18", "18", True),
    ("She makes 18. Question: Tom has 5 apples.", "18", "18", True),
    # ... but "Question:" inside the reasoning is not a follow-up
    (
        "16 - 3 = 13. Let me re-read the Question: she bakes with 4. 13 - 4 = 9, 9 * 2 = 18",
        "18",
        "18",
        True,
    ),
    # thousands separators in references and outputs
    ("The answer is $2,125.", "2125", "2125", True),
    ("The answer is 2125", "2125", "2125", True),
    # wrong answers
    ("The answer is 20.", "18", "20", False),
    ("#### 17", "18", "17", False),
    ("\\boxed{19}", "18", "19", False),
    (JANET.replace("$18", "$16"), "18", "16", False),
    ("The answer is 18.5", "18", "18.5", False),
    ("The answer is 1,8", "18", "1", False),  # not a thousands group: "1", then "8"
    ("The answer is 18000", "18", "18000", False),
    ("Answer: -18", "18", "-18", False),
    ("The answer is 18.\n\nQuestion: 2+2?\nAnswer: 4", "4", "18", False),
    # nothing to extract
    ("", "18", None, False),
    ("I don't know.", "18", None, False),
    ("The answer is eighteen.", "18", None, False),
    ("\\boxed{}", "18", None, False),
]


@pytest.mark.parametrize(("output", "reference", "extracted", "correct"), GSM8K_CASES)
def test_gsm8k(output, reference, extracted, correct):
    judgement = get_evaluator("gsm8k").judge(output, reference)
    assert judgement == Judgement(extracted, correct, 1.0 if correct else 0.0)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72", "72"),
        ("She earns 2,000 + 125 = 2,125 dollars.\n#### 2,125", "2125"),
        ("#### -3", "-3"),
        ("  42 ", "42"),
        (18, "18"),
    ],
)
def test_gsm8k_reference(raw, expected):
    assert get_evaluator("gsm8k").reference(raw) == expected


def test_gsm8k_with_think_block_through_strip_reasoning():
    ev = get_evaluator("gsm8k")
    content = "<think>Maybe 20? 9*2 is 18.</think>\nThe answer is 18."
    assert ev.judge(strip_reasoning(content), "18").correct
    content = "<think>The answer is 18.</think>\nI could not decide; it is 20."
    assert ev.judge(strip_reasoning(content), "18") == Judgement("20", False, 0.0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("18.00", "18"), ("0.50", "0.5"), ("-0", "0"), ("1800", "1800"), ("1E+3", "1000")],
)
def test_canonical_number(value, expected):
    from decimal import Decimal

    assert canonical_number(Decimal(value)) == expected


def test_numeric_tolerance_and_reference():
    ev = get_evaluator("numeric")
    assert ev.reference("1,234.5") == "1234.5"
    assert ev.reference(3.25) == "3.25"
    assert ev.judge("x = 3.1415926", "3.14159265").correct  # within 1e-6
    assert ev.judge("x = 3.1415", "3.14159265").correct is False
    assert ev.judge("The answer is 0.3333333333", "0.3333333333").correct
    loose = get_evaluator({"type": "numeric", "tolerance": 0.01})
    assert loose.judge("x = 3.1415", "3.14159265").correct
    assert loose.judge("about 3.2", "3.14").correct is False
    relative = get_evaluator({"type": "numeric", "rel_tolerance": 0.01})
    assert relative.judge("1,000,500", "1000000").correct
    # decimal arithmetic: huge integers compare exactly, beyond float precision
    exact = get_evaluator({"type": "numeric", "rel_tolerance": 0})
    big = "12345678901234567890123"
    assert exact.judge(f"The answer is {big}", big).correct
    assert exact.judge(f"The answer is {big}", "12345678901234567890124").correct is False
    assert ev.judge(f"The answer is {big}", "12345678901234567890124").correct  # rel 1e-9
    # non-numeric reference: string comparison of the canonical answer
    assert ev.judge("The answer is 7", "seven") == Judgement("7", False, 0.0)


def test_numeric_defaults_to_gsm8k_tolerance():
    ev = get_evaluator("gsm8k")
    assert ev.judge("18.0000001", "18").correct
    assert ev.judge("18.00001", "18").correct is False


# Outputs built to defeat naive regexes: long runs of digits, separators, markers and braces.
HUGE_OUTPUTS = {
    "digits": "1" * 200_000,
    "numbers": " ".join(str(i) for i in range(40_000)),
    "commas": "1," * 100_000,
    "markers": "The answer is " * 15_000,
    "markers_no_number": "Answer: the total. " * 10_000 + " 18",
    "boxed": "\\boxed{" * 30_000,
    "spaces": " " * 200_000 + "answer: 18",
    "questions": "Question: 1 " * 17_000,
    "minus": "-" * 200_000 + "5",
    "dots": "1." * 100_000,
    "unicode": "数学答案是多少？" * 25_000 + "答案是 18",
    "think": "<think>" + "9*2=18. " * 25_000 + "</think>The answer is 18.",
}


@pytest.mark.parametrize("name", sorted(HUGE_OUTPUTS))
@pytest.mark.parametrize("family", ["gsm8k", "choice", "exact"])
def test_huge_outputs_are_judged_fast(name, family):
    ev = get_evaluator(family)
    text = HUGE_OUTPUTS[name]
    assert len(text) >= 100_000
    start = time.perf_counter()
    ev.judge(strip_reasoning(text), "18" if family != "choice" else "B")
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, f"{family} on {name!r} took {elapsed:.3f}s"


def test_huge_realistic_output_under_budget():
    body = (JANET + "\n") * 1100  # ~200 KB of reasoning
    text = body + "\nThe answer is 18.\n"
    assert len(text) > 200_000
    ev = get_evaluator("gsm8k")
    start = time.perf_counter()
    judgement = ev.judge(text, "18")
    assert time.perf_counter() - start < 0.5
    assert judgement.correct


def test_extract_number_never_crashes_on_odd_text():
    for text in [
        "\x00\x01",
        "💯 points",
        "∞",
        "NaN",
        "1e309",
        "\\boxed{\\boxed{\\boxed{",
        "}}}{{{",
        "$",
        "-",
        ".",
        ",",
        "1/0",
        "\\frac{1}{0}",
    ]:
        value = extract_number(text)
        assert value is None or value.is_finite()


# --------------------------------------------------------------------------- choice

# (output, reference, extracted)
CHOICE_CASES = [
    ("The answer is (B)", "B", "B"),
    ("The answer is (B).", "B", "B"),
    ("**B**", "B", "B"),
    ("B", "B", "B"),
    ("b", "B", "B"),
    ("(C)", "B", "C"),
    ("C.", "C", "C"),
    ("B. Paris", "B", "B"),
    ("B) Paris", "B", "B"),
    ("(B) Paris is the capital of France.", "B", "B"),
    ("**B.** Paris", "B", "B"),
    ("B\n\nExplanation: Paris has been the capital since 987.", "B", "B"),
    ("Answer: B", "B", "B"),
    ("Answer: **B**", "B", "B"),
    ("**Answer: B**", "B", "B"),
    ("**Answer:** (B) Paris", "B", "B"),
    ("Final Answer: D", "D", "D"),
    ("答案：B", "B", "B"),
    ("答案是C。", "C", "C"),
    ("故选D", "D", "D"),
    ("答案：（Ｂ）", "B", "B"),
    ("the correct option is C", "C", "C"),
    ("The correct answer is option C.", "C", "C"),
    ("The best answer is C) 42.", "C", "C"),
    ("\\boxed{C}", "C", "C"),
    ("Therefore, the answer is $\\boxed{\\text{C}}$.", "C", "C"),
    ("\\boxed{(A)}", "A", "A"),
    ("The answer is A because Paris is the capital.", "A", "A"),
    ("So the answer is (d).", "D", "D"),
    ("I would choose D.", "D", "D"),
    ("I'd go with A.", "A", "A"),
    ("The answer is: **C. 42**", "C", "C"),
    ("Let me think... B seems right. Final answer: D", "D", "D"),
    ("Option A is wrong. Option C is correct.", "C", "C"),
    ("(C) is the correct answer.", "C", "C"),
    ("C选项正确", "C", "C"),
    ("The answer is not A, it is C", "C", "C"),
    ("I think the answer is B because A is wrong.", "B", "B"),
    ("A and B are both wrong; the answer is C", "C", "C"),
    ("The answer is A.\nWait, reconsidering: the answer is B.", "B", "B"),
    (
        "Let's analyze each option.\nA. 3 is too small.\nB. 5 fits.\nC. 7 is too big.\n"
        "D. 9 is too big.\nThe answer is B.",
        "B",
        "B",
    ),
    ("Paris is the capital of France, which is option B.", "B", "B"),
    ("Looking at the options, Paris matches.\nSo it's (B).", "B", "B"),
    ("B) Paris\n\nOption A (London) is the capital of the UK.", "B", "B"),
    ("Options (A) and (C) are wrong, (D) is irrelevant, so (B).", "B", "B"),
    ("It is not A, so B.", "B", "B"),
    ("Therefore, C.", "C", "C"),
    ("I think it is B.", "B", "B"),
    ("The answer is B and a detailed explanation follows.", "B", "B"),
    ("Answer: Option B is correct", "B", "B"),
    ("Answer: B, because Paris is the capital.", "B", "B"),
    ("Hence, the answer is (B). However (C) is also tempting.", "B", "B"),
    (
        "The correct answer is: B) Paris\n\nThe answer is not A because London is in the UK.",
        "B",
        "B",
    ),
    ("正确答案是 C", "C", "C"),
    ("因此选择C选项。", "C", "C"),
    ("ANSWER: C", "C", "C"),
    ("answer: (a)", "A", "A"),
    # wrong but clear answers
    ("The answer is (A)", "B", "A"),
    ("Answer: C", "B", "C"),
    ("D", "B", "D"),
    ("The answer is E.", "B", "E"),  # not an option at all: extracted, judged wrong
    # refusing to guess
    ("A or B", "B", None),
    ("The answer is A or B.", "B", None),
    ("The answer is B or C", "B", None),
    ("Answer: A, B", "B", None),
    ("Either A or B could work.", "B", None),
    ("A car is a vehicle with four wheels.", "A", None),
    ("A good answer needs more context.", "A", None),
    ("I am not sure.", "B", None),
    ("Paris", "B", None),
    ("", "B", None),
    ("   \n  ", "B", None),
    ("A. Paris\nB. London\nC. Berlin\nD. Madrid", "B", None),
    ("(A) 5 (B) 6 (C) 7 (D) 8", "B", None),
    ("Option A is plausible. Option B is plausible too.", "B", None),
    ("The probability P(A) is 0.3 and P(B) is 0.4.", "B", None),
    ("So A is wrong and C too.", "C", None),
    ("The answer is a combination of several factors.", "A", None),
]


@pytest.mark.parametrize(("output", "reference", "extracted"), CHOICE_CASES)
def test_choice(output, reference, extracted):
    judgement = get_evaluator("choice").judge(output, reference)
    correct = extracted is not None and extracted == reference
    assert judgement == Judgement(extracted, correct, 1.0 if correct else 0.0)


def test_choice_custom_letters():
    ev = get_evaluator({"type": "choice", "choices": "ABCDEFGHIJ"})
    assert ev.judge("The answer is (J)", "J").correct
    assert ev.judge("The answer is E.", "E").correct
    assert ev.judge("I think it is H.", "H").correct
    assert extract_choice("The answer is (J)", "ABCD") == "J"  # named, though not an option
    two = get_evaluator({"type": "choice", "choices": ["A", "B"]})
    assert two.judge("Both A and B", "A").extracted is None
    assert two.identity() != get_evaluator("choice").identity()


@pytest.mark.parametrize(
    ("raw", "expected"), [(" b ", "B"), ("(C)", "C"), ("D.", "D"), (2, "C"), ("Ｂ", "B")]
)
def test_choice_reference(raw, expected):
    assert get_evaluator("choice").reference(raw) == expected


# --------------------------------------------------------------------------- exact / regex

EXACT_CASES = [
    ("Paris", "Paris", "paris", True),
    ("  paris. ", "Paris", "paris", True),
    ("PARIS", "paris", "paris", True),
    ("New   York\n", "new york", "new york", True),
    ("Paris, France", "Paris", "paris, france", False),
    ("", "Paris", None, False),
    ("...", "Paris", None, False),
]


@pytest.mark.parametrize(("output", "reference", "extracted", "correct"), EXACT_CASES)
def test_exact(output, reference, extracted, correct):
    judgement = get_evaluator("exact").judge(output, reference)
    assert judgement == Judgement(extracted, correct, 1.0 if correct else 0.0)


def test_exact_case_sensitive():
    ev = get_evaluator({"type": "exact", "ignore_case": False})
    assert ev.judge("Paris", "Paris").correct
    assert not ev.judge("paris", "Paris").correct


def test_regex():
    ev = get_evaluator({"type": "regex", "pattern": r"Final answer:\s*(\w+)"})
    assert ev.judge("Reasoning...\nFinal answer: Paris.", "paris") == Judgement("paris", True, 1.0)
    assert ev.judge("no marker here", "paris") == Judgement(None, False, 0.0)
    assert ev.judge("Final answer: Lyon", "Paris").correct is False
    first = ev.judge("Final answer: Lyon\nFinal answer: Paris", "Paris")
    assert first.extracted == "lyon"
    last = get_evaluator({"type": "regex", "pattern": r"Final answer:\s*(\w+)", "select": "last"})
    assert last.judge("Final answer: Lyon\nFinal answer: Paris", "Paris").correct
    optional = get_evaluator({"type": "regex", "pattern": r"x(y)?"})
    assert optional.judge("x", "y").extracted is None


# --------------------------------------------------------------------------- registry


def test_available_and_protocol():
    names = available_evaluators()
    assert names == sorted(names)
    assert {"gsm8k", "numeric", "choice", "exact", "regex"} <= set(names)
    assert "math" in names  # evaluators/math_answer.py (MATH-500, AIME)
    for name in names:
        if name == "regex":
            continue
        ev = get_evaluator(name)
        assert isinstance(ev, Evaluator)
        assert ev.name == name
        assert isinstance(ev.judge("", ev.reference("1")), Judgement)


def test_unknown_evaluator_lists_near_matches():
    with pytest.raises(ValueError) as info:
        get_evaluator("gsm8")
    message = str(info.value)
    assert "'gsm8k'" in message
    assert "Did you mean" in message
    for name in available_evaluators():
        assert name in message
    with pytest.raises(ValueError, match="Did you mean 'choice'"):
        get_evaluator({"type": "choise"})
    with pytest.raises(ValueError, match="Available: "):
        get_evaluator("zzzz")


@pytest.mark.parametrize(
    ("spec", "param"),
    [
        ({"type": "gsm8k", "tolerence": 1}, "tolerence"),
        ({"type": "numeric", "tolerance": "big"}, "tolerance"),
        ({"type": "numeric", "tolerance": -1}, "tolerance"),
        ({"type": "choice", "choices": "AAB"}, "choices"),
        ({"type": "choice", "choices": "A1"}, "choices"),
        ({"type": "choice", "choices": 4}, "choices"),
        ({"type": "exact", "ignore_case": "yes"}, "ignore_case"),
        ({"type": "regex"}, "pattern"),
        ({"type": "regex", "pattern": "no group"}, "pattern"),
        ({"type": "regex", "pattern": "(unclosed"}, "pattern"),
        ({"type": "regex", "pattern": "(x)", "select": "middle"}, "select"),
        ("regex", "pattern"),
    ],
)
def test_bad_params_name_the_param(spec, param):
    with pytest.raises(ValueError, match=param):
        get_evaluator(spec)


def test_names_are_case_insensitive():
    assert get_evaluator("GSM8K").name == "gsm8k"


def test_bad_specs():
    with pytest.raises(ValueError, match="type"):
        get_evaluator({"choices": "ABCD"})
    with pytest.raises(ValueError):
        get_evaluator(42)  # type: ignore[arg-type]


def test_unknown_param_suggests_the_right_one():
    with pytest.raises(ValueError, match="did you mean 'tolerance'"):
        get_evaluator({"type": "numeric", "tolerence": 0.1})


def test_identity_is_stable_and_param_sensitive():
    assert get_evaluator("gsm8k").identity() == get_evaluator({"type": "gsm8k"}).identity()
    assert (
        get_evaluator("choice").identity()
        == get_evaluator({"type": "choice", "choices": "ABCD"}).identity()
    )
    ids = {
        get_evaluator(spec).identity()
        for spec in [
            "gsm8k",
            "numeric",
            {"type": "numeric", "tolerance": 0.5},
            "choice",
            {"type": "choice", "choices": "ABCDE"},
            "exact",
            {"type": "exact", "ignore_case": False},
            {"type": "regex", "pattern": "(a)"},
            {"type": "regex", "pattern": "(b)"},
        ]
    }
    assert len(ids) == 9
    assert "@v" in get_evaluator("gsm8k").identity()


def test_identity_changes_with_version(monkeypatch):
    from pytest_servebench.scoring.evaluators import numeric

    before = get_evaluator("gsm8k").identity()
    monkeypatch.setattr(numeric, "VERSION", numeric.VERSION + 1)
    assert get_evaluator("gsm8k").identity() != before


def test_evaluators_pickle():
    for spec in ["gsm8k", "choice", "exact", {"type": "regex", "pattern": "(x)"}]:
        ev = get_evaluator(spec)
        clone = pickle.loads(pickle.dumps(ev))
        assert clone.identity() == ev.identity()
        assert clone.judge("x 18 B", "18") == ev.judge("x 18 B", "18")


def test_register_evaluator(monkeypatch):
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))

    class Always:
        name = "always"

        def __init__(self, value: bool = True):
            self.value = value

        def reference(self, raw):
            return str(raw)

        def judge(self, output, reference):
            return Judgement(output, self.value, float(self.value))

        def identity(self):
            return f"always@v1{self.value}"

    register_evaluator("always", Always)
    assert "always" in available_evaluators()
    assert get_evaluator({"type": "always", "value": False}).judge("x", "y").correct is False
    with pytest.raises(ValueError, match="already registered"):
        register_evaluator("always", Always)
    with pytest.raises(ValueError, match="'valu'"):
        get_evaluator({"type": "always", "valu": 1})


# --------------------------------------------------------------------------- user functions

USER_MODULE = """
from pytest_servebench.scoring.evaluators import Judgement

def contains(output, reference):
    return reference.lower() in output.lower()

def partial(output, reference, weight=0.5):
    return weight if reference in output else 0.0

def full(output, reference):
    return Judgement("X", True, 1.0)

def bad(output, reference):
    return "yes"

not_callable = 3
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_scoring.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_scoring"
    sys.modules.pop("my_scoring", None)


def test_user_function(user_module):
    ev = get_evaluator(f"{user_module}:contains")
    assert ev.judge("It is PARIS.", "paris") == Judgement("It is PARIS.", True, 1.0)
    assert ev.judge("", "paris") == Judgement(None, False, 0.0)
    assert ev.reference({"answers": ["a", "b"]}) == '{"answers": ["a", "b"]}'
    assert ev.judge("Lyon", "paris").correct is False
    assert "contains" in ev.identity()


def test_user_function_scores_and_params(user_module):
    ev = get_evaluator({"type": f"{user_module}:partial", "weight": 0.7, "threshold": 0.5})
    assert ev.judge("abc", "b") == Judgement("abc", True, 0.7)
    strict = get_evaluator(f"{user_module}:partial")
    assert strict.judge("abc", "b") == Judgement("abc", False, 0.5)
    assert get_evaluator(f"{user_module}:full").judge("q", "r") == Judgement("X", True, 1.0)
    with pytest.raises(TypeError, match="must return"):
        get_evaluator(f"{user_module}:bad").judge("q", "r")
    with pytest.raises(ValueError, match="weigth"):
        get_evaluator({"type": f"{user_module}:partial", "weigth": 1})
    versioned = get_evaluator({"type": f"{user_module}:partial", "version": 3})
    assert "3" in versioned.identity()
    assert versioned.identity() != strict.identity()
    clone = pickle.loads(pickle.dumps(ev))
    assert clone.judge("abc", "b") == ev.judge("abc", "b")


def test_user_function_from_file(tmp_path):
    path = tmp_path / "scorer.py"
    path.write_text(USER_MODULE)
    ev = get_evaluator(f"{path}:contains")
    assert ev.judge("Paris!", "paris").correct
    before = ev.identity()
    path.write_text(USER_MODULE.replace("reference.lower() in", "reference.lower()  in"))
    for name in [m for m in sys.modules if m.startswith("servebench_user_")]:
        del sys.modules[name]
    assert get_evaluator(f"{path}:contains").identity() != before  # source changed


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module_xyz:f", "cannot import"),
        ("my_scoring:missing", "no attribute"),
        ("my_scoring:not_callable", "not callable"),
        (":f", "package.module:function"),
        ("/nonexistent/file.py:f", "cannot import"),
    ],
)
def test_user_function_errors(user_module, target, message):
    with pytest.raises(ValueError, match=message):
        get_evaluator(target)


# --------------------------------------------------------------------------- robustness

NASTY = [
    "",
    " ",
    "\n\n\n",
    "\x00",
    "🙂" * 1000,
    "Ａｎｓｗｅｒ：Ｂ",
    "答案",
    "answer:",
    "\\boxed{",
    "\\boxed{}}}}",
    "((((((((((",
    "**" * 5000,
    "Question:",
    "</think>",
    "<think>",
    "-.-.-.-",
    "1,,,,,2",
    "$" * 1000,
    "\u202e\u200b\ufeff",
    "A" * 10000,
    "A or " * 10000,
]


@pytest.mark.parametrize("text", NASTY)
@pytest.mark.parametrize(
    "spec",
    ["gsm8k", "numeric", "choice", "exact", {"type": "regex", "pattern": r"answer:\s*(\S+)"}],
)
def test_never_crashes(text, spec):
    ev = get_evaluator(spec)
    judgement = ev.judge(strip_reasoning(text), ev.reference("B"))
    assert isinstance(judgement, Judgement)
    assert judgement.score in (0.0, 1.0)
    assert judgement.correct is (judgement.score == 1.0)


def test_user_function_invalid_returns_and_time_limit(tmp_path):
    from pytest_servebench.scoring.evaluators.limits import EvaluatorTimeout
    from pytest_servebench.scoring.evaluators.registry import InvalidJudgement

    path = tmp_path / "odd.py"
    path.write_text(
        "import time\n"
        "def yes(o, r): return 'yes'\n"
        "def nan(o, r): return float('nan')\n"
        "def inf(o, r): return float('inf')\n"
        "def hang(o, r): time.sleep(60)\n"
    )
    for name, shown in (("yes", "str 'yes'"), ("nan", "float nan"), ("inf", "float inf")):
        with pytest.raises(InvalidJudgement, match="must return True/False") as info:
            get_evaluator(f"{path}:{name}").judge("q", "r")
        assert shown in str(info.value)
    with pytest.raises(ValueError, match="time_limit"):
        get_evaluator({"type": f"{path}:hang", "time_limit": 0})
    ev = get_evaluator({"type": f"{path}:hang", "time_limit": 0.2})
    assert ev.identity() == get_evaluator(f"{path}:hang").identity()  # no verdict changes
    start = time.perf_counter()
    for _ in range(5):  # three time-outs in a row, then it is no longer called
        with pytest.raises(EvaluatorTimeout):
            ev.judge("q", "r")
    assert time.perf_counter() - start < 1.5
    assert pickle.loads(pickle.dumps(ev)).time_limit == 0.2


def test_time_limit_leaves_a_timer_armed_by_someone_else_alone():
    import signal as sig

    from pytest_servebench.scoring.evaluators.limits import EvaluatorTimeout, call_with_time_limit

    if not hasattr(sig, "setitimer"):
        pytest.skip("no interval timers here")
    fired = []
    previous = sig.signal(sig.SIGALRM, lambda *a: fired.append(1))
    try:
        sig.setitimer(sig.ITIMER_REAL, 5.0)  # pytest-timeout's, say
        assert call_with_time_limit(1.0, lambda x: x + 1, 1) == 2
        with pytest.raises(EvaluatorTimeout):  # by the thread fallback
            call_with_time_limit(0.1, time.sleep, 2)
        assert 0 < sig.getitimer(sig.ITIMER_REAL)[0] <= 5.0  # still armed
    finally:
        sig.setitimer(sig.ITIMER_REAL, 0)
        sig.signal(sig.SIGALRM, previous)
    assert call_with_time_limit(1.0, lambda: "ok") == "ok"
    with pytest.raises(EvaluatorTimeout):  # by the timer
        call_with_time_limit(0.1, time.sleep, 2)
    assert not fired
