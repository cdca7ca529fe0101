"""The request engine itself: an asyncio loop that keeps every endpoint busy up to its max
concurrency while pytest walks its items one at a time.

`ThreadEngine` runs the loop in a thread of pytest's process (`--sb-engine thread`); the engine
process (child.py) runs the same loop as its main thread, fed by `process.ProcessEngine`.
Knows HTTP, retries and the store; knows nothing of scoring."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pytest_servebench.catalog.config import ModelConfig
from pytest_servebench.engine.client import (
    FatalEndpointError,
    RequestFailed,
    RetryableError,
    list_models,
    send,
)
from pytest_servebench.engine.connection import Session, Settings
from pytest_servebench.engine.jobs import (
    NOT_GIVEN,
    CaseJobs,
    CaseResult,
    Job,
    Progress,
    RunAborted,
    prepare_folder,
    pull_case,
)
from pytest_servebench.engine.protocol import TaskSpec
from pytest_servebench.redaction import is_secret_header, redactor
from pytest_servebench.store import PredictionWriter, disk_error_message

log = logging.getLogger("servebench.engine")

#: Connection failures in a row (across every request in flight) that, once a request has
#: used up its retries with no reply from the endpoint since it started, stop the run.
BREAKER_STREAK = 3


def _endpoint_down(exc: RetryableError) -> bool:
    """Whether a failure says the endpoint is not answering (no connection, or no byte
    within the timeouts), rather than that one request went wrong. The client may say so
    itself; else its message does."""
    flag = getattr(exc, "unreachable", None)
    if flag is not None:
        return bool(flag)
    text = str(exc)
    return text.startswith(("cannot connect", "connection dropped", "timed out ("))


def _join(base: str, path: str) -> str:
    """`base` with `path` appended to its path, its query and fragment kept at the end."""
    parts = urlsplit(base)
    if not parts.query and not parts.fragment:
        return base + path
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + path))


def _status_of(exc: Exception) -> int | None:
    """The HTTP status of a refused request ("HTTP 404: ...")."""
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status
    match = re.match(r"HTTP (\d{3})\b", str(exc))
    return int(match.group(1)) if match else None


# asyncio.timeout (3.11+) bounds the request inside its own task; wait_for makes a new task
# for every request.
_deadline: Callable[[float], Any] = getattr(asyncio, "timeout", None) or (
    lambda seconds: _WaitForTimeout(seconds)
)


class _WaitForTimeout:
    """Python 3.10: a timeout context that cancels the task and raises TimeoutError."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.handle: asyncio.TimerHandle | None = None
        self.expired = False

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handle = asyncio.get_running_loop().call_later(self.seconds, self._expire, task)

    def _expire(self, task: asyncio.Task[Any]) -> None:
        self.expired = True
        task.cancel()

    async def __aexit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        assert self.handle is not None
        self.handle.cancel()
        if self.expired and kind is asyncio.CancelledError:
            raise asyncio.TimeoutError
        return False


