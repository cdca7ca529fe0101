"""A lean HTTP/1.1 transport for httpx.AsyncClient, on asyncio protocols.

httpcore's connection pool spends O(connections) of Python on every request it assigns and
every connection it checks (measured: one AsyncClient with 256 connections served ~50 req/s
against a server with 200 ms latency). An evaluation only ever talks HTTP/1.1 to a handful of
origins with a known concurrency, so this transport keeps a plain keep-alive pool: idle
connections per origin in a list, a connection count, and a FIFO of waiters when the count is
at its limit. Each request costs O(1).

What it speaks: HTTP/1.1 (and 1.0 replies), ``Content-Length``, chunked and read-until-close
bodies, 1xx replies skipped, keep-alive unless either side says ``Connection: close``, TLS for
``https://`` (the same certifi trust store httpx uses by default). Response bodies are an async
byte stream, so streamed (SSE) replies arrive piece by piece; httpx decodes content encodings
and text as usual.

``LeanTransport.send_raw`` is the same pool and wire code without httpx around it: it takes
a request already serialized and returns the reply's parsed head and its body stream. httpx's
client costs several times what the transport does per request; client.send uses this for
its hot POST.

Errors are httpx's, so callers cannot tell the difference from httpx's own transport:

* connect failures: ``httpx.ConnectError``; connect timeout: ``httpx.ConnectTimeout``;
* no byte between two reads within the read timeout: ``httpx.ReadTimeout`` (``WriteTimeout``
  when the server stops reading the request, ``PoolTimeout`` when no connection frees up);
* the server closes the connection before sending a single byte of the reply:
  ``httpx.RemoteProtocolError("Server disconnected without sending a response.")``, the
  message httpcore uses, which callers read as a dead keep-alive connection (safe to resend);
* the connection reset, or closed in the middle of a reply: ``httpx.ReadError`` and
  ``httpx.RemoteProtocolError`` (whose message never says "without sending": the server did
  start answering);
* a reply that is not HTTP: ``httpx.RemoteProtocolError``.

A connection goes back to the pool only after its reply was read to the end; a reply closed
early (an error, a cancelled task) closes its connection. A connection the server closed while
it sat idle is noticed (EOF arrives on the protocol) and never reused.
"""

from __future__ import annotations

import asyncio
import collections
import select
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

__all__ = ["LeanTransport", "make_client", "origin"]

_MAX_HEAD = 64 * 1024  # bytes of status line and headers
_HIGH_WATER = 256 * 1024  # pause reading when this much is buffered and not consumed
_READ_SIZE = 64 * 1024  # one read from the socket at most
_NO_BODY_STATUS = (204, 304)
_poll = getattr(select, "poll", None)  # not on Windows: there, rely on eof_received alone
_POLL_MASK = getattr(select, "POLLIN", 1) | getattr(select, "POLLRDHUP", 0)


Timeouts = Mapping[str, float | None]  # httpx's form: "connect", "read", "write", "pool"


def _timeouts(request: httpx.Request) -> Timeouts:
    timeouts = request.extensions.get("timeout")
    return timeouts if isinstance(timeouts, dict) else {}


def origin(url: httpx.URL) -> tuple[bytes, bytes, int]:
    """The pool key of a http(s) URL: (scheme, host, port)."""
    scheme = url.raw_scheme
    return scheme, url.raw_host, url.port or (443 if scheme == b"https" else 80)


