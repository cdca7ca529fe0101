"""client.send on its aiohttp session: the bytes on the wire, framing and keep-alive, replies,
and every way a request fails mapped to the engine's three errors, against the mock server
(and its faults), raw loopback servers, and the SSE parser fed byte strings cut every way."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pytest_servebench.engine.client import (
    FatalEndpointError,
    Reply,
    RequestFailed,
    RetryableError,
    _read_stream,
    send,
)
from pytest_servebench.engine.connection import Session, Settings
from pytest_servebench.testing.mockserver import FaultPlan, MockServer
from pytest_servebench.testing.mockserver import Reply as MockReply

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def session(max_connections: int = 4, read: float = 5.0, **settings: Any) -> Session:
    """The engine's client (connection.Session) with short timeouts."""
    return Session(
        Settings(
            max_connections=max_connections, connect_timeout=5.0, read_timeout=read, **settings
        )
    )


def force(kind: str | None, **plan_kwargs: Any) -> FaultPlan:
    """A mock server fault plan that gives `kind` to every first attempt of a body."""
    return FaultPlan(custom=lambda req, attempt: kind if attempt == 0 else None, **plan_kwargs)


# --------------------------------------------------------------------------- wire helpers

Handler = Callable[["Wire", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Wire:
    """A loopback server whose handler writes whatever bytes a test wants."""

    def __init__(self, handler: Handler):
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed = asyncio.Event()  # set when a handler has closed its connection

    async def __aenter__(self) -> Wire:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(self, reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()
                await writer.wait_closed()
                self.closed.set()

        self.server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request (head and Content-Length body), None at EOF."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        self.requests.append(head + await reader.readexactly(length))
        return self.requests[-1]


def answering(*replies: bytes | list[bytes]) -> Handler:
    """A keep-alive handler giving the replies in turn (then the last one again). A reply given
    as a list of pieces is written piece by piece, with a loop turn after each."""

    async def handler(wire: Wire, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        while await wire.request(reader) is not None:
            reply = replies[min(len(wire.requests), len(replies)) - 1]
            for piece in [reply] if isinstance(reply, bytes) else reply:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0)

    return handler


def message(content: str = "ok") -> bytes:
    return json.dumps(
        {"choices": [{"index": 0, "message": {"content": content}, "finish_reason": "stop"}]}
    ).encode()


def http(body: bytes, status: str = "200 OK", headers: bytes = b"") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status.encode(),
        len(body),
        headers,
        body,
    )


def chunked(body: bytes, size: int, headers: bytes = b"") -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n%s\r\n" % headers
        + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
        + b"0\r\n\r\n"
    )


def event(content: str | None = None, finish: str | None = None, index: int = 0, **delta) -> dict:
    if content is not None:
        delta["content"] = content
    return {"choices": [{"index": index, "delta": delta, "finish_reason": finish}]}


def sse(*events: dict | bytes, done: bool = True) -> bytes:
    lines = [e if isinstance(e, bytes) else b"data: " + json.dumps(e).encode() for e in events]
    return b"".join(line + b"\n\n" for line in lines) + (b"data: [DONE]\n\n" if done else b"")


def headers_of(request: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    """(request line, sorted lower-cased headers, body)."""
    head, _, body = request.partition(b"\r\n\r\n")
    line, *rest = head.split(b"\r\n")
    pairs = [tuple(p.strip() for p in h.split(b":", 1)) for h in rest]
    return line, sorted((name.lower(), value) for name, value in pairs), body


# --------------------------------------------------------------------------- the wire


@pytest.mark.asyncio
async def test_request_bytes():
    body = {**CHAT, "messages": [{"role": "user", "content": "héllo ✓ \u2028"}], "t": 0.1}
    caller = {"Authorization": "Bearer k", "user-agent": "mine/1", "X-Extra": "1"}

    async def main() -> None:
        async with Wire(answering(http(message()))) as wire, session() as client:
            for url in ("/chat/completions", "/chat/completions?x=1"):
                await send(client, wire.url + url, body, True, False, caller)
        line, headers, sent = headers_of(wire.requests[0])
        assert line == b"POST /v1/chat/completions HTTP/1.1"
        assert (b"authorization", b"Bearer k") in headers
        assert (b"user-agent", b"mine/1") in headers  # the caller's wins
        assert (b"x-extra", b"1") in headers
        assert (b"content-type", b"application/json") in headers
        assert (b"content-length", str(len(sent)).encode()) in headers
        assert json.loads(sent) == body
        assert "héllo".encode() in sent  # UTF-8, not \u escapes (as httpx sent it)
        assert headers_of(wire.requests[1])[0] == b"POST /v1/chat/completions?x=1 HTTP/1.1"
        assert wire.connections == 1

    await main()


@pytest.mark.asyncio
@pytest.mark.parametrize("stream", [False, True])
async def test_replies(stream):
    def responder(r) -> MockReply:
        text = f"answer {r.choice_index} to {r.prompt_text} " * 3
        return MockReply(text, reasoning="thinking " * 4 if "messages" in r.body else None)

    bodies = [
        {**CHAT, "stream": stream, "stream_options": {"include_usage": True}},
        {**CHAT, "stream": stream, "n": 3, "messages": [{"role": "user", "content": "three"}]},
        {"model": "m", "stream": stream, "prompt": "complete me", "n": 2, "max_tokens": 4},
    ]
    with MockServer(responder, stream_chunk_chars=5) as srv:

        async def main() -> list:
            async with session() as client:
                return [
                    await send(client, srv.base_url + path, b, "messages" in b, stream, {})
                    for b in bodies
                    for path in ["/chat/completions" if "messages" in b else "/completions"]
                ]

        got = await main()
    assert [len(r) for r, _, _ in got] == [1, 3, 2]
    first = got[0][0][0]
    assert first.content == "answer 0 to hi " * 3
    assert first.reasoning == "thinking " * 4
    assert [r.content for r in got[1][0]] == [f"answer {i} to three " * 3 for i in range(3)]
    assert got[2][0][1].finish_reason == "length"
    assert all((ttft is not None) == stream for _, _, ttft in got)


@pytest.mark.asyncio
@pytest.mark.parametrize("stream", [False, True])
async def test_keep_alive_reuses_one_connection(stream):
    with MockServer(lambda r: "ok", stream_chunk_chars=1) as srv:

        async def main() -> None:
            async with session() as client:
                for i in range(20):
                    body = {**CHAT, "seed": i, "stream": stream}
                    replies, _, _ = await send(
                        client, srv.base_url + "/chat/completions", body, True, stream, {}
                    )
                    assert replies[0].content == "ok"

        await main()
    assert srv.stats.connections_opened == 1


@pytest.mark.asyncio
async def test_pool_bounds_connections_and_keeps_them_busy():
    with MockServer(lambda r: "ok", latency=0.05) as srv:

        async def main() -> None:
            async with session(16) as client:

                async def one(i: int) -> None:
                    body = {**CHAT, "messages": [{"role": "user", "content": str(i)}]}
                    await send(client, srv.base_url + "/chat/completions", body, True, False, {})

                await asyncio.gather(*(one(i) for i in range(160)))

        await main()
        stats = srv.stats.snapshot()
    assert stats["max_open_connections"] <= 16
    assert stats["max_in_flight"] == 16
    assert stats["connections_opened"] == 16  # no churn: every connection is reused


@pytest.mark.asyncio
async def test_content_length_and_chunked_replies_on_one_connection():
    body = message("x" * 300 + "€")
    extension_and_trailer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
        + b"%x;ext=1\r\n%s\r\n" % (len(body), body)
        + b"0\r\nX-Trailer: t\r\n\r\n"
    )
    replies = [
        http(body),
        [bytes([b]) for b in chunked(body, 7)],  # one byte a write
        extension_and_trailer,
        [http(body)[:20], http(body)[20:-5], http(body)[-5:]],
        b"HTTP/1.1 100 Continue\r\n\r\n" + http(body),
    ]

    async def main() -> None:
        async with Wire(answering(*replies)) as wire, session() as client:
            for _ in replies:
                got, _, _ = await send(client, wire.url + "/c", CHAT, True, False, {})
                assert got[0].content == "x" * 300 + "€"
        assert wire.connections == 1

    await main()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("reply", "reused"),
    [
        (b"HTTP/1.1 200 OK\r\n\r\n" + message(), False),  # no length: the body ends at EOF
        (b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(message()), message()), False),
        (
            b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n%s"
            % (len(message()), message()),
            True,
        ),
        (http(message(), headers=b"Connection: close\r\n"), False),
        (b"HTTP/1.0 200 OK\r\n\r\n" + message(), False),  # HTTP/1.0 read until close
    ],
    ids=["until-close", "http10", "http10-keep-alive", "connection-close", "http10-until-close"],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_framing_and_keep_alive_rules(reply, reused, stream):
    if stream:  # the same framings around an SSE body
        events = sse(event("o"), event("k", "stop"))
        reply = reply.replace(message(), events).replace(
            str(len(message())).encode(), str(len(events)).encode()
        )

    async def handler(wire: Wire, reader, writer) -> None:
        while await wire.request(reader) is not None:
            writer.write(reply)
            await writer.drain()
            if not reused:
                return

    async def main() -> None:
        async with Wire(handler) as wire, session() as client:
            for _ in range(2):
                replies, _, _ = await send(client, wire.url + "/c", CHAT, True, stream, {})
                assert replies[0].content == "ok"
        assert wire.connections == (1 if reused else 2)

    await main()


