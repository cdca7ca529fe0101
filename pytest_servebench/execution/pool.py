"""A bounded pool that runs programs off pytest's main thread, with a result cache.

Each worker thread starts one sandboxed process and waits for it, so the pool holds at most
`workers` programs at a time (sized to the CPUs this process may use, shared between
pytest-xdist workers). A program is keyed by the hash of its text (the model's code with the
tests), the limits and the runner's version: the same key is run once per run (in-flight
duplicates share one future) and, with a cache directory, once per work dir (`--sb-mode
eval` re-scores without running an unchanged program again).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .runner import RUNNER_VERSION, Limits, Outcome, run_program
from .sandbox import Isolation, NoSandbox, choose


def program_key(program: str, limits: Limits) -> str:
    text = json.dumps([RUNNER_VERSION, asdict(limits), program], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def default_workers() -> int:
    """CPUs this process may use, divided between pytest-xdist workers (at least one)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    sharing = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    return max(1, cpus // max(1, sharing))


class ResultCache:
    """One small JSON file per program key: safe for several processes at once (written to
    a temporary name, then renamed)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Outcome | None:
        try:
            data = json.loads(self._path(key).read_text("utf-8"))
            return Outcome(data["status"], data["detail"], data["seconds"], data["isolation"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, key: str, outcome: Outcome) -> None:
        path = self._path(key)
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(asdict(outcome), handle)
            os.replace(tmp, path)


@dataclass
class Stats:
    """What the pool did: for the terminal line and the overlap measurement."""

    submitted: int = 0
    judged: int = 0  # samples whose outcome a judge asked for
    ran: int = 0
    cached: int = 0  # read from the work dir's cache
    shared: int = 0  # the same program already run or running in this process
    run_seconds: float = 0.0
    first_start: float | None = None  # time.time() of the first program started
    last_end: float | None = None
    starts: list[float] = field(default_factory=list)


class CodeExecutor:
    def __init__(self, isolation: Isolation, workers: int, cache: ResultCache | None) -> None:
        self.isolation = isolation
        self.workers = workers
        self.cache = cache
        self.stats = Stats()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sb-exec")
        self._futures: dict[str, Future[Outcome]] = {}
        self._lock = threading.Lock()

    def submit(self, program: str, limits: Limits) -> Future[Outcome]:
        """The outcome of `program`, now or later; never blocks on execution."""
        key = program_key(program, limits)
        with self._lock:
            self.stats.submitted += 1
            future = self._futures.get(key)
            if future is not None:
                self.stats.shared += 1
                return future
            cached = self.cache.get(key) if self.cache is not None else None
            future = Future()
            self._futures[key] = future
            if cached is not None:
                self.stats.cached += 1
                future.set_result(cached)
                return future
        inner = self._pool.submit(self._run, key, program, limits)
        inner.add_done_callback(lambda done: _chain(done, future))
        return future

    def run(self, program: str, limits: Limits) -> Outcome:
        """The outcome of `program`, waiting for it (a judge's call)."""
        future = self.submit(program, limits)
        with self._lock:
            self.stats.judged += 1
        return future.result()

    def _run(self, key: str, program: str, limits: Limits) -> Outcome:
        start = time.time()
        outcome = run_program(program, self.isolation, limits)
        end = time.time()
        with self._lock:
            stats = self.stats
            stats.ran += 1
            stats.run_seconds += end - start
            stats.first_start = start if stats.first_start is None else stats.first_start
            stats.last_end = end if stats.last_end is None else max(stats.last_end, end)
            stats.starts.append(start)
        if self.cache is not None:
            self.cache.put(key, outcome)
        return outcome

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _chain(done: Future[Outcome], future: Future[Outcome]) -> None:
    if future.done():
        return
    exc = done.exception()
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(done.result())


@dataclass
class Settings:
    allow_unsandboxed: bool = False
    cache_dir: Path | None = None
    workers: int | None = None
    tag: str = ""  # names this session's figures in the work dir (report.py)


_settings = Settings()
_executor: CodeExecutor | None = None
_refused: str | None = None
_guard = threading.Lock()


def configure(
    *,
    allow_unsandboxed: bool,
    cache_dir: Path | None,
    workers: int | None = None,
    tag: str = "",
) -> None:
    """Set how this process runs programs (the plugin calls it in each pytest process)."""
    global _executor, _refused
    shutdown()
    with _guard:
        _settings.allow_unsandboxed = allow_unsandboxed
        _settings.cache_dir = cache_dir
        _settings.workers = workers
        _settings.tag = tag
        _refused = None


def get_executor() -> CodeExecutor:
    """The process's executor, created on first use; raises NoSandbox when no isolation
    is acceptable."""
    global _executor, _refused
    with _guard:
        if _executor is not None:
            return _executor
        if _refused is not None:
            raise NoSandbox(_refused)
        try:
            isolation = choose(_settings.allow_unsandboxed)
        except NoSandbox as exc:
            _refused = str(exc)
            raise
        cache = ResultCache(_settings.cache_dir) if _settings.cache_dir is not None else None
        _executor = CodeExecutor(isolation, _settings.workers or default_workers(), cache)
        return _executor


def session_tag() -> str:
    return _settings.tag or "session"


def current() -> CodeExecutor | None:
    """The executor if one was created in this process."""
    return _executor


def shutdown() -> None:
    global _executor
    with _guard:
        executor, _executor = _executor, None
    if executor is not None:
        executor.close()