class _Connection(asyncio.BufferedProtocol):
    """One TCP (or TLS) connection: a receive buffer and a way to wait for more bytes.

    A buffered protocol: asyncio's plain protocols receive each read as a new 256 KiB bytes
    object, shrunk afterwards, and that allocation (an mmap and munmap) costs more than the
    whole rest of a small reply's parsing. Reads go into a buffer the transport's connections
    share (a read is copied out at once, in the same callback) instead."""

    __slots__ = (
        "_drain_waiter",
        "_paused",
        "_read_buffer",
        "_waiter",
        "_write_paused",
        "buf",
        "eof",
        "error",
        "idle_since",
        "key",
        "loop",
        "transport",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        key: tuple[bytes, bytes, int],
        read_buffer: memoryview,
    ) -> None:
        self.loop = loop
        self.key = key
        self._read_buffer = read_buffer
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.eof = False  # the server closed its side (or the connection is gone)
        self.error: BaseException | None = None  # why the connection was lost, if not a FIN
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._write_paused = False

    # -- asyncio callbacks ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.buf += self._read_buffer[:nbytes]
        if not self._paused and len(self.buf) > _HIGH_WATER and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # let asyncio close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if exc is not None and self.error is None:
            self.error = exc
        self._wake()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- used by the transport ----------------------------------------------------------
    @property
    def usable(self) -> bool:
        """Idle and still open at both ends, with nothing unexpected waiting to be read."""
        t = self.transport
        return not self.eof and not self.buf and t is not None and not t.is_closing()

    def still_open(self) -> bool:
        """`usable`, and nothing (an EOF) waits unread on the socket. A server that closes
        after each reply sends its FIN with the reply's last bytes; the event loop may not
        have read it yet when the connection is taken again in the same step."""
        if not self.usable:
            return False
        sock = self.transport.get_extra_info("socket")  # type: ignore[union-attr]
        if sock is None or _poll is None:
            return True
        poller = _poll()
        poller.register(sock.fileno(), _POLL_MASK)
        return not poller.poll(0)

    def close(self) -> None:
        self.eof = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.eof = True
        if self.transport is not None:
            self.transport.abort()

    def consumed(self) -> None:
        """The reader took bytes out of the buffer: resume reading below the mark."""
        if self._paused and len(self.buf) <= _HIGH_WATER // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    async def _until(self, waiter: asyncio.Future[None], timeout: float | None) -> bool:
        """Await `waiter`; False when `timeout` seconds passed first."""
        handle = None if timeout is None else self.loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        except asyncio.TimeoutError:
            return False
        finally:
            if handle is not None:
                handle.cancel()
        return True

    async def wait_data(self, timeout: float | None, request: httpx.Request | None) -> None:
        """Wait until more bytes arrive or the connection ends; ReadTimeout after `timeout`."""
        if self.eof:
            return
        self.consumed()
        waiter = self._waiter = self.loop.create_future()
        try:
            in_time = await self._until(waiter, timeout)
        finally:
            self._waiter = None
        if not in_time:
            raise httpx.ReadTimeout("timed out waiting for the server", request=request)

    async def write(
        self, data: bytes, timeout: float | None, request: httpx.Request | None
    ) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise httpx.WriteError("the connection is closed", request=request)
        transport.write(data)
        if not self._write_paused:
            return
        waiter = self._drain_waiter = self.loop.create_future()
        try:
            in_time = await self._until(waiter, timeout)
        finally:
            self._drain_waiter = None
        if not in_time:
            raise httpx.WriteTimeout("timed out sending the request", request=request)
        if self._write_paused or (self.error is not None and self.transport.is_closing()):
            raise httpx.WriteError(f"the connection was lost: {self.error}", request=request)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError())


def _lost_error(
    conn: _Connection, request: httpx.Request | None, what: str
) -> httpx.TransportError:
    """The error for a connection that ended while `what` was being read."""
    if conn.error is not None:
        return httpx.ReadError(str(conn.error) or type(conn.error).__name__, request=request)
    return httpx.RemoteProtocolError(
        f"server closed the connection while sending {what}", request=request
    )


class _Head:
    """A reply's status line and headers, and what they say about its body."""

    __slots__ = (
        "close",
        "cookies",
        "encoded",
        "headers",
        "length",
        "mode",
        "reason",
        "status",
        "version",
    )

    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.version = b"HTTP/1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.mode = "length"  # "length", "chunked", "close" (until EOF), "none"
        self.length = 0
        self.close = False
        self.cookies = False  # a Set-Cookie header is present
        self.encoded = False  # a Content-Encoding other than identity is present


