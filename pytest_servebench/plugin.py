"""The pytest hooks, and nothing else: options, configure, collection glue, report glue."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from . import debuglog, liveview, output, perf, progress
from . import options as opts
from .aggregate import TaskResult
from .compare import baseline_lines, baseline_path
from .errors import ServebenchError
from .gates import apply_gates, setup_gates
from .html import register_html
from .items import NODE_PREFIX, CaseItem, TaskCollector, printable
from .jobs import RunAborted
from .launcher import Launcher, apply_urls
from .run import Run
from .scoring import judge_case
from .secrets import RedactingFilter, redactor
from .service import SERVICE_NOTE, render_service_text, service_rows, task_service
from .store import WorkDir, WorkDirLock, load_predictions, new_timestamp, write_json
from .suites import SuiteIndex, load_configs, named_entries, parse_overrides, search_table
from .summary import build_rows, comparison_lines, comparisons, render_text, write_summary

log = logging.getLogger("servebench")


class _QuietFileHandler(logging.FileHandler):
    """The run's log file. A line that cannot be written (a full disk) is dropped: the run
    reports the disk problem itself, once, instead of a logging traceback per line."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass

    def close(self) -> None:
        try:
            super().close()
        except OSError:
            with contextlib.suppress(OSError):
                if self.stream is not None:
                    self.stream.close()  # its buffer is lost; the file's lines so far stay
            self.stream = None  # type: ignore[assignment]


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated("SIGTERM")


def suite_folders(config: pytest.Config, extra: list[str]) -> list[tuple[Path, str]]:
    folders = [(Path(d).expanduser().resolve(), "--sb-suites") for d in extra]
    for path, _ in folders:
        if not path.is_dir():
            raise ServebenchError(f"--sb-suites {path}: no such folder")
    local = config.rootpath / "suites"
    if local.is_dir():
        folders.append((local, "rootdir"))
    from .suites import BUILTIN_SUITES

    folders.append((BUILTIN_SUITES, "built-in"))
    return folders


def search(config: pytest.Config) -> int:
    """`pytest --sb-search [PATTERN]` (called by entry.py): list the configs and exit."""
    pattern = config.getoption("sb_search")
    models = config.getoption("sb_models") or []
    datasets = config.getoption("sb_datasets") or []
    try:
        index = SuiteIndex(suite_folders(config, config.getoption("sb_suites") or []))
        # With --sb-models/--sb-datasets: exactly the named configs (AISBench's --search).
        named = named_entries(index, models, datasets) if models or datasets else None
    except ServebenchError as exc:
        raise pytest.UsageError(str(exc)) from None
    print(search_table(index, pattern=pattern, entries=named))
    return 0


def pytest_configure(config: pytest.Config) -> None:
    """Registered by entry.py only when the session has an evaluation (options.wanted)."""
    plugin = None
    try:
        options = opts.resolve(config)
        if options is None:
            return
        plugin = ServebenchPlugin(config, options)
        if not is_worker(config):
            setup_gates(plugin)  # gate files and baseline are checked before any request
            plugin.baseline = baseline_path(config)
    except ServebenchError as exc:
        if plugin is not None:
            plugin.release()
        raise pytest.UsageError(str(exc)) from None
    config.pluginmanager.register(plugin, "servebench-run")
    plugin.install_sigterm()
    config.pluginmanager.register(
        perf.PerfPlugin(lambda item: isinstance(item, CaseItem), NODE_PREFIX + "/"),
        "servebench-perf",
    )
    if not is_worker(config):
        register_html(plugin)  # only when pytest-html is installed and --html is given


