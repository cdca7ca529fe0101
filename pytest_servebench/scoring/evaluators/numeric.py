"""Numeric answers (GSM8K and friends): find the model's FINAL number as a careful grader would.

Extraction, in order (see :func:`extract_number`):

1. Normalise: full-width digits and signs to ASCII, ``\\$`` -> ``$``, ``\\%`` -> ``%``, LaTeX
   thousands separators (``1{,}234``, ``1\\,234``), simple ``\\frac{a}{b}`` -> ``a/b`` as a decimal.
2. Cut hallucinated follow-up questions: drop everything from the first ``Question:`` that comes
   after some number and starts a line or a sentence (AISBench's ``gsm8k_postprocess`` cuts at
   the very first ``Question:``; we keep a question the model merely restated at the start and
   a "let me re-read the Question: ..." inside the reasoning).
3. Explicit answers, the LAST one in the text wins: answer statements (``Answer: 18``,
   ``**Answer:** $18``, ``The (final) answer is 18.``, ``#### 18``, ``答案是 18``) and
   ``\\boxed{...}`` / ``\\fbox{...}``. In a statement the number right after the marker is taken
   (``The answer is 18. I hope this helps!`` -> 18), unless it starts a calculation that ends in
   ``=`` (``Answer: 16 - 3 - 4 = 9 eggs, 9 x 2 = $18`` -> 18). A statement whose number is not
   right after the marker (``The answer is: Janet makes $18 a day.``) counts only when no number
   follows it in the text.
4. Otherwise the last number in the text.

Numbers: ``$1,234`` -> 1234 (but ``1,2,3`` is a list: 1, 2, 3), ``-5``/``−5`` (a ``-`` glued to a
preceding digit is a minus, not a sign), ``18.00`` == 18, ``.5`` == 0.5, ``18%``, ``18 dollars``,
``18.`` (sentence end). Comparison is numeric: equal when ``|a - b| <= max(abs_tol, rel_tol *
max(|a|, |b|))`` (defaults 1e-6 and 1e-9). The canonical extracted form is the integer string
when integral (``"18"``) else the plain decimal without trailing zeros (``"0.5"``).

All regex work is linear or bounded: patterns searched over the whole text start with a literal
or a single character class and use bounded repetition; explicit answers are looked for from the
end of the text, at most :data:`MAX_ANCHORS` places; segments are at most :data:`SEGMENT_CHARS`
long.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation, localcontext

from .base import ASCII_LOWER, Judgement, as_text, make_identity, reverse_anchors, verdict

#: Bump whenever extraction or comparison logic changes (feeds the dataset version hash).
VERSION = 1

MAX_ANCHORS = 20_000  # places looked at for an explicit answer, from the end
MAX_CANDIDATES = 256  # of which answer statements / boxes actually parsed
SEGMENT_CHARS = 400
BOXED_CHARS = 1000

_TRANSLATE = str.maketrans(
    {
        **{chr(0xFF10 + i): str(i) for i in range(10)},  # full-width digits
        "\u2212": "-",  # minus sign
        "\u2012": "-",
        "\u2013": "-",
        "\uff0d": "-",
        "\uff04": "$",
        "\uff05": "%",
        "\uff1a": ":",
        "\uff0c": ", ",  # full-width comma is a clause separator, not a thousands separator
        "\uff0e": ".",
        "\u00a0": " ",
        "\u202f": " ",
        "\u2009": " ",
    }
)

_NUMBER = re.compile(
    r"(?:(?<![0-9A-Za-z)\]}.])(?P<sign>-)\$?)?"
    r"(?<![0-9.])"
    r"(?P<body>[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])(?:\.[0-9]+)?|[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
)
_DIGIT = re.compile(r"[0-9]")
_FRAC = re.compile(  # optional whole part: 3\frac{1}{2} is the mixed number 3.5
    r"(?:(?<![0-9.])([0-9]{1,30})[ ]{0,2})?\\[dt]?frac[ ]{0,3}\{[ ]{0,3}(-?[0-9]{1,30}(?:\.[0-9]{1,30})?)[ ]{0,3}\}"
    r"[ ]{0,3}\{[ ]{0,3}(-?[0-9]{1,30}(?:\.[0-9]{1,30})?)[ ]{0,3}\}"
)
_LATEX_THOUSANDS = re.compile(r"(?<=[0-9])(?:\{,\}|\\[,;: !])(?=[0-9]{3}(?![0-9]))")
# Answer statements are found through cheap literal anchors on an ASCII-lower-cased copy.
_MARKER_ANCHOR = re.compile(r"answer|####|答案")
_MARKER_SUFFIX = re.compile(
    r"(?:[ \t]{1,3}to[ \t]{1,3}(?:the|this)[ \t]{1,3}(?:question|problem))?"
    r"(?:[ \t]{0,3}(?:\*\*|__))?[ \t]{0,3}"
    r"(?:(?:is|was|would[ \t]{1,3}be|will[ \t]{1,3}be|should[ \t]{1,3}be)(?![a-z'’])|[:=])"
)
_ANSWER_CN_SUFFIX = re.compile(r"[ \t]{0,3}(?:应该是|应为|是|为|為)?")
_BRACE = re.compile(r"[{}]")
_BOXED = re.compile(r"\\(?:boxed|fbox)[ \t]{0,3}\{")
_LATEX_WORD = re.compile(
    r"\\(?:boxed|fbox|text|textbf|textrm|mathrm|mathbf|displaystyle|left|right|quad|qquad)"
    r"(?![A-Za-z])"
)
_LATEX_OPS = (("\\times", " × "), ("\\cdot", " × "), ("\\div", " ÷ "), ("\\circ", " "))
_SENTENCE_END = re.compile(r"\n|[.!?;](?=\s|$)|[。！？；]")
_WORDY = re.compile(r"[A-Za-z0-9\u4e00-\u9fff]")
_OPERATOR_AFTER = re.compile(
    r"[ \t]{0,3}(?:[-+*/×÷·^]|x(?![A-Za-z])|times|plus|minus|divided|multiplied)"
)
_FRACTION_AT = re.compile(r"(-?[0-9]{1,30})[ ]{0,2}/[ ]{0,2}([0-9]{1,30})(?![0-9./])")
_DECOR = " \t\r\n*_:#>`\"'“”‘’([~"
_PLAIN_DECIMAL = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def _frac_repl(m: re.Match[str]) -> str:
    value = _divide(m.group(2), m.group(3))
    if value is None:
        return m.group(0)
    if m.group(1) is not None:
        value = Decimal(m.group(1)) + value if value >= 0 else None
        if value is None:
            return m.group(0)
    return canonical_number(value)


def _divide(num: str, den: str) -> Decimal | None:
    try:
        d = Decimal(den)
        if d == 0:
            return None
        with localcontext() as ctx:
            ctx.prec = 28
            return Decimal(num) / d
    except InvalidOperation:
        return None


def normalize(text: str) -> str:
    """ASCII digits and signs, plain ``$``/``%``, plain thousands separators, simple fractions."""
    text = as_text(text).translate(_TRANSLATE)
    if "\\" in text or "{," in text:
        text = text.replace("\\$", "$").replace("\\%", "%")
        text = _LATEX_THOUSANDS.sub(",", text)
        if "frac" in text:
            text = _FRAC.sub(_frac_repl, text)
    return text


def cut_follow_up_question(text: str) -> str:
    """Drop a hallucinated follow-up: the text from the first ``Question:`` that comes after a
    digit and starts a line or a sentence (``...18.\n\nQuestion: ...``, ``**Question:**``);
    "let me re-read the Question: ..." inside the reasoning is kept."""
    first_digit = _DIGIT.search(text)
    if first_digit is None:
        return text
    cut = text.find("Question:", first_digit.start())
    while cut >= 0:
        before = text[max(0, cut - 8) : cut].rstrip(" \t*#>_")
        if not before or before[-1] in "\n.!?。！？":
            return text[:cut]
        cut = text.find("Question:", cut + 9)
    return text


def _to_decimal(m: re.Match[str]) -> Decimal | None:
    body = m.group("body").replace(",", "")
    try:
        value = Decimal(body)
    except InvalidOperation:  # pragma: no cover - the regex only admits valid literals
        return None
    return -value if m.group("sign") else value


def _clean_latex(seg: str) -> str:
    if "\\" in seg:
        for old, new in _LATEX_OPS:
            seg = seg.replace(old, new)
        seg = _LATEX_WORD.sub(" ", seg)
        for token in ("\\[", "\\]", "\\(", "\\)"):
            seg = seg.replace(token, " ")
    return seg.replace("{", " ").replace("}", " ").replace("^", " ")


def _parse_answer_text(seg: str) -> tuple[Decimal | None, bool]:
    """Read the answer from the text right after an answer marker (or inside a box).

    Returns ``(value, strong)``; strong when the number comes right after the marker (only
    punctuation or markup before it)."""
    seg = _clean_latex(seg).lstrip(_DECOR)
    end = _SENTENCE_END.search(seg)
    if end is not None:
        seg = seg[: end.start()]
    first = _NUMBER.search(seg)
    if first is None:
        return None, False
    leading = _WORDY.search(seg, 0, first.start()) is None
    if "=" in seg and (not leading or _OPERATOR_AFTER.match(seg, first.end())):
        # "16 - 3 - 4 = 9, 9 x 2 = 18" or "x = 18": the result after the last "=".
        result = _NUMBER.search(seg, seg.rfind("=") + 1)
        if result is not None:
            return _to_decimal(result), leading
    if not leading:
        return _to_decimal(first), False
    frac = _FRACTION_AT.match(seg, first.start())
    if frac is not None:
        value = _divide(frac.group(1), frac.group(2))
        if value is not None:
            return value, True
    return _to_decimal(first), True


def boxed_content(text: str, start: int, limit: int = BOXED_CHARS) -> str | None:
    """The balanced-brace content that starts at ``start`` (just after ``{``), if it closes
    within ``limit`` characters."""
    depth = 1
    for m in _BRACE.finditer(text, start, min(len(text), start + limit)):
        if m.group() == "{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return text[start : m.start()]
    return None


def _last_number(text: str) -> Decimal | None:
    """The last number of the text, scanning windows from the end (cheap on huge outputs)."""
    window = 512
    n = len(text)
    while True:
        start = max(0, n - window)
        tail = deque(_NUMBER.finditer(text, start), maxlen=1)
        last = tail[0] if tail else None
        # A match touching the window's left edge may be the tail of a longer number.
        if last is not None and (start == 0 or last.start() >= start + 2):
            return _to_decimal(last)
        if start == 0:
            return None
        window *= 8


def _marker_end(text: str, low: str, m: re.Match[str]) -> int | None:
    """Where the answer starts if anchor ``m`` is an answer statement, else None."""
    word, pos, end = m.group(0), m.start(), m.end()
    if word == "answer":
        if pos and "a" <= low[pos - 1] <= "z":
            return None  # "reanswer"
        suffix = _MARKER_SUFFIX.match(low, end)
        return None if suffix is None else suffix.end()
    if word == "答案":
        suffix = _ANSWER_CN_SUFFIX.match(text, end)
        return end if suffix is None else suffix.end()
    return end  # ####


def _explicit_answer(text: str) -> Decimal | None:
    low = text.translate(ASCII_LOWER)
    searches = [(_MARKER_ANCHOR, low)]
    if "\\" in text:
        searches.append((_BOXED, text))
    looked = parsed = 0
    for kind, m in reverse_anchors(searches, len(text)):
        looked += 1
        if looked > MAX_ANCHORS or parsed > MAX_CANDIDATES:
            break
        if kind == 1:
            parsed += 1
            content = boxed_content(text, m.end())
            if content is None:
                continue
            value, _ = _parse_answer_text(content.replace("\n", " "))
            if value is not None:
                return value
            continue
        start = _marker_end(text, low, m)
        if start is None:
            continue
        parsed += 1
        segment = text[start : start + SEGMENT_CHARS]
        value, strong = _parse_answer_text(segment)
        if value is None:
            continue
        if strong:
            return value
        # A wordy statement ("the answer is the total times $2") only counts when nothing
        # numeric follows it: otherwise the model went on computing.
        stripped = segment.lstrip(_DECOR)
        consumed = _SENTENCE_END.search(stripped)
        tail_from = start + len(segment) - len(stripped)
        tail_from += len(stripped) if consumed is None else consumed.end()
        if not _DIGIT.search(text, tail_from):
            return value
    return None


def extract_number(output: str) -> Decimal | None:
    """The final numeric answer of an output, or ``None`` when it contains no number."""
    text = cut_follow_up_question(normalize(output))
    if not _DIGIT.search(text):
        return None
    value = _explicit_answer(text)
    return value if value is not None else _last_number(text)


def canonical_number(value: Decimal) -> str:
    """``18.00`` -> ``"18"``, ``0.50`` -> ``"0.5"``, ``-0`` -> ``"0"`` (never exponent notation)."""
    if value == 0:
        return "0"
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def parse_reference_number(reference: str) -> Decimal | None:
    """A reference as a number: ``"2125"``, ``"$1,234.50"``, ``"18%"``, ``"3/4"``, ``"\\frac{3}{4}"``;
    else the single number it contains; else ``None`` (compare as strings)."""
    text = normalize(reference).strip()
    plain = text.replace(",", "").replace("$", "").replace("%", "").strip()
    if _PLAIN_DECIMAL.fullmatch(plain):
        try:
            return Decimal(plain)
        except InvalidOperation:  # pragma: no cover
            return None
    frac = _FRACTION_AT.fullmatch(plain)
    if frac is not None:
        return _divide(frac.group(1), frac.group(2))
    numbers = list(_NUMBER.finditer(text[:SEGMENT_CHARS]))
    if len(numbers) == 1:
        return _to_decimal(numbers[0])
    return None


def numbers_close(a: Decimal, b: Decimal, abs_tol: float, rel_tol: float) -> bool:
    """``|a - b| <= max(abs_tol, rel_tol * max(|a|, |b|))``, computed in decimal arithmetic."""
    if a == b:
        return True
    with localcontext() as ctx:
        ctx.prec = 60
        diff = abs(a - b)
        bound = max(Decimal(repr(abs_tol)), Decimal(repr(rel_tol)) * max(abs(a), abs(b)))
        return diff <= bound


def _check_tolerance(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"parameter '{name}' must be a non-negative number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class NumericEvaluator:
    """Final-number extraction + numeric comparison; the reference is the raw value."""

    tolerance: float = 1e-6
    rel_tolerance: float = 1e-9
    name = "numeric"

    def __post_init__(self) -> None:
        object.__setattr__(self, "tolerance", _check_tolerance("tolerance", self.tolerance))
        object.__setattr__(
            self, "rel_tolerance", _check_tolerance("rel_tolerance", self.rel_tolerance)
        )

    def reference(self, raw: object) -> str:
        return as_text(raw).strip().replace(",", "")

    def judge(self, output: str, reference: str) -> Judgement:
        value = extract_number(output)
        if value is None:
            return verdict(None, False)
        extracted = canonical_number(value)
        ref_value = parse_reference_number(as_text(reference))
        if ref_value is None:
            return verdict(extracted, extracted == as_text(reference).strip())
        return verdict(
            extracted, numbers_close(value, ref_value, self.tolerance, self.rel_tolerance)
        )

    def identity(self) -> str:
        params = {"tolerance": self.tolerance, "rel_tolerance": self.rel_tolerance}
        return make_identity(self.name, VERSION, params, _DEFAULTS)


_DEFAULTS = {"tolerance": 1e-6, "rel_tolerance": 1e-9}


@dataclass(frozen=True)
class GSM8KEvaluator(NumericEvaluator):
    """GSM8K: like ``numeric``, the reference being the text after the last ``####``."""

    name = "gsm8k"

    def reference(self, raw: object) -> str:
        text = as_text(raw)
        if "####" in text:
            text = text.rsplit("####", 1)[1]
        return text.strip().replace(",", "")
