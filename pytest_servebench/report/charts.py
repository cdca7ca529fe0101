"""Inline SVG charts of the html report: accuracy per dataset and model (one row per dataset,
readable at MMLU's 57 subjects), each model's latency distribution (CDF), and each model's
accuracy by output length (where truncation hurts).

Plain SVG with presentation attributes: no script, no style attribute, no external
reference; every label escaped."""

from __future__ import annotations

import html
import math
from array import array
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_servebench.scoring import metrics
from pytest_servebench.scoring.aggregate import TaskResult

PALETTE = (  # Okabe-Ito: distinguishable with the common colour-vision deficiencies
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#F0E442",
    "#000000",
)
FONT = 'font-family="Helvetica, Arial, sans-serif" font-size="11"'
CDF_POINTS = 200  # points per curve: the chart stays small whatever the request count


def esc(value: Any) -> str:
    return "" if value is None else html.escape(str(value), quote=True)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def headline(result: TaskResult) -> tuple[str, float | None, tuple[float, float] | None]:
    """The figure a chart shows for a task: accuracy (avg@k with k samples), its 95 % CI;
    None for a partial task or an infer run."""
    name = metrics.headline_metric(result.samples)
    if not result.complete or result.run_mode == "infer":
        return name, None, None
    value = result.figures().get(name)
    return name, value, result.intervals().get(name)


def _legend(models: Sequence[str], x: float, y: float) -> list[str]:
    out = []
    for m, model in enumerate(models):
        ly = y + m * 18
        out.append(
            f'<rect x="{x}" y="{ly}" width="12" height="12" fill="{PALETTE[m % len(PALETTE)]}"/>'
            f'<text x="{x + 18}" y="{ly + 10}" fill="#222">{esc(model)}</text>'
        )
    return out


# -- accuracy per dataset and model ---------------------------------------------------------