def _parse_head(raw: bytes, request: httpx.Request | None, no_body: bool) -> _Head:
    """Status, headers, how the body is framed and whether the connection stays open.
    `no_body`: the request was a HEAD."""
    lines = raw.split(b"\r\n")
    status_line = lines[0]
    parts = status_line.split(b" ", 2)
    head = _Head()
    try:
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ValueError
        head.version = parts[0]
        head.status = int(parts[1])
        head.reason = parts[2] if len(parts) > 2 else b""
        if not 100 <= head.status <= 999:
            raise ValueError
    except ValueError:
        raise httpx.RemoteProtocolError(
            f"malformed status line: {status_line[:100]!r}", request=request
        ) from None
    headers = head.headers
    length: bytes | None = None
    transfer: bytes | None = None
    connection = b""
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in b" \t" and headers:  # obsolete line folding
            name, value = headers[-1]
            headers[-1] = (name, value + b" " + line.strip())
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise httpx.RemoteProtocolError(
                f"malformed header line: {line[:100]!r}", request=request
            )
        value = value.strip()
        headers.append((name, value))
        lower = name.lower()
        if lower == b"content-length":
            if length is not None and length != value:
                raise httpx.RemoteProtocolError("conflicting Content-Length", request=request)
            length = value
        elif lower == b"transfer-encoding":
            transfer = value.lower() if transfer is None else transfer + b"," + value.lower()
        elif lower == b"connection":
            connection += b"," + value.lower()
        elif lower == b"set-cookie" or lower == b"set-cookie2":
            head.cookies = True
        elif lower == b"content-encoding" and value.lower() != b"identity":
            head.encoded = True
    tokens = {t.strip() for t in connection.split(b",")}
    if head.version == b"HTTP/1.0":
        head.close = b"keep-alive" not in tokens
    else:
        head.close = b"close" in tokens
    if (
        no_body
        or head.status in _NO_BODY_STATUS
        or (100 <= head.status < 200 and head.status != 101)
    ):
        head.mode = "none"
    elif transfer is not None and transfer.rsplit(b",", 1)[-1].strip() == b"chunked":
        head.mode = "chunked"
    elif transfer is not None:
        head.mode, head.close = "close", True
    elif length is not None:
        try:
            head.length = int(length.split(b",")[0])
            if head.length < 0:
                raise ValueError
        except ValueError:
            raise httpx.RemoteProtocolError(
                f"invalid Content-Length {length[:50]!r}", request=request
            ) from None
    else:
        head.mode, head.close = "close", True
    return head


