"""Multiple-choice letter extraction on realistic outputs of MMLU, C-Eval and ARC prompts."""

from __future__ import annotations

import pytest

from pytest_servebench.scoring.evaluators import get_evaluator, strip_reasoning

# (output, reference, expected extraction); None = no single letter given: never guessed.
CHAT = [
    # MMLU 5-shot chat: mostly a bare letter, sometimes with words
    ("B", "B", "B"),
    ("B\n", "B", "B"),
    (" C", "B", "C"),
    ("The answer is (B)", "B", "B"),
    ("The answer is (B).", "C", "B"),
    ("**B**", "B", "B"),
    ("**Answer: D**", "D", "D"),
    ("B. 4", "B", "B"),
    ("B) It is an isomorphism", "B", "B"),
    ("(A) True, True", "A", "A"),
    (
        "A. True, True\n\nBoth statements hold because every group of prime order is cyclic.",
        "A",
        "A",
    ),
    ("Answer: C", "C", "C"),
    ("answer: c", "C", "C"),
    ("The correct answer is D. Mitochondria produce ATP.", "D", "D"),
    ("D is correct.", "D", "D"),
    ("Option C is the best answer here.", "C", "C"),
    ("I would choose B.", "B", "B"),
    ("Let me think. Statement 1 is true and statement 2 is false, so the answer is C.", "C", "C"),
    ("Statement 1 is false. Statement 2 is true. Therefore, D.", "D", "D"),
    ("$\\boxed{A}$", "A", "A"),
    ("The final answer is $\\boxed{\\text{B}}$.", "B", "B"),
    ("<think>It could be A. Hmm, no: C.</think>\nC", "C", "C"),
    ("<think>Definitely A</think>The answer is B", "B", "B"),
    # ARC: "Answer: X" on the last line after reasoning
    ("Faster rotation means shorter days.\nAnswer: C", "C", "C"),
    ("Plants need light for photosynthesis, so the answer is B.\n\nAnswer: B", "B", "B"),
    ("A shadow is longest at sunrise. Answer: A", "A", "A"),
    ("Let's evaluate each option:\nA. wrong\nB. wrong\nC. right\nD. wrong\nAnswer: C", "C", "C"),
    # C-Eval CoT: Chinese reasoning, the last line as asked
    ("首先分析题目……综上所述，正确答案是B。\nanswer:B", "B", "B"),
    ("解析：根据位填充规则，共需添加3个0。\n答案：C", "C", "C"),
    ("选项A错误，选项B错误，选项D错误，故选C。", "C", "C"),
    ("答案是 D", "D", "D"),
    ("因此正确答案为（B）", "B", "B"),
    ("C选项正确。", "C", "C"),
    # wrong answers are extracted and judged wrong
    ("The answer is (A)", "B", "A"),
    ("Answer: D", "B", "D"),
    ("answer:A", "C", "A"),
    # refusals and hedges: nothing extracted
    ("I don't know.", "B", None),
    ("The answer is A or B.", "A", None),
    ("Either B or C could be right.", "B", None),
    ("None of the options is correct.", "A", None),
    ("A car moving at constant speed has no net force on it.", "A", None),
    ("I think the question is ambiguous.", "B", None),
    ("A. 1\nB. 2\nC. 3\nD. 4", "A", None),  # the options echoed, no choice made
    ("", "A", None),
    ("<think>The answer is B", "B", None),  # cut while thinking
]


@pytest.mark.parametrize(("output", "reference", "expected"), CHAT)
def test_chat_outputs(output, reference, expected):
    ev = get_evaluator({"type": "choice", "choices": "ABCD"})
    judgement = ev.judge(strip_reasoning(output), ev.reference(reference))
    assert judgement.extracted == expected
    assert judgement.correct is (expected is not None and expected == reference)


# Completion outputs of the 5-shot string prompts (they end in "Answer:" / "答案: "): the model
# answers first and often goes on writing the next question.
COMPLETION = [
    (" B\n\nThe following question is about anatomy.\nA. x\nB. y\nC. z\nD. w\nAnswer: A", "B"),
    (" C\n\nQuestion: Which is...\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: D", "C"),
    (" D", "D"),
    (" (A)\n", "A"),
    ("B. 12\n\nC. 13", "B"),
    (" A\n以下是中国关于计算机网络考试的单项选择题，请选出其中的正确答案。\n...\n答案: C", "A"),
    ("C\n\n", "C"),
    (" The answer is B.", "B"),
    (" A car is faster.", None),
    (" I think it's C", "C"),
    (" unsure", None),
]


@pytest.mark.parametrize(("output", "expected"), COMPLETION)
def test_completion_outputs_leading(output, expected):
    ev = get_evaluator({"type": "choice", "choices": "ABCD", "leading": True})
    assert ev.judge(output, "B").extracted == expected


def test_leading_changes_identity_only_when_set():
    plain = get_evaluator("choice").identity()
    assert get_evaluator({"type": "choice", "leading": False}).identity() == plain
    assert get_evaluator({"type": "choice", "leading": True}).identity() != plain
    with pytest.raises(ValueError, match="leading"):
        get_evaluator({"type": "choice", "leading": "yes"})


def test_reference_from_index_and_text():
    ev = get_evaluator("choice")
    assert ev.reference(2) == "C"  # ARC's 0-based gold index
    assert ev.reference("(d)") == "D"
