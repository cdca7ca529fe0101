"""Evaluator registry: name -> factory, plus user functions given as ``package.module:function``.

Adding a family is one line: ``register_evaluator("math", MathEvaluator)`` where the factory
takes the spec's parameters as keyword arguments (a frozen dataclass works well) and raises
``ValueError`` naming the parameter when one is bad.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import json
import math
import sys
from collections.abc import Callable, Mapping
from numbers import Real
from pathlib import Path
from typing import Any

from .base import Evaluator, Judgement, as_text, make_identity
from .choice import ChoiceEvaluator
from .code import CodeEvaluator
from .limits import EvaluatorTimeout, call_with_time_limit
from .math_answer import MathEvaluator
from .numeric import GSM8KEvaluator, NumericEvaluator
from .text import ExactEvaluator, RegexEvaluator

#: Bump whenever the way user functions are called or their results are read changes.
FUNCTION_VERSION = 1
#: Seconds a user function may take to judge one output (evaluator parameter `time_limit`).
DEFAULT_TIME_LIMIT = 30.0
#: Time-outs in a row after which a user function is no longer called in this run.
MAX_TIMEOUTS = 3


class InvalidJudgement(TypeError):
    """A user evaluator returned something that is not a verdict."""


def _preview(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


EvaluatorFactory = Callable[..., Evaluator]

_REGISTRY: dict[str, EvaluatorFactory] = {
    "gsm8k": GSM8KEvaluator,
    "numeric": NumericEvaluator,
    "choice": ChoiceEvaluator,
    "exact": ExactEvaluator,
    "regex": RegexEvaluator,
    "math": MathEvaluator,
    "code": CodeEvaluator,
}


def register_evaluator(name: str, factory: EvaluatorFactory, *, replace: bool = False) -> None:
    """Make ``factory`` available as evaluator type ``name``."""
    if not name or ":" in name:
        raise ValueError(f"invalid evaluator name {name!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"evaluator {name!r} is already registered")
    _REGISTRY[name] = factory


def available_evaluators() -> list[str]:
    """The registered evaluator names, sorted."""
    return sorted(_REGISTRY)


def get_evaluator(spec: str | Mapping[str, Any]) -> Evaluator:
    """Build an evaluator from ``"gsm8k"``, ``{"type": "choice", "choices": "ABCDE"}`` or a user
    function ``"package.module:function"`` / ``"path/to/file.py:function"``.

    Raises ``ValueError`` for an unknown type (listing near matches and the available names)
    and for bad parameters (naming the parameter)."""
    if isinstance(spec, str):
        kind, params = spec.strip(), {}
    elif isinstance(spec, Mapping):
        params = dict(spec)
        kind = params.pop("type", None)
        if not isinstance(kind, str) or not kind.strip():
            raise ValueError(
                f"evaluator spec needs a 'type' (one of {', '.join(available_evaluators())}"
                f" or 'package.module:function'), got {dict(spec)!r}"
            )
        kind = kind.strip()
    else:
        raise ValueError(
            f"evaluator spec must be a name or a mapping with 'type', got {type(spec).__name__}"
        )
    factory = _REGISTRY.get(kind) or _REGISTRY.get(kind.lower())
    if factory is None:
        if ":" not in kind:
            raise ValueError(_unknown_message(kind))
        if "target" in params:
            raise ValueError(f"user evaluator {kind!r}: parameter 'target' is reserved")
        factory = FunctionEvaluator
        params = {**params, "target": kind}
    else:
        _check_params(kind, factory, params)
    try:
        return factory(**params)
    except TypeError as exc:  # a factory without its own validation
        raise ValueError(f"evaluator '{kind}': {exc}") from None


def _unknown_message(kind: str) -> str:
    names = available_evaluators()
    close = difflib.get_close_matches(kind.lower(), names, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return (
        f"unknown evaluator {kind!r}.{hint} Available: {', '.join(names)}; or a user function "
        "given as 'package.module:function'."
    )


def _accepted(fn: Callable[..., Any]) -> tuple[set[str], bool]:
    """(keyword parameter names, accepts **kwargs)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return set(), True
    names = {
        p.name
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    var_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    return names, var_kw


def _check_params(kind: str, factory: Callable[..., Any], params: Mapping[str, Any]) -> None:
    names, var_kw = _accepted(factory)
    if var_kw:
        return
    for key in params:
        if key not in names:
            close = difflib.get_close_matches(key, sorted(names), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            accepted = ", ".join(sorted(names)) or "none"
            raise ValueError(
                f"evaluator '{kind}' has no parameter '{key}'{hint}; accepted: {accepted}"
            )


def _load_function(target: str) -> Callable[..., Any]:
    module_name, _, attr_path = target.rpartition(":")
    if not module_name or not attr_path:
        raise ValueError(f"user evaluator must look like 'package.module:function', got {target!r}")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).resolve()
            mod_id = "servebench_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
            module = sys.modules.get(mod_id)
            if module is None:
                spec = importlib.util.spec_from_file_location(mod_id, path)
                if spec is None or spec.loader is None or not path.is_file():
                    raise ImportError(f"no such file: {path}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[mod_id] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[mod_id]
                    raise
        else:
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"user evaluator {target!r}: cannot import {module_name!r}: {exc}"
        ) from exc
    obj: Any = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(
                f"user evaluator {target!r}: {module_name!r} has no attribute {attr_path!r}"
            ) from None
    if not callable(obj):
        raise ValueError(f"user evaluator {target!r} is not callable")
    return obj


def _source_digest(fn: Callable[..., Any]) -> str:
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        if code is None:
            return "unknown"
        source = repr(code.co_code) + repr(code.co_consts)
    return hashlib.sha256(source.encode()).hexdigest()[:12]


class FunctionEvaluator:
    """A user function ``(output, reference, **params) -> bool | float | Judgement``.

    * ``bool``: correct or not (score 1.0 / 0.0);
    * a number: the score; correct when ``score >= threshold`` (param, default 1.0);
    * a :class:`Judgement`: used as is.

    The extracted answer reported for bool / number results is the stripped output (``None``
    when empty). Parameters other than ``threshold`` and ``version`` are passed to the function
    as keyword arguments. The identity carries ``version`` when given, else a hash of the
    function's source, so editing the function changes the dataset version.
    """

    name = "function"

    def __init__(
        self,
        target: str,
        *,
        threshold: float = 1.0,
        version: str | int | None = None,
        time_limit: float = DEFAULT_TIME_LIMIT,
        **kwargs: Any,
    ) -> None:
        self.target = target
        self._fn = _load_function(target)
        if isinstance(threshold, bool) or not isinstance(threshold, Real):
            raise ValueError(f"parameter 'threshold' must be a number, got {threshold!r}")
        self.threshold = float(threshold)
        if isinstance(time_limit, bool) or not isinstance(time_limit, Real) or not time_limit > 0:
            raise ValueError(
                f"parameter 'time_limit' must be a number of seconds above 0, got {time_limit!r}"
            )
        # Not part of the identity: it changes no verdict of a function that returns in time.
        self.time_limit = float(time_limit)
        self._strikes = 0  # time-outs in a row
        if version is not None and not isinstance(version, (str, int)):
            raise ValueError(f"parameter 'version' must be a string or integer, got {version!r}")
        self.version = version
        names, var_kw = _accepted(self._fn)
        if not var_kw:
            for key in kwargs:
                if key not in names:
                    raise ValueError(
                        f"user evaluator {target!r} has no parameter '{key}'; its parameters: "
                        f"{', '.join(sorted(names)) or 'none'}"
                    )
        self.kwargs = dict(kwargs)
        self.name = target

    def __getstate__(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "threshold": self.threshold,
            "version": self.version,
            "time_limit": self.time_limit,
            "kwargs": self.kwargs,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["target"],
            threshold=state["threshold"],
            version=state["version"],
            time_limit=state.get("time_limit", DEFAULT_TIME_LIMIT),
            **state["kwargs"],
        )

    def __repr__(self) -> str:
        return f"FunctionEvaluator({self.target!r})"

    def reference(self, raw: object) -> str:
        if isinstance(raw, str) or raw is None or isinstance(raw, (int, float)):
            return as_text(raw)
        try:
            return json.dumps(raw, ensure_ascii=False, sort_keys=True)
        except (TypeError, ValueError):
            return str(raw)

    def judge(self, output: str, reference: str) -> Judgement:
        if self._strikes >= MAX_TIMEOUTS:
            # A function that hangs on every output would cost time_limit per case.
            raise EvaluatorTimeout(
                f"user evaluator {self.target!r} was not called: it timed out or was "
                f"interrupted {MAX_TIMEOUTS} times in a row in this run"
            )
        try:
            result = call_with_time_limit(
                self.time_limit, self._fn, as_text(output), reference, **self.kwargs
            )
        except EvaluatorTimeout:
            self._strikes += 1
            raise EvaluatorTimeout(
                f"user evaluator {self.target!r} did not return within its time limit of "
                f"{self.time_limit:g}s (set evaluator parameter time_limit to change it)"
            ) from None
        except KeyboardInterrupt:
            self._strikes = MAX_TIMEOUTS  # Ctrl-C while it ran: never call it again this run
            raise
        self._strikes = 0
        if isinstance(result, Judgement):
            return result
        extracted = as_text(output).strip() or None
        if isinstance(result, bool) or type(result).__name__ == "bool_":  # numpy.bool_ too
            ok = bool(result)
            return Judgement(extracted, ok, 1.0 if ok else 0.0)
        if isinstance(result, Real):
            score = float(result)
            if math.isfinite(score):
                return Judgement(extracted, score >= self.threshold - 1e-12, score)
        raise InvalidJudgement(
            f"user evaluator {self.target!r} must return True/False, a finite number (the "
            f"score; correct when >= threshold {self.threshold:g}) or a Judgement(extracted, "
            f"correct, score); it returned {type(result).__name__} {_preview(result)}"
        )

    def identity(self) -> str:
        version = self.version if self.version is not None else "src:" + _source_digest(self._fn)
        params = {"threshold": self.threshold, "kwargs": self.kwargs}
        return make_identity(
            f"function:{self.target}",
            f"{FUNCTION_VERSION}/{version}",
            params,
            {"threshold": 1.0, "kwargs": {}},
        )
