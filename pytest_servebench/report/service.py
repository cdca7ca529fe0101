"""Service figures of a task: how its requests were served (latency, time to first token,
tokens, errors, concurrency), read back from its prediction file after the run.

The prediction file is the values streamed to disk: one line per finished request, written as
it finishes. Here it is read once, line by line, keeping a few numbers per request in compact
arrays (8 bytes a value, ~0.5 MB per figure at 50,000 requests), so percentiles are exact over
every request of the task while memory stays small and nothing is kept during the run.

The requests counted are the ones behind the verdicts: the latest record per (case, sample)
of the task's cases, a successful record never replaced by a later failure of the same request
(store.load_predictions' rule)."""

from __future__ import annotations

import math
import re
from array import array
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_servebench.store import iter_records

ERROR_KINDS = ("timeout", "connection", "http", "bad_body", "other")
TRUNCATED_REASONS = ("length",)
_HTTP_STATUS = re.compile(r"\bHTTP (\d{3})\b")


def error_kind(message: str) -> str:
    """The kind of a failed request, from the error text the engine recorded."""
    text = message.lower()
    if _HTTP_STATUS.search(message):  # a status the server sent (504 included) comes first
        return "http"
    if "timed out" in text or "timeout" in text:
        return "timeout"
    if "cannot connect" in text or "connection" in text or "transport error" in text:
        return "connection"
    if (
        "malformed" in text
        or "not json" in text
        or "stream cut" in text
        or "inside stream" in text
        or "choices, expected" in text
    ):
        return "bad_body"
    return "other"


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) of ascending values by linear interpolation between the
    two nearest ranks: numpy.percentile's default ("linear"), h = (n - 1) * q / 100."""
    n = len(sorted_values)
    if n == 0:
        return None
    h = (n - 1) * q / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (h - lo) * (sorted_values[hi] - sorted_values[lo])