@pytest.mark.asyncio
async def test_connection_the_server_closed_while_idle_is_not_reused():
    async def handler(wire: Wire, reader, writer) -> None:
        await wire.request(reader)
        writer.write(http(message()))  # keep-alive, as far as the client knows
        await writer.drain()

    async def main() -> None:
        async with Wire(handler) as wire, session() as client:
            await send(client, wire.url + "/c", CHAT, True, False, {})
            await wire.closed.wait()  # the server closed the (now idle) connection
            await asyncio.sleep(0.05)
            replies, _, _ = await send(client, wire.url + "/c", CHAT, True, False, {})
            assert replies[0].content == "ok"
        assert wire.connections == 2

    await main()


@pytest.mark.asyncio
async def test_server_closing_without_a_byte_is_a_free_retry():
    async def handler(wire: Wire, reader, writer) -> None:
        while await wire.request(reader) is not None:
            if wire.connections == 1:
                return  # a keep-alive connection the server dropped as the request came
            writer.write(http(message()))
            await writer.drain()

    async def main() -> None:
        async with Wire(handler) as wire, session() as client:
            for stream in (False, True):
                wire.connections = 0
                with pytest.raises(RetryableError) as info:
                    await send(client, wire.url + "/c", CHAT, True, stream, {})
                assert info.value.free
                assert "disconnected" in str(info.value)
            replies, _, _ = await send(client, wire.url + "/c", CHAT, True, False, {})
            assert replies[0].content == "ok"

    await main()


