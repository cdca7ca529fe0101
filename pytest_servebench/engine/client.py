"""OpenAI-compatible requests and replies: chat and completions, streamed (SSE) or not.

Knows HTTP and the OpenAI wire format; knows nothing of datasets or scoring. The bytes travel
on an aiohttp session (connection.py: TLS, proxies, redirects, timeouts); every way a request
can fail becomes one of three errors here, with a message that says what to do.

Streamed replies are parsed from bytes: lines split with a regex, each event decoded on its
own only until the first token (for the time to first token), the rest in one json.loads.
"""

from __future__ import annotations

import asyncio
import errno
import json
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

# Imported with this module, so in the engine's process at its start (which overlaps
# pytest's start-up), not on the first request's path (~0.25 s).
import aiohttp

from pytest_servebench.engine.connection import EndpointSetupError, Session, parse_url
from pytest_servebench.redaction import redact_url, redactor

# The JSON encoding of request bodies (httpx's, which earlier versions sent).
_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_JSON = {"Content-Type": "application/json"}


class RetryableError(Exception):
    """The request may succeed if sent again (5xx, 429, 408, resets, timeouts, cut streams)."""

    def __init__(
        self,
        message: str,
        retry_after: float | None = None,
        free: bool = False,
        unreachable: str | None = None,
    ):
        super().__init__(message)
        self.retry_after = retry_after
        # A keep-alive connection the server closed before we reused it: not the server's
        # failure to answer, so the retry does not count against the budget.
        self.free = free
        # The endpoint (or its proxy) could not be reached: the message that stops the run
        # when every attempt failed so and no request ever succeeded.
        self.unreachable = unreachable


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


def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _error_text(response_text: str) -> str:
    text = response_text.strip().replace("\n", " ")
    return redactor(text[:300])


def classify_status(
    status: int, body: str, retry_after: float | None, url: str, headers: Any = None
) -> Exception:
    if status in (401, 403):
        return FatalEndpointError(
            f"the server at {url} rejected the credentials (HTTP {status}): {_error_text(body)}. "
            f"Check the model config's api_key_env and that the variable it names is set."
        )
    if status in (408, 429) or status >= 500:
        return RetryableError(f"HTTP {status}: {_error_text(body)}", retry_after)
    if 300 <= status < 400:
        location = (headers or {}).get("location")
        where = f" to {redactor(location)}" if location else " without a Location"
        return RequestFailed(
            f"HTTP {status}: {url} redirects{where}; set base_url to the final URL, or "
            f"follow_redirects: true to follow it"
        )
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


async def send(
    session: Session,
    url: str,
    body: dict[str, Any],
    chat: bool,
    stream: bool,
    headers: dict[str, str],
) -> tuple[list[Reply], float, float | None]:
    """Send one request; return the replies, latency and time to first token.
    Raises RetryableError, FatalEndpointError or RequestFailed."""
    start = time.perf_counter()
    data = _encode_json(body).encode()
    try:
        async with session.request(
            "POST", url, data=data, headers={**_JSON, **headers}
        ) as response:
            if response.status == 407:
                raise _proxy_rejected(session, url)
            if response.status != 200:
                text = (await response.read()).decode(response.charset or "utf-8", "replace")
                raise classify_status(
                    response.status, text, _retry_after(response.headers), url, response.headers
                )
            if not stream:
                return _json_replies(await response.read(), chat), time.perf_counter() - start, None
            replies, ttft = await _read_stream(response.content.readany, chat, start)
            return replies, time.perf_counter() - start, ttft
    except (RetryableError, FatalEndpointError, RequestFailed):
        raise
    except Exception as exc:
        raise describe(exc, url, session) from None