class _ResponseStream(httpx.AsyncByteStream):
    """The body of one reply, read from its connection as the caller iterates (httpx) or
    calls `receive`/`read` (the fast path)."""

    def __init__(
        self,
        transport: LeanTransport,
        conn: _Connection,
        head: _Head,
        request: httpx.Request | None,
        read_timeout: float | None,
        reusable: bool,
    ) -> None:
        self._transport = transport
        self._conn: _Connection | None = conn
        self._mode = head.mode
        self._length = head.length
        self._remaining = head.length
        self._decoder = _ChunkedDecoder(request) if head.mode == "chunked" else None
        self._request = request
        self._reusable = reusable and not head.close
        self._read_timeout = read_timeout

    def _take(self) -> tuple[bytes, bool]:
        """What the buffer holds of the body now -> (bytes, body complete)."""
        conn = self._conn
        assert conn is not None
        buf = conn.buf
        mode = self._mode
        if mode == "length":
            take = min(self._remaining, len(buf))
            if take == len(buf):
                piece = bytes(buf)
                buf.clear()
            else:
                piece = bytes(buf[:take])
                del buf[:take]
            self._remaining -= take
            return piece, self._remaining == 0
        if mode == "chunked":
            assert self._decoder is not None
            piece = self._decoder.feed(buf)
            return piece, self._decoder.done
        if mode == "close":
            piece = bytes(buf)
            buf.clear()
            return piece, False
        return b"", True

    def _ended_early(self) -> httpx.TransportError:
        conn = self._conn
        assert conn is not None
        if conn.error is not None:
            return _lost_error(conn, self._request, "the body")
        if self._mode == "chunked":
            return httpx.RemoteProtocolError(
                "server closed the connection before the last chunk of the body "
                "(incomplete chunked read)",
                request=self._request,
            )
        return httpx.RemoteProtocolError(
            f"server closed the connection before the end of the body "
            f"({self._length - self._remaining} of {self._length} bytes received)",
            request=self._request,
        )

    async def receive(self) -> bytes:
        """The next piece of the body, b"" once all of it was read."""
        conn = self._conn
        if conn is None:
            return b""
        try:
            while True:
                piece, complete = self._take()
                if complete:
                    # Give the connection back before the last piece leaves: a caller that
                    # stops at the last piece (or never asks again) must not cost the
                    # connection.
                    self._finish(self._reusable)
                    return piece
                if piece:
                    return piece
                if conn.eof:
                    if self._mode == "close" and conn.error is None:
                        self._finish(False)
                        return b""
                    raise self._ended_early()
                await conn.wait_data(self._read_timeout, self._request)
        except BaseException:
            self._finish(False)
            raise

    async def read(self) -> bytes:
        """The rest of the body."""
        piece = await self.receive()
        if self._conn is None:  # the usual case: the whole body was in the buffer
            return piece
        parts = [piece]
        while piece := await self.receive():
            parts.append(piece)
        return b"".join(parts)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._conn is None:
            raise httpx.StreamClosed()
        try:
            while piece := await self.receive():
                yield piece
        except BaseException:  # includes the generator closed early: the rest is unknown
            self._finish(False)
            raise

    def _finish(self, reusable: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._transport._release(conn, reusable)

    async def aclose(self) -> None:
        conn = self._conn
        if conn is None:
            return
        # Closed before the end of the body. A streamed reply read up to its last event
        # ("data: [DONE]") usually has the rest of the body (the last chunk) in the buffer
        # already: read it, and the connection can be reused. Otherwise its state is unknown.
        complete = False
        if self._reusable and not conn.eof:
            try:
                while True:
                    piece, complete = self._take()
                    if complete or not piece:
                        break
            except httpx.RemoteProtocolError:
                complete = False
        self._finish(self._reusable and complete)


class _ChunkedDecoder:
    """Decodes chunked transfer coding from a bytearray, consuming what it decodes."""

    __slots__ = ("done", "remaining", "request", "state")

    def __init__(self, request: httpx.Request | None) -> None:
        self.request = request
        self.state = 0  # 0 size line, 1 data, 2 CRLF after data, 3 trailers
        self.remaining = 0
        self.done = False

    def feed(self, buf: bytearray) -> bytes:
        out: list[bytearray] = []
        pos = 0
        n = len(buf)
        while not self.done:
            if self.state == 0:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    if n - pos > 4096:
                        raise httpx.RemoteProtocolError(
                            "chunk size line too long", request=self.request
                        )
                    break
                line = buf[pos:end]
                if b";" in line:
                    line = line.split(b";", 1)[0]
                try:
                    size = int(line, 16)  # blanks around it are fine
                    if size < 0:
                        raise ValueError
                except ValueError:
                    raise httpx.RemoteProtocolError(
                        f"malformed chunk size {bytes(line[:20])!r}", request=self.request
                    ) from None
                pos = end + 2
                stop = pos + size
                if size == 0:
                    self.state = 3
                elif stop + 2 <= n:  # the whole chunk is here (SSE: usually one event)
                    if buf[stop : stop + 2] != b"\r\n":
                        raise httpx.RemoteProtocolError(
                            "malformed chunk: no CRLF after the data", request=self.request
                        )
                    out.append(buf[pos:stop])
                    pos = stop + 2
                else:
                    self.remaining, self.state = size, 1
            elif self.state == 1:
                take = min(self.remaining, n - pos)
                if take <= 0:
                    break
                out.append(buf[pos : pos + take])
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self.state = 2
            elif self.state == 2:
                if n - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise httpx.RemoteProtocolError(
                        "malformed chunk: no CRLF after the data", request=self.request
                    )
                pos += 2
                self.state = 0
            else:  # trailers, up to an empty line
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                if end == pos:
                    self.done = True
                pos = end + 2
        if pos:
            del buf[:pos]
        return b"".join(out)


class LeanTransport(httpx.AsyncBaseTransport):
    """A keep-alive HTTP/1.1 connection pool of at most `max_connections` connections.

    `keepalive_expiry`: an idle connection older than this is closed instead of reused.
    `ssl_context`: for https (default: certifi's trust store, as httpx does)."""

    def __init__(
        self,
        max_connections: int = 100,
        keepalive_expiry: float | None = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self._idle: dict[tuple[bytes, bytes, int], list[_Connection]] = {}
        self._count = 0  # connections open or being opened
        self._waiters: collections.deque[
            tuple[tuple[bytes, bytes, int], asyncio.Future[_Connection | None]]
        ] = collections.deque()
        self._closed = False
        self._all: set[_Connection] = set()
        self._read_buffer = memoryview(bytearray(_READ_SIZE))  # see _Connection
        self.connections_opened = 0  # for tests and benchmarks

    # -- the pool ------------------------------------------------------------------------
    def _ssl(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            import certifi

            context = ssl.create_default_context(cafile=certifi.where())
            context.set_alpn_protocols(["http/1.1"])
            self._ssl_context = context
        return self._ssl_context

    def _take_idle(self, key: tuple[bytes, bytes, int]) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.still_open() and (
                self.keepalive_expiry is None or now - conn.idle_since < self.keepalive_expiry
            ):
                return conn
            self._discard(conn)
        return None

    def _free_slot_from_other_origin(self) -> bool:
        """At the limit with idle connections to other origins: close one to make room."""
        for conns in self._idle.values():
            if conns:
                self._discard(conns.pop(0))
                return True
        return False

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        if conn in self._all:
            self._all.discard(conn)
            self._count -= 1

    async def _acquire(
        self, key: tuple[bytes, bytes, int], timeouts: Timeouts, request: httpx.Request | None
    ) -> _Connection:
        if self._closed:
            raise RuntimeError("the transport is closed")
        if not self._waiters:
            conn = self._take_idle(key)
            if conn is not None:
                return conn
            if self._count < self.max_connections or self._free_slot_from_other_origin():
                self._count += 1
                return await self._open(key, timeouts, request)
        # Wait in line; a releaser hands over a connection to reuse, or None: open one (the
        # releaser already counted it for us).
        waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append((key, waiter))
        timeout = timeouts.get("pool")
        try:
            got = await asyncio.wait_for(waiter, timeout) if timeout is not None else await waiter
        except asyncio.TimeoutError:
            raise httpx.PoolTimeout("no connection became free in time", request=request) from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._hand_back(waiter.result())
            else:
                waiter.cancel()
            raise
        if got is not None:
            return got
        return await self._open(key, timeouts, request)

    def _hand_back(self, conn: _Connection | None) -> None:
        """A waiter that was handed a connection (or a slot) gave up: pass it on."""
        if conn is None:
            self._count -= 1
            self._wake_waiter(None)
        else:
            self._release(conn, True)

    def _wake_waiter(self, conn: _Connection | None) -> bool:
        """Hand a reusable connection (or, with None, a fresh slot) to the first waiter that can
        take it. Returns whether someone took it."""
        while self._waiters:
            key, waiter = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
                continue
            if conn is not None and key != conn.key:
                return False
            self._waiters.popleft()
            if conn is None:
                self._count += 1
            waiter.set_result(conn)
            return True
        return False

    def _release(self, conn: _Connection, reusable: bool) -> None:
        if self._closed:
            self._discard(conn)
            return
        if reusable and conn.usable:
            if self._wake_waiter(conn):
                return
            if self._waiters:
                # The first waiter wants another origin: close this one and give it the slot.
                self._discard(conn)
                self._wake_waiter(None)
                return
            conn.idle_since = time.monotonic()
            self._idle.setdefault(conn.key, []).append(conn)
            return
        self._discard(conn)
        if self._waiters and self._count < self.max_connections:
            self._wake_waiter(None)

    async def _open(
        self, key: tuple[bytes, bytes, int], timeouts: Timeouts, request: httpx.Request | None
    ) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        conn = _Connection(loop, key, self._read_buffer)
        self._all.add(conn)
        timeout = timeouts.get("connect")
        try:
            coro = loop.create_connection(
                lambda: conn,
                host.decode("ascii"),
                port,
                ssl=self._ssl() if scheme == b"https" else None,
                server_hostname=host.decode("ascii") if scheme == b"https" else None,
            )
            if timeout is not None:
                await asyncio.wait_for(coro, timeout)
            else:
                await coro
        except asyncio.TimeoutError:
            self._discard(conn)
            self._wake_after_failure()
            raise httpx.ConnectTimeout(
                f"no connection to {host.decode()}:{port} within {timeout}s", request=request
            ) from None
        except (OSError, ssl.SSLError) as exc:
            self._discard(conn)
            self._wake_after_failure()
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from None
        except BaseException:
            self._discard(conn)
            self._wake_after_failure()
            raise
        self.connections_opened += 1
        return conn

    def _wake_after_failure(self) -> None:
        if self._waiters and self._count < self.max_connections:
            self._wake_waiter(None)

    # -- one request ---------------------------------------------------------------------
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        scheme = request.url.raw_scheme
        if scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(
                f"unsupported URL scheme {scheme.decode()!r}", request=request
            )
        key = origin(request.url)
        timeouts = _timeouts(request)
        head_bytes, body, chunked = await _serialize(request)
        conn = await self._acquire(key, timeouts, request)
        try:
            await conn.write(head_bytes, timeouts.get("write"), request)
            if body is not None:
                await _write_body(conn, body, chunked, timeouts.get("write"), request)
            head = await self._read_head(
                conn, timeouts.get("read"), request, request.method == "HEAD"
            )
        except BaseException:
            self._release(conn, False)
            raise
        stream = _ResponseStream(
            self, conn, head, request, timeouts.get("read"), not _connection_close(request)
        )
        return httpx.Response(
            head.status,
            headers=head.headers,
            stream=stream,
            extensions={"http_version": head.version, "reason_phrase": head.reason},
        )

    async def send_raw(
        self,
        key: tuple[bytes, bytes, int],
        data: bytes,
        timeouts: Timeouts,
        keep_alive: bool = True,
    ) -> tuple[_Head, _ResponseStream]:
        """Send a request already serialized (head and body, `data`) to the origin `key` and
        read the reply's head: the hot path of client.send, without httpx's Request and
        Response. The errors are those of `handle_async_request` (with no request). Read the
        body from the stream (`read`, `receive`), or `aclose` it."""
        conn = await self._acquire(key, timeouts, None)
        read_timeout = timeouts.get("read")
        try:
            await conn.write(data, timeouts.get("write"), None)
            head = await self._read_head(conn, read_timeout, None, False)
        except BaseException:
            self._release(conn, False)
            raise
        return head, _ResponseStream(self, conn, head, None, read_timeout, keep_alive)

    async def _read_head(
        self,
        conn: _Connection,
        read_timeout: float | None,
        request: httpx.Request | None,
        no_body: bool,
    ) -> _Head:
        started = False
        while True:
            buf = conn.buf
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if buf:
                    started = True
                if len(buf) > _MAX_HEAD:
                    raise httpx.RemoteProtocolError("response head too large", request=request)
                if conn.eof:
                    if conn.error is not None:
                        raise _lost_error(conn, request, "the response head")
                    if started:
                        raise httpx.RemoteProtocolError(
                            "server closed the connection in the middle of the response head",
                            request=request,
                        )
                    raise httpx.RemoteProtocolError(
                        "Server disconnected without sending a response.", request=request
                    )
                await conn.wait_data(read_timeout, request)
                continue
            raw = bytes(buf[:end])
            del buf[: end + 4]
            head = _parse_head(raw, request, no_body)
            if 100 <= head.status < 200 and head.status != 101:
                started = True
                continue  # informational: the real reply follows
            return head

    async def aclose(self) -> None:
        self._closed = True
        for conn in list(self._all):
            conn.abort()
        self._all.clear()
        self._idle.clear()
        self._count = 0
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.cancel()


def _connection_close(request: httpx.Request) -> bool:
    value = request.headers.get("connection")
    return value is not None and "close" in value.lower()


async def _serialize(request: httpx.Request) -> tuple[bytes, bytes | list[bytes] | None, bool]:
    """The request head, and its body (None when empty)."""
    try:
        content: bytes | list[bytes] | None = request.content
    except httpx.RequestNotRead:
        content = [part async for part in request.stream]  # type: ignore[union-attr]
    chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
    lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), request.url.raw_path)]
    lines += [b"%s: %s\r\n" % (name, value) for name, value in request.headers.raw]
    lines.append(b"\r\n")
    head = b"".join(lines)
    if isinstance(content, bytes) and not chunked:
        # one write for head and body: one packet for a small request
        return (head + content if content else head), None, False
    return head, content or None, chunked


