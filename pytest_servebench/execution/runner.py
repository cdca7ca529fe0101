"""Run one untrusted program under limits and say how it ended.

The program is written to a fresh temporary directory, which is its working and home
directory, and run by a small harness (HARNESS below) that compiles it, executes it and
writes one verdict line to stderr. Limits are set in the child before it execs the sandbox
(so they hold for the sandbox and everything it starts): CPU seconds, address space, file
size (stdout and stderr go to files, so a flood of output stops at the limit), open files,
no core dumps, and the process count. The wall clock is watched here: at the limit the whole
process group is killed (with bwrap, the sandbox's pid namespace dies with it).
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass

from .sandbox import Isolation, bwrap_command

#: Bump when the harness or the way outcomes are read changes (it keys the result cache).
RUNNER_VERSION = 1
VERDICT_MARK = "SBVERDICT "
_PASSED_CODE = 97  # os._exit(0) or sys.exit() in the program is not a pass
_TAIL_BYTES = 8192

# Statuses (the reasons a case reports), in plain words.
PASSED = "passed"
FAILED_ASSERTION = "failed assertion"
EXCEPTION = "exception"
TIMEOUT = "timeout"
MEMORY_LIMIT = "memory limit"
SYNTAX_ERROR = "syntax error"
OUTPUT_LIMIT = "output limit"
EXITED_EARLY = "exited early"
KILLED = "killed"

HARNESS = r"""
import resource, sys
# No other imports: every millisecond here is paid by each of thousands of programs.

# The process count is set here rather than before bwrap: in the sandbox's own user
# namespace it counts this sandbox's processes only. Set outside, it would also bound the
# sum over every sandbox of the uid, which the kernel releases a moment late.
nproc = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))

def verdict(status, detail=""):
    try:
        sys.stdout.flush()
    except BaseException:
        pass
    detail = " ".join(str(detail).split())[:300]
    sys.stderr.write("\nSBVERDICT %s\t%s\n" % (status, detail))
    sys.stderr.flush()

source = open("program.py", encoding="utf-8").read()
lines = source.splitlines()

def where(exc):
    tb, found = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "program.py":
            found = tb.tb_lineno
        tb = tb.tb_next
    if found is None:
        return ""
    text = lines[found - 1].strip() if 0 < found <= len(lines) else ""
    return "line %d: %s" % (found, text)

try:
    code = compile(source, "program.py", "exec")
except (SyntaxError, ValueError) as exc:
    verdict("syntax error", "%s: %s" % (type(exc).__name__, exc))
    raise SystemExit(96)
try:
    exec(code, {"__name__": "__sandbox__", "__builtins__": __builtins__})
except AssertionError as exc:
    verdict("failed assertion", (where(exc) + (" (%s)" % exc if str(exc) else "")).strip())
    raise SystemExit(98)
except MemoryError as exc:
    verdict("memory limit", where(exc))
    raise SystemExit(95)
except OSError as exc:
    status = "output limit" if exc.errno == 27 else "exception"
    verdict(status, "%s: %s %s" % (type(exc).__name__, exc, where(exc)))
    raise SystemExit(99)
except SystemExit as exc:
    verdict("exited early", "SystemExit(%r) before the tests finished" % (exc.code,))
    raise SystemExit(94)
except BaseException as exc:
    verdict("exception", "%s: %s %s" % (type(exc).__name__, str(exc)[:200], where(exc)))
    raise SystemExit(99)
