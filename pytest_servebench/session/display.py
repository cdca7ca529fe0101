"""What the user sees while the run goes: our lines between pytest's progress dots, the
progress view (its counters published by every process, shown by the controller), the
running accuracy per task and, with --sb-debug, the logs as they are written."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import pytest

from pytest_servebench.redaction import redactor
from pytest_servebench.report import debuglog, liveview, progress
from pytest_servebench.session.tasks import Run


def _shorter(path: Path) -> str:
    """A path relative to the working folder when it is below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class Display:
    """The run's terminal side during the run, in the controller and (publishing only) in
    each xdist worker."""

    def __init__(self, config: pytest.Config, run: Run, worker: str | None):
        self.config = config
        self.run = run
        self.view: progress.View | None = None
        self.live: liveview.LiveViewPlugin | None = None
        self._tally: dict[str, tuple[int, int]] = {}  # task -> (passed, judged)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        publisher = progress.Publisher(run.engine, run.work.root / "logs", worker or "main")

        def publish(force: bool) -> None:
            # A full disk: the live counters are a nicety, the run goes on (and says why).
            with contextlib.suppress(OSError):
                publisher.publish(force)

        run.engine.on_progress = publish
        self.debug_tail = (
            debuglog.LogTail(run.work.root / "logs")
            if config.getoption("sb_debug") and worker is None
            else None
        )

    def _reporter(self) -> Any:
        return self.config.pluginmanager.get_plugin("terminalreporter")

    def echo(self, line: str) -> None:
        """A line on the terminal, redacted."""
        tr = self._reporter()
        if tr is not None:
            tr.write_line(redactor(line))

    def say(self, line: str) -> None:
        """A line of ours between pytest's progress dots: on a line of its own (and not
        through the live view's block)."""
        tr = self._reporter()
        if tr is None:
            return

        def write(text: str) -> None:
            writer = getattr(tr, "_tw", None)
            # write_line ends pytest's line itself when it is a file's line of results
            if writer is not None and writer.width_of_current_line and not tr.currentfspath:
                tr.write("\n")
            tr.write_line(text)

        if self.live is not None:
            self.live.say(write, line)
        else:
            write(line)

    def tick(self) -> None:
        """The progress view, and with --sb-debug the new log lines."""
        if self.view is not None:
            self.view.tick()
        self.show_debug()

    def show_debug(self) -> None:
        """With --sb-debug: the log lines written since the last call."""
        if self.debug_tail is not None:
            for line in self.debug_tail.poll():
                self.say(line)

    def judged(self, task: str, passed: bool) -> None:
        """A case of `task` was judged: the running accuracy the view shows."""
        right, judged = self._tally.get(task, (0, 0))
        self._tally[task] = (right + passed, judged + 1)

    def _running_accuracy(self, key: str) -> float | None:
        passed, judged = self._tally.get(key, (0, 0))
        return 100.0 * passed / judged if judged else None

    def start(self) -> None:
        """At the controller's sessionstart: the progress view (a block kept in place on a
        terminal, plain lines every few seconds otherwise)."""
        tr = self._reporter()
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
        engine = self.run.engine
        source = (
            (lambda: progress.read_all(logs))
            if distributed
            else (lambda: progress.snapshot(engine))
        )
        self.view = progress.View(
            source, write, interval, block, self._running_accuracy, "logs " + _shorter(logs)
        )
        if block is not None:
            self.live = liveview.LiveViewPlugin(self.view, block)
            self.config.pluginmanager.register(self.live, "servebench-live")
        self.run.on_wait = self.tick
        if distributed and (interval > 0 or self.debug_tail is not None):
            # Under xdist the controller's main thread only wakes for reports; keep the view
            # alive while every worker waits on slow requests.
            every = interval if interval > 0 else 0.5

            def loop() -> None:
                while not self._stop.wait(every):
                    self.tick()

            self._thread = threading.Thread(target=loop, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """The view's thread ends (at sessionfinish)."""
        if self._thread is not None:
            self._stop.set()
