"""Command-line and ini options, resolved into one Options value."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

import pytest

from pytest_servebench.errors import ServebenchError


@dataclass
class Options:
    """What servebench was asked to do in this session (command line, ini, or the last run)."""

    models: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    suites: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    work_dir: str = "outputs/default"
    datasets_dir: str = "datasets"
    limit: int | None = None
    mode: str = "all"
    reuse: str | None = None
    resend: bool = False
    merge_subsets: bool = False
    engine: str = "process"  # or "thread": see make_engine
    from_ini: bool = False  # models and datasets set in the ini file, not on the command line


MODES = ("all", "infer", "eval")
CACHE_KEY = "servebench/last_run"


def addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("servebench", "servebench: evaluate served language models")
    group.addoption(
        "--sb-models",
        nargs="+",
        metavar="NAME",
        default=None,
        help="model configs to evaluate, by name (see --sb-search)",
    )
    group.addoption(
        "--sb-datasets",
        nargs="+",
        metavar="NAME",
        default=None,
        help="dataset configs to evaluate, by name, or a path to a config YAML",
    )
    group.addoption(
        "--sb-suites",
        action="append",
        metavar="DIR",
        default=None,
        help="extra folder of model/dataset configs (repeatable); searched before "
        "./suites and the built-ins",
    )
    group.addoption(
        "--sb-set",
        action="append",
        metavar="NAME.FIELD=VALUE",
        default=None,
        help="override a config field, nested with dots, value parsed as YAML "
        "(repeatable), e.g. vllm_chat.generation_kwargs.temperature=0.7",
    )
    group.addoption(
        "--sb-search",
        nargs="?",
        const="",
        default=None,
        metavar="PATTERN",
        help="list the configs (kind, name, file) matching PATTERN and exit; with "
        "--sb-models/--sb-datasets, exactly those (a family's short name lists the family)",
    )
    group.addoption(
        "--sb-work-dir",
        metavar="DIR",
        default=None,
        help="where runs are written; each run makes DIR/<YYYYmmdd_HHMMSS>/ "
        "(default outputs/default)",
    )
    group.addoption(
        "--sb-datasets-dir",
        metavar="DIR",
        default=None,
        help="folder holding the data files (default $SERVEBENCH_DATASETS or ./datasets)",
    )
    group.addoption(
        "--sb-limit",
        type=int,
        metavar="N",
        default=None,
        help="only the first N cases of each dataset",
    )
    group.addoption(
        "--sb-mode",
        choices=MODES,
        default=None,
        help="all: ask and score (default); infer: only collect predictions; "
        "eval: score saved predictions, send nothing",
    )
    group.addoption(
        "--sb-allow-unsandboxed-code",
        action="store_true",
        default=False,
        help="run model-written code (HumanEval...) even when no sandbox (bubblewrap) is "
        "usable: the programs can then reach the network and read your files",
    )
    group.addoption(
        "--sb-code-workers",
        type=int,
        metavar="N",
        default=None,
        help="programs of code datasets run at once in each pytest process (default: the "
        "CPUs, divided between xdist workers); sandbox start-up waits on the kernel, so up to "
        "twice the CPUs can be faster",
    )
    group.addoption(
        "--sb-reuse",
        nargs="?",
        const="latest",
        default=None,
        metavar="TS",
        help="continue the run TS (or the latest) in its work dir: reuse every "
        "saved successful prediction, send only the rest",
    )
    group.addoption(
        "--sb-resend",
        action="store_true",
        default=False,
        help="send every selected request again even when a saved prediction "
        "exists (with --lf: re-ask the model for wrong answers too)",
    )
    group.addoption(
        "--sb-progress",
        type=float,
        default=None,
        metavar="SECONDS",
        help="live request progress every SECONDS: on a terminal one line per active "
        "task kept in place (default 1), otherwise plain lines (default 10); 0 turns it off",
    )
    group.addoption(
        "--sb-debug",
        action="store_true",
        default=False,
        help="show the run's logs (pytest's, the engine's, each launched server's) on the "
        "terminal as they are written",
    )
    group.addoption(
        "--sb-engine",
        choices=("process", "thread"),
        default=None,
        help="where requests are sent from: a process of their own (default; pytest and "
        "the engine each get a core) or a thread of pytest's (one process)",
    )
    group.addoption(
        "--sb-merge-ds",
        action="store_true",
        default=False,
        help="run datasets with sub-datasets (mmlu, ceval) as one merged task "
        "instead of one task per subject",
    )
    group.addoption(
        "--sb-gate",
        action="append",
        metavar="FILE",
        default=None,
        help="CI gate (YAML with kind: gate; repeatable): thresholds per dataset "
        "and metric; with gates the exit status follows them and request "
        "errors, not single wrong answers. kind: gate files in ./suites "
        "apply too",
    )
    group.addoption(
        "--sb-baseline",
        metavar="FILE",
        default=None,
        help="summary_*.json of an earlier run (or its run folder): the gates' "
        "max_drop compares with it",
    )
    group.addoption(
        "--sb-no-gates",
        action="store_true",
        default=False,
        help="ignore every gate (also those in ./suites): pytest's own exit status stands",
    )
    for name, kind, help_text in (
        ("sb_models", "args", "model configs to evaluate"),
        ("sb_gate", "linelist", "CI gate files (kind: gate), one per line"),
        ("sb_datasets", "args", "dataset configs to evaluate"),
        ("sb_suites", "args", "extra config folders"),
        ("sb_set", "linelist", "config overrides NAME.FIELD=VALUE, one per line"),
        ("sb_work_dir", "string", "work dir (default outputs/default)"),
        ("sb_datasets_dir", "string", "datasets dir (default ./datasets)"),
        ("sb_limit", "string", "only the first N cases of each dataset"),
        ("sb_mode", "string", "all, infer or eval"),
    ):
        parser.addini(name, help_text, type=kind, default=None)


def _ini(config: pytest.Config, name: str) -> Any:
    try:
        value = config.getini(name)
    except ValueError:
        return None
    return value or None


def _explicit_args(config: pytest.Config) -> bool:
    """Whether test paths were named on the command line (not testpaths, not the folder)."""
    return config.args_source == pytest.Config.ArgsSource.ARGS


def _requested(config: pytest.Config) -> tuple[Any, Any, dict[str, Any], bool] | None:
    """(models, datasets, the remembered run, whether from the ini file), or None when this
    session evaluates nothing.

    The command line decides: `--sb-models`/`--sb-datasets` evaluate (alone, or with the test
    paths named beside them). Settings in the ini file add the evaluation to a plain `pytest`
    run, next to the project's own tests; naming test paths (`pytest tests/test_x.py`, as IDEs
    do) runs those only."""
    get = config.getoption
    models, datasets = get("sb_models"), get("sb_datasets")
    from_ini = not models and not datasets
    if from_ini:
        models, datasets = _ini(config, "sb_models"), _ini(config, "sb_datasets")
        if (models or datasets) and _explicit_args(config):
            return None
    retest = bool(get("lf") or get("failedfirst")) if _has(config, "lf") else False
    remembered: dict[str, Any] = {}
    if retest and getattr(config, "cache", None) is not None:
        remembered = config.cache.get(CACHE_KEY, {}) or {}
    if not models and not datasets:
        if not remembered:
            return None
        models, datasets = remembered.get("models"), remembered.get("datasets")
        from_ini = False
    return models, datasets, remembered, from_ini


def wanted(config: pytest.Config) -> bool:
    """Whether this session has an evaluation (cheap: no config is read)."""
    return _requested(config) is not None


def resolve(config: pytest.Config) -> Options | None:
    """Options from the command line, else the ini file, else the last run (for --lf/--ff).
    None when servebench has nothing to do in this session."""
    get = config.getoption
    requested = _requested(config)
    if requested is None:
        return None
    models, datasets, remembered, from_ini = requested
    continuing = bool(remembered) and (
        list(models or []) == list(remembered.get("models") or [])
        and list(datasets or []) == list(remembered.get("datasets") or [])
    )
    if not models or not datasets:
        missing = "--sb-datasets" if models else "--sb-models"
        raise ServebenchError(
            f"servebench needs both --sb-models and --sb-datasets; {missing} "
            f"is missing (see `pytest --sb-search` for the names)"
        )
    limit_raw = get("sb_limit") if get("sb_limit") is not None else _ini(config, "sb_limit")
    if limit_raw is None and remembered:
        limit_raw = remembered.get("limit")
    try:
        limit = int(limit_raw) if limit_raw is not None else None
    except ValueError:
        raise ServebenchError(f"sb_limit must be a whole number, got {limit_raw!r}") from None
    if limit is not None and limit < 1:
        raise ServebenchError("--sb-limit must be at least 1")
    mode = get("sb_mode") or _ini(config, "sb_mode") or "all"
    if mode not in MODES:
        raise ServebenchError(f"sb_mode must be one of {', '.join(MODES)}, got {mode!r}")
    # --lf/--ff continue the remembered run: overrides given now add to (and, for the same
    # field, win over) the remembered ones instead of replacing them all.
    overrides = list(remembered.get("overrides") or []) if continuing else []
    overrides = _last_per_field([*overrides, *(get("sb_set") or _ini(config, "sb_set") or [])])
    suites = list(get("sb_suites") or _ini(config, "sb_suites") or remembered.get("suites") or [])
    work_dir = (
        get("sb_work_dir")
        or _ini(config, "sb_work_dir")
        or remembered.get("work_base")
        or "outputs/default"
    )
    datasets_dir = (
        get("sb_datasets_dir")
        or _ini(config, "sb_datasets_dir")
        or os.environ.get("SERVEBENCH_DATASETS")
        or remembered.get("datasets_dir")
        or "datasets"
    )
    reuse = get("sb_reuse")
    if reuse is None and remembered.get("work_dir"):  # remembered: --lf/--ff only
        reuse = remembered["work_dir"]
    if reuse is None and mode == "eval":
        reuse = "latest"
    return Options(
        models=list(models),
        datasets=list(datasets),
        suites=suites,
        overrides=overrides,
        work_dir=str(work_dir),
        datasets_dir=str(datasets_dir),
        limit=limit,
        mode=mode,
        reuse=reuse,
        resend=bool(get("sb_resend")),
        merge_subsets=bool(get("sb_merge_ds") or remembered.get("merge_subsets")),
        engine=get("sb_engine") or ("thread" if sys.platform == "win32" else "process"),
        from_ini=from_ini,
    )


def _last_per_field(overrides: list[str]) -> list[str]:
    """One override per NAME.FIELD, the last given, in the order they were last given."""
    last: dict[str, str] = {}
    for item in overrides:
        key = item.partition("=")[0].strip()
        last.pop(key, None)
        last[key] = item
    return list(last.values())


def _has(config: pytest.Config, name: str) -> bool:
    try:
        config.getoption(name)
        return True
    except ValueError:
        return False
