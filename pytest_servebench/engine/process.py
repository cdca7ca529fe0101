"""pytest's side of the engine process (child.py): the Engine protocol, over a socket.

pytest's main thread is the only one that talks to the child, so there is no lock and no
thread hand-off: while it waits for a case it reads what the child sent (finished cases,
progress, log lines) and tops up the requests the child holds. Requests are pulled here from
the task's iterator (the datasets and templates live here) in instalments: the child holds at
most `window` cases,
enough to stay at its max concurrency while pytest judges and reports; and no more is sent
while `window` finished cases wait for pytest to take them (a child faster than pytest would
otherwise pile up every reply here). At most two windows of cases are held, so memory does
not grow with the dataset."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_servebench.catalog.config import ModelConfig
from pytest_servebench.engine.jobs import (
    NOT_GIVEN,
    CaseJobs,
    CaseResult,
    Progress,
    RunAborted,
    prepare_folder,
    pull_case,
)
from pytest_servebench.engine.protocol import TaskSpec
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
from pytest_servebench.errors import ServebenchError

log = logging.getLogger("servebench.engine")

_READ_SIZE = 1 << 20
SEND_STALL = 60.0  # seconds the child may leave the socket full before it counts as stuck


class ProcessTask:
    """One task's requests, as ThreadTask offers them to the main thread (a TaskHandle)."""

    def __init__(self, engine: ProcessEngine, task_id: int, spec: TaskSpec, window: int) -> None:
        self.engine = engine
        self.task_id = task_id
        self.key = spec.key
        self.samples = spec.samples
        self.total = len(spec.case_ids)
        self.progress = Progress(total=self.total)
        self._cases = spec.cases
        self.pulled = 0  # cases taken from the iterator
        self.exhausted = False  # the last case was taken (or the iterator ended)
        self.window = window  # cases the child may hold, and finished cases we may hold
        self.in_child = 0
        self._waiting: set[str] = set(spec.case_ids)
        self._done: dict[str, CaseResult] = {}
        self._error: BaseException | None = None

    # -- main thread ---------------------------------------------------------------------
    def wait(self, case_id: str, timeout: float) -> CaseResult | None:
        """The result of a case, once; None if it did not come within `timeout` seconds.
        Raises the abort error for a case not delivered before the abort, KeyError for a case
        that was never submitted (or already taken)."""
        engine = self.engine
        engine.pump(0.0)  # take what came in and keep the child fed, even when not waiting
        result = self._done.pop(case_id, None)
        if result is not None:
            return result
        if case_id not in self._waiting:
            raise KeyError(case_id)
        deadline = time.monotonic() + timeout
        while self._error is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            engine.pump(left)
            result = self._done.pop(case_id, None)
            if result is not None:
                return result
        raise type(self._error)(*self._error.args)  # a fresh one per case

    # -- called by the engine ------------------------------------------------------------
    def deliver(self, result: CaseResult) -> None:
        if result.case_id in self._waiting and self._error is None:
            self._waiting.discard(result.case_id)
            self._done[result.case_id] = result

    def abort(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error

    def instalment(self) -> Feed | None:
        """Requests for the cases the child has room for (`last` once the iterator is done);
        None when too few to be worth a message."""
        if self.exhausted:
            return None
        room = min(self.window - self.in_child, self.window - len(self._done))
        left = self.total - self.pulled
        if room < self.window // 4 and room < left:
            return None
        cases: list[CaseJobs] = []
        while room > 0 and not self.exhausted:
            case = self._pull()
            if case is None:
                break
            if case.error is not None or not case.jobs:  # the case fails alone
                self.deliver(case.failed(self.samples))
                continue
            cases.append(case)
            self.in_child += 1
            room -= 1
        return Feed(self.task_id, cases, self.exhausted)

    def _pull(self) -> CaseJobs | None:
        case = pull_case(self._cases, self.key)
        if case is None:
            self.exhausted = True
            return None
        self.pulled += 1
        if self.pulled >= self.total:
            self.exhausted = True  # every case is in: no need to ask the iterator again
        return case

    def settle(self) -> None:
        """Once every case the iterator gave has come back, a case still awaited was never
        given (a caller's bug): it fails rather than keep its item waiting for ever."""
        if self.exhausted and not self.in_child and self._waiting and self._error is None:
            for case_id in list(self._waiting):
                self.deliver(CaseJobs(case_id, [], NOT_GIVEN).failed(self.samples))


# The child imports this very copy of the package, whatever the working folder holds.
_CHILD_MAIN = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from pytest_servebench.engine.child import main; sys.exit(main(sys.argv[1:]))"
)


