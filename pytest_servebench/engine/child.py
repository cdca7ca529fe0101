"""The engine process: runs the request engine on its own core, fed by pytest over a socket.

pytest's thread and an engine thread share one GIL: at zero latency the two took turns and a
case cost their sum. Here the engine's event loop owns the process's main thread; pytest sends
instalments of built requests and gets back finished cases, progress counters, log lines and
a fatal error if one happens (see process.py for the other end and wire.py for the messages).

Started by process.py as `main([package_root, FD])`. It ignores Ctrl-C and SIGTERM (pytest decides
when to stop and asks for a clean shutdown), and dies with pytest (PR_SET_PDEATHSIG on Linux,
the socket's EOF elsewhere): predictions are flushed once per loop step, as in a thread."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from pytest_servebench.catalog.config import ModelConfig
from pytest_servebench.engine.jobs import CaseJobs, CaseResult
from pytest_servebench.engine.local import ThreadEngine, ThreadTask
from pytest_servebench.engine.wire import (
    Aborted,
    AskModel,
    Close,
    Closed,
    Counters,
    Done,
    Feed,
    FromChild,
    LogLine,
    ModelName,
    Start,
    ToChild,
    frame,
    unframe,
)
from pytest_servebench.store import PredictionWriter

PROGRESS_EVERY = 0.25  # seconds between progress messages while requests run


class ChildTask(ThreadTask):
    """A task whose requests come in instalments and whose finished cases go back to pytest."""

    def __init__(self, child: Child, start: Start, engine: ThreadEngine):
        writer = PredictionWriter(start.predictions)
        endpoint = engine.endpoint_for(start.model)
        super().__init__(start.key, endpoint, writer, start.samples, (), None)
        self.child = child
        self.task_id = start.task
        self.progress.total = start.total
        self.fed = asyncio.Event()
        self.feed_done = False
        self._queue: deque[CaseJobs] = deque()

    def next_case(self) -> CaseJobs | None:
        return self._queue.popleft() if self._queue else None

    def feed(self, cases: list[CaseJobs], last: bool) -> None:
        self._queue.extend(cases)
        self.feed_done = last
        assert self.fed is not None
        self.fed.set()

    def complete(self, result: CaseResult) -> None:
        self.child.deliver(self.task_id, result)

    def abort(self, error: BaseException) -> None:
        self.child.abort(str(error))


class Child(asyncio.Protocol):
    def __init__(self, stopped: asyncio.Future[None]) -> None:
        self.stopped = stopped
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.headers: dict[str, dict[str, str]] = {}
        self.engine = ThreadEngine(lambda config: self.headers.get(config.name, {}))
        self.engine.on_progress = self.progress
        self.tasks: dict[int, ChildTask] = {}
        # The cases finished in this step of the loop, per task: one Done each at its end.
        self._outbox: dict[int, list[CaseResult]] = {}
        self._aborted = False
        self._last_progress = 0.0
        self._pending: set[asyncio.Future[None]] = set()

    # -- from pytest -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        for message in unframe(self.buffer):
            self.handle(message)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.stopped.done():  # pytest is gone: nothing more to do
            self._spawn(self._stop(reply=False))

    def handle(self, message: ToChild) -> None:
        match message:
            case Feed(task_id, cases, last):
                self.tasks[task_id].feed(cases, last)
            case Start():
                self.headers[message.model.name] = message.headers
                task = self.tasks[message.task] = ChildTask(self, message, self.engine)
                self.engine.launch(task)
            case AskModel(request, model, headers):
                self.headers[model.name] = headers
                self._spawn(self._model_name(request, model))
            case Close():
                self._spawn(self._stop(reply=True))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._pending.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._pending.discard)

    async def _model_name(self, request: int, config: ModelConfig) -> None:
        from pytest_servebench.engine.client import FatalEndpointError

        try:
            name = await self.engine.endpoint_for(config).resolve_model()
        except FatalEndpointError as exc:
            self.send(ModelName(request, None, str(exc)))
        else:
            self.send(ModelName(request, name, None))

    async def _stop(self, reply: bool) -> None:
        await self.engine.shutdown()
        self._flush()
        self.progress(True)
        if reply:
            self.send(Closed())
            transport = self.transport
            if transport is not None and not transport.get_write_buffer_size():
                # Files and connections are closed and pytest has its answer: leave now
                # rather than keep pytest waiting through the interpreter's teardown.
                os._exit(0)
        if not self.stopped.done():
            self.stopped.set_result(None)

    # -- to pytest ---------------------------------------------------------------------------
    def send(self, message: FromChild) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(frame(message))  # buffered: the loop never blocks on pytest

    def deliver(self, task_id: int, result: CaseResult) -> None:
        if not self._outbox:  # one Done per task and loop step, however many cases finished
            asyncio.get_running_loop().call_soon(self._flush)
        results = self._outbox.get(task_id)
        if results is None:
            self._outbox[task_id] = [result]
        else:
            results.append(result)

    def _flush(self) -> None:
        if self._outbox:
            outbox, self._outbox = self._outbox, {}
            for task_id, results in outbox.items():
                writer = self.tasks[task_id].writer
                writer.flush()  # on disk before pytest counts it as done
                # A case whose prediction could not be written is not done (the run aborts).
                if writer.failed is None:
                    self.send(Done(task_id, results))

    def abort(self, message: str) -> None:
        if not self._aborted:
            self._aborted = True
            self._flush()
            self.send(Aborted(message))

    def progress(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last_progress < PROGRESS_EVERY:
            return
        self._last_progress = now
        self._flush()  # counters never run ahead of the cases they count
        counts = {
            task_id: (p.posted, p.received, p.finished, p.failed, p.retried)
            for task_id, task in self.tasks.items()
            for p in (task.progress,)
        }
        self.send(Counters(counts, force))


class _Forward(logging.Handler):
    """The engine's log lines go to pytest's log file (which redacts secrets)."""

    def __init__(self, send: Callable[[FromChild], None]) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._send(LogLine(record.levelno, record.name, record.getMessage()))
        except Exception:  # a log line must never stop the engine
            self.handleError(record)


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


async def _serve(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[None] = loop.create_future()
    _, child = await loop.connect_accepted_socket(lambda: Child(stopped), sock)
    logger = logging.getLogger("servebench")
    logger.handlers[:] = [_Forward(child.send)]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    await stopped


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A cancelled CI job signals the whole process group: pytest stops this process itself,
    # after the summary, instead of reporting it as crashed.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # pytest died before the kernel could be told
        return 1
    sock = socket.socket(fileno=int(argv[1]))
    asyncio.run(_serve(sock))
    return 0
