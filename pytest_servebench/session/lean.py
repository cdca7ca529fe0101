"""Work-arounds for costs of pytest that grow faster than the work a run does.

Each one leaves pytest's output as it was; it only changes how the same result is computed.
Kept apart from the hooks so that each can be measured and removed on its own."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from typing import Any

import pytest

# The lean run protocol reads pytest privates: only on the pytest versions it was checked
# against (CI runs the oldest and the newest); any other runs pytest's own protocol.
SUPPORTED_PYTEST = ((8, 0), (9, 3))  # [lowest, first unsupported)
try:
    from _pytest.outcomes import Exit
    from _pytest.runner import CallInfo, check_interactive_exception
except ImportError:  # pragma: no cover - a pytest that moved them: the fence below says so
    Exit = CallInfo = check_interactive_exception = None  # type: ignore[assignment,misc]

if sys.version_info >= (3, 11):
    from builtins import BaseExceptionGroup as _ExceptionGroup
else:  # pytest depends on the backport there
    from exceptiongroup import BaseExceptionGroup as _ExceptionGroup


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

    def _get_teardown_reports(nodeid: Any) -> list[Any]:
        # pytest 9.2+ passes a structured NodeId (compared with report.id), older ones the
        # string: both key the index by the string form.
        source = tr.stats.get("", ())
        key = (id(source), len(source))
        if state["key"] != key:
            index: dict[str, list[Any]] = {}
            for report in tr.getreports(""):
                if report.when == "teardown":
                    index.setdefault(str(report.nodeid), []).append(report)
            state["key"], state["index"] = key, index
        return list(state["index"].get(str(nodeid), ()))

    tr._get_teardown_reports = _get_teardown_reports
    return True


_NOTHING: tuple[Any, ...] = ()
GC_YOUNG_THRESHOLD = 20_000  # new objects between two collections of the youngest generation
# Outcomes that pytest's report-making handles specially (skips, all-skipped groups).
_NOT_PLAIN_FAILURES: tuple[type[BaseException], ...] = (pytest.skip.Exception, _ExceptionGroup)

# Plugins whose pytest_runtest_setup/call/teardown hooks do nothing a case needs: output and
# log capture (a case prints nothing; servebench's own log does not propagate), skip and xfail
# marks (cases with marks take pytest's own protocol), per-phase unraisable-exception and thread
# exception checks (reported at the next item or session end instead), and plugins that act only
# on tests using their fixtures. Any other plugin or conftest hooking a phase keeps pytest's own
# protocol for every case.
PHASE_HOOKS = ("pytest_runtest_setup", "pytest_runtest_call", "pytest_runtest_teardown")
KNOWN_PHASE_PLUGINS = frozenset(
    {
        "runner",
        "capturemanager",
        "logging-plugin",
        "skipping",
        "unraisableexception",
        "threadexception",
        "hypothesispytest",
        "benchmark",
        "asyncio",
        "pytest_asyncio.plugin",
        # Real plugins checked with tests/test_plugins.py: pytest-randomly reseeds the random
        # generators before each phase (a case draws no random number); pytest-rerunfailures'
        # teardown hook serves its own re-runs (which take pytest's protocol, see below);
        # pytest-timeout's call wrapper times the call phase only with func_only (a case's
        # call compares a verdict; the wait for the model is in setup, under its
        # protocol-wide timer, which still wraps the lean protocol).
        "randomly",
        "rerunfailures",
        "timeout",
        "nose",  # pytest < 8.2: acts on python test functions only
    }
)


# pytest_runtest_protocol wrappers that still wrap the lean protocol as they wrap pytest's.
KNOWN_PROTOCOL_WRAPPERS = frozenset(
    {"faulthandler", "unittest", "timeout", "assertion", "warnings", "logging-plugin"}
)
OWN_PROTOCOLS = frozenset({"runner", "servebench-protocol"})


def unknown_phase_plugins(config: pytest.Config) -> list[str]:
    """Names of the plugins that hook a run phase, or implement or wrap the run protocol, and
    are not known to be safe to skip. A plugin that runs the protocol itself (re-runs,
    repeats) gets pytest's own protocol: the lean one would take the case before it."""
    pm = config.pluginmanager
    names = set()
    for hook in PHASE_HOOKS:
        for impl in getattr(pm.hook, hook).get_hookimpls():
            name = pm.get_name(impl.plugin) or repr(impl.plugin)
            if name not in KNOWN_PHASE_PLUGINS:
                names.add(name)
    for impl in pm.hook.pytest_runtest_protocol.get_hookimpls():
        name = pm.get_name(impl.plugin) or repr(impl.plugin)
        wraps = impl.hookwrapper or getattr(impl, "wrapper", False)
        if name in OWN_PROTOCOLS or (wraps and name in KNOWN_PROTOCOL_WRAPPERS):
            continue
        names.add(name)
    return sorted(names)


