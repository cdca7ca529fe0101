"""Managed servers through the plugin: a model config with `launch` is started once per
session (in the xdist controller), its URL reaches the workers, and it is gone afterwards,
whether the session ends normally, on Ctrl-C or on SIGTERM. Uses the mock server as the
launched command, so these run everywhere."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_launcher import gone, wait_gone

from conftest import DEMO_DATA, write_suite

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

LAUNCHED = """\
kind: model
type: openai-chat
base_url: http://{{host}}:{{port}}/v1
model: mock-model
stream: {stream}
max_concurrency: 4
retries: 0
generation_kwargs:
  temperature: 0
  max_tokens: 64
launch:
  command: ["{{python}}", -m, pytest_servebench.testing.mockserver, --port, "{{port}}",
            --dataset, {dataset}, --p-correct, "0.6", --seed, "1"{extra}]
  startup_timeout: 30
  stop_grace: 5
"""


def launched_suite(
    root: Path, name: str = "fake_launched", stream: bool = False, extra: list[str] = ()
) -> Path:
    tail = "".join(f", {json.dumps(x)}" for x in extra)
    text = LAUNCHED.format(
        stream=str(stream).lower(), dataset=json.dumps(str(DEMO_DATA)), extra=tail
    )
    return write_suite(root, name, text, kind="models")


def args(model: str = "fake_launched", *extra: str) -> list[str]:
    return ["--sb-models", model, "--sb-datasets", "demo_gsm8k", "--sb-work-dir", "out", *extra]


def server_logs(root: Path, model: str = "fake_launched") -> list[Path]:
    return sorted((root / "out").glob(f"*/logs/{model}-server.log"))


def server_pids(log: Path) -> list[int]:
    return [
        int(line.split("=== pid ")[1].split(",")[0])
        for line in log.read_text().splitlines()
        if line.startswith("=== pid ")
    ]


def test_launched_server_serves_the_run_and_is_stopped(pytester):
    launched_suite(pytester.path)
    result = pytester.runpytest_subprocess(*args("fake_launched", "--sb-limit", "10"))
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 10, result.stdout.str()
    assert "errors" not in outcomes and "error" not in outcomes
    (log,) = server_logs(pytester.path)
    text = log.read_text()
    assert "mock OpenAI server listening" in text
    assert "stopped fake_launched" in text
    (pid,) = server_pids(log)
    assert wait_gone(pid)


def test_launched_server_under_xdist_is_started_once_in_the_controller(pytester):
    pytest.importorskip("xdist")
    launched_suite(pytester.path)
    launched_suite(pytester.path, "fake_launched_stream", stream=True)
    result = pytester.runpytest_subprocess(
        "--sb-models",
        "fake_launched",
        "fake_launched_stream",
        "--sb-datasets",
        "demo_gsm8k",
        "--sb-work-dir",
        "out",
        "--sb-limit",
        "6",
        "-n",
        "2",
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 12, result.stdout.str()
    for model in ("fake_launched", "fake_launched_stream"):
        (log,) = server_logs(pytester.path, model)  # one log: no worker started its own
        (pid,) = server_pids(log)
        assert wait_gone(pid)


def test_collect_only_and_eval_mode_start_no_server(pytester):
    launched_suite(pytester.path)
    result = pytester.runpytest_subprocess(*args("fake_launched", "--collect-only"))
    assert result.ret == 0
    assert server_logs(pytester.path) == []
    result = pytester.runpytest_subprocess(*args("fake_launched", "--sb-mode", "eval"))
    assert server_logs(pytester.path) == []


def test_launch_failure_is_one_clear_error(pytester):
    write_suite(
        pytester.path,
        "broken_launched",
        """\
kind: model
base_url: http://{host}:{port}/v1
model: m
launch:
  command: ["{python}", -c, "print('cannot load weights.gguf'); raise SystemExit(7)"]