def busy_time(spans: Iterable[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals: the time at least one request of the
    task was in flight (a resumed run's pause between sessions does not count)."""
    total = 0.0
    current_start = current_end = None
    for start, end in sorted(spans):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start  # type: ignore[operator]
            current_start, current_end = start, end
        elif end > current_end:
            current_end = end
    if current_end is not None:
        total += current_end - current_start  # type: ignore[operator]
    return total


class _Requests:
    """Per request slot: a few numbers in typed arrays (nan: not known)."""

    def __init__(self) -> None:
        self.ok = array("b")
        self.attempts = array("i")
        self.latency = array("d")
        self.ttft = array("d")
        self.tokens = array("d")
        self.truncated = array("b")
        self.end = array("d")
        self.first = array("b")  # 0 for the 2nd..kth choice of one request with n=k
        self.kind = array("b")  # index in ERROR_KINDS, -1 when ok
        self.status = array("i")  # HTTP status of an http error, else 0
        self.hash = array("q")  # the request hash's Python hash (for the replace rule)

    def put(self, slot: int, record: Mapping[str, Any], first: bool) -> None:
        ok = bool(record.get("ok"))
        kind, status = -1, 0
        if not ok:
            message = str(record.get("error") or "")
            kind = ERROR_KINDS.index(error_kind(message))
            found = _HTTP_STATUS.search(message)
            status = int(found.group(1)) if found and kind == 2 else 0
        values = (
            ok,
            _int(record.get("attempts"), 1),
            _num(record.get("latency")),
            _num(record.get("ttft")) if ok else math.nan,
            _num(record.get("completion_tokens")) if ok else math.nan,
            ok and record.get("finish_reason") in TRUNCATED_REASONS,
            _num(record.get("time")),
            first,
            kind,
            status,
            hash(record.get("hash")),
        )
        arrays = (
            self.ok,
            self.attempts,
            self.latency,
            self.ttft,
            self.tokens,
            self.truncated,
            self.end,
            self.first,
            self.kind,
            self.status,
            self.hash,
        )
        if slot == len(self.ok):
            for target, value in zip(arrays, values):
                target.append(value)  # type: ignore[attr-defined]
        else:
            for target, value in zip(arrays, values):
                target[slot] = value  # type: ignore[index]


def _num(value: Any) -> float:
    return (
        float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool)
        else math.nan
    )


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def read_requests(path: Path, case_ids: Collection[str] | None = None) -> _Requests:
    """One pass over a prediction file; torn lines from a killed process are skipped."""
    requests = _Requests()
    slots: dict[int, int] = {}  # hash((case, sample)) -> slot
    previous: tuple[Any, Any, Any] | None = None
    for (case, sample), record in iter_records(path):
        if case_ids is not None and case not in case_ids:
            continue
        # k choices of one request (n=k) are k consecutive lines with one finish time
        group = (case, record.get("hash"), record.get("time"))
        first = group != previous
        previous = group
        key = hash((case, sample))
        slot = slots.get(key)
        if slot is None:
            slot = slots[key] = len(requests.ok)
        elif (
            requests.ok[slot]
            and not record.get("ok")
            and requests.hash[slot] == hash(record.get("hash"))
        ):
            continue
        requests.put(slot, record, first)
    return requests


def task_service(path: Path, case_ids: Collection[str] | None = None) -> dict[str, Any] | None:
    """The service figures of one task from its prediction file (see the README's table);
    None when the file holds no request of the task (nothing sent, or written elsewhere)."""
    try:
        requests = read_requests(path, case_ids)
    except OSError:  # unreadable: the accuracy summary must still be written
        return None
    return figures(requests) if len(requests.ok) else None


def figures(requests: _Requests) -> dict[str, Any]:
    """The figures over the slots; each sorted list lives only while its percentiles are
    taken, so the peak is one list of floats beside the arrays."""
    r = requests
    n_samples = len(r.ok)
    kinds = {kind: 0 for kind in ERROR_KINDS}
    statuses: dict[str, int] = {}
    n_requests = retries = n_ok = truncated = 0
    for i in range(n_samples):
        if r.ok[i]:
            n_ok += 1
            truncated += r.truncated[i]
        if not r.first[i]:
            continue
        n_requests += 1
        retries += max(0, r.attempts[i] - 1)
        if not r.ok[i]:
            kinds[ERROR_KINDS[r.kind[i]]] += 1
            if r.status[i]:
                statuses[str(r.status[i])] = statuses.get(str(r.status[i]), 0) + 1

    def served(i: int) -> bool:
        return bool(r.first[i] and r.ok[i])

    every = range(n_samples)
    latency = _quantiles(sorted(r.latency[i] for i in every if served(i)), (50, 90, 99))
    ttft = _quantiles(
        sorted(r.ttft[i] for i in every if served(i) and not math.isnan(r.ttft[i])), (50, 99)
    )
    # inter-token time of a streamed reply: (latency - ttft) / (tokens - 1)
    itl = _quantiles(
        sorted(
            (r.latency[i] - r.ttft[i]) / (r.tokens[i] - 1)
            for i in every
            if served(i) and not math.isnan(r.ttft[i]) and r.tokens[i] > 1
        ),
        (50, 99),
    )
    tokens_sorted = sorted(r.tokens[i] for i in every if r.ok[i] and not math.isnan(r.tokens[i]))
    tokens = _quantiles(tokens_sorted, (50, 99))
    total_tokens = int(math.fsum(tokens_sorted)) if tokens_sorted else None
    del tokens_sorted
    per_request_rate = _quantiles(
        sorted(
            r.tokens[i] / r.latency[i]
            for i in every
            if served(i) and r.latency[i] > 0 and not math.isnan(r.tokens[i])
        ),
        (50,),
    )
    timed = [
        i for i in every if r.first[i] and not math.isnan(r.end[i]) and not math.isnan(r.latency[i])
    ]
    wall = busy_time((r.end[i] - r.latency[i], r.end[i]) for i in timed)
    in_flight = math.fsum(r.latency[i] for i in timed)
    return {
        "requests": n_requests,
        "samples": n_samples,
        "ok": n_ok,
        "errors": sum(kinds.values()),
        "error_kinds": kinds,
        "http_status": statuses,
        "retries": retries,
        "latency_s": latency,
        "ttft_s": ttft,
        "itl_s": itl,
        "completion_tokens": {**tokens, "total": total_tokens},
        "truncated": truncated,
        "truncated_share": round(truncated / n_ok, 4) if n_ok else None,
        "tokens_per_s_request": per_request_rate,
        "tokens_per_s": round(total_tokens / wall, 2) if total_tokens and wall > 0 else None,
        "wall_s": round(wall, 3),
        "concurrency": round(in_flight / wall, 2) if wall > 0 else None,
    }


def _quantiles(sorted_values: Sequence[float], qs: Sequence[int]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for q in qs:
        value = percentile(sorted_values, q)
        out[f"p{q}"] = None if value is None else round(value, 6)
    return out


# -- the table ---------------------------------------------------------------------------

SERVICE_HEADER = (
    "dataset",
    "model",
    "requests",
    "errors",
    "retries",
    "lat p50",
    "lat p90",
    "lat p99",
    "ttft p50",
    "ttft p99",
    "itl ms p50",
    "tok p50",
    "tok p99",
    "tok total",
    "trunc %",
    "tok/s req",
    "tok/s",
    "wall s",
    "conc",
)
_LEFT = 2  # dataset and model are text, the rest numbers


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _errors_cell(service: Mapping[str, Any]) -> str:
    total = service["errors"]
    if not total:
        return "0"
    parts = []
    for kind, count in service["error_kinds"].items():
        if not count:
            continue
        if kind == "http" and service.get("http_status"):
            statuses = ",".join(f"{s}x{n}" for s, n in sorted(service["http_status"].items()))
            parts.append(f"http {statuses}")
        else:
            parts.append(f"{kind} {count}")
    return f"{total} ({'; '.join(parts)})"


def service_row(dataset: str, model: str, s: Mapping[str, Any]) -> list[str]:
    share = s.get("truncated_share")
    return [
        dataset,
        model,
        str(s["requests"]),
        _errors_cell(s),
        str(s["retries"]),
        _cell(s["latency_s"]["p50"]),
        _cell(s["latency_s"]["p90"]),
        _cell(s["latency_s"]["p99"]),
        _cell(s["ttft_s"]["p50"]),
        _cell(s["ttft_s"]["p99"]),
        _cell(None if s["itl_s"]["p50"] is None else 1000 * s["itl_s"]["p50"], 2),
        _cell(s["completion_tokens"]["p50"], 0),
        _cell(s["completion_tokens"]["p99"], 0),
        _cell(s["completion_tokens"]["total"]),
        _cell(None if share is None else 100 * share, 1),
        _cell(s["tokens_per_s_request"]["p50"], 1),
        _cell(s["tokens_per_s"], 1),
        _cell(s["wall_s"], 2),
        _cell(s["concurrency"], 1),
    ]


def service_rows(tasks: Iterable[tuple[str, str, Mapping[str, Any] | None]]) -> list[list[str]]:
    """(dataset, model, figures) -> table rows; a task without figures is left out."""
    return [service_row(d, m, s) for d, m, s in tasks if s]


def render_service_text(rows: Sequence[Sequence[str]]) -> str:
    header = SERVICE_HEADER
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            str(v).ljust(w) if i < _LEFT else str(v).rjust(w)
            for i, (v, w) in enumerate(zip(values, widths))
        ).rstrip()

    return "\n".join([line(header), "-" * len(line(header)), *(line(r) for r in rows)])


def render_service_markdown(rows: Sequence[Sequence[str]]) -> str:
    out = [
        "| " + " | ".join(SERVICE_HEADER) + " |",
        "|" + "|".join("---" if i < _LEFT else "---:" for i in range(len(SERVICE_HEADER))) + "|",
    ]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n"


SERVICE_NOTE = (
    "service: latency, ttft (time to first token, streamed) and itl (inter-token time) in "
    "seconds (itl in ms) over served requests; tok = completion tokens; tok/s req = p50 of each "
    "request's tokens/latency; tok/s = total tokens / wall; wall = time with a request in "
    "flight; conc = mean requests in flight. Percentiles are exact (linear interpolation)."
)
