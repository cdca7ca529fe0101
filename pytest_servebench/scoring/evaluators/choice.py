"""Multiple-choice answers: read the ONE option letter a model committed to, or refuse to guess.

Extraction (:func:`extract_choice`), first rule that yields something wins:

1. Explicit answers, the LAST one in the text wins: answer statements (``The answer is (B)``,
   ``Answer: **B**``, ``the correct option is C``, ``Final Answer: B``, ``I'd choose D``,
   ``答案：B``, ``故选B``), reversed statements (``(C) is correct``, ``Option C is the best
   answer``, ``C选项正确``), bare conclusions (``..., so (B).``, ``Therefore, C.``) and
   ``\\boxed{C}``. If the statement names several different letters
   (``The answer is A or B``) the output is ambiguous and nothing is extracted.
2. The whole output is a lone letter (``C``, ``(C)``, ``**B**``, ``C.``) or starts with one option
   (``B. Paris``, ``B) Paris``, ``(B) Paris``, ``B: ...``) -- unless it echoes several options.
3. The last line names exactly one letter (``So it's (C).``).
4. The whole text names exactly one letter in an unmistakable form (``(B)``, ``**B**``,
   ``option B``).

Otherwise nothing is extracted (``None``): no single letter was given. The English article /
pronoun (``A car is...``, ``I think``) is never read as an answer outside an answer statement.
A letter that is not one of the choices but is given as the answer (``The answer is E``) is
extracted as is and judged wrong.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .base import ASCII_LOWER, Judgement, as_text, make_identity, reverse_anchors, verdict
from .numeric import boxed_content

#: Bump whenever extraction logic changes (feeds the dataset version hash).
VERSION = 1

DEFAULT_CHOICES = "ABCD"
MAX_ANCHORS = 20_000  # places looked at for an explicit answer, from the end
MAX_CANDIDATES = 256  # of which answer statements / boxes actually parsed
SEGMENT_CHARS = 300
LAST_LINE_CHARS = 500

_AMBIGUOUS = "?"  # internal: the model named several letters

_TRANSLATE = str.maketrans(
    {
        **{chr(0xFF21 + i): chr(0x41 + i) for i in range(26)},  # full-width A-Z
        **{chr(0xFF41 + i): chr(0x61 + i) for i in range(26)},  # full-width a-z
        "\uff08": "(",
        "\uff09": ")",
        "\uff1a": ":",
        "\uff0e": ".",
        "\u3010": "[",
        "\u3011": "]",
        "\u00a0": " ",
    }
)

# Regex work is anchored: a cheap literal search on an ASCII-lower-cased copy finds the few
# places worth a closer look, and bounded patterns are then matched only there.
_MARKER_ANCHOR = re.compile(r"answer|option|choice|答案|选|choose|select|pick|go[ \t]{1,3}with")
_MARKER_SUFFIX = re.compile(
    r"(?:[ \t]{1,3}to[ \t]{1,3}(?:the|this)[ \t]{1,3}(?:question|problem))?"
    r"(?:[ \t]{0,3}(?:\*\*|__))?[ \t]{0,3}"
    r"(?:(?:is|was|would[ \t]{1,3}be|should[ \t]{1,3}be|must[ \t]{1,3}be|will[ \t]{1,3}be)"
    r"(?![a-z'’])|[:=])"
)
_CONCLUSION_ANCHOR = re.compile(r"so|thus|therefore|hence")
_CONCLUSION_LETTER = re.compile(
    r"[ \t]{0,3}[,:]?[ \t]{0,3}(?:it'?s[ \t]{1,3}|it[ \t]{1,3}is[ \t]{1,3})?[*_(\[]{0,4}"
    r"([A-Z])[*_)\]]{0,4}[ \t]{0,3}(?:[.!。]|\n|$)"
)
_ANSWER_CN_SUFFIX = re.compile(r"[ \t]{0,3}(?:应该是|应为|应选|是|为|為|选)?")
_XUAN_BEFORE = re.compile(r"(?:故|因此|所以|应该|应)$")
_I_BEFORE = re.compile(r"(?<![a-z])i(?:[ \t]{1,3}would|'d|’d|[ \t]{1,3}will)?[ \t]{1,3}$")
_REVERSED_ANCHOR = re.compile(
    r"correct|right|best|most[ \t]{1,3}(?:appropriate|likely|accurate)|正确"
)
_REVERSED_BEFORE = re.compile(
    r"(?<![A-Za-z0-9])\(?([A-Z])\)?[ \t]{0,3}(?:\*\*)?[ \t]{0,3}"
    r"(?i:is|would[ \t]{1,3}be)[ \t]{1,3}(?i:the[ \t]{1,3})?$"
)
_REVERSED_CN_BEFORE = re.compile(
    r"(?<![A-Za-z0-9])([A-Z])[ \t]{0,3}(?:选项)?[ \t]{0,3}(?:是|为)?[ \t]{0,3}$"
)
_BOXED = re.compile(r"\\(?:boxed|fbox)[ \t]{0,3}\{")
_LATEX_WORD = re.compile(r"\\(?:boxed|fbox|text|textbf|textrm|mathrm|mathbf)(?![A-Za-z])")
_DECOR = " \t\r\n*_:#>`\"'“”‘’~=-"
_SENTENCE_END = re.compile(r"\n|[.!?;](?=\s|$)|[。！？；]")
_OPTION_WORD = re.compile(
    r"(?:(?:the|an?)\s{1,3})?(?:option|choice|letter)s?\s{0,3}", re.IGNORECASE
)
_LEADING = re.compile(r"[\s*_(\[]{0,6}([A-Za-z])(?![A-Za-z0-9'’])")
_LOWER_OK = re.compile(r"[\s*_]{0,6}(?:[)\].:]|$)")
_PROSE_AFTER = re.compile(  # "A car", "I think"; not "A or B", "A is wrong"
    r"[ \t]{1,3}(?!(?:or|and)[ \t]{1,3}[(\[*]{0,2}[A-Z](?![A-Za-z0-9'’]))"
    r"(?!(?:is|was|are|were|seems|looks|would|could|should|can|might|must|does|has|and|or)"
    r"(?![a-z]))[a-z]"
)
_AMBIG = re.compile(
    r"[\s*_)\]]{0,6}(?:(?i:or|and)|/|,|&|或|和|、|以及|及)[\s*_(\[]{0,6}([A-Z])(?![A-Za-z0-9'’])"
)
_NEGATED = re.compile(
    r"(?<![A-Za-z])not[ \t]{1,3}(?:option[ \t]{1,3}|choice[ \t]{1,3})?\(?[A-Z]\)?(?![A-Za-z0-9])",
    re.IGNORECASE,
)
_TOKEN = re.compile(r"(?<![A-Za-z0-9'’])(\(?)(?<![A-Za-z0-9]\()([A-Z])(\)?)(?![A-Za-z0-9'’])")
_OPTION_BEFORE = re.compile(r"(?:option|choice|answer)[ \t]{0,3}$", re.IGNORECASE)
_LONE = re.compile(r"[\s*_(\[{\"'`]{0,10}([A-Za-z])[\s*_)\]}\"'`.:]{0,10}")
_LEADING_OPTION = re.compile(
    r"[\s*_#>]{0,10}[(\[]?([A-Z])(?:[ \t]{0,3}[).:\]]|\*\*|[ \t]{0,3}\n|[ \t]{1,3}[-–—][ \t])"
)
_OPENING_LETTER = re.compile(r"[\s*_(\[]{0,6}([A-Z])(?:[ \t]{0,3}(?:[).:\]]|\*\*)|(?=[ \t\n]|$))")
_OPTION_LINE = re.compile(r"^[ \t*_#>]{0,10}[(\[]?([A-Z])[ \t]{0,3}[).:\]]", re.MULTILINE)
_PAREN = re.compile(r"\((?<![A-Za-z]\()([A-Z])\)")
_STRONG = re.compile(  # every branch starts with a literal: fast scanning
    r"\((?<![A-Za-z]\()([A-Z])\)"
    r"|\*\*[(\[]?([A-Z])[)\].:]?\*\*"
    r"|[oOcC](?<![A-Za-z][oOcC])(?i:ption|hoice)[ \t]{0,3}\(?([A-Z])\)?(?![A-Za-z0-9'’])"
    r"|选项[ \t]{0,3}([A-Z])"
)


def _clean(seg: str) -> str:
    if "\\" in seg:
        seg = _LATEX_WORD.sub(" ", seg)
    return seg.replace("{", " ").replace("}", " ").replace("$", " ")


def _single(found: Iterable[str], letters: str) -> str | None:
    """The one distinct choice letter among ``found``, ``_AMBIGUOUS`` if several, else None."""
    distinct = {ch for ch in found if ch in letters}
    if not distinct:
        return None
    return distinct.pop() if len(distinct) == 1 else _AMBIGUOUS


def _tokens(text: str) -> list[str]:
    """Standalone capital letters, minus prose "A"/"I" (article / pronoun before a word)."""
    text = _NEGATED.sub(" ", text)
    out = []
    for m in _TOKEN.finditer(text):
        ch = m.group(2)
        if (
            ch in "AI"
            and not m.group(1)
            and not m.group(3)
            and _PROSE_AFTER.match(text, m.end())
            and not _OPTION_BEFORE.search(text, max(0, m.start() - 12), m.start())
        ):
            continue
        out.append(ch)
    return out


def _read_answer(seg: str, letters: str) -> str | None:
    """The letter named right after an answer marker or inside a box."""
    seg = _clean(seg).lstrip(_DECOR)
    end = _SENTENCE_END.search(seg)
    if end is not None:
        seg = seg[: end.start()]
    option = _OPTION_WORD.match(seg)
    if option is not None:
        seg = seg[option.end() :]
    lead = _LEADING.match(seg)
    if lead is not None:
        ch = lead.group(1)
        upper = ch.upper()
        if ch.islower():
            accepted = upper in letters and _LOWER_OK.match(seg, lead.end()) is not None
        else:
            accepted = not (ch == "I" and _PROSE_AFTER.match(seg, lead.end()))
        if accepted:
            other = _AMBIG.match(seg, lead.end())
            if other is not None and other.group(1) in letters:
                return _AMBIGUOUS
            return upper
    return _single(_tokens(seg), letters)


def _marker_end(text: str, low: str, m: re.Match[str]) -> int | None:
    """Where the answer starts if the anchor ``m`` is an answer statement, else None."""
    word, pos, end = m.group(0), m.start(), m.end()
    if word in ("answer", "option", "choice"):
        if pos and "a" <= low[pos - 1] <= "z":
            return None
        suffix = _MARKER_SUFFIX.match(low, end)
        return None if suffix is None else suffix.end()
    if word == "答案":
        suffix = _ANSWER_CN_SUFFIX.match(text, end)
        return end if suffix is None else suffix.end()
    if word == "选":
        if not _XUAN_BEFORE.search(text, max(0, pos - 2), pos):
            return None
        return end + 1 if text.startswith("择", end) else end
    # choose / select / pick / go with: only as "I (would) choose"
    if end < len(low) and "a" <= low[end] <= "z":
        return None
    return end if _I_BEFORE.search(low, max(0, pos - 12), pos) else None


def _reversed_letter(text: str, low: str, m: re.Match[str]) -> str | None:
    """The letter of "(C) is correct" / "C选项正确" ending at anchor ``m``."""
    pos = m.start()
    if m.group(0) == "正确":
        before = _REVERSED_CN_BEFORE.search(text, max(0, pos - 12), pos)
    else:
        if m.end() < len(low) and "a" <= low[m.end()] <= "z":
            return None
        before = _REVERSED_BEFORE.search(text, max(0, pos - 40), pos)
    return None if before is None else before.group(1)


def _conclusion_letter(text: str, low: str, m: re.Match[str]) -> str | None:
    """The letter of a bare conclusion: "..., so (B).", "Therefore, C." (nothing else after)."""
    pos, end = m.start(), m.end()
    if (pos and "a" <= low[pos - 1] <= "z") or (end < len(low) and "a" <= low[end] <= "z"):
        return None
    found = _CONCLUSION_LETTER.match(text, end)
    return None if found is None else found.group(1)


def _explicit(text: str, letters: str) -> str | None:
    low = text.translate(ASCII_LOWER)
    searches = [(_MARKER_ANCHOR, low), (_REVERSED_ANCHOR, low), (_CONCLUSION_ANCHOR, low)]
    if "\\" in text:
        searches.append((_BOXED, text))
    looked = parsed = 0
    for kind, m in reverse_anchors(searches, len(text)):
        looked += 1
        if looked > MAX_ANCHORS or parsed > MAX_CANDIDATES:
            break
        if kind == 1:
            ch = _reversed_letter(text, low, m)
        elif kind == 2:
            ch = _conclusion_letter(text, low, m)
        else:
            if kind == 3:
                parsed += 1  # counted even when unclosed: the brace scan is the cost
                content = boxed_content(text, m.end(), SEGMENT_CHARS)
                segment = None if content is None else content.replace("\n", " ")
            else:
                start = _marker_end(text, low, m)
                segment = None if start is None else text[start : start + SEGMENT_CHARS]
            if segment is None:
                continue
            parsed += kind == 0
            found = _read_answer(segment, letters)
            if found is not None:
                return found
            continue
        if ch is not None and ch in letters:
            return ch
    return None


def _whole(text: str, letters: str) -> str | None:
    stripped = text.strip()
    if len(stripped) <= 40:
        lone = _LONE.fullmatch(stripped)
        if lone is not None:
            return lone.group(1).upper()
    lead = _LEADING_OPTION.match(stripped)
    if lead is not None and not _echoes_options(stripped, lead.group(1)):
        return lead.group(1)
    return None


def _echoes_options(text: str, letter: str) -> bool:
    """Whether the output lists other options too (``A. ...\nB. ...`` or ``(A) ... (B) ...``)."""
    head = text[:20000]
    listed = {m.group(1) for m in _OPTION_LINE.finditer(head)}
    listed.update(m.group(1) for m in _PAREN.finditer(head))
    return bool(listed - {letter})


def _last_line(text: str, letters: str) -> str | None:
    tail = text.rstrip()[-LAST_LINE_CHARS:]
    line = tail.rsplit("\n", 1)[-1]
    lone = _LONE.fullmatch(line)
    if lone is not None and lone.group(1).upper() in letters:
        return lone.group(1).upper()
    option = _OPTION_LINE.match(line)
    if option is not None and _echoes_options(text, option.group(1)):
        return None  # the last of a list of options, not an answer
    return _single(_tokens(_clean(line)), letters)


def _strong_mentions(text: str, letters: str) -> str | None:
    found = []
    for m in _STRONG.finditer(text):
        found.append(m.group(1) or m.group(2) or m.group(3) or m.group(4))
        if len(found) > 1000:
            break
    return _single(found, letters)


def _leading_letter(text: str, letters: str) -> str | None:
    """An option letter that opens the output (`` B``, ``B.``, ``(B)``, ``**B**``), as a
    completion of a prompt ending in ``Answer:`` gives it; not the article ``A car ...``."""
    m = _OPENING_LETTER.match(text)
    if m is None or m.group(1) not in letters:
        return None
    if m.group(1) in "AI" and _PROSE_AFTER.match(text, m.end(1)):
        return None
    return m.group(1)


def extract_choice(
    output: str, choices: str = DEFAULT_CHOICES, leading: bool = False
) -> str | None:
    """The single option letter an output commits to (upper case), or ``None``.

    With ``leading`` (prompts that end in ``Answer:``, where a completion model answers first
    and may then go on writing more questions and options), an option letter that opens the
    output is the answer, whatever follows."""
    text = as_text(output).translate(_TRANSLATE)
    if not text.strip():
        return None
    if leading:
        found = _leading_letter(text, choices)
        if found is not None:
            return found
    for rule in (_explicit, _whole, _last_line, _strong_mentions):
        found = rule(text, choices)
        if found is not None:
            return None if found == _AMBIGUOUS else found
    return None


def _normalize_choices(choices: object) -> str:
    if isinstance(choices, (list, tuple)):
        if not all(isinstance(c, str) for c in choices):
            raise ValueError(f"parameter 'choices' must be letters, got {choices!r}")
        choices = "".join(choices)
    if not isinstance(choices, str):
        raise ValueError(f"parameter 'choices' must be a string of letters, got {choices!r}")
    text = choices.replace(",", "").replace(" ", "").upper()
    if not text or not all("A" <= c <= "Z" for c in text) or len(set(text)) != len(text):
        raise ValueError(
            f"parameter 'choices' must be distinct letters A-Z such as 'ABCD', got {choices!r}"
        )
    return text


@dataclass(frozen=True)
class ChoiceEvaluator:
    """Multiple choice: the extracted letter must equal the reference letter."""

    choices: str = DEFAULT_CHOICES
    leading: bool = False
    name = "choice"

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", _normalize_choices(self.choices))
        if not isinstance(self.leading, bool):
            raise ValueError(f"parameter 'leading' must be true or false, got {self.leading!r}")

    def reference(self, raw: object) -> str:
        if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < len(self.choices):
            return self.choices[raw]  # an index into the options (HF MMLU style)
        return as_text(raw).translate(_TRANSLATE).strip().strip("()[]*. ").upper()

    def judge(self, output: str, reference: str) -> Judgement:
        extracted = extract_choice(output, self.choices, self.leading)
        ref = as_text(reference).strip().upper()
        return verdict(extracted, extracted is not None and extracted == ref)

    def identity(self) -> str:
        return make_identity(
            self.name,
            VERSION,
            {"choices": self.choices, "leading": self.leading},
            {"choices": DEFAULT_CHOICES, "leading": False},
        )
