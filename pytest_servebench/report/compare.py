"""Run-to-run comparison: "did this deploy change anything?"

Two runs (work dirs or summary json files) side by side for every (model, dataset) they share:
the accuracy difference, the paired test on the cases both answered (exact McNemar for 0/1
scores, paired bootstrap for fractional ones), the cases that flipped, the cases either run
lacks (counted and named), and the differences of the service figures. Used by
`python -m pytest_servebench compare` and by `pytest --sb-baseline RUN`."""

from __future__ import annotations

import argparse
import html
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_servebench.errors import ServebenchError
from pytest_servebench.scoring import metrics
from pytest_servebench.scoring.verdict import Verdict

SHOWN_IDS = 10  # case ids listed per kind on the terminal (all of them in json and html)


@dataclass
class TaskView:
    """What a comparison needs of one task, from files or from the running session."""

    model: str
    model_config: str
    dataset: str
    dataset_config: str
    samples: int
    complete: bool
    metrics: dict[str, float]
    cases: int  # the task's case count (evaluated or not)
    scores: dict[str, float]  # case id -> score in 0..1 (mean over samples), evaluated cases
    errors: set[str] = field(default_factory=set)  # cases whose request failed (unanswered)
    service: dict[str, Any] | None = None
    counts: dict[str, int] = field(default_factory=dict)  # errors, truncated, unparsable...
    no_cases: str | None = None  # why per-case scores are missing (no results file)
    version: str | None = None  # the dataset version (data, prompt, evaluator)

    @property
    def headline(self) -> str:
        return metrics.headline_metric(self.samples)


@dataclass
class RunView:
    label: str  # as the user named it
    path: Path  # the summary json read
    tasks: list[TaskView]


# -- reading runs ---------------------------------------------------------------------------


def find_summary(path: Path, what: str = "run") -> Path:
    """A summary json file, or the latest summary_*.json of a work dir (or its summary/)."""
    if path.is_file():
        return path
    if path.is_dir():
        found = sorted((path / "summary").glob("summary_*.json")) or sorted(
            path.glob("summary_*.json")
        )
        if found:
            return found[-1]
        runs = sorted(p for p in path.iterdir() if (p / "summary").is_dir())
        hint = f" (runs in it: {', '.join(r.name for r in runs[-3:])})" if runs else ""
        raise ServebenchError(f"{what} {path}: no summary/summary_*.json in this folder{hint}")
    raise ServebenchError(f"{what} {path}: no such file or folder")