verdict("passed")
raise SystemExit(97)
"""


@dataclass(frozen=True)
class Limits:
    """What one program may use. Part of the result cache key."""

    timeout: float = 10.0  # wall-clock seconds
    memory_mb: int = 1024  # address space
    max_processes: int = 64
    max_output_kb: int = 1024  # per stream (stdout, stderr)

    @property
    def cpu_seconds(self) -> int:
        return max(1, math.ceil(self.timeout))


@dataclass(frozen=True)
class Outcome:
    status: str
    detail: str
    seconds: float
    isolation: str

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    @property
    def reason(self) -> str:
        return f"{self.status}: {self.detail}" if self.detail else self.status


def _limiter(limits: Limits, isolation: Isolation):  # type: ignore[no-untyped-def]
    memory = limits.memory_mb * 1024 * 1024
    output = limits.max_output_kb * 1024
    cpu = limits.cpu_seconds

    def apply() -> None:  # in the child, between fork and exec: system calls only
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_FSIZE, (output, output))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    return apply


def _read_tail(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - _TAIL_BYTES))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _classify(
    code: int, timed_out: bool, stderr_tail: str, isolation: Isolation, limits: Limits
) -> tuple[str, str]:
    if timed_out:
        return TIMEOUT, f"killed after {limits.timeout:g}s wall clock"
    for line in reversed(stderr_tail.splitlines()):
        if line.startswith(VERDICT_MARK):
            status, _, detail = line[len(VERDICT_MARK) :].partition("\t")
            if status == PASSED and code != _PASSED_CODE:
                break  # a verdict line printed by the program itself
            return status, detail
    if code == _PASSED_CODE:
        return PASSED, ""
    signum = -code if code < 0 else code - 128 if isolation.level == "bwrap" and code > 128 else 0
    if signum == signal.SIGXCPU:
        return TIMEOUT, f"CPU time limit of {limits.cpu_seconds}s"
    if signum == signal.SIGXFSZ:
        return OUTPUT_LIMIT, f"wrote more than {limits.max_output_kb} KB"
    if signum:
        return KILLED, f"{_signal_name(signum)} (a memory limit of {limits.memory_mb} MB applies)"
    if code == 0:
        return EXITED_EARLY, "exit status 0 before the tests finished"
    last = stderr_tail.strip().splitlines()[-1:] or [""]
    if "MemoryError" in last[0]:
        return MEMORY_LIMIT, last[0][-200:]
    return EXCEPTION, f"exit status {code}: {last[0][-200:]}"


def run_program(source: str, isolation: Isolation, limits: Limits) -> Outcome:
    """Run `source` once, under `isolation` and `limits`; never raises for the program's
    behaviour (only when the machine cannot start a process at all)."""
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="sb-exec-")
    try:
        for name, text in (("program.py", source), ("harness.py", HARNESS)):
            with open(os.path.join(workdir, name), "w", encoding="utf-8") as handle:
                handle.write(text)
        if isolation.run_as is not None:
            os.chown(workdir, isolation.run_as, isolation.run_as)
        argv = ["-I", "-S", "-B", "harness.py", str(limits.max_processes)]
        if isolation.level == "bwrap":
            command = bwrap_command(_bwrap(), isolation.python, workdir, argv)
            env = {"PATH": "/usr/bin:/bin"}
        else:
            command = [isolation.python, *argv]
            env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
        extra: dict[str, object] = {}
        if isolation.run_as is not None:
            extra = {"user": isolation.run_as, "group": isolation.run_as, "extra_groups": []}
        out_path = os.path.join(workdir, ".stdout")
        err_path = os.path.join(workdir, ".stderr")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                command,
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                close_fds=True,
                start_new_session=True,  # its own process group: killed as a whole
                preexec_fn=_limiter(limits, isolation),
                **extra,  # type: ignore[arg-type]
            )
        timed_out = False
        try:
            code = proc.wait(limits.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            code = proc.wait()
        _kill_group(proc.pid)  # whatever it left behind in its group
        status, detail = _classify(code, timed_out, _read_tail(err_path), isolation, limits)
        return Outcome(status, detail, round(time.monotonic() - started, 4), isolation.level)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


_BWRAP: list[str] = []


def _bwrap() -> str:
    if not _BWRAP:
        found = shutil.which("bwrap")
        if not found:
            raise RuntimeError("bwrap disappeared after it was detected")
        _BWRAP.append(found)
    return _BWRAP[0]
