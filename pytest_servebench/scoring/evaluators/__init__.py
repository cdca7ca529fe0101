"""Answer checking: one small module per family, looked up by name through the registry.

``get_evaluator("gsm8k")``, ``get_evaluator({"type": "choice", "choices": "ABCDE"})`` or a user
function ``get_evaluator("mypkg.scoring:check")``. The core calls
``evaluator.judge(strip_reasoning(content), evaluator.reference(raw_answer))``.
"""

from __future__ import annotations

from .base import Evaluator, Judgement, strip_reasoning
from .choice import ChoiceEvaluator, extract_choice
from .code import CodeEvaluator, extract_code
from .math_answer import MathEvaluator, extract_math_answer
from .numeric import GSM8KEvaluator, NumericEvaluator, extract_number
from .registry import (
    FunctionEvaluator,
    available_evaluators,
    get_evaluator,
    register_evaluator,
)
from .text import ExactEvaluator, RegexEvaluator, normalize_text

__all__ = [
    "ChoiceEvaluator",
    "CodeEvaluator",
    "Evaluator",
    "ExactEvaluator",
    "FunctionEvaluator",
    "GSM8KEvaluator",
    "Judgement",
    "MathEvaluator",
    "NumericEvaluator",
    "RegexEvaluator",
    "available_evaluators",
    "extract_choice",
    "extract_code",
    "extract_math_answer",
    "extract_number",
    "get_evaluator",
    "normalize_text",
    "register_evaluator",
    "strip_reasoning",
]
