"""A fast, fault-injecting, OpenAI-compatible mock server.

Used by the end-to-end tests, the README demo and the performance benchmarks.
Written on raw :mod:`asyncio` (an :class:`asyncio.Protocol` with a minimal
HTTP/1.1 parser) so that one request costs a few tens of microseconds; it
imports only the standard library so that ``python -m`` start-up stays fast.

Everything it answers is simulated: no model is involved.

Endpoints (all under ``/v1``):

* ``GET /v1/models`` -- OpenAI list format with one model.
* ``POST /v1/chat/completions`` and ``POST /v1/completions`` -- streamed
  (SSE over ``Transfer-Encoding: chunked``) or not, with ``n``, ``max_tokens``
  (whitespace-separated tokens) and ``stop``.
* ``GET /health`` -- ``{"status": "ok"}``.

Determinism: which request gets a fault is a pure function of
``(seed, body_key(body), attempt)`` where *attempt* counts earlier requests
with an identical body; which answer a responder gives may depend on
``MockRequest.sample_index``, the number of choices already *answered* (not
faulted) for an identical body, plus the choice index. So a client that
retries after a fault sees the same sample again, and the truth a test
computes does not depend on the faults nor on the order of concurrent
requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import re
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FAULT_KINDS",
    "DatasetResponder",
    "FaultPlan",
    "MockRequest",
    "MockServer",
    "MockStats",
    "Reply",
    "body_key",
    "dataset_responder",
    "gsm8k_reference",
    "is_correct",
    "load_jsonl",
    "main",
]

BANNER = "mock OpenAI server listening on {url} (answers are simulated, not from a model)"

#: Fault kinds understood by :class:`FaultPlan` (in the order rates are laid on [0, 1)).
FAULT_KINDS: tuple[str, ...] = (
    "500",
    "503",
    "429",
    "401",
    "reset",
    "garbage",
    "cut",
    "stall",
    "slow_first_byte",
)

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
MODELS_PATH = "/v1/models"
HEALTH_PATH = "/health"

_MAX_HEADER_BYTES = 64 * 1024
_MAX_BODY_BYTES = 64 * 1024 * 1024
_MAX_N = 128


# --------------------------------------------------------------------------- data types


@dataclass
class Reply:
    """What a responder decides for one choice."""

    content: str
    reasoning: str | None = None  # sent as ``reasoning_content`` (chat) when not None
    finish_reason: str = "stop"  # "length" to simulate truncation
    prompt_tokens: int | None = None  # default: whitespace-token count of the prompt
    completion_tokens: int | None = None  # default: whitespace-token count of the reply


@dataclass
class MockRequest:
    """What a responder (or a custom fault callable) sees."""

    path: str  # "/v1/chat/completions" or "/v1/completions"
    body: dict  # parsed JSON body
    headers: dict[str, str]  # lower-cased names
    prompt_text: str  # chat: message contents joined by "\n"; completions: the prompt
    # Global sample number for an identical body: the number of choices already answered
    # (not faulted) for that body, plus choice_index. n=1 requests sent k times get 0..k-1,
    # one n=k request gets 0..k-1 too.
    sample_index: int
    choice_index: int  # index within n>1 (and within a list of prompts for /v1/completions)


Responder = Callable[[MockRequest], Reply | str]
FaultFn = Callable[[MockRequest, int], str | None]


def _unit(*parts: object) -> float:
    """Deterministic float in [0, 1) from the parts (stable across processes)."""
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 18446744073709551616.0


def _hash_int(*parts: object) -> int:
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big")


def body_key(body: Any) -> str:
    """Stable hash of a parsed JSON body (key order and whitespace do not matter).

    This is the key of ``MockStats.bodies`` and the body part of the fault decision.
    """
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(canon.encode(), digest_size=8).hexdigest()


@dataclass
class FaultPlan:
    """Deterministic fault injection.

    ``rates`` maps a kind of :data:`FAULT_KINDS` to the fraction of attempts that get it
    (rates must sum to <= 1). The decision for a request is
    ``decide(body_key(body), attempt)``, a pure function of ``(seed, body key, attempt)``
    where *attempt* is 0 for the first request with that body, 1 for the next, ... With
    ``only_first_attempt`` a body is faulted at most on its first attempt.

    ``custom(request, attempt) -> kind | None`` replaces the rates when given (the
    request's ``sample_index``/``choice_index`` are those it would get if answered).

    * ``retry_after``: seconds sent in ``Retry-After`` (and ``retry-after-ms``) with 429.
    * ``stall_seconds``: a "stall" sends nothing for that long, then resets the connection.
    * ``slow_first_byte``: extra seconds before an otherwise normal answer.
    """

    rates: Mapping[str, float] = field(default_factory=dict)
    seed: int = 0
    only_first_attempt: bool = False
    retry_after: float | None = None
    stall_seconds: float = 30.0
    slow_first_byte: float = 1.0
    custom: FaultFn | None = None

    def __post_init__(self) -> None:
        rates = dict(self.rates)
        for kind, rate in rates.items():
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
            if not 0.0 <= float(rate) <= 1.0:
                raise ValueError(f"fault rate for {kind!r} must be in [0, 1], got {rate!r}")
        if sum(rates.values()) > 1.0 + 1e-9:
            raise ValueError(f"fault rates sum to {sum(rates.values())} > 1")
        self.rates = rates
        # cumulative thresholds in the canonical kind order
        cum = 0.0
        self._thresholds: list[tuple[float, str]] = []
        for kind in FAULT_KINDS:
            rate = float(rates.get(kind, 0.0))
            if rate > 0:
                cum += rate
                self._thresholds.append((cum, kind))

    def decide(self, key: str, attempt: int) -> str | None:
        """The fault kind for attempt *attempt* of the body whose key is *key*, or None."""
        if not self._thresholds or (self.only_first_attempt and attempt > 0):
            return None
        u = _unit("fault", self.seed, key, attempt)
        for threshold, kind in self._thresholds:
            if u < threshold:
                return kind
        return None

    def _decide(self, request: MockRequest, key: str, attempt: int) -> str | None:
        if self.custom is None:
            return self.decide(key, attempt)
        if self.only_first_attempt and attempt > 0:
            return None
        kind = self.custom(request, attempt)
        if kind is not None and kind not in FAULT_KINDS:
            raise ValueError(f"custom fault function returned unknown kind {kind!r}")
        return kind


class MockStats:
    """Thread-safe counters of a :class:`MockServer`.

    Attributes are read directly (``stats.max_in_flight``) or as one consistent copy
    with :meth:`snapshot`. No secret is ever stored: only whether auth matched.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.requests: Counter[str] = Counter()  # path -> requests read
            self.status: Counter[int] = Counter()  # HTTP status -> responses started
            self.completed = 0  # completion replies fully sent (incl. slow_first_byte)
            self.in_flight = 0  # requests read and not yet answered
            self.max_in_flight = 0
            self.faults: Counter[str] = Counter()  # injected fault kind -> count
            self.bodies: Counter[str] = Counter()  # body_key -> times seen
            self.auth_failures = 0
            self.responder_errors = 0
            self.connections_opened = 0
            self.open_connections = 0
            self.max_open_connections = 0

    @property
    def total_requests(self) -> int:
        with self._lock:
            return sum(self.requests.values())

    @property
    def resent(self) -> int:
        """Completion requests whose body had been seen before (retries and re-samples)."""
        with self._lock:
            return sum(v - 1 for v in self.bodies.values())

    def times_seen(self, body: Any) -> int:
        """How many completion requests carried this (parsed) body."""
        key = body_key(body)
        with self._lock:
            return self.bodies.get(key, 0)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-serialisable copy of all counters."""
        with self._lock:
            return {
                "total_requests": sum(self.requests.values()),
                "requests": dict(self.requests),
                "status": {str(k): v for k, v in sorted(self.status.items())},
                "completed": self.completed,
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "faults": dict(self.faults),
                "distinct_bodies": len(self.bodies),
                "resent": sum(v - 1 for v in self.bodies.values()),
                "bodies": dict(self.bodies),
                "auth_failures": self.auth_failures,
                "responder_errors": self.responder_errors,
                "connections_opened": self.connections_opened,
                "open_connections": self.open_connections,
                "max_open_connections": self.max_open_connections,
            }

    # -- internal updates (called from the server's loop thread)

    def _begin(self, path: str) -> None:
        with self._lock:
            self.requests[path] += 1
            self.in_flight += 1
            if self.in_flight > self.max_in_flight:
                self.max_in_flight = self.in_flight

    def _end(self, status: int | None, completed: bool) -> None:
        with self._lock:
            self.in_flight -= 1
            if status is not None:
                self.status[status] += 1
            if completed:
                self.completed += 1

    def _conn(self, delta: int) -> None:
        with self._lock:
            self.open_connections += delta
            if delta > 0:
                self.connections_opened += 1
                if self.open_connections > self.max_open_connections:
                    self.max_open_connections = self.open_connections


# --------------------------------------------------------------------------- HTTP helpers

_REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}

_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", None),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    431: ("invalid_request_error", None),
    500: ("server_error", None),
    501: ("invalid_request_error", None),
    503: ("server_error", "service_unavailable"),
}


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


_CONNECTION_CLOSE = "Connection: close\r\n"


def _response(
    status: int,
    body: bytes,
    content_type: str = "application/json",
    extra: str = "",
    close: bool = False,
) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{extra}{_CONNECTION_CLOSE if close else ''}\r\n"
    )
    return head.encode("latin-1") + body


def _error_body(status: int, message: str) -> bytes:
    etype, code = _ERROR_TYPES.get(status, ("server_error", None))
    return _dumps(
        {"error": {"message": message, "type": etype, "param": None, "code": code}}
    ).encode()


_SSE_HEAD = (
    "HTTP/1.1 200 OK\r\n"
    "Content-Type: text/event-stream; charset=utf-8\r\n"
    "Cache-Control: no-cache\r\n"
    "Transfer-Encoding: chunked\r\n"
    "\r\n"
).encode("latin-1")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_DONE_CHUNK = _chunk(b"data: [DONE]\n\n")
_LAST_CHUNK = b"0\r\n\r\n"


# --------------------------------------------------------------------------- text helpers

_TOKEN_RE = re.compile(r"\S+")


def _count_tokens(text: str) -> int:
    return len(text.split())


def _cut_tokens(text: str, limit: int) -> tuple[str, bool]:
    """Keep the first *limit* whitespace-separated tokens; returns (text, was_cut)."""
    if len(text.split()) <= limit:
        return text, False
    if limit <= 0:
        return "", True
    end = 0
    for i, m in enumerate(_TOKEN_RE.finditer(text)):
        if i == limit:
            break
        end = m.end()
    return text[:end], True


def _message_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        out = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                out.append(part["text"])
            elif isinstance(part, str):
                out.append(part)
        return "".join(out)
    return str(content)


def _default_responder(request: MockRequest) -> Reply:
    return Reply("The answer is 42.")


class _BadRequest(Exception):
    pass


def _int_param(body: dict, name: str, default: int | None, lo: int, hi: int | None) -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi and value > hi):
        raise _BadRequest(f"'{name}' must be an integer >= {lo}" + (f" and <= {hi}" if hi else ""))
    return value


# --------------------------------------------------------------------------- the protocol

_KEEP, _CLOSE, _RESET = 0, 1, 2
_TCP_CORK: int | None = getattr(socket, "TCP_CORK", None)  # Linux


class _Conn(asyncio.Protocol):
    """One client connection: parse requests one at a time, answer in order."""

    __slots__ = ("buf", "closed", "head", "pending", "pending_status", "srv", "transport")

    def __init__(self, srv: MockServer) -> None:
        self.srv = srv
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.head: tuple[str, str, str, dict[str, str], int] | None = None
        self.pending: asyncio.TimerHandle | bool | None = None
        self.pending_status: int | None = None
        self.closed = False

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.srv._conns.add(self)
        self.srv.stats._conn(+1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.pending is None:
            self._process()

    def eof_received(self) -> bool | None:
        # Half-closed by the client: finish what is pending, then close.
        return self.pending is not None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.srv._conns.discard(self)
        self.srv.stats._conn(-1)
        if self.pending is not None:
            if isinstance(self.pending, asyncio.TimerHandle):
                self.pending.cancel()
            self.pending = None
            self.srv.stats._end(None, False)

    # -- parsing

    def _process(self) -> None:
        while not self.closed and self.pending is None:
            req = self._parse()
            if req is None:
                return
            self.srv._dispatch(self, *req)

    def _parse(self) -> tuple[str, str, str, dict[str, str], bytes] | None:
        buf = self.buf
        if self.head is None:
            while buf[:2] == b"\r\n":  # tolerate empty lines between requests
                del buf[:2]
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEADER_BYTES:
                    self._fatal(431, "request headers too large")
                return None
            lines = buf[:end].decode("latin-1").split("\r\n")
            del buf[: end + 4]
            parts = lines[0].split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                self._fatal(400, "malformed request line")
                return None
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep:
                    self._fatal(400, "malformed header line")
                    return None
                headers[name.strip().lower()] = value.strip()
            if "transfer-encoding" in headers:
                self._fatal(501, "chunked request bodies are not supported")
                return None
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                length = -1
            if length < 0:
                self._fatal(400, "invalid Content-Length")
                return None
            if length > _MAX_BODY_BYTES:
                self._fatal(413, "request body too large")
                return None
            self.head = (parts[0], parts[1], parts[2], headers, length)
            if (
                length > len(buf)
                and headers.get("expect", "").lower() == "100-continue"
                and self.transport is not None
            ):
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        method, target, version, headers, length = self.head
        if len(buf) < length:
            return None
        body = bytes(buf[:length])
        del buf[:length]
        self.head = None
        return method, target, version, headers, body

    def _fatal(self, status: int, message: str) -> None:
        """Answer a request that cannot be parsed, then close."""
        self.srv.stats._begin("<malformed>")
        self.srv.stats._end(status, False)
        if self.transport is not None and not self.closed:
            self.transport.write(_response(status, _error_body(status, message), close=True))
            self.transport.close()
        self.closed = True

    # -- answering

    def _schedule(
        self, delay: float, data: bytes | None, mode: int, status: int | None, completed: bool
    ) -> None:
        if delay > 0:
            self.pending = self.srv._loop.call_later(
                delay, self._finish, data, mode, status, completed, True
            )
        else:
            self.pending = True
            self._finish(data, mode, status, completed, False)

    def _finish(
        self, data: bytes | None, mode: int, status: int | None, completed: bool, later: bool
    ) -> None:
        self.pending = None
        self.srv.stats._end(status, completed)
        transport = self.transport
        if self.closed or transport is None:
            return
        if mode == _CLOSE and data and _TCP_CORK is not None:
            # hold the data back until shutdown() so that data and FIN leave together:
            # otherwise a client could already reuse the connection in between
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 1)
        if data:
            transport.write(data)
        if mode == _KEEP:
            if later and self.buf:
                self._process()  # pipelined requests that arrived meanwhile
        elif mode == _CLOSE:
            self.closed = True
            # FIN now (asyncio's close() alone defers it to the next loop iteration)
            if transport.can_write_eof():
                transport.write_eof()
            transport.close()
        else:  # _RESET: RST instead of FIN
            self.closed = True
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()


# --------------------------------------------------------------------------- the server


class MockServer:
    """OpenAI-compatible mock server on raw asyncio.

    Use :meth:`start` / :meth:`stop` (or ``with MockServer(...) as srv:``) to run it on
    its own event loop in a daemon thread, or ``await start_async()`` /
    ``await stop_async()`` to run it on the current loop.
    """

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        faults: FaultPlan | FaultFn | None = None,
        api_key: str | None = None,
        model_name: str = "mock-model",
        close_after_stream: bool = False,
        stream_chunk_chars: int = 8,
        include_stream_usage: bool = True,
        ssl: Any = None,
    ) -> None:
        if stream_chunk_chars < 1:
            raise ValueError("stream_chunk_chars must be >= 1")
        if latency < 0:
            raise ValueError("latency must be >= 0")
        self.responder: Responder = responder or _default_responder
        self.host = host
        self.port = port
        self.latency = float(latency)
        if faults is not None and not isinstance(faults, FaultPlan):
            if not callable(faults):
                raise TypeError("faults must be a FaultPlan, a callable or None")
            faults = FaultPlan(custom=faults)
        self.faults: FaultPlan | None = faults
        self._auth = f"Bearer {api_key}".encode() if api_key else None
        self.model_name = model_name
        self.close_after_stream = close_after_stream
        self.stream_chunk_chars = int(stream_chunk_chars)
        self.include_stream_usage = include_stream_usage
        self.ssl = ssl  # an ssl.SSLContext (server side): serve https
        self.stats = MockStats()
        self._state_lock = threading.Lock()
        self._attempts: dict[str, int] = {}  # body key -> requests seen
        self._answered: dict[str, int] = {}  # body key -> choices answered
        self._ids = 0
        self._conns: set[_Conn] = set()
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._thread: threading.Thread | None = None
        self._models_body = _dumps(
            {
                "object": "list",
                "data": [
                    {
                        "id": model_name,
                        "object": "model",
                        "created": int(time.time()),
                        "owned_by": "pytest-servebench-mock",
                    }
                ],
            }
        ).encode()

    # -- lifecycle

    @property
    def base_url(self) -> str:
        return f"{'https' if self.ssl else 'http'}://{self.host}:{self.port}/v1"

    async def start_async(self) -> MockServer:
        """Start listening on the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            lambda: _Conn(self),
            self.host,
            self.port,
            backlog=4096,
            reuse_address=True,
            ssl=self.ssl,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop_async(self) -> None:
        """Stop listening and drop every connection (pending replies are never sent)."""
        if self._server is None:
            return
        self._server.close()
        for conn in list(self._conns):
            if conn.transport is not None:
                conn.transport.abort()
        await self._server.wait_closed()
        self._server = None

    def start(self) -> MockServer:
        """Run on a private event loop in a daemon thread; returns once listening."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        ready = threading.Event()
        error: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as exc:
                error.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"mockserver-{id(self):x}", daemon=True)
        self._thread.start()
        ready.wait()
        if error:
            self._thread.join()
            self._thread = None
            raise error[0]
        return self

    def stop(self) -> None:
        thread = self._thread
        if thread is None:
            return
        loop = self._loop
        if loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self.stop_async(), loop)
            try:
                fut.result(timeout=10)
            finally:
                loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> MockServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Reset the counters and the per-body attempt / sample counters."""
        with self._state_lock:
            self._attempts.clear()
            self._answered.clear()
        self.stats.reset()

    # -- request handling (loop thread)

    def _dispatch(
        self, conn: _Conn, method: str, target: str, version: str, headers: dict, raw: bytes
    ) -> None:
        path = target.split("?", 1)[0]
        self.stats._begin(path)
        close = False
        if version == "HTTP/1.0":
            close = headers.get("connection", "").lower() != "keep-alive"
        elif headers.get("connection", "").lower() == "close":
            close = True
        mode = _CLOSE if close else _KEEP
        delay = self.latency

        def error(status: int, message: str, extra: str = "") -> None:
            conn._schedule(
                delay, _response(status, _error_body(status, message), extra=extra, close=close),
                mode, status, False,
            )  # fmt: skip

        is_chat = path == CHAT_PATH
        if not is_chat and path != COMPLETIONS_PATH:
            if path in (MODELS_PATH, HEALTH_PATH):
                if method != "GET":
                    return error(405, f"method {method} not allowed on {path}")
                if path == MODELS_PATH and not self._auth_ok(headers):
                    return error(401, "Incorrect API key provided.")
                body = self._models_body if path == MODELS_PATH else b'{"status":"ok"}'
                return conn._schedule(delay, _response(200, body, close=close), mode, 200, False)
            return error(404, f"no route for {method} {path}")
        if method != "POST":
            return error(405, f"method {method} not allowed on {path}")
        if not self._auth_ok(headers):
            return error(401, "Incorrect API key provided.")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return error(400, f"request body is not valid JSON: {exc}")
        if not isinstance(body, dict):
            return error(400, "request body must be a JSON object")
        try:
            if is_chat:
                messages = body.get("messages")
                if not isinstance(messages, list) or not messages:
                    raise _BadRequest("'messages' must be a non-empty list")
                prompts = [
                    "\n".join(
                        _message_text(m.get("content")) if isinstance(m, dict) else str(m)
                        for m in messages
                    )
                ]
            else:
                prompt = body.get("prompt")
                if isinstance(prompt, str):
                    prompts = [prompt]
                elif (
                    isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt)
                ):
                    prompts = prompt
                else:
                    raise _BadRequest("'prompt' must be a string or a non-empty list of strings")
            n = _int_param(body, "n", 1, 1, _MAX_N)
            max_tokens = _int_param(body, "max_tokens", None, 0, None)
            if max_tokens is None and is_chat:
                max_tokens = _int_param(body, "max_completion_tokens", None, 0, None)
            stop = body.get("stop")
            if stop is None:
                stops: list[str] = []
            elif isinstance(stop, str):
                stops = [stop] if stop else []
            elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
                stops = [s for s in stop if s]
            else:
                raise _BadRequest("'stop' must be a string or a list of strings")
        except _BadRequest as exc:
            return error(400, str(exc))
        assert n is not None
        stream = bool(body.get("stream"))

        key = body_key(body)
        with self._state_lock:
            attempt = self._attempts.get(key, 0)
            self._attempts[key] = attempt + 1
            base = self._answered.get(key, 0)
            self._ids += 1
            rid = self._ids
        with self.stats._lock:
            self.stats.bodies[key] += 1

        kind: str | None = None
        plan = self.faults
        if plan is not None:
            probe = MockRequest(path, body, headers, prompts[0], base, 0)
            try:
                kind = plan._decide(probe, key, attempt)
            except Exception as exc:
                self._log_responder_error(exc)
                return error(500, f"fault function failed: {exc!r}")
            if kind is not None:
                with self.stats._lock:
                    self.stats.faults[kind] += 1
            if kind == "slow_first_byte":
                delay += plan.slow_first_byte

        if kind is not None and kind not in ("cut", "slow_first_byte"):
            assert plan is not None
            if kind in ("500", "503"):
                msg = "simulated server error" if kind == "500" else "simulated overload"
                return error(int(kind), msg)
            if kind == "429":
                extra = ""
                if plan.retry_after is not None:
                    extra = (
                        f"Retry-After: {plan.retry_after:g}\r\n"
                        f"retry-after-ms: {round(plan.retry_after * 1000)}\r\n"
                    )
                return error(429, "simulated rate limit", extra)
            if kind == "401":
                return error(401, "Incorrect API key provided.")
            if kind == "reset":
                return conn._schedule(delay, None, _RESET, None, False)
            if kind == "stall":
                return conn._schedule(delay + plan.stall_seconds, None, _RESET, None, False)
            if kind == "garbage":
                if stream:
                    data = (
                        _SSE_HEAD
                        + _chunk(b'data: {"id": "chatcmpl-garbage", "choices": [{"delta\n\n')
                        + _DONE_CHUNK
                        + _LAST_CHUNK
                    )
                else:
                    data = _response(
                        200, b'{"id": "cmpl-garbage", "choices": [{<html>502 Bad Gateway</html>'
                    )
                return conn._schedule(delay, data, mode, 200, False)

        # ---- a real answer (possibly cut)
        try:
            choices = self._answer(path, body, headers, prompts, n, base, max_tokens, stops)
        except Exception as exc:
            self._log_responder_error(exc)
            return error(500, f"responder failed: {exc!r}")
        if kind != "cut":
            with self._state_lock:
                self._answered[key] = self._answered.get(key, 0) + n
        model = body.get("model") or self.model_name
        if not isinstance(model, str):
            model = self.model_name
        created = int(time.time())
        prompt_tokens = choices[0][3] if choices else 0
        completion_tokens = sum(c[4] for c in choices)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if stream:
            so = body.get("stream_options")
            want_usage = (
                self.include_stream_usage and isinstance(so, dict) and bool(so.get("include_usage"))
            )
            events = self._stream_events(is_chat, rid, created, model, choices, usage, want_usage)
            if kind == "cut":
                keep = max(1, len(events) // 2)
                data = _SSE_HEAD + b"".join(_chunk(e) for e in events[:keep])
                return conn._schedule(delay, data, _CLOSE, 200, False)
            data = _SSE_HEAD + b"".join(_chunk(e) for e in events) + _DONE_CHUNK + _LAST_CHUNK
            smode = _CLOSE if (close or self.close_after_stream) else _KEEP
            return conn._schedule(delay, data, smode, 200, True)
        if is_chat:
            out_choices = []
            for i, (content, reasoning, finish, _pt, _ct) in enumerate(choices):
                message: dict[str, Any] = {"role": "assistant", "content": content}
                if reasoning is not None:
                    message["reasoning_content"] = reasoning
                out_choices.append(
                    {"index": i, "message": message, "logprobs": None, "finish_reason": finish}
                )
            obj = {
                "id": f"chatcmpl-mock-{rid}",
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": out_choices,
                "usage": usage,
            }
        else:
            obj = {
                "id": f"cmpl-mock-{rid}",
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [
                    {"index": i, "text": c[0], "logprobs": None, "finish_reason": c[2]}
                    for i, c in enumerate(choices)
                ],
                "usage": usage,
            }
        payload = _dumps(obj).encode()
        if kind == "cut":
            full = _response(200, payload)
            data = full[: len(full) - len(payload) // 2]
            return conn._schedule(delay, data, _CLOSE, 200, False)
        return conn._schedule(delay, _response(200, payload, close=close), mode, 200, True)

    def _auth_ok(self, headers: dict[str, str]) -> bool:
        if self._auth is None:
            return True
        given = headers.get("authorization", "").encode("latin-1", "replace")
        if hmac.compare_digest(given, self._auth):
            return True
        with self.stats._lock:
            self.stats.auth_failures += 1
        return False

    def _log_responder_error(self, exc: BaseException) -> None:
        with self.stats._lock:
            self.stats.responder_errors += 1
        import traceback

        print("mockserver: responder error:", file=sys.stderr)
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)

    def _answer(
        self,
        path: str,
        body: dict,
        headers: dict[str, str],
        prompts: list[str],
        n: int,
        base: int,
        max_tokens: int | None,
        stops: list[str],
    ) -> list[tuple[str, str | None, str, int, int]]:
        """-> one (content, reasoning, finish_reason, prompt_tokens, completion_tokens) per choice."""
        is_chat = path == CHAT_PATH
        out = []
        prompt_total = 0
        for prompt in prompts:
            reply0_pt: int | None = None
            for j in range(n):
                reply = self.responder(MockRequest(path, body, headers, prompt, base + j, j))
                if isinstance(reply, str):
                    reply = Reply(reply)
                elif not isinstance(reply, Reply):
                    raise TypeError(f"responder returned {type(reply).__name__}, not Reply|str")
                content = reply.content or ""
                reasoning = reply.reasoning if is_chat else None
                finish = reply.finish_reason or "stop"
                cut = False
                if stops:
                    pos = min((p for p in (content.find(s) for s in stops) if p >= 0), default=-1)
                    if pos >= 0:
                        content = content[:pos]
                        finish = "stop"
                        cut = True
                if max_tokens is not None:
                    budget = max_tokens
                    reasoning_cut = False
                    if reasoning is not None:
                        # reasoning tokens count against max_tokens, as on real servers
                        reasoning, reasoning_cut = _cut_tokens(reasoning, budget)
                        budget -= _count_tokens(reasoning)
                    if reasoning_cut:
                        content, finish, cut = "", "length", True
                    else:
                        content, content_cut = _cut_tokens(content, budget)
                        if content_cut:
                            finish, cut = "length", True
                if reply.completion_tokens is not None and not cut:
                    ct = reply.completion_tokens
                else:
                    ct = _count_tokens(content) + (_count_tokens(reasoning) if reasoning else 0)
                if reply0_pt is None:
                    reply0_pt = (
                        reply.prompt_tokens
                        if reply.prompt_tokens is not None
                        else _count_tokens(prompt)
                    )
                out.append((content, reasoning, finish, 0, ct))
            prompt_total += reply0_pt or 0
        if out:
            c = out[0]
            out[0] = (c[0], c[1], c[2], prompt_total, c[4])
        return out

    def _stream_events(
        self,
        is_chat: bool,
        rid: int,
        created: int,
        model: str,
        choices: list[tuple[str, str | None, str, int, int]],
        usage: dict,
        want_usage: bool,
    ) -> list[bytes]:
        size = self.stream_chunk_chars
        model_js = _dumps(model)
        events: list[str] = []
        if is_chat:
            pre = (
                f'data: {{"id":"chatcmpl-mock-{rid}","object":"chat.completion.chunk",'
                f'"created":{created},"model":{model_js},"choices":['
            )
            for i, (content, reasoning, finish, _pt, _ct) in enumerate(choices):
                events.append(
                    f'{pre}{{"index":{i},"delta":{{"role":"assistant","content":""}},'
                    f'"logprobs":null,"finish_reason":null}}]}}\n\n'
                )
                if reasoning:
                    for k in range(0, len(reasoning), size):
                        events.append(
                            f'{pre}{{"index":{i},"delta":{{"reasoning_content":'
                            f"{_dumps(reasoning[k : k + size])}}},"
                            f'"logprobs":null,"finish_reason":null}}]}}\n\n'
                        )
                pieces = [content[k : k + size] for k in range(0, len(content), size)] or [""]
                last = len(pieces) - 1
                for k, piece in enumerate(pieces):
                    fin = _dumps(finish) if k == last else "null"
                    events.append(
                        f'{pre}{{"index":{i},"delta":{{"content":{_dumps(piece)}}},'
                        f'"logprobs":null,"finish_reason":{fin}}}]}}\n\n'
                    )
        else:
            pre = (
                f'data: {{"id":"cmpl-mock-{rid}","object":"text_completion",'
                f'"created":{created},"model":{model_js},"choices":['
            )
            for i, (content, _r, finish, _pt, _ct) in enumerate(choices):
                pieces = [content[k : k + size] for k in range(0, len(content), size)] or [""]
                last = len(pieces) - 1
                for k, piece in enumerate(pieces):
                    fin = _dumps(finish) if k == last else "null"
                    events.append(
                        f'{pre}{{"index":{i},"text":{_dumps(piece)},'
                        f'"logprobs":null,"finish_reason":{fin}}}]}}\n\n'
                    )
        if want_usage:
            events.append(f'{pre}],"usage":{_dumps(usage)}}}\n\n')
        return [e.encode() for e in events]


# --------------------------------------------------------------------------- dataset responder


def load_jsonl(path: str | os.PathLike[str]) -> list[dict]:
    """Read a JSON-lines file (blank lines skipped)."""
    records = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: invalid JSON: {exc}") from None
    return records


def is_correct(question: str, sample_index: int, p_correct: float, seed: int = 0) -> bool:
    """Whether the dataset responder answers *question* right for that sample.

    *question* is the record's question text exactly as stored in the record.
    """
    if p_correct >= 1.0:
        return True
    if p_correct <= 0.0:
        return False
    return _unit("correct", seed, question, sample_index) < p_correct


def gsm8k_reference(record: Mapping[str, Any]) -> str:
    """The text after the last ``####`` of ``record["answer"]``, commas removed."""
    answer = str(record.get("answer", ""))
    if "####" in answer:
        answer = answer.rsplit("####", 1)[1]
    return answer.strip().replace(",", "")


def _plain_reference(record: Mapping[str, Any]) -> str:
    return str(record.get("answer", "")).strip()


_INT_RE = re.compile(r"-?\d+")
_DEC_RE = re.compile(r"-?\d+\.\d+")

_COT = (
    "Let's think step by step. We read the problem carefully and work out each quantity.",
    "First we identify what is given, then we combine the quantities to get the result.",
    "Reasoning: we set up the computation from the statement and simplify it.",
    "We break the problem into smaller steps and carry out each one in order.",
)

# formats for the final line; {v} plain value, {t} thousands-separated value
_GSM8K_FORMATS = (
    "The answer is {v}.",
    "The answer is {t}.",
    "The answer is ${v}.",
    "**Answer:** {v}",
    "\\boxed{{{v}}}",
    "answer: {v}",
    "#### {t}",
)

_MCQ_FORMATS = ("The answer is ({v}).", "Answer: {v}", "**Answer:** {v}", "\\boxed{{{v}}}")


def _thousands(value: str) -> str:
    if _INT_RE.fullmatch(value):
        return f"{int(value):,}"
    if _DEC_RE.fullmatch(value):
        whole, frac = value.split(".")
        return f"{int(whole):,}.{frac}"
    return value


def _wrong_number(value: str, h: int) -> str:
    if _INT_RE.fullmatch(value):
        v = int(value)
        candidates = [v + 1, v - 1, v + 10, v * 2 if v else 7]
        wrong = candidates[h % len(candidates)]
        return str(wrong if wrong != v else v + 1)
    if _DEC_RE.fullmatch(value):
        decimals = len(value.split(".")[1])
        return f"{float(value) + 1:.{decimals}f}"
    return "unknown"


class DatasetResponder:
    """Responder answering questions of a dataset right with probability ``p_correct``.

    See :func:`dataset_responder`.
    """

    PREFIX_CHARS = 64

    def __init__(
        self,
        records: Iterable[Mapping[str, Any]],
        question_field: str = "question",
        answer_fn: Callable[[Mapping[str, Any]], str] | None = None,
        p_correct: float = 0.7,
        seed: int = 0,
        style: str = "gsm8k",
        reasoning: bool = False,
        n_choices: int = 4,
    ) -> None:
        if style not in ("gsm8k", "plain", "mcq"):
            raise ValueError(f"unknown style {style!r} (gsm8k, plain, mcq)")
        self.records = list(records)
        self.question_field = question_field
        self.answer_fn = answer_fn or (gsm8k_reference if style == "gsm8k" else _plain_reference)
        self.p_correct = p_correct
        self.seed = seed
        self.style = style
        self.reasoning = reasoning
        self.n_choices = n_choices
        self._norm_q: list[str] = []
        self._index: dict[str, list[int]] = {}
        self._short_lengths: set[int] = set()
        for i, rec in enumerate(self.records):
            q = rec.get(question_field)
            nq = " ".join(q.split()) if isinstance(q, str) else ""
            self._norm_q.append(nq)
            if not nq:
                continue
            self._index.setdefault(nq[: self.PREFIX_CHARS], []).append(i)
            if len(nq) < self.PREFIX_CHARS:
                self._short_lengths.add(len(nq))
        self._short_sorted = sorted(self._short_lengths)
        self._cache: dict[str, int] = {}
        self._lock = threading.Lock()

    # -- lookup

    def find(self, prompt_text: str) -> Mapping[str, Any] | None:
        """The record the prompt asks about, or None."""
        i = self.find_index(prompt_text)
        return None if i < 0 else self.records[i]

    def find_index(self, prompt_text: str) -> int:
        cached = self._cache.get(prompt_text)
        if cached is not None:
            return cached
        i = self._find(prompt_text)
        with self._lock:
            if len(self._cache) > 200_000:
                self._cache.clear()
            self._cache[prompt_text] = i
        return i

    def _find(self, prompt_text: str) -> int:
        pos = prompt_text.rfind("Question:")
        tail = prompt_text[pos + len("Question:") :] if pos >= 0 else prompt_text
        ntail = " ".join(tail.split())
        # O(1)-ish: the question should start the tail
        best, best_len = -1, -1
        keys = [ntail[: self.PREFIX_CHARS]]
        keys += [ntail[:length] for length in self._short_sorted if length <= len(ntail)]
        for key in keys:
            for i in self._index.get(key, ()):
                nq = self._norm_q[i]
                if len(nq) > best_len and ntail.startswith(nq):
                    best, best_len = i, len(nq)
        if best >= 0:
            return best
        # fallback: substring scan; the latest occurrence wins, then the longest question
        texts = [ntail] if pos < 0 else [ntail, " ".join(prompt_text.split())]
        for text in texts:
            best_key = (-1, -1)
            for i, nq in enumerate(self._norm_q):
                if nq:
                    p = text.rfind(nq)
                    if p >= 0 and (p, len(nq)) > best_key:
                        best_key, best = (p, len(nq)), i
            if best >= 0:
                return best
        return -1

    # -- answers

    def reference(self, record: Mapping[str, Any]) -> str:
        return str(self.answer_fn(record))

    def __call__(self, request: MockRequest) -> Reply:
        i = self.find_index(request.prompt_text)
        if i < 0:
            return Reply("I don't know.")
        record = self.records[i]
        question = record[self.question_field]
        reference = self.reference(record)
        right = is_correct(question, request.sample_index, self.p_correct, self.seed)
        return self.render(question, reference, right, request.sample_index)

    def render(self, question: str, reference: str, right: bool, sample_index: int) -> Reply:
        h = _hash_int("format", self.seed, question, sample_index)
        cot = _COT[(h >> 16) % len(_COT)]
        if self.style == "gsm8k":
            value = reference if right else _wrong_number(reference, h >> 32)
            fmt = _GSM8K_FORMATS[h % len(_GSM8K_FORMATS)]
            if fmt.startswith("The answer is $") and value.startswith("-"):
                fmt = "The answer is {v}."
            final = fmt.format(v=value, t=_thousands(value))
        elif self.style == "mcq":
            letters = "ABCDEFGHIJ"[: max(2, self.n_choices)]
            ref = reference.strip()
            if ref.isdigit() and int(ref) < len(letters):
                ref = letters[int(ref)]
            ref = ref.upper()
            if right or ref not in letters:
                value = ref
            else:
                shift = 1 + (h >> 32) % (len(letters) - 1)
                value = letters[(letters.index(ref) + shift) % len(letters)]
            final = _MCQ_FORMATS[h % len(_MCQ_FORMATS)].format(v=value)
        else:  # plain
            if right:
                return Reply(reference)
            wrong = _wrong_number(reference, h >> 32)
            return Reply(wrong if wrong != "unknown" else "none of these")
        if self.reasoning:
            return Reply(final, reasoning=cot)
        return Reply(f"{cot}\n{final}")


def dataset_responder(
    records: Iterable[Mapping[str, Any]],
    question_field: str = "question",
    answer_fn: Callable[[Mapping[str, Any]], str] | None = None,
    p_correct: float = 0.7,
    seed: int = 0,
    style: str = "gsm8k",
    reasoning: bool = False,
) -> DatasetResponder:
    """A responder that recognises which record a prompt asks about and answers it.

    The question is looked up in the text after the LAST ``Question:`` of the prompt
    (the whole prompt if absent), by a whitespace-normalised prefix of the record's
    question, with a substring scan as fallback. The answer is right iff
    ``is_correct(record[question_field], request.sample_index, p_correct, seed)``.

    Styles: ``gsm8k`` (reference = ``answer_fn(record)``, by default the text after
    ``####`` with commas removed; replies are a short chain of thought and a final line
    in a deterministically varied format; a wrong reply gives another number),
    ``plain`` (the reference itself / a wrong value) and ``mcq`` (a letter).
    ``reasoning=True`` puts the chain of thought in ``reasoning_content``.
    An unknown question gets ``"I don't know."``.
    """
    return DatasetResponder(
        records,
        question_field=question_field,
        answer_fn=answer_fn,
        p_correct=p_correct,
        seed=seed,
        style=style,
        reasoning=reasoning,
    )


# --------------------------------------------------------------------------- CLI


def _parse_args(argv: list[str] | None):
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m pytest_servebench.testing.mockserver",
        description="Fault-injecting OpenAI-compatible mock server (answers are simulated).",
    )
    p.add_argument("--dataset", help="JSONL dataset to answer questions from")
    p.add_argument("--question-field", default="question")
    p.add_argument("--style", default="gsm8k", choices=("gsm8k", "plain", "mcq"))
    p.add_argument("--reasoning", action="store_true", help="chain of thought in reasoning_content")
    p.add_argument("--p-correct", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latency", type=float, default=0.0, help="seconds before each reply")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file", help="write the port here once listening")
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND=RATE",
        help=f"inject a fault (kinds: {', '.join(FAULT_KINDS)}); repeatable",
    )
    p.add_argument("--fault-seed", type=int, default=None, help="default: --seed")
    p.add_argument("--only-first-attempt", action="store_true")
    p.add_argument("--retry-after", type=float, default=None)
    p.add_argument("--stall-seconds", type=float, default=30.0)
    p.add_argument("--slow-first-byte", type=float, default=1.0)
    p.add_argument("--api-key-env", metavar="NAME", help="require the API key in env var NAME")
    p.add_argument("--model-name", default="mock-model")
    p.add_argument("--close-after-stream", action="store_true")
    p.add_argument("--stream-chunk-chars", type=int, default=8)
    p.add_argument("--stats-file", help="write stats JSON here on exit (SIGTERM/SIGINT)")
    args = p.parse_args(argv)
    rates: dict[str, float] = {}
    for spec in args.fault:
        kind, sep, rate = spec.partition("=")
        try:
            if not sep:
                raise ValueError
            rates[kind.strip()] = float(rate)
        except ValueError:
            p.error(f"--fault expects KIND=RATE, got {spec!r}")
    args.rates = rates
    return p, args


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    import signal

    parser, args = _parse_args(argv)
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            parser.error(f"environment variable {args.api_key_env} is not set or empty")
    try:
        plan = None
        if args.rates:
            plan = FaultPlan(
                args.rates,
                seed=args.seed if args.fault_seed is None else args.fault_seed,
                only_first_attempt=args.only_first_attempt,
                retry_after=args.retry_after,
                stall_seconds=args.stall_seconds,
                slow_first_byte=args.slow_first_byte,
            )
    except ValueError as exc:
        parser.error(str(exc))
    responder: Responder | None = None
    if args.dataset:
        responder = dataset_responder(
            load_jsonl(args.dataset),
            question_field=args.question_field,
            p_correct=args.p_correct,
            seed=args.seed,
            style=args.style,
            reasoning=args.reasoning,
        )
    server = MockServer(
        responder,
        host=args.host,
        port=args.port,
        latency=args.latency,
        faults=plan,
        api_key=api_key,
        model_name=args.model_name,
        close_after_stream=args.close_after_stream,
        stream_chunk_chars=args.stream_chunk_chars,
    )

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await server.start_async()
        if args.port_file:
            _write_atomic(args.port_file, f"{server.port}\n")
        print(BANNER.format(url=server.base_url), flush=True)
        await stop.wait()
        await server.stop_async()

    try:
        asyncio.run(serve())
    finally:
        if args.stats_file:
            _write_atomic(args.stats_file, json.dumps(server.stats.snapshot(), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
