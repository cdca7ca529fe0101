"""Accuracy gates for CI: thresholds on the summary decide the exit status.

A gate file is a YAML file with ``kind: gate``, passed with ``--sb-gate FILE`` or found in a
project's ``suites/`` folder (the rootdir's ``suites/`` and every ``--sb-suites`` folder)::

    kind: gate
    description: what this gate protects          # optional
    max_errors: 0        # optional: request errors (cases) allowed per task (default 0)
    max_drop: 2.0        # optional: percentage points each gated metric may fall below the
                         # same figure in --sb-baseline (a summary_*.json of an earlier run)
    datasets:
      demo_gsm8k:                    # the dataset's abbr or config name
        accuracy: ">= 55.0"          # operators >=, >, <=, <, ==; a bare number means >=
        max_errors: 2                # optional, overrides the file's for this dataset
        max_drop: 1.0                # optional, overrides the file's for this dataset
        models:                      # optional: per model (abbr or config name); its
          vllm_chat:                 # conditions replace the dataset's for the same metric
            accuracy: ">= 60"

Metrics are the summary's: ``accuracy`` (for k > 1 samples it means ``accuracy (k runs
average)``), ``avg@k``, ``pass@k``, ``cons@k``, ``maj@k``, and the counts ``errors``,
``truncated``, ``unparsable``, ``error_samples``, ``passed``, ``failed``. Figures are compared
at the summary table's precision (two decimals).

With at least one gate that applies to the run, the exit status follows the gates: 0 when
every gate holds (failed cases do not count), 1 when one breaks. Request errors count too:
every task of the run may have at most ``max_errors`` cases whose request could not be served
(0 unless a gate file says otherwise), so a run that could not reach its server never passes.
A task cut short (interrupted, aborted, ``-x``) breaks every gate on it. Without gates, or when
no gate names a dataset of the run, pytest's own exit status stands; ``--sb-no-gates`` ignores
every gate. Interrupted runs, usage and internal errors keep their own exit status.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_servebench.catalog.config import near_matches
from pytest_servebench.catalog.finder import SuiteIndex, suite_folders
from pytest_servebench.errors import ConfigError, ServebenchError
from pytest_servebench.scoring.metrics import headline_metric
from pytest_servebench.yamlio import line_of, load_yaml

if TYPE_CHECKING:
    from pytest_servebench.report.outcome import SessionOutcome
    from pytest_servebench.scoring.aggregate import TaskResult

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
}
COUNT_METRICS = ("errors", "truncated", "unparsable", "error_samples", "passed", "failed")
_CONDITION = re.compile(r"^\s*(>=|<=|==|>|<)?\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*%?\s*$")
_FIGURE = re.compile(r"^(accuracy|accuracy \(\d+ runs average\)|(avg|pass|cons|maj)@\d+)$")
FILE_KEYS = ("kind", "description", "max_errors", "max_drop", "datasets")
SCOPE_KEYS = ("max_errors", "max_drop")
PRECISION = 2  # the summary table's
REPORTER_NAME = "servebench-gates"


@dataclass(frozen=True)
class Gate:
    """One rule of a gate file.

    kind ``threshold``: ``metric op value``; ``max_drop``: the metric may fall at most
    ``value`` points below the baseline (metric None: the task's headline figure);
    ``max_errors``: at most ``value`` cases with request errors (dataset None: every task)."""

    kind: str
    source: str
    line: int | None
    explicit: bool  # from --sb-gate (True) or found in a suites/ folder (False)
    dataset: str | None
    model: str | None = None
    metric: str | None = None
    op: str = "<="
    value: float = 0.0
    except_models: tuple[str, ...] = ()  # models with their own conditions for this metric

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.line else self.source

    def matches(self, result: TaskResult) -> bool:
        if self.dataset is not None and self.dataset not in (result.dataset, result.dataset_name):
            return False
        models = (result.model, result.model_name)
        if self.model is not None and self.model not in models:
            return False
        return not any(m in self.except_models for m in models)


@dataclass
class GateOutcome:
    status: str  # "held", "broke" or "skipped" (does not decide anything)
    subject: str  # "demo_gsm8k / vllm_chat", or what the outcome is about
    message: str
    gate: Gate | None = None
    task: str | None = None
    value: float | None = None
    bound: float | None = None
    margin: float | None = None  # >= 0: held by that much; < 0: broke by -margin


# -- loading -------------------------------------------------------------------------------


def parse_condition(raw: Any, where: str = "") -> tuple[str, float]:
    """``">= 55.0"`` -> (">=", 55.0); a bare number means ``>=``."""
    if isinstance(raw, bool):
        raise ValueError(f"{where}expected a condition like '>= 55.0', got {raw!r}")
    if isinstance(raw, (int, float)):
        return ">=", float(raw)
    match = _CONDITION.match(str(raw)) if isinstance(raw, str) else None
    if not match:
        raise ValueError(
            f"{where}expected a condition like '>= 55.0' (operators "
            f"{', '.join(OPERATORS)}), got {raw!r}"
        )
    return match.group(1) or ">=", float(match.group(2))


def _metric_ok(name: str) -> bool:
    return bool(_FIGURE.match(name)) or name in COUNT_METRICS


def _number(raw: Any, key: str, path: Path, line: int | None, integer: bool) -> float:
    ok = isinstance(raw, int) if integer else isinstance(raw, (int, float))
    if isinstance(raw, bool) or not ok or raw < 0 or not math.isfinite(raw):
        what = "a whole number, 0 or more" if integer else "a number of percentage points, >= 0"
        raise ConfigError(f"{key} must be {what}, got {raw!r}", path, line)
    return float(raw)


def _mapping(raw: Any, what: str, path: Path, line: int | None) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} must be a mapping, got {type(raw).__name__}", path, line)
    return raw


def _scope(
    raw: dict[str, Any], path: Path, what: str, allow_models: bool
) -> tuple[dict[str, tuple[str, float, int | None]], dict[str, float], dict[str, Any]]:
    """A dataset or model entry -> (conditions, {max_errors/max_drop}, models)."""
    conditions: dict[str, tuple[str, float, int | None]] = {}
    limits: dict[str, float] = {}
    models: dict[str, Any] = {}
    for key, value in raw.items():
        line = line_of(raw, key)
        key = str(key)
        if key == "models" and allow_models:
            models = _mapping(value, f"{what}: models", path, line)
        elif key in SCOPE_KEYS:
            limits[key] = _number(value, key, path, line, integer=key == "max_errors")
        elif _metric_ok(key):
            try:
                op, bound = parse_condition(value)
            except ValueError as exc:
                raise ConfigError(f"{what}: {key}: {exc}", path, line) from None
            conditions[key] = (op, bound, line)
        else:
            known = ["accuracy", "avg@K", "pass@K", "cons@K", "maj@K", *COUNT_METRICS]
            hint = near_matches(key, [*known, *SCOPE_KEYS, *(["models"] if allow_models else [])])
            raise ConfigError(
                f"{what}: unknown metric or key {key!r}"
                + (f"; did you mean {', '.join(hint)}?" if hint else "")
                + f" (metrics: {', '.join(known)}; keys: "
                + ", ".join([*SCOPE_KEYS, *(["models"] if allow_models else [])])
                + ")",
                path,
                line,
            )
    return conditions, limits, models


def load_gate_file(path: Path, explicit: bool = True, display: str | None = None) -> list[Gate]:
    """The rules of one gate file; ``display`` is how messages name it (default: path)."""
    path = Path(path)
    raw = load_yaml(path)
    source = display or str(path)
    if not isinstance(raw, dict) or raw.get("kind") != "gate":
        raise ConfigError("a gate file is a mapping with `kind: gate`", path, line_of(raw, "kind"))
    for key in raw:
        if key not in FILE_KEYS:
            hint = near_matches(str(key), list(FILE_KEYS))
            extra = (
                f"; did you mean {', '.join(hint)}?"
                if hint
                else f"; thresholds go under `datasets:` (datasets: {{{key}: {{accuracy: "
                f"'>= 55.0'}}}})"
            )
            raise ConfigError(
                f"unknown key {key!r}{extra} (keys: {', '.join(FILE_KEYS)})",
                path,
                line_of(raw, key),
            )
    datasets = _mapping(raw.get("datasets") or {}, "datasets", path, line_of(raw, "datasets"))
    if not datasets:
        raise ConfigError(
            "a gate file needs `datasets:` with at least one dataset and its thresholds, "
            "e.g. datasets: {gsm8k: {accuracy: '>= 55.0'}}",
            path,
            line_of(raw, "datasets"),
        )
    file_limits = {
        k: _number(raw[k], k, path, line_of(raw, k), integer=k == "max_errors")
        for k in SCOPE_KEYS
        if k in raw and raw[k] is not None
    }
    gates: list[Gate] = []
    if "max_errors" in file_limits:
        gates.append(
            Gate(
                "max_errors",
                source,
                line_of(raw, "max_errors"),
                explicit,
                None,
                value=file_limits["max_errors"],
            )
        )
    for dataset, entry in datasets.items():
        dline = line_of(datasets, dataset)
        dataset = str(dataset)
        entry = _mapping(entry if entry is not None else {}, f"datasets: {dataset}", path, dline)
        conditions, limits, models = _scope(entry, path, f"datasets: {dataset}", True)
        scopes: list[tuple[str | None, dict, dict, tuple[str, ...], int | None]] = []
        model_scopes = []
        for model, model_entry in models.items():
            mline = line_of(models, model)
            model = str(model)
            what = f"datasets: {dataset}: models: {model}"
            model_entry = _mapping(
                model_entry if model_entry is not None else {}, what, path, mline
            )
            m_conditions, m_limits, _ = _scope(model_entry, path, what, False)
            model_scopes.append(
                (model, {**conditions, **m_conditions}, {**limits, **m_limits}, (), mline)
            )
        scopes.append((None, conditions, limits, tuple(m[0] for m in model_scopes), dline))
        scopes += model_scopes
        if not conditions and not limits and not model_scopes and "max_drop" not in file_limits:
            raise ConfigError(
                f"datasets: {dataset}: no threshold given, e.g. {{accuracy: '>= 55.0'}}",
                path,
                dline,
            )
        for model, conds, lims, except_models, sline in scopes:
            for metric, (op, bound, line) in conds.items():
                gates.append(
                    Gate(
                        "threshold",
                        source,
                        line or sline,
                        explicit,
                        dataset,
                        model,
                        metric,
                        op,
                        bound,
                        except_models,
                    )
                )
            drop = lims.get("max_drop", file_limits.get("max_drop"))
            if drop is not None:
                metrics = [m for m in conds if m not in COUNT_METRICS] or [None]
                for metric in metrics:
                    gates.append(
                        Gate(
                            "max_drop",
                            source,
                            sline,
                            explicit,
                            dataset,
                            model,
                            metric,
                            "<=",
                            drop,
                            except_models,
                        )
                    )
            if "max_errors" in lims:
                gates.append(
                    Gate(
                        "max_errors",
                        source,
                        sline,
                        explicit,
                        dataset,
                        model,
                        value=lims["max_errors"],
                        except_models=except_models,
                    )
                )
    return gates


def load_gates(
    paths: Iterable[str | Path], explicit: bool = True, base: Path | None = None
) -> list[Gate]:
    """Every rule of the given gate files (ConfigError names the file and line of a mistake).
    Messages name a file relative to ``base`` when it lies below it."""
    gates: list[Gate] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise ServebenchError(f"--sb-gate {path}: no such file")
        display = None
        if base is not None:
            try:
                display = str(path.resolve().relative_to(base.resolve()))
            except ValueError:
                display = None
        gates += load_gate_file(path, explicit, display)
    return gates


def load_baseline(path: str | Path) -> dict[str, Any]:
    """A summary_*.json of an earlier run; a run folder or its summary/ folder means the
    latest summary in it."""
    path = Path(path)
    if path.is_dir():
        found = sorted((path / "summary").glob("summary_*.json")) or sorted(
            path.glob("summary_*.json")
        )
        if not found:
            raise ServebenchError(f"--sb-baseline {path}: no summary_*.json in this folder")
        path = found[-1]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ServebenchError(f"--sb-baseline {path}: cannot read ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ServebenchError(f"--sb-baseline {path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
        raise ServebenchError(
            f"--sb-baseline {path}: not a servebench summary (expected the summary_*.json "
            f"written in <work dir>/<run>/summary/)"
        )
    data.setdefault("_path", str(path))
    return data


# -- checking ------------------------------------------------------------------------------


def _subject(result: TaskResult) -> str:
    return f"{result.dataset} / {result.model}"


def _fmt(value: float, metric: str | None) -> str:
    if metric in COUNT_METRICS or metric is None:
        return f"{value:g}"
    return f"{value:.2f}"


def _metric_value(result: TaskResult, metric: str) -> tuple[float | None, str, str]:
    """(value, the metric's name in this task, why there is none)."""
    if not result.complete:
        return (
            None,
            metric,
            f"only {result.evaluated} of {len(result.case_ids)} cases were evaluated",
        )
    if metric in COUNT_METRICS:
        return float(result.counts()[metric]), metric, ""
    figures = result.figures()
    name = metric
    if name == "accuracy" and name not in figures and result.samples > 1:
        name = f"accuracy ({result.samples} runs average)"
    if name not in figures:
        has = ", ".join(figures) or "none (infer mode)"
        return None, name, f"this task has no {metric!r} figure (it has: {has})"
    return figures[name], name, ""


def _baseline_index(baseline: dict[str, Any]) -> dict[tuple[str, str], dict[str, float]]:
    index: dict[tuple[str, str], dict[str, float]] = {}
    for task in baseline.get("tasks", []):
        if not isinstance(task, dict) or not task.get("complete", True):
            continue
        metrics = task.get("metrics") or {}
        for model in (task.get("model"), task.get("model_config")):
            for dataset in (task.get("dataset"), task.get("dataset_config")):
                if model and dataset:
                    index.setdefault((str(model), str(dataset)), metrics)
    return index


def _baseline_for(index: dict, result: TaskResult) -> dict[str, float] | None:
    for model in (result.model, result.model_name):
        for dataset in (result.dataset, result.dataset_name):
            if (model, dataset) in index:
                return index[(model, dataset)]
    return None


def _threshold(gate: Gate, result: TaskResult) -> GateOutcome:
    assert gate.metric is not None
    value, name, why = _metric_value(result, gate.metric)
    subject = _subject(result)
    wanted = f"{name} {gate.op} {_fmt(gate.value, gate.metric)}"
    if value is None:
        return GateOutcome("broke", subject, f"{wanted}: {why}", gate, result.key)
    shown = round(value, PRECISION)
    held = OPERATORS[gate.op](shown, gate.value)
    if gate.op in (">=", ">"):
        margin = shown - gate.value
    elif gate.op in ("<=", "<"):
        margin = gate.value - shown
    else:
        margin = -abs(shown - gate.value)
    if held:
        how = "exactly" if gate.op == "==" else f"margin {_fmt(margin, gate.metric)}"
    elif gate.op == "==":
        how = f"off by {_fmt(-margin, gate.metric)}"
    elif margin == 0:
        how = "at the bound, which the strict operator excludes"
    else:
        how = f"short by {_fmt(-margin, gate.metric)}"
    return GateOutcome(
        "held" if held else "broke",
        subject,
        f"{name} {_fmt(shown, gate.metric)} (needs {gate.op} {_fmt(gate.value, gate.metric)}, "
        f"{how})",
        gate,
        result.key,
        shown,
        gate.value,
        margin,
    )


def _drop(gate: Gate, result: TaskResult, baseline: dict | None, index: dict) -> GateOutcome:
    metric = gate.metric or headline_metric(result.samples)
    subject = _subject(result)
    if baseline is None:
        return GateOutcome(
            "skipped",
            subject,
            f"max_drop {gate.value:.2f} on {metric} not checked: no --sb-baseline given",
            gate,
            result.key,
        )
    value, name, why = _metric_value(result, metric)
    if value is None:
        return GateOutcome("broke", subject, f"max_drop on {name}: {why}", gate, result.key)
    before_figures = _baseline_for(index, result)
    before = None if before_figures is None else before_figures.get(name)
    if before is None:
        return GateOutcome(
            "skipped",
            subject,
            f"max_drop on {name} not checked: the baseline has no {name} for this task",
            gate,
            result.key,
        )
    now = round(value, PRECISION)
    drop = round(float(before) - now, PRECISION)
    held = drop <= gate.value
    margin = gate.value - drop
    drop = drop + 0.0  # no "-0.00"
    if drop > 0:
        change = f"fell {drop:.2f} points"
    elif drop < 0:
        change = f"rose {-drop:.2f} points"
    else:
        change = "unchanged"
    how = f"margin {margin:.2f}" if held else f"broke by {-margin:.2f}"
    return GateOutcome(
        "held" if held else "broke",
        subject,
        f"{name} {change} vs baseline ({float(before):.2f} -> {now:.2f}; max_drop "
        f"{gate.value:.2f}, {how})",
        gate,
        result.key,
        drop,
        gate.value,
        margin,
    )


def _errors(gate: Gate | None, allowed: float, result: TaskResult) -> GateOutcome:
    errors = result.counts()["errors"]
    held = errors <= allowed
    where = "default" if gate is None else gate.where
    how = f"margin {allowed - errors:g}" if held else f"broke by {errors - allowed:g}"
    message = (
        f"request errors {errors} (max_errors {allowed:g} [{where}], {how})"
        if gate is None
        else f"request errors {errors} (max_errors {allowed:g}, {how})"
    )
    return GateOutcome(
        "held" if held else "broke",
        _subject(result),
        message,
        gate,
        result.key,
        float(errors),
        allowed,
        allowed - errors,
    )


def check(
    gates: Sequence[Gate], results: Sequence[TaskResult], baseline: dict | None = None
) -> list[GateOutcome]:
    """Every rule against every task it names. A dataset or model key that names nothing in
    this run gives a "skipped" outcome (with near-name suggestions). When at least one rule
    applies, each task of the run also gets a request-errors outcome (max_errors)."""
    outcomes: list[GateOutcome] = []
    results = [r for r in results if r.run_mode != "infer"]
    index = _baseline_index(baseline) if baseline else {}
    active_sources: set[str] = set()
    unmatched: dict[tuple[str, str | None, str | None], Gate] = {}
    for gate in gates:
        if gate.kind == "max_errors":
            continue
        matched = [r for r in results if gate.matches(r)]
        if not matched:
            if not any(
                gate.dataset in (r.dataset, r.dataset_name)
                and gate.model is None
                and any(m in gate.except_models for m in (r.model, r.model_name))
                for r in results
            ):
                unmatched.setdefault((gate.source, gate.dataset, gate.model), gate)
            continue
        active_sources.add(gate.source)
        for result in matched:
            if gate.kind == "threshold":
                outcomes.append(_threshold(gate, result))
            else:
                outcomes.append(_drop(gate, result, baseline, index))
    for (_source, dataset, model), gate in unmatched.items():
        known = sorted({r.dataset for r in results} | {r.dataset_name for r in results})
        models = sorted({r.model for r in results} | {r.model_name for r in results})
        if dataset not in known:
            hint = near_matches(str(dataset), known)
            why = f"dataset {dataset!r} was not evaluated in this run"
        else:
            hint = near_matches(str(model), models)
            why = f"model {model!r} did not run {dataset}"
        if hint:
            why += f" (did you mean {', '.join(hint)}?)"
        outcomes.append(GateOutcome("skipped", f"{gate.where}", why, gate))
    if not any(o.status != "skipped" for o in outcomes):
        return outcomes
    error_gates = [g for g in gates if g.kind == "max_errors"]
    for result in results:
        specific = [g for g in error_gates if g.dataset is not None and g.matches(result)]
        general = [g for g in error_gates if g.dataset is None and g.source in active_sources]
        chosen = min(specific or general, key=lambda g: g.value, default=None)
        outcomes.append(_errors(chosen, chosen.value if chosen else 0, result))
    return outcomes


# -- rendering -----------------------------------------------------------------------------

_MARK = {"held": "HELD ", "broke": "BROKE", "skipped": "SKIP "}


def render(outcomes: Sequence[GateOutcome], decision: str | None = None) -> list[str]:
    """Terminal lines: one per outcome (broken ones first), then the count."""
    order = {"broke": 0, "held": 1, "skipped": 2}
    lines = []
    for o in sorted(outcomes, key=lambda o: order[o.status]):
        origin = f"  [{o.gate.where}]" if o.gate is not None and o.status != "skipped" else ""
        lines.append(f"{_MARK[o.status]} {o.subject}: {o.message}{origin}")
    held = sum(o.status == "held" for o in outcomes)
    broke = sum(o.status == "broke" for o in outcomes)
    skipped = sum(o.status == "skipped" for o in outcomes)
    tally = f"gates: {held} held, {broke} broke" + (f", {skipped} skipped" if skipped else "")
    lines.append(tally + (f" -> {decision}" if decision else ""))
    return lines


# -- the pytest glue -----------------------------------------------------------------------


class GateReporter:
    """Holds the gates of a run and prints their outcomes at the end of the terminal summary
    (a plain class: pytest needs its plugins hashable)."""

    def __init__(
        self,
        gates: list[Gate],
        baseline: dict[str, Any] | None = None,
        notes: list[str] | None = None,
    ):
        self.gates = gates
        self.baseline = baseline
        self.outcomes: list[GateOutcome] = []
        self.decision: str | None = None
        self.notes: list[str] = list(notes or [])

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.outcomes and not self.notes:
            return
        tr = terminalreporter
        tr.write_sep("=", "servebench gates")
        for note in self.notes:
            tr.write_line(note, yellow=True)
        lines = render(self.outcomes, self.decision) if self.outcomes else []
        for line in lines:
            tr.write_line(
                line,
                red=line.startswith("BROKE"),
                green=line.startswith("HELD"),
                bold=line is lines[-1],
            )


def _option(config: pytest.Config, name: str, default: Any = None) -> Any:
    try:
        return config.getoption(name, default)
    except ValueError:
        return default


def _ini_list(config: pytest.Config, name: str) -> list[str]:
    try:
        return list(config.getini(name) or [])
    except ValueError:
        return []


def gate_files(config: pytest.Config, suites: Sequence[str]) -> tuple[list[Path], list[Path]]:
    """(explicit --sb-gate files, gate files found in the project's suites folders: the
    rootdir's and the ``suites`` of --sb-suites)."""
    base = config.invocation_params.dir
    named = list(_option(config, "sb_gate") or []) or _ini_list(config, "sb_gate")
    explicit = [p if p.is_absolute() else base / p for p in map(Path, named)]
    index = SuiteIndex(suite_folders(config.rootpath, list(suites)))
    found = [e.path for e in index.gates() if e.origin != "built-in"]
    resolved = {p.resolve() for p in explicit}
    return explicit, [p for p in found if p.resolve() not in resolved]


def setup_gates(
    config: pytest.Config, suites: Sequence[str], selected: Collection[str]
) -> GateReporter | None:
    """At configure time (controller only): load and check every gate file and the baseline,
    so a mistake stops the run before any request is sent. Registers the GateReporter.
    ``selected``: the names and abbrs of the datasets this run evaluates."""
    if hasattr(config, "workerinput") or _option(config, "sb_no_gates", False):
        return None
    existing = config.pluginmanager.get_plugin(REPORTER_NAME)
    if existing is not None:
        return existing
    explicit, found = gate_files(config, suites)
    base = config.invocation_params.dir
    gates = load_gates(explicit, True, base) + load_gates(found, False, base)
    if not gates:
        return None
    baseline_path = _option(config, "sb_baseline")
    baseline = None
    if baseline_path:
        path = Path(baseline_path)
        if not path.is_absolute():
            path = config.invocation_params.dir / path
        baseline = load_baseline(path)
    for source in {g.source for g in gates if g.explicit}:
        named = {g.dataset for g in gates if g.source == source and g.dataset is not None}
        if named and not named & set(selected):
            raise ServebenchError(
                f"--sb-gate {source} names the datasets {', '.join(sorted(named))}; this run "
                f"evaluates {', '.join(sorted(selected))}. Select them with --sb-datasets or "
                f"fix the names in the gate file (a dataset's abbr or config name)."
            )
    reporter = GateReporter(gates, baseline)
    config.pluginmanager.register(reporter, REPORTER_NAME)
    return reporter


def apply_gates(config: pytest.Config, session: pytest.Session, outcome: SessionOutcome) -> None:
    """At the end of the controller's sessionfinish, with the session's outcome: check the
    gates setup_gates() registered and let them decide ``session.exitstatus``."""
    if hasattr(config, "workerinput"):
        return
    reporter = config.pluginmanager.get_plugin(REPORTER_NAME)
    if reporter is None or not reporter.gates:
        return
    status = session.exitstatus
    if config.option.collectonly:
        return
    if outcome.mode == "infer":
        reporter.notes.append("gates: not checked in infer mode (no scores)")
        return
    if status not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        reporter.notes.append(
            f"gates: not checked (pytest exit status {int(status)}: "
            f"{pytest.ExitCode(status).name.lower().replace('_', ' ')})"
        )
        return
    results = outcome.results
    outcomes = check(reporter.gates, results, reporter.baseline)
    fatal = outcome.engine_fatal
    if fatal and any(o.status != "skipped" for o in outcomes):
        outcomes.insert(0, GateOutcome("broke", "run", f"aborted: {fatal}"))
    finish_error = outcome.finish_error
    if finish_error and any(o.status != "skipped" for o in outcomes):
        outcomes.insert(0, GateOutcome("broke", "summary", f"not computed: {finish_error}"))
    reporter.outcomes = outcomes
    if not any(o.status != "skipped" for o in outcomes):
        reporter.decision = "no gate applies to this run: pytest's exit status stands"
        return
    broke = any(o.status == "broke" for o in outcomes)
    failed = sum(r.counts()["failed"] for r in results)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED if broke else pytest.ExitCode.OK
    if broke:
        reporter.decision = "exit status 1"
    else:
        reporter.decision = "exit status 0" + (
            f" ({failed} wrong answers do not fail the run: the gates decide)" if failed else ""
        )


__all__ = [
    "Gate",
    "GateOutcome",
    "GateReporter",
    "apply_gates",
    "check",
    "load_baseline",
    "load_gates",
    "parse_condition",
    "render",
    "setup_gates",
]