def accuracy_chart(results: Sequence[TaskResult]) -> str:
    """Horizontal bars: one row per dataset (its full name, up to 40 characters, on the left),
    one bar per model, 95 % CI whiskers, the value at the bar's end. The picture grows in
    height, not width, so 57 subjects stay readable (the report scrolls it)."""
    datasets: list[str] = []
    models: list[str] = []
    for r in results:
        if r.dataset not in datasets:
            datasets.append(r.dataset)
        if r.model not in models:
            models.append(r.model)
    if not datasets or all(headline(r)[1] is None for r in results):
        return ""
    by_key = {(r.dataset, r.model): r for r in results}
    bar = 14 if len(models) <= 3 else 10
    row = len(models) * bar + 8
    label_chars = min(40, max(len(d) for d in datasets))
    left = int(label_chars * 6.2) + 14
    plot_w = 420
    top = 24
    plot_h = len(datasets) * row
    legend_x = left + plot_w + 40
    width = legend_x + 26 + 7 * max(len(m) for m in models)
    height = top + plot_h + 30

    def x(v: float) -> float:
        return left + plot_w * max(0.0, min(100.0, v)) / 100.0

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="sb-accuracy-chart" role="img" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" {FONT}>',
        "<title>Accuracy (%) per dataset and model, with 95% confidence intervals</title>",
    ]
    for tick in range(0, 101, 20):
        tx = x(tick)
        out.append(
            f'<line x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" y2="{top + plot_h}" stroke="#e3e3e3" '
            f'stroke-width="1"/><text x="{tx:.1f}" y="{top - 8}" text-anchor="middle" '
            f'fill="#444">{tick}</text>'
            f'<text x="{tx:.1f}" y="{top + plot_h + 14}" text-anchor="middle" '
            f'fill="#444">{tick}</text>'
        )
    out.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h + 27}" text-anchor="middle" '
        f'fill="#222">accuracy (%)</text>'
    )
    for d, dataset in enumerate(datasets):
        y0 = top + d * row + 4
        if d % 2:
            out.append(
                f'<rect x="0" y="{y0 - 4}" width="{left + plot_w}" height="{row}" fill="#f6f6f6"/>'
            )
        out.append(
            f'<text x="{left - 6}" y="{y0 + len(models) * bar / 2 + 4:.1f}" text-anchor="end" '
            f'fill="#222">{esc(_short(dataset, label_chars))}<title>{esc(dataset)}</title></text>'
        )
        for m, model in enumerate(models):
            r = by_key.get((dataset, model))
            if r is None:
                continue
            y = y0 + m * bar
            cy = y + (bar - 2) / 2
            name, value, ci = headline(r)
            if value is None:
                why = (
                    f"partial: {r.evaluated} of {len(r.case_ids)} cases evaluated"
                    if r.run_mode != "infer"
                    else "infer mode: no scores"
                )
                out.append(
                    f'<text class="sb-bar-missing" x="{left + 4}" y="{cy + 4:.1f}" '
                    f'fill="#999">n/a<title>{esc(model)} on '
                    f"{esc(dataset)}: {esc(why)}</title></text>"
                )
                continue
            tip = f"{model} on {dataset}: {name} {value:.2f}"
            if ci:
                tip += f" (95% CI {ci[0]:.2f} to {ci[1]:.2f})"
            tip += f", {len(r.case_ids)} cases"
            out.append(
                f'<rect class="sb-bar" x="{left}" y="{y:.1f}" width="{x(value) - left:.1f}" '
                f'height="{bar - 2}" fill="{PALETTE[m % len(PALETTE)]}" '
                f'data-model="{esc(model)}" data-dataset="{esc(dataset)}" '
                f'data-value="{value:.2f}"><title>{esc(tip)}</title></rect>'
            )
            end = x(value)
            if ci:
                lo, hi = x(ci[0]), x(ci[1])
                end = max(end, hi)
                out.append(
                    f'<path d="M{lo:.1f} {cy:.1f}H{hi:.1f}M{lo:.1f} {cy - 3:.1f}V{cy + 3:.1f}'
                    f'M{hi:.1f} {cy - 3:.1f}V{cy + 3:.1f}" stroke="#333" stroke-width="1" '
                    f'fill="none"/>'
                )
            out.append(
                f'<text x="{end + 4:.1f}" y="{cy + 4:.1f}" fill="#222" font-size="10">'
                f"{value:.1f}</text>"
            )
    out += _legend(models, legend_x, top)
    out.append("</svg>")
    return "".join(out)


# -- latency distribution per model ---------------------------------------------------------


def read_latencies(paths: Iterable[Path]) -> array:
    """The latencies (s) of the served requests in prediction files, sorted: one pass per
    file, 8 bytes a request (the latest record per case and sample, like the summary)."""
    from pytest_servebench.report.service import read_requests

    values = array("d")
    for path in paths:
        requests = read_requests(path)
        values.extend(
            requests.latency[i]
            for i in range(len(requests.ok))
            if requests.ok[i] and requests.first[i] and not math.isnan(requests.latency[i])
        )
    return array("d", sorted(values))


def _cdf_points(values: Sequence[float], points: int = CDF_POINTS) -> list[tuple[float, float]]:
    """(latency, share of requests at or below it), at most `points` steps of the empirical
    CDF, always including the first and the last value."""
    n = len(values)
    if n == 0:
        return []
    picks = sorted({min(n - 1, round(i * (n - 1) / (points - 1))) for i in range(points)})
    return [(values[i], (i + 1) / n) for i in picks]


