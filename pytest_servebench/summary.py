"""The summary table in AISBench's form and its files (csv, md, txt, json)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import metrics
from .aggregate import COUNT_ROWS, TaskResult

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
            elif not r.complete:
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
    return [*HEADER, *models], rows


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


def write_summary(base: Path, results: Sequence[TaskResult], extra: dict[str, Any]) -> list[Path]:
    header, rows = build_rows(results)
    base.parent.mkdir(parents=True, exist_ok=True)
    files = {
        ".csv": render_csv(header, rows),
        ".md": render_markdown(header, rows),
        ".txt": render_text(header, rows) + "\n",
        ".json": json.dumps(
            {
                **extra,
                "table": {"header": header, "rows": rows},
                "tasks": [r.to_json(include_cases=False) for r in results],
                "comparisons": comparisons(results),
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