def _where(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a URL, for messages."""
    parsed = parse_url(url)
    return parsed.scheme, parsed.host or "?", parsed.port


def _via(session: Session, url: str) -> str:
    """' through the proxy P' when requests to `url` go through one (redacted)."""
    proxy = session.proxy_for(url)
    return f" through the proxy {redact_url(proxy)}" if proxy else ""


def _proxy_rejected(session: Session, url: str) -> FatalEndpointError:
    proxy = redact_url(session.proxy_for(url) or "?")
    return FatalEndpointError(
        f"the proxy {proxy} asks for credentials (HTTP 407) for {url}; put them in the proxy "
        f"URL (http://USER:PASSWORD@HOST:PORT) in the model config's `proxy` or in "
        f"HTTPS_PROXY / HTTP_PROXY"
    )


def describe(exc: BaseException, url: str, session: Session) -> Exception:
    """The error (RetryableError, FatalEndpointError, RequestFailed) for an exception raised
    while sending to `url`, with a message that names what failed and what to do."""
    name = session.settings.name
    scheme, host, port = _where(url)
    target = f"{host}:{port}" if port else host
    if isinstance(exc, EndpointSetupError):
        return FatalEndpointError(f"model {name!r}: {exc}")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        reason = getattr(exc.certificate_error, "verify_message", None) or str(
            exc.certificate_error
        )
        return FatalEndpointError(
            f"the TLS certificate of {target} is not trusted ({reason}){_via(session, url)}. "
            f"CA certificates used: {session.ca_source}. Set the model config's `verify` to "
            f"the CA bundle that signed it (--sb-set {name}.verify=/path/to/ca.pem, a PEM file "
            f"or a folder), or set SSL_CERT_FILE; verify=false turns the check off"
        )
    if isinstance(exc, (aiohttp.ClientSSLError, ssl.SSLError)):
        return _tls_failure(exc, url, session)
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        proxy = redact_url(session.proxy_for(url) or "?")
        message = f"cannot connect to the proxy {proxy} (for {url}): {exc.os_error}"
        return RetryableError(
            message,
            unreachable=f"{message}. Is the proxy running? Set it with the model config's "
            f"`proxy` (--sb-set {name}.proxy=http://HOST:PORT) or HTTPS_PROXY / HTTP_PROXY; "
            f"NO_PROXY lists the hosts reached directly",
        )
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        proxy = redact_url(session.proxy_for(url) or "?")
        if exc.status == 407:
            return _proxy_rejected(session, url)
        message = f"the proxy {proxy} refused to connect to {target} (HTTP {exc.status})"
        return RetryableError(message, unreachable=message)
    if isinstance(exc, aiohttp.TooManyRedirects):
        chain = " -> ".join(redactor(str(r.url)) for r in exc.history[:4])
        return FatalEndpointError(
            f"{url} redirected more than {len(exc.history) - 1} times ({chain} ...): a "
            f"redirect loop; set base_url to the final URL of the API"
        )
    if isinstance(exc, (aiohttp.InvalidURL, aiohttp.NonHttpUrlRedirectClientError)):
        return RequestFailed(f"invalid URL: {exc}")
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        message = f"cannot resolve {host}{_via(session, url)}: {exc.os_error}"
        return RetryableError(
            f"cannot connect to {url}: {message}",
            unreachable=f"the server for model {name!r} is not reachable: {message}. "
            f"Check the host name in base_url (--sb-set {name}.base_url=...)",
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        message = f"cannot connect to {url}{_via(session, url)}: {exc.os_error}"
        example = (
            f"{scheme}://HOST:PORT/v1" if scheme in ("http", "https") else "http://HOST:PORT/v1"
        )
        return RetryableError(
            message,
            unreachable=f"the server for model {name!r} is not reachable: {message}. Is it "
            f"running? Set its URL with --sb-set {name}.base_url={example}",
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError) and not isinstance(exc.message, str):
        # aiohttp passes the part of the reply's head that came
        return RetryableError(
            "connection dropped: the server closed the connection in the middle of the reply"
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError) or (
        isinstance(exc, aiohttp.ClientOSError) and "Can not write request" in str(exc)
    ):
        # "Server disconnected" before any reply, or the request could not even be written:
        # a pooled keep-alive connection that the server had already closed (llama.cpp
        # does this after streamed replies). If it never answers at all, the run stops:
        # over TLS 1.3 that is how a server refuses a client without a certificate.
        return RetryableError(
            f"connection dropped: {exc}",
            free=True,
            unreachable=f"the server for model {name!r} at {target}{_via(session, url)} "
            f"closed every connection without answering{_cert_hint(session, scheme)}",
        )
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        seconds = session.settings.connect_timeout
        handshake = " (TCP connect and TLS handshake)" if scheme == "https" else ""
        return RetryableError(
            f"timed out (ConnectTimeout): no connection to {target}{_via(session, url)} "
            f"within {seconds}s{handshake}"
        )
    if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        return RetryableError(f"timed out (ReadTimeout){_via(session, url)}")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return RetryableError(f"connection dropped: reply cut or malformed: {exc}")
    if isinstance(exc, aiohttp.ClientResponseError):
        return RetryableError(f"malformed reply: {exc.message}")
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        reset = getattr(exc, "errno", None) == errno.ECONNRESET
        return RetryableError(
            f"transport error: {type(exc).__name__}: {exc}",
            unreachable=f"the server for model {name!r} at {target}{_via(session, url)} "
            f"reset every connection without answering{_cert_hint(session, scheme)}"
            if reset
            else None,
        )
    if isinstance(exc, UnicodeError):
        return RetryableError(f"malformed reply: {exc}")
    raise exc


def _cert_hint(session: Session, scheme: str) -> str:
    """Why an https server may close or reset connections without a word (TLS 1.3: the
    client's certificate is checked after the handshake)."""
    if scheme != "https" or session.settings.cert:
        return ""
    return (
        f"; an HTTPS server that wants a client certificate does this: set the model "
        f"config's `cert` (--sb-set {session.settings.name}.cert=/path/to/client.pem, or "
        f"[CERT, KEY])"
    )


def _tls_failure(exc: BaseException, url: str, session: Session) -> Exception:
    """A TLS handshake that failed for another reason than an untrusted certificate: a
    server that wants a client certificate, a protocol mismatch. Never an http:// hint: the
    URL says https on purpose."""
    name = session.settings.name
    _, host, port = _where(url)
    reason = str(getattr(exc, "os_error", None) or exc)
    advice = f"CA certificates used: {session.ca_source}"
    if "CERTIFICATE_REQUIRED" in reason.upper() or "BAD_CERTIFICATE" in reason.upper():
        advice = (
            f"the server asks for a client certificate: set the model config's `cert` "
            f"(--sb-set {name}.cert=/path/to/client.pem, or [CERT, KEY])"
        )
    return FatalEndpointError(
        f"TLS with {host}:{port}{_via(session, url)} failed: {reason}. {advice}"
    )


def _json_replies(content: bytes, chat: bool) -> list[Reply]:
    try:
        data = json.loads(content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        # What came instead (a proxy's HTML page, a login form) says what is wrong.
        start = " ".join(content[:160].decode("utf-8", "replace").split())
        raise RetryableError(f"malformed reply: body is not JSON: {start!r}") from None
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


async def list_models(session: Session, base_url: str, headers: dict[str, str]) -> list[str]:
    url = base_url + "/models"
    try:
        async with session.request("GET", url, headers=headers) as response:
            status = response.status
            body = await response.read()
    except Exception as exc:
        error = describe(exc, url, session)
        if isinstance(error, RetryableError):
            raise FatalEndpointError(error.unreachable or f"GET {url} failed: {error}") from None
        raise error from None
    text = body.decode("utf-8", "replace")
    if status != 200:
        err = classify_status(status, text, None, url)
        if isinstance(err, FatalEndpointError):
            raise err
        raise FatalEndpointError(
            f"GET {url} answered HTTP {status}; set the model "
            f"name in the config (`model:`) instead of leaving it empty"
        )
    try:
        data = json.loads(text)
        return [m["id"] for m in data["data"]]
    except (ValueError, KeyError, TypeError):
        raise FatalEndpointError(
            f"GET {url} did not return a model list; set `model:` in the config"
        ) from None