@pytest.mark.asyncio
async def test_close_after_stream_costs_no_attempt():
    """llama.cpp closes the connection after a streamed reply: the next request must not fail
    for good (a closed idle connection is not reused, or it is a free retry)."""
    with MockServer(lambda r: "ok", close_after_stream=True) as srv:

        async def main() -> None:
            async with session() as client:
                url = srv.base_url + "/chat/completions"
                body = {**CHAT, "stream": True}
                for _ in range(10):  # back to back, no pause for the FIN
                    for _attempt in range(4):
                        try:
                            replies, _, _ = await send(client, url, body, True, True, {})
                            break
                        except RetryableError as exc:
                            assert exc.free
                    assert replies[0].content == "ok"
            assert srv.stats.completed == 10

        await main()


@pytest.mark.asyncio
async def test_cookies_a_server_sets_are_sent_back():
    first = http(message(), headers=b"Set-Cookie: route=r7; Path=/\r\n")

    async def main() -> None:
        async with Wire(answering(first, http(message()))) as wire, session() as client:
            for _ in range(3):
                replies, _, _ = await send(client, wire.url + "/c", CHAT, True, False, {})
                assert replies[0].content == "ok"
        assert b"cookie: route=r7" not in wire.requests[0].lower()
        assert all(b"cookie: route=r7" in r.lower() for r in wire.requests[1:])

    await main()


