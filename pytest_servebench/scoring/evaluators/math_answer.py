"""Competition-math answers (MATH-500, AIME): the final ``\\boxed{}`` answer, checked for
mathematical equivalence by the maintained ``math-verify`` package, under a time limit.

Extraction (:func:`extract_math_answer`):

1. The content of the LAST ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces; ``\\boxed 5`` too).
2. Otherwise the last answer statement (``The final answer is $\\frac{1}{2}$.``,
   ``Answer: 18``): the first ``$...$`` / ``\\(...\\)`` after it, else the rest of its sentence.
3. Otherwise nothing (``None``): the output is unparsable; no number is guessed from the text.

Comparison (:meth:`MathEvaluator.judge`), the first rule that decides wins:

1. The same string once cosmetics are removed (spaces, ``\\left``/``\\right``, ``\\!``, ``\\dfrac``,
   ``^\\circ``, ``\\%``, ``\\$``, ``\\text{}`` wrappers, thousands separators).
2. A word answer (``\\text{Evelyn}``, ``\\text{(C)}``) is compared as words, case-insensitively
   (sympy would read ``Evelyn`` as a product of symbols, equal to any anagram).
3. Two plain numbers are compared as numbers (``025`` == ``25``, ``.5`` == ``0.5``).
4. Otherwise ``math_verify.parse`` + ``math_verify.verify``: fractions and decimals, tuples,
   intervals, sets, matrices, units, equations (``x=5`` == ``5``), ``\\pm`` ...

Step 4 runs in a separate worker process (``python -c``, started on first use) so that a
runaway sympy computation is killed at the deadline whatever thread the judge runs in, and no
signal handler of the test process (pytest-timeout's) is touched. Only the LaTeX parser is
used (latex2sympy2's grammar): model text is never handed to ``eval`` / ``sympify`` of a string.
When ``math-verify`` is not installed, step 4 is skipped (only rules 1-3 decide) and a warning
is logged once.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import re
import subprocess
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from .base import Judgement, as_text, make_identity, verdict
from .numeric import boxed_content

#: Bump whenever extraction or comparison logic changes (feeds the dataset version hash).
VERSION = 1

DEFAULT_TIMEOUT = 5  # seconds for one comparison (parse + verify)
MAX_ANSWER_CHARS = 1000
TAIL_CHARS = 4000  # answer statements are looked for in the last part of the output
STARTUP_TIMEOUT = 120.0  # importing sympy can be slow on a cold disk

log = logging.getLogger("servebench")

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])[ \t]*")
_STATEMENT = re.compile(
    r"(?i)(?:final[ \t]+answer|answer)(?:[ \t]+to[ \t]+the[ \t]+(?:question|problem))?"
    r"[ \t*]*(?:is|:|=)[ \t*:]*"
)
_BARE_TOKEN = re.compile(r"[^\s$,;]{1,100}")
_SPACES = re.compile(r"\s+")
_TEXT_WRAP = re.compile(
    r"\\(?:text|textbf|textrm|textit|mbox|mathrm|mathbf|operatorname)\{([^{}]*)\}"
)
_SUBSCRIPT = re.compile(r"_\{(\w+)\}")
_THOUSANDS = re.compile(r"(?<![\d.])(\d{1,3})((?:,\d{3})+)(?![\d])")
_WORDS = re.compile(r"[A-Za-z]+(?: [A-Za-z]+)*")
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_COSMETIC = (
    ("\\left", ""),
    ("\\right", ""),
    ("\\!", ""),
    ("\\,", ""),
    ("\\;", ""),
    ("\\:", ""),
    ("\\ ", ""),
    ("~", ""),
    ("\\dfrac", "\\frac"),
    ("\\tfrac", "\\frac"),
    ("^{\\circ}", ""),
    ("^\\circ", ""),
    ("°", ""),
    ("\\%", ""),
    ("%", ""),
    ("\\$", ""),
    ("$", ""),
    ("{,}", ","),
)


def extract_math_answer(output: str) -> str | None:
    """The final answer of a solution: the last ``\\boxed{}``, else the last answer statement."""
    text = as_text(output)
    if not text.strip():
        return None
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    return _last_statement(text[-TAIL_CHARS:])


def _last_boxed(text: str) -> str | None:
    positions = [m for m in _BOX.finditer(text)]
    for m in reversed(positions[-64:]):
        end = m.end()
        if text.startswith("{", end):
            content = boxed_content(text, end + 1, MAX_ANSWER_CHARS)
            if content is not None and content.strip():
                return _tidy(content)
        elif end > m.start() + len(m.group().rstrip()):  # "\boxed 5"
            token = _BARE_TOKEN.match(text, end)
            if token is not None:
                return _tidy(token.group())
    return None


def _last_statement(tail: str) -> str | None:
    found = None
    for found in _STATEMENT.finditer(tail):  # noqa: B007 - keep the last one
        pass
    if found is None:
        return None
    seg = tail[found.end() : found.end() + MAX_ANSWER_CHARS].lstrip()
    for open_, close in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if seg.startswith(open_):
            end = seg.find(close, len(open_))
            if end > len(open_):
                return _tidy(seg[len(open_) : end])
            break
    line = seg.split("\n", 1)[0]
    sentence = re.split(r"(?<=[^\d\\])\.(?:\s|$)|\.\s", line, maxsplit=1)[0]
    answer = _tidy(sentence.strip().strip("*").rstrip("."))
    return answer or None


def _tidy(answer: str) -> str:
    answer = answer.strip()
    if answer.startswith("$") and answer.endswith("$") and len(answer) > 1:
        answer = answer.strip("$").strip()
    return answer.rstrip(".").strip()


def canonical_text(answer: str) -> str:
    """Cosmetic normal form: equal forms are equal answers (never the other way round)."""
    text = as_text(answer)
    for old, new in _COSMETIC:
        if old in text:
            text = text.replace(old, new)
    for _ in range(3):
        unwrapped = _TEXT_WRAP.sub(r"\1", text)
        if unwrapped == text:
            break
        text = unwrapped
    text = _SUBSCRIPT.sub(r"_\1", text)
    text = _THOUSANDS.sub(lambda m: m.group(1) + m.group(2).replace(",", ""), text)
    text = _SPACES.sub(" ", text).strip().rstrip(".").strip()
    return text.replace(" ", "")


def _words(answer: str) -> str | None:
    """``\\text{(C)}`` -> ``c``, ``\\text{Evelyn}`` -> ``evelyn``; None if not a word answer."""
    text = as_text(answer).strip()
    for _ in range(3):
        text = _TEXT_WRAP.sub(r"\1", text)
    text = _SPACES.sub(" ", text.replace("$", " ")).strip().strip(".").strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1].strip()
    return text.lower() if _WORDS.fullmatch(text) else None


def _number(canon: str) -> Decimal | None:
    if not _NUMBER.fullmatch(canon):
        return None
    try:
        return Decimal(canon)
    except InvalidOperation:  # pragma: no cover - the regex admits only valid literals
        return None


# -- the worker process ------------------------------------------------------------------------

_WORKER = r"""
import json, logging, sys, warnings
warnings.filterwarnings("ignore")
logging.disable(logging.CRITICAL)
try:
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import LatexExtractionConfig, parse, verify
except Exception as exc:
    print(json.dumps({"ready": False, "error": type(exc).__name__ + ": " + str(exc)}), flush=True)
    sys.exit(0)
