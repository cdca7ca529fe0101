"""`pytest --sb-search [PATTERN]`: list the configs and exit."""

from __future__ import annotations

import pytest

from pytest_servebench.catalog.finder import SuiteIndex, named_entries, search_table, suite_folders
from pytest_servebench.errors import ServebenchError


def search(config: pytest.Config) -> int:
    """Print the configs matching --sb-search's pattern (called by entry.py); exit status 0."""
    pattern = config.getoption("sb_search")
    models = config.getoption("sb_models") or []
    datasets = config.getoption("sb_datasets") or []
    try:
        index = SuiteIndex(suite_folders(config.rootpath, config.getoption("sb_suites") or []))
        # With --sb-models/--sb-datasets: exactly the named configs (AISBench's --search).
        named = named_entries(index, models, datasets) if models or datasets else None
    except ServebenchError as exc:
        raise pytest.UsageError(str(exc)) from None
    print(search_table(index, pattern=pattern, entries=named))
    return 0
