"""The lean HTTP/1.1 transport: wire format, keep-alive pool, streaming, and the exact httpx
errors client.py relies on, against the mock server (and its faults) and raw socket servers."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Awaitable, Callable

import httpx
import pytest

from pytest_servebench.client import RetryableError, send
from pytest_servebench.testing.mockserver import FaultPlan, MockServer
from pytest_servebench.transport import LeanTransport, make_client

CHAT_BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def client_for(transport: LeanTransport, **timeouts: float | None) -> httpx.AsyncClient:
    kwargs = {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": None, **timeouts}
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(**kwargs), trust_env=False)


def force(kind: str | None, **plan_kwargs) -> FaultPlan:
    """A plan that gives `kind` to every first attempt of a body."""
    return FaultPlan(custom=lambda req, attempt: kind if attempt == 0 else None, **plan_kwargs)


def sse_payloads(lines: list[str]) -> list[str]:
    return [line[5:].strip() for line in lines if line.startswith("data:")]


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A loopback server whose connection handler writes whatever bytes a test wants."""

    def __init__(self, handler: Handler):
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []

    async def __aenter__(self) -> RawServer:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        """One request (head + Content-Length body); b"" at EOF."""
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = await reader.readexactly(length) if length else b""
        self.requests.append(head + body)
        return head + body


async def read_or_eof(server: RawServer, reader: asyncio.StreamReader) -> bool:
    try:
        await server.read_request(reader)
        return True
    except asyncio.IncompleteReadError:
        return False


# --------------------------------------------------------------------------- basics


def test_same_replies_as_httpx_own_transport():
    with MockServer(lambda r: f"echo {r.prompt_text}") as srv:

        async def main() -> None:
            async with client_for(LeanTransport(8)) as lean, httpx.AsyncClient() as plain:
                for path, method, body in [
                    ("/models", "GET", None),
                    ("/chat/completions", "POST", CHAT_BODY),
                    ("/completions", "POST", {"model": "m", "prompt": "x", "n": 3}),
                    ("/nope", "GET", None),
                ]:
                    a = await lean.request(method, srv.base_url + path, json=body)
                    b = await plain.request(method, srv.base_url + path, json=body)
                    assert a.status_code == b.status_code
                    assert a.http_version == "HTTP/1.1"
                    assert a.reason_phrase == b.reason_phrase
                    assert a.headers["content-type"] == b.headers["content-type"]
                    ja, jb = a.json(), b.json()
                    for d in (ja, jb):
                        if isinstance(d, dict):
                            d.pop("id", None)
                            d.pop("created", None)
                    assert ja == jb

        asyncio.run(main())


def test_keep_alive_reuses_one_connection():
    with MockServer(lambda r: "ok") as srv:

        async def main() -> LeanTransport:
            transport = LeanTransport(4)
            async with client_for(transport) as client:
                for _ in range(20):
                    r = await client.post(srv.base_url + "/chat/completions", json=CHAT_BODY)
                    assert r.status_code == 200
                    assert r.json()["choices"][0]["message"]["content"] == "ok"
            return transport

        transport = asyncio.run(main())
        assert transport.connections_opened == 1
        assert srv.stats.connections_opened == 1


def test_pool_bounds_connections_and_keeps_them_busy():
    with MockServer(lambda r: "ok", latency=0.05) as srv:

        async def main() -> LeanTransport:
            transport = LeanTransport(16)
            async with client_for(transport) as client:

                async def one(i: int) -> None:
                    body = {**CHAT_BODY, "messages": [{"role": "user", "content": str(i)}]}
                    r = await client.post(srv.base_url + "/chat/completions", json=body)
                    assert r.status_code == 200

                await asyncio.gather(*(one(i) for i in range(160)))
            return transport

        transport = asyncio.run(main())
        stats = srv.stats.snapshot()
        assert stats["max_open_connections"] <= 16
        assert stats["max_in_flight"] == 16
        assert transport.connections_opened == 16  # no churn: every connection is reused