def latency_cdf_chart(latencies: Mapping[str, Sequence[float]]) -> str:
    """One curve per model: the share of its requests answered within x seconds, with the
    p50/p90/p99 marks in each curve's tooltip. x is linear from 0 to the largest latency."""
    from pytest_servebench.report.service import percentile

    series = {m: v for m, v in latencies.items() if len(v)}
    if not series:
        return ""
    models = list(series)
    top_value = max(v[-1] for v in series.values()) or 1.0
    left, top, plot_w, plot_h = 48, 14, 460, 220
    legend_x = left + plot_w + 24
    width = legend_x + 26 + 7 * max(len(m) for m in models) + 120
    height = top + plot_h + 40

    def x(v: float) -> float:
        return left + plot_w * v / top_value

    def y(share: float) -> float:
        return top + plot_h * (1 - share)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="sb-latency-cdf" role="img" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" {FONT}>',
        "<title>Latency distribution per model: share of requests answered within x s</title>",
    ]
    for tick in (0, 0.25, 0.5, 0.75, 0.9, 1.0):
        out.append(
            f'<line x1="{left}" y1="{y(tick):.1f}" x2="{left + plot_w}" y2="{y(tick):.1f}" '
            f'stroke="#e3e3e3" stroke-width="1"/><text x="{left - 6}" y="{y(tick) + 4:.1f}" '
            f'text-anchor="end" fill="#444">{tick:g}</text>'
        )
    for i in range(6):
        value = top_value * i / 5
        out.append(
            f'<text x="{x(value):.1f}" y="{top + plot_h + 14}" text-anchor="middle" '
            f'fill="#444">{value:.3g}</text>'
        )
    out.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h + 32}" text-anchor="middle" '
        f'fill="#222">latency (s)</text>'
    )
    legend = []
    for m, model in enumerate(models):
        values = series[model]
        color = PALETTE[m % len(PALETTE)]
        points = _cdf_points(values)
        path = f"M{x(points[0][0]):.1f} {y(0):.1f}" + "".join(
            f"H{x(v):.1f}V{y(s):.1f}" for v, s in points
        )
        marks = ", ".join(
            f"p{q} {percentile(values, q):.3f} s"
            for q in (50, 90, 99)  # type: ignore[str-format]
        )
        tip = f"{model}: {len(values)} requests; {marks}"
        out.append(
            f'<path class="sb-cdf" d="{path}" stroke="{color}" stroke-width="2" fill="none" '
            f'data-model="{esc(model)}" data-requests="{len(values)}">'
            f"<title>{esc(tip)}</title></path>"
        )
        legend.append(f"{model} (p50 {percentile(values, 50):.3f} s)")
    out += _legend(legend, legend_x, top)
    out.append("</svg>")
    return "".join(out)


# -- accuracy by output length --------------------------------------------------------------

TRUNCATED = "truncated"


def length_buckets(result: TaskResult) -> list[tuple[str, int, float]]:
    """(bucket, cases, mean score) for a task's evaluated cases, by the completion tokens
    of a case (its mean over samples): powers of two (0-63, 64-127, 128-255, ...) and the
    truncated cases (finish reason "length") apart, whatever their length."""
    sums: dict[str, list[float]] = {}
    for verdict in result.cases.values():
        score = verdict.score
        if verdict.truncated:
            key = TRUNCATED
        else:
            tokens = verdict.completion_tokens
            if not isinstance(tokens, int) or verdict.status == "error":
                continue
            per_sample = tokens / max(1, result.samples)
            low = 0 if per_sample < 64 else 2 ** int(math.log2(per_sample))
            key = str(low)
        entry = sums.setdefault(key, [0, 0.0])
        entry[0] += 1
        entry[1] += score
    order = sorted((k for k in sums if k != TRUNCATED), key=int)
    if TRUNCATED in sums:
        order.append(TRUNCATED)
    out = []
    for key in order:
        count, total = sums[key]
        label = key if key == TRUNCATED else _bucket_label(int(key))
        out.append((label, int(count), 100.0 * total / count))
    return out


def _bucket_label(low: int) -> str:
    high = 63 if low == 0 else 2 * low - 1
    return f"{low}-{high}"


def merge_buckets(parts: Iterable[list[tuple[str, int, float]]]) -> list[tuple[str, int, float]]:
    """The buckets of several tasks of one model, weighted by case count."""
    merged: dict[str, list[float]] = {}
    for part in parts:
        for label, count, acc in part:
            entry = merged.setdefault(label, [0, 0.0])
            entry[0] += count
            entry[1] += count * acc

    def order(label: str) -> float:
        return math.inf if label == TRUNCATED else int(label.split("-")[0])

    return [(k, int(merged[k][0]), merged[k][1] / merged[k][0]) for k in sorted(merged, key=order)]


