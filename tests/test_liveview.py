"""The live view on a terminal: pytest run in a pseudo-terminal, its bytes replayed on a small
terminal model. The view must show (one line per active task, refreshed in place) and leave
pytest's own output exactly as a run without it."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from conftest import DEMO_DATA, stable
from pytest_servebench.report.progress import LiveBlock, task_line
from pytest_servebench.testing.mockserver import MockServer, dataset_responder, load_jsonl

WIDTH, HEIGHT = 250, 30  # wide: long tmp paths stay on one line
_CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")


class Terminal:
    """Enough of a VT100 for what pytest and the live view write; anything else fails."""

    def __init__(self, width: int):
        self.width = width
        self.lines: list[list[str]] = [[]]
        self.row = self.col = 0

    def feed(self, text: str) -> None:
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == "\x1b":
                match = _CSI.match(text, i)
                assert match, f"unexpected escape {text[i : i + 8]!r}"
                self._csi(match.group(1), match.group(2))
                i = match.end()
                continue
            if ch == "\r":
                self.col = 0
            elif ch == "\n":
                self._down()
            elif ch == "\x07":
                pass
            else:
                if self.col >= self.width:
                    self._down()
                    self.col = 0
                line = self.lines[self.row]
                line.extend(" " * (self.col + 1 - len(line)))
                line[self.col] = ch
                self.col += 1
            i += 1

    def _down(self) -> None:
        self.row += 1
        if self.row == len(self.lines):
            self.lines.append([])

    def _csi(self, params: str, final: str) -> None:
        n = int(params) if params.isdigit() else None
        if final == "m" or params.startswith("?"):
            return  # colours, cursor visibility
        if final == "A":
            self.row = max(self.row - (n or 1), 0)
        elif final == "G":
            self.col = (n or 1) - 1
        elif final == "K":
            del self.lines[self.row][self.col :]
        elif final == "J" and not params:
            del self.lines[self.row][self.col :]
            del self.lines[self.row + 1 :]
        else:
            raise AssertionError(f"unexpected escape CSI {params}{final}")

    def text(self) -> list[str]:
        return ["".join(line).rstrip() for line in self.lines]


def run_in_pty(args: list[str], cwd: Path) -> str:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", HEIGHT, WIDTH, 0, 0))
    env = {**os.environ, "TERM": "xterm", "COLUMNS": str(WIDTH), "LINES": str(HEIGHT)}
    env.pop("NO_COLOR", None)
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.Popen(
        # the same item order in both runs compared (pytest-randomly would shuffle them)
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=cwd,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            proc.kill()
            raise AssertionError("pytest in the pty produced nothing for 60 s")
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(master)
    return b"".join(chunks).decode("utf-8", errors="replace")


# Start-up noise that differs between any two runs: xdist's worker count rewritten in place
# (raced by the workers' own warnings on stderr), and those warnings.
_NOISE = re.compile(
    r"(initialized|ready|collecting|created): \d+/\d+ workers|Warning|warnings\.warn"
)


def _normal(lines: list[str]) -> list[str]:
    out = []
    service = False  # the service table's timings differ from run to run
    for line in lines:
        if _NOISE.search(line):
            continue
        service = (service or "servebench service" in line) and not line.startswith("service:")
        if service:
            line = re.sub(r"[ -]+", " ", re.sub(r"\d+\.\d+", "<f>", line))
        line = re.sub(r"\d{8}_\d{6}(_\d+)?", "<ts>", line)
        line = re.sub(r"in \d+\.\d+s", "in <t>", line)
        line = re.sub(r"=+", "=", line)  # the closing line pads to the width
        line = re.sub(r"\(\d+:\d\d:\d\d\)", "", line)
        out.append(line)
    return out


@pytest.mark.parametrize("extra", [[], ["-v"], ["-n", "2"]])
def test_live_view_in_a_pty_keeps_pytests_output_intact(tmp_path, extra):
    records = load_jsonl(DEMO_DATA)
    responder = stable(dataset_responder(records, p_correct=0.6, seed=1))
    with MockServer(responder, latency=0.15) as server:

        def args(progress: str, out: str) -> list[str]:
            return [
                "--sb-models",
                "vllm_chat",
                "--sb-datasets",
                "demo_gsm8k",
                f"--sb-set=vllm_chat.base_url={server.base_url}",
                "--sb-set=vllm_chat.max_concurrency=2",
                f"--sb-work-dir={out}",
                "--sb-limit=16",
                f"--sb-progress={progress}",
                *extra,
            ]

        live = run_in_pty(args("0.1", "live"), tmp_path)
        plain = run_in_pty(args("0", "flat"), tmp_path)
    # The view was there: drawn below pytest's line, refreshed, with the figures it promises.
    assert "\x1b[J" in live and "\x1b[J" not in plain
    drawn = [m for m in re.findall(r"vllm_chat/demo_gsm8k \[[#-]{16}\][^\n\x1b]*", live)]
    assert len(drawn) >= 3, live
    assert re.search(r"\d+/16 acc +[\d.-]+%? [\d.]+ req/s \d+:\d\d ETA \S+ \w+", drawn[-1])
    assert "| logs live/" in drawn[-1]
    # ... and gone: the final screen equals the run without it, line for line.
    term_live, term_plain = Terminal(WIDTH), Terminal(WIDTH)
    term_live.feed(live)
    term_plain.feed(plain)
    screen = _normal(term_live.text())
    assert screen == [line.replace("flat", "live") for line in _normal(term_plain.text())]
    assert not any("req/s" in line for line in screen)
    assert any("servebench summary" in line for line in screen)


def test_live_block_returns_the_cursor_where_pytest_left_it():
    import io

    out = io.StringIO()
    block = LiveBlock(out, lambda: 5, lambda: 40)
    block.draw(["a" * 60, "b"])
    assert out.getvalue() == "\n" + "a" * 39 + "\nb" + "\x1b[2A\x1b[6G"
    block.erase()
    assert out.getvalue().endswith("\x1b[J")
    block.erase()  # nothing drawn: nothing written
    assert out.getvalue().count("\x1b[J") == 1


def test_task_line_fits_the_terminal():
    counters = {
        "total": 100,
        "posted": 60,
        "received": 50,
        "finished": 48,
        "failed": 2,
        "retried": 1,
        "elapsed": 10.0,
    }
    line = task_line("m/gsm8k", counters, 62.5, "logs out/x/logs", 200)
    assert line.startswith("m/gsm8k [########--------] 50/100 acc  62.5% 5.0 req/s 0:10 ETA 0:10")
    assert "sending, 2 failed, 1 retried | logs out/x/logs" in line
    assert len(task_line("m/gsm8k", counters, None, "logs " + "x" * 300, 80)) == 79


def test_live_view_falls_back_to_plain_lines(monkeypatch):
    import io
    from types import SimpleNamespace

    from pytest_servebench.report import liveview

    writer = SimpleNamespace(
        _file=io.StringIO(), width_of_current_line=0, fullwidth=80, hasmarkup=True
    )
    tty = SimpleNamespace(_tw=writer, isatty=lambda: True)
    assert liveview.live_block(tty) is not None
    assert liveview.live_block(SimpleNamespace(_tw=writer, isatty=lambda: False)) is None
    no_file = SimpleNamespace(width_of_current_line=0, fullwidth=80, hasmarkup=True)
    assert liveview.live_block(SimpleNamespace(_tw=no_file, isatty=lambda: True)) is None
    monkeypatch.setattr(pytest, "__version__", "10.0.0")
    assert liveview.live_block(tty) is None