@pytest.mark.asyncio
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("stream", [False, True])
async def test_compressed_replies_are_decoded(encoding, stream):
    if stream:
        raw = sse(event("", role="assistant"), event("zip"), event("ped", "stop"))
    else:
        raw = message("zipped")
    packed = gzip.compress(raw, mtime=0) if encoding == "gzip" else zlib.compress(raw)
    header = b"Content-Encoding: %s\r\n" % encoding.encode()
    reply = chunked(packed, 10, header) if stream else http(packed, headers=header)

    async def main() -> None:
        async with Wire(answering(reply)) as wire, session() as client:
            for _ in range(2):
                replies, _, ttft = await send(client, wire.url + "/c", CHAT, True, stream, {})
                assert replies[0].content == "zipped"
                assert (ttft is not None) == stream
        assert wire.connections == 1

    await main()


@pytest.mark.asyncio
async def test_large_reply_in_many_writes_and_replies_read_at_once_keep_their_bytes():
    async def handler(wire: Wire, reader, writer) -> None:
        while (request := await wire.request(reader)) is not None:
            tag = json.loads(request.partition(b"\r\n\r\n")[2])["seed"]
            body = message(f"{tag:04d}" * 100_000)  # 400 kB, each says which request it answers
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
            for i in range(0, len(body), 50_000):
                writer.write(body[i : i + 50_000])
                await writer.drain()
                await asyncio.sleep(0)

    async def main() -> None:
        async with Wire(handler) as wire, session(8) as client:

            async def one(i: int) -> None:
                body = {**CHAT, "seed": i}
                replies, _, _ = await send(client, wire.url + "/c", body, True, False, {})
                assert replies[0].content == f"{i:04d}" * 100_000

            await asyncio.gather(*(one(i) for i in range(24)))
        assert wire.connections == 8

    await main()


# --------------------------------------------------------------------------- errors


def stalling(first: bytes = b"") -> Handler:
    async def handler(wire: Wire, reader, writer) -> None:
        await wire.request(reader)
        writer.write(first)
        await writer.drain()
        await asyncio.sleep(10)

    return handler


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "first", [b"", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\ndata:\r\n"]
)
async def test_read_timeout_frees_the_connection(first):
    async def main() -> None:
        async with Wire(stalling(first)) as wire, session(1, read=0.2) as client:
            for stream in (False, True):
                with pytest.raises(RetryableError, match=r"timed out \(ReadTimeout\)"):
                    await send(client, wire.url + "/c", CHAT, True, stream, {})
        assert wire.connections == 2  # the pool of one was free again for the second

    await main()