def test_streamed_reply_arrives_in_pieces_and_connection_is_reused():
    with MockServer(lambda r: "one two three four five six", stream_chunk_chars=3) as srv:

        async def main() -> tuple[list[str], list[str], LeanTransport]:
            transport = LeanTransport(4)
            body = {**CHAT_BODY, "stream": True}
            async with client_for(transport) as lean, httpx.AsyncClient() as plain:
                for _ in range(5):
                    async with lean.stream(
                        "POST", srv.base_url + "/chat/completions", json=body
                    ) as r:
                        assert r.status_code == 200
                        assert r.headers["transfer-encoding"] == "chunked"
                        lines = []
                        async for line in r.aiter_lines():
                            lines.append(line)
                            if line == "data: [DONE]":
                                break  # as client.py does: the last chunk is still unread
                async with plain.stream("POST", srv.base_url + "/chat/completions", json=body) as r:
                    reference = [line async for line in r.aiter_lines()]
            return lines, reference, transport

        lines, reference, transport = asyncio.run(main())
        events = [json.loads(p) for p in sse_payloads(lines) if p != "[DONE]"]
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
        assert text == "one two three four five six"
        assert len(sse_payloads(lines)) == len(sse_payloads(reference))
        assert transport.connections_opened == 1


def test_chunked_body_split_at_every_byte():
    body = b"x" * 37 + b"\xe2\x82\xac" + b"y" * 300
    chunks = [body[:5], body[5:41], body[41:]]
    wire = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
        + b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks)
        + b"0\r\nX-Trailer: t\r\n\r\n"
    )

    async def handler(reader, writer):
        server = srv
        while await read_or_eof(server, reader):
            for i in range(len(wire)):
                writer.write(wire[i : i + 1])
                await writer.drain()
                if i % 50 == 0:
                    await asyncio.sleep(0)

    async def main() -> None:
        nonlocal srv
        async with RawServer(handler) as srv:
            transport = LeanTransport(2)
            async with client_for(transport) as client:
                for _ in range(3):
                    r = await client.get(srv.url + "/x")
                    assert r.content == body
                    assert r.headers["x-a"] == "1"
                assert transport.connections_opened == 1

    srv: RawServer
    asyncio.run(main())


def test_content_length_body_in_many_writes_and_large_body():
    big = bytes(range(256)) * 8192  # 2 MiB: reading pauses and resumes

    async def handler(reader, writer):
        while await read_or_eof(srv, reader):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big))
            for i in range(0, len(big), 100_000):
                writer.write(big[i : i + 100_000])
                await writer.drain()

    async def main() -> None:
        nonlocal srv
        async with RawServer(handler) as srv:
            transport = LeanTransport(2)
            async with client_for(transport) as client:
                for _ in range(2):
                    r = await client.get(srv.url + "/big")
                    assert r.content == big
                async with client.stream("GET", srv.url + "/big") as r:
                    pieces = [p async for p in r.aiter_raw()]
                    assert b"".join(pieces) == big
                    assert len(pieces) > 1
            assert transport.connections_opened == 1

    srv: RawServer
    asyncio.run(main())