class ProcessEngine:
    """The Engine protocol with the requests sent from a child process."""

    package_root = Path(__file__).resolve().parents[2]  # the folder that holds pytest_servebench

    def __init__(
        self, headers_for: Callable[[ModelConfig], dict[str, str]], logs: Path | None = None
    ) -> None:
        self._headers_for = headers_for
        # What the child prints itself (a crash's traceback): its log lines come over the
        # socket, and pytest's own stderr is pytest's capture file while it runs.
        self._stderr_path = (logs / f"engine-{os.getpid()}.stderr") if logs else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._buffer = bytearray()
        self._tasks: dict[int, ProcessTask] = {}
        self._replies: dict[int, tuple[str | None, str | None]] = {}
        self._next_id = 0
        self._closed = False
        self._torn = False  # a frame was cut short: the child can only be told by EOF
        self.fatal: str | None = None
        self.stopping = False
        self.on_progress: Callable[[bool], None] = lambda force: None

    # -- the process ---------------------------------------------------------------------
    def warm_up(self) -> None:
        """Start the process now (its imports overlap pytest's collection)."""
        self._ensure_process()

    def _ensure_process(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        ours, theirs = socket.socketpair()
        stderr: Any = None
        try:
            if self._stderr_path is not None:
                self._stderr_path.parent.mkdir(parents=True, exist_ok=True)
                stderr = self._stderr_path.open("ab")
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD_MAIN, str(self.package_root), str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stderr=stderr,
            )
        except OSError as exc:
            ours.close()
            raise ServebenchError(
                f"cannot start the engine process with {sys.executable}: {exc}; "
                "run with --sb-engine thread to send requests from pytest's own process"
            ) from exc
        finally:
            theirs.close()
            if stderr is not None:
                stderr.close()
        ours.setblocking(False)
        self._sock = ours
        return ours

    def _send(self, message: ToChild) -> None:
        if self._proc is None:
            self._ensure_process()
        sock = self._sock
        if sock is None:  # the child is gone: never start a second one mid-run
            raise RunAborted(self.fatal or "the engine process is gone")
        view = memoryview(frame(message))
        try:
            while view:
                try:
                    sent = sock.send(view)
                except BlockingIOError:
                    # The child's loop reads as it turns and never waits on us: a full socket
                    # for a minute means it is stuck.
                    if not select.select([], [sock], [], SEND_STALL)[1]:
                        self._lost(TimeoutError(f"it read nothing for {SEND_STALL:.0f}s"))
                        return
                    continue
                except OSError as exc:
                    self._lost(exc)
                    return
                view = view[sent:]
        except BaseException:  # Ctrl-C mid-frame: what follows would not parse
            self._torn = bool(view)
            raise

    def pump(self, timeout: float) -> None:
        """Read what the child sent, waiting up to `timeout` seconds for something; then top
        up every task's requests."""
        sock = self._sock
        if sock is None:
            return
        if timeout > 0 and not select.select([sock], [], [], timeout)[0]:
            return
        while True:
            try:
                data = sock.recv(_READ_SIZE)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                data = b""
            if not data:
                self._lost(None)
                return
            self._buffer += data
            if len(data) < _READ_SIZE:
                break
        for message in unframe(self._buffer):
            self._handle(message)
        self._feed()

    def _handle(self, message: FromChild) -> None:
        match message:
            case Done(task_id, results):
                task = self._tasks[task_id]
                task.in_child -= len(results)
                for result in results:
                    task.deliver(result)
            case Counters(counts, force):
                for task_id, counters in counts.items():
                    p = self._tasks[task_id].progress
                    p.posted, p.received, p.finished, p.failed, p.retried = counters
                self.on_progress(force)
            case LogLine(level, logger, text):
                logging.getLogger(logger).log(level, "%s", text)
            case Aborted(reason):
                self._abort(reason)
            case ModelName(request, name, error):
                self._replies[request] = (name, error)
            case Closed():
                self._closed = True

    def _feed(self) -> None:
        if self.stopping:
            return
        for task in self._tasks.values():
            feed = task.instalment()
            if feed is not None:
                self._send(feed)
            task.settle()

    def _abort(self, message: str) -> None:
        if self.fatal is None:
            self.fatal = message
        self.stopping = True
        for task in self._tasks.values():
            task.abort(RunAborted(self.fatal))

    def _lost(self, exc: BaseException | None) -> None:
        """The child is gone (or its socket broke)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._closed or self.stopping:
            return
        code = None
        if self._proc is not None:
            # the socket closes a moment before the process can be reaped
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self._proc.wait(1.0)
        detail = f"exit code {code}" if code is not None else f"{exc or 'connection closed'}"
        message = f"the engine process stopped unexpectedly ({detail}{self._last_words()})"
        log.error("run aborted: %s", message)
        self._abort(message)

    def _last_words(self) -> str:
        """The last line the child printed (its exception, after a traceback), redacted."""
        path = self._stderr_path
        try:
            lines = path.read_text(errors="replace").strip().splitlines() if path else []
        except OSError:
            return ""
        if not lines:
            return ""
        from pytest_servebench.redaction import redactor

        return f": {redactor(lines[-1][-500:])}; see {path}"

    # -- the Engine protocol -------------------------------------------------------------
    def model_name(self, config: ModelConfig) -> str:
        if config.model:
            return config.model
        request_id = self._next_id = self._next_id + 1
        self._send(AskModel(request_id, config, self._headers_for(config)))
        while request_id not in self._replies:
            if self._sock is None:
                raise RunAborted(self.fatal or "the engine process is gone")
            self.pump(0.5)
        name, error = self._replies.pop(request_id)
        if error is not None:
            self.fatal = error
            raise RunAborted(error)
        assert name is not None
        return name

    def start(self, spec: TaskSpec) -> ProcessTask:
        """Queue every case of a task, in item order; return at once. The child writes the
        predictions file: its folder is made here, so that a disk problem stops the run now."""
        problem = prepare_folder(spec.predictions)
        if problem is not None:
            self.fatal = self.fatal or problem
            raise RunAborted(self.fatal)
        task_id = self._next_id = self._next_id + 1
        config, samples = spec.model, spec.samples
        requests_per_case = 1 if samples > 1 and config.supports_n else samples
        # Room for stragglers: the child keeps sending while a slow case holds pytest up.
        window = max(1024, 4 * config.max_concurrency // max(1, requests_per_case))
        task = ProcessTask(self, task_id, spec, window)
        self._tasks[task_id] = task
        headers = self._headers_for(config)
        self._send(Start(task_id, spec.key, config, headers, spec.predictions, samples, task.total))
        self._feed()
        return task

    @property
    def tasks(self) -> list[ProcessTask]:
        return list(self._tasks.values())

    def close(self, timeout: float = 5.0) -> None:
        """Stop sending, drop what is in flight, have the child close its files; wait for it."""
        self.stopping = True
        proc = self._proc
        if proc is None:
            return
        if self._sock is not None and self._torn:
            self._sock.close()  # the child reads EOF, stops and closes its files
            self._sock = None
        if self._sock is not None:
            self._send(Close())
            deadline = time.monotonic() + timeout
            while self._sock is not None and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.pump(left)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self._proc = None
        path = self._stderr_path
        with contextlib.suppress(OSError):
            if path is not None and not path.stat().st_size:
                path.unlink()  # nothing to say: no empty file in logs/
