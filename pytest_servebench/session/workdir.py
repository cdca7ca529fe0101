"""The run's work dir: opened (new, or reused with --sb-reuse) and locked by the controller,
its config snapshot written, and remembered in pytest's cache for `--lf` after an evaluation."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from pytest_servebench.errors import ServebenchError
from pytest_servebench.redaction import redactor
from pytest_servebench.session import options as opts
from pytest_servebench.session.tasks import Run
from pytest_servebench.store import WorkDir, WorkDirLock, new_timestamp, write_json


def work_base(config: pytest.Config, options: opts.Options) -> Path:
    """--sb-work-dir, relative to where pytest was started."""
    base = Path(options.work_dir).expanduser()
    return base if base.is_absolute() else config.invocation_params.dir / base


def open_work_dir(
    config: pytest.Config, options: opts.Options, base: Path
) -> tuple[WorkDir, str, WorkDirLock | None]:
    """(work dir, this session's timestamp, the controller's lock). xdist workers use the
    controller's; --collect-only (IDEs collect on every discovery) writes nothing."""
    if hasattr(config, "workerinput"):
        work = WorkDir(Path(config.workerinput["sb_work_dir"]))  # type: ignore[attr-defined]
        return work, config.workerinput["sb_stamp"], None  # type: ignore[attr-defined]
    if not (options.reuse or not config.option.collectonly):
        work = WorkDir(base / new_timestamp())
        return work, work.timestamp, None
    try:
        work = WorkDir.reuse(base, options.reuse) if options.reuse else WorkDir.create(base)
        # the controller writes; xdist workers share it
        lock = None if config.option.collectonly else work.lock()
    except OSError as exc:
        raise ServebenchError(
            f"cannot write the work dir under {base}: {exc.strerror or exc} "
            f"({exc.filename or base}); choose a writable folder with --sb-work-dir=DIR"
        ) from None
    return work, new_timestamp() if options.reuse else work.timestamp, lock


def write_snapshot(run: Run, options: opts.Options, stamp: str) -> None:
    """The run's configs as resolved (secrets scrubbed): configs/run_<stamp>.json."""
    data = {
        "options": asdict(options),
        "models": {m.name: asdict(m) for m in run.models},
        "datasets": {
            d.name: {**asdict(d), "version": run.datasets[d.name].version}
            for d in run.dataset_configs
        },
    }
    write_json(run.work.root / "configs" / f"run_{stamp}.json", redactor.scrub(data))


def remember(config: pytest.Config, options: opts.Options, run: Run, base: Path) -> None:
    """The run in pytest's cache: `pytest --lf` alone re-runs its failed cases."""
    if getattr(config, "cache", None) is None:
        return
    safe_overrides = [o for o in options.overrides if ".headers." not in o]
    config.cache.set(
        opts.CACHE_KEY,
        {
            "models": options.models,
            "datasets": options.datasets,
            "suites": [str(Path(s).resolve()) for s in options.suites],
            "overrides": [redactor(o) for o in safe_overrides],
            "work_base": str(base),
            "work_dir": str(run.work.root),
            "datasets_dir": str(run.datasets_dir),
            "limit": options.limit,
            "merge_subsets": options.merge_subsets,
        },
    )