@pytest.mark.asyncio
async def test_connect_errors_and_a_cancelled_stream_frees_its_connection():
    async def main() -> None:
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        async with Wire(stalling(head + b"9\r\ndata: {}\n\r\n")) as wire, session(1) as client:
            for _ in range(2):
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(send(client, wire.url + "/c", CHAT, True, True, {}), 0.2)
            assert wire.connections == 2
            with pytest.raises(RetryableError, match="cannot connect") as info:
                await send(client, "http://127.0.0.1:9/v1/c", CHAT, True, False, {})
            assert "Is it running? Set its URL with --sb-set model.base_url=http://" in (
                info.value.unreachable or ""
            )

    await main()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("reply", "error", "text"),
    [
        (http(b"bad key", "401 Unauthorized"), FatalEndpointError, "rejected the credentials"),
        (http(b"no", "403 Forbidden"), FatalEndpointError, "HTTP 403"),
        (http(b'{"error": "what?"}', "400 Bad Request"), RequestFailed, 'HTTP 400: {"error": "what?"}'),
        (http(b"slow down", "429 Too Many", b"Retry-After: 2\r\n"), RetryableError, "HTTP 429"),
        (http(b"caf\xe9", "503 Busy", b"Content-Type: text/plain; charset=latin-1\r\n"), RetryableError, "HTTP 503: café"),
        (http(gzip.compress(b"zipped oops", mtime=0), "500 Oops", b"Content-Encoding: gzip\r\n"), RetryableError, "HTTP 500: zipped oops"),
        (chunked(b"chunked oops", 3).replace(b"200 OK", b"502 Bad Gateway"), RetryableError, "HTTP 502: chunked oops"),
    ],
    ids=["401", "403", "400", "429", "503-latin-1", "500-gzip", "502-chunked"],
)  # fmt: skip
async def test_status_classification(reply, error, text):
    async def main() -> list[BaseException]:
        seen = []
        async with Wire(answering(reply)) as wire, session() as client:
            for stream in (False, True):
                with pytest.raises(error) as info:
                    await send(client, wire.url + "/c", CHAT, True, stream, {})
                seen.append(info.value)
        assert len(wire.requests) == 2  # no retry inside send
        assert wire.connections == 1
        return seen

    seen = await main()
    assert text in str(seen[0])
    assert str(seen[0]) == str(seen[1])
    if isinstance(seen[0], RetryableError):
        assert {e.retry_after for e in seen} == {2.0 if "429" in text else None}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Le",  # cut in the head
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        http(message())[:-10],  # cut in the body
        chunked(message(), 5)[:-20],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX",
        http(b"\x1f\x8b not gzip", headers=b"Content-Encoding: gzip\r\n"),
    ],
    ids=["cut-head", "not-http", "bad-status", "bad-length", "cut-body", "cut-chunks", "bad-chunk-size", "bad-chunk-end", "bad-gzip"],
)  # fmt: skip
async def test_broken_replies_cost_an_attempt(reply):
    async def handler(wire: Wire, reader, writer) -> None:
        await wire.request(reader)
        writer.write(reply)
        await writer.drain()

    async def main() -> None:
        async with Wire(handler) as wire, session(1) as client:
            for stream in (False, True):
                with pytest.raises(RetryableError) as info:
                    await send(client, wire.url + "/c", CHAT, True, stream, {})
                assert not info.value.free, info.value
                assert not info.value.unreachable

    await main()


@pytest.mark.asyncio
async def test_non_json_body_is_retryable_and_keeps_the_connection():
    async def main() -> None:
        async with (
            Wire(answering(http(b"<html>502</html>"), http(message()))) as wire,
            session() as client,
        ):
            with pytest.raises(RetryableError, match="malformed reply: body is not JSON"):
                await send(client, wire.url + "/c", CHAT, True, False, {})
            replies, _, _ = await send(client, wire.url + "/c", CHAT, True, False, {})
            assert replies[0].content == "ok"
        assert wire.connections == 1

    await main()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fault", "expected"),
    [("reset", "transport error|connection dropped"), ("cut", "connection dropped"), ("garbage", "malformed")],
)  # fmt: skip
@pytest.mark.parametrize("stream", [False, True])
async def test_mock_server_faults_cost_an_attempt_then_succeed(fault, expected, stream):
    with MockServer(lambda r: "a long enough answer " * 20, faults=force(fault)) as srv:

        async def main() -> None:
            async with session(2) as client:
                url = srv.base_url + "/chat/completions"
                body = {**CHAT, "stream": stream}
                with pytest.raises(RetryableError, match=expected) as info:
                    await send(client, url, body, True, stream, {})
                assert not info.value.free
                replies, _, _ = await send(client, url, body, True, stream, {})
                assert replies[0].content.startswith("a long enough answer")

        await main()


@pytest.mark.asyncio
async def test_mock_server_stall_is_a_read_timeout_and_429_retry_after_is_read():
    with MockServer(lambda r: "ok", faults=force("stall", stall_seconds=5)) as srv:

        async def stall() -> None:
            async with session(2, read=0.3) as client:
                url = srv.base_url + "/chat/completions"
                with pytest.raises(RetryableError, match="ReadTimeout"):
                    await send(client, url, CHAT, True, False, {})
                replies, _, _ = await send(client, url, CHAT, True, False, {})
                assert replies[0].content == "ok"

        await stall()
    with MockServer(lambda r: "ok", faults=force("429", retry_after=0.6)) as srv:

        async def too_many() -> None:
            async with session(2) as client:
                url = srv.base_url + "/chat/completions"
                for stream in (False, True):
                    body = {**CHAT, "stream": stream}
                    with pytest.raises(RetryableError) as info:
                        await send(client, url, body, True, stream, {})
                    assert info.value.retry_after == 0.6
                    assert "HTTP 429" in str(info.value)
                    replies, _, _ = await send(client, url, body, True, stream, {})
                    assert replies[0].content == "ok"

        await too_many()


