"""A forward HTTP proxy on loopback for tests: CONNECT tunnels (https) and absolute-form
requests (http), counting what passes through it. Runs on its own event loop in a thread,
like the mock server, so that a pytest run in a subprocess can use it too."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
from urllib.parse import urlsplit


class ForwardProxy:
    """`credentials` ("user:password"): answer 407 to requests without them."""

    def __init__(self, credentials: str | None = None) -> None:
        self.credentials = credentials
        self.tunnels: list[str] = []  # CONNECT targets, host:port
        self.forwarded: list[str] = []  # absolute-form request targets
        self.rejected = 0  # 407s
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        auth = f"{self.credentials}@" if self.credentials else ""
        return f"http://{auth}127.0.0.1:{self.port}"

    # -- lifecycle
    def __enter__(self) -> ForwardProxy:
        ready = threading.Event()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()

            async def start() -> None:
                self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
                self.port = self._server.sockets[0].getsockname()[1]
                ready.set()

            loop.run_until_complete(start())
            loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        loop = self._loop
        if loop is not None:

            async def stop() -> None:
                if self._server is not None:
                    self._server.close()
                # tunnels still open: end them here, not when the loop is gone
                others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in others:
                    task.cancel()
                await asyncio.gather(*others, return_exceptions=True)

            asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    # -- one client connection
    def _authorized(self, head: bytes) -> bool:
        if self.credentials is None:
            return True
        expected = b"basic " + base64.b64encode(self.credentials.encode())
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"proxy-authorization":
                return value.strip().lower() == expected.lower()
        return False

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
                if not self._authorized(head):
                    self.rejected += 1
                    writer.write(
                        b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                        b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n\r\n'
                    )
                    await writer.drain()
                    continue
                if method == "CONNECT":
                    self.tunnels.append(target)
                    host, port = target.rsplit(":", 1)
                    up_reader, up_writer = await asyncio.open_connection(host, int(port))
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    await writer.drain()
                    await _pipe_both(reader, writer, up_reader, up_writer)
                    return
                await self._forward(method, target, head, reader, writer)
        finally:
            writer.close()

    async def _forward(
        self,
        method: str,
        target: str,
        head: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """One absolute-form request: sent to its origin with Connection: close, the reply
        relayed to the end (the client's connection to the proxy stays open)."""
        self.forwarded.append(target)
        url = urlsplit(target)
        lines = head.split(b"\r\n")
        length = 0
        kept = []
        for line in lines[1:]:
            name = line.partition(b":")[0].strip().lower()
            if name == b"content-length":
                length = int(line.partition(b":")[2])
            if name in (b"proxy-authorization", b"connection", b"proxy-connection"):
                continue
            if line:
                kept.append(line)
        body = await reader.readexactly(length) if length else b""
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        request = b"\r\n".join(
            [f"{method} {path} HTTP/1.1".encode(), *kept, b"Connection: close", b"", b""]
        )
        up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port or 80)
        up_writer.write(request + body)
        await up_writer.drain()
        reply = await up_reader.read()  # until the origin closes
        up_writer.close()
        # the reply's framing is kept; a reply without length ends at close: close too
        writer.write(reply)
        await writer.drain()
        if b"content-length" not in reply.split(b"\r\n\r\n", 1)[0].lower() and (
            b"chunked" not in reply.split(b"\r\n\r\n", 1)[0].lower()
        ):
            writer.close()


async def _pipe_both(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        with contextlib.suppress(OSError, RuntimeError):
            sink.write_eof()

    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
    up_writer.close()