def test_connections_reading_at_once_keep_their_own_bytes():
    """Reads of all connections go through one shared buffer: bodies must not mix."""

    async def handler(reader, writer):
        while await read_or_eof(srv, reader):
            path = srv.requests[-1].split(b" ")[1]
            body = path * (300_000 // len(path))  # each body says which request it answers
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
            for i in range(0, len(body), 50_000):
                writer.write(body[i : i + 50_000])
                await writer.drain()
                await asyncio.sleep(0)

    async def main() -> None:
        nonlocal srv
        async with RawServer(handler) as srv:
            transport = LeanTransport(8)
            async with client_for(transport) as client:

                async def one(i: int) -> None:
                    r = await client.get(f"{srv.url}/{i:04d}")
                    path = f"/{i:04d}".encode()
                    assert r.content == path * (300_000 // len(path))

                await asyncio.gather(*(one(i) for i in range(24)))
            assert transport.connections_opened == 8

    srv: RawServer
    asyncio.run(main())


@pytest.mark.parametrize(
    ("reply", "reused"),
    [
        (b"HTTP/1.1 200 OK\r\n\r\nuntil-close", False),  # no length: the body ends at EOF
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", False),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", True),
        (b"HTTP/1.1 204 No Content\r\n\r\n", True),
    ],
)
def test_framing_and_keep_alive_rules(reply, reused):
    async def handler(reader, writer):
        while await read_or_eof(srv, reader):
            writer.write(reply)
            await writer.drain()
            if b"Content-Length" not in reply and b"204" not in reply:
                writer.close()
                return

    async def main() -> None:
        nonlocal srv
        async with RawServer(handler) as srv:
            transport = LeanTransport(2)
            async with client_for(transport) as client:
                for _ in range(2):
                    r = await client.get(srv.url + "/")
                    assert r.status_code in (200, 204)
                    assert r.content in (b"ok", b"until-close", b"")
            assert srv.connections == (1 if reused else 2)

    srv: RawServer
    asyncio.run(main())


def test_head_request_has_no_body():
    async def handler(reader, writer):
        while await read_or_eof(srv, reader):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            await writer.drain()

    async def main() -> None:
        nonlocal srv
        async with RawServer(handler) as srv, client_for(LeanTransport(1)) as client:
            for _ in range(2):
                r = await client.head(srv.url + "/")
                assert r.status_code == 200
                assert r.content == b""
            assert srv.connections == 1

    srv: RawServer
    asyncio.run(main())


def test_gzip_reply_is_decoded_and_streamed_request_body_is_chunked():
    payload = gzip.compress(b'{"a": 1}')

    async def handler(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        srv.requests.append(head)
        if b"transfer-encoding: chunked" in head.lower():
            body = b""
            while not body.endswith(b"0\r\n\r\n"):
                body += await reader.read(1024)
            srv.requests.append(body)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
            % len(payload)
            + payload
        )
        await writer.drain()

    async def parts():
        yield b"hello "
        yield b"world"

    async def main() -> None:
        nonlocal srv
        async with RawServer(handler) as srv, client_for(LeanTransport(1)) as client:
            r = await client.post(srv.url + "/", content=parts())
            assert r.json() == {"a": 1}
            assert srv.requests[1] == b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"

    srv: RawServer
    asyncio.run(main())


def test_waiters_share_a_small_pool_and_other_origins_get_a_slot():
    with (
        MockServer(lambda r: "a", latency=0.02) as a,
        MockServer(lambda r: "b", latency=0.02) as b,
    ):

        async def main() -> LeanTransport:
            transport = LeanTransport(2)
            async with client_for(transport) as client:

                async def one(i: int) -> str:
                    url = (a if i % 3 else b).base_url + "/chat/completions"
                    body = {**CHAT_BODY, "messages": [{"role": "user", "content": str(i)}]}
                    r = await client.post(url, json=body)
                    return r.json()["choices"][0]["message"]["content"]

                got = await asyncio.gather(*(one(i) for i in range(60)))
                assert got == ["a" if i % 3 else "b" for i in range(60)]
            return transport

        transport = asyncio.run(main())
        assert transport._count == 0  # closed with the client
        assert a.stats.max_open_connections <= 2 and b.stats.max_open_connections <= 2
        assert a.stats.max_in_flight <= 2 and b.stats.max_in_flight <= 2


def test_cancelled_request_frees_its_connection():
    with MockServer(lambda r: "ok", latency=0.5) as srv:

        async def main() -> None:
            transport = LeanTransport(1)
            async with client_for(transport) as client:
                task = asyncio.ensure_future(
                    client.post(srv.base_url + "/chat/completions", json=CHAT_BODY)
                )
                await asyncio.sleep(0.1)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                r = await asyncio.wait_for(client.get(srv.base_url + "/models"), 5)
                assert r.status_code == 200
                assert transport._count == 1

        asyncio.run(main())


def test_idle_connection_expires_and_closed_idle_connection_is_not_reused():
    with MockServer(lambda r: "ok", close_after_stream=True) as srv:

        async def main() -> LeanTransport:
            transport = LeanTransport(2, keepalive_expiry=0.05)
            async with client_for(transport) as client:
                await client.get(srv.base_url + "/models")
                await asyncio.sleep(0.1)
                await client.get(srv.base_url + "/models")  # expired: a new connection
                for _ in range(3):  # the server closes after each streamed reply
                    r = await client.post(
                        srv.base_url + "/chat/completions", json={**CHAT_BODY, "stream": True}
                    )
                    assert r.status_code == 200
                    await asyncio.sleep(0.02)  # let the FIN arrive while idle
            return transport

        transport = asyncio.run(main())
        assert transport.connections_opened == 4  # 2 for the GETs, then 1 per closed stream
        assert srv.stats.completed == 3


def test_pool_timeout():
    with MockServer(lambda r: "ok", latency=1.0) as srv:

        async def main() -> None:
            async with client_for(LeanTransport(1), pool=0.1) as client:
                first = asyncio.ensure_future(
                    client.post(srv.base_url + "/chat/completions", json=CHAT_BODY)
                )
                await asyncio.sleep(0.05)
                with pytest.raises(httpx.PoolTimeout):
                    await client.get(srv.base_url + "/models")
                assert (await first).status_code == 200

        asyncio.run(main())


# --------------------------------------------------------------------------- errors


def test_unreachable_server_is_a_connect_error():
    async def main() -> None:
        async with client_for(LeanTransport(2)) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get("http://127.0.0.1:9/v1/models")
            with pytest.raises(RetryableError, match="cannot connect"):
                await send(
                    client, "http://127.0.0.1:9/v1/chat/completions", CHAT_BODY, True, False, {}
                )

    asyncio.run(main())


def test_connect_timeout(monkeypatch):
    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def never(*args, **kwargs):
            await asyncio.sleep(10)

        monkeypatch.setattr(loop, "create_connection", never)
        transport = LeanTransport(1)
        async with client_for(transport, connect=0.1) as client:
            with pytest.raises(httpx.ConnectTimeout):
                await client.get("http://127.0.0.1:1/")
            assert transport._count == 0
            with pytest.raises(RetryableError, match="ConnectTimeout"):
                await send(client, "http://127.0.0.1:1/x", CHAT_BODY, True, False, {})

    asyncio.run(main())


def test_reset_is_a_read_error_and_costs_an_attempt():
    with MockServer(lambda r: "ok", faults=force("reset")) as srv:

        async def main() -> None:
            async with client_for(LeanTransport(2)) as client:
                with pytest.raises(httpx.ReadError):
                    await client.post(srv.base_url + "/chat/completions", json=CHAT_BODY)
                body = {**CHAT_BODY, "seed": 1}
                with pytest.raises(RetryableError) as info:
                    await send(client, srv.base_url + "/chat/completions", body, True, False, {})
                assert not info.value.free
                replies, _, _ = await send(
                    client, srv.base_url + "/chat/completions", body, True, False, {}
                )
                assert replies[0].content == "ok"

        asyncio.run(main())


@pytest.mark.parametrize("stream", [False, True])
def test_cut_reply_is_a_protocol_error_that_costs_an_attempt(stream):
    with MockServer(lambda r: "a long enough answer " * 20, faults=force("cut")) as srv:

        async def main() -> None:
            async with client_for(LeanTransport(2)) as client:
                body = {**CHAT_BODY, "stream": stream}
                url = srv.base_url + "/chat/completions"
                with pytest.raises(httpx.RemoteProtocolError) as raw:
                    async with client.stream("POST", url, json=body) as r:
                        assert r.status_code == 200
                        await r.aread()
                assert "without sending" not in str(raw.value)
                body = {**body, "seed": 2}
                with pytest.raises(RetryableError) as info:
                    await send(client, url, body, True, stream, {})
                assert not info.value.free
                assert "connection dropped" in str(info.value)
                replies, _, _ = await send(client, url, body, True, stream, {})
                assert replies[0].content.startswith("a long enough answer")

        asyncio.run(main())


@pytest.mark.parametrize("stream", [False, True])
def test_garbage_reply_is_retryable(stream):
    with MockServer(lambda r: "ok", faults=force("garbage")) as srv:

        async def main() -> None:
            transport = LeanTransport(2)
            async with client_for(transport) as client:
                url = srv.base_url + "/chat/completions"
                body = {**CHAT_BODY, "stream": stream}
                with pytest.raises(RetryableError, match="malformed"):
                    await send(client, url, body, True, stream, {})
                replies, _, _ = await send(client, url, body, True, stream, {})
                assert replies[0].content == "ok"
            # a garbage body is still a well-framed reply: the connection stays usable
            assert transport.connections_opened == 1

        asyncio.run(main())


def test_stall_is_a_read_timeout():
    with MockServer(lambda r: "ok", faults=force("stall", stall_seconds=5)) as srv:

        async def main() -> None:
            transport = LeanTransport(2)
            async with client_for(transport, read=0.3) as client:
                url = srv.base_url + "/chat/completions"
                with pytest.raises(httpx.ReadTimeout):
                    await client.post(url, json=CHAT_BODY)
                body = {**CHAT_BODY, "seed": 3}
                with pytest.raises(RetryableError, match="ReadTimeout"):
                    await send(client, url, body, True, False, {})
                replies, _, _ = await send(client, url, body, True, False, {})
                assert replies[0].content == "ok"
                assert transport._count == 1  # the stalled connections were dropped

        asyncio.run(main())


def test_stall_in_the_middle_of_a_stream_is_a_read_timeout():
    async def handler(reader, writer):
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\ndata:\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async def main() -> None:
        nonlocal srv
        async with (
            RawServer(handler) as srv,
            client_for(LeanTransport(1), read=0.2) as client,
            client.stream("GET", srv.url + "/") as r,
        ):
            with pytest.raises(httpx.ReadTimeout):
                async for _ in r.aiter_raw():
                    pass

    srv: RawServer
    asyncio.run(main())


def test_429_retry_after_is_read():
    with MockServer(lambda r: "ok", faults=force("429", retry_after=0.6)) as srv:

        async def main() -> None:
            async with client_for(LeanTransport(2)) as client:
                url = srv.base_url + "/chat/completions"
                for stream in (False, True):
                    body = {**CHAT_BODY, "stream": stream}
                    with pytest.raises(RetryableError) as info:
                        await send(client, url, body, True, stream, {})
                    assert info.value.retry_after == 0.6
                    assert "HTTP 429" in str(info.value)
                    replies, _, _ = await send(client, url, body, True, stream, {})
                    assert replies[0].content == "ok"

        asyncio.run(main())


def test_close_after_stream_costs_no_attempt():
    """llama.cpp closes the connection after a streamed reply: the next request must not fail
    (the closed idle connection is noticed), and if the FIN arrives only as the next request
    is sent, that request fails with the "without sending" error: a free retry."""
    with MockServer(lambda r: "ok", close_after_stream=True) as srv:

        async def main() -> None:
            async with client_for(LeanTransport(4)) as client:
                url = srv.base_url + "/chat/completions"
                body = {**CHAT_BODY, "stream": True}
                for _ in range(10):  # back to back, no pause for the FIN
                    replies, _, _ = await send(client, url, body, True, True, {})
                    assert replies[0].content == "ok"
            assert srv.stats.completed == 10

        asyncio.run(main())


def test_server_closing_before_any_byte_is_a_free_retry():
    async def handler(reader, writer):
        await srv.read_request(reader)
        if srv.connections == 1:
            return  # close without a byte: a keep-alive connection the server dropped
        body = b'{"choices": [{"index": 0, "message": {"content": "ok"}}]}'
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()

    async def main() -> None:
        nonlocal srv
        async with RawServer(handler) as srv, client_for(LeanTransport(2)) as client:
            with pytest.raises(httpx.RemoteProtocolError, match="without sending"):
                await client.post(srv.url + "/v1/chat/completions", json=CHAT_BODY)
            with pytest.raises(RetryableError) as info:
                srv.connections = 0
                await send(client, srv.url + "/v1/chat/completions", CHAT_BODY, True, False, {})
            assert info.value.free
            replies, _, _ = await send(
                client, srv.url + "/v1/chat/completions", CHAT_BODY, True, False, {}
            )
            assert replies[0].content == "ok"

    srv: RawServer
    asyncio.run(main())


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Le", httpx.RemoteProtocolError),  # cut in the head
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", httpx.RemoteProtocolError),  # not HTTP
        (b"HTTP/1.1 abc OK\r\n\r\n", httpx.RemoteProtocolError),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", httpx.RemoteProtocolError),
        (b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n", httpx.RemoteProtocolError),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", httpx.RemoteProtocolError),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX",
            httpx.RemoteProtocolError,
        ),
    ],
)
def test_malformed_replies_are_protocol_errors_that_cost_an_attempt(reply, error):
    async def handler(reader, writer):
        await srv.read_request(reader)
        writer.write(reply)
        await writer.drain()

    async def main() -> None:
        nonlocal srv
        async with RawServer(handler) as srv, client_for(LeanTransport(1)) as client:
            with pytest.raises(error) as info:
                await client.get(srv.url + "/")
            assert "without sending" not in str(info.value)
            with pytest.raises(RetryableError) as retry:
                await send(client, srv.url + "/c", CHAT_BODY, True, False, {})
            assert not retry.value.free

    srv: RawServer
    asyncio.run(main())