@pytest.mark.asyncio
async def test_engine_endpoint_sizes_its_pool_to_max_concurrency():
    from pytest_servebench.catalog.config import ModelConfig
    from pytest_servebench.engine.local import Endpoint

    async def main() -> None:
        config = ModelConfig(name="m", source="test", max_concurrency=7, connect_timeout=3.0)
        endpoint = Endpoint(config, {})
        assert endpoint.client.settings == Settings(
            name="m", max_connections=7, connect_timeout=3.0, read_timeout=600.0
        )
        assert endpoint.client.session.connector.limit == 7
        await endpoint.client.aclose()

    await main()


# --------------------------------------------------------------------------- streams


@pytest.mark.asyncio
@pytest.mark.parametrize("chunk_chars", [1, 2, 8, 1000])
async def test_streamed_replies_at_several_chunk_sizes(chunk_chars):
    def responder(r) -> MockReply:
        return MockReply(f"choice {r.choice_index}: the answer is 42", reasoning="because")

    with MockServer(responder, stream_chunk_chars=chunk_chars) as srv:

        async def main() -> None:
            body = {**CHAT, "n": 2, "stream": True, "stream_options": {"include_usage": True}}
            async with session() as client:
                for _ in range(3):
                    replies, latency, ttft = await send(
                        client, srv.base_url + "/chat/completions", body, True, True, {}
                    )
                    assert [r.content for r in replies] == [
                        "choice 0: the answer is 42",
                        "choice 1: the answer is 42",
                    ]
                    assert [r.reasoning for r in replies] == ["because", "because"]
                    assert [r.finish_reason for r in replies] == ["stop", "stop"]
                    assert replies[0].prompt_tokens == 1
                    assert sum(r.completion_tokens for r in replies) == 14
                    assert 0 < ttft <= latency

        await main()
        assert srv.stats.connections_opened == 1


def pieces_of(data: bytes, cuts: list[int]) -> Callable[[], Awaitable[bytes]]:
    """A `receive` that gives `data` cut at the given offsets, then b""."""
    bounds = [0, *cuts, len(data)]
    parts = iter([data[a:b] for a, b in itertools.pairwise(bounds) if b > a])

    async def receive() -> bytes:
        return next(parts, b"")

    return receive


def parse_all(data: bytes, cut_lists: list[list[int]], chat: bool = True) -> list[list[Reply]]:
    async def main() -> list[list[Reply]]:
        start = time.perf_counter()
        return [(await _read_stream(pieces_of(data, c), chat, start))[0] for c in cut_lists]

    return asyncio.run(main())


def parse(data: bytes, cuts: list[int] | None = None, chat: bool = True) -> list[Reply]:
    return parse_all(data, [cuts or []], chat)[0]


BODY = (
    b": a comment\r\n"
    b"event: message\r\n"
    b"id: 1\r\n"
    b'data:{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\r\n\r\n'
    b'data: {"choices":[{"index":0,"delta":{"reasoning_content":"hm"}}]}\n\n'
    b'data:  {"choices":[{"index":1,"delta":{"content":"B"}}]}  \r\r'
    b'data: {"choices":[{"index":0,"delta":{"content":"l\xe2\x80\xa8ine\xe2\x82\xac"}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{"content":"!"},"finish_reason":"stop"}]}\n\n'
    b'data: {"choices":[{"index":1,"delta":{},"finish_reason":"length"}],"usage":'
    b'{"prompt_tokens":3,"completion_tokens":4}}\n\n'
    b"data: [DONE]\n\n"
    b"data: not even json\n\n"
)
EXPECTED = [Reply("l\u2028ine€!", "hm", "stop", 3, 2), Reply("B", None, "length", 3, 2)]


