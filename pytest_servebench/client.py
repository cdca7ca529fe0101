"""OpenAI-compatible requests and replies: chat and completions, streamed (SSE) or not.

Knows HTTP and the OpenAI wire format; knows nothing of datasets or scoring.

The hot path skips httpx. httpx.AsyncClient costs ~280 us of GIL time a request (Request and
Headers objects, auth, redirects, cookies, Response and its stream wrappers), and the client
runs in a thread that shares the GIL with pytest. When the client is a plain one on a
LeanTransport (what make_client builds) and has no cookies, auth, hooks, proxies, params or
redirects to follow, `send` writes a cached request head (the one httpx would send, see
`_route`) and the JSON body straight to the transport, and parses the reply from bytes: the
same requests on the wire, the same replies and errors. Anything else goes through httpx.

Streamed replies are parsed from bytes too: lines split with a regex, each event decoded on its
own only until the first token (for the time to first token), the rest in one json.loads.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from .secrets import redactor
from .transport import LeanTransport, origin

_log = logging.getLogger("httpx")  # where httpx logs each request (INFO)
# httpx's encoding of json= bodies
_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


class RetryableError(Exception):
    """The request may succeed if sent again (5xx, 429, 408, resets, timeouts, cut streams)."""

    def __init__(self, message: str, retry_after: float | None = None, free: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        # A keep-alive connection the server closed before we reused it: not the server's
        # failure to answer, so the retry does not count against the budget.
        self.free = free


class FatalEndpointError(Exception):
    """The endpoint cannot serve this run at all (401/403, unreachable): stop at once."""


class RequestFailed(Exception):
    """A request the server refused for good (4xx other than 408/429)."""


@dataclass(slots=True)
class Reply:
    content: str
    reasoning: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None


def endpoint_path(model_type: str) -> str:
    return "/chat/completions" if model_type == "openai-chat" else "/completions"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _error_text(response_text: str) -> str:
    text = response_text.strip().replace("\n", " ")
    return redactor(text[:300])


def classify_status(status: int, body: str, retry_after: float | None, url: str) -> Exception:
    if status in (401, 403):
        return FatalEndpointError(
            f"the server at {url} rejected the credentials (HTTP {status}): {_error_text(body)}. "
            f"Check the model config's api_key_env and that the variable it names is set."
        )
    if status in (408, 429) or status >= 500:
        return RetryableError(f"HTTP {status}: {_error_text(body)}", retry_after)
    return RequestFailed(f"HTTP {status}: {_error_text(body)}")


def parse_reply_json(data: Any, chat: bool) -> tuple[list[Reply], dict[str, Any] | None]:
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("choices"), list)
        or not data["choices"]
    ):
        raise RetryableError("malformed reply: no choices")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
    replies = []
    for choice in sorted(
        data["choices"], key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0
    ):
        if not isinstance(choice, dict):
            raise RetryableError("malformed reply: choice is not an object")
        if chat:
            message = choice.get("message") or {}
            content = message.get("content")
            reasoning = message.get("reasoning_content") or message.get("reasoning")
        else:
            content, reasoning = choice.get("text"), None
        replies.append(Reply(content or "", reasoning, choice.get("finish_reason"), None, None))
    _spread_usage(replies, usage)
    return replies, usage


def _spread_usage(replies: list[Reply], usage: dict[str, Any] | None) -> None:
    if not usage:
        return
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    n = len(replies)
    for r in replies:
        r.prompt_tokens = prompt
        # With n>1 the server reports the total; share it out so per-sample figures add up.
        r.completion_tokens = completion if n == 1 or completion is None else round(completion / n)


@functools.lru_cache(maxsize=256)
def _parsed(url: str) -> httpx.URL:
    """Parsing a URL string is a tenth of httpx's cost per request; endpoints reuse a few."""
    return httpx.URL(url)


@dataclass(frozen=True, slots=True)
class _Route:
    key: tuple[bytes, bytes, int]  # the transport's pool key
    head: bytes  # the request head up to the value of Content-Length
    keep_alive: bool  # False when the headers say Connection: close


@functools.lru_cache(maxsize=256)
def _route(
    url: str, headers: tuple[tuple[str, str], ...], defaults: tuple[tuple[bytes, bytes], ...]
) -> _Route | None:
    """The head httpx would send for a JSON POST to `url` with the client headers `defaults`
    and the caller's `headers` (merged as httpx merges them); None when httpx must send it."""
    parsed = _parsed(url)
    if parsed.scheme not in ("http", "https") or parsed.userinfo:  # userinfo: basic auth
        return None
    merged = httpx.Headers(list(defaults))
    merged.update(dict(headers))
    request = httpx.Request("POST", parsed, headers=merged, json={})
    lines = [b"POST %s HTTP/1.1\r\n" % parsed.raw_path]
    lines += [
        b"%s: %s\r\n" % (name, value)
        for name, value in request.headers.raw
        if name.lower() != b"content-length"
    ]
    lines.append(b"Content-Length: ")
    keep_alive = "close" not in request.headers.get("connection", "").lower()
    return _Route(origin(parsed), b"".join(lines), keep_alive)


