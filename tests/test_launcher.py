"""Managed servers: the launch section, starting, readiness, failures, and leaving nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from pytest_servebench.catalog.config import ModelConfig, build
from pytest_servebench.errors import ConfigError
from pytest_servebench.launch.launcher import (
    Launcher,
    LaunchError,
    apply_urls,
    fill,
    free_port,
    model_file,
    package_dir,
)

MOCK = "{python} -m pytest_servebench.testing.mockserver --port {port}"


def model(launch: dict | None = None, name: str = "fake", **fields) -> ModelConfig:
    raw = {"base_url": "http://{host}:{port}/v1", "launch": {"command": MOCK, **(launch or {})}}
    raw.update(fields)
    return build(ModelConfig, name, "<test>", raw)


def gone(pid: int) -> bool:
    """No such process, or only a zombie waiting for a parent that will never reap it."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.05)
    return gone(pid)


@pytest.fixture
def launcher(tmp_path: Path):
    with Launcher(tmp_path / "logs") as launcher:
        yield launcher


# -- the launch section --------------------------------------------------------------------


def test_launch_section_is_normalized():
    m = model({"env": {"A": 1}, "port": 8123, "startup_timeout": 5})
    assert m.launch["command"] == [
        "{python}",
        "-m",
        "pytest_servebench.testing.mockserver",
        "--port",
        "{port}",
    ]
    assert m.launch["env"] == {"A": "1"}
    assert m.launch["port"] == 8123
    assert m.launch["startup_timeout"] == 5.0
    assert m.launch["ready_url"] == "{base_url}/models"
    assert m.launch["host"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("launch", "fields", "message"),
    [
        ({"comand": "x"}, {}, "did you mean command"),
        ({"command": ""}, {}, "`command` must be the server command"),
        ({"command": []}, {}, "`command` must be the server command"),
        ({"command": "a 'b"}, {}, "cannot split"),
        ({"port": "eighty"}, {}, '`port` must be "auto" or a port number'),
        ({"port": 70000}, {}, "between 1 and 65535"),
        ({"env": ["A=1"]}, {}, "`env` must map"),
        ({"env": {"PORT": {"port": None}}}, {}, 'quote placeholders: "{port}"'),
        ({"command": [{"python": None}, "-m", "x"]}, {}, "quote placeholders in the command"),
        ({"startup_timeout": -1}, {}, "`startup_timeout` must be a number of seconds"),
        ({}, {"base_url": "http://127.0.0.1:8000/v1"}, "base_url must contain {port}"),
        ({}, {"base_url": ["http://a:{port}/v1", "http://b:{port}/v1"]}, "must be one URL"),
    ],
)
def test_launch_section_errors(launch, fields, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("{", r"\{")):
        model(launch, **fields)


def test_fixed_port_needs_no_placeholder():
    m = model({"port": 8123}, base_url="http://127.0.0.1:8123/v1")
    assert m.launch["port"] == 8123


def test_launch_null_turns_it_off():
    raw = {"base_url": "http://127.0.0.1:1/v1", "launch": None}
    assert build(ModelConfig, "m", "<test>", raw).launch is None


def test_builtin_local_model_config_is_valid():
    from pytest_servebench.catalog.finder import BUILTIN_SUITES, SuiteIndex, load_configs

    index = SuiteIndex([(BUILTIN_SUITES, "built-in")])
    (m,), _ = load_configs(index, ["local_smollm2"], [], {})
    assert m.launch is not None
    assert m.max_concurrency == 1
    assert "llama_cpp" in m.launch["requires"]
    assert "{port}" in m.base_url


# -- placeholders --------------------------------------------------------------------------


def test_fill_placeholders_and_braces():
    assert fill("{host}:{port} {{x}}", {"host": "h", "port": "1"}) == "h:1 {x}"
    with pytest.raises(LaunchError, match=r"unknown placeholder \{nope\} \(known: \{host\}"):
        fill("{nope}", {"host": "h"})
    with pytest.raises(LaunchError, match="unknown placeholder"):
        fill("{what:ever}", {})


