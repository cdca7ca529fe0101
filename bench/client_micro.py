"""CPU time per request of client.send, against the mock server in its own process.

The engine's CPU time per request is what limits an evaluation against a fast server once
pytest's side is faster (and, with `--sb-engine thread`, it shares pytest's GIL). Replies are
GSM8K-like, as in bench/throughput.py (a short chain of thought and an answer, streamed in
8-character pieces).

    python bench/client_micro.py [--requests 5000] [--concurrency 256]
    python bench/client_micro.py --src /tmp/before   # another copy of pytest_servebench

"fast" is send() on the engine's client (connection.Session, aiohttp). Copies from before
aiohttp (--src) have the lean transport; there, "httpx" sends through httpx.AsyncClient.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from throughput import Server  # bench/throughput.py: the mock server in its own process

REPO = Path(__file__).resolve().parent.parent


def start_server(folder: Path, records: int) -> Server:
    data = folder / "data.jsonl"
    with data.open("w") as out:
        for i in range(records):
            question = f"Problem {i}: Ann has {i} apples and buys 5 more. How many now?"
            out.write(json.dumps({"question": question, "answer": f"#### {i + 5}"}) + "\n")
    return Server(folder, data, 0.0, {**os.environ, "PYTHONPATH": str(REPO)})


def engine_client(concurrency: int, path: str) -> Any:
    """The client the engine uses: connection.Session (aiohttp), or in copies from before it
    (--src), make_client's httpx client on the lean transport."""
    try:
        import httpx
        from pytest_servebench.transport import make_client
    except ImportError:
        from pytest_servebench.engine.connection import Session, Settings
    else:
        client = make_client(concurrency, httpx.Timeout(connect=10, read=60, write=60, pool=None))
        if path == "httpx":

            async def hook(request: httpx.Request) -> None:
                pass

            client.event_hooks = {"request": [hook], "response": []}
        return client
    if path == "httpx":
        raise SystemExit("--paths httpx: this copy has no httpx path (the engine uses aiohttp)")
    return _Closing(Session(Settings(max_connections=concurrency, read_timeout=60)))


class _Closing:
    """`async with` for a connection.Session, passing everything else through."""

    def __init__(self, session: Any) -> None:
        self._session = session

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    async def __aenter__(self) -> Any:
        return self._session

    async def __aexit__(self, *exc: object) -> None:
        await self._session.aclose()


async def measure(
    url: str, path: str, stream: bool, n: int, concurrency: int, records: int
) -> tuple[float, float]:
    """-> (requests per second, CPU microseconds of this process per request)."""
    from pytest_servebench.engine.client import send

    client = engine_client(concurrency, path)

    async def worker(todo: Iterator[int]) -> None:
        for i in todo:
            question = f"Problem {i % records}: Ann has {i % records} apples and buys 5 more."
            body = {
                "model": "mock-model",
                "messages": [{"role": "user", "content": f"Question: {question}\nAnswer:"}],
                "max_tokens": 512,
                "seed": i,
                **({"stream": True, "stream_options": {"include_usage": True}} if stream else {}),
            }
            await send(client, url, body, True, stream, {"Authorization": "Bearer x"})

    async with client as client:
        warm_up = iter(range(n, n + 2 * concurrency))  # connections open, caches filled
        await asyncio.gather(*(worker(warm_up) for _ in range(concurrency)))
        todo = iter(range(n))
        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(todo) for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return n / wall, cpu / n * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--concurrency", type=int, nargs="+", default=[256])
    p.add_argument("--paths", nargs="+", default=["fast"], choices=["fast", "httpx"])
    p.add_argument("--src", help="folder holding the pytest_servebench package to measure")
    p.add_argument("--repeat", type=int, default=3, help="runs per row; the best is shown")
    args = p.parse_args()
    sys.path.insert(0, str(Path(args.src).resolve() if args.src else REPO))
    records = 1000
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), records)
        url = server.url + "/chat/completions"
        try:
            for stream in (False, True):
                for c in args.concurrency:
                    for path in args.paths:
                        runs = [
                            asyncio.run(measure(url, path, stream, args.requests, c, records))
                            for _ in range(args.repeat)
                        ]
                        rate, cpu = min(runs, key=lambda r: r[1])
                        print(
                            f"{'stream' if stream else 'plain':<6} {path:<5} C={c:<4} "
                            f"n={args.requests:<6} {rate:7.0f} req/s {cpu:6.1f} us CPU/request",
                            flush=True,
                        )
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
