"""YAML loading that remembers where each mapping key stood, for error messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pytest_servebench.errors import ConfigError


class LineDict(dict):
    """A dict that knows the 1-based line of each of its keys."""

    lines: dict[str, int]
    start_line: int = 0
    origins: dict[str, str] | None = None  # key -> the option that overrode it


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    result = LineDict()
    result.lines = {}
    result.start_line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = key_node.start_mark.line + 1
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

# libyaml's parser, when PyYAML has it, with the same constructors: 5x faster, and every
# config folder is read at start-up. Errors are reported by the pure-Python loader (its
# messages are the ones users and tests see).
_FastLoader: type | None = None
if getattr(yaml, "CSafeLoader", None) is not None:

    class _FastLoader(yaml.CSafeLoader):  # type: ignore[no-redef, name-defined]
        pass

    _FastLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path) from None
    if _FastLoader is not None:
        try:
            return yaml.load(text, Loader=_FastLoader)
        except yaml.YAMLError:
            pass  # read it again below, for the error message
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise ConfigError(f"not valid YAML: {exc.problem}", path, line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", path) from None


def line_of(data: Any, key: str) -> int | str | None:
    """Where a key's value was set: its line in the YAML file, or the option that
    overrode it (a string such as "--sb-set vllm_chat.read_timeout=0")."""
    if isinstance(data, LineDict):
        origins = getattr(data, "origins", None)
        if origins and key in origins:
            return origins[key]
        return data.lines.get(key, data.start_line or None)
    return None


def mark_origin(data: Any, key: str, origin: str) -> None:
    """Remember that `key` of a loaded mapping was set by an option, for error messages."""
    if isinstance(data, LineDict):
        if getattr(data, "origins", None) is None:
            data.origins = {}
        data.origins[key] = origin


def parse_scalar(text: str) -> Any:
    """Parse an override value the way YAML would parse a scalar (`0.7`, `true`, `[a, b]`)."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text