def load_run(path: str | Path, what: str = "run") -> RunView:
    summary_path = find_summary(Path(path), what)
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ServebenchError(f"{what} {summary_path}: cannot read a summary ({exc})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("tasks"), list):
        raise ServebenchError(
            f"{what} {summary_path}: not a servebench summary (expected the summary_*.json "
            f"written in <work dir>/<run>/summary/)"
        )
    root = summary_path.parent.parent
    if not (root / "results").is_dir() and summary.get("work_dir"):
        root = Path(summary["work_dir"])  # a summary copied away from its run
    tasks = [_task_from_files(task, root) for task in summary["tasks"] if isinstance(task, dict)]
    return RunView(str(path), summary_path, tasks)


def _task_from_files(task: Mapping[str, Any], root: Path) -> TaskView:
    model_config = str(task.get("model_config") or task.get("model"))
    dataset_config = str(task.get("dataset_config") or task.get("dataset"))
    scores: dict[str, float] = {}
    errors: set[str] = set()
    results = root / "results" / model_config / f"{dataset_config}.json"
    if results.is_file():
        data = json.loads(results.read_text(encoding="utf-8"))
        for case in data.get("cases", []):
            verdict = Verdict.from_dict(case)
            scores[case["case"]] = verdict.score
            if verdict.status == "error":
                errors.add(case["case"])
    counts = task.get("counts") or {}
    no_cases = None if results.is_file() else f"no per-case results at {results}"
    return TaskView(
        model=str(task.get("model")),
        model_config=model_config,
        dataset=str(task.get("dataset")),
        dataset_config=dataset_config,
        samples=int(task.get("samples") or 1),
        complete=bool(task.get("complete", True)),
        metrics=dict(task.get("metrics") or {}),
        cases=int(counts.get("cases") or len(scores)),
        scores=scores,
        errors=errors,
        service=task.get("service"),
        counts={k: int(v) for k, v in counts.items() if isinstance(v, int)},
        no_cases=no_cases,
        version=task.get("version"),
    )


def task_from_result(result: Any, service: Mapping[str, Any] | None) -> TaskView:
    """A TaskResult of the running session, as a comparison reads it."""
    return TaskView(
        model=result.model,
        model_config=result.model_name,
        dataset=result.dataset,
        dataset_config=result.dataset_name,
        samples=result.samples,
        complete=result.complete,
        metrics=result.figures(),
        cases=len(result.case_ids),
        scores=result.per_case_scores(),
        errors={c for c, v in result.cases.items() if v.status == "error"},
        service=dict(service) if service else None,
        counts=result.counts(),
        version=result.version,
    )


# -- comparing ------------------------------------------------------------------------------

SERVICE_FIGURES = (
    ("requests", ("requests",)),
    ("errors", ("errors",)),
    ("retries", ("retries",)),
    ("latency p50 s", ("latency_s", "p50")),
    ("latency p90 s", ("latency_s", "p90")),
    ("latency p99 s", ("latency_s", "p99")),
    ("ttft p50 s", ("ttft_s", "p50")),
    ("ttft p99 s", ("ttft_s", "p99")),
    ("itl p50 s", ("itl_s", "p50")),
    ("completion tokens p50", ("completion_tokens", "p50")),
    ("completion tokens total", ("completion_tokens", "total")),
    ("truncated share", ("truncated_share",)),
    ("tokens/s per request p50", ("tokens_per_s_request", "p50")),
    ("tokens/s", ("tokens_per_s",)),
    ("wall s", ("wall_s",)),
    ("concurrency", ("concurrency",)),
)


def _dig(data: Mapping[str, Any] | None, path: Sequence[str]) -> float | None:
    value: Any = data
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def service_diff(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> list[dict]:
    out = []
    for name, path in SERVICE_FIGURES:
        va, vb = _dig(a, path), _dig(b, path)
        if va is None and vb is None:
            continue
        change = None if va is None or vb is None else vb - va
        ratio = vb / va if change is not None and va else None
        out.append({"figure": name, "a": va, "b": vb, "change": change, "ratio": ratio})
    return out


SUMMARY_COUNTS = ("errors", "truncated", "unparsable")


def summary_figures(a: TaskView, b: TaskView) -> list[dict[str, Any]]:
    """The summary table's figures of both runs side by side: every metric, then counts."""
    out = []
    for name in [*a.metrics, *(m for m in b.metrics if m not in a.metrics)]:
        out.append({"figure": name, "a": a.metrics.get(name), "b": b.metrics.get(name)})
    for name in SUMMARY_COUNTS:
        if name in a.counts or name in b.counts:
            out.append({"figure": name, "a": a.counts.get(name), "b": b.counts.get(name)})
    return out


def compare_tasks(a: TaskView, b: TaskView) -> dict[str, Any]:
    """One (model, dataset): b is the new run, a the reference; differences are b - a."""
    answered_a = set(a.scores) - a.errors
    answered_b = set(b.scores) - b.errors
    common = [c for c in a.scores if c in answered_a and c in answered_b]
    x = [a.scores[c] for c in common]
    y = [b.scores[c] for c in common]
    test = metrics.paired_significance(y, x)  # diff = mean(b) - mean(a), in points
    worse = [c for c in common if b.scores[c] < a.scores[c]]
    better = [c for c in common if b.scores[c] > a.scores[c]]
    headline = a.headline if a.headline in a.metrics else next(iter(a.metrics), a.headline)
    before, after = a.metrics.get(headline), b.metrics.get(headline)
    return {
        "model": b.model,
        "model_a": a.model,
        "dataset": b.dataset,
        "dataset_config": b.dataset_config,
        "metric": headline,
        "a": before,
        "b": after,
        "change": None if before is None or after is None else after - before,
        "complete": a.complete and b.complete,
        "paired": {**test, "alpha": metrics.SIGNIFICANCE_LEVEL},
        "common": len(common),
        "right_to_wrong": worse,
        "wrong_to_right": better,
        "only_in_a": sorted(set(a.scores) - set(b.scores)),
        "only_in_b": sorted(set(b.scores) - set(a.scores)),
        "unanswered_in_a": sorted(a.errors & set(b.scores)),
        "unanswered_in_b": sorted(b.errors & set(a.scores)),
        "not_evaluated_a": a.cases - len(a.scores),
        "not_evaluated_b": b.cases - len(b.scores),
        "significantly_worse": bool(test["significant"] and test["diff"] < 0),
        "notes": [f"{side}: {t.no_cases}" for side, t in (("A", a), ("B", b)) if t.no_cases]
        + (
            [
                f"dataset version {a.version} in A, {b.version} in B: the data, prompt or "
                f"evaluator changed, not only the server"
            ]
            if a.version and b.version and a.version != b.version
            else []
        ),
        "figures": summary_figures(a, b),
        "service": service_diff(a.service, b.service),
    }


def pair_tasks(
    a: Sequence[TaskView], b: Sequence[TaskView]
) -> tuple[list[tuple[TaskView, TaskView]], list[str]]:
    """Tasks of a and b for the same (model, dataset config); when the runs share none and
    each has one model, the same dataset (a model renamed between deploys). Also notes on
    what only one run has."""
    by_key = {(t.model_config, t.dataset_config): t for t in a}
    pairs = [
        (by_key[(t.model_config, t.dataset_config)], t)
        for t in b
        if (t.model_config, t.dataset_config) in by_key
    ]
    notes: list[str] = []
    models_a = {t.model_config for t in a}
    models_b = {t.model_config for t in b}
    if not pairs and len(models_a) == 1 and len(models_b) == 1:
        by_dataset = {t.dataset_config: t for t in a}
        pairs = [(by_dataset[t.dataset_config], t) for t in b if t.dataset_config in by_dataset]
        if pairs:
            notes.append(
                f"model {next(iter(models_a))} (A) compared with model {next(iter(models_b))} (B)"
            )
    paired_a = {id(p[0]) for p in pairs}
    paired_b = {id(p[1]) for p in pairs}
    for label, tasks, paired in (("A", a, paired_a), ("B", b, paired_b)):
        alone = [f"{t.model}/{t.dataset}" for t in tasks if id(t) not in paired]
        if alone:
            notes.append(f"only in {label}: {', '.join(alone)}")
    return pairs, notes


def pooled_pairs(pairs: Sequence[tuple[TaskView, TaskView]]) -> list[tuple[TaskView, TaskView]]:
    """For a dataset split in subsets (MMLU's subjects: configs named group/subject), the
    whole group as one more pair, every case of both sides once ("subject/case"), its
    figure the mean over all cases (the summary's weighted_average). No service figures."""
    groups: dict[tuple[str, str], list[tuple[TaskView, TaskView]]] = {}
    for a, b in pairs:
        parent, sep, _ = b.dataset_config.rpartition("/")
        if sep and a.samples == b.samples:
            groups.setdefault((b.model_config, parent), []).append((a, b))
    pooled = []
    for (_, parent), members in groups.items():
        if len(members) < 2:
            continue
        sides = []
        for side in (0, 1):
            tasks = [m[side] for m in members]
            scores = {
                f"{t.dataset_config.rpartition('/')[2]}/{c}": v
                for t in tasks
                for c, v in t.scores.items()
            }
            errors = {f"{t.dataset_config.rpartition('/')[2]}/{c}" for t in tasks for c in t.errors}
            first = tasks[0]
            sides.append(
                TaskView(
                    model=first.model,
                    model_config=first.model_config,
                    dataset=f"{parent} (all {len(tasks)} subsets)",
                    dataset_config=parent,
                    samples=first.samples,
                    complete=all(t.complete for t in tasks),
                    metrics={first.headline: 100 * sum(scores.values()) / len(scores)}
                    if scores
                    else {},
                    cases=sum(t.cases for t in tasks),
                    scores=scores,
                    errors=errors,
                )
            )
        pooled.append((sides[0], sides[1]))
    return pooled


def compare_runs(a: RunView, b: RunView) -> dict[str, Any]:
    pairs, notes = pair_tasks(a.tasks, b.tasks)
    rows = [compare_tasks(x, y) for x, y in [*pairs, *pooled_pairs(pairs)]]
    return {
        "a": {"label": a.label, "summary": str(a.path)},
        "b": {"label": b.label, "summary": str(b.path)},
        "notes": notes,
        "datasets": rows,
        "significantly_worse": [
            f"{r['model']}/{r['dataset']}" for r in rows if r["significantly_worse"]
        ],
    }


# -- showing ---------------------------------------------------------------------------------


def _ids(ids: Sequence[str], limit: int | None = SHOWN_IDS) -> str:
    if limit is None or len(ids) <= limit:
        return ", ".join(ids)
    return ", ".join(ids[:limit]) + f", ... ({len(ids) - limit} more)"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def verdict_text(row: Mapping[str, Any]) -> str:
    p = row["paired"]
    test = "McNemar" if p["test"] == "mcnemar" else "paired bootstrap"
    if row["common"] == 0:
        return "no case answered by both runs"
    if not p["significant"]:
        return f"not significant ({test} p={p['p_value']:.3g}, {row['common']} cases)"
    way = "WORSE" if p["diff"] < 0 else "BETTER"
    return f"significantly {way} ({test} p={p['p_value']:.3g}, {row['common']} cases)"


CASE_LISTS = (
    ("right_to_wrong", "right->wrong"),
    ("wrong_to_right", "wrong->right"),
    ("only_in_a", "only in A"),
    ("only_in_b", "only in B"),
    ("unanswered_in_a", "request failed in A"),
    ("unanswered_in_b", "request failed in B"),
)


def flip_lines(
    row: Mapping[str, Any], limit: int | None = SHOWN_IDS, indent: str = "  "
) -> list[str]:
    """The accuracy line of one (model, dataset), its flips and its missing cases."""
    change = "-" if row["change"] is None else format(row["change"], "+.2f")
    lines = [
        f"{row['dataset']} / {row['model']}: {row['metric']} {_num(row['a'])} -> "
        f"{_num(row['b'])} ({change}); {verdict_text(row)}"
    ]
    for key, label in CASE_LISTS:
        ids = row[key]
        if ids or key in ("right_to_wrong", "wrong_to_right"):
            lines.append(f"{indent}{label}: {len(ids)}" + (f": {_ids(ids, limit)}" if ids else ""))
    for key, label in (("not_evaluated_a", "A"), ("not_evaluated_b", "B")):
        if row[key]:
            lines.append(f"{indent}not evaluated in {label}: {row[key]} cases")
    if not row["complete"]:
        lines.append(f"{indent}a run is partial: the figures cover the evaluated cases only")
    lines += [f"{indent}{note}" for note in row.get("notes", [])]
    return lines


TERMINAL_SERVICE = (
    "errors",
    "retries",
    "latency p50 s",
    "latency p99 s",
    "ttft p50 s",
    "completion tokens total",
    "truncated share",
    "tokens/s",
)
_COUNTS = ("requests", "errors", "retries", "completion tokens total")


def figure_line(row: Mapping[str, Any], indent: str = "  ") -> list[str]:
    """The summary's figures of both runs, A -> B, on one line."""
    parts = [
        f"{f['figure']} {_num(f['a'], 0 if f['figure'] in SUMMARY_COUNTS else 2)}"
        f"->{_num(f['b'], 0 if f['figure'] in SUMMARY_COUNTS else 2)}"
        for f in row.get("figures", [])
    ]
    return [f"{indent}summary A->B: " + "; ".join(parts)] if parts else []


def service_lines(row: Mapping[str, Any], indent: str = "  ") -> list[str]:
    """The main service figures, A -> B, on one line (all of them are in json and html)."""
    parts = []
    for s in row["service"]:
        if s["figure"] not in TERMINAL_SERVICE:
            continue
        digits = 0 if s["figure"] in _COUNTS else 3
        ratio = f" x{s['ratio']:.2f}" if s["ratio"] is not None and s["change"] else ""
        parts.append(f"{s['figure']} {_num(s['a'], digits)}->{_num(s['b'], digits)}{ratio}")
    return [f"{indent}service A->B: " + "; ".join(parts)] if parts else []


def render_text(report: Mapping[str, Any]) -> str:
    lines = [f"A: {report['a']['label']} ({report['a']['summary']})"]
    lines.append(f"B: {report['b']['label']} ({report['b']['summary']})")
    lines += [f"note: {n}" for n in report["notes"]]
    if not report["datasets"]:
        lines.append("the two runs share no (model, dataset): nothing to compare")
    for row in report["datasets"]:
        lines.append("")
        lines += flip_lines(row)
        lines += figure_line(row)
        lines += service_lines(row)
    worse = report["significantly_worse"]
    lines.append("")
    lines.append(
        f"significantly worse: {', '.join(worse)}"
        if worse
        else "no dataset got significantly worse"
    )
    return "\n".join(lines)


def render_html(report: Mapping[str, Any]) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>servebench compare</title>",
        "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:first-child,th:first-child"
        "{text-align:left}.worse{color:#b00;font-weight:bold}.better{color:#070}"
        "details{margin:.2em 0}code{word-break:break-all}</style></head><body>",
        "<h1>servebench: run comparison</h1>",
        f"<p>A: <code>{e(report['a']['summary'])}</code><br>B: <code>{e(report['b']['summary'])}</code></p>",
    ]
    parts += [f"<p>{e(n)}</p>" for n in report["notes"]]
    parts.append(
        "<table><tr><th>dataset / model</th><th>metric</th><th>A</th><th>B</th><th>B - A</th>"
        "<th>right&rarr;wrong</th><th>wrong&rarr;right</th><th>cases</th><th>test</th><th>p</th>"
        "<th>verdict</th></tr>"
    )
    for row in report["datasets"]:
        p = row["paired"]
        css = "worse" if row["significantly_worse"] else ("better" if p["significant"] else "")
        verdict = (
            "worse" if row["significantly_worse"] else ("better" if p["significant"] else "same")
        )
        parts.append(
            f"<tr class='{css}'><td>{e(row['dataset'])} / {e(row['model'])}</td><td>{e(row['metric'])}</td>"
            f"<td>{_num(row['a'])}</td><td>{_num(row['b'])}</td>"
            f"<td>{'-' if row['change'] is None else format(row['change'], '+.2f')}</td>"
            f"<td>{len(row['right_to_wrong'])}</td><td>{len(row['wrong_to_right'])}</td>"
            f"<td>{row['common']}</td><td>{e(p['test'])}</td><td>{p['p_value']:.3g}</td>"
            f"<td>{verdict}</td></tr>"
        )
    parts.append("</table>")
    for row in report["datasets"]:
        parts.append(f"<h2>{e(row['dataset'])} / {e(row['model'])}</h2>")
        parts.append(f"<p>{e(verdict_text(row))}</p>")
        for key, label in (("not_evaluated_a", "A"), ("not_evaluated_b", "B")):
            if row[key]:
                parts.append(f"<p>not evaluated in {label}: {row[key]} cases</p>")
        if row["figures"]:
            parts.append("<table><tr><th>summary figure</th><th>A</th><th>B</th></tr>")
            for f in row["figures"]:
                digits = 0 if f["figure"] in SUMMARY_COUNTS else 2
                parts.append(
                    f"<tr><td>{e(f['figure'])}</td><td>{_num(f['a'], digits)}</td>"
                    f"<td>{_num(f['b'], digits)}</td></tr>"
                )
            parts.append("</table>")
        for key, label in CASE_LISTS:
            ids = row[key]
            if ids:
                parts.append(
                    f"<details><summary>{e(label)}: {len(ids)}</summary>"
                    f"<code>{e(', '.join(ids))}</code></details>"
                )
        if row["service"]:
            parts.append(
                "<table><tr><th>service figure</th><th>A</th><th>B</th><th>B - A</th><th>B / A</th></tr>"
            )
            for s in row["service"]:
                digits = 0 if s["figure"] in _COUNTS else 4
                parts.append(
                    f"<tr><td>{e(s['figure'])}</td><td>{_num(s['a'], digits)}</td>"
                    f"<td>{_num(s['b'], digits)}</td><td>{_num(s['change'], digits)}</td>"
                    f"<td>{_num(s['ratio'], 2)}</td></tr>"
                )
            parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


# -- pytest --sb-baseline RUN ---------------------------------------------------------------


def baseline_path(config: Any) -> Path | None:
    """The run named by --sb-baseline (relative to where pytest was started), checked at
    configure time so that a wrong path stops the run before any request."""
    try:
        raw = config.getoption("sb_baseline")
    except ValueError:
        return None
    if not raw:
        return None
    path = Path(raw)
    if not path.is_absolute():
        path = config.invocation_params.dir / path
    return find_summary(path, "--sb-baseline")


def baseline_lines(
    path: Path, results: Sequence[Any], service: Mapping[str, Mapping[str, Any] | None]
) -> list[str]:
    """The terminal lines comparing this session's tasks with the baseline run, case by
    case. Per-case scores of the baseline are read now, at the end, not kept during the run."""
    run = load_run(path, "--sb-baseline")
    current = [task_from_result(r, service.get(r.key)) for r in results]
    pairs, notes = pair_tasks(run.tasks, current)
    lines = [f"baseline (A): {run.path}; this run (B)"]
    lines += [f"note: {n}" for n in notes]
    if not pairs:
        lines.append("the baseline shares no (model, dataset) with this run: nothing compared")
    for a, b in [*pairs, *pooled_pairs(pairs)]:
        row = compare_tasks(a, b)
        lines += flip_lines(row)
        lines += figure_line(row)
        lines += service_lines(row)
    return lines


# -- the command ----------------------------------------------------------------------------


def main(argv: Iterable[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_servebench compare",
        description="Compare two runs case by case (A: the reference, B: the new run).",
    )
    parser.add_argument("run_a", help="the reference run: a work dir or a summary_*.json")
    parser.add_argument("run_b", help="the new run: a work dir or a summary_*.json")
    parser.add_argument("--html", metavar="FILE", help="also write the comparison as html")
    parser.add_argument("--json", metavar="FILE", help="also write the comparison as json")
    parser.add_argument(
        "--fail-on-worse",
        action="store_true",
        help="exit 1 when any dataset got significantly worse (paired test, p < 0.05)",
    )
    args = parser.parse_args(list(argv))
    try:
        report = compare_runs(load_run(args.run_a, "RUN_A"), load_run(args.run_b, "RUN_B"))
    except ServebenchError as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2
    print(render_text(report))
    if args.html:
        Path(args.html).write_text(render_html(report), encoding="utf-8")
        print(f"html: {args.html}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"json: {args.json}")
    if args.fail_on_worse and report["significantly_worse"]:
        return 1
    return 0