def protocol_takers(config: pytest.Config, case: pytest.Item) -> list[str]:
    """Plugins that may run `case` themselves (pytest-rerunfailures with re-runs on, repeat,
    flakefinder, ...): non-wrapper implementers of pytest_runtest_protocol besides pytest's."""
    pm = config.pluginmanager
    names = []
    for impl in pm.hook.pytest_runtest_protocol.get_hookimpls():
        name = pm.get_name(impl.plugin) or repr(impl.plugin)
        if impl.hookwrapper or getattr(impl, "wrapper", False) or name in OWN_PROTOCOLS:
            continue
        if name == "rerunfailures" and _rerunfailures_idle(config, case):
            continue
        names.append(name)
    return names


def _rerunfailures_idle(config: pytest.Config, item: pytest.Item) -> bool:
    """Whether pytest-rerunfailures leaves an unmarked case to the next protocol (no global
    --reruns / --force-reruns / ini reruns): asked through its own function."""
    plugin = config.pluginmanager.get_plugin("rerunfailures")
    count = getattr(plugin, "get_reruns_count", None)
    if not callable(count):
        return False
    try:
        return count(item) is None
    except Exception:
        return False


def private_api_missing(session: pytest.Session | None = None) -> str | None:
    """What the lean protocol needs from pytest and this pytest lacks; None when all is there."""
    version = tuple(int(p) for p in pytest.__version__.split(".")[:2] if p.isdigit())
    low, high = SUPPORTED_PYTEST
    if not low <= version < high:
        return (
            f"pytest {pytest.__version__} is outside the range servebench's lean run protocol "
            f"supports ({'.'.join(map(str, low))} to below {'.'.join(map(str, high))})"
        )
    if CallInfo is None or check_interactive_exception is None or Exit is None:
        return "pytest's _pytest.runner no longer has CallInfo/check_interactive_exception"
    if session is not None:
        state = getattr(session, "_setupstate", None)
        if not (
            callable(getattr(state, "setup", None))
            and callable(getattr(state, "teardown_exact", None))
        ):
            return "pytest's Session._setupstate (setup, teardown_exact) is missing"
    return None


