"""The summary table in AISBench's form and its files (csv, md, txt, json)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_servebench.catalog.datasets import group_version
from pytest_servebench.scoring import metrics
from pytest_servebench.scoring.aggregate import COUNT_ROWS, TaskResult

HEADER = ("dataset", "version", "metric", "mode")


def build_rows(results: Sequence[TaskResult]) -> tuple[list[str], list[list[str]]]:
    """Columns: dataset, version, metric, mode, then one per model (in run order)."""
    models: list[str] = []
    for r in results:
        if r.model not in models:
            models.append(r.model)
    row_keys: list[tuple[str, str, str, str]] = []
    cells: dict[tuple[tuple[str, str, str, str], str], str] = {}
    for r in results:
        figures = r.figures()
        counts = r.counts()
        names = list(figures) or (["served"] if r.run_mode == "infer" else ["accuracy"])
        for metric in [*names, *COUNT_ROWS]:
            key = (r.dataset, r.version, metric, r.mode)
            if key not in row_keys:
                row_keys.append(key)
            if metric in COUNT_ROWS:
                value = str(counts[metric])
            elif metric == "served":
                value = f"{counts['evaluated'] - counts['errors']}/{counts['cases']}"
            elif not r.complete or metric not in figures:
                value = "-"  # never show a partial figure as if it covered the dataset
            else:
                value = f"{figures[metric]:.2f}"
            cells[(key, r.model)] = value
    # Metric rows of one dataset first, count rows after them.
    order = {k: i for i, k in enumerate(row_keys)}
    first_seen: dict[tuple[str, str], int] = {}
    for i, k in enumerate(row_keys):
        first_seen.setdefault((k[0], k[1]), i)
    row_keys.sort(key=lambda k: (first_seen[(k[0], k[1])], k[2] in COUNT_ROWS, order[k]))
    rows = [[*key, *(cells.get((key, m), "-") for m in models)] for key in row_keys]
    _add_group_rows(results, models, rows)
    return [*HEADER, *models], rows


def _add_group_rows(
    results: Sequence[TaskResult], models: list[str], rows: list[list[str]]
) -> None:
    """After the rows of a split dataset's subsets: the group's averages, weighted by case
    count (equal to the merged run's figure) and unweighted (AISBench's naive_average), the
    group's summed count rows, then a naive_average row per category whose subsets all ran
    (mmlu-humanities, ceval-hard...). A group with a partial subset shows '-'."""
    groups: dict[tuple[str, str], list[TaskResult]] = {}
    categories: dict[tuple[str, str], Sequence[tuple[str, tuple[str, ...]]]] = {}
    for r in results:
        if r.group is not None:
            key = (r.group.name, r.group.abbr)
            groups.setdefault(key, []).append(r)
            categories.setdefault(key, r.group.categories)
    for (parent, abbr), members in groups.items():
        member_rows = {(r.dataset, r.version) for r in members}
        # one version per subset (members hold one result per model)
        version = group_version({r.dataset_name: r.version for r in members}.values())
        first = members[0]
        names = list(first.figures())
        if not names:
            names = ["served"] if first.run_mode == "infer" else ["accuracy"]
        labels: list[tuple[str, str, str]] = []  # (row metric, figure, how)
        for i, name in enumerate(names):
            if name == "served":
                labels.append(("served", name, "sum"))
                continue
            prefix = "" if i == 0 else f"{name} "
            labels.append((f"{prefix}weighted_average", name, "weighted"))
            labels.append((f"{prefix}naive_average", name, "naive"))
        labels += [(c, c, "count") for c in COUNT_ROWS]
        new_rows = []
        for metric, name, how in labels:
            row = [abbr, version, metric, first.mode]
            for model in models:
                mine = [r for r in members if r.model == model]
                row.append(_group_cell(mine, name, how) if mine else "-")
            new_rows.append(row)
        ran = {_subset(r) for r in members}
        for category, subsets in categories[(parent, abbr)]:
            if not ran.issuperset(subsets):
                continue  # a run of some subjects only: the category is not measured
            inside = [r for r in members if _subset(r) in subsets]
            category_version = group_version({r.dataset_name: r.version for r in inside}.values())
            for metric, name, how in labels:
                if how != "naive":
                    continue
                row = [category, category_version, metric, first.mode]
                for model in models:
                    mine = [r for r in inside if r.model == model]
                    complete = len(mine) == len(subsets)
                    row.append(_group_cell(mine, name, how) if complete else "-")
                new_rows.append(row)
        last = max((i for i, row in enumerate(rows) if (row[0], row[1]) in member_rows), default=-1)
        rows[last + 1 : last + 1] = new_rows


def _subset(result: TaskResult) -> str:
    return result.group.subset if result.group is not None else ""


def _group_cell(members: list[TaskResult], name: str, how: str) -> str:
    if how == "count":
        return str(sum(r.counts()[name] for r in members))
    if how == "sum":
        counts = [r.counts() for r in members]
        served = sum(c["evaluated"] - c["errors"] for c in counts)
        return f"{served}/{sum(c['cases'] for c in counts)}"
    if not all(r.complete for r in members):
        return "-"
    figures = [r.figures() for r in members]
    if not all(name in f for f in figures):
        return "-"
    if how == "naive":
        return f"{sum(f[name] for f in figures) / len(figures):.2f}"
    sizes = [len(r.case_ids) for r in members]
    total = sum(sizes)
    if not total:
        return "-"
    return f"{sum(f[name] * n for f, n in zip(figures, sizes)) / total:.2f}"


def render_text(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(values: Sequence[str]) -> str:
        parts = [
            str(v).ljust(w) if i < len(HEADER) else str(v).rjust(w)
            for i, (v, w) in enumerate(zip(values, widths))
        ]
        return "    ".join(parts).rstrip()

    out = [line(header), "-" * len(line(header))]
    out += [line(r) for r in rows]
    return "\n".join(out)


def render_markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < len(HEADER) else "---:" for i in range(len(header))) + "|",
    ]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def render_csv(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def comparisons(results: Sequence[TaskResult]) -> list[dict[str, Any]]:
    """Paired significance between every two models on the same dataset (same cases)."""
    out = []
    by_dataset: dict[str, list[TaskResult]] = {}
    for r in results:
        if r.complete and r.run_mode != "infer":
            by_dataset.setdefault(r.dataset_name, []).append(r)
    for dataset, group in by_dataset.items():
        for i in range(len(group)):
            for j in range(i + 1, len(group)):
                a, b = group[i].per_case_scores(), group[j].per_case_scores()
                common = [c for c in group[i].case_ids if c in a and c in b]
                if not common:
                    continue
                test = metrics.paired_significance([a[c] for c in common], [b[c] for c in common])
                out.append({"dataset": dataset, "a": group[i].model, "b": group[j].model, **test})
    return out


def write_summary(
    base: Path,
    results: Sequence[TaskResult],
    table: tuple[Sequence[str], Sequence[Sequence[str]]],
    pairs: Sequence[dict[str, Any]],
    extra: dict[str, Any],
    service: Mapping[str, dict[str, Any] | None] | None = None,
) -> list[Path]:
    """The table's files, from the table (build_rows()) and comparisons() made once per
    session; `service` (task key -> service.task_service()) adds each task's service figures
    to the json and a second table to the md and txt files."""
    from pytest_servebench.report.service import (
        SERVICE_NOTE,
        render_service_markdown,
        render_service_text,
        service_rows,
    )

    service = service or {}
    header, rows = table
    srows = service_rows((r.dataset, r.model, service.get(r.key)) for r in results)
    base.parent.mkdir(parents=True, exist_ok=True)
    files = {
        ".csv": render_csv(header, rows),
        ".md": render_markdown(header, rows)
        + (f"\n{render_service_markdown(srows)}\n{SERVICE_NOTE}\n" if srows else ""),
        ".txt": render_text(header, rows)
        + "\n"
        + (f"\n{render_service_text(srows)}\n{SERVICE_NOTE}\n" if srows else ""),
        ".json": json.dumps(
            {
                **extra,
                "table": {"header": list(header), "rows": [list(r) for r in rows]},
                "tasks": [
                    {**r.to_json(include_cases=False), "service": service.get(r.key)}
                    for r in results
                ],
                "comparisons": list(pairs),
            },
            indent=2,
        ),
    }
    written = []
    for suffix, text in files.items():
        path = base.with_suffix(suffix)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def comparison_lines(comparisons: Sequence[dict[str, Any]]) -> list[str]:
    """Terminal lines for comparisons(): one per pair of models on a dataset."""
    if not comparisons:
        return []
    lines = ["paired comparisons (same cases; significant when p < 0.05):"]
    for c in comparisons:
        test = "McNemar" if c["test"] == "mcnemar" else "bootstrap"
        verdict = "SIGNIFICANT" if c["significant"] else "not significant"
        lines.append(
            f"  {c['dataset']}: {c['a']} vs {c['b']}: {c['diff']:+.2f} points, "
            f"{test} p={c['p_value']:.3g}, {verdict} ({c['n']} cases)"
        )
    return lines
