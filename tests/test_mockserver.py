"""Behaviour of the fault-injecting OpenAI-compatible mock server (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from pytest_servebench.testing.mockserver import (
    FAULT_KINDS,
    FaultPlan,
    MockRequest,
    MockServer,
    Reply,
    body_key,
    dataset_responder,
    gsm8k_reference,
    is_correct,
    load_jsonl,
)

REPO = Path(__file__).resolve().parents[1]
CHAT = "/v1/chat/completions"


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def serve():
    """serve(**kwargs) -> a started MockServer, stopped at teardown."""
    servers: list[MockServer] = []

    def start(responder=None, **kwargs) -> MockServer:
        srv = MockServer(responder, **kwargs).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


def chat(content: str = "hi", **extra) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **extra}


def sse_events(lines) -> tuple[list[dict], bool]:
    """Parse SSE lines -> (json events, saw [DONE] as the last event)."""
    events: list[dict] = []
    done = False
    for line in lines:
        if not line.startswith("data: "):
            assert line == "", line
            continue
        assert not done, "event after [DONE]"
        data = line[len("data: ") :]
        if data == "[DONE]":
            done = True
        else:
            events.append(json.loads(data))
    return events, done


def raw_exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes (EOF); may raise ConnectionResetError."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def raw_post(path: str, body: dict, extra_headers: str = "") -> bytes:
    data = json.dumps(body).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n{extra_headers}\r\n"
    ).encode() + data


def force(kind: str | None, **plan_kwargs) -> FaultPlan:
    """A plan that gives *kind* to every first attempt."""
    return FaultPlan(custom=lambda req, attempt: kind if attempt == 0 else None, **plan_kwargs)


# --------------------------------------------------------------------------- basic endpoints


def test_chat_and_completions_non_stream(serve):
    srv = serve(lambda req: f"echo: {req.prompt_text}")
    with httpx.Client(base_url=srv.base_url) as c:
        body = {
            "model": "my-model",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "two words"}]},
            ],
        }
        r = c.post("/chat/completions", json=body)
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert int(r.headers["content-length"]) == len(r.content)
        d = r.json()
        assert d["object"] == "chat.completion"
        assert d["model"] == "my-model"
        (choice,) = d["choices"]
        assert choice["message"] == {"role": "assistant", "content": "echo: be brief\ntwo words"}
        assert choice["finish_reason"] == "stop"
        assert d["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}

        r = c.post("/completions", json={"model": "m", "prompt": "Q: 1+1?"})
        d = r.json()
        assert d["object"] == "text_completion"
        assert d["choices"][0]["text"] == "echo: Q: 1+1?"
        assert d["choices"][0]["finish_reason"] == "stop"
        assert d["usage"]["prompt_tokens"] == 2
        # keep-alive: both requests used one connection
    assert srv.stats.connections_opened == 1
    assert srv.stats.completed == 2
    assert srv.stats.requests == {"/v1/chat/completions": 1, "/v1/completions": 1}


def test_default_responder_and_models_and_health(serve):
    srv = serve(model_name="served-x")
    with httpx.Client(base_url=srv.base_url) as c:
        r = c.post("/chat/completions", json=chat())
        assert r.json()["choices"][0]["message"]["content"] == "The answer is 42."
        models = c.get("/models").json()
        assert models["object"] == "list"
        assert [m["id"] for m in models["data"]] == ["served-x"]
        assert models["data"][0]["object"] == "model"
        assert c.get(f"http://127.0.0.1:{srv.port}/health").json() == {"status": "ok"}
    assert srv.base_url == f"http://127.0.0.1:{srv.port}/v1"


def test_errors_404_400_405(serve):
    srv = serve()
    with httpx.Client(base_url=srv.base_url) as c:
        r = c.post("/embeddings", json={})
        assert r.status_code == 404
        assert "error" in r.json()
        r = c.post("/chat/completions", content=b"{not json")
        assert r.status_code == 400
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert c.post("/chat/completions", json=[1, 2]).status_code == 400
        assert c.post("/chat/completions", json={"model": "m"}).status_code == 400
        assert c.post("/completions", json={"prompt": 3}).status_code == 400
        assert c.post("/chat/completions", json=chat(n=0)).status_code == 400
        assert c.get("/chat/completions").status_code == 405
        # the connection survives errors
        assert c.post("/chat/completions", json=chat()).status_code == 200
    assert srv.stats.connections_opened == 1
    assert srv.stats.completed == 1


def test_responder_exception_gives_500(serve):
    def boom(req):
        raise RuntimeError("bug in responder")

    srv = serve(boom)
    r = httpx.post(srv.base_url + "/chat/completions", json=chat())
    assert r.status_code == 500
    assert "bug in responder" in r.json()["error"]["message"]
    assert srv.stats.responder_errors == 1


# --------------------------------------------------------------------------- streaming


def test_chat_stream_with_usage(serve):
    srv = serve(lambda req: "The answer is 1,234.", stream_chunk_chars=5)
    body = chat(stream=True, stream_options={"include_usage": True})
    with (
        httpx.Client(base_url=srv.base_url) as c,
        c.stream("POST", "/chat/completions", json=body) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["transfer-encoding"] == "chunked"
        events, done = sse_events(r.iter_lines())
    assert done
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert len({e["id"] for e in events}) == 1
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    usage_event = events[-1]
    assert usage_event["choices"] == []
    assert usage_event["usage"] == {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5}
    content_events = [e for e in events[1:-1]]
    pieces = [e["choices"][0]["delta"]["content"] for e in content_events]
    assert "".join(pieces) == "The answer is 1,234."
    assert all(len(p) <= 5 for p in pieces) and len(pieces) == 4
    finishes = [e["choices"][0]["finish_reason"] for e in content_events]
    assert finishes == [None, None, None, "stop"]


def test_stream_usage_only_when_asked_and_enabled(serve):
    srv = serve(lambda req: "abc")
    off = serve(lambda req: "abc", include_stream_usage=False)
    for server, body, want in [
        (srv, chat(stream=True), False),
        (srv, chat(stream=True, stream_options={"include_usage": True}), True),
        (off, chat(stream=True, stream_options={"include_usage": True}), False),
    ]:
        with httpx.stream("POST", server.base_url + "/chat/completions", json=body) as r:
            events, done = sse_events(r.iter_lines())
        assert done
        assert any("usage" in e for e in events) is want


def test_completions_stream(serve):
    srv = serve(lambda req: "0123456789abcdefghij")
    with httpx.stream(
        "POST",
        srv.base_url + "/completions",
        json={"model": "m", "prompt": "p", "stream": True, "max_tokens": 50},
    ) as r:
        events, done = sse_events(r.iter_lines())
    assert done
    assert [e["object"] for e in events] == ["text_completion"] * 3
    assert "".join(e["choices"][0]["text"] for e in events) == "0123456789abcdefghij"
    assert [e["choices"][0]["finish_reason"] for e in events] == [None, None, "stop"]


def test_reasoning_content(serve):
    srv = serve(lambda req: Reply("Final: 7", reasoning="think think"))
    with httpx.Client(base_url=srv.base_url) as c:
        msg = c.post("/chat/completions", json=chat()).json()["choices"][0]["message"]
        assert msg == {
            "role": "assistant",
            "content": "Final: 7",
            "reasoning_content": "think think",
        }
        with c.stream("POST", "/chat/completions", json=chat(stream=True)) as r:
            events, _ = sse_events(r.iter_lines())
        deltas = [e["choices"][0]["delta"] for e in events]
        assert "".join(d.get("reasoning_content", "") for d in deltas) == "think think"
        assert "".join(d.get("content", "") for d in deltas) == "Final: 7"
        # reasoning is chat-only
        text = c.post("/completions", json={"prompt": "x"}).json()["choices"][0]["text"]
        assert text == "Final: 7"


# --------------------------------------------------------------------------- n, sampling, stop, max_tokens


def test_n_choices_and_sample_index(serve):
    seen: list[tuple[int, int]] = []

    def responder(req: MockRequest) -> str:
        seen.append((req.sample_index, req.choice_index))
        return f"sample {req.sample_index}"

    srv = serve(responder)
    with httpx.Client(base_url=srv.base_url) as c:
        d = c.post("/chat/completions", json=chat("q", n=3)).json()
        assert [ch["index"] for ch in d["choices"]] == [0, 1, 2]
        assert [ch["message"]["content"] for ch in d["choices"]] == [
            "sample 0",
            "sample 1",
            "sample 2",
        ]
        # an identical body continues the sample numbering; another body starts at 0
        d = c.post("/chat/completions", json=chat("q", n=3)).json()
        assert [ch["message"]["content"] for ch in d["choices"]] == [
            "sample 3",
            "sample 4",
            "sample 5",
        ]
        one = c.post("/chat/completions", json=chat("other")).json()
        assert one["choices"][0]["message"]["content"] == "sample 0"
        # usage counts every choice
        assert d["usage"]["completion_tokens"] == 6
    assert seen[:3] == [(0, 0), (1, 1), (2, 2)]
    assert srv.stats.times_seen(chat("q", n=3)) == 2
    assert srv.stats.resent == 1


def test_stream_n_choices(serve):
    srv = serve(lambda req: f"c{req.choice_index}")
    with httpx.stream("POST", srv.base_url + "/chat/completions", json=chat(n=2, stream=True)) as r:
        events, done = sse_events(r.iter_lines())
    assert done
    by_index: dict[int, str] = {}
    for e in events:
        ch = e["choices"][0]
        by_index[ch["index"]] = by_index.get(ch["index"], "") + ch["delta"].get("content", "")
    assert by_index == {0: "c0", 1: "c1"}


def test_stop_sequences(serve):
    srv = serve(lambda req: "alpha beta\n\nQuestion: gamma END delta")
    with httpx.Client(base_url=srv.base_url) as c:
        ch = c.post("/chat/completions", json=chat(stop="END")).json()["choices"][0]
        assert ch["message"]["content"] == "alpha beta\n\nQuestion: gamma "
        assert ch["finish_reason"] == "stop"
        ch = c.post("/completions", json={"prompt": "p", "stop": ["END", "Question:"]}).json()
        assert ch["choices"][0]["text"] == "alpha beta\n\n"
        assert ch["usage"]["completion_tokens"] == 2
        ch = c.post("/completions", json={"prompt": "p", "stop": ["zzz"]}).json()
        assert ch["choices"][0]["text"] == "alpha beta\n\nQuestion: gamma END delta"


def test_max_tokens_truncation(serve):
    srv = serve(lambda req: "one two  three four five")
    with httpx.Client(base_url=srv.base_url) as c:
        d = c.post("/chat/completions", json=chat(max_tokens=3)).json()
        assert d["choices"][0]["message"]["content"] == "one two  three"
        assert d["choices"][0]["finish_reason"] == "length"
        assert d["usage"]["completion_tokens"] == 3
        d = c.post("/chat/completions", json=chat(max_tokens=5)).json()
        assert d["choices"][0]["finish_reason"] == "stop"
        d = c.post("/completions", json={"prompt": "p", "max_tokens": 1}).json()
        assert (d["choices"][0]["text"], d["choices"][0]["finish_reason"]) == ("one", "length")
        # a stop sequence before the limit wins
        d = c.post("/completions", json={"prompt": "p", "max_tokens": 3, "stop": "two"}).json()
        assert (d["choices"][0]["text"], d["choices"][0]["finish_reason"]) == ("one ", "stop")
        with c.stream("POST", "/chat/completions", json=chat(max_tokens=2, stream=True)) as r:
            events, done = sse_events(r.iter_lines())
        assert done
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == "one two"
        assert events[-1]["choices"][0]["finish_reason"] == "length"


def test_max_tokens_counts_reasoning(serve):
    srv = serve(lambda req: Reply("a b c", reasoning="r1 r2 r3"))
    with httpx.Client(base_url=srv.base_url) as c:
        ch = c.post("/chat/completions", json=chat(max_tokens=4)).json()["choices"][0]
        assert ch["message"] == {
            "role": "assistant",
            "content": "a",
            "reasoning_content": "r1 r2 r3",
        }
        assert ch["finish_reason"] == "length"
        ch = c.post("/chat/completions", json=chat(max_tokens=2)).json()["choices"][0]
        assert ch["message"]["reasoning_content"] == "r1 r2"
        assert ch["message"]["content"] == ""
        assert ch["finish_reason"] == "length"


def test_responder_finish_reason_and_token_counts(serve):
    srv = serve(lambda req: Reply("cut here", finish_reason="length", completion_tokens=99))
    d = httpx.post(srv.base_url + "/chat/completions", json=chat()).json()
    assert d["choices"][0]["finish_reason"] == "length"
    assert d["usage"]["completion_tokens"] == 99


# --------------------------------------------------------------------------- auth


def test_api_key(serve):
    srv = serve(api_key="s3cret-key")
    url = srv.base_url + "/chat/completions"
    r = httpx.post(url, json=chat())
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert (
        httpx.post(url, json=chat(), headers={"Authorization": "Bearer wrong"}).status_code == 401
    )
    assert httpx.get(srv.base_url + "/models").status_code == 401
    r = httpx.post(url, json=chat(), headers={"Authorization": "Bearer s3cret-key"})
    assert r.status_code == 200
    snap = srv.stats.snapshot()
    assert snap["auth_failures"] == 3
    assert "s3cret" not in json.dumps(snap)


# --------------------------------------------------------------------------- faults, one by one


@pytest.mark.parametrize("kind,status", [("500", 500), ("503", 503), ("401", 401)])
def test_error_status_faults(serve, kind, status):
    srv = serve(faults=force(kind))
    with httpx.Client(base_url=srv.base_url) as c:
        r = c.post("/chat/completions", json=chat())
        assert r.status_code == status
        assert "error" in r.json()
        assert c.post("/chat/completions", json=chat()).status_code == 200  # 2nd attempt
    assert srv.stats.faults == {kind: 1}
    assert srv.stats.snapshot()["status"] == {str(status): 1, "200": 1}


def test_429_retry_after(serve):
    srv = serve(faults=force("429", retry_after=0.5))
    r = httpx.post(srv.base_url + "/chat/completions", json=chat())
    assert r.status_code == 429
    assert r.headers["retry-after"] == "0.5"
    assert r.headers["retry-after-ms"] == "500"
    srv2 = serve(faults=force("429"))
    r = httpx.post(srv2.base_url + "/chat/completions", json=chat())
    assert r.status_code == 429
    assert "retry-after" not in r.headers


def test_reset_fault(serve):
    srv = serve(faults=force("reset"))
    with pytest.raises(ConnectionResetError):
        raw_exchange(srv.port, raw_post("/v1/chat/completions", chat("raw")))
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.post(srv.base_url + "/chat/completions", json=chat("httpx"))
    assert srv.stats.faults == {"reset": 2}
    assert srv.stats.completed == 0


def test_garbage_fault(serve):
    srv = serve(faults=force("garbage"))
    r = httpx.post(srv.base_url + "/chat/completions", json=chat())
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.content)
    with httpx.stream("POST", srv.base_url + "/chat/completions", json=chat(stream=True)) as r:
        assert r.status_code == 200
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ") and ln != "data: [DONE]"]
    assert lines
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[0][len("data: ") :])


def test_cut_fault_stream(serve):
    srv = serve(lambda req: "x" * 80, faults=force("cut"), stream_chunk_chars=8)
    raw = raw_exchange(srv.port, raw_post("/v1/chat/completions", chat(stream=True)))
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b" 200 OK" in head and b"chunked" in head
    assert b'"content":"xxxxxxxx"' in rest  # some content was sent
    assert b"[DONE]" not in rest
    assert not rest.endswith(b"0\r\n\r\n")  # no terminating chunk
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("POST", srv.base_url + "/chat/completions", json=chat("b", stream=True)) as r,
    ):
        for _ in r.iter_lines():
            pass
    assert srv.stats.faults == {"cut": 2}


def test_cut_fault_non_stream(serve):
    srv = serve(faults=force("cut"))
    raw = raw_exchange(srv.port, raw_post("/v1/completions", {"prompt": "p"}))
    head, _, rest = raw.partition(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
    assert 0 < len(rest) < length
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(srv.base_url + "/completions", json={"prompt": "q"})


def test_stall_fault(serve):
    srv = serve(faults=force("stall", stall_seconds=0.4))
    t0 = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(srv.base_url + "/chat/completions", json=chat("a"), timeout=0.15)
    assert time.monotonic() - t0 < 0.4
    # a patient raw client gets nothing, then the connection is reset
    t0 = time.monotonic()
    with pytest.raises(ConnectionResetError):
        raw_exchange(srv.port, raw_post("/v1/chat/completions", chat("b")))
    assert time.monotonic() - t0 >= 0.35
    assert srv.stats.faults == {"stall": 2}
    assert srv.stats.completed == 0


def test_slow_first_byte_fault(serve):
    srv = serve(
        lambda req: f"s{req.sample_index}", faults=force("slow_first_byte", slow_first_byte=0.25)
    )
    t0 = time.monotonic()
    r = httpx.post(srv.base_url + "/chat/completions", json=chat())
    assert time.monotonic() - t0 >= 0.24
    assert r.json()["choices"][0]["message"]["content"] == "s0"
    # a slow answer is still an answer: the next identical request is the next sample
    r = httpx.post(srv.base_url + "/chat/completions", json=chat())
    assert r.json()["choices"][0]["message"]["content"] == "s1"
    assert srv.stats.faults == {"slow_first_byte": 1}
    assert srv.stats.completed == 2


def test_fault_plan_validation():
    with pytest.raises(ValueError):
        FaultPlan({"explode": 0.1})
    with pytest.raises(ValueError):
        FaultPlan({"500": 0.6, "503": 0.6})
    assert set(FAULT_KINDS) >= {"500", "503", "429", "reset", "garbage", "cut", "stall", "401"}


# --------------------------------------------------------------------------- determinism


def test_fault_plan_is_pure_and_respects_rates():
    plan = FaultPlan({"500": 0.2, "reset": 0.1}, seed=3)
    keys = [body_key(chat(f"q{i}")) for i in range(5000)]
    decisions = [plan.decide(k, 0) for k in keys]
    assert decisions == [FaultPlan({"reset": 0.1, "500": 0.2}, seed=3).decide(k, 0) for k in keys]
    assert decisions != [FaultPlan({"500": 0.2, "reset": 0.1}, seed=4).decide(k, 0) for k in keys]
    assert abs(decisions.count("500") / 5000 - 0.2) < 0.025
    assert abs(decisions.count("reset") / 5000 - 0.1) < 0.02
    # later attempts are decided independently
    assert [plan.decide(k, 1) for k in keys] != decisions
    assert body_key({"a": 1, "b": [1, 2]}) == body_key({"b": [1, 2], "a": 1})


async def _send_all(base_url: str, bodies: list[dict]) -> list[tuple[str, int]]:
    async with httpx.AsyncClient(base_url=base_url) as c:

        async def one(body):
            r = await c.post("/chat/completions", json=body)
            return body_key(body), r.status_code

        return await asyncio.gather(*(one(b) for b in bodies))


@pytest.mark.asyncio
async def test_fault_decisions_do_not_depend_on_arrival_order(serve):
    plan = FaultPlan({"500": 0.3, "503": 0.2}, seed=11)
    bodies = [chat(f"question {i}") for i in range(30)] * 2  # each body twice
    truth: dict[str, list[int]] = {}
    for i in range(30):
        key = body_key(chat(f"question {i}"))
        truth[key] = sorted(
            {"500": 500, "503": 503, None: 200}[plan.decide(key, a)] for a in (0, 1)
        )
    for order in (bodies, bodies[::-1]):
        srv = serve(faults=plan)
        results = await _send_all(srv.base_url, order)
        got: dict[str, list[int]] = {}
        for key, status in results:
            got.setdefault(key, []).append(status)
        assert {k: sorted(v) for k, v in got.items()} == truth
        assert sum(srv.stats.faults.values()) == sum(s != 200 for v in truth.values() for s in v)


def test_only_first_attempt_and_resent_count(serve):
    srv = serve(faults=FaultPlan({"500": 0.5, "429": 0.5}, only_first_attempt=True))
    with httpx.Client(base_url=srv.base_url) as c:
        for i in range(10):
            statuses = []
            for _ in range(3):  # a client that retries until answered
                r = c.post("/chat/completions", json=chat(f"q{i}"))
                statuses.append(r.status_code)
                if r.status_code == 200:
                    break
            assert statuses[0] in (500, 429) and statuses[1:] == [200]
    snap = srv.stats.snapshot()
    assert sum(snap["faults"].values()) == 10
    assert snap["resent"] == 10  # exactly one re-send per body
    assert snap["completed"] == 10
    assert set(snap["bodies"].values()) == {2}


def test_retry_after_fault_sees_same_sample(serve):
    srv = serve(lambda req: f"s{req.sample_index}", faults=force("503"))
    with httpx.Client(base_url=srv.base_url) as c:
        assert c.post("/chat/completions", json=chat()).status_code == 503
        first = c.post("/chat/completions", json=chat()).json()
        second = c.post("/chat/completions", json=chat()).json()
    # the faulted attempt did not consume a sample
    assert first["choices"][0]["message"]["content"] == "s0"
    assert second["choices"][0]["message"]["content"] == "s1"


def test_is_correct_is_deterministic():
    q = "Natalia sold clips to 48 of her friends in April."
    first = [is_correct(q, i, 0.7, seed=1) for i in range(2000)]
    assert first == [is_correct(q, i, 0.7, seed=1) for i in range(2000)]
    assert first != [is_correct(q, i, 0.7, seed=2) for i in range(2000)]
    assert abs(sum(first) / 2000 - 0.7) < 0.04
    assert all(is_correct(q, i, 1.0) for i in range(50))
    assert not any(is_correct(q, i, 0.0) for i in range(50))


# --------------------------------------------------------------------------- concurrency, connections


async def _concurrent(base_url: str, n: int) -> list[int]:
    async with httpx.AsyncClient(base_url=base_url, limits=httpx.Limits(max_connections=n)) as c:
        rs = await asyncio.gather(
            *(c.post("/chat/completions", json=chat(f"q{i}")) for i in range(n))
        )
        return [r.status_code for r in rs]


@pytest.mark.asyncio
async def test_max_in_flight_with_latency(serve):
    srv = serve(latency=0.3)
    t0 = time.monotonic()
    statuses = await _concurrent(srv.base_url, 24)
    elapsed = time.monotonic() - t0
    assert statuses == [200] * 24
    assert 0.3 <= elapsed < 1.5  # answered concurrently, not one after another
    snap = srv.stats.snapshot()
    assert snap["max_in_flight"] == 24
    assert snap["in_flight"] == 0
    assert snap["max_open_connections"] == 24
    srv.reset()
    assert srv.stats.snapshot()["max_in_flight"] == 0
    assert srv.stats.total_requests == 0


def test_pipelined_requests_answered_in_order(serve):
    srv = serve(lambda req: req.prompt_text, latency=0.05)
    req = raw_post("/v1/completions", {"prompt": "first"}) + raw_post(
        "/v1/completions", {"prompt": "second"}, "Connection: close\r\n"
    )
    raw = raw_exchange(srv.port, req)
    assert raw.count(b"HTTP/1.1 200 OK") == 2
    assert raw.index(b'"first"') < raw.index(b'"second"')
    assert srv.stats.connections_opened == 1


def test_expect_100_continue(serve):
    srv = serve()
    data = json.dumps(chat()).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Expect: 100-continue\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
        sock.sendall(head)
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(data)
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
    assert rest.startswith(b"HTTP/1.1 200 OK")


def test_close_after_stream(serve):
    srv = serve(close_after_stream=True)
    raw = raw_exchange(srv.port, raw_post("/v1/chat/completions", chat(stream=True)))
    # the server closed the keep-alive connection by itself, without announcing it
    head = raw.partition(b"\r\n\r\n")[0]
    assert b"Connection: close" not in head
    assert raw.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    with httpx.Client(base_url=srv.base_url) as c:
        for i in range(3):
            with c.stream("POST", "/chat/completions", json=chat(str(i), stream=True)) as r:
                _, done = sse_events(r.iter_lines())
            assert done
        c.post("/chat/completions", json=chat())
        c.post("/chat/completions", json=chat())
    # 1 raw + 3 streamed (each closed) + 1 shared by the two non-streamed requests
    assert srv.stats.connections_opened == 5


# --------------------------------------------------------------------------- dataset responder

RECORDS = [
    {
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?",
        "answer": "Natalia sold 48/2 = 24 clips in May.\n#### 72",
    },
    {
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold twice as many clips in May. How many clips did she sell in total?",
        "answer": "48*2=96, 48+96=144\n#### 144",
    },
    {"question": "What is 600 times 3?", "answer": "#### 1,800"},
    {"question": "What is 2+2?", "answer": "#### 4"},
    {
        "question": "A store has   1000 apples\nand sells 1 apple. How many apples are left in the store now?",
        "answer": "#### 999",
    },
]

_NUMBER_RE = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def extract_final_number(text: str) -> str:
    return _NUMBER_RE.findall(text)[-1].replace(",", "").replace("$", "")


def few_shot_prompt(question: str) -> str:
    shots = "".join(
        f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in (RECORDS[1], RECORDS[3])
    )
    return f"{shots}Question: {question}\nAnswer:"


def test_gsm8k_reference():
    assert gsm8k_reference(RECORDS[2]) == "1800"
    assert gsm8k_reference({"answer": "no hashes 5"}) == "no hashes 5"


def test_dataset_responder_finds_record_after_few_shot(serve):
    responder = dataset_responder(RECORDS, p_correct=0.5, seed=7)
    srv = serve(responder)
    with httpx.Client(base_url=srv.base_url) as c:
        for idx in (0, 2, 3, 4):
            question = RECORDS[idx]["question"]
            ref = gsm8k_reference(RECORDS[idx])
            prompt = few_shot_prompt(" ".join(question.split()))
            for sample in range(12):
                d = c.post("/completions", json={"model": "m", "prompt": prompt}).json()
                text = d["choices"][0]["text"]
                got = extract_final_number(text)
                assert (got == ref) is is_correct(question, sample, 0.5, 7), (idx, sample, text)
        # chat: few-shot turns as separate messages, the real question last
        messages = [
            {"role": "user", "content": f"Question: {RECORDS[1]['question']}"},
            {"role": "assistant", "content": "The answer is 144."},
            {"role": "user", "content": f"Question: {RECORDS[0]['question']}\nAnswer:"},
        ]
        d = c.post("/chat/completions", json={"messages": messages, "n": 8}).json()
        for ch in d["choices"]:
            got = extract_final_number(ch["message"]["content"])
            assert (got == "72") is is_correct(RECORDS[0]["question"], ch["index"], 0.5, 7)
    assert responder.find(few_shot_prompt(RECORDS[1]["question"])) is RECORDS[1]


def test_dataset_responder_lookup_fallback_and_unknown():
    responder = dataset_responder(RECORDS)
    # no "Question:" marker: the question sits inside an instruction
    prompt = f"Solve this math problem.\n{RECORDS[2]['question']}\nPut the answer last."
    assert responder.find(prompt) is RECORDS[2]
    assert responder.find("Question: What is the capital of France?\nAnswer:") is None
    req = MockRequest(CHAT, {}, {}, "Question: Who are you?", 0, 0)
    assert responder(req).content == "I don't know."


def test_dataset_responder_formats_and_wrong_answers():
    q = RECORDS[2]["question"]
    right = dataset_responder(RECORDS, p_correct=1.0)
    wrong = dataset_responder(RECORDS, p_correct=0.0)
    right_texts = [right(MockRequest(CHAT, {}, {}, q, i, 0)).content for i in range(60)]
    wrong_texts = [wrong(MockRequest(CHAT, {}, {}, q, i, 0)).content for i in range(60)]
    assert all(extract_final_number(t) == "1800" for t in right_texts)
    assert all(extract_final_number(t) != "1800" for t in wrong_texts)
    joined = "\n".join(right_texts)
    for marker in ("1,800", "$1800", "**Answer:** 1800", "\\boxed{1800}", "The answer is 1800."):
        assert marker in joined
    # deterministic
    assert right_texts == [right(MockRequest(CHAT, {}, {}, q, i, 0)).content for i in range(60)]
    # reasoning mode: chain of thought separated out
    rep = dataset_responder(RECORDS, p_correct=1.0, reasoning=True)(
        MockRequest(CHAT, {}, {}, q, 0, 0)
    )
    assert rep.reasoning and extract_final_number(rep.content) == "1800"


def test_load_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n\n", encoding="utf-8")
    assert load_jsonl(path) == RECORDS


# --------------------------------------------------------------------------- CLI


def test_cli(tmp_path):
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in RECORDS), encoding="utf-8")
    port_file = tmp_path / "port"
    stats_file = tmp_path / "stats.json"
    env = {**os.environ, "MOCK_KEY": "k-123", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest_servebench.testing.mockserver",
            "--dataset",
            str(data),
            "--p-correct",
            "1.0",
            "--port-file",
            str(port_file),
            "--stats-file",
            str(stats_file),
            "--fault",
            "500=1.0",
            "--only-first-attempt",
            "--api-key-env",
            "MOCK_KEY",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        line = proc.stdout.readline().strip()
        port = int(port_file.read_text())
        assert line == (
            f"mock OpenAI server listening on http://127.0.0.1:{port}/v1 "
            "(answers are simulated, not from a model)"
        )
        url = f"http://127.0.0.1:{port}/v1/completions"
        headers = {"Authorization": "Bearer k-123"}
        body = {"prompt": f"Question: {RECORDS[3]['question']}\nAnswer:"}
        assert httpx.post(url, json=body).status_code == 401
        assert httpx.post(url, json=body, headers=headers).status_code == 500
        r = httpx.post(url, json=body, headers=headers)
        assert extract_final_number(r.json()["choices"][0]["text"]) == "4"
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    stats = json.loads(stats_file.read_text())
    assert stats["faults"] == {"500": 1}
    assert stats["completed"] == 1
    assert stats["auth_failures"] == 1
    assert "k-123" not in stats_file.read_text()


def test_cli_rejects_bad_fault():
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_servebench.testing.mockserver", "--fault", "boom=0.1"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=10,
    )
    assert proc.returncode == 2
    assert "unknown fault kind" in proc.stderr