class CaseProtocol:
    """pytest's run protocol for a case, without the per-phase hooks.

    pytest runs every item as setup, call and teardown, each through a hook that capture,
    logging and other plugins wrap: ~150 us an item on this project's 2-core machine, a quarter
    of a 10,000-case run against a fast server. A case needs none of those wrappers, so this
    protocol calls the item's setup, runtest and teardown directly (through pytest's SetupState,
    as pytest does) and keeps every hook that reporting depends on: logstart, makereport,
    logreport, exception_interact and logfinish, in pytest's order. pytest-html, junitxml,
    --lf, -x and xdist see the same reports.

    A case takes pytest's own protocol when it carries a mark (skip, xfail, ...), under --pdb,
    --trace, --setup-only/--setup-show, or when a plugin outside KNOWN_PHASE_PLUGINS hooks a
    phase."""

    def __init__(self, config: pytest.Config, is_case: Callable[[pytest.Item], bool]) -> None:
        self.is_case = is_case
        self.config = config
        self.blocked_by: list[str] | None = None  # known once collection registered conftests
        self.enabled = not any(
            getattr(config.option, name, False)
            for name in ("usepdb", "trace", "setuponly", "setupshow")
        )
        self.reraise: tuple[type[BaseException], ...] = (Exit, KeyboardInterrupt)
        self._hooks: dict[Any, Any] = {}  # collector -> its hook proxy (one per conftest scope)
        self._keywords: tuple[Any, dict[str, int]] = (None, {})  # the last case's keywords
        self._plain: dict[Any, bool] = {}  # task collector -> no marks but servebench's

    def applies(self, item: pytest.Item) -> bool:
        if self.blocked_by is None:
            if not self.is_case(item):
                return False
            blocked = unknown_phase_plugins(self.config)
            if "rerunfailures" in blocked and _rerunfailures_idle(self.config, item):
                blocked.remove("rerunfailures")
            self.blocked_by = blocked
            self.enabled = self.enabled and not self.blocked_by
        return (
            self.enabled
            and self.is_case(item)
            and not item.own_markers
            and self._unmarked(item.parent)
        )

    def _unmarked(self, parent: Any) -> bool:
        """Whether the task (and what holds it) has no mark but servebench's own."""
        plain = self._plain.get(parent)
        if plain is None:
            plain = self._plain[parent] = all(
                mark.name == "servebench"
                for node in parent.listchain()
                for mark in node.own_markers
            )
        return plain

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Any:
        if not self.applies(item):
            return None
        parent = item.parent
        ihook = self._hooks.get(parent)
        if ihook is None:
            ihook = self._hooks[parent] = item.ihook
        location = item.location
        ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=location)
        setup_state = item.session._setupstate
        report = self._phase(item, ihook, "setup", lambda: setup_state.setup(item))
        if report.passed:
            self._phase(item, ihook, "call", item.runtest)
        if item.session.shouldfail or item.session.shouldstop:
            nextitem = None  # as pytest: tear everything down before the session stops
        self._phase(item, ihook, "teardown", lambda: setup_state.teardown_exact(nextitem))
        # junitxml read the properties from the teardown report; nothing adds to either list
        # once the case has run, and the item lives to the session's end.
        item.user_properties = _NOTHING  # type: ignore[assignment]
        item._report_sections = _NOTHING  # type: ignore[assignment]
        # What plugins stashed for this run of the case (tmp_path's per-phase outcomes) is read
        # during its teardown at the latest; the item itself lives to the session's end.
        storage = getattr(item.stash, "_storage", None)
        if isinstance(storage, dict):
            storage.clear()
        # The item's own keywords (its name, for -k) were read by selection and by its
        # reports; a NodeKeywords and its dict per case (~270 bytes, 13 MB at 50,000 cases)
        # would otherwise stay to the session's end. The task's keywords stand in, and its
        # empty list of marks (the lean path runs unmarked cases only) becomes a shared tuple.
        item.keywords = parent.keywords
        item.own_markers = _NOTHING  # type: ignore[assignment]
        ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=location)
        return True

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> pytest.TestReport | None:
        """A phase's report, as TestReport.from_item_and_call makes it for a phase that passed
        or failed, sharing what it can: one keywords dict for the three reports of a case
        (pytest builds one each by walking the item's and every parent's keywords) and, on
        pytest 9.2+, the item's structured node id (a report given the string parses its own).
        Skips, exception groups and captured output take pytest's own path."""
        excinfo = call.excinfo
        if (
            (excinfo is not None and isinstance(excinfo.value, _NOT_PLAIN_FAILURES))
            or item._report_sections
            or not self.applies(item)
        ):
            return None
        cached_item, keywords = self._keywords
        if cached_item is not item:
            keywords = {name: 1 for name in item.keywords}
            self._keywords = (item, keywords)
        if excinfo is None:
            outcome, longrepr = "passed", None
        elif call.when == "call":
            outcome, longrepr = "failed", item.repr_failure(excinfo)
        else:
            style = item.config.getoption("tbstyle", "auto")
            outcome, longrepr = "failed", item._repr_failure_py(excinfo, style=style)
        node_id = getattr(item, "_id", None)  # a slot on pytest 9.2+ nodes
        return pytest.TestReport(
            nodeid=item.nodeid if node_id is None or isinstance(node_id, str) else node_id,
            location=item.location,
            keywords=keywords,
            outcome=outcome,
            longrepr=longrepr,
            when=call.when,
            sections=[],
            duration=call.duration,
            start=call.start,
            stop=call.stop,
            user_properties=item.user_properties,
        )

    def _phase(
        self, item: pytest.Item, ihook: Any, when: Any, run: Callable[[], None]
    ) -> pytest.TestReport:
        call = CallInfo.from_call(run, when=when, reraise=self.reraise)
        report: pytest.TestReport = ihook.pytest_runtest_makereport(item=item, call=call)
        ihook.pytest_runtest_logreport(report=report)
        if check_interactive_exception(call, report):
            ihook.pytest_exception_interact(node=item, call=call, report=report)
        return report


