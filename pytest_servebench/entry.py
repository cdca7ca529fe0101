"""The module pytest loads at start-up (the pytest11 entry point): options and nothing else.

Most pytest runs evaluate nothing, and pytest imports (and, where bytecode is not written,
assertion-rewrites) every module a plugin imports. So this module imports only pytest and
options.py, and registers the hooks that run an evaluation (plugin.py, with the engine, the
datasets, numpy, httpx, yaml) only when a session has one: `--sb-models`/`--sb-datasets`, their
ini settings, or `--lf`/`--ff` after an evaluation."""

from __future__ import annotations

import pytest

from pytest_servebench.session import options as opts

PLUGIN_NAME = "servebench-hooks"


def pytest_addoption(parser: pytest.Parser) -> None:
    opts.addoption(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    if config.getoption("sb_search") is None:
        return None
    from pytest_servebench.session.search import search

    return search(config)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "servebench: a case of a servebench evaluation task")
    if not opts.wanted(config):
        return
    from pytest_servebench.session import plugin

    # pytest_configure is historic: the module's own configure runs as it is registered.
    config.pluginmanager.register(plugin, PLUGIN_NAME)