""",
        kind="models",
    )
    result = pytester.runpytest_subprocess(*args("broken_launched"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "could not start the server of model 'broken_launched'" in err
    assert "exited with code 7" in err
    assert "cannot load weights.gguf" in err
    assert "Traceback" not in err + result.stdout.str()


def test_launch_null_uses_the_given_url(pytester, gsm8k_server):
    launched_suite(pytester.path)
    result = pytester.runpytest_subprocess(
        *args(
            "fake_launched",
            "--sb-limit",
            "3",
            "--sb-set",
            "fake_launched.launch=null",
            "--sb-set",
            f"fake_launched.base_url={gsm8k_server.base_url}",
        )
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 3
    assert server_logs(pytester.path) == []


@pytest.mark.parametrize(
    ("sig", "xdist"),
    [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["sigint", "sigterm", "sigint-xdist"],
)
def test_killing_the_session_leaves_no_server(pytester, sig, xdist):
    """Ctrl-C (SIGINT) or SIGTERM while requests are in flight: the server goes too."""
    if xdist:
        pytest.importorskip("xdist")
    launched_suite(pytester.path, extra=["--latency", "60"])
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args()]
    if xdist:
        cmd += ["-n", "2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.Popen(
        cmd,
        cwd=pytester.path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        pid = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and pid is None:
            logs = server_logs(pytester.path)
            if logs and "listening" in logs[0].read_text() and server_pids(logs[0]):
                pid = server_pids(logs[0])[0]
            elif proc.poll() is not None:
                break
            time.sleep(0.1)
        assert pid is not None, proc.communicate()[0] if proc.poll() is not None else "no server"
        time.sleep(1.0)  # let the session reach its first (60 s) request
        assert not gone(pid)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert wait_gone(pid), out
    if sig == signal.SIGINT:
        assert proc.returncode == pytest.ExitCode.INTERRUPTED, out


def test_a_resumed_run_with_every_answer_saved_starts_no_server(pytester):
    launched_suite(pytester.path)
    first = pytester.runpytest_subprocess(*args("fake_launched", "--sb-limit", "5"))
    counts = first.parseoutcomes()
    (log,) = server_logs(pytester.path)
    assert len(server_pids(log)) == 1
    again = pytester.runpytest_subprocess(
        *args("fake_launched", "--sb-limit", "5", "--sb-reuse", "latest")
    )
    assert again.parseoutcomes() == counts  # the same verdicts, from the saved answers
    assert "fake_launched: every case has a saved answer" in again.stdout.str()
    (log,) = server_logs(pytester.path)
    assert len(server_pids(log)) == 1  # no second server
    # One more case than was answered: the server is needed, and started.
    more = pytester.runpytest_subprocess(
        *args("fake_launched", "--sb-limit", "6", "--sb-reuse", "latest")
    )
    assert sum(more.parseoutcomes().get(k, 0) for k in ("passed", "failed")) == 6
    assert len(server_pids(log)) == 2


CRASHING_SERVER = """\
import http.server, json, os, signal, sys

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # the readiness probe: /v1/models
        body = json.dumps({"data": [{"id": "m"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # like llama.cpp's AMX kernels: die on the first request
        print("ggml_backend_amx_mul_mat: about to fail", flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)

    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
print("crashing server listening", flush=True)
server.serve_forever()
"""


@pytest.mark.parametrize("xdist", [False, True], ids=["one-process", "xdist"])
def test_a_server_that_crashes_is_named_as_crashed_not_unreachable(pytester, xdist):
    if xdist:
        pytest.importorskip("xdist")
    script = pytester.path / "crashing_server.py"
    script.write_text(CRASHING_SERVER)
    write_suite(
        pytester.path,
        "crashing_launched",
        f"""\
kind: model
base_url: http://{{host}}:{{port}}/v1
model: m
retries: 1
retry_backoff: 0.1
launch:
  command: ["{{python}}", {json.dumps(str(script))}, "{{port}}"]
  startup_timeout: 30
""",
        kind="models",
    )
    extra = ["-n", "2"] if xdist else []
    result = pytester.runpytest_subprocess(*args("crashing_launched", "--sb-limit", "5", *extra))
    out = result.stdout.str()
    aborted = next(line for line in out.splitlines() if line.startswith("aborted:"))
    assert "the server for crashing_launched crashed (SIGSEGV) on the first request" in aborted
    assert "its log: " in aborted and "crashing_launched-server.log" in aborted
    assert "ggml_backend_amx_mul_mat: about to fail" in out  # the log's last lines
    assert "not reachable" not in aborted and "Is it running" not in aborted
    assert "resume: pytest" in out
    assert result.ret not in (0, pytest.ExitCode.INTERNAL_ERROR)
    summary = json.loads(next((pytester.path / "out").glob("*/summary/summary_*.json")).read_text())
    assert "crashed (SIGSEGV) on the first request" in summary["aborted"]
    (log,) = server_logs(pytester.path, "crashing_launched")
    assert all(wait_gone(pid) for pid in server_pids(log))
