"""Which isolation this machine offers untrusted programs, found out by trying it once.

Two levels:

* ``bwrap``: bubblewrap puts each program in new user, pid, network, ipc and uts namespaces,
  with the system's ``/usr`` read-only, a private ``/tmp``, its own directory as home and
  nothing else of the file system (no home, no work dir). Inside a new user namespace
  ``RLIMIT_NPROC`` counts that sandbox's processes only, so a fork bomb stops at the limit.
  Root ignores ``RLIMIT_NPROC``: when we run as root the sandbox starts as an unprivileged
  uid (65534), which also keeps root's files out of reach.
* ``process``: no namespaces. A separate process in its own session with the same resource
  limits, a scrubbed environment and HOME in its temporary directory; it can still reach
  the network and every file its uid can read. Used only when the user opts in.

Detection runs a probe program under the exact command a real run uses, so a bwrap that is
installed but cannot create namespaces (a container without user namespaces) is reported as
unusable, with its own error, instead of failing every program later.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

#: The uid/gid a sandbox runs as when we are root (root ignores RLIMIT_NPROC).
UNPRIVILEGED_ID = 65534
# Read-only system directories the interpreter needs; absent ones are skipped.
_SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc/alternatives")
_PROBE = "import os, sys; print(os.getuid(), os.getpid(), sys.version_info[:2])"


class NoSandbox(RuntimeError):
    """No usable sandbox and the user did not allow unsandboxed execution."""


@dataclass(frozen=True)
class Isolation:
    """How programs are run here: the level, the interpreter, and what was found."""

    level: str  # "bwrap" or "process"
    python: str
    run_as: int | None  # uid the program runs as (None: ours)
    notes: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        if self.level == "bwrap":
            who = f"uid {self.run_as}" if self.run_as is not None else "our uid"
            return (
                "bwrap sandbox (user+pid+net namespaces, no network, read-only /usr, no home "
                f"or work dir; runs as {who}; rlimits cpu/as/fsize/nproc)"
            )
        who = f"; runs as uid {self.run_as}" if self.run_as is not None else ""
        return (
            "UNSANDBOXED process (own session, rlimits, scrubbed env, HOME in its temp dir"
            f"{who}; network and readable files NOT isolated)"
        )


def _system_binds() -> list[str]:
    args: list[str] = []
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def _interpreter_binds(python: str) -> list[str]:
    """The interpreter's own prefix, read-only, when it is not under /usr."""
    real = Path(python).resolve()
    prefix = real.parent.parent
    if str(real).startswith("/usr/") or str(prefix) in ("/", "/usr"):
        return []
    return ["--ro-bind", str(prefix), str(prefix)]


def bwrap_command(bwrap: str, python: str, workdir: str, argv: list[str]) -> list[str]:
    """The bubblewrap command line that runs `python argv` with `workdir` as its only
    writable directory (seen inside as /sandbox)."""
    return [
        bwrap,
        "--unshare-all",  # user, pid, net, ipc, uts, cgroup
        "--die-with-parent",  # our kill of bwrap kills the sandbox
        "--new-session",  # no TIOCSTI into a terminal
        "--cap-drop",
        "ALL",
        "--clearenv",
        "--setenv",
        "PATH",
        "/usr/bin:/bin",
        "--setenv",
        "HOME",
        "/sandbox",
        "--setenv",
        "LANG",
        "C.UTF-8",
        *_system_binds(),
        *_interpreter_binds(python),
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--bind",
        workdir,
        "/sandbox",
        "--chdir",
        "/sandbox",
        python,
        *argv,
    ]


def _candidates() -> list[str]:
    found = [sys.executable, str(Path(sys.executable).resolve())]
    for name in ("python3", "/usr/bin/python3"):
        path = shutil.which(name)
        if path:
            found.append(path)
    unique: list[str] = []
    for path in found:
        if path and path not in unique:
            unique.append(path)
    return unique


def _try(command: list[str], workdir: str, run_as: int | None) -> tuple[bool, str]:
    kwargs: dict[str, object] = {}
    if run_as is not None:
        kwargs = {"user": run_as, "group": run_as, "extra_groups": []}
    try:
        done = subprocess.run(
            command,
            cwd=workdir,
            capture_output=True,
            timeout=20,
            env={"PATH": "/usr/bin:/bin"},
            stdin=subprocess.DEVNULL,
            **kwargs,  # type: ignore[arg-type]
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    if done.returncode != 0:
        return False, (done.stderr or done.stdout).decode(errors="replace").strip()[-300:]
    return True, done.stdout.decode(errors="replace").strip()


def detect(bwrap: str | None = None) -> tuple[Isolation | None, list[str]]:
    """The best working isolation (None when bwrap is unusable) and what was tried."""
    notes: list[str] = []
    bwrap = bwrap if bwrap is not None else shutil.which("bwrap")
    if not bwrap:
        return None, ["bwrap (bubblewrap) is not installed"]
    run_as = UNPRIVILEGED_ID if os.geteuid() == 0 else None
    with tempfile.TemporaryDirectory(prefix="sb-probe-") as tmp:
        if run_as is not None:
            os.chown(tmp, run_as, run_as)
        for python in _candidates():
            command = bwrap_command(bwrap, python, tmp, ["-I", "-c", _PROBE])
            ok, said = _try(command, tmp, run_as)
            if ok:
                return Isolation("bwrap", python, run_as, tuple(notes)), notes
            notes.append(f"bwrap with {python}: {said or 'failed'}")
    return None, notes


def unsandboxed() -> Isolation:
    """The opt-in fallback: as root, still drop to an unprivileged uid when that uid can run
    an interpreter (then RLIMIT_NPROC holds and root's files are out of reach)."""
    if os.geteuid() != 0:
        return Isolation("process", sys.executable, None)
    with tempfile.TemporaryDirectory(prefix="sb-probe-") as tmp:
        os.chown(tmp, UNPRIVILEGED_ID, UNPRIVILEGED_ID)
        for python in _candidates():
            ok, _ = _try([python, "-I", "-c", _PROBE], tmp, UNPRIVILEGED_ID)
            if ok:
                return Isolation("process", python, UNPRIVILEGED_ID)
    return Isolation("process", sys.executable, None, ("running as root: no process limit",))


def choose(allow_unsandboxed: bool) -> Isolation:
    """The isolation to use, or NoSandbox saying what to do."""
    found, notes = detect()
    if found is not None:
        return found
    if allow_unsandboxed:
        return unsandboxed()
    tried = "; ".join(notes)
    raise NoSandbox(
        "refusing to run model-written code without a sandbox: "
        f"{tried}. Install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap) on a "
        "kernel that allows user namespaces, or accept the risk with "
        "--sb-allow-unsandboxed-code (the programs then run as ordinary processes that can "
        "reach the network and read your files; see docs/code-execution.md)"
    )