def is_process_command_line(config: pytest.Config) -> bool:
    """Whether this config is the process's own `pytest ...` command, which ends the process
    when it returns (not pytest.main() from a script, a pytester run or an xdist worker)."""
    return tuple(config.invocation_params.args) == tuple(sys.argv[1:])


def keep_at_exit(*objects: object) -> None:
    """Leave `objects` (and what they hold) for the OS to reclaim when the process exits.

    At exit the interpreter runs a last full garbage collection over every object and then
    frees them one by one: ~0.5 s after a 10,000-case run, spent after the last line is
    printed. A reference that is never dropped skips the freeing; moving every object out of
    the collector's sight (gc.freeze) skips the collection."""
    import ctypes

    for obj in objects:
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))
    gc.freeze()


class _ZeroUnlessCounted(dict):  # type: ignore[type-arg]
    """defaultdict(int) that does not store the zero it returns for a missing key."""

    def __missing__(self, key: Any) -> int:
        return 0


def count_without_inserting(config: pytest.Config) -> bool:
    """pytest's subtests plugin (9.x) reads a defaultdict(int) of failed subtests per node
    id for every report: each read stores a 0, a dict entry per case (2.5 MB at 50,000
    cases). The same counts, kept only for nodes that failed a subtest."""
    try:
        from _pytest.subtests import failed_subtests_key  # type: ignore[import-not-found]
    except ImportError:
        return False
    counts = config.stash.get(failed_subtests_key, None)
    if not isinstance(counts, dict) or isinstance(counts, _ZeroUnlessCounted):
        return False
    config.stash[failed_subtests_key] = _ZeroUnlessCounted(counts)
    return True


