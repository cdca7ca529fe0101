"""Requests per second of one httpx.AsyncClient, with httpx's own transport and with the lean
transport, against the mock server in its own process (no pytest involved).

    python bench/transport_micro.py [--requests 5000] [--concurrency 64 256] [--latency 0 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from run import Server  # bench/run.py: the mock server in its own process  # noqa: E402

from pytest_servebench.client import send  # noqa: E402
from pytest_servebench.transport import make_client  # noqa: E402


async def measure(
    kind: str, url: str, n: int, concurrency: int, stream: bool
) -> tuple[float, float]:
    """-> (requests per second, CPU microseconds of this process per request)."""
    timeout = httpx.Timeout(connect=10, read=60, write=60, pool=None)
    if kind == "lean":  # as the engine makes it
        client = make_client(concurrency, timeout)
    else:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        client = httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False)
    todo = iter(range(n))
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 32}
    if stream:
        body["stream"] = True

    async def worker() -> None:
        for i in todo:
            await send(client, url + "/chat/completions", {**body, "seed": i}, True, stream, {})

    async with client:
        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        return n / wall, cpu / n * 1e6


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    p.add_argument("--latency", type=float, nargs="+", default=[0.0, 0.2])
    p.add_argument("--kinds", nargs="+", default=["httpx", "lean"])
    p.add_argument("--stream", action="store_true")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for latency in args.latency:
            server = Server(Path(tmp), None, latency, {**os.environ, "PYTHONPATH": str(REPO)})
            url = server.url
            try:
                for c in args.concurrency:
                    for kind in args.kinds:
                        n = args.requests
                        if kind == "httpx" and latency > 0:
                            n = min(n, 2000)  # it is slow
                        rate, cpu = asyncio.run(measure(kind, url, n, c, args.stream))
                        ideal = c / latency if latency else float("nan")
                        rows.append((kind, c, latency, n, rate, cpu, ideal))
                        print(
                            f"{kind:<6} C={c:<4} latency={latency:<4} n={n:<6} "
                            f"{rate:8.0f} req/s (ideal {ideal:.0f}), {cpu:5.0f} us CPU/request",
                            flush=True,
                        )
            finally:
                stats = server.stop()
            print(
                f"  server: max in flight {stats['max_in_flight']}, "
                f"connections opened {stats['connections_opened']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