def test_sse_parser_is_indifferent_to_where_reads_end():
    everywhere = [[], *([cut] for cut in range(1, len(BODY))), list(range(1, len(BODY)))]
    for cuts, replies in zip(everywhere, parse_all(BODY, everywhere)):
        assert replies == EXPECTED, cuts


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (sse(event("a", "stop"), done=False), ["a"]),  # every choice finished: no [DONE] needed
        (sse(event("a"), event("b", "stop"), done=False)[:-2], ["ab"]),  # no newline at the end
        (sse(event("a"), done=False) + b"data: [DONE]", ["a"]),
        (sse(event("a"), event("b")), ["ab"]),  # [DONE] without a finish_reason
        (sse(), [""]),
    ],
)
def test_sse_parser_ends(data, expected):
    assert [r.content for r in parse(data)] == expected


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (sse(event("a"), event("b"), done=False), "stream cut before the reply finished"),
        (sse(event(role="assistant"), done=False), "stream cut before the reply finished"),
        (b"", "stream cut before the reply finished"),
        (sse(b"data: {oops", event("a")), "malformed stream chunk: not JSON"),  # first event
        (sse(event("a"), event("b"), b"data: {oops", event("c")), "malformed stream chunk: not JSON"),
        (sse(event("a"), b"data:", event("c")), "malformed stream chunk: not JSON"),
        (sse(event("a"), b"data: [1, 2]"), "malformed stream chunk"),
        # two bad payloads that make one good JSON value when joined
        (sse(event("a"), b'data: {"choices": []', b'data: "usage": {}}'), "malformed stream chunk: not JSON"),
        (sse(event("a"), {"error": {"message": "overloaded"}}), 'error inside stream: {"message": "overloaded"}'),
        (sse(event("a"), {"error": "x"}, b"data: {oops"), 'error inside stream: "x"'),
        (sse(event("a"), b"data: {oops", {"error": "x"}), "malformed stream chunk: not JSON"),
    ],
)  # fmt: skip
def test_sse_parser_errors(data, error):
    with pytest.raises(RetryableError) as info:
        parse(data)
    assert str(info.value) == error
    with pytest.raises(RetryableError) as info:  # the same, one byte a read
        parse(data, list(range(1, len(data))))
    assert str(info.value) == error


def test_completions_stream_reads_text():
    data = sse(
        {"choices": [{"index": 0, "text": "a", "finish_reason": None}]},
        {"choices": [{"index": 0, "text": "b", "finish_reason": "stop"}]},
    )
    assert parse(data, chat=False) == [Reply("ab", None, "stop", None, None)]


@pytest.mark.asyncio
async def test_error_event_ends_the_stream_at_once():
    """The server sends an error event and then nothing more: no waiting for the timeout."""
    body = sse(event("a"), event("b"), {"error": {"message": "boom"}}, done=False)
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"

    async def main() -> None:
        async with (
            Wire(stalling(head + b"%x\r\n%s\r\n" % (len(body), body))) as wire,
            session(read=30) as client,
        ):
            with pytest.raises(RetryableError, match=r"error inside stream: .*boom"):
                await asyncio.wait_for(send(client, wire.url + "/c", CHAT, True, True, {}), 5)

    await main()


@pytest.mark.asyncio
async def test_ttft_is_taken_at_the_first_token():
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"

    def chunk(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data)

    async def handler(wire: Wire, reader, writer) -> None:
        while await wire.request(reader) is not None:
            writer.write(head + chunk(sse(event("", role="assistant"), done=False)))
            await writer.drain()
            if len(wire.requests) == 1:
                await asyncio.sleep(0.3)  # the first token comes late
            writer.write(chunk(sse(event("a"), done=False)))
            await writer.drain()
            if len(wire.requests) == 2:
                await asyncio.sleep(0.3)  # the rest comes late
            writer.write(chunk(sse(event("b", "stop"))) + b"0\r\n\r\n")
            await writer.drain()

    async def main() -> None:
        async with Wire(handler) as wire, session() as client:
            _, latency, ttft = await send(client, wire.url + "/c", CHAT, True, True, {})
            assert 0.29 <= ttft <= latency
            _, latency, ttft = await send(client, wire.url + "/c", CHAT, True, True, {})
            assert ttft < 0.3 <= latency

    await main()