def _shorter(path: Path) -> str:
    """A path relative to the working folder when it is below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


class ServebenchPlugin:
    def __init__(self, config: pytest.Config, options: opts.Options):
        self.config = config
        self.options = options
        index = SuiteIndex(suite_folders(config, options.suites))
        models, datasets = load_configs(
            index, options.models, options.datasets, parse_overrides(options.overrides)
        )
        base = Path(options.work_dir).expanduser()
        if not base.is_absolute():
            base = config.invocation_params.dir / base
        self.lock: WorkDirLock | None = None
        self._previous_sigterm: Any = None
        if is_worker(config):
            work = WorkDir(Path(config.workerinput["sb_work_dir"]))  # type: ignore[attr-defined]
            self.stamp = config.workerinput["sb_stamp"]  # type: ignore[attr-defined]
        elif options.reuse or not config.option.collectonly:
            try:
                work = WorkDir.reuse(base, options.reuse) if options.reuse else WorkDir.create(base)
                if not config.option.collectonly:
                    self.lock = work.lock()  # the controller writes; xdist workers share it
            except OSError as exc:
                raise ServebenchError(
                    f"cannot write the work dir under {base}: {exc.strerror or exc} "
                    f"({exc.filename or base}); choose a writable folder with --sb-work-dir=DIR"
                ) from None
            self.stamp = new_timestamp() if options.reuse else work.timestamp
        else:  # IDEs collect on every discovery: write nothing
            work = WorkDir(base / new_timestamp())
            self.stamp = work.timestamp
        datasets_dir = Path(options.datasets_dir).expanduser()
        if not datasets_dir.is_absolute():
            datasets_dir = config.invocation_params.dir / datasets_dir
        if is_worker(config):
            # servers were started by the controller: use the URLs it handed over
            apply_urls(models, config.workerinput.get("sb_launched", {}))  # type: ignore[attr-defined]
        try:
            self._start(config, options, models, datasets, work, datasets_dir, base)
        except BaseException:
            self.release()
            raise

    def _start(
        self,
        config: pytest.Config,
        options: opts.Options,
        models: list[Any],
        datasets: list[Any],
        work: WorkDir,
        datasets_dir: Path,
        base: Path,
    ) -> None:
        self.run = Run(options, models, datasets, work, datasets_dir.resolve())
        self.code_isolation: str | None = None  # how model-written programs run (execution/)
        if self.run.runs_code:
            from .execution import pool, report

            pool.configure(
                allow_unsandboxed=bool(config.getoption("sb_allow_unsandboxed_code")),
                cache_dir=report.cache_dir(work.root),
                tag=self.stamp,
            )
        self.launcher = Launcher(work.root / "logs", echo=self._echo)
        self.launched: dict[str, str] = {}
        self.results: dict[str, TaskResult] = {}
        self.finished: list[TaskResult] = []  # set before pytest-html's trylast sessionfinish
        # Reports carry prompts and outputs only when a report will show them (pytest-html).
        self.rich_reports = bool(getattr(config.option, "htmlpath", None))
        self.interrupted = False  # by the user: Ctrl-C or SIGTERM
        self.abort_message: str | None = None  # from this process or a worker's report
        self.baseline: Path | None = None  # --sb-baseline's summary, compared at the end
        self.wrong = output.WrongAnswers()
        self._tally: dict[str, tuple[int, int]] = {}  # task -> (passed, judged): live view
        try:
            self._setup_logging()
            if not is_worker(config) and not config.option.collectonly:
                self._snapshot()
        except OSError as exc:
            raise ServebenchError(
                f"cannot write in the work dir {work.root}: {exc.strerror or exc}; choose a "
                f"writable folder with --sb-work-dir=DIR"
            ) from None
        self._setup_progress()
        self.debug_tail = (
            debuglog.LogTail(work.root / "logs")
            if config.getoption("sb_debug") and not is_worker(config)
            else None
        )
        if not is_worker(config):
            self._check_rootdir()
            if not config.option.collectonly:
                self._remember(base)
        self._warm_up_engine()

    def release(self) -> None:
        """Give up the work dir's lock (at the end, or when the start failed)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def install_sigterm(self) -> None:
        """SIGTERM (a cancelled CI job) ends the run like Ctrl-C: what finished is saved and
        the partial summary and the resume command are printed."""
        if threading.current_thread() is not threading.main_thread():
            return
        with contextlib.suppress(ValueError, OSError, AttributeError):
            self._previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)

    def _restore_sigterm(self) -> None:
        previous, self._previous_sigterm = self._previous_sigterm, None
        if previous is None or threading.current_thread() is not threading.main_thread():
            return
        with contextlib.suppress(ValueError, OSError, TypeError):
            if signal.getsignal(signal.SIGTERM) is _raise_terminated:
                signal.signal(signal.SIGTERM, previous)

    # -- bookkeeping -----------------------------------------------------------------------
    def _setup_logging(self) -> None:
        worker = getattr(self.config, "workerinput", {}).get("workerid")
        name = f"servebench-{worker}.log" if worker else "servebench.log"
        handler: logging.Handler = (
            logging.NullHandler()
            if self.config.option.collectonly
            else _QuietFileHandler(self.run.work.root / "logs" / name, encoding="utf-8")
        )
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(RedactingFilter())
        # The per-request log stays out of pytest's capture, under any run protocol: pytest
        # (9.2+) attaches its capture handler to the root logger and to every non-propagating
        # logger it knows, so servebench's loggers pass their records to a parent that pytest
        # does not know (not registered with logging's manager) and that stops there.
        sink = logging.Logger("servebench-log")
        sink.handlers[:] = [handler]
        sink.propagate = False
        root = logging.getLogger("servebench")
        root.handlers[:] = []
        root.setLevel(logging.INFO)
        root.propagate = True
        root.parent = sink
        self._log_handler = handler

    def _check_rootdir(self) -> None:
        """pytest picks its rootdir from bare path arguments before plugins load, so
        `--sb-datasets-dir /data` (with a space) makes /data the rootdir: say how to avoid it."""
        root = self.config.rootpath
        here = self.config.invocation_params.dir
        if root == here or root in here.parents:
            return
        for flag in (
            "--sb-datasets-dir",
            "--sb-suites",
            "--sb-work-dir",
            "--sb-gate",
            "--sb-baseline",
        ):
            args = list(self.config.invocation_params.args)
            for i, arg in enumerate(args[:-1]):
                if arg == flag and Path(here, args[i + 1]).resolve() in (root, *root.parents):
                    self.config.issue_config_time_warning(
                        pytest.PytestConfigWarning(
                            f"pytest took {root} as its rootdir because `{flag} {args[i + 1]}` "
                            f"looks like a test path to it (it reads paths before plugins load); "
                            f"write `{flag}={args[i + 1]}` to keep the rootdir at {here}."
                        ),
                        stacklevel=2,
                    )
                    return

    def _setup_progress(self) -> None:
        worker = getattr(self.config, "workerinput", {}).get("workerid", "main")
        publisher = progress.Publisher(self.run.engine, self.run.work.root / "logs", worker)

        def publish(force: bool) -> None:
            # A full disk: the live counters are a nicety, the run goes on (and says why).
            with contextlib.suppress(OSError):
                publisher.publish(force)

        self.run.engine.on_progress = publish
        self.view: progress.View | None = None
        self._progress_thread: threading.Thread | None = None

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        """The work dir at the start of the run, where its logs already are."""
        return [f"servebench work dir: {self.run.work.root}"]

    def _say(self, line: str) -> None:
        """A line of ours between pytest's progress dots: on a line of its own (and not
        through the live view's block)."""
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is None:
            return

        def write(text: str) -> None:
            writer = getattr(tr, "_tw", None)
            # write_line ends pytest's line itself when it is a file's line of results
            if writer is not None and writer.width_of_current_line and not tr.currentfspath:
                tr.write("\n")
            tr.write_line(text)

        live = getattr(self, "live", None)
        if live is not None:
            live.say(write, line)
        else:
            write(line)

    def _tick(self) -> None:
        """The progress view, and with --sb-debug the new log lines."""
        if self.view is not None:
            self.view.tick()
        if self.debug_tail is not None:
            for line in self.debug_tail.poll():
                self._say(line)

    def _running_accuracy(self, key: str) -> float | None:
        passed, judged = self._tally.get(key, (0, 0))
        return 100.0 * passed / judged if judged else None

    def _echo(self, line: str) -> None:
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(redactor(line))

    def _start_servers(self) -> None:
        """Managed servers (a model config's `launch:`) start once, in the controller, before
        xdist starts its workers (its sessionstart is trylast) so they get the URLs."""
        if self.config.option.collectonly or self.options.mode == "eval":
            return
        launching = [m for m in self.run.models if m.launch]
        needed = [m for m in launching if self.run.sends_to(m)]
        for model in launching:
            if model not in needed:  # a resumed run whose answers are all saved
                self._echo(
                    f"[servebench] {model.name}: every case has a saved answer in "
                    f"{self.run.work.root}; its server is not started"
                )
        if not needed:
            return
        self.launcher.install_signal_handlers()
        try:
            self.launched = self.launcher.start_models(needed)
        except ServebenchError as exc:
            raise pytest.UsageError(str(exc)) from None

    def _check_data_files(self) -> None:
        """A missing data file stops the run here, in the controller, with the dataset's own
        message. Under xdist the workers' collection error would be swallowed (0 items, exit
        0), and no server should start for a run that cannot read its data."""
        seen: set[str] = set()
        for task in self.run.tasks:
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

    def _check_code_isolation(self) -> None:
        """A run that would execute model-written code without a sandbox stops here, before
        any request, unless the user accepted that risk."""
        if not self.run.runs_code or self.options.mode == "infer":
            return
        from .execution.report import check_isolation
        from .execution.sandbox import NoSandbox

        try:
            self.code_isolation = check_isolation(
                bool(self.config.getoption("sb_allow_unsandboxed_code"))
            )
        except NoSandbox as exc:
            raise pytest.UsageError(str(exc)) from None

    def _abort_reason(self) -> str | None:
        """Why the run stopped early. A managed server that died is named as the cause: the
        engine only sees that nothing answers any more."""
        reason = self.run.engine.fatal or self.abort_message
        if reason is None:
            return None
        for name in self.launched:
            answered = sum(
                counts["passed"] + counts["failed"]
                for counts in (r.counts() for r in self.results.values() if r.model_name == name)
            )
            crash = self.launcher.crash_report(name, answered)
            if crash:  # the engine's own reason ("not reachable") would mislead
                return crash
        return reason

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.launcher.stop_all()
        self.launcher.restore_signal_handlers()
        self._restore_sigterm()
        self.release()

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if is_worker(self.config):
            return
        self._check_data_files()
        self._check_code_isolation()
        self._start_servers()
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is None:
            return
        if tr.verbosity < 0:  # -q shows no header (pytest_report_header): say it here
            tr.write_line(f"servebench work dir: {self.run.work.root}")
        interval = self.config.getoption("sb_progress")
        block = liveview.live_block(tr) if interval != 0 else None
        if interval is None:
            isatty = tr.isatty  # a method since pytest 8.x, an attribute before
            tty = isatty() if callable(isatty) else isatty
            interval = 1.0 if block is not None else 2.0 if tty else 10.0

        def write(line: str) -> None:
            writer = getattr(tr, "_tw", None)
            if writer is not None and writer.width_of_current_line:
                tr.write("\n")  # after pytest's dots, start a line of our own
            tr.write_line(line)

        distributed = self.config.pluginmanager.has_plugin("dsession")
        logs = self.run.work.root / "logs"
        source = (
            (lambda: progress.read_all(logs))
            if distributed
            else (lambda: progress.snapshot(self.run.engine))
        )
        self.view = progress.View(
            source, write, interval, block, self._running_accuracy, "logs " + _shorter(logs)
        )
        if block is not None:
            self.live = liveview.LiveViewPlugin(self.view, block)
            self.config.pluginmanager.register(self.live, "servebench-live")
        self.run.on_wait = self._tick
        if distributed and (interval > 0 or self.debug_tail is not None):
            # Under xdist the controller's main thread only wakes for reports; keep the view
            # alive while every worker waits on slow requests.
            stop = self._progress_stop = threading.Event()
            every = interval if interval > 0 else 0.5

            def loop() -> None:
                while not stop.wait(every):
                    self._tick()

            self._progress_thread = threading.Thread(target=loop, daemon=True)
            self._progress_thread.start()

    def _warm_up_engine(self) -> None:
        """Start the engine process now, so that its start-up overlaps pytest's, in each
        process that will send (not an xdist controller, not --collect-only or --sb-mode
        eval). xdist's own configure, which registers the controller, runs after this one."""
        warm_up = getattr(self.run.engine, "warm_up", None)
        distributing = getattr(self.config.option, "dist", "no") != "no"
        if (
            warm_up is None
            or self.options.mode == "eval"
            or self.config.option.collectonly
            or (distributing and not is_worker(self.config))
        ):
            return
        warm_up()

    def _snapshot(self) -> None:
        from dataclasses import asdict

        data = {
            "options": asdict(self.options),
            "models": {m.name: asdict(m) for m in self.run.models},
            "datasets": {
                d.name: {**asdict(d), "version": self.run.datasets[d.name].version}
                for d in self.run.dataset_configs
            },
        }
        write_json(self.run.work.root / "configs" / f"run_{self.stamp}.json", redactor.scrub(data))

    def _remember(self, base: Path) -> None:
        if getattr(self.config, "cache", None) is None:
            return
        options = self.options
        safe_overrides = [o for o in options.overrides if ".headers." not in o]
        self.config.cache.set(
            opts.CACHE_KEY,
            {
                "models": options.models,
                "datasets": options.datasets,
                "suites": [str(Path(s).resolve()) for s in options.suites],
                "overrides": [redactor(o) for o in safe_overrides],
                "work_base": str(base),
                "work_dir": str(self.run.work.root),
                "datasets_dir": str(self.run.datasets_dir),
                "limit": options.limit,
                "merge_subsets": options.merge_subsets,
            },
        )

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
        self.run.set_items(cases)
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
                    **item.verdict,
                    **(item.details() if self.rich_reports else {}),
                }
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if is_worker(self.config):
            return
        self._tick()
        note = getattr(report, "servebench_resume", None)
        if note:
            self._say(f"[servebench] {note}")
        abort = getattr(report, "servebench_abort", None)
        if abort and not self.abort_message:
            self.abort_message = abort
        payload = getattr(report, "servebench", None)
        if payload:
            self._result_for(payload["task"]).add(payload["case"], payload)
            self.wrong.note(report, payload)
            passed, judged = self._tally.get(payload["task"], (0, 0))
            self._tally[payload["task"]] = (passed + (payload["status"] == "passed"), judged + 1)

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        # xdist stops the controller with its own KeyboardInterrupt when a worker's run was
        # aborted: that is the abort, not the user.
        by_xdist = type(excinfo.value).__module__.startswith("xdist")
        if not (by_xdist and self.abort_message):
            self.interrupted = True
            if isinstance(excinfo.value, Terminated):
                self.terminated = True

    def _result_for(self, key: str) -> TaskResult:
        if key not in self.results:
            task = next(t for t in self.run.tasks if t.key == key)
            self.results[key] = TaskResult(
                key=key,
                model=task.model.abbr,
                model_name=task.model.name,
                dataset=task.dataset.config.abbr,
                dataset_name=task.dataset.config.name,
                version=task.dataset.version,
                mode=task.dataset.config.mode,
                run_mode=self.options.mode,
                samples=task.samples,
                case_ids=[c.id for c in task.cases],
                pass_ks=tuple(getattr(task.dataset.evaluator, "pass_ks", ())),
            )
        return self.results[key]

    # -- finishing -------------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        try:
            self.run.close()
        except Exception as exc:  # stopping the engine must never cost the summary
            log.exception("closing the engine failed")
            self.finish_error = f"the engine did not stop cleanly: {exc}"
        if self._progress_thread is not None:
            self._progress_stop.set()
        if is_worker(self.config):
            return
        if self.debug_tail is not None:  # the run's last log lines
            for line in self.debug_tail.poll():
                self._say(line)
        aborted = self.run.engine.fatal or self.abort_message
        if exitstatus == pytest.ExitCode.INTERRUPTED and not aborted:
            self.interrupted = True
        try:
            if not self.config.option.collectonly:
                self._finish()
        except ServebenchError as exc:
            self.finish_error = str(exc)
        except OSError as exc:  # a full disk, a folder made read-only mid-run
            self.finish_error = f"the summary could not be written: {exc}"
            log.error("%s", self.finish_error)
        except KeyboardInterrupt:
            self.interrupted = True
            self.finish_error = "interrupted while the summary was computed; it is incomplete"
        # One documented exit status, with and without -n: 2 when the user interrupted,
        # 1 when the run was cut short (aborted) or its summary could not be written.
        if self.interrupted:
            session.exitstatus = pytest.ExitCode.INTERRUPTED
        elif aborted or getattr(self, "finish_error", None):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        apply_gates(self, session)  # with gates, they decide the exit status
        self._log_handler.close()

    def _finish(self) -> None:
        for task in self.run.tasks:
            result = self._result_for(task.key)
            self._fill_from_store(task, result)
        results = [self.results[t.key] for t in self.run.tasks]
        self.finished = results
        for result in results:
            write_json(
                self.run.work.results_file(result.model_name, result.dataset_name), result.to_json()
            )
        self.service = {
            r.key: task_service(
                self.run.work.predictions_file(r.model_name, r.dataset_name), set(r.case_ids)
            )
            for r in results
        }
        self.summary_files = write_summary(
            self.run.work.summary_base(self.stamp),
            results,
            {
                "work_dir": str(self.run.work.root),
                "timestamp": self.stamp,
                "interrupted": self.interrupted,
                "mode": self.options.mode,
                "aborted": redactor(self._abort_reason() or "") or None,
                **self._code_execution(),
            },
            self.service,
        )

    def _code_execution(self) -> dict[str, Any]:
        """The summary file's record of how model-written code ran (none: no entry)."""
        if not self.run.runs_code or self.options.mode == "infer":
            return {}
        from .execution import report

        figures = report.collect(report.cache_dir(self.run.work.root))
        self.code_line = report.summary_line(figures, self.code_isolation)
        return {"code_execution": figures or {"describe": self.code_isolation}}

    def _fill_from_store(self, task: Any, result: TaskResult) -> None:
        """Cases not run in this session (deselected by --lf or -k) are judged from the saved
        predictions, so the summary always covers the whole dataset."""
        missing = [c for c in task.cases if c.id not in result.cases]
        if not missing:
            return
        saved = load_predictions(
            self.run.work.predictions_file(task.model.name, task.dataset.config.name)
        )
        if not saved:
            return
        state = self.run.states[task.key]
        for case in missing:
            try:
                jobs = state.jobs_for(case, task.model.model)
            except Exception:  # a case whose request cannot be built has no saved answer
                continue
            records = []
            for job in jobs:
                for sample in range(job.first, job.first + job.count):
                    record = saved.get((case.id, sample))
                    if record is None or record.get("hash") != job.hash:
                        break
                    records.append(record)
            if len(records) == task.samples:
                result.add(
                    case.id,
                    judge_case(task.dataset.evaluator, case.reference, records, self.options.mode),
                )

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> Generator[None, None, None]:
        """Around pytest's own summary (FAILURES, short summary): wrong answers one line each
        (output.py), and the servebench table printed last."""
        tr = terminalreporter
        hidden = self.wrong.hide(tr) if output.compact(self.config) else []
        try:
            return (yield)
        finally:
            self.wrong.show(tr, hidden)
            self._write_summary(tr)

    def _write_summary(self, tr: Any) -> None:
        if is_worker(self.config) or not self.results:
            return
        results = [self.results[t.key] for t in self.run.tasks if t.key in self.results]
        header, rows = build_rows(results)
        tr.write_sep("=", "servebench summary")
        for line in render_text(header, rows).splitlines():
            tr.write_line(line)
        for line in comparison_lines(comparisons(results)):
            tr.write_line(line)
        service = getattr(self, "service", {})
        srows = service_rows((r.dataset, r.model, service.get(r.key)) for r in results)
        if srows:
            tr.write_sep("-", "servebench service")
            for line in [*render_service_text(srows).splitlines(), SERVICE_NOTE]:
                tr.write_line(line)
        if getattr(self, "baseline", None) is not None and self.options.mode != "infer":
            tr.write_sep("-", "servebench vs baseline")
            try:
                lines = baseline_lines(self.baseline, results, service)
            except ServebenchError as exc:
                lines = [f"not compared: {exc}"]
            for line in lines:
                tr.write_line(line, red="significantly WORSE" in line)
        for r in results:
            if not r.complete:
                figures = r.figures()
                shown = ", ".join(f"{k} {v:.2f}" for k, v in figures.items()) or "no figures"
                tr.write_line(
                    f"partial: {r.key} has {r.evaluated} of {len(r.case_ids)} cases "
                    f"evaluated ({shown} over those only); the table shows '-'",
                    yellow=True,
                )
        aborted = self._abort_reason()
        if aborted:
            tr.write_line(f"aborted: {redactor(printable(aborted))}", red=True, bold=True)
        elif self.interrupted:
            how = "SIGTERM" if getattr(self, "terminated", False) else "Ctrl-C"
            tr.write_line(f"interrupted ({how}): what finished is saved", yellow=True)
        if self.interrupted or aborted or any(not r.complete for r in results):
            tr.write_line(f"resume: pytest {' '.join(self._resume_args())}", bold=True)
        if getattr(self, "finish_error", None):
            tr.write_line(f"error: {redactor(self.finish_error)}", red=True)
        if getattr(self, "code_line", None):
            tr.write_line(self.code_line)
        tr.write_line(f"work dir: {self.run.work.root}")
        for path in getattr(self, "summary_files", []):
            if path.suffix == ".csv":
                tr.write_line(f"summary: {path.with_suffix('')}.{{csv,md,txt,json}}")

    def _resume_args(self) -> list[str]:
        """The command that continues this run; `--opt=value` so pytest's rootdir stays put."""
        o = self.options
        args = [
            "--sb-models",
            *o.models,
            "--sb-datasets",
            *o.datasets,
            f"--sb-work-dir={self.run.work.root.parent}",
            f"--sb-reuse={self.run.work.timestamp}",
        ]
        args += [f"--sb-suites={s}" for s in o.suites]
        datasets_dir = self.run.datasets_dir
        if datasets_dir != (self.config.invocation_params.dir / "datasets").resolve():
            args.append(f"--sb-datasets-dir={datasets_dir}")
        args += [f"--sb-set={redactor(s)}" for s in o.overrides]
        if o.limit:
            args.append(f"--sb-limit={o.limit}")
        if o.mode != "all":
            args.append(f"--sb-mode={o.mode}")
        if o.merge_subsets:
            args.append("--sb-merge-ds")
        return args