def test_package_and_model_file(tmp_path, monkeypatch):
    pkg = tmp_path / "fake_model_pkg"
    (pkg / "weights").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    (pkg / "weights" / "tiny.Q4.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert package_dir("fake_model_pkg") == pkg
    assert model_file("fake_model_pkg") == pkg / "weights" / "tiny.Q4.gguf"
    assert fill("{model_file:fake_model_pkg}", {}) == str(pkg / "weights" / "tiny.Q4.gguf")
    assert fill("{package_dir:fake_model_pkg}/x", {}) == f"{pkg}/x"
    (pkg / "other.gguf").write_bytes(b"GGUF")
    with pytest.raises(LaunchError, match="expected exactly one"):
        model_file("fake_model_pkg")
    with pytest.raises(LaunchError, match="'no_such_pkg_xyz' is not installed"):
        package_dir("no_such_pkg_xyz")


# -- starting and stopping -----------------------------------------------------------------


def test_start_auto_port_answers_and_stop_all_kills(launcher, tmp_path):
    m = model()
    url = launcher.start(m)
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
    assert "{" not in url
    server = launcher.servers["fake"]
    assert httpx.get(url + "/models", trust_env=False).status_code == 200
    assert launcher.start(m) == url  # a second start returns the running server
    log = (tmp_path / "logs" / "fake-server.log").read_text()
    assert "mock OpenAI server listening" in log
    assert f"pid {server.pid}" in log
    launcher.stop_all()
    assert wait_gone(server.pid)
    assert "stopped fake" in (tmp_path / "logs" / "fake-server.log").read_text()
    launcher.stop_all()  # idempotent
    assert launcher.servers == {}


def test_fixed_port_env_and_cwd(launcher, tmp_path):
    port = free_port()
    script = tmp_path / "srv.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys
            from pytest_servebench.testing.mockserver import main
            print("GREETING", os.environ["GREETING"], "cwd", os.getcwd(), flush=True)
            sys.exit(main(["--port", os.environ["PORT_FROM_ENV"]]))
            """
        )
    )
    m = model(
        {
            "command": ["{python}", str(script)],
            "port": port,
            "env": {"PORT_FROM_ENV": "{port}", "GREETING": "hello"},
            "cwd": str(tmp_path),
        },
        base_url=f"http://127.0.0.1:{port}/v1",
    )
    assert launcher.start(m) == f"http://127.0.0.1:{port}/v1"
    log = (tmp_path / "logs" / "fake-server.log").read_text()
    assert f"GREETING hello cwd {tmp_path}" in log


def test_start_models_rewrites_base_url_and_apply_urls(launcher):
    plain = build(ModelConfig, "plain", "<test>", {"base_url": "http://127.0.0.1:9/v1"})
    launched = model()
    urls = launcher.start_models([plain, launched])
    assert list(urls) == ["fake"]
    assert launched.base_url == urls["fake"]
    assert plain.base_url == "http://127.0.0.1:9/v1"
    # what an xdist worker does with the URLs the controller hands it
    again = model()
    apply_urls([again, plain], urls)
    assert again.base_url == urls["fake"]


def test_exits_early_error_has_log_tail_and_advice(launcher):
    m = model({"command": ["{python}", "-c", "print('model file is broken'); raise SystemExit(3)"]})
    with pytest.raises(LaunchError) as info:
        launcher.start(m)
    message = str(info.value)
    assert "exited with code 3 before it was ready" in message
    assert "model file is broken" in message
    assert "fake-server.log" in message
    assert "--sb-set fake.launch=null" in message
    assert launcher.servers == {}


def test_log_tail_is_the_last_lines_of_this_start(launcher):
    noisy = "import sys\nfor i in range(100): print('line', i)\nsys.exit(1)"
    m = model({"command": ["{python}", "-c", noisy]})
    for _ in range(2):
        with pytest.raises(LaunchError) as info:
            launcher.start(m)
    message = str(info.value)
    assert "line 99" in message and "line 70" in message
    assert "line 69\n" not in message
    assert message.count("starting fake") == 0  # the header scrolled out of the 30 lines


def test_startup_timeout_stops_the_process(launcher):
    m = model(
        {"command": ["{python}", "-c", "import time; print('loading', flush=True); time.sleep(60)"]}
    )
    m.launch["startup_timeout"] = 1.0
    started = time.monotonic()
    with pytest.raises(LaunchError, match=r"did not answer 200 within startup_timeout 1s") as info:
        launcher.start(m)
    assert time.monotonic() - started < 15
    assert "loading" in str(info.value)
    assert "launch.startup_timeout" in str(info.value)


def test_not_ready_until_ready_url_answers_200(launcher, tmp_path):
    """A server whose port is open but whose ready_url is not 200 yet is waited for."""
    m = model({"ready_url": "{base_url}/no-such-path", "startup_timeout": 1.5})
    with pytest.raises(LaunchError, match="last: HTTP 404"):
        launcher.start(m)


def test_missing_command_and_requires(launcher):
    m = model({"command": ["/no/such/server-binary"]})
    with pytest.raises(LaunchError, match="cannot start the server of model 'fake'"):
        launcher.start(m)
    m = model({"requires": ["no_such_module_xyz"], "hint": "pip install 'thing[local]'"})
    with pytest.raises(LaunchError, match=r"no_such_module_xyz, not installed.*thing\[local\]"):
        launcher.start(m)


def test_unknown_placeholder_in_command(launcher):
    m = model({"command": "{python} -m x --port {port} --model {modle}"})
    with pytest.raises(LaunchError, match=r"unknown placeholder \{modle\}.*<test>"):
        launcher.start(m)


def test_stop_kills_the_whole_process_group(launcher, tmp_path):
    """A server that forks helpers (vLLM's engine processes, say): all of them go."""
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "from pytest_servebench.testing.mockserver import main\n"
        "sys.exit(main(['--port', sys.argv[1]]))\n"
    )
    m = model({"command": ["{python}", "-c", script, "{port}"]})
    launcher.start(m)
    leader = launcher.servers["fake"].pid
    child = int(pid_file.read_text())
    assert not gone(child)
    launcher.stop_all()
    assert wait_gone(leader) and wait_gone(child)


def test_sigterm_ignored_then_killed_after_grace(launcher):
    script = (
        "import signal, sys\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "from pytest_servebench.testing.mockserver import MockServer\n"
        "import time\n"
        "server = MockServer(port=int(sys.argv[1])).start()\n"
        "print('up', flush=True)\n"
        "time.sleep(600)\n"
    )
    m = model({"command": ["{python}", "-c", script, "{port}"], "stop_grace": 0.5})
    launcher.start(m)
    pid = launcher.servers["fake"].pid
    started = time.monotonic()
    launcher.stop_all()
    assert time.monotonic() - started < 8
    assert wait_gone(pid)


# -- the process that started the server goes away ------------------------------------------

DRIVER = """
import sys, time
from pathlib import Path
from pytest_servebench.catalog.config import ModelConfig, build
from pytest_servebench.launch.launcher import Launcher

raw = {{"base_url": "http://{{host}}:{{port}}/v1",
       "launch": {{"command": {command!r}, "stop_grace": 3}}}}
m = build(ModelConfig, "fake", "<test>", raw)
launcher = Launcher(Path({logs!r}))
launcher.install_signal_handlers()
try:
    launcher.start(m)
    print("PID", launcher.servers["fake"].pid, flush=True)
    time.sleep(600)
finally:
    launcher.stop_all()
"""


def start_driver(tmp_path: Path, command: str = MOCK) -> tuple[subprocess.Popen, int]:
    code = DRIVER.format(command=command, logs=str(tmp_path / "logs"))
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline()
    assert line.startswith("PID "), line + proc.stderr.read()
    return proc, int(line.split()[1])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_to_the_starting_process_leaves_no_server(tmp_path, sig):
    proc, pid = start_driver(tmp_path)
    assert not gone(pid)
    proc.send_signal(sig)
    proc.wait(20)
    assert wait_gone(pid)
    if sig != signal.SIGINT:  # dies of the signal, as it would have without us
        assert proc.returncode == -sig


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_sigkill_of_the_starting_process_leaves_no_server(tmp_path):
    proc, pid = start_driver(tmp_path)
    proc.kill()
    proc.wait(10)
    assert wait_gone(pid)


def test_interrupt_while_waiting_for_ready_stops_the_server(tmp_path):
    slow = "{python} -c 'import time; print(\"loading\", flush=True); time.sleep(600)'"
    code = DRIVER.format(command=slow, logs=str(tmp_path / "logs"))
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    log = tmp_path / "logs" / "fake-server.log"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = log.read_text() if log.is_file() else ""
        if "loading" in text and "=== pid " in text:
            break
        time.sleep(0.05)
    pid = int(log.read_text().split("=== pid ")[1].split(",")[0])
    proc.send_signal(signal.SIGINT)
    proc.wait(20)
    assert "KeyboardInterrupt" in proc.stderr.read()
    assert wait_gone(pid)


def test_example_launch_configs_are_valid():
    """examples/launch cannot run here (GPU servers); they must at least load."""
    from pytest_servebench.catalog.finder import SuiteIndex, load_configs

    folder = Path(__file__).resolve().parent.parent / "examples" / "launch"
    index = SuiteIndex([(folder, "examples")])
    names = sorted(p.stem for p in folder.glob("*.yaml"))
    assert names == [
        "llama_server_launched",
        "sglang_launched",
        "tgi_launched",
        "vllm_launched",
    ]
    models, _ = load_configs(index, names, [], {})
    for m in models:
        assert m.launch is not None and "{port}" in " ".join(m.launch["command"]) + m.base_url
        assert fill(m.base_url, {"host": "127.0.0.1", "port": "1"}).endswith("/v1")
