"""The pytest hooks, and nothing else: each hook hands its work to the module whose job it is
(work dir, logs, display, servers, checks, re-scoring, the session's outcome, the reports)."""

from __future__ import annotations

import logging
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from pytest_servebench.catalog.datasets import Case
from pytest_servebench.catalog.finder import (
    SuiteIndex,
    load_configs,
    parse_overrides,
    suite_folders,
)
from pytest_servebench.engine.jobs import RunAborted
from pytest_servebench.errors import ServebenchError
from pytest_servebench.launch.launcher import Launcher, apply_urls
from pytest_servebench.redaction import redactor
from pytest_servebench.report import terminal
from pytest_servebench.report.compare import baseline_path
from pytest_servebench.report.gates import apply_gates, setup_gates
from pytest_servebench.report.html_report import HtmlReport, register_html
from pytest_servebench.report.outcome import SessionOutcome
from pytest_servebench.scoring.aggregate import TaskResult
from pytest_servebench.scoring.verdict import Verdict
from pytest_servebench.session import checks, code_execution, signals
from pytest_servebench.session import lean as perf
from pytest_servebench.session import options as opts
from pytest_servebench.session import outcome as ending
from pytest_servebench.session.display import Display
from pytest_servebench.session.items import NODE_PREFIX, CaseItem, TaskCollector
from pytest_servebench.session.logs import setup_logging, teardown_logging
from pytest_servebench.session.rescore import judge_saved
from pytest_servebench.session.servers import crash_reason, start_servers
from pytest_servebench.session.tasks import Run
from pytest_servebench.session.workdir import (
    open_work_dir,
    remember,
    work_base,
    write_snapshot,
)
from pytest_servebench.store import WorkDirLock

log = logging.getLogger("servebench")


def pytest_configure(config: pytest.Config) -> None:
    """Registered by entry.py only when the session has an evaluation (options.wanted)."""
    plugin = None
    try:
        options = opts.resolve(config)
        if options is None:
            return
        plugin = ServebenchPlugin(config, options)
        if not is_worker(config):
            # gate files and baseline are checked before any request
            configs = plugin.run.dataset_configs
            setup_gates(
                config, options.suites, {d.name for d in configs} | {d.abbr for d in configs}
            )
            plugin.baseline = baseline_path(config)
    except ServebenchError as exc:
        if plugin is not None:
            plugin.release()
        raise pytest.UsageError(str(exc)) from None
    config.pluginmanager.register(plugin, "servebench-run")
    plugin.previous_sigterm = signals.install_sigterm()
    config.pluginmanager.register(
        perf.PerfPlugin(lambda item: isinstance(item, CaseItem), NODE_PREFIX + "/"),
        "servebench-perf",
    )
    if not is_worker(config):
        # only when pytest-html is installed and --html is given
        plugin.html = register_html(config, plugin.outcome, NODE_PREFIX)


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


