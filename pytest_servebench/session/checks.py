"""Start-up checks of the controller: mistakes said before any server starts or any request
is sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_servebench.errors import ServebenchError
from pytest_servebench.session.tasks import Run

# Options that take a path: written with a space, pytest may take the path as its rootdir.
PATH_FLAGS = ("--sb-datasets-dir", "--sb-suites", "--sb-work-dir", "--sb-gate", "--sb-baseline")


def check_rootdir(config: pytest.Config) -> None:
    """pytest picks its rootdir from bare path arguments before plugins load, so
    `--sb-datasets-dir /data` (with a space) makes /data the rootdir: say how to avoid it."""
    root = config.rootpath
    here = config.invocation_params.dir
    if root == here or root in here.parents:
        return
    for flag in PATH_FLAGS:
        args = list(config.invocation_params.args)
        for i, arg in enumerate(args[:-1]):
            if arg == flag and Path(here, args[i + 1]).resolve() in (root, *root.parents):
                config.issue_config_time_warning(
                    pytest.PytestConfigWarning(
                        f"pytest took {root} as its rootdir because `{flag} {args[i + 1]}` "
                        f"looks like a test path to it (it reads paths before plugins load); "
                        f"write `{flag}={args[i + 1]}` to keep the rootdir at {here}."
                    ),
                    stacklevel=2,
                )
                return


def check_data_files(run: Run) -> None:
    """A missing data file stops the run here, in the controller, with the dataset's own
    message. Under xdist the workers' collection error would be swallowed (0 items, exit
    0), and no server should start for a run that cannot read its data."""
    seen: set[str] = set()
    for task in run.tasks:
        dataset = task.dataset
        if dataset.config.name in seen:
            continue
        seen.add(dataset.config.name)
        try:
            missing = [path for path in dataset.data_paths if not path.is_file()]
        except ServebenchError as exc:
            raise pytest.UsageError(str(exc)) from None
        if missing:
            raise pytest.UsageError(dataset.missing_message(missing[0]))
