"""Hostile programs against the real sandbox of this machine: each is contained, ends within
its limits and is reported with its reason. The fork bomb runs only where a process-count
limit is in force (bwrap's user namespace; as root under an unprivileged uid)."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
import time
from pathlib import Path

import pytest
from conftest import needs_sandbox

from pytest_servebench.execution import sandbox
from pytest_servebench.execution.runner import Limits, run_program

FOUND, NOTES = sandbox.detect()
needs_bwrap = needs_sandbox()
LIMITS = Limits(timeout=3.0, memory_mb=512, max_processes=32, max_output_kb=256)


def run(source: str, limits: Limits = LIMITS):
    assert FOUND is not None
    started = time.monotonic()
    outcome = run_program(source, FOUND, limits)
    return outcome, time.monotonic() - started


def _sandbox_uid_processes(max_processes: int) -> int:
    """Processes of the sandbox's uid whose harness got `max_processes`: a value only one test
    uses, since other tests (other xdist workers) run sandboxed programs as the same uid."""
    if FOUND is None or FOUND.run_as is None:
        return 0
    marker = f"harness.py\0{max_processes}\0".encode()
    count = 0
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            text = (proc / "status").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        uid_line = next((line for line in text.splitlines() if line.startswith("Uid:")), "")
        if uid_line.split()[1:2] == [str(FOUND.run_as)] and cmdline.endswith(marker):
            count += 1
    return count


@needs_bwrap
def test_detection_reports_the_level_and_a_working_interpreter():
    assert FOUND.level == "bwrap"
    assert "namespaces" in FOUND.describe()
    if os.geteuid() == 0:
        assert FOUND.run_as == sandbox.UNPRIVILEGED_ID  # root would ignore RLIMIT_NPROC


@needs_bwrap
def test_a_passing_and_a_failing_program():
    ok, _ = run("def f(x):\n    return x + 1\n\nassert f(1) == 2\n")
    assert ok.status == "passed" and ok.isolation == "bwrap"
    bad, _ = run("def f(x):\n    return x\n\nassert f(1) == 2, 'off by one'\n")
    assert bad.status == "failed assertion"
    assert "line 4: assert f(1) == 2" in bad.detail and "off by one" in bad.detail
    syntax, _ = run("def f(:\n    pass\n")
    assert syntax.status == "syntax error"
    early, _ = run("import os\nos._exit(0)\nassert False\n")
    assert early.status == "exited early"  # leaving before the tests is not a pass


@needs_bwrap
def test_infinite_loop_is_killed_at_the_wall_clock_limit():
    outcome, took = run("while True:\n    pass\n")
    assert outcome.status == "timeout"
    assert took < LIMITS.timeout + 2


@needs_bwrap
def test_sleeping_forever_is_killed_too():
    outcome, took = run("import time\ntime.sleep(3600)\n", Limits(timeout=1.0))
    assert outcome.status == "timeout" and took < 3


@needs_bwrap
def test_fork_bomb_is_contained_and_leaves_nothing_behind():
    if FOUND.run_as is None and os.geteuid() == 0:
        pytest.skip("no process-count limit for root here")
    bomb = (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    outcome, took = run(bomb, Limits(timeout=2.0, max_processes=29))
    assert outcome.status in ("timeout", "exception", "killed")
    assert took < 6
    deadline = time.monotonic() + 5
    while _sandbox_uid_processes(29) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _sandbox_uid_processes(29) == 0


@needs_bwrap
def test_a_10_gb_allocation_hits_the_memory_limit():
    outcome, took = run("block = bytearray(10 * 1024 ** 3)\nassert False\n")
    assert outcome.status == "memory limit"
    assert "bytearray" in outcome.detail and took < 5


@needs_bwrap
def test_writing_outside_its_directory_reaches_nothing(tmp_path):
    targets = [tmp_path / "escaped.txt", Path.home() / "sb-escaped.txt", Path.cwd() / "escaped"]
    attempts = "".join(
        f"try:\n    open({str(t)!r}, 'w').write('x')\n    wrote.append({str(t)!r})\n"
        f"except OSError:\n    pass\n"
        for t in targets
    )
    outcome, _ = run("wrote = []\n" + attempts + "assert not wrote, wrote\n")
    for target in targets:
        assert not target.exists(), target
    assert outcome.status == "passed", outcome  # every write failed inside the sandbox


@needs_bwrap
def test_reading_ssh_keys_of_a_home_finds_nothing(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    key = home / ".ssh" / "id_rsa"
    key.write_text("SECRET-KEY-MATERIAL\n")
    key.chmod(stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)  # even world-readable
    monkeypatch.setenv("HOME", str(home))
    program = (
        "import os\n"
        f"for path in ({str(key)!r}, os.path.expanduser('~/.ssh/id_rsa')):\n"
        "    try:\n"
        "        raise RuntimeError('LEAK ' + open(path).read())\n"
        "    except OSError:\n"
        "        pass\n"
        "assert os.environ.get('HOME') != " + repr(str(home)) + "\n"
    )
    outcome, _ = run(program)
    assert "SECRET" not in outcome.detail
    assert outcome.status == "passed", outcome


@needs_bwrap
def test_a_socket_to_loopback_gets_nowhere():
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    try:
        program = (
            "import socket\n"
            f"s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "s.sendall(b'hello')\n"
        )
        outcome, _ = run(program)
        assert outcome.status == "exception"
        assert "ConnectionRefusedError" in outcome.detail or "OSError" in outcome.detail
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing ever connected
    finally:
        listener.close()


@needs_bwrap
def test_killing_its_parent_and_us_leaves_the_run_alive():
    program = (
        "import os, signal\n"
        "for pid in (os.getppid(), 1, " + str(os.getpid()) + "):\n"
        "    try:\n"
        "        os.kill(pid, signal.SIGKILL)\n"
        "    except OSError:\n"
        "        pass\n"
        "os.kill(-1, signal.SIGKILL)\n"
    )
    outcome, took = run(program)
    assert outcome.status in ("killed", "exception", "passed", "exited early")
    assert took < LIMITS.timeout + 2
    again, _ = run("assert 1 + 1 == 2\n")  # the runner still works
    assert again.status == "passed"


@needs_bwrap
def test_printing_100_mb_stops_at_the_output_limit():
    outcome, took = run("import sys\nfor _ in range(100):\n    sys.stdout.write('x' * 2**20)\n")
    assert outcome.status == "output limit"
    assert took < 5
    flood, _ = run("print('y' * 100_000_000)\n")
    assert flood.status in ("output limit", "memory limit")


@needs_bwrap
def test_the_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-should-not-leak")
    outcome, _ = run(
        "import os\nassert set(os.environ) <= {'PATH', 'HOME', 'LANG', 'PWD', 'LC_CTYPE'}, "
        "sorted(os.environ)\nassert os.getcwd() == '/sandbox'\n"
    )
    assert outcome.status == "passed", outcome


def test_an_unusable_bwrap_is_reported_with_its_own_error():
    # A bwrap that cannot create namespaces (a container without user namespaces) says so.
    with tempfile.TemporaryDirectory() as folder:  # reachable by the unprivileged uid
        os.chmod(folder, 0o755)
        fake = Path(folder) / "bwrap"
        fake.write_text(
            "#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n"
        )
        fake.chmod(0o755)
        found, notes = sandbox.detect(bwrap=str(fake))
    assert found is None
    assert any("No permissions to create new namespace" in n for n in notes)


def test_without_a_sandbox_the_run_refuses_unless_allowed(monkeypatch):
    monkeypatch.setattr(sandbox, "detect", lambda: (None, ["bwrap (bubblewrap) is not installed"]))
    with pytest.raises(sandbox.NoSandbox) as refused:
        sandbox.choose(allow_unsandboxed=False)
    message = str(refused.value)
    assert "bwrap (bubblewrap) is not installed" in message
    assert "--sb-allow-unsandboxed-code" in message and "apt-get install bubblewrap" in message
    chosen = sandbox.choose(allow_unsandboxed=True)
    assert chosen.level == "process" and "UNSANDBOXED" in chosen.describe()


def test_the_unsandboxed_level_still_limits_time_memory_and_home():
    level = sandbox.unsandboxed()
    assert level.level == "process"
    outcome = run_program(
        "import os\nassert os.environ['HOME'] == os.getcwd(), os.environ\n"
        "assert 'OPENAI_API_KEY' not in os.environ\n",
        level,
        LIMITS,
    )
    assert outcome.status == "passed", outcome
    started = time.monotonic()
    assert run_program("while True: pass\n", level, Limits(timeout=1.0)).status == "timeout"
    assert time.monotonic() - started < 3
    big = run_program("x = bytearray(10 * 1024 ** 3)\n", level, LIMITS)
    assert big.status == "memory limit"
    if level.run_as is not None:  # root: the program still runs unprivileged
        who = run_program(f"import os\nassert os.getuid() == {level.run_as}\n", level, LIMITS)
        assert who.status == "passed", who