class Endpoint:
    """One model config's server(s): shared client, concurrency bound, replica choice."""

    def __init__(self, config: ModelConfig, headers: dict[str, str]):
        self.config = config
        self.headers = headers
        # This process's messages and records name these URLs: keep their credentials out.
        for url in config.base_urls:
            redactor.add_url(url)
        for name, value in headers.items():
            if is_secret_header(name):
                redactor.add(value.removeprefix("Bearer ").strip())
                redactor.add(value)
        self.semaphore = asyncio.Semaphore(config.max_concurrency)
        self.client = Session(Settings.of(config))  # TLS, proxy, redirects: connection.py
        self.urls = config.base_urls
        # The request URLs, per replica; a query in base_url (`?api-version=...`, a key) stays
        # after the path instead of swallowing it.
        self.request_urls = {
            chat: [_join(url, "/chat/completions" if chat else "/completions") for url in self.urls]
            for chat in (True, False)
        }
        self._next = 0
        self._avoid_until = [0.0] * len(self.urls)
        self.successes = 0
        self.last_success = 0.0  # monotonic time of the last reply
        self.down_streak = 0  # connection failures in a row, across every request in flight
        self.model_name: str | None = config.model or None
        self._model_lock = asyncio.Lock()

    def pick(self) -> int:
        """Round-robin over replicas, skipping those that failed recently."""
        now = time.monotonic()
        for _ in range(len(self.urls)):
            i = self._next % len(self.urls)
            self._next += 1
            if self._avoid_until[i] <= now:
                return i
        return min(range(len(self.urls)), key=self._avoid_until.__getitem__)

    def mark(self, i: int, ok: bool) -> None:
        if ok:
            self._avoid_until[i] = 0.0
        elif len(self.urls) > 1:
            self._avoid_until[i] = time.monotonic() + 5.0

    async def resolve_model(self) -> str:
        async with self._model_lock:
            if self.model_name is None:
                try:
                    names = await list_models(self.client, self.urls[0], self.headers)
                except FatalEndpointError as exc:
                    raise FatalEndpointError(
                        str(exc).replace("<model>", self.config.name)
                    ) from None
                if not names:
                    raise FatalEndpointError(
                        f"{self.urls[0]}/models lists no model; set `model:` in the config"
                    )
                self.model_name = names[0]
                log.info(
                    "model %s: server at %s serves %r",
                    self.config.name,
                    self.urls[0],
                    self.model_name,
                )
            return self.model_name


class ThreadTask:
    """The requests of one model x dataset task, as seen from both threads (a TaskHandle)."""

    def __init__(
        self,
        key: str,
        endpoint: Endpoint,
        writer: PredictionWriter,
        samples: int,
        case_ids: Sequence[str],
        cases: Iterator[CaseJobs] | None,
    ):
        self.key = key
        self.endpoint = endpoint
        self.writer = writer
        self.samples = samples
        self._cases = cases
        self.progress = Progress(total=len(case_ids))
        # One lock and two small dicts instead of a concurrent.futures.Future per case: 50,000
        # Futures cost 78 MB and 0.75 s to create. A case is in `_waiting` until the engine
        # delivers it, then in `_done` until its item takes it (or the run aborted).
        self._cond = threading.Condition(threading.Lock())
        self._waiting: set[str] = set(case_ids)
        self._done: dict[str, CaseResult] = {}
        self._wanted: str | None = None  # the case the main thread waits for
        self._error: BaseException | None = None
        self._partial: dict[str, dict[int, dict[str, Any]]] = {}
        # Samples awaited per case when fewer than all are sent (the others were saved by an
        # earlier run: resume sends only the missing or failed samples).
        self._expected: dict[str, int] = {}
        # In the engine process the cases come in instalments instead (child.ChildTask): `fed`
        # is set when more arrive, `feed_done` once the last one has.
        self.fed: asyncio.Event | None = None
        self.feed_done = True

    def next_case(self) -> CaseJobs | None:
        """The requests of the next case (engine loop); None when there are none (for now).
        Pulled one case at a time, so that a 50,000-case task never holds every prompt."""
        if self._cases is None:
            return None
        case = pull_case(self._cases, self.key)
        if case is None:
            self._cases = None
        return case

    def expect(self, case_id: str, jobs: list[Job]) -> None:
        """The jobs built for a case: its records are complete once these are in."""
        count = sum(job.count for job in jobs)
        if count != self.samples:
            self._expected[case_id] = count

    def deliver(self, case_id: str, records: list[dict[str, Any]], first: int) -> None:
        slots = self._partial.setdefault(case_id, {})
        for offset, record in enumerate(records):
            slots[first + offset] = record
        if len(slots) >= self._expected.get(case_id, self.samples):
            del self._partial[case_id]
            self._expected.pop(case_id, None)
            self.complete(CaseResult(case_id, [slots[k] for k in sorted(slots)]))

    def complete(self, result: CaseResult) -> None:
        """Every sample of a case is in: hand the case over to the main thread."""
        case_id = result.case_id
        with self._cond:
            if case_id in self._waiting and self._error is None:
                self._waiting.discard(case_id)
                self._done[case_id] = result
                if self._wanted == case_id:
                    self._cond.notify()

    def settle(self) -> None:
        """Every request the iterator gave is answered: a case still awaited was never given
        (a caller's bug), and fails rather than keep its item waiting for ever."""
        with self._cond:
            missing = list(self._waiting)
        for case_id in missing:
            self.complete(CaseJobs(case_id, [], NOT_GIVEN).failed(self.samples))

    def abort(self, error: BaseException) -> None:
        """Every case not delivered yet raises `error` in `wait` (from any thread)."""
        with self._cond:
            if self._error is None:
                self._error = error
            self._cond.notify_all()

    def wait(self, case_id: str, timeout: float) -> CaseResult | None:
        """The result of a case (main thread), once; None if it did not come within
        `timeout` seconds. Raises the abort error for a case not delivered before the abort,
        KeyError for a case that was never submitted (or already taken)."""
        with self._cond:
            result = self._done.pop(case_id, None)
            if result is not None:
                return result
            if case_id not in self._waiting:
                raise KeyError(case_id)
            if self._error is None:
                self._wanted = case_id
                self._cond.wait(timeout)
                self._wanted = None
                result = self._done.pop(case_id, None)
                if result is not None:
                    return result
            if self._error is not None:
                raise type(self._error)(*self._error.args)  # a fresh one per case
            return None

    def fail(self, job: Job, message: str) -> None:
        self.deliver(job.case_id, job.failed(message), job.first)