norm = NormalizationConfig(
    nits=False, malformed_operators=True, basic_latex=True, boxed="all", units=True
)
pred_cfg = [LatexExtractionConfig(normalization_config=norm, boxed_match_priority=0,
                                  try_extract_without_anchor=False)]
gold_cfg = [LatexExtractionConfig()]
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    t = max(1, int(req.get("timeout") or 5))
    out = {"id": req["id"], "equal": False}
    try:
        gold = parse("$" + req["gold"] + "$", extraction_config=gold_cfg, parsing_timeout=t)
        pred = parse("\\boxed{" + req["pred"] + "}", extraction_config=pred_cfg,
                     parsing_timeout=t)
        out["parsed"] = bool(gold) and bool(pred)
        out["equal"] = bool(gold and pred and verify(gold, pred, timeout_seconds=t))
    except BaseException as exc:
        out["error"] = type(exc).__name__ + ": " + str(exc)[:200]
    print(json.dumps(out), flush=True)
"""


class _Verifier:
    """One worker process per test process, restarted after a timeout or a crash."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._next = 0
        self.unavailable: str | None = None
        self._cache: OrderedDict[tuple[str, str], bool | None] = OrderedDict()
        self.timeouts = 0
        self.worker_source = _WORKER

    def _start(self) -> bool:
        env = dict(os.environ)
        env.setdefault("PYTHONIOENCODING", "utf-8")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", self.worker_source],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                encoding="utf-8",
                bufsize=1,
                env=env,
            )
        except OSError as exc:
            self.unavailable = f"cannot start the math-verify worker: {exc}"
            return False
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, name="servebench-math-verify", daemon=True).start()
        try:
            first = lines.get(timeout=STARTUP_TIMEOUT)
        except queue.Empty:
            first = None
        ready = json.loads(first) if first else {"ready": False, "error": "no reply"}
        if not ready.get("ready"):
            self._kill(proc)
            self.unavailable = "math-verify is not usable (pip install math-verify): " + str(
                ready.get("error", "the worker did not start")
            )
            return False
        self._proc, self._lines = proc, lines
        return True

    @staticmethod
    def _kill(proc: subprocess.Popen[str]) -> None:
        try:
            proc.kill()
            proc.wait(timeout=5)
        except Exception:  # pragma: no cover - best effort
            pass

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                try:
                    assert self._proc.stdin is not None
                    self._proc.stdin.close()
                    self._proc.wait(timeout=2)
                except Exception:
                    self._kill(self._proc)
                self._proc = None

    def equivalent(self, gold: str, pred: str, timeout: int) -> bool | None:
        """True / False, or None when it could not be decided (timeout, no math-verify)."""
        key = (gold, pred)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            if self.unavailable is not None:
                return None
            if self._proc is None and not self._start():
                log.warning("math evaluator: %s; comparing answers as text only", self.unavailable)
                return None
            assert self._proc is not None and self._proc.stdin is not None
            self._next += 1
            request = {"id": self._next, "gold": gold, "pred": pred, "timeout": timeout}
            try:
                self._proc.stdin.write(json.dumps(request) + "\n")
                self._proc.stdin.flush()
                line = self._lines.get(timeout=3 * timeout + 2)
            except (OSError, queue.Empty):
                line = None
            result: bool | None
            if line is None:
                # Timed out (or the worker died): kill it; the next comparison starts afresh.
                self.timeouts += 1
                log.warning(
                    "math evaluator: comparing %r with %r took over %ss; counted as not equal",
                    pred[:80],
                    gold[:80],
                    timeout,
                )
                self._kill(self._proc)
                self._proc = None
                result = None
            else:
                reply = json.loads(line)
                result = bool(reply.get("equal"))
            self._cache[key] = result
            if len(self._cache) > 20_000:
                self._cache.popitem(last=False)
            return result