async def _write_body(
    conn: _Connection,
    body: bytes | list[bytes],
    chunked: bool,
    timeout: float | None,
    request: httpx.Request,
) -> None:
    parts = [body] if isinstance(body, bytes) else body
    for part in parts:
        if not part:
            continue
        await conn.write(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part, timeout, request)
    if chunked:
        await conn.write(b"0\r\n\r\n", timeout, request)


class _Cookies(httpx.Cookies):
    """httpx.Cookies that hands a reply to the cookie jar only when it sets cookies. httpx
    wraps every reply and its request in urllib adapters for the jar (~60 us a request, 5% of
    a run) even when there is no Set-Cookie header, and then the jar finds nothing to do."""

    def extract_cookies(self, response: httpx.Response) -> None:
        headers = response.headers
        if "set-cookie" in headers or "set-cookie2" in headers:
            super().extract_cookies(response)


def make_client(max_connections: int, timeout: httpx.Timeout, **kwargs: Any) -> httpx.AsyncClient:
    """An httpx.AsyncClient on a LeanTransport sized to `max_connections`."""
    client = httpx.AsyncClient(
        timeout=timeout,
        transport=LeanTransport(max_connections=max_connections),
        trust_env=False,
        **kwargs,
    )
    cookies = getattr(client, "_cookies", None)
    if type(cookies) is httpx.Cookies:  # the attribute behind client.cookies (httpx 0.23+)
        fast = _Cookies()
        fast.jar = cookies.jar
        client._cookies = fast
    return client
