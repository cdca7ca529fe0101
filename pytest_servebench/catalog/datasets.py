"""Dataset readers, prompt rendering, few-shot and sub-datasets: records become cases.

A dataset config names a data file (jsonl, json, csv, parquet) under the datasets dir, a prompt
with ``{field}`` placeholders, optional few-shot examples and an evaluator. Three extras:

* ``subsets``: one data file per subset (``path: mmlu/test/{subset}_test.csv``). By default each
  subset is its own task (config name ``<name>/<subset>``, summary row per subset plus group
  averages); with ``--sb-merge-ds`` one merged task covers them all (case ids
  ``<subset>/<id>``). Every record of a subset gets the fields ``{subset}``, ``{subset_text}``
  (underscores as spaces) and the subset's own fields from the config, for the prompt.
* ``choices_field``: a field holding a list of options, shown to the prompt as ``{A}``, ``{B}``,
  ... and ``{options}``; an answer given as the option's text becomes its letter.
* ``repair_latex``: restore LaTeX commands whose backslash a JSON writer read as an escape
  (``"\\frac"`` written unescaped becomes form feed + ``rac``).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import gzip
import hashlib
import io
import json
import re
import string
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from pytest_servebench.catalog.config import DatasetConfig, check_subset_names
from pytest_servebench.catalog.sources import SOURCES
from pytest_servebench.errors import ConfigError, DatasetMissingError
from pytest_servebench.scoring.evaluators import Evaluator, get_evaluator

PACKAGE_DATA = Path(__file__).resolve().parents[1] / "data"
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9_.-]+")

Prompt = str | list[dict[str, str]]

# Same text as json.dumps(record, sort_keys=True, ensure_ascii=False), one encoder for all.
_ID_ENCODER = json.JSONEncoder(sort_keys=True, ensure_ascii=False)


@dataclass(slots=True)
class Case:
    """One dataset record, ready to become a test item. Prompts are rendered on demand so that
    50,000 few-shot cases do not hold 50,000 long prompt strings in memory."""

    id: str
    index: int
    # The record's fields that the prompt uses, in the order of `names` (one tuple shared by
    # every case of a dataset): a tuple costs 50,000 cases ~7 MB less than a dict each.
    values: tuple[Any, ...]
    reference: str
    subset: str | None = None
    runs_left: int = 0  # selected items of this case (one per model), see release
    names: tuple[str, ...] = ()

    @property
    def record(self) -> dict[str, Any]:
        """What the prompt sees of the record ({} once released)."""
        return dict(zip(self.names, self.values))

    def release(self) -> None:
        """One item of this case ran and was reported. After the last, drop the record: every
        request is built and every verdict made, and 50,000 records would otherwise stay to
        the end of the session."""
        self.runs_left -= 1
        if self.runs_left <= 0:
            self.values = _RELEASED


class _Released(tuple):  # type: ignore[type-arg]
    """The values of a released case: rendering it again is a bug, and fails loudly."""


_RELEASED = _Released()


def _record_of(case: Case) -> dict[str, Any]:
    if case.values is _RELEASED:
        raise RuntimeError(f"case {case.id} was released after its run; it cannot be rendered")
    return dict(zip(case.names, case.values))


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
            _data_suffix(path), ""
        )
        if not fmt:
            raise ConfigError(
                "cannot tell the data format from the file name; set `format:` "
                "to jsonl, json, csv or parquet",
                path,
            )
    if fmt == "jsonl":
        with _open_text(path, "utf-8") as handle:
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
            with _open_text(path, "utf-8") as handle:
                data = json.loads(handle.read())
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
        # Universal newlines, as AISBench reads these files: a line break inside a quoted field
        # ("I. ...\r\nII. ...") reaches the prompt as "\n", not "\r\n".
        with _open_text(path, "utf-8-sig") as handle:
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


def _data_suffix(path: Path) -> str:
    """The format suffix of a data file; a gzip file (`.jsonl.gz`) has the one before `.gz`."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes[-1:] == [".gz"]:
        return suffixes[-2] if len(suffixes) > 1 else ""
    return suffixes[-1] if suffixes else ""