_VERIFIER = _Verifier()
atexit.register(_VERIFIER.close)


def _math_verify_version() -> str:
    try:
        from importlib.metadata import version

        return version("math-verify")
    except Exception:
        return "absent"


@dataclass(frozen=True)
class MathEvaluator:
    """Final ``\\boxed{}`` answer, equivalence by math-verify within ``timeout`` seconds."""

    timeout: int = DEFAULT_TIMEOUT
    name = "math"

    def __post_init__(self) -> None:
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, int) or self.timeout < 1:
            raise ValueError(
                f"parameter 'timeout' must be a whole number of seconds >= 1, got {self.timeout!r}"
            )

    def reference(self, raw: object) -> str:
        return as_text(raw).strip()

    def judge(self, output: str, reference: str) -> Judgement:
        extracted = extract_math_answer(output)
        if extracted is None:
            return verdict(None, False)
        return verdict(extracted, self.equivalent(extracted, reference))

    def equivalent(self, answer: str, reference: str) -> bool:
        ref = as_text(reference).strip()
        a, b = canonical_text(answer), canonical_text(ref)
        if a == b:
            return True
        ref_words = _words(ref)
        if ref_words is not None:
            return _words(answer) == ref_words
        x, y = _number(a), _number(b)
        if x is not None and y is not None:
            return x == y
        return bool(_VERIFIER.equivalent(ref, answer, self.timeout))

    def identity(self) -> str:
        return make_identity(
            self.name,
            f"{VERSION}/math-verify-{_math_verify_version()}",
            {"timeout": self.timeout},
            {"timeout": DEFAULT_TIMEOUT},
        )
