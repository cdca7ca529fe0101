"""OpenAI-compatible requests and replies: chat and completions, streamed (SSE) or not.

Knows HTTP and the OpenAI wire format; knows nothing of datasets or scoring."""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

from .secrets import redactor


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
        if not stream:
            response = await client.post(_parsed(url), json=body, headers=headers)
            if response.status_code != 200:
                raise classify_status(
                    response.status_code, response.text, _retry_after(response), url
                )
            try:
                data = response.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise RetryableError("malformed reply: body is not JSON") from None
            replies, _ = parse_reply_json(data, chat)
            return replies, time.perf_counter() - start, None
        async with client.stream("POST", _parsed(url), json=body, headers=headers) as response:
            if response.status_code != 200:
                await response.aread()
                raise classify_status(
                    response.status_code, response.text, _retry_after(response), url
                )
            replies, ttft = await _read_stream(response, chat, start)
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


async def _read_stream(
    response: httpx.Response, chat: bool, start: float
) -> tuple[list[Reply], float | None]:
    contents: dict[int, list[str]] = {}
    reasonings: dict[int, list[str]] = {}
    finish: dict[int, str | None] = {}
    usage: dict[str, Any] | None = None
    ttft: float | None = None
    done = False
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            done = True
            break
        try:
            chunk = json.loads(payload)
        except json.JSONDecodeError:
            raise RetryableError("malformed stream chunk: not JSON") from None
        if not isinstance(chunk, dict):
            raise RetryableError("malformed stream chunk")
        if isinstance(chunk.get("error"), (dict, str)):
            raise RetryableError(f"error inside stream: {_error_text(json.dumps(chunk['error']))}")
        if isinstance(chunk.get("usage"), dict):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            idx = choice.get("index", 0)
            if chat:
                delta = choice.get("delta") or {}
                piece = delta.get("content")
                thought = delta.get("reasoning_content") or delta.get("reasoning")
            else:
                piece, thought = choice.get("text"), None
            if piece:
                contents.setdefault(idx, []).append(piece)
            if thought:
                reasonings.setdefault(idx, []).append(thought)
            if (piece or thought) and ttft is None:
                ttft = time.perf_counter() - start
            if choice.get("finish_reason"):
                finish[idx] = choice["finish_reason"]
    indices = sorted(set(contents) | set(reasonings) | set(finish))
    # A reply is complete when [DONE] came or every choice reported a finish_reason; anything
    # else is a cut stream, and its partial text is thrown away, never glued to a retry.
    if not done and (not indices or any(finish.get(i) is None for i in indices)):
        raise RetryableError("stream cut before the reply finished")
    if not indices:
        indices = [0]
    replies = [
        Reply(
            "".join(contents.get(i, [])),
            "".join(reasonings[i]) if i in reasonings else None,
            finish.get(i),
            None,
            None,
        )
        for i in indices
    ]
    _spread_usage(replies, usage)
    return replies, ttft


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