class ThreadEngine:
    """The Engine protocol with the requests sent from a thread of this process."""

    def __init__(self, headers_for: Callable[[ModelConfig], dict[str, str]]):
        self._headers_for = headers_for
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._endpoints: dict[str, Endpoint] = {}
        self._drivers: list[asyncio.Task[None]] = []
        self._started: list[ThreadTask] = []
        self.fatal: str | None = None
        self.stopping = False
        self.on_progress: Callable[[bool], None] = lambda force: None

    # -- thread plumbing -------------------------------------------------------------------
    def warm_up(self) -> None:
        """Nothing to start ahead: the loop's thread starts with the first request."""

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            self._thread = threading.Thread(target=run, name="servebench-engine", daemon=True)
            self._thread.start()
            ready.wait()
            self._loop = loop
        return self._loop

    def call(self, coro: Any, timeout: float | None = None) -> Any:
        """Run a coroutine on the engine loop and wait for its result (main thread only)."""
        return asyncio.run_coroutine_threadsafe(coro, self._ensure_loop()).result(timeout)

    def endpoint_for(self, config: ModelConfig) -> Endpoint:
        endpoint = self._endpoints.get(config.name)
        if endpoint is None:
            endpoint = Endpoint(config, self._headers_for(config))
            self._endpoints[config.name] = endpoint
        return endpoint

    def model_name(self, config: ModelConfig) -> str:
        """The model name requests carry; asks GET /models once when the config leaves it empty."""
        if config.model:
            return config.model

        async def resolve() -> str:
            endpoint = self.endpoint_for(config)
            return await endpoint.resolve_model()

        try:
            return self.call(resolve())
        except FatalEndpointError as exc:
            self.fatal = str(exc)
            raise RunAborted(self.fatal) from None

    # -- submitting ------------------------------------------------------------------------
    def start(self, spec: TaskSpec) -> ThreadTask:
        """Queue every case of a task, in item order; return at once."""
        problem = prepare_folder(spec.predictions)
        if problem is not None:
            self.fatal = self.fatal or problem
            raise RunAborted(self.fatal)
        loop = self._ensure_loop()

        async def create() -> ThreadTask:
            endpoint = self.endpoint_for(spec.model)
            writer = PredictionWriter(spec.predictions)
            task = ThreadTask(spec.key, endpoint, writer, spec.samples, spec.case_ids, spec.cases)
            self.launch(task)
            return task

        return asyncio.run_coroutine_threadsafe(create(), loop).result()

    def launch(self, task: ThreadTask) -> None:
        """Start sending the requests of `task` (on the engine's loop)."""
        if task.writer.on_error is None:
            task.writer.on_error = self._disk_failed
        self._started.append(task)
        self._drivers.append(asyncio.get_running_loop().create_task(self._drive(task)))

    async def _drive(self, task: ThreadTask) -> None:
        jobs: deque[Job] = deque()

        def next_job() -> Job | None:
            while not jobs:
                case = task.next_case()
                if case is None:
                    break
                if case.error is not None or not case.jobs:  # the case fails alone
                    task.complete(case.failed(task.samples))
                    continue
                task.expect(case.case_id, case.jobs)
                jobs.extend(case.jobs)
            return jobs.popleft() if jobs else None

        async def worker() -> None:
            while not self.stopping:
                job = next_job()
                if job is None:
                    if task.feed_done or task.fed is None:
                        return
                    task.fed.clear()  # nothing to do until the next instalment
                    await task.fed.wait()
                    continue
                try:
                    await self._perform(task, job)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a bug must fail one case, never hang the run
                    log.exception("%s %s: internal error", task.key, job.case_id)
                    task.fail(job, f"internal error: {type(exc).__name__}: {exc}")

        width = min(
            task.endpoint.config.max_concurrency, max(1, task.progress.total * task.samples)
        )
        try:
            await asyncio.gather(*(worker() for _ in range(width)))
            if not self.stopping:
                task.settle()
        finally:
            task.writer.close()
            self.on_progress(True)

    async def _perform(self, task: ThreadTask, job: Job) -> None:
        endpoint = task.endpoint
        config = endpoint.config
        chat = config.type == "openai-chat"
        attempts = 0
        free_retries = 0
        progress = task.progress
        error: str | None = None
        replies: list[Any] = []
        latency = 0.0
        ttft: float | None = None
        async with endpoint.semaphore:
            started = time.monotonic()
            while True:
                if self.stopping:
                    return
                replica = endpoint.pick()
                url = endpoint.request_urls[chat][replica]
                attempts += 1
                progress.posted += 1
                try:
                    coro = send(
                        endpoint.client, url, job.body, chat, config.stream, endpoint.headers
                    )
                    if config.request_timeout:
                        async with _deadline(config.request_timeout):
                            replies, latency, ttft = await coro
                    else:
                        replies, latency, ttft = await coro
                    progress.received += 1
                    endpoint.mark(replica, True)
                    endpoint.successes += 1
                    endpoint.last_success = time.monotonic()
                    endpoint.down_streak = 0
                    error = None
                    break
                except asyncio.TimeoutError:
                    exc: Exception = RetryableError(
                        f"no full reply within request_timeout {config.request_timeout}s"
                    )
                except (RetryableError, RequestFailed, FatalEndpointError) as caught:
                    exc = caught
                endpoint.mark(replica, False)
                if isinstance(exc, FatalEndpointError):
                    self._abort(str(exc))
                    return
                if isinstance(exc, RequestFailed):
                    error = str(exc)
                    if _status_of(exc) == 404 and endpoint.successes == 0:
                        # Every request goes to the same path with the same model name.
                        self._abort(
                            f"the server at {url} answered {exc} for model "
                            f"{job.body.get('model')!r} before any request succeeded: check "
                            f"{config.name}'s `model:` and `base_url` (the URL ends in /v1)"
                        )
                        return
                    break
                assert isinstance(exc, RetryableError)
                if exc.free and free_retries < 3:
                    free_retries += 1
                    attempts -= 1
                    continue
                down = _endpoint_down(exc)
                if down:
                    endpoint.down_streak += 1
                if attempts > config.retries:
                    error = f"{exc} (after {attempts} attempts)"
                    if exc.unreachable and endpoint.successes == 0:
                        self._abort(exc.unreachable)
                        return
                    if down and endpoint.successes == 0 and str(exc).startswith("timed out"):
                        self._abort(
                            f"the server for model {config.name!r} never answered: {exc} "
                            f"after {attempts} attempts. Check that it is up and not "
                            f"overloaded, or raise {config.name}.read_timeout (now "
                            f"{config.read_timeout:g}s)"
                        )
                        return
                    if (
                        down
                        and endpoint.last_success < started
                        and endpoint.down_streak >= BREAKER_STREAK
                    ):
                        # Circuit breaker: the endpoint stopped answering. Every request in
                        # flight would fail the same way after its own retries.
                        self._abort(
                            f"the server for model {config.name!r} stopped answering: "
                            f"{endpoint.down_streak} connection attempts failed in a row and "
                            f"none succeeded for {time.monotonic() - started:.1f}s ({exc}); "
                            f"what finished is saved: resume once it is back"
                        )
                        return
                    break
                progress.retried += 1
                delay = min(config.retry_backoff_max, config.retry_backoff * 2 ** (attempts - 1))
                delay *= random.uniform(0.5, 1.0)
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, config.retry_backoff_max))
                log.warning(
                    "%s %s sample %d: %s; retry %d/%d in %.2fs",
                    task.key,
                    job.case_id,
                    job.first,
                    exc,
                    attempts,
                    config.retries,
                    delay,
                )
                await asyncio.sleep(delay)
        stamp = time.time()
        records = []
        for offset in range(job.count):
            record: dict[str, Any] = {
                "case": job.case_id,
                "sample": job.first + offset,
                "hash": job.hash,
                "ok": error is None,
                "attempts": attempts,
                "latency": round(latency, 4),
                "time": round(stamp, 3),
            }
            if error is None:
                reply = replies[offset] if offset < len(replies) else None
                if reply is None:
                    record.update(
                        ok=False,
                        error=f"server returned {len(replies)} choices, expected {job.count}",
                    )
                else:
                    record.update(
                        content=reply.content,
                        reasoning=reply.reasoning,
                        finish_reason=reply.finish_reason,
                        prompt_tokens=reply.prompt_tokens,
                        completion_tokens=reply.completion_tokens,
                        ttft=None if ttft is None else round(ttft, 4),
                    )
            else:
                record["error"] = redactor(error)
            records.append(record)
        for record in records:
            if record["sample"] == 0:
                # What was asked and expected, in the file once per case (not per sample, and
                # not in what goes back to pytest): the file alone shows why it was scored.
                prompt = job.body.get("messages", job.body.get("prompt"))
                task.writer.write({**record, "prompt": prompt, "reference": job.reference})
            else:
                task.writer.write(record)
            if task.writer.failed is not None:
                return  # not saved: not done (the run is aborted)
            if record["ok"]:
                progress.finished += 1
            else:
                progress.failed += 1
                log.error(
                    "%s %s sample %d failed: %s",
                    task.key,
                    job.case_id,
                    record["sample"],
                    record["error"],
                )
        task.deliver(job.case_id, records, job.first)
        self.on_progress(False)

    def _disk_failed(self, writer: PredictionWriter, exc: OSError) -> None:
        self._abort(disk_error_message(writer.path, exc))

    def _abort(self, message: str) -> None:
        if self.fatal is None:
            self.fatal = redactor(message)
            log.error("run aborted: %s", self.fatal)
        self.stopping = True
        for task in self._started:
            task.abort(RunAborted(self.fatal))

    # -- shutting down ---------------------------------------------------------------------
    def close(self, timeout: float = 5.0) -> None:
        """Stop sending, drop what is in flight, close files and clients."""
        if self._loop is None:
            return
        self.stopping = True
        loop = self._loop
        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            asyncio.run_coroutine_threadsafe(self.shutdown(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout)
        self._loop = None

    async def shutdown(self) -> None:
        """Drop what is in flight; close clients and prediction files (on the engine's loop)."""
        self.stopping = True
        for driver in self._drivers:
            driver.cancel()
        await asyncio.gather(*self._drivers, return_exceptions=True)
        for endpoint in self._endpoints.values():
            with contextlib.suppress(Exception):
                await endpoint.client.aclose()
        for task in self._started:
            task.writer.close()  # a write error is kept on the writer, never raised here

    @property
    def tasks(self) -> list[ThreadTask]:
        return list(self._started)