def _open_text(path: Path, encoding: str) -> Any:
    """A text handle on a data file, decompressed on the fly when it ends in `.gz`."""
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding=encoding)
    return path.open(encoding=encoding)


def _utf8_checked(
    path: Path, fmt: str, columns: list[str] | None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """read_records, with a file that is not UTF-8 reported at its first bad line."""
    try:
        yield from read_records(path, fmt, columns)
    except UnicodeDecodeError as exc:
        data = path.read_bytes()
        if path.suffix.lower() == ".gz":
            data = gzip.decompress(data)
        try:
            data.decode("utf-8-sig")
            at, line = exc.start, None
        except UnicodeDecodeError as whole:
            at, line = whole.start, data.count(b"\n", 0, whole.start) + 1
        raise ConfigError(
            f"not UTF-8 text (byte 0x{data[at]:02x} cannot be decoded); convert the file "
            f"to UTF-8, e.g. iconv -f latin1 -t utf-8",
            path,
            line,
        ) from None


# -- LaTeX escape repair -----------------------------------------------------------------------

#: Bump when the repair rules change (feeds the dataset version).
REPAIR_VERSION = 1
# Control characters that never stand in text: a JSON "\f" / "\b" meant as LaTeX.
_CONTROL_ESCAPES = str.maketrans({"\x0c": "\\f", "\x08": "\\b"})
# TAB and CR are real whitespace, so only when a LaTeX command name follows (the escape ate the
# command's first letter: "\triangle" became TAB + "riangle").
_WHITESPACE_ESCAPE = re.compile(
    r"\t(?=(?:riangle|imes|ext(?:bf|it|rm|style)?|heta|frac|ilde|imes|an|au)(?![A-Za-z]))"
    r"|\r(?=(?:ight(?:arrow)?|angle|ho|floor|ceil|m)(?![A-Za-z]))"
)


def repair_latex(text: str) -> str:
    """``"\\x0crac{1}{2}"`` -> ``"\\\\frac{1}{2}"``; TAB + ``riangle`` -> ``\\\\triangle``."""
    if "\x0c" in text or "\x08" in text:
        text = text.translate(_CONTROL_ESCAPES)
    if "\t" in text or "\r" in text:
        text = _WHITESPACE_ESCAPE.sub(lambda m: "\\t" if m.group() == "\t" else "\\r", text)
    return text


def _repair_value(value: Any) -> Any:
    if isinstance(value, str):
        return repair_latex(value)
    if isinstance(value, list):
        return [_repair_value(v) for v in value]
    return value


# -- sub-datasets --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubsetSpec:
    """The subsets of a config: names in run order, per-subset prompt fields, abbr pattern.

    In YAML::

        subsets:
          names: [abstract_algebra, anatomy]      # or a mapping name -> {field: value}
          # file: ceval/subject_mapping.json      # instead of names: a JSON list / mapping or a
          # fields: [subject, subject_zh, category]  # .txt file (one name a line); `fields`
          #                                       # names the items of list-valued entries
          abbr: lukaemon_mmlu_{subset}            # summary row name (default <abbr>_{subset})
          group_by: category                      # a summary row <abbr>-<value> per value of
                                                  # this subset field (lower case, - for spaces)
          groups: {hard: [college_physics, ...]}  # and/or named lists: a row <abbr>-<name>
    """

    names: tuple[str, ...]
    fields: Mapping[str, Mapping[str, Any]]
    abbr: str
    groups: tuple[tuple[str, tuple[str, ...]], ...] = ()


def load_subsets(config: DatasetConfig, datasets_dir: Path) -> SubsetSpec:
    spec = config.subsets or {}
    abbr = str(spec.get("abbr") or f"{config.abbr}_{{subset}}")
    raw: Any = spec.get("names")
    if raw is None:
        path = Path(str(spec["file"])).expanduser()
        if not path.is_absolute():
            path = datasets_dir / path
        if not path.is_file():
            raise DatasetMissingError(
                f"dataset {config.name!r} lists its subsets in {path}, which does not exist. "
                + _download_hint(config, datasets_dir)
            )
        raw = _read_subset_file(path, spec.get("fields"), config)
    fields: dict[str, dict[str, Any]] = {}
    if isinstance(raw, Mapping):
        for name, extra in raw.items():
            fields[str(name)] = dict(extra or {})
        names = [str(n) for n in raw]
    else:
        names = [str(n) for n in raw]

    def fail(message: str) -> None:
        raise ConfigError(f"subsets: {message}", config.source)

    check_subset_names(names, fail)
    return SubsetSpec(tuple(names), fields, abbr, _groups(spec, names, fields))


def _groups(
    spec: Mapping[str, Any], names: list[str], fields: Mapping[str, Mapping[str, Any]]
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The category groups: by the value of `group_by` (in order of first appearance), then
    the named `groups`."""
    by_value: dict[str, list[str]] = {}
    field = spec.get("group_by")
    if field:
        for name in names:
            value = fields.get(name, {}).get(field)
            if value is not None:
                key = "-".join(str(value).lower().split())
                by_value.setdefault(key, []).append(name)
    named = {str(g): [str(m) for m in members] for g, members in (spec.get("groups") or {}).items()}
    return tuple((group, tuple(members)) for group, members in {**by_value, **named}.items())


def _read_subset_file(path: Path, field_names: list[str] | None, config: DatasetConfig) -> Any:
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"malformed JSON ({exc.msg})", path, exc.lineno) from None
        if isinstance(data, dict):
            out = {}
            for name, value in data.items():
                if isinstance(value, list):
                    names = field_names or [f"subset_field{i}" for i in range(len(value))]
                    value = dict(zip(names, value))
                out[name] = value if isinstance(value, dict) else {"subset_value": value}
            return out
        if isinstance(data, list):
            return data
        raise ConfigError("expected a JSON list of subset names or a mapping", path)
    lines = path.read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def _with_subset(text: str, subset: str | None) -> str:
    return text if subset is None else text.replace("{subset}", subset)


def _download_hint(config: DatasetConfig, datasets_dir: Path) -> str:
    top = Path(config.path).parts[0] if Path(config.path).parts else config.path
    if top in SOURCES:
        msg = (
            f"Get it with `python -m pytest_servebench download {top} --to {datasets_dir}`, "
            "or put the files there yourself"
        )
    else:
        msg = "Put the data files there, or point `path` at them"
    if config.data_source:
        msg += f" (source: {config.data_source})"
    return (
        msg + ". The datasets dir comes from --sb-datasets-dir, the ini option sb_datasets_dir, "
        "or $SERVEBENCH_DATASETS (default ./datasets)."
    )


# -- the dataset ---------------------------------------------------------------------------------


class Dataset:
    """A dataset config bound to its data: cases, prompt rendering, evaluator and version.

    A config with ``subsets`` gives either one Dataset per subset (``subset`` set; built by
    :func:`expand`) or one merged Dataset over all of them (``subset`` None)."""

    def __init__(
        self,
        config: DatasetConfig,
        datasets_dir: Path,
        limit: int | None = None,
        *,
        subset: str | None = None,
        group: tuple[str, str] | None = None,
    ):
        self.config = config
        self.datasets_dir = datasets_dir
        # The config's own limit (AISBench's test_range of a demo config) and --sb-limit:
        # whichever is smaller.
        limits = [n for n in (limit, config.limit) if n is not None]
        self.limit = min(limits) if limits else None
        self.subset = subset
        #: (parent config name, group abbr) of a subset task; None otherwise.
        self.group = group
        self.evaluator: Evaluator = self._evaluator()
        self._shots: dict[str | None, list[dict[str, Any]]] = {}

    def _evaluator(self) -> Evaluator:
        try:
            return get_evaluator(self.config.evaluator)
        except ValueError as exc:
            raise ConfigError(f"evaluator: {exc}", self.config.source) from None

    # -- where the data is -------------------------------------------------------------------
    @cached_property
    def subset_spec(self) -> SubsetSpec | None:
        if not self.config.subsets:
            return None
        return load_subsets(self.config, self.datasets_dir)

    @property
    def subset_names(self) -> list[str | None]:
        """The subsets this dataset covers: [None] without subsets, one when split, all when
        merged."""
        if self.subset is not None:
            return [self.subset]
        spec = self.subset_spec
        return list(spec.names) if spec is not None else [None]

    @property
    def merged(self) -> bool:
        return self.subset is None and bool(self.config.subsets)

    def resolve(self, relative: str) -> Path:
        """A data path: absolute as is; ``./x`` or ``../x`` next to the config file; anything
        else under the datasets dir (the package's own data for ``builtin_data``)."""
        path = Path(relative).expanduser()
        if path.is_absolute():
            return path
        if self.config.builtin_data:
            base = PACKAGE_DATA
        elif relative.startswith(("./", "../")) and self.config.source:
            base = Path(self.config.source).parent
        else:
            base = self.datasets_dir
        return (base / path).resolve()

    def path_for(self, subset: str | None) -> Path:
        return self.resolve(_with_subset(self.config.path, subset))

    @property
    def data_path(self) -> Path:
        return self.path_for(self.subset_names[0])

    @property
    def data_paths(self) -> list[Path]:
        return [self.path_for(s) for s in self.subset_names]

    def missing_message(self, path: Path | None = None) -> str:
        cfg = self.config
        where = path or self.data_path
        return (
            f"dataset {cfg.name!r} expects its data file at {where}, which does not exist. "
            + _download_hint(cfg, self.datasets_dir)
        )

    # -- records -----------------------------------------------------------------------------
    def subset_fields(self, subset: str | None) -> dict[str, Any]:
        if subset is None:
            return {}
        fields: dict[str, Any] = {"subset": subset, "subset_text": subset.replace("_", " ")}
        spec = self.subset_spec
        if spec is not None:
            fields.update(spec.fields.get(subset, {}))
        return fields

    def _prepare(
        self, record: dict[str, Any], extra: dict[str, Any], path: Path, lineno: int
    ) -> dict[str, Any]:
        """What the prompt sees of a record: repaired text, option letters, subset fields."""
        cfg = self.config
        if cfg.repair_latex:
            record = {k: _repair_value(v) for k, v in record.items()}
        if cfg.choices_field:
            options = _choices(record, cfg.choices_field, path, lineno)
            letters = string.ascii_uppercase[: len(options)]
            for letter, text in zip(letters, options):
                record.setdefault(letter, text)
            record.setdefault("options", "\n".join(f"{a}. {t}" for a, t in zip(letters, options)))
            answer = record.get(cfg.answer_field)
            if (
                isinstance(answer, str)
                and answer.strip() not in letters
                and answer.strip() in options
            ):
                record[cfg.answer_field] = letters[options.index(answer.strip())]
        for key, value in extra.items():
            record.setdefault(key, value)
        return record

    @cached_property
    def cases(self) -> list[Case]:
        cfg = self.config
        cases: list[Case] = []
        seen: set[str] = set()
        merged = self.merged
        placeholders = self.placeholders
        names = tuple(sorted(placeholders))
        for subset in self.subset_names:
            path = self.path_for(subset)
            if not path.is_file():
                raise DatasetMissingError(self.missing_message(path))
            extra = self.subset_fields(subset)
            for index, (lineno, record) in enumerate(_utf8_checked(path, cfg.format, cfg.columns)):
                if self.limit is not None and index >= self.limit:
                    break
                case_id = self._case_id(index, record, path, lineno)
                if merged:
                    case_id = f"{subset}/{case_id}"
                record = self._prepare(record, extra, path, lineno)
                if cfg.answer_field not in record:
                    raise ConfigError(
                        f"record has no field {cfg.answer_field!r} (answer_field); its "
                        f"fields are {', '.join(map(str, record))}",
                        path,
                        lineno,
                    )
                for name in placeholders:
                    if name not in record:
                        raise ConfigError(
                            f"the prompt uses {{{name}}} but the record has no such "
                            f"field; its fields are {', '.join(map(str, record))}",
                            path,
                            lineno,
                        )
                if case_id in seen:
                    raise ConfigError(
                        f"duplicate case id {case_id!r} (id_field {cfg.id_field!r})", path, lineno
                    )
                seen.add(case_id)
                # A code problem's reference is several fields (its tests, entry point...).
                from_record = getattr(self.evaluator, "record_reference", None)
                reference = (
                    from_record(record)
                    if from_record is not None
                    else self.evaluator.reference(record[cfg.answer_field])
                )
                # A case keeps the fields its prompt uses: a worked solution in the answer
                # field, or the raw choices, would otherwise stay in memory for every case.
                used = tuple(record[name] for name in names)
                cases.append(Case(case_id, len(cases), used, reference, subset, names=names))
        if not cases:
            files = ", ".join(str(self.path_for(s)) for s in self.subset_names)
            raise ConfigError(
                f"dataset {cfg.name!r} has no records: {files} holds none; put records in it "
                f"(one JSON object per line for .jsonl) or choose another dataset"
            )
        return cases

    def _case_id(self, index: int, record: dict[str, Any], path: Path, lineno: int) -> str:
        id_field = self.config.id_field
        if id_field:
            if id_field not in record:
                raise ConfigError(f"record has no id field {id_field!r}", path, lineno)
            return _UNSAFE_ID.sub("_", str(record[id_field])).strip("_") or f"q{index:04d}"
        # Position plus content: readable for -k, and a changed record never inherits the
        # verdict or saved prediction of the record that stood there before.
        digest = hashlib.sha1(_ID_ENCODER.encode(record).encode()).hexdigest()[:6]
        return f"q{index:04d}_{digest}"

    @cached_property
    def placeholders(self) -> set[str]:
        texts = (
            [self.config.prompt]
            if isinstance(self.config.prompt, str)
            else [m["content"] for m in self.config.prompt]
        )
        return {m.group(1) for t in texts for m in _PLACEHOLDER.finditer(t)} - {"fewshot"}

    # -- few-shot ----------------------------------------------------------------------------
    def fewshot_for(self, subset: str | None) -> list[dict[str, Any]]:
        """The first k records of the few-shot file (of this subset), prepared like cases."""
        if subset in self._shots:
            return self._shots[subset]
        spec = self.config.fewshot
        if not spec:
            return []
        path = self.resolve(_with_subset(str(spec["path"]), subset))
        if not path.is_file():
            raise DatasetMissingError(
                f"few-shot file for dataset {self.config.name!r} not found "
                f"at {path}. " + _download_hint(self.config, self.datasets_dir)
            )
        k = int(spec.get("k", 5))
        shots: list[dict[str, Any]] = []
        columns = spec.get("columns", self.config.columns)
        extra = self.subset_fields(subset)
        for lineno, record in read_records(path, spec.get("format", "auto"), columns):
            if len(shots) >= k:
                break
            shots.append(self._prepare(record, extra, path, lineno))
        self._shots[subset] = shots
        return shots

    # -- prompts -----------------------------------------------------------------------------
    def render(self, case: Case) -> Prompt:
        """The prompt for one case: a string (completions) or chat messages."""
        prompt = self.config.prompt
        shots = self.fewshot_for(case.subset)
        spec = self.config.fewshot or {}
        if isinstance(prompt, str):
            text = fill(prompt, _record_of(case))
            if shots:
                example = spec.get("example", prompt)
                if not isinstance(example, str):
                    raise ConfigError(
                        "fewshot.example must be a string for a string prompt",
                        self.config.source,
                    )
                rendered = str(spec.get("separator", "\n\n")).join(
                    fill(example, shot) for shot in shots
                )
                if "{fewshot}" in prompt:
                    return text.replace("{fewshot}", rendered)
                return rendered + str(spec.get("separator", "\n\n")) + text
            return text
        record = _record_of(case)
        messages = [{"role": m["role"], "content": fill(m["content"], record)} for m in prompt]
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
        """What a person reads as the question: the first prompt field that is the record's own
        (not a subset's name nor an option letter), else the prompt."""
        decor = set(self.subset_fields(case.subset)) | {"options"}
        if self.config.choices_field:
            decor |= set(string.ascii_uppercase)
        names = sorted(self.placeholders, key=self._placeholder_position)
        for name in [n for n in names if n not in decor and len(n) > 1] or names:
            return str(_record_of(case).get(name, ""))
        return prompt_preview(self.render(case))

    def _placeholder_position(self, name: str) -> int:
        text = (
            self.config.prompt
            if isinstance(self.config.prompt, str)
            else "\n".join(m["content"] for m in self.config.prompt)
        )
        return text.rfind("{" + name + "}")

    # -- version -----------------------------------------------------------------------------
    @cached_property
    def version(self) -> str:
        """Short hash of what defines the benchmark: data, prompt, few-shot, evaluator and the
        dataset's own generation settings (stop words). Changes when any of them changes, and
        not with names, descriptions, licences or where the files lie."""
        cfg = self.config
        if self.merged:
            # The merged task carries the version of the group row of a split run, so that
            # the two modes of one benchmark show one version.
            spec = self.subset_spec
            assert spec is not None
            return group_version(self._split_version(s) for s in spec.names)
        digest = hashlib.sha256()
        names = self.subset_names
        for subset in names:
            digest.update(_file_digest(self.path_for(subset)).encode())
        if names == [None]:
            shots: Any = self._shots_or_missing(None)
        else:
            shots = {s: self._shots_or_missing(s) for s in names}
        identity: dict[str, Any] = {
            "prompt": cfg.prompt,
            "fewshot": shots,
            "fewshot_spec": {k: v for k, v in (cfg.fewshot or {}).items() if k != "path"},
            "evaluator": self.evaluator.identity(),
            "answer_field": cfg.answer_field,
            "generation_kwargs": cfg.generation_kwargs,
        }
        # Only present when used, so that older configs keep their version.
        if cfg.subsets:
            identity["subsets"] = {s: self.subset_fields(s) for s in names}
        if cfg.columns:
            identity["columns"] = cfg.columns
        if cfg.choices_field:
            identity["choices_field"] = cfg.choices_field
        if cfg.repair_latex:
            identity["repair_latex"] = REPAIR_VERSION
        digest.update(json.dumps(identity, sort_keys=True, ensure_ascii=False).encode())
        return digest.hexdigest()[:6]

    def _split_version(self, subset: str) -> str:
        single = Dataset(self.config, self.datasets_dir, subset=subset)
        single.__dict__["subset_spec"] = self.subset_spec
        single._shots = self._shots  # share what was read already
        return single.version

    def _shots_or_missing(self, subset: str | None) -> Any:
        try:
            return self.fewshot_for(subset)
        except DatasetMissingError:
            return "missing"


def group_version(versions: Iterable[str]) -> str:
    """The version of a group of subsets from theirs (in any order; names do not count)."""
    text = "\n".join(sorted(versions))
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def _choices(record: dict[str, Any], field: str, path: Path, lineno: int) -> list[str]:
    value = record.get(field)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    if not isinstance(value, (list, tuple)) or not value or len(value) > 26:
        raise ConfigError(
            f"choices_field {field!r} must hold a list of 1 to 26 options (a JSON list in csv)",
            path,
            lineno,
        )
    return [str(v) for v in value]


def expand(
    config: DatasetConfig, datasets_dir: Path, limit: int | None = None, merge: bool = False
) -> list[Dataset]:
    """The datasets a config runs as: itself, or one per subset (unless ``merge``). With
    subsets, ``limit`` applies to each subset, in both modes."""
    if not config.subsets or merge:
        return [Dataset(config, datasets_dir, limit)]
    spec = load_subsets(config, datasets_dir)
    out = []
    for subset in spec.names:
        sub = dataclasses.replace(
            config, name=f"{config.name}/{subset}", abbr=spec.abbr.replace("{subset}", subset)
        )
        dataset = Dataset(sub, datasets_dir, limit, subset=subset, group=(config.name, config.abbr))
        dataset.__dict__["subset_spec"] = spec
        out.append(dataset)
    return out


def data_file_config(data: Path, sibling: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The config of a data file named directly (``--sb-datasets qa.jsonl``): question field
    ``question``, answer field ``answer``, evaluator ``exact``; a YAML beside it with the same
    stem (``qa.yaml``) overrides any of these (its ``path`` defaults to the data file)."""
    # A deep copy keeps the YAML's line numbers (for error messages) and leaves the cache alone.
    raw: dict[str, Any] = copy.deepcopy(sibling) if sibling is not None else {}
    raw.setdefault("kind", "dataset")
    raw.setdefault("path", str(data.resolve()))
    raw.setdefault("prompt", "{question}")
    raw.setdefault("answer_field", "answer")
    raw.setdefault("evaluator", "exact")
    raw.setdefault("description", f"data file {data.name}")
    return raw


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
