"""What a run tells about code execution: the isolation used and what the pool did.

Each pytest process that ran programs writes its figures to the work dir
(`executions/stats-<process>.json`) when it closes; the controller adds them up for the
terminal line and the summary file (under xdist the workers run the programs)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from . import pool
from .sandbox import choose


def cache_dir(work_root: Path) -> Path:
    return work_root / "executions"


def check_isolation(allow_unsandboxed: bool) -> str:
    """The isolation this run will use, described; raises NoSandbox (with what to do)."""
    return choose(allow_unsandboxed).describe()


def write_stats(root: Path) -> None:
    """This process's figures, if it ran any program (called when the run closes)."""
    executor = pool.current()
    if executor is None:
        return
    stats = executor.stats
    data = {
        "isolation": executor.isolation.level,
        "describe": executor.isolation.describe(),
        "workers": executor.workers,
        "submitted": stats.submitted,
        "judged": stats.judged,
        "ran": stats.ran,
        "cached": stats.cached,
        "shared": stats.shared,
        "run_seconds": round(stats.run_seconds, 3),
        "first_start": stats.first_start,
        "last_end": stats.last_end,
    }
    name = os.environ.get("PYTEST_XDIST_WORKER") or f"pid{os.getpid()}"
    with contextlib.suppress(OSError):
        root.mkdir(parents=True, exist_ok=True)
        (root / f"stats-{pool.session_tag()}-{name}.json").write_text(json.dumps(data), "utf-8")


def collect(root: Path) -> dict[str, Any] | None:
    """The figures of every process of this session, added up (None when none ran programs;
    a resumed work dir also holds the files of earlier sessions)."""
    parts = []
    for path in sorted(root.glob(f"stats-{pool.session_tag()}-*.json")) if root.is_dir() else []:
        with contextlib.suppress(OSError, ValueError):
            parts.append(json.loads(path.read_text("utf-8")))
    if not parts:
        return None
    total: dict[str, Any] = {
        "isolation": parts[0]["isolation"],
        "describe": parts[0]["describe"],
        "processes": len(parts),
        "workers": sum(p["workers"] for p in parts),
    }
    for key in ("submitted", "judged", "ran", "cached", "shared", "run_seconds"):
        total[key] = round(sum(p[key] for p in parts), 3)
    return total


def summary_line(figures: dict[str, Any] | None, described: str | None) -> str | None:
    if figures is None:
        return f"code execution: {described}" if described else None
    mean = figures["run_seconds"] / figures["ran"] if figures["ran"] else 0.0
    return (
        f"code execution: {figures['describe']}; {figures['judged']} samples judged, "
        f"{figures['ran']} programs run (mean {mean:.2f}s, {figures['workers']} at a time), "
        f"{figures['cached']} outcomes from the work dir's cache"
    )