def length_accuracy_chart(buckets: Mapping[str, list[tuple[str, int, float]]]) -> str:
    """Per model (a row of small multiples): a bar per output-length bucket, its accuracy,
    with the case count under it; the truncated bucket drawn in a warning colour."""
    models = [m for m, b in buckets.items() if b]
    if not models:
        return ""
    labels: list[str] = []
    for model in models:
        for label, _, _ in buckets[model]:
            if label not in labels:
                labels.append(label)
    labels.sort(key=lambda s: math.inf if s == TRUNCATED else int(s.split("-")[0]))
    bar, gap = 52, 10
    left, top, plot_h = 44, 22, 120
    panel_w = max(len(labels) * (bar + gap) + left + 20, 380)
    panel_h = top + plot_h + 46
    width = panel_w
    height = panel_h * len(models)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="sb-length-accuracy" role="img" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" {FONT}>',
        "<title>Accuracy (%) by output length (completion tokens) per model</title>",
    ]
    for p, model in enumerate(models):
        oy = p * panel_h
        out.append(
            f'<text x="{left}" y="{oy + 14}" fill="#222" font-weight="bold">{esc(model)}</text>'
        )
        for tick in (0, 50, 100):
            ty = oy + top + plot_h * (1 - tick / 100)
            out.append(
                f'<line x1="{left}" y1="{ty:.1f}" x2="{panel_w - 10}" y2="{ty:.1f}" '
                f'stroke="#e3e3e3" stroke-width="1"/><text x="{left - 6}" y="{ty + 4:.1f}" '
                f'text-anchor="end" fill="#444">{tick}</text>'
            )
        found = {label: (count, acc) for label, count, acc in buckets[model]}
        for i, label in enumerate(labels):
            bx = left + 6 + i * (bar + gap)
            out.append(
                f'<text x="{bx + bar / 2:.1f}" y="{oy + top + plot_h + 14}" text-anchor="middle" '
                f'fill="#222" font-size="10">{esc(label)}</text>'
            )
            if label not in found:
                continue
            count, acc = found[label]
            h = plot_h * acc / 100
            color = "#D55E00" if label == TRUNCATED else PALETTE[0]
            tip = f"{model}, {label} tokens: accuracy {acc:.2f}% over {count} cases"
            out.append(
                f'<rect class="sb-length-bar" x="{bx}" y="{oy + top + plot_h - h:.1f}" '
                f'width="{bar}" height="{h:.1f}" fill="{color}" data-model="{esc(model)}" '
                f'data-bucket="{esc(label)}" data-cases="{count}" data-value="{acc:.2f}">'
                f"<title>{esc(tip)}</title></rect>"
                f'<text x="{bx + bar / 2:.1f}" y="{oy + top + plot_h + 26}" text-anchor="middle" '
                f'fill="#666" font-size="9">n={count}</text>'
            )
        out.append(
            f'<text x="{left}" y="{oy + top + plot_h + 40}" fill="#444" font-size="10">'
            f"completion tokens per case (truncated: finish reason length)</text>"
        )
    out.append("</svg>")
    return "".join(out)


def model_charts(results: Sequence[TaskResult], predictions: Mapping[str, Path]) -> str:
    """The latency CDF and the accuracy-by-length charts for the report, with their
    headings; `predictions` maps a task key to its prediction file."""
    models: list[str] = []
    for r in results:
        if r.model not in models:
            models.append(r.model)
    latencies = {
        m: read_latencies(
            predictions[r.key] for r in results if r.model == m and r.key in predictions
        )
        for m in models
    }
    buckets = {
        m: merge_buckets(
            length_buckets(r) for r in results if r.model == m and r.run_mode != "infer"
        )
        for m in models
    }
    out = []
    cdf = latency_cdf_chart(latencies)
    if cdf:
        out.append("<h3>Latency distribution per model</h3>")
        out.append(
            '<p class="sb-meta">Share of a model\'s served requests (all its datasets) answered '
            "within x seconds.</p>"
        )
        out.append(cdf)
    lengths = length_accuracy_chart(buckets)
    if lengths:
        out.append("<h3>Accuracy by output length</h3>")
        out.append(lengths)
    return "".join(out)