class ServebenchPlugin:
    def __init__(self, config: pytest.Config, options: opts.Options):
        self.config = config
        self.options = options
        index = SuiteIndex(suite_folders(config.rootpath, options.suites))
        models, datasets = load_configs(
            index, options.models, options.datasets, parse_overrides(options.overrides)
        )
        base = work_base(config, options)
        self.lock: WorkDirLock | None = None
        self.previous_sigterm: Any = None
        work, self.stamp, self.lock = open_work_dir(config, options, base)
        datasets_dir = Path(options.datasets_dir).expanduser()
        if not datasets_dir.is_absolute():
            datasets_dir = config.invocation_params.dir / datasets_dir
        if is_worker(config):
            # servers were started by the controller: use the URLs it handed over
            apply_urls(models, config.workerinput.get("sb_launched", {}))  # type: ignore[attr-defined]
        try:
            self.run = Run(options, models, datasets, work, datasets_dir.resolve())
            code_execution.configure(self.run, config, self.stamp)
            self._start(base)
        except BaseException:
            self.release()
            raise

    def _start(self, base: Path) -> None:
        config, run = self.config, self.run
        worker = getattr(config, "workerinput", {}).get("workerid")
        self.launched: dict[str, str] = {}
        self.results: dict[str, TaskResult] = {}
        # Reports carry prompts and outputs only when a report will show them (pytest-html).
        self.rich_reports = bool(getattr(config.option, "htmlpath", None))
        self.interrupted = False  # by the user: Ctrl-C or SIGTERM
        self.terminated = False  # by SIGTERM
        self.abort_message: str | None = None  # from this process or a worker's report
        self.finish_error: str | None = None
        self.code_isolation: str | None = None  # how model-written programs run
        self.code_line: str | None = None  # the terminal's line about them, at the end
        self.baseline: Path | None = None  # --sb-baseline's summary, compared at the end
        self.html: HtmlReport | None = None
        self.outcome: SessionOutcome = ending.empty_outcome(run, self.options, self.stamp)
        self.wrong = terminal.WrongAnswers()
        try:
            self._log_handler = setup_logging(
                run.work.root / "logs", worker, write=not config.option.collectonly
            )
            if not is_worker(config) and not config.option.collectonly:
                write_snapshot(run, self.options, self.stamp)
        except OSError as exc:
            raise ServebenchError(
                f"cannot write in the work dir {run.work.root}: {exc.strerror or exc}; choose a "
                f"writable folder with --sb-work-dir=DIR"
            ) from None
        self.display = Display(config, run, worker)
        self.launcher = Launcher(run.work.root / "logs", echo=self.display.echo)
        if not is_worker(config):
            checks.check_rootdir(config)
            if not config.option.collectonly:
                remember(config, self.options, run, base)
        self._warm_up_engine()

    def release(self) -> None:
        """Give up the work dir's lock (at the end, or when the start failed)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _warm_up_engine(self) -> None:
        """Start the engine process now, so that its start-up overlaps pytest's, in each
        process that will send (not an xdist controller, not --collect-only or --sb-mode
        eval). xdist's own configure, which registers the controller, runs after this one."""
        distributing = getattr(self.config.option, "dist", "no") != "no"
        if (
            self.options.mode == "eval"
            or self.config.option.collectonly
            or (distributing and not is_worker(self.config))
        ):
            return
        self.run.engine.warm_up()

    # -- start -----------------------------------------------------------------------------
    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        """The work dir at the start of the run, where its logs already are."""
        return [f"servebench work dir: {self.run.work.root}"]

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if is_worker(self.config):
            return
        checks.check_data_files(self.run)
        self.code_isolation = code_execution.check_isolation(
            self.run, self.config, self.options.mode
        )
        # Managed servers start once, in the controller, before xdist starts its workers
        # (its sessionstart is trylast) so they get the URLs.
        if not self.config.option.collectonly and self.options.mode != "eval":
            try:
                self.launched = start_servers(self.launcher, self.run, self.display.echo)
            except ServebenchError as exc:
                raise pytest.UsageError(str(exc)) from None
        self.display.start()

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.launcher.stop_all()
        self.launcher.restore_signal_handlers()
        signals.restore_sigterm(self.previous_sigterm)
        self.previous_sigterm = None
        teardown_logging(self._log_handler)  # a worker's sessionfinish leaves it open
        self.release()

    # -- xdist -----------------------------------------------------------------------------
    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["sb_work_dir"] = str(self.run.work.root)
        node.workerinput["sb_stamp"] = self.stamp
        node.workerinput["sb_launched"] = self.launched

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        """A task never splits across workers: its cases share one endpoint's concurrency and
        one prediction file. xdist's scope scheduling keys on the node id before the last
        '::', which is exactly the task; node ids stay unchanged, so --lf keeps working."""
        if config.getoption("dist") != "load":
            return None
        from xdist.scheduler import LoadScopeScheduling

        return LoadScopeScheduling(config, log)

    # -- collection ------------------------------------------------------------------------
    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(
        self, collector: pytest.Collector
    ) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
        report = yield
        if isinstance(collector, pytest.Session) and report.passed:
            tasks = []
            for task in self.run.tasks:
                name = f"{NODE_PREFIX}/{task.key}"
                tasks.append(
                    TaskCollector.from_parent(
                        collector,
                        name=name,
                        nodeid=name,
                        task=task,
                        state=self.run.states[task.key],
                    )
                )
            explicit = self.config.args_source == pytest.Config.ArgsSource.ARGS
            # `pytest --sb-models M --sb-datasets D` runs the evaluation only; name test paths
            # explicitly to run them too. An evaluation set in the ini file runs beside the
            # project's own tests (options._requested).
            both = explicit or self.options.from_ini
            report.result = [*report.result, *tasks] if both else tasks
        return report

    def pytest_collectstart(self, collector: pytest.Collector) -> None:
        if isinstance(collector, TaskCollector):
            try:
                _ = collector.task.cases
            except ServebenchError as exc:
                raise pytest.UsageError(str(exc)) from None

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        cases = [i for i in session.items if isinstance(i, CaseItem)]
        selected: dict[str, list[Case]] = {}
        for item in cases:
            selected.setdefault(item.collector.task.key, []).append(item.case)
        self.run.select(selected)
        # pytest-rerunfailures and the like run a case again: its served answer is kept
        self.run.keep_taken = bool(cases) and bool(perf.protocol_takers(self.config, cases[0]))

    # -- running ---------------------------------------------------------------------------
    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if (
            isinstance(item, CaseItem)
            and call.excinfo is not None
            and isinstance(call.excinfo.value, RunAborted)
        ):
            # One clear stop, not thousands of identical errors.
            item.session.shouldfail = "servebench run aborted (reason in the summary below)"
            report.servebench_abort = str(call.excinfo.value)
        if isinstance(item, CaseItem) and item.collector.state.resume_note:
            report.servebench_resume = item.collector.state.resume_note
            item.collector.state.resume_note = None
        if isinstance(item, CaseItem) and item.verdict is not None:
            concluded = (call.when == "call") or (
                call.when == "setup" and report.outcome != "passed"
            )
            if concluded:
                report.servebench = {
                    "task": item.collector.task.key,
                    "case": item.case.id,
                    **item.verdict.to_dict(),
                    **(item.details() if self.rich_reports else {}),
                }
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if is_worker(self.config):
            return
        self.display.tick()
        note = getattr(report, "servebench_resume", None)
        if note:
            self.display.say(f"[servebench] {note}")
        abort = getattr(report, "servebench_abort", None)
        if abort and not self.abort_message:
            self.abort_message = abort
        payload = getattr(report, "servebench", None)
        if payload:
            verdict = Verdict.from_dict(payload)
            self._result_for(payload["task"]).add(payload["case"], verdict)
            self.wrong.note(report, verdict)
            self.display.judged(payload["task"], verdict.status == "passed")

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        # xdist stops the controller with its own KeyboardInterrupt when a worker's run was
        # aborted: that is the abort, not the user.
        by_xdist = type(excinfo.value).__module__.startswith("xdist")
        if not (by_xdist and self.abort_message):
            self.interrupted = True
            if isinstance(excinfo.value, signals.Terminated):
                self.terminated = True

    def _result_for(self, key: str) -> TaskResult:
        if key not in self.results:
            task = next(t for t in self.run.tasks if t.key == key)
            self.results[key] = ending.new_result(task, self.options.mode)
        return self.results[key]

    # -- finishing -------------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        try:
            self.run.close()
        except Exception as exc:  # stopping the engine must never cost the summary
            log.exception("closing the engine failed")
            self.finish_error = f"the engine did not stop cleanly: {exc}"
        self.display.stop()
        if is_worker(self.config):
            return
        self.display.show_debug()  # the run's last log lines
        aborted = self.run.engine.fatal or self.abort_message
        if exitstatus == pytest.ExitCode.INTERRUPTED and not aborted:
            self.interrupted = True
        draft = ending.Draft()
        reason: str | None = None
        try:
            if not self.config.option.collectonly:
                for task in self.run.tasks:
                    judge_saved(self.run, task, self._result_for(task.key), self.options.mode)
                reason = self._abort_reason()
                extra = {
                    "work_dir": str(self.run.work.root),
                    "timestamp": self.stamp,
                    "interrupted": self.interrupted,
                    "mode": self.options.mode,
                    "aborted": redactor(reason or "") or None,
                }
                code_figures, self.code_line = code_execution.session_figures(
                    self.run, self.options.mode, self.code_isolation
                )
                extra.update(code_figures)
                ending.write_outcome(draft, self.run, self._results(), self.stamp, extra)
        except ServebenchError as exc:
            self.finish_error = str(exc)
        except OSError as exc:  # a full disk, a folder made read-only mid-run
            self.finish_error = f"the summary could not be written: {exc}"
            log.error("%s", self.finish_error)
        except KeyboardInterrupt:
            self.interrupted = True
            self.finish_error = "interrupted while the summary was computed; it is incomplete"
        if reason is None:  # the steps above did not get that far
            reason = self._abort_reason()
        self.outcome = ending.build_outcome(
            draft,
            self.run,
            self.options,
            self.stamp,
            self._results(),
            aborted=reason,
            interrupted=self.interrupted,
            terminated=self.terminated,
            finish_error=self.finish_error,
            code_execution=self.code_line,
            invocation_dir=self.config.invocation_params.dir,
        )
        if self.html is not None:
            self.html.outcome = self.outcome  # pytest-html writes its report after this hook
        # One documented exit status, with and without -n: 2 when the user interrupted,
        # 1 when the run was cut short (aborted) or its summary could not be written.
        if self.interrupted:
            session.exitstatus = pytest.ExitCode.INTERRUPTED
        elif aborted or self.finish_error:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        apply_gates(self.config, session, self.outcome)  # with gates, they decide the exit status
        self._log_handler.close()

    def _results(self) -> list[TaskResult]:
        """The results there are, in the run's task order."""
        return [self.results[t.key] for t in self.run.tasks if t.key in self.results]

    def _abort_reason(self) -> str | None:
        """Why the run stopped early. A managed server that died is named as the cause: the
        engine only sees that nothing answers any more."""
        reason = self.run.engine.fatal or self.abort_message
        if reason is None:
            return None
        return crash_reason(self.launcher, self.launched, self.results.values()) or reason

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> Generator[None, None, None]:
        """Around pytest's own summary (FAILURES, short summary): wrong answers one line each
        (report/terminal.py), and the servebench summary printed last."""
        tr = terminalreporter
        hidden = self.wrong.hide(tr) if terminal.compact(self.config) else []
        try:
            return (yield)
        finally:
            self.wrong.show(tr, hidden)
            if not is_worker(self.config):
                terminal.write_session_summary(tr, self.outcome, self.baseline)