def test_closed_transport_refuses():
    async def main() -> None:
        transport = LeanTransport(1)
        await transport.aclose()
        async with client_for(transport) as client:
            with pytest.raises(RuntimeError):
                await client.get("http://127.0.0.1:9/")

    asyncio.run(main())


def test_engine_endpoint_uses_the_lean_transport_sized_to_max_concurrency():
    from pytest_servebench.config import ModelConfig
    from pytest_servebench.engine import Endpoint

    async def main() -> None:
        endpoint = Endpoint(ModelConfig(name="m", source="test", max_concurrency=7), {})
        transport = endpoint.client._transport
        assert isinstance(transport, LeanTransport)
        assert transport.max_connections == 7
        await endpoint.client.aclose()

    asyncio.run(main())


def test_make_client():
    with MockServer(lambda r: "ok") as srv:

        async def main() -> None:
            client = make_client(3, httpx.Timeout(5.0))
            assert isinstance(client._transport, LeanTransport)
            assert client._transport.max_connections == 3
            async with client:
                assert (await client.get(srv.base_url + "/models")).status_code == 200

        asyncio.run(main())


def test_cookies_a_server_sets_are_still_sent_back():
    async def handler(reader, writer):
        while await read_or_eof(srv, reader):
            extra = b"Set-Cookie: route=r7; Path=/\r\n" if len(srv.requests) == 1 else b""
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + extra + b"\r\nok")
            await writer.drain()

    async def main() -> None:
        nonlocal srv
        async with RawServer(handler) as srv:
            client = make_client(2, httpx.Timeout(5.0))
            async with client:
                for _ in range(3):
                    assert (await client.get(srv.url + "/v1/x")).content == b"ok"
                assert client.cookies.get("route") == "r7"
        assert b"cookie: route=r7" not in srv.requests[0].lower()
        assert b"cookie: route=r7" in srv.requests[1].lower()
        assert b"cookie: route=r7" in srv.requests[2].lower()

    srv: RawServer
    asyncio.run(main())


def test_https_with_the_servers_certificate(tmp_path):
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    made = subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ],
        capture_output=True,
    )
    if made.returncode != 0:
        pytest.skip(f"openssl could not make a certificate: {made.stderr[-200:]!r}")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def main() -> None:
        connections = 0

        async def on_connect(reader, writer):
            nonlocal connections
            connections += 1
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    assert head.startswith(b"GET /v1/models HTTP/1.1")
                    writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{"data":[]}')
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            transport = LeanTransport(2, ssl_context=client_ctx)
            async with client_for(transport) as client:
                for host in ("localhost", "localhost", "127.0.0.1"):
                    r = await client.get(f"https://{host}:{port}/v1/models")
                    assert r.json() == {"data": []}
            assert connections == 2  # one per origin, kept alive
            async with client_for(LeanTransport(1)) as strict:  # certifi's trust store
                with pytest.raises(httpx.ConnectError):
                    await strict.get(f"https://localhost:{port}/v1/models")
        finally:
            server.close()

    asyncio.run(main())