class PerfPlugin:
    """Registered by the servebench plugin (as "servebench-perf") when an evaluation runs."""

    def __init__(self, is_case: Callable[[pytest.Item], bool], prefix: str) -> None:
        self.is_case = is_case
        self.prefix = prefix  # node ids of cases start with it
        self.protocol: CaseProtocol | None = None
        self.reporter: Any = None
        self.session: pytest.Session | None = None
        self._gc_threshold: tuple[int, ...] | None = None  # Python's, while raised
        self._keywords: dict[str, dict[str, int]] = {}  # task node id -> shared report keywords
        # Reports logged per case until it finishes. Under xdist the controller logs the
        # reports of every worker's cases interleaved (A setup, B setup, A call, A teardown,
        # A finish, B call, ...): one case's finish must not trim the reports of another case
        # whose row pytest-html has yet to build.
        self._logged: dict[str, list[pytest.TestReport]] = {}

    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        config = session.config
        tr = config.pluginmanager.get_plugin("terminalreporter")
        self.session = session
        self.reporter = tr
        missing = private_api_missing(session)
        if missing is not None:
            # One warning, then pytest's own protocol and reports, untouched.
            config.issue_config_time_warning(
                pytest.PytestConfigWarning(
                    f"servebench: {missing}; cases run with pytest's own run protocol "
                    "(correct, slower on large datasets)"
                ),
                stacklevel=2,
            )
            return
        if tr is not None:
            index_teardown_reports(tr)
        self.protocol = CaseProtocol(config, self.is_case)
        config.pluginmanager.register(self.protocol, "servebench-protocol")

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """Garbage collection: a run makes ~40 objects per case that live until the session
        ends (reports, verdicts) and many short-lived ones (requests, replies), so with
        Python's default threshold of 700 new objects the collector ran ~470 times and walked
        the live objects ~40 times in a 10,000-case run (0.3-0.4 s). A young generation of
        20,000 objects makes that ~15 collections (0.1 s). Restored when the session ends."""
        if self._gc_threshold is None and any(self.is_case(i) for i in session.items):
            self._gc_threshold = gc.get_threshold()
            first, *older = self._gc_threshold
            gc.set_threshold(max(first, GC_YOUNG_THRESHOLD), *older)
            session.config.add_cleanup(self._restore_gc)
            count_without_inserting(session.config)

    def _restore_gc(self) -> None:
        if self._gc_threshold is not None:
            gc.set_threshold(*self._gc_threshold)
            self._gc_threshold = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        nodeid = str(report.nodeid)
        if nodeid.startswith(self.prefix):
            self._logged.setdefault(nodeid, []).append(report)

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        """Every plugin has seen every report of the case (pytest-html builds its rows when the
        teardown report is logged, from all of them): keep only what the terminal's summary
        reads.

        The terminal keeps every report to the end of the session, so whatever a report holds
        grows with the dataset. The servebench payload (the verdict, read by the controller and
        the html report) goes. The report of a passed setup or teardown without captured output
        is only ever counted in the uncounted "" category (and searched for teardown sections
        it does not have): it is not kept. The JUnit properties of a case, copied into each of
        its reports, go too. Nothing changes before the case is finished, so a plugin sees the
        same reports at every phase as with pytest's own protocol (only this case's reports:
        under xdist another worker's case may be half-logged)."""
        logged = self._logged.pop(str(nodeid), ())
        tr = self.reporter
        kept = tr.stats.get("") if tr is not None else None
        for report in logged:
            self._trim(report)
            if report.when == "call" or not report.passed or report.sections or not kept:
                continue
            # the report is among the last few of the "" category (setup and teardown)
            for i in range(len(kept) - 1, max(len(kept) - 8, -1), -1):
                if kept[i] is report:
                    del kept[i]
                    break

    def _trim(self, report: pytest.TestReport) -> None:
        report.__dict__.pop("servebench", None)
        if not report.__dict__.get("extras", True):
            del report.extras  # pytest-html gives every report an empty list; it has read it
        # Read by junitxml in its logreport hook; from now on one shared empty tuple.
        report.user_properties = _NOTHING  # type: ignore[assignment]
        if not report.sections:
            report.sections = _NOTHING  # type: ignore[assignment]
        # The keywords of a case's report (its name, its task's and the servebench mark) are
        # read when the report is logged; a kept report shares its task's (without the name).
        task, _, name = report.nodeid.rpartition("::")
        shared = self._keywords.get(task)
        if shared is None:
            shared = self._keywords[task] = {k: v for k, v in report.keywords.items() if k != name}
        report.keywords = shared

    @pytest.hookimpl(trylast=True)
    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self._restore_gc()
        if self.session is not None and is_process_command_line(config):
            keep_at_exit(config, self.session)