def _lean_transport(client: httpx.AsyncClient) -> LeanTransport | None:
    """The client's LeanTransport when httpx would only pass the request through to it."""
    transport = getattr(client, "_transport", None)
    hooks = client.event_hooks
    if (
        type(transport) is not LeanTransport
        or client.is_closed  # httpx raises its own error
        or client.follow_redirects
        or client.auth is not None
        or client.params
        or len(client.cookies.jar)
        or getattr(client, "_mounts", True)  # proxies
        or hooks["request"]
        or hooks["response"]
    ):
        return None
    return transport


async def send(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    chat: bool,
    stream: bool,
    headers: dict[str, str],
) -> tuple[list[Reply], float, float | None]:
    """Send one request; return the replies, latency and time to first token.
    Raises RetryableError, FatalEndpointError or RequestFailed."""
    start = time.perf_counter()
    try:
        transport = _lean_transport(client)
        if transport is not None and (
            route := _route(url, tuple(headers.items()), tuple(client.headers.raw))
        ):
            return await _send_lean(client, transport, route, url, body, chat, stream, start)
        if not stream:
            response = await client.post(_parsed(url), json=body, headers=headers)
            if response.status_code != 200:
                raise classify_status(
                    response.status_code, response.text, _retry_after(response), url
                )
            return _json_replies(response.content, chat), time.perf_counter() - start, None
        async with client.stream("POST", _parsed(url), json=body, headers=headers) as response:
            if response.status_code != 200:
                await response.aread()
                raise classify_status(
                    response.status_code, response.text, _retry_after(response), url
                )
            receive = functools.partial(anext, response.aiter_bytes(), b"")
            replies, ttft = await _read_stream(receive, chat, start)
            return replies, time.perf_counter() - start, ttft
    except httpx.RemoteProtocolError as exc:
        # "Server disconnected without sending a response": a pooled keep-alive connection
        # that the server had already closed (llama.cpp does this after streamed replies).
        free = "without sending" in str(exc)
        raise RetryableError(f"connection dropped: {exc}", free=free) from None
    except httpx.ConnectError as exc:
        raise RetryableError(f"cannot connect to {url}: {exc}") from None
    except httpx.TimeoutException as exc:
        raise RetryableError(f"timed out ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        raise RetryableError(f"transport error: {type(exc).__name__}: {exc}") from None


async def _send_lean(
    client: httpx.AsyncClient,
    transport: LeanTransport,
    route: _Route,
    url: str,
    body: dict[str, Any],
    chat: bool,
    stream: bool,
    start: float,
) -> tuple[list[Reply], float, float | None]:
    """`send` straight on the transport, doing what httpx would have done around it."""
    content = _encode_json(body).encode()
    data = b"%s%d\r\n\r\n%s" % (route.head, len(content), content)
    head, reply = await transport.send_raw(
        route.key, data, client.timeout.as_dict(), route.keep_alive
    )
    try:
        if head.cookies:  # from now on the client has cookies to send: httpx's path
            request = httpx.Request("POST", url)
            client.cookies.extract_cookies(
                httpx.Response(head.status, headers=head.headers, request=request)
            )
        if _log.isEnabledFor(logging.INFO):
            _log.info(
                'HTTP Request: POST %s "%s %d %s"',
                _parsed(url),
                head.version.decode("ascii", "replace"),
                head.status,
                head.reason.decode("ascii", "replace"),
            )
        if head.status != 200 or (head.encoded and not stream):
            # rare: let httpx decode the body (content encodings, charset)
            response = httpx.Response(head.status, headers=head.headers, content=await reply.read())
            response.default_encoding = getattr(client, "_default_encoding", "utf-8")
            if head.status != 200:
                raise classify_status(head.status, response.text, _retry_after(response), url)
            return _json_replies(response.content, chat), time.perf_counter() - start, None
        if not stream:
            return _json_replies(await reply.read(), chat), time.perf_counter() - start, None
        receive: Callable[[], Awaitable[bytes]] = reply.receive
        if head.encoded:
            decoded = httpx.Response(200, headers=head.headers, stream=reply).aiter_bytes()
            receive = functools.partial(anext, decoded, b"")
        replies, ttft = await _read_stream(receive, chat, start)
        return replies, time.perf_counter() - start, ttft
    finally:
        await reply.aclose()  # after [DONE], or an error: reuse the connection if it can be


def _json_replies(content: bytes, chat: bool) -> list[Reply]:
    try:
        data = json.loads(content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RetryableError("malformed reply: body is not JSON") from None
    return parse_reply_json(data, chat)[0]


# A "data:" line's payload, without the blanks around it (lines end with \n: see _read_stream).
_DATA = re.compile(rb"^data:[ \t\x0b\x0c]*(.*[^ \t\x0b\x0c\n])?", re.MULTILINE)
_DONE = b"[DONE]"


def _event(payload: bytes) -> Any:
    try:
        return json.loads(payload.decode("utf-8", "replace"))
    except json.JSONDecodeError:
        raise RetryableError("malformed stream chunk: not JSON") from None


class _StreamedReply:
    """The choices of a streamed reply, built up one event (a parsed chunk) at a time."""

    __slots__ = ("chat", "contents", "finish", "reasonings", "usage")

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.contents: dict[int, list[str]] = {}
        self.reasonings: dict[int, list[str]] = {}
        self.finish: dict[int, str | None] = {}
        self.usage: dict[str, Any] | None = None

    def feed(self, chunk: Any) -> bool:
        """Take one event in; returns whether it carried text (content or reasoning)."""
        if not isinstance(chunk, dict):
            raise RetryableError("malformed stream chunk")
        if isinstance(chunk.get("error"), (dict, str)):
            raise RetryableError(f"error inside stream: {_error_text(json.dumps(chunk['error']))}")
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        text = False
        for choice in chunk.get("choices") or []:
            idx = choice.get("index", 0)
            if self.chat:
                delta = choice.get("delta") or {}
                piece = delta.get("content")
                thought = delta.get("reasoning_content") or delta.get("reasoning")
            else:
                piece, thought = choice.get("text"), None
            if piece:
                self.contents.setdefault(idx, []).append(piece)
            if thought:
                self.reasonings.setdefault(idx, []).append(thought)
            if piece or thought:
                text = True
            if choice.get("finish_reason"):
                self.finish[idx] = choice["finish_reason"]
        return text

    def feed_all(self, payloads: list[bytes]) -> None:
        """Take in events whose arrival time does not matter: one json.loads for all of them.
        If that fails, or a payload was not one JSON value on its own (the count differs),
        decode them one by one, so that the error is the first bad event's, as it would be."""
        try:
            chunks = json.loads(b"[%s]" % b",".join(payloads))
            if len(chunks) != len(payloads):
                raise ValueError
        except ValueError:
            chunks = map(_event, payloads)
        for chunk in chunks:
            self.feed(chunk)

    def replies(self, done: bool) -> list[Reply]:
        finish = self.finish
        indices = sorted(set(self.contents) | set(self.reasonings) | set(finish))
        # A reply is complete when [DONE] came or every choice reported a finish_reason;
        # anything else is a cut stream, and its partial text is thrown away, never glued to
        # a retry.
        if not done and (not indices or any(finish.get(i) is None for i in indices)):
            raise RetryableError("stream cut before the reply finished")
        replies = [
            Reply(
                "".join(self.contents.get(i, [])),
                "".join(self.reasonings[i]) if i in self.reasonings else None,
                finish.get(i),
                None,
                None,
            )
            for i in indices or [0]
        ]
        _spread_usage(replies, self.usage)
        return replies


async def _read_stream(
    receive: Callable[[], Awaitable[bytes]], chat: bool, start: float
) -> tuple[list[Reply], float | None]:
    """Read an SSE body from `receive` (the next bytes, b"" at the end) up to "data: [DONE]"
    or its end. Only "data:" lines count, each one JSON event."""
    reply = _StreamedReply(chat)
    ttft: float | None = None
    later: list[bytes] = []  # events after the first token, decoded in bulk
    tail = b""  # the start of a line still to come
    done = ended = False
    while not (done or ended):
        piece = await receive()
        if piece:
            if b"\r" in piece:  # a line may end in CR or CRLF too (an empty line is no event)
                piece = piece.replace(b"\r", b"\n")
            cut = piece.rfind(b"\n")
            if cut < 0:
                tail += piece
                continue
            lines, tail = tail + piece[:cut], piece[cut + 1 :]
        else:
            lines, ended = tail, True  # a last line without its newline counts too
        payloads = _DATA.findall(lines)
        if not payloads:
            continue
        if _DONE in payloads:
            payloads = payloads[: payloads.index(_DONE)]
            done = True
        if ttft is None:
            for i, payload in enumerate(payloads):
                if reply.feed(_event(payload)):
                    ttft = time.perf_counter() - start
                    later += payloads[i + 1 :]
                    break
        else:
            later += payloads
        if later and b'"error"' in lines:  # an error event stops the stream now, as it did
            reply.feed_all(later)
            later = []
    if later:
        reply.feed_all(later)
    return reply.replies(done), ttft


async def list_models(
    client: httpx.AsyncClient, base_url: str, headers: dict[str, str]
) -> list[str]:
    url = base_url + "/models"
    try:
        response = await client.get(url, headers=headers)
    except httpx.TransportError as exc:
        raise FatalEndpointError(
            f"cannot reach the server at {base_url} ({type(exc).__name__}). "
            f"Is it running? Set the URL with --sb-set "
            f"<model>.base_url=http://HOST:PORT/v1"
        ) from None
    if response.status_code != 200:
        err = classify_status(response.status_code, response.text, None, url)
        if isinstance(err, FatalEndpointError):
            raise err
        raise FatalEndpointError(
            f"GET {url} answered HTTP {response.status_code}; set the model "
            f"name in the config (`model:`) instead of leaving it empty"
        )
    try:
        data = response.json()
        return [m["id"] for m in data["data"]]
    except (ValueError, KeyError, TypeError):
        raise FatalEndpointError(
            f"GET {url} did not return a model list; set `model:` in the config"
        ) from None
