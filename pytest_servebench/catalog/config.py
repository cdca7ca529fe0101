"""Model and dataset configs: typed, validated, with errors that name file, line and fix."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from pytest_servebench.errors import ConfigError
from pytest_servebench.redaction import redact_url
from pytest_servebench.yamlio import line_of, mark_origin

NoneType = type(None)
MODEL_TYPES = ("openai-chat", "openai-completions")


def near_matches(name: str, candidates: list[str] | set[str], n: int = 5) -> list[str]:
    pool = sorted(candidates)
    close = difflib.get_close_matches(name, pool, n=n, cutoff=0.5)
    if not close:
        close = [c for c in pool if name.lower() in c.lower() or c.lower() in name.lower()][:n]
    return close


def _type_name(t: Any) -> str:
    if isinstance(t, tuple):
        return " or ".join(_type_name(x) for x in t)
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true/false",
        dict: "a mapping",
        list: "a list",
        NoneType: "null",
    }.get(t, getattr(t, "__name__", str(t)))


def _check_type(value: Any, expected: Any) -> Any:
    """Return the value coerced to `expected`, or raise TypeError."""
    types = expected if isinstance(expected, tuple) else (expected,)
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if bool not in types and isinstance(value, bool):
        raise TypeError
    if isinstance(value, types):
        return value
    raise TypeError


PROXY_SCHEMES = ("http", "https")


def proxy_url_problem(url: str) -> str | None:
    """Why aiohttp cannot use this proxy URL (http:// or https://, with a host), or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        return f"{redact_url(url)} is not a URL"
    if parts.scheme not in PROXY_SCHEMES or not parts.hostname:
        return (
            f"{redact_url(url)} is not a supported proxy: use an HTTP proxy "
            f"(http://HOST:PORT, credentials as http://USER:PASSWORD@HOST:PORT); "
            f"SOCKS proxies are not supported"
        )
    return None


@dataclass
class ModelConfig:
    name: str
    source: str
    type: str = "openai-chat"
    abbr: str = ""
    base_url: str | list[str] = "http://127.0.0.1:8080/v1"
    model: str = ""
    stream: bool = False
    api_key_env: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    generation_kwargs: dict[str, Any] = field(default_factory=dict)
    max_concurrency: int = 64
    connect_timeout: float = 10.0
    read_timeout: float = 600.0
    request_timeout: float | None = None
    retries: int = 2
    retry_backoff: float = 1.0
    retry_backoff_max: float = 30.0
    supports_n: bool = False
    # How requests reach the endpoint (see engine/connection.py and docs/configs.md, "Endpoints").
    verify: bool | str = True  # false, or a CA bundle (PEM file or folder)
    cert: str | list[str] | None = None  # client certificate: PATH or [CERT, KEY]
    proxy: str | None = None  # http://[USER:PASSWORD@]HOST:PORT for every request
    trust_env: bool = True  # HTTP(S)_PROXY, ALL_PROXY, NO_PROXY, SSL_CERT_FILE, ...
    follow_redirects: bool = True
    launch: dict[str, Any] | None = None
    aliases: list[str] = field(default_factory=list)
    description: str = ""

    _types: ClassVar[dict[str, Any]] = {
        "type": str,
        "abbr": str,
        "base_url": (str, list),
        "model": (str, NoneType),
        "stream": bool,
        "api_key_env": (str, NoneType),
        "headers": dict,
        "generation_kwargs": dict,
        "max_concurrency": int,
        "connect_timeout": float,
        "read_timeout": float,
        "request_timeout": (float, NoneType),
        "retries": int,
        "retry_backoff": float,
        "retry_backoff_max": float,
        "supports_n": bool,
        "verify": (bool, str),
        "cert": (str, list, NoneType),
        "proxy": (str, NoneType),
        "trust_env": bool,
        "follow_redirects": bool,
        "launch": (dict, NoneType),
        "aliases": list,
        "description": str,
    }

    def validate(self, raw: Any) -> None:
        if self.type not in MODEL_TYPES:
            raise ConfigError(
                f"type must be one of {', '.join(MODEL_TYPES)}, got {self.type!r}",
                self.source,
                line_of(raw, "type"),
            )
        if self.max_concurrency < 1:
            raise ConfigError(
                f"max_concurrency must be at least 1, got {self.max_concurrency}",
                self.source,
                line_of(raw, "max_concurrency"),
            )
        if self.retries < 0:
            raise ConfigError(
                f"retries must be 0 or more, got {self.retries}",
                self.source,
                line_of(raw, "retries"),
            )
        for key in ("connect_timeout", "read_timeout", "request_timeout"):
            value = getattr(self, key)
            if value is not None and not value > 0:  # NaN fails too
                none = " (or null: no limit)" if key == "request_timeout" else ""
                raise ConfigError(
                    f"{key} must be a number of seconds above 0{none}, got {value}",
                    self.source,
                    line_of(raw, key),
                )
        for key in ("retry_backoff", "retry_backoff_max"):
            if not getattr(self, key) >= 0:
                raise ConfigError(
                    f"{key} must be 0 seconds or more, got {getattr(self, key)}",
                    self.source,
                    line_of(raw, key),
                )
        samples = self.generation_kwargs.get("num_return_sequences", 1)
        if samples is not None and (
            isinstance(samples, bool) or not isinstance(samples, int) or samples < 1
        ):
            raise ConfigError(
                f"generation_kwargs.num_return_sequences must be a whole number of at least 1, "
                f"got {samples!r}",
                self.source,
                line_of(
                    raw.get("generation_kwargs") if isinstance(raw, dict) else None,
                    "num_return_sequences",
                )
                or line_of(raw, "generation_kwargs"),
            )
        self.abbr = self.abbr or self.name
        self.model = self.model or ""
        if not self.base_urls:
            raise ConfigError(
                "base_url must name at least one URL", self.source, line_of(raw, "base_url")
            )
        self._validate_connection(raw)
        if self.launch is not None:
            self.launch = validate_launch(self, raw)

    def _validate_connection(self, raw: Any) -> None:
        """verify, cert and proxy: files that exist, a proxy URL aiohttp can use."""

        def fail(key: str, message: str) -> ConfigError:
            return ConfigError(
                f"{key}: {message} (set it in the model config or with "
                f"--sb-set {self.name}.{key}=...)",
                self.source,
                line_of(raw, key),
            )

        if isinstance(self.verify, str):
            if not self.verify:
                raise fail("verify", "must be true, false or the path of a CA bundle")
            if not Path(self.verify).expanduser().exists():
                raise fail("verify", f"no CA bundle at {self.verify}")
        if self.cert is not None:
            files = [self.cert] if isinstance(self.cert, str) else self.cert
            if not 1 <= len(files) <= 2 or not all(isinstance(f, str) and f for f in files):
                raise fail(
                    "cert", "must be a PEM file with the certificate and key, or [CERT, KEY]"
                )
            for f in files:
                if not Path(f).expanduser().is_file():
                    raise fail("cert", f"no file at {f}")
        if self.proxy:
            problem = proxy_url_problem(self.proxy)
            if problem:
                raise fail("proxy", problem)

    @property
    def base_urls(self) -> list[str]:
        urls = [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)
        return [u.rstrip("/") for u in urls if u]

    @property
    def num_samples(self) -> int:
        return int(self.generation_kwargs.get("num_return_sequences", 1) or 1)

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        return os.environ.get(self.api_key_env) or None

    def resolved_headers(self) -> dict[str, str]:
        """Headers with ${ENV} references expanded (values are secrets: never log them)."""
        return {k: _expand_env(str(v)) for k, v in self.headers.items()}


LAUNCH_DEFAULTS: dict[str, Any] = {
    "env": {},
    "cwd": None,
    "host": "127.0.0.1",
    "port": "auto",
    "ready_url": "{base_url}/models",
    "startup_timeout": 300.0,
    "stop_grace": 10.0,
    "requires": [],
    "hint": "",
}
_LAUNCH_FIELDS = ("command", *LAUNCH_DEFAULTS)


def validate_launch(model: ModelConfig, raw: Any) -> dict[str, Any]:
    """Check a model's `launch` section (the server the plugin starts and stops itself) and
    return it normalized: command a list of arguments, every field present."""
    import shlex

    launch = model.launch or {}
    section = raw.get("launch") if isinstance(raw, dict) else None
    source = model.source

    def fail(message: str, key: str | None = None) -> ConfigError:
        line = line_of(section, key) if key and section is not None else None
        return ConfigError(f"launch: {message}", source, line or line_of(raw, "launch"))

    for key in launch:
        if key not in _LAUNCH_FIELDS:
            hint = near_matches(str(key), list(_LAUNCH_FIELDS))
            suggestion = f"; did you mean {', '.join(hint)}?" if hint else ""
            raise fail(
                f"unknown field {key!r}{suggestion} (fields: {', '.join(_LAUNCH_FIELDS)})", key
            )
    out: dict[str, Any] = {**LAUNCH_DEFAULTS, **launch}
    command = out.get("command")
    if isinstance(command, str):
        try:
            command = shlex.split(command)
        except ValueError as exc:
            raise fail(f"command: cannot split into arguments ({exc})", "command") from None
    if isinstance(command, list) and any(isinstance(a, dict) for a in command):
        raise fail(
            "quote placeholders in the command list: in YAML, [{python}, ...] is a mapping; "
            'write ["{python}", -m, ...] or give the command as one string',
            "command",
        )
    if (
        not isinstance(command, list)
        or not command
        or not all(isinstance(a, (str, int, float)) and not isinstance(a, bool) for a in command)
    ):
        raise fail(
            "`command` must be the server command, a string or a list of arguments, "
            'e.g. ["{python}", -m, llama_cpp.server, --port, "{port}"]',
            "command" if "command" in launch else None,
        )
    out["command"] = [str(a) for a in command]
    env = out["env"]
    if not isinstance(env, dict) or not all(
        isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in env.values()
    ):
        raise fail(
            '`env` must map variable names to strings or numbers (quote placeholders: "{port}")',
            "env",
        )
    out["env"] = {str(k): str(v) for k, v in env.items()}
    for key in ("cwd", "host", "ready_url", "hint"):
        value = out[key]
        if key == "cwd" and value is None:
            continue
        if not isinstance(value, str) or (key in ("host", "ready_url") and not value):
            raise fail(f"`{key}` must be a string", key)
    port = out["port"]
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if port != "auto" and not (isinstance(port, int) and not isinstance(port, bool)):
        raise fail(f'`port` must be "auto" or a port number, got {port!r}', "port")
    if isinstance(port, int) and not 0 < port < 65536:
        raise fail(f"`port` must be between 1 and 65535, got {port}", "port")
    out["port"] = port
    for key in ("startup_timeout", "stop_grace"):
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise fail(f"`{key}` must be a number of seconds (0 or more), got {value!r}", key)
        out[key] = float(value)
    requires = out["requires"]
    if isinstance(requires, str):
        requires = [requires]
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        raise fail("`requires` must be a list of Python module names", "requires")
    out["requires"] = requires
    urls = model.base_urls
    if len(urls) != 1:
        raise ConfigError(
            "launch starts one server, so base_url must be one URL (e.g. "
            "http://{host}:{port}/v1), not a list",
            source,
            line_of(raw, "base_url"),
        )
    if port == "auto" and "{port}" not in urls[0]:
        raise ConfigError(
            'with launch port "auto", base_url must contain {port} '
            "(e.g. http://{host}:{port}/v1) so requests reach the server that was started; "
            f"to use a server you started yourself, also set {model.name}.launch=null",
            source,
            line_of(raw, "base_url"),
        )
    return out


@dataclass
class DatasetConfig:
    name: str
    source: str
    abbr: str = ""
    path: str = ""
    format: str = "auto"
    columns: list[str] | None = None
    id_field: str | None = None
    answer_field: str = "answer"
    prompt: str | list[dict[str, str]] = "{question}"
    fewshot: dict[str, Any] | None = None
    evaluator: str | dict[str, Any] = "exact"
    generation_kwargs: dict[str, Any] = field(default_factory=dict)
    data_source: str = ""
    license: str = ""
    mode: str = "gen"
    aliases: list[str] = field(default_factory=list)
    description: str = ""
    builtin_data: bool = False
    # Sub-datasets (one task per subset, or one merged task): see datasets.SubsetSpec.
    subsets: dict[str, Any] | None = None
    # A record field holding a list of options: exposed to the prompt as {A}, {B}, ... and
    # {options} ("A. ...\nB. ..."); an answer given as the option's text becomes its letter.
    choices_field: str | None = None
    # Restore LaTeX commands whose backslash was read as a JSON escape (\f, \t, \b ...).
    repair_latex: bool = False
    # Only the first N records (AISBench's reader_cfg test_range '[0:N]', as in its demo_*
    # configs); --sb-limit can only lower it.
    limit: int | None = None

    _types: ClassVar[dict[str, Any]] = {
        "abbr": str,
        "path": str,
        "format": str,
        "columns": (list, NoneType),
        "id_field": (str, NoneType),
        "answer_field": str,
        "prompt": (str, list),
        "fewshot": (dict, NoneType),
        "evaluator": (str, dict),
        "generation_kwargs": dict,
        "data_source": str,
        "license": str,
        "mode": str,
        "aliases": list,
        "description": str,
        "builtin_data": bool,
        "subsets": (dict, NoneType),
        "choices_field": (str, NoneType),
        "repair_latex": bool,
        "limit": (int, NoneType),
    }

    def validate(self, raw: Any) -> None:
        self.abbr = self.abbr or self.name
        if not self.path:
            raise ConfigError(
                "a dataset config needs `path` (the data file, relative to the datasets dir)",
                self.source,
                line_of(raw, "path"),
            )
        if self.format not in ("auto", "jsonl", "json", "csv", "parquet"):
            raise ConfigError(
                f"format must be auto, jsonl, json, csv or parquet, got {self.format!r}",
                self.source,
                line_of(raw, "format"),
            )
        if isinstance(self.prompt, list):
            for message in self.prompt:
                if not (isinstance(message, dict) and set(message) == {"role", "content"}):
                    raise ConfigError(
                        "each prompt message must be a mapping with `role` and `content`",
                        self.source,
                        line_of(raw, "prompt"),
                    )
                if message["role"] not in ("system", "user", "assistant"):
                    raise ConfigError(
                        f"prompt role must be system, user or assistant, got {message['role']!r}",
                        self.source,
                        line_of(raw, "prompt"),
                    )
        if self.limit is not None and self.limit < 1:
            raise ConfigError("limit must be at least 1", self.source, line_of(raw, "limit"))
        if self.subsets is not None:
            check_subsets(self, line_of(raw, "subsets"))


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(value: str) -> str:
    return _ENV_REF.sub(lambda m: os.environ.get(m.group(1), ""), value)


def build(cls: type, name: str, source: str, raw: Any) -> Any:
    """Validate a raw mapping into a config dataclass; unknown keys and wrong types fail clearly."""
    if not isinstance(raw, dict):
        raise ConfigError("expected a mapping of config fields at the top level", source, 1)
    allowed = {f.name for f in fields(cls) if f.name not in ("name", "source")}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "kind":
            continue
        if key not in allowed:
            hint = near_matches(str(key), allowed)
            suggestion = f"; did you mean {', '.join(hint)}?" if hint else ""
            raise ConfigError(
                f"unknown field {key!r}{suggestion} (fields: {', '.join(sorted(allowed))})",
                source,
                line_of(raw, key),
            )
        expected = cls._types[key]
        try:
            values[key] = _check_type(value, expected)
        except TypeError:
            raise ConfigError(
                f"field {key!r} must be {_type_name(expected)}, got "
                f"{type(value).__name__} {value!r}",
                source,
                line_of(raw, key),
            ) from None
    config = cls(name=name, source=source, **values)
    config.validate(raw)
    return config


def apply_override(
    raw: dict[str, Any], dotted: list[str], value: Any, origin: str | None = None
) -> None:
    """Set raw[a][b][c] = value for dotted path a.b.c, creating mappings as needed. `origin`
    (the option's text) is what error messages about these keys point at."""
    node = raw
    for part in dotted[:-1]:
        if origin:
            mark_origin(node, part, origin)
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    if origin:
        mark_origin(node, dotted[-1], origin)
    node[dotted[-1]] = value


# -- subsets: structural checks (names that need the datasets dir come later) ----------------

_SUBSET_NAME = re.compile(r"[A-Za-z0-9_.-]+")

_SUBSET_KEYS = ("names", "file", "fields", "abbr", "group_by", "groups")


def check_subsets(config: DatasetConfig, line: int | None) -> None:
    """Structural checks of `subsets:` (names that need the datasets dir come later)."""
    spec = config.subsets or {}

    def fail(message: str) -> None:
        raise ConfigError(f"subsets: {message}", config.source, line)

    unknown = [k for k in spec if k not in _SUBSET_KEYS]
    if unknown:
        fail(f"unknown key {unknown[0]!r} (keys: {', '.join(_SUBSET_KEYS)})")
    if ("names" in spec) == ("file" in spec):
        fail("give exactly one of `names` (a list or mapping) or `file` (a file listing them)")
    names = spec.get("names")
    if names is not None:
        if isinstance(names, Mapping):
            for name, fields in names.items():
                if fields is not None and not isinstance(fields, Mapping):
                    fail(f"the fields of subset {name!r} must be a mapping, got {fields!r}")
            names = list(names)
        if not isinstance(names, list) or not names:
            fail("`names` must be a non-empty list or mapping of subset names")
        check_subset_names([str(n) for n in names], fail)
    if "file" in spec and not isinstance(spec["file"], str):
        fail("`file` must be a path relative to the datasets dir")
    if "fields" in spec and not (
        isinstance(spec["fields"], list) and all(isinstance(f, str) for f in spec["fields"])
    ):
        fail("`fields` must be a list of field names")
    groups = spec.get("groups")
    if groups is not None and not (
        isinstance(groups, Mapping)
        and all(
            isinstance(members, list) and members and all(isinstance(m, str) for m in members)
            for members in groups.values()
        )
    ):
        fail("`groups` must map each group name to a non-empty list of subset names")
    if "group_by" in spec and not isinstance(spec["group_by"], str):
        fail("`group_by` must name a field of the subsets (e.g. category)")
    abbr = spec.get("abbr")
    if abbr is not None and (not isinstance(abbr, str) or "{subset}" not in abbr):
        fail("`abbr` must be a string containing {subset}, e.g. ceval-{subset}")
    if "{subset}" not in config.path:
        raise ConfigError(
            "a dataset with `subsets` needs {subset} in `path` (e.g. mmlu/test/{subset}_test.csv)",
            config.source,
            line,
        )


def check_subset_names(names: list[str], fail: Callable[[str], None]) -> None:
    """Subset names become file names and summary rows: a safe charset, each name once."""
    seen: set[str] = set()
    for name in names:
        if not _SUBSET_NAME.fullmatch(name):
            fail(f"subset name {name!r} may only hold letters, digits, '_', '.' and '-'")
        if name in seen:
            fail(f"subset {name!r} is listed twice")
        seen.add(name)
