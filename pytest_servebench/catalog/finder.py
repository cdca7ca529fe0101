"""Find model and dataset configs by name across suite folders; report near matches."""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_servebench.catalog.config import (
    DatasetConfig,
    ModelConfig,
    apply_override,
    build,
    near_matches,
)
from pytest_servebench.catalog.datasets import DATA_SUFFIXES, data_file_config
from pytest_servebench.errors import ConfigError, ServebenchError
from pytest_servebench.yamlio import load_yaml, parse_scalar


def _builtin_suites() -> Path:
    """The packaged copy of the repo root's suites/ (the same folder in an editable install)."""
    spec = importlib.util.find_spec("pytest_servebench.builtin_suites")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ServebenchError(
            "the built-in configs (pytest_servebench.builtin_suites) are not installed: "
            "reinstall pytest-servebench (pip install -e . from a checkout)"
        )
    return Path(locations[0])


BUILTIN_SUITES = _builtin_suites()


def suite_folders(rootpath: Path, extra: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """Where configs are looked for, first match wins: --sb-suites folders, the rootdir's
    suites/, then the built-in configs (in an editable install, this repo's own suites/ is
    the built-in folder itself)."""
    folders = [(Path(d).expanduser().resolve(), "--sb-suites") for d in extra]
    for path, _ in folders:
        if not path.is_dir():
            raise ServebenchError(f"--sb-suites {path}: no such folder")
    builtin = BUILTIN_SUITES.resolve()
    local = (rootpath / "suites").resolve()
    if local.is_dir() and local != builtin:
        folders.append((local, "rootdir"))
    return [*folders, (builtin, "built-in")]


KINDS = ("model", "dataset")


# AISBench dataset configs of our datasets that cannot run here: the name is known, so the
# message says why and what to run instead (a typo gets the family's list, see unknown_message).
UNSUPPORTED: dict[str, str] = {
    "mmlu_ppl_0_shot_str": "a PPL task (it ranks each option by the model's log-likelihood)",
    "ceval_ppl_0_shot_str": "a PPL task (it ranks each option by the model's log-likelihood)",
    "ARC_c_ppl_0_shot_str": "a PPL task (it ranks each option by the model's log-likelihood)",
    "ARC_c_gen_25_shot_chat_prompt": (
        "25-shot from ARC-Challenge's dev split, which the ARC data here (the test split) "
        "does not include"
    ),
    "aime2025_gen_0_shot_llmjudge": "scored by a second model acting as judge",
}


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    path: Path
    origin: str  # "--sb-suites", "rootdir", "built-in", "path", "data-file"
    data: Path | None = None  # a data file named directly on --sb-datasets (see find)
    alias: bool = False  # reached by an `aliases:` name, not the file's own

    @property
    def family(self) -> str | None:
        """The folder a dataset config sits in below `datasets/` (gsm8k, mmlu, ...)."""
        parent = self.path.parent
        if self.kind != "dataset" or parent.parent.name != "datasets" or self.origin == "path":
            return None
        return parent.name

    @property
    def short(self) -> bool:
        """A family's short name (`gsm8k`): an alias that is not an AISBench config name."""
        return self.alias and "_gen" not in self.name and "_ppl" not in self.name


def _kind_of(path: Path, raw: Any) -> str | None:
    if isinstance(raw, dict) and raw.get("kind") in (*KINDS, "gate"):
        return raw["kind"]
    for parent in path.parents:
        if parent.name in ("models", "datasets"):
            return parent.name[:-1]
    return None


class SuiteIndex:
    """All configs visible from the given folders, first folder wins on a name clash."""

    def __init__(self, folders: Sequence[tuple[Path, str]]):
        self.folders = [(Path(f), origin) for f, origin in folders]
        self._entries: dict[tuple[str, str], Entry] = {}
        self._raw_cache: dict[Path, Any] = {}
        self._gates: list[Entry] = []
        for folder, origin in self.folders:
            for path in sorted(folder.rglob("*.yaml")) + sorted(folder.rglob("*.yml")):
                self._index(path, origin)

    def _index(self, path: Path, origin: str) -> None:
        raw = self._load(path)
        kind = _kind_of(path, raw)
        if kind == "gate":
            self._gates.append(Entry(kind, path.stem, path, origin))
            return
        if kind not in KINDS:
            return
        names = [path.stem]
        if isinstance(raw, dict) and isinstance(raw.get("aliases"), list):
            names += [str(a) for a in raw["aliases"]]
        for name in names:
            entry = Entry(kind, name, path, origin, alias=name != path.stem)
            key = (kind, name)
            # first folder wins: a project's config of a built-in's name replaces it
            self._entries.setdefault(key, entry)

    def _load(self, path: Path) -> Any:
        if path not in self._raw_cache:
            self._raw_cache[path] = load_yaml(path)
        return self._raw_cache[path]

    def names(self, kind: str) -> list[str]:
        return sorted(name for k, name in self._entries if k == kind)

    def gates(self) -> list[Entry]:
        """The `kind: gate` files of these folders (CI accuracy gates, see gates.py), in
        folder order."""
        return list(self._gates)

    def entries(self) -> list[Entry]:
        return sorted(self._entries.values(), key=lambda e: (e.kind, e.name))

    def find(self, kind: str, name: str) -> Entry:
        explicit = Path(name)
        if name.endswith((".yaml", ".yml")) and explicit.is_file():
            return Entry(kind, explicit.stem, explicit.resolve(), "path")
        if kind == "dataset" and name.endswith(DATA_SUFFIXES) and explicit.is_file():
            # `--sb-datasets qa.jsonl`: a config made from the file (datasets.data_file_config);
            # a YAML beside it with the same stem (qa.yaml) overrides the defaults.
            data = explicit.resolve()
            beside = [data.with_suffix(s) for s in (".yaml", ".yml")]
            sibling = next((p for p in beside if p.is_file()), None)
            return Entry(kind, data.stem, sibling or data, "data-file", data)
        entry = self._entries.get((kind, name))
        if entry is None:
            raise ServebenchError(self.unknown_message(kind, name))
        return entry

    def families(self) -> dict[str, list[Entry]]:
        """Family (folder) -> its dataset configs, the default's short name first."""
        out: dict[str, list[Entry]] = {}
        for entry in self.entries():
            if entry.family is not None:
                out.setdefault(entry.family, []).append(entry)
        for members in out.values():
            members.sort(key=lambda e: (not e.short, e.alias, e.name))
        return out

    def family_of(self, text: str) -> list[Entry]:
        """The configs of the family whose folder or short name `text` names or starts with
        (`gsm8k`, `gsm8k_gen_8_shot` -> the gsm8k family; `math500` -> math)."""
        lowered = text.lower()
        best: list[Entry] = []
        best_len = 0
        for family, members in self.families().items():
            for key in {family, *(e.name for e in members if e.short)}:
                k = key.lower()
                if (lowered == k or lowered.startswith(k + "_") or k in lowered) and len(
                    k
                ) > best_len:
                    best, best_len = members, len(k)
        return best

    def unknown_message(self, kind: str, name: str) -> str:
        if kind == "dataset" and name in UNSUPPORTED:
            family = [e.name for e in self.family_of(name) if not e.alias]
            default = next((e for e in self.family_of(name) if e.short), None)
            msg = (
                f"AISBench's dataset config {name!r} is {UNSUPPORTED[name]}; pytest-servebench "
                f"sends generation requests only and does not support it."
            )
            if default is not None:
                msg += f" Its family's default here is {default.name!r}."
            if family:
                msg += f" The family's configs: {', '.join(family)}."
            return msg
        known = self.names(kind)
        close = near_matches(name, known)
        family = [e.name for e in self.family_of(name) if not e.alias] if kind == "dataset" else []
        msg = f"unknown {kind} config {name!r}."
        if close:
            msg += f" Did you mean: {', '.join(close)}?"
        if family:
            short = next((e.name for e in self.family_of(name) if e.short), None)
            msg += f" The {self.family_of(name)[0].family} family: {', '.join(family)}"
            msg += f" (default: {short})." if short else "."
        msg += (
            f" Run `pytest --sb-search` to list all {len(known)} {kind} configs; add your own "
            f"as YAML files under a suites/ folder (or --sb-suites DIR)."
        )
        return msg

    def raw(self, entry: Entry) -> dict[str, Any]:
        if entry.data is not None:
            sibling = self._load(entry.path) if entry.path != entry.data else None
            if sibling is not None and not isinstance(sibling, dict):
                raise ConfigError("expected a mapping of config fields", entry.path, 1)
            return data_file_config(entry.data, sibling)
        raw = self._load(entry.path)
        if not isinstance(raw, dict):
            raise ConfigError("expected a mapping of config fields at the top level", entry.path, 1)
        return copy.deepcopy(raw)


def parse_overrides(items: Iterable[str]) -> dict[str, list[tuple[list[str], Any]]]:
    """`NAME.FIELD.SUB=VALUE` -> {NAME: [([FIELD, SUB], value)]}."""
    out: dict[str, list[tuple[list[str], Any]]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        parts = target.strip().split(".")
        if not sep or len(parts) < 2 or not all(parts):
            raise ServebenchError(
                f"--sb-set {item!r}: expected NAME.FIELD=VALUE, for example "
                f"vllm_chat.generation_kwargs.temperature=0.7"
            )
        out.setdefault(parts[0], []).append((parts[1:], parse_scalar(value)))
    return out


def load_configs(
    index: SuiteIndex,
    model_names: Sequence[str],
    dataset_names: Sequence[str],
    overrides: dict[str, list[tuple[list[str], Any]]],
) -> tuple[list[ModelConfig], list[DatasetConfig]]:
    models = [_load_one(index, "model", n, ModelConfig, overrides) for n in model_names]
    datasets = [_load_one(index, "dataset", n, DatasetConfig, overrides) for n in dataset_names]
    used = {m.name for m in models} | {d.name for d in datasets}
    for target in overrides:
        if target not in used:
            close = near_matches(target, used)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ServebenchError(
                f"--sb-set names {target!r}, which is not a selected model or "
                f"dataset ({', '.join(sorted(used)) or 'none selected'}).{hint}"
            )
    for kind, configs in (("model", models), ("dataset", datasets)):
        abbrs = [c.abbr for c in configs]
        dupes = {a for a in abbrs if abbrs.count(a) > 1}
        if dupes and kind == "model":
            raise ServebenchError(
                f"two selected {kind} configs share the abbr {sorted(dupes)}: "
                f"give each its own `abbr`"
            )
    return models, datasets


def _load_one(
    index: SuiteIndex,
    kind: str,
    name: str,
    cls: type,
    overrides: dict[str, list[tuple[list[str], Any]]],
) -> Any:
    entry = index.find(kind, name)
    raw = index.raw(entry)
    if entry.data is not None:  # a data file: named by its stem (`--sb-set qa.FIELD=...`)
        name = entry.name
    for dotted, value in overrides.get(name, []):
        apply_override(raw, dotted, value, f"--sb-set {name}.{'.'.join(dotted)}={value}")
    return build(cls, name, str(entry.path), raw)


def _note(index: SuiteIndex, entry: Entry) -> str:
    if entry.short:
        return f"default of {entry.family}" if entry.family else "alias"
    if entry.alias:
        return f"= {entry.path.stem}"
    shorts = [
        e.name for e in index.entries() if e.short and e.path == entry.path and e.kind == entry.kind
    ]
    return f"default ({', '.join(shorts)})" if shorts else ""


def search_entries(index: SuiteIndex, pattern: str = "") -> list[Entry]:
    """Configs whose name holds `pattern`; a family's name or short name (`gsm8k`, `math500`)
    brings the whole family."""
    lowered = pattern.lower()
    family = {e.path for e in index.family_of(pattern)} if pattern else set()
    return [e for e in index.entries() if lowered in e.name.lower() or e.path in family]


def named_entries(index: SuiteIndex, models: Sequence[str], datasets: Sequence[str]) -> list[Entry]:
    """The configs a run with these --sb-models / --sb-datasets would load (AISBench's
    `--search` with --models/--datasets): an unknown name fails as the run would."""
    return [index.find("model", n) for n in models] + [index.find("dataset", n) for n in datasets]


def search_table(
    index: SuiteIndex,
    kinds: Sequence[str] = KINDS,
    pattern: str = "",
    entries: Sequence[Entry] | None = None,
) -> str:
    """kind | name | file | note, the note marking each family's default and the aliases."""
    chosen = search_entries(index, pattern) if entries is None else entries
    lowered = pattern.lower()
    rows = [
        (e.kind, e.name, str(e.path), _note(index, e))
        for e in chosen
        if e.kind in kinds and (entries is None or lowered in e.name.lower())
    ]
    header = ("kind", "name", "file", "note")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)
