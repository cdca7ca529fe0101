"""Work-arounds for costs of pytest and Python that grow faster than the work a run does.

Each one leaves pytest's output as it was; it only changes how the same result is computed.
Registered by the plugin (as "servebench-perf") only when an evaluation runs, and kept apart
from the hooks so that each can be measured and removed on its own."""

from __future__ import annotations

import gc
from typing import Any

import pytest


def index_teardown_reports(terminalreporter: Any) -> bool:
    """pytest's failure summary looks up the teardown reports of each failed case by scanning
    every report of the session (`TerminalReporter._get_teardown_reports`, pytest #13360):
    O(failures x cases). With 3,000 wrong answers among 10,000 cases that scan took 70% of the
    run. Replace it, on this reporter only, by a lookup in an index of the same reports, in
    the same order, rebuilt whenever the list of reports changed. Returns whether it applied.
    """
    tr = terminalreporter
    if not callable(getattr(tr, "_get_teardown_reports", None)) or not callable(
        getattr(tr, "getreports", None)
    ):
        return False
    state: dict[str, Any] = {"key": None, "index": {}}

    def _get_teardown_reports(nodeid: str) -> list[Any]:
        source = tr.stats.get("", ())
        key = (id(source), len(source))
        if state["key"] != key:
            index: dict[str, list[Any]] = {}
            for report in tr.getreports(""):
                if report.when == "teardown":
                    index.setdefault(report.nodeid, []).append(report)
            state["key"], state["index"] = key, index
        return list(state["index"].get(nodeid, ()))

    tr._get_teardown_reports = _get_teardown_reports
    return True


class PerfPlugin:
    """Garbage collection: every full collection walks every object alive, and a run keeps
    ~35 objects per case (the items, pytest's reports, the verdicts), so the full collections
    Python triggers as a 10,000-case run grows took 10-15% of it. The objects made up to the
    end of collection (the items, the cases, pytest's and the plugins' state) live until the
    session ends: they are moved out of the collector's way (`gc.freeze`) for the run and put
    back before any pytest_unconfigure hook runs, so pytest's own final collections (and the
    unraisable-exception report they feed) see every object, as without this plugin.

    Made during the servebench plugin's pytest_configure; its cleanup puts the objects back
    even when the session ends before pytest_unconfigure."""

    def __init__(self, config: pytest.Config) -> None:
        self.frozen = False
        config.add_cleanup(self._thaw)

    def _thaw(self) -> None:
        if self.frozen:
            self.frozen = False
            gc.unfreeze()

    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            index_teardown_reports(tr)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        from .items import CaseItem

        if self.frozen or not any(isinstance(item, CaseItem) for item in session.items):
            return
        gc.collect()
        gc.freeze()
        self.frozen = True

    @pytest.hookimpl(tryfirst=True)
    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self._thaw()
