"""Turning a prompt and configs into the exact request body, and hashing it for resume."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pytest_servebench.catalog.config import ModelConfig
from pytest_servebench.catalog.datasets import Prompt, messages_to_text

# Keys that change how a reply travels, not what it says: left out of the resume hash.
_TRANSPORT_KEYS = ("stream", "stream_options")
_NOT_FOR_SERVER = ("num_return_sequences",)


def generation_kwargs(model: ModelConfig, dataset_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Dataset settings (its stop words) fill in; the endpoint's own settings win; stop lists
    from both are merged so neither side's stop words are lost."""
    merged = dict(dataset_kwargs)
    merged.update(model.generation_kwargs)
    stops: list[str] = []
    for source in (dataset_kwargs.get("stop"), model.generation_kwargs.get("stop")):
        if isinstance(source, str):
            source = [source]
        for s in source or []:
            if s not in stops:
                stops.append(s)
    if stops:
        merged["stop"] = stops
    for key in _NOT_FOR_SERVER:
        merged.pop(key, None)
    return merged


def build_body(
    model: ModelConfig, model_name: str, prompt: Prompt, kwargs: dict[str, Any], n: int = 1
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model_name}
    if model.type == "openai-chat":
        body["messages"] = (
            [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        )
    else:
        body["prompt"] = prompt if isinstance(prompt, str) else messages_to_text(prompt)
    body.update(kwargs)
    if n > 1:
        body["n"] = n
    if model.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def request_hash(model_type: str, body: dict[str, Any]) -> str:
    """Identifies what was asked: endpoint kind plus body, minus transport-only keys."""
    stable = {k: v for k, v in body.items() if k not in _TRANSPORT_KEYS}
    text = json.dumps([model_type, stable], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
