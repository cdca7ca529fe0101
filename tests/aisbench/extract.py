"""Derive tests/aisbench/configs.json from AISBench's own dataset configs (run by hand).

    pip download --no-deps ais-bench-benchmark==3.1.20260630 -d /tmp/aisb && unzip the wheel
    python tests/aisbench/extract.py /tmp/aisb/ais_bench/benchmark/configs/datasets

Each config file is executed as AISBench's mmengine would read it, with every ais_bench /
mmengine name replaced by a stand-in that only remembers its name, and `from .x import y`
inside `with read_base():` resolved to the sibling config file. What the test needs of each
dataset entry (templates, retriever, postprocessor, stop words, test range) is written out
as plain JSON, so the comparison runs without AISBench installed.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import sys
import types
from pathlib import Path
from typing import Any

FAMILIES = ("gsm8k", "mmlu", "ceval", "aime2024", "aime2025", "math", "ARC_c", "demo", "humaneval")
OUT = Path(__file__).with_name("configs.json")
KEEP = 3


class Named:
    """A class or function of AISBench, known here by its name only."""

    def __init__(self, name: str):
        self.__name__ = name

    def __repr__(self) -> str:
        return self.__name__


class StubModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name == "read_base":
            return contextlib.nullcontext
        return Named(name)


def load(path: Path, cache: dict[Path, dict[str, Any]]) -> dict[str, Any]:
    if path in cache:
        return cache[path]

    def _import(name, globals=None, locals=None, fromlist=(), level=0):
        if level:
            target = path.parent
            for _ in range(level - 1):
                target = target.parent
            module = types.ModuleType(name)
            module.__dict__.update(
                load(target.joinpath(*name.split(".")).with_suffix(".py"), cache)
            )
            return module
        if name.split(".")[0] in ("ais_bench", "mmengine"):
            return StubModule(name)
        return builtins.__import__(name, globals, locals, fromlist, level)

    namespace: dict[str, Any] = {"__builtins__": {**vars(builtins), "__import__": _import}}
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)
    cache[path] = namespace
    return namespace


def plain(value: Any) -> Any:
    if isinstance(value, Named):
        return value.__name__
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def entry(ds: dict[str, Any]) -> dict[str, Any]:
    infer, evaluation, reader = ds["infer_cfg"], ds.get("eval_cfg", {}), ds.get("reader_cfg", {})
    post = evaluation.get("pred_postprocessor") or {}
    evaluator = evaluation.get("evaluator") or {}
    return {
        "abbr": ds.get("abbr"),
        "name": ds.get("name"),
        "reader": plain(reader),
        "prompt_template": plain(infer.get("prompt_template")),
        "ice_template": plain(infer.get("ice_template")),
        "retriever": plain(infer.get("retriever")),
        "inferencer": plain(infer.get("inferencer")),
        "evaluator": plain(evaluator.get("type")),
        "postprocessor": plain(post.get("type")),
        "postprocessor_args": plain({k: v for k, v in post.items() if k != "type"}),
    }


def main(root: Path) -> None:
    out: dict[str, Any] = {}
    cache: dict[Path, dict[str, Any]] = {}
    for family in FAMILIES:
        for path in sorted((root / family).glob("*.py")):
            namespace = load(path, cache)
            datasets = [v for k, v in namespace.items() if k.endswith("_datasets")]
            if not datasets:
                continue
            # Per-subject configs (57 MMLU, 52 C-Eval) differ only in the subject: the first
            # KEEP are kept whole, the rest by abbr.
            out[path.stem] = {
                "family": family,
                "file": f"{family}/{path.name}",
                "abbrs": [d.get("abbr") for d in datasets[0]],
                "datasets": [entry(d) for d in datasets[0][:KEEP]],
            }
    OUT.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(out)} configs -> {OUT}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
