"""Dataset readers, prompt rendering and few-shot: records become cases."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from .config import DatasetConfig
from .errors import ConfigError, DatasetMissingError
from .evaluators import Evaluator, get_evaluator

PACKAGE_DATA = Path(__file__).parent / "data"
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9_.-]+")

Prompt = str | list[dict[str, str]]


@dataclass(slots=True)
class Case:
    """One dataset record, ready to become a test item. Prompts are rendered on demand so that
    50,000 few-shot cases do not hold 50,000 long prompt strings in memory."""

    id: str
    index: int
    record: dict[str, Any]
    reference: str


def fill(template: str, record: dict[str, Any]) -> str:
    """Replace {field} with the record's value, in one pass, leaving other braces alone
    (math prompts contain \\boxed{} and must not be touched)."""

    def sub(match: re.Match[str]) -> str:
        key = match.group(1)
        return str(record[key]) if key in record else match.group(0)

    return _PLACEHOLDER.sub(sub, template)


def read_records(
    path: Path, fmt: str = "auto", columns: list[str] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record). Line numbers feed error messages."""
    if fmt == "auto":
        fmt = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(
            path.suffix.lower(), ""
        )
        if not fmt:
            raise ConfigError(
                "cannot tell the data format from the file name; set `format:` "
                "to jsonl, json, csv or parquet",
                path,
            )
    if fmt == "jsonl":
        with path.open(encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(
                        f"malformed JSON line ({exc.msg} at column {exc.colno}); "
                        f"expected one JSON object per line",
                        path,
                        lineno,
                    ) from None
                if not isinstance(record, dict):
                    raise ConfigError(
                        f"expected a JSON object per line, got {type(record).__name__}",
                        path,
                        lineno,
                    )
                yield lineno, record
    elif fmt == "json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"malformed JSON ({exc.msg})", path, exc.lineno) from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise ConfigError('expected a JSON list of records (or {"data": [...]})', path, 1)
        for i, record in enumerate(data):
            if not isinstance(record, dict):
                raise ConfigError(
                    f"record {i} is {type(record).__name__}, expected an object", path
                )
            yield i + 1, record
    elif fmt == "csv":
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = columns
            if header is None:
                header = next(reader, None)
                if header is None:
                    return
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise ConfigError(
                        f"expected {len(header)} columns ({', '.join(header)}), got {len(row)}",
                        path,
                        reader.line_num,
                    )
                yield reader.line_num, dict(zip(header, row))
    elif fmt == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError("reading parquet needs pyarrow: pip install pyarrow", path) from None
        for i, record in enumerate(pq.read_table(path).to_pylist()):
            yield i + 1, record


class Dataset:
    """A dataset config bound to its data: cases, prompt rendering, evaluator and version."""

    def __init__(self, config: DatasetConfig, datasets_dir: Path, limit: int | None = None):
        self.config = config
        self.datasets_dir = datasets_dir
        self.limit = limit
        self.evaluator: Evaluator = self._evaluator()

    def _evaluator(self) -> Evaluator:
        try:
            return get_evaluator(self.config.evaluator)
        except ValueError as exc:
            raise ConfigError(f"evaluator: {exc}", self.config.source) from None

    @property
    def data_path(self) -> Path:
        base = PACKAGE_DATA if self.config.builtin_data else self.datasets_dir
        return (base / self.config.path).resolve()

    def missing_message(self) -> str:
        cfg = self.config
        top = Path(cfg.path).parts[0] if Path(cfg.path).parts else cfg.path
        msg = (
            f"dataset {cfg.name!r} expects its data file at {self.data_path}, which does not "
            f"exist. Get it with `python -m pytest_servebench download {top} --to "
            f"{self.datasets_dir}`, or put the files there yourself"
        )
        if cfg.data_source:
            msg += f" (source: {cfg.data_source})"
        msg += (
            ". The datasets dir comes from --sb-datasets-dir, the ini option sb_datasets_dir, "
            "or $SERVEBENCH_DATASETS (default ./datasets)."
        )
        return msg

    @cached_property
    def cases(self) -> list[Case]:
        path = self.data_path
        if not path.is_file():
            raise DatasetMissingError(self.missing_message())
        cfg = self.config
        cases: list[Case] = []
        seen: set[str] = set()
        for index, (lineno, record) in enumerate(read_records(path, cfg.format, cfg.columns)):
            if self.limit is not None and index >= self.limit:
                break
            if cfg.answer_field not in record:
                raise ConfigError(
                    f"record has no field {cfg.answer_field!r} (answer_field); its "
                    f"fields are {', '.join(map(str, record))}",
                    path,
                    lineno,
                )
            for name in self.placeholders:
                if name not in record:
                    raise ConfigError(
                        f"the prompt uses {{{name}}} but the record has no such "
                        f"field; its fields are {', '.join(map(str, record))}",
                        path,
                        lineno,
                    )
            case_id = self._case_id(index, record, path, lineno)
            if case_id in seen:
                raise ConfigError(
                    f"duplicate case id {case_id!r} (id_field {cfg.id_field!r})", path, lineno
                )
            seen.add(case_id)
            reference = self.evaluator.reference(record[cfg.answer_field])
            cases.append(Case(case_id, index, record, reference))
        return cases

    def _case_id(self, index: int, record: dict[str, Any], path: Path, lineno: int) -> str:
        id_field = self.config.id_field
        if id_field:
            if id_field not in record:
                raise ConfigError(f"record has no id field {id_field!r}", path, lineno)
            return _UNSAFE_ID.sub("_", str(record[id_field])).strip("_") or f"q{index:04d}"
        # Position plus content: readable for -k, and a changed record never inherits the
        # verdict or saved prediction of the record that stood there before.
        digest = hashlib.sha1(
            json.dumps(record, sort_keys=True, ensure_ascii=False).encode()
        ).hexdigest()[:6]
        return f"q{index:04d}_{digest}"

    @cached_property
    def placeholders(self) -> set[str]:
        texts = (
            [self.config.prompt]
            if isinstance(self.config.prompt, str)
            else [m["content"] for m in self.config.prompt]
        )
        return {m.group(1) for t in texts for m in _PLACEHOLDER.finditer(t)} - {"fewshot"}

    @cached_property
    def fewshot_examples(self) -> list[dict[str, Any]]:
        spec = self.config.fewshot
        if not spec:
            return []
        path = (self.datasets_dir / str(spec["path"])).resolve()
        if not path.is_file():
            raise DatasetMissingError(
                f"few-shot file for dataset {self.config.name!r} not found "
                f"at {path}. " + self.missing_message()
            )
        k = int(spec.get("k", 5))
        records = [
            r
            for _, r in read_records(
                path, spec.get("format", "auto"), spec.get("columns", self.config.columns)
            )
        ]
        return records[:k]

    def render(self, case: Case) -> Prompt:
        """The prompt for one case: a string (completions) or chat messages."""
        prompt = self.config.prompt
        shots = self.fewshot_examples
        spec = self.config.fewshot or {}
        if isinstance(prompt, str):
            text = fill(prompt, case.record)
            if shots:
                example = str(spec.get("example", prompt))
                rendered = str(spec.get("separator", "\n\n")).join(
                    fill(example, shot) for shot in shots
                )
                if "{fewshot}" in prompt:
                    return text.replace("{fewshot}", rendered)
                return rendered + str(spec.get("separator", "\n\n")) + text
            return text
        messages = [{"role": m["role"], "content": fill(m["content"], case.record)} for m in prompt]
        if shots:
            example = spec.get("example")
            if not isinstance(example, list):
                raise ConfigError(
                    "fewshot.example must be a list of messages for a chat prompt",
                    self.config.source,
                )
            shot_messages = [
                {"role": m["role"], "content": fill(m["content"], shot)}
                for shot in shots
                for m in example
            ]
            head = 1 if messages and messages[0]["role"] == "system" else 0
            messages = messages[:head] + shot_messages + messages[head:]
        return messages

    def question_text(self, case: Case) -> str:
        """What a person reads as the question: the first prompt field, else the prompt."""
        for name in sorted(self.placeholders, key=self._placeholder_position):
            return str(case.record.get(name, ""))
        return prompt_preview(self.render(case))

    def _placeholder_position(self, name: str) -> int:
        text = (
            self.config.prompt
            if isinstance(self.config.prompt, str)
            else "\n".join(m["content"] for m in self.config.prompt)
        )
        return text.rfind("{" + name + "}")

    @cached_property
    def version(self) -> str:
        """Short hash of what defines the benchmark: data, prompt, few-shot, evaluator and the
        dataset's own generation settings (stop words). Changes when any of them changes."""
        digest = hashlib.sha256()
        digest.update(_file_digest(self.data_path).encode())
        identity = {
            "prompt": self.config.prompt,
            "fewshot": self.fewshot_examples,
            "fewshot_spec": {k: v for k, v in (self.config.fewshot or {}).items() if k != "path"},
            "evaluator": self.evaluator.identity(),
            "answer_field": self.config.answer_field,
            "generation_kwargs": self.config.generation_kwargs,
        }
        digest.update(json.dumps(identity, sort_keys=True, ensure_ascii=False).encode())
        return digest.hexdigest()[:6]


def _file_digest(path: Path) -> str:
    if not path.is_file():
        return "missing"
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prompt_preview(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return messages_to_text(prompt)


def messages_to_text(messages: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    for m in messages:
        buf.write(m["content"])
        buf.write("\n")
    return buf.getvalue()
