"""The live view's pytest side: where it writes, and the hooks around pytest's own writes.

On a terminal, progress.LiveBlock keeps one line per active task below pytest's output. It
needs the terminal reporter's writer (`_tw`: its file and the column pytest is at), which is
private: when that is missing (another pytest) or the output is not a terminal, the view
falls back to the plain periodic lines."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from pytest_servebench.report.progress import LiveBlock, View

# The pytest majors whose TerminalWriter (_tw: _file, width_of_current_line, fullwidth) the
# view was tested against; any other gets the plain lines.
PYTEST_MAJORS = (8, 9)


def live_block(tr: Any) -> LiveBlock | None:
    """A LiveBlock on the terminal reporter's own file, or None (not a terminal, another
    pytest, or a writer that does not look as expected)."""
    if int(pytest.__version__.split(".")[0]) not in PYTEST_MAJORS:
        return None
    writer = getattr(tr, "_tw", None)
    file = getattr(writer, "_file", None)
    if (
        writer is None
        or file is None
        or not (tr.isatty() if callable(tr.isatty) else tr.isatty)  # a method since 8.x
        or not hasattr(writer, "width_of_current_line")
        or not hasattr(writer, "fullwidth")
        or not getattr(writer, "hasmarkup", False)  # TERM=dumb, NO_COLOR...: plain lines
    ):
        return None
    return LiveBlock(file, lambda: writer.width_of_current_line, lambda: writer.fullwidth)


class LiveViewPlugin:
    """Erases the block before pytest writes (a report, a test's name in -v, our own lines)
    and draws it again after; removes it for good before the session's summary."""

    def __init__(self, view: View, block: LiveBlock):
        self.view = view
        self.block = block

    def _around(self) -> Generator[None, Any, Any]:
        with self.block.lock:
            self.block.erase()
            self.block.held += 1
            try:
                return (yield)
            finally:
                self.block.held -= 1
                self.view.redraw()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_logstart(self) -> Generator[None, Any, Any]:
        return (yield from self._around())

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_logreport(self) -> Generator[None, Any, Any]:
        return (yield from self._around())

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_logfinish(self) -> Generator[None, Any, Any]:
        return (yield from self._around())

    @pytest.hookimpl(wrapper=True, optionalhook=True)
    def pytest_testnodedown(self) -> Generator[None, Any, Any]:
        return (yield from self._around())

    def say(self, write: Any, line: str) -> None:
        with self.block.lock:
            self.block.erase()
            self.block.held += 1
            try:
                write(line)
            finally:
                self.block.held -= 1
                self.view.redraw()

    def stop(self) -> None:
        self.view.interval = 0  # no more ticks, of either kind
        self.view.live = None
        self.block.erase()

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self) -> None:
        self.stop()

    def pytest_keyboard_interrupt(self) -> None:
        self.stop()

    def pytest_internalerror(self) -> None:
        self.stop()
