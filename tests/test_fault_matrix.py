"""The fault matrix: every way a run can end, end to end.

Each row runs pytest in a subprocess against a fault-injecting mock server on loopback and
checks what an outside observer sees: the summary (partial, with its reason), the resume
command, the documented exit status (the same with and without -n), the files on disk, the
number of requests the server saw, and that no INTERNALERROR or traceback of ours is shown.

Exit statuses (docs/faults.md, "How a run ends"): 0 all passed; 1 a case failed or errored, or the run
was cut short (endpoint down, fatal status, engine process gone, disk full); 2 interrupted
by the user (Ctrl-C, SIGTERM); 4 unusable input (options, configs, data, work dir)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    completion_requests,
    eval_args,
    stable,
    summary_json,
    write_jsonl,
    write_suite,
)

from pytest_servebench.testing.mockserver import MockServer, dataset_responder

FAST = [
    "--sb-set",
    "vllm_chat.retry_backoff=0.01",
    "--sb-set",
    "vllm_chat.retry_backoff_max=0.05",
]
DIST = [pytest.param([], id="1proc"), pytest.param(["-n", "2"], id="xdist")]


def sb(url: str, *extra: str, dataset: str = "demo_gsm8k", cache: bool = False) -> list[str]:
    cacheless = [] if cache else ["-p", "no:cacheprovider"]
    return [*cacheless, *eval_args(url, dataset, *extra, model="mock-model")]


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*args, timeout=120)


def popen(pytester: pytest.Pytester, args: list[str]) -> subprocess.Popen:
    """pytest in a process group of its own, signalled as a terminal or a CI runner does."""
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", *args],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def records(pytester: pytest.Pytester) -> list[dict]:
    runs = sorted((pytester.path / "out").iterdir())
    path = runs[-1] / "predictions" / "vllm_chat" / "demo_gsm8k.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def saved_ok(pytester: pytest.Pytester) -> set[tuple[str, int]]:
    return {(r["case"], r["sample"]) for r in records(pytester) if r["ok"]}


def assert_ended_well(out: str, *, partial: bool, reason: str | None = None) -> dict | None:
    """The run ended with our summary, and no traceback of ours."""
    assert "INTERNALERROR" not in out
    assert "Traceback (most recent call last)" not in out
    assert "servebench summary" in out
    if partial:
        assert "resume: pytest" in out and "--sb-reuse=" in out
    if reason is not None:
        assert out.count(f"aborted: {reason}") == 1, out
    return None


def wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


class Killer:
    """Stops a mock server from outside its loop and keeps its port bound (not listening):
    connections are refused as from a dead server, and no other test's server can take the
    port while this one is "down" (tests run in parallel)."""

    def __init__(self) -> None:
        self.server: MockServer | None = None
        self.hold: socket.socket | None = None
        self.done = threading.Event()

    def kill(self) -> None:
        def stop() -> None:
            assert self.server is not None
            port = self.server.port
            self.server.stop()
            hold = socket.socket()
            hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            hold.bind(("127.0.0.1", port))
            self.hold = hold
            self.done.set()

        threading.Thread(target=stop).start()

    def release(self) -> int:
        """Free the port for a server that comes back; returns it."""
        self.done.wait(10)
        assert self.hold is not None
        port = self.hold.getsockname()[1]
        self.hold.close()
        return port


def gsm8k(demo_records: list[dict], **kwargs):
    return stable(dataset_responder(demo_records, p_correct=0.6, seed=1, **kwargs))


# -- the endpoint goes away ---------------------------------------------------------------


@pytest.mark.parametrize("dist", DIST)
def test_server_killed_mid_run_stops_once_and_resume_sends_only_the_rest(
    pytester, demo_records, dist
):
    answer = gsm8k(demo_records)
    killer = Killer()
    seen = []

    def responder(request):
        seen.append(1)
        if len(seen) == 12:
            killer.kill()
        return answer(request)

    srv = killer.server = MockServer(responder, latency=0.02).start()
    args = sb(srv.base_url, "--sb-set=vllm_chat.max_concurrency=4", *FAST, *dist)
    start = time.monotonic()
    result = run(pytester, *args)
    elapsed = time.monotonic() - start
    port = killer.release()
    out = result.stdout.str()
    assert_ended_well(out, partial=True, reason="the server for model 'vllm_chat' stopped")
    assert result.ret == 1
    assert elapsed < 30  # not one connect error per case, retried (97 s before)
    # at most the requests in flight when it died (C=4) end as connection errors, not one per
    # case; each error item is listed once in the short summary (and once more in ERRORS)
    connect_errors = [
        line for line in out.splitlines() if line.startswith("ERROR ") and "cannot connect" in line
    ]
    assert len(connect_errors) <= 4
    summary = summary_json(pytester.path / "out")
    assert summary["aborted"] and not summary["interrupted"]
    saved = saved_ok(pytester)
    assert 8 <= len(saved) <= 16
    # resume against the server back on the same port: only what was not saved is sent
    with MockServer(answer, port=port) as again:
        resumed = run(pytester, *args, "--sb-reuse=latest")
        assert completion_requests(again) == 50 - len(saved)
    assert summary_json(pytester.path / "out")["tasks"][0]["complete"]
    assert resumed.ret == 1  # wrong answers remain failures
    assert len(saved_ok(pytester)) == 50


@pytest.mark.parametrize("dist", DIST)
def test_credentials_rejected_part_way_ends_with_summary(pytester, demo_records, dist):
    count = []

    def fault(request, attempt):
        count.append(1)
        return "401" if len(count) > 10 else None

    with MockServer(gsm8k(demo_records), faults=fault, latency=0.01) as srv:
        result = run(pytester, *sb(srv.base_url, "--sb-set=vllm_chat.max_concurrency=2"), *dist)
        sent = completion_requests(srv)
    out = result.stdout.str()
    assert_ended_well(out, partial=True, reason="the server at")
    assert "rejected the credentials" in out
    assert result.ret == 1
    assert sent <= 10 + 2  # what was in flight, no retries of a 401
    assert len(saved_ok(pytester)) == 10
    summary = summary_json(pytester.path / "out")
    assert summary["tasks"][0]["counts"]["evaluated"] >= 10


def test_model_name_404_stops_once(pytester, demo_records):
    with MockServer(gsm8k(demo_records)) as srv:
        srv.model_name = "other"
        result = run(
            pytester,
            *sb(srv.base_url.replace("/v1", "/v2"), "--sb-set=vllm_chat.max_concurrency=4"),
        )
        sent = completion_requests(srv)
    out = result.stdout.str()
    assert_ended_well(out, partial=True, reason="the server at")
    assert "HTTP 404" in out and result.ret == 1
    assert sent <= 4  # the first requests in flight, not one per case
    assert result.parseoutcomes().get("errors", 0) <= 4


# -- our own side fails ----------------------------------------------------------------------


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _engine_children(marker: str) -> list[int]:
    """Engine processes started under a pytest whose command line holds `marker` (their
    parent, or under xdist their grandparent; Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"pytest_servebench.engine.child" not in (entry / "cmdline").read_bytes():
                continue
            pid = int(entry.name)
            for _ in range(3):
                pid = _ppid(pid)
                if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(int(entry.name))
                    break
        except (OSError, ValueError, IndexError):
            continue
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("dist", DIST)
def test_engine_process_killed_ends_with_summary(pytester, demo_records, dist):
    answer = gsm8k(demo_records)
    marker = f"--sb-work-dir={pytester.path / 'out'}"
    killed = []

    def responder(request):
        if len(killed) == 0 and completion_count[0] >= 10:
            for pid in _engine_children(marker):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        completion_count[0] += 1
        return answer(request)

    completion_count = [0]
    with MockServer(responder, latency=0.02) as srv:
        args = [a if a != "--sb-work-dir=out" else marker for a in sb(srv.base_url)]
        result = run(pytester, *args, "--sb-set=vllm_chat.max_concurrency=2", *dist)
    out = result.stdout.str()
    assert killed, "no engine process found"
    assert_ended_well(out, partial=True, reason="the engine process stopped unexpectedly")
    assert result.ret == 1
    assert 5 <= len(saved_ok(pytester)) < 50


def test_full_disk_aborts_instead_of_hanging(pytester, demo_records, tmp_path_factory):
    if os.geteuid() != 0 or not sys.platform.startswith("linux"):
        pytest.skip("mounting a small tmpfs needs root on Linux")
    mount = tmp_path_factory.mktemp("tiny")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {made.stderr!r}")
    try:
        long = "x " * 1500 + "answer: 1"  # ~3 KB a prediction: the disk fills part-way
        with MockServer(lambda r: long) as srv:
            args = [
                a if a != "--sb-work-dir=out" else f"--sb-work-dir={mount}"
                for a in sb(srv.base_url)
            ]
            start = time.monotonic()
            result = run(pytester, *args)
            elapsed = time.monotonic() - start
        out = result.stdout.str()
        assert "INTERNALERROR" not in out and "Traceback (most recent" not in out
        assert "Logging error" not in result.stderr.str()
        assert out.count("aborted: cannot save predictions") == 1
        assert "No space left on device" in out
        assert "resume: pytest" in out
        assert result.ret == 1
        assert elapsed < 60
        predictions = next(mount.glob("*/predictions/vllm_chat/demo_gsm8k.jsonl"))
        lines = [json.loads(x) for x in predictions.read_text().splitlines() if x.endswith("}")]
        assert 0 < len(lines) < 50
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_read_only_work_dir_is_a_usage_error(pytester, tmp_path_factory):
    if os.geteuid() != 0 or not sys.platform.startswith("linux"):
        pytest.skip("mounting a read-only tmpfs needs root on Linux")
    mount = tmp_path_factory.mktemp("ro")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(mount)])
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs")
    try:
        args = [a.replace("=out", f"={mount}") for a in sb("http://127.0.0.1:9/v1")]
        result = run(pytester, *args)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == 4 and "Read-only file system" in out and "--sb-work-dir" in out
    assert "INTERNALERROR" not in out and "Traceback" not in out


def test_unwritable_work_dir_is_a_usage_error(pytester, demo_records):
    (pytester.path / "afile").write_text("")
    result = run(pytester, *[a.replace("=out", "=afile/x") for a in sb("http://127.0.0.1:9/v1")])
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == 4
    assert "cannot write the work dir" in out and "--sb-work-dir" in out
    assert "INTERNALERROR" not in out and "Traceback" not in out


def test_second_run_on_a_work_dir_is_refused_and_nothing_is_sent_twice(pytester, demo_records):
    answer = gsm8k(demo_records)
    gate = threading.Event()

    def held(request):  # the first run stays in flight until the second has been refused
        gate.wait(60)
        return answer(request)

    with MockServer(held) as srv:
        args = sb(srv.base_url, "--sb-set=vllm_chat.max_concurrency=2", "--sb-limit=20")
        first = popen(pytester, args)
        try:
            wait_until(lambda: completion_requests(srv) >= 1, timeout=60)
            second = run(pytester, *args, "--sb-reuse=latest")
            assert first.poll() is None  # refused while the first ran
        finally:
            gate.set()
        out, _ = first.communicate(timeout=60)
        sent = completion_requests(srv)
        text = second.stdout.str() + second.stderr.str()
        assert second.ret == 4
        assert "is in use by pid" in text and "INTERNALERROR" not in text
        assert first.returncode == 1 and "INTERNALERROR" not in out
        assert sent == 20
        # the lock is gone with its run: a later resume works and sends nothing
        again = run(pytester, *args, "--sb-reuse=latest")
        assert completion_requests(srv) == 20
    assert again.ret == 1 and "in use" not in again.stdout.str()


def test_stale_lock_of_a_killed_run_is_not_in_the_way(pytester, demo_records):
    with MockServer(gsm8k(demo_records), latency=0.05) as srv:
        args = sb(srv.base_url, "--sb-set=vllm_chat.max_concurrency=2", "--sb-limit=10")
        first = popen(pytester, args)
        wait_until(lambda: completion_requests(srv) >= 2)
        first.kill()
        first.wait(10)
        lock = next((pytester.path / "out").glob("*/.lock"))
        assert f"pid {first.pid}" in lock.read_text()
        result = run(pytester, *args, "--sb-reuse=latest")
    assert result.ret == 1 and summary_json(pytester.path / "out")["tasks"][0]["complete"]


# -- the user stops the run -----------------------------------------------------------------


@pytest.mark.parametrize("dist", DIST)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_work_prints_partial_summary_and_resumes(pytester, demo_records, sig, dist):
    answer = gsm8k(demo_records)
    with MockServer(answer, latency=0.3) as srv:  # ~8 s of work: the signal comes mid-run
        args = sb(srv.base_url, "--sb-set=vllm_chat.max_concurrency=2", *dist)
        proc = popen(pytester, args)
        wait_until(lambda: completion_requests(srv) >= 8)
        os.killpg(proc.pid, sig)  # pytest, its engine process and xdist's workers
        out, _ = proc.communicate(timeout=30)
        assert_ended_well(out, partial=True)
        assert proc.returncode == 2
        assert ("SIGTERM" in out) == (sig == signal.SIGTERM)
        summary = summary_json(pytester.path / "out")
        assert summary["interrupted"] is True and not summary["aborted"]
        saved = saved_ok(pytester)
        assert 8 - 2 <= len(saved) < 50  # the 2 in flight (C=2) may be dropped
        before = completion_requests(srv)
        srv.latency = 0.0
        resumed = run(pytester, *args, "--sb-reuse=latest")
        assert completion_requests(srv) - before == 50 - len(saved)
    assert resumed.ret == 1 and summary_json(pytester.path / "out")["tasks"][0]["complete"]


# -- evaluators -----------------------------------------------------------------------------

EVALUATORS = """
import time

def raises(output, reference):
    if "Paris" in output:
        raise ValueError("my evaluator broke on " + output)
    return output.strip() == reference

def yes(output, reference):
    return "yes"

def nan(output, reference):
    return float("nan")

def hang(output, reference):
    time.sleep(3600)
"""


def _capitals(pytester: pytest.Pytester, evaluator: str) -> None:
    pytester.makepyfile(grading=EVALUATORS)
    rows = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Peru", "Lima")]
    write_jsonl(
        pytester.path / "datasets" / "caps.jsonl",
        [{"question": f"Capital of {c}?", "answer": a} for c, a in rows],
    )
    write_suite(pytester.path, "caps", f"path: caps.jsonl\nevaluator: {evaluator}\n")


def _capital(request) -> str:
    for country, city in (("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid")):
        if country in request.prompt_text:
            return city
    return "Quito"


@pytest.mark.parametrize("dist", DIST)
def test_evaluator_that_raises_is_that_case_error_with_the_users_traceback(pytester, dist):
    _capitals(pytester, '{type: "grading.py:raises"}')
    with MockServer(_capital) as srv:
        result = run(pytester, *sb(srv.base_url, dataset="caps"), *dist)
        assert completion_requests(srv) == 4
    out = result.stdout.str()
    assert "INTERNALERROR" not in out and "RuntimeError" not in out
    assert "my evaluator broke on Paris" in out
    assert 'grading.py", line' in out  # the user's frame
    assert result.ret == 1
    task = summary_json(pytester.path / "out")["tasks"][0]
    assert task["complete"] and task["counts"]["errors"] == 1
    assert task["counts"]["passed"] == 2 and task["counts"]["failed"] == 1


@pytest.mark.parametrize("name", ["yes", "nan"])
def test_evaluator_invalid_return_says_what_is_allowed(pytester, name):
    _capitals(pytester, f'{{type: "grading.py:{name}"}}')
    with MockServer(_capital) as srv:
        result = run(pytester, *sb(srv.base_url, dataset="caps"))
    out = result.stdout.str()
    assert "must return True/False, a finite number" in out
    assert "INTERNALERROR" not in out and result.ret == 1
    assert summary_json(pytester.path / "out")["tasks"][0]["counts"]["errors"] == 4


def test_evaluator_that_hangs_is_cut_by_its_time_limit(pytester):
    _capitals(pytester, '{type: "grading.py:hang", time_limit: 0.5}')
    with MockServer(_capital) as srv:
        start = time.monotonic()
        result = run(pytester, *sb(srv.base_url, dataset="caps"))
        elapsed = time.monotonic() - start
    out = result.stdout.str()
    assert "did not return within its time limit of 0.5s" in out
    assert "was not called: it timed out" in out  # the 4th case: no more waiting
    assert elapsed < 20 and result.ret == 1
    assert summary_json(pytester.path / "out")["tasks"][0]["counts"]["errors"] == 4


def test_ctrl_c_inside_a_hanging_evaluator_ends_at_once_with_summary(pytester):
    _capitals(pytester, '{type: "grading.py:hang", time_limit: 3600}')
    with MockServer(_capital) as srv:
        proc = popen(pytester, sb(srv.base_url, dataset="caps"))
        wait_until(lambda: completion_requests(srv) == 4)
        time.sleep(1.0)  # the first case is inside the evaluator
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert time.monotonic() - start < 10  # not re-judged (and hung again) at the summary
    assert_ended_well(out, partial=False)
    assert proc.returncode == 2
    summary = summary_json(pytester.path / "out")
    assert summary["interrupted"] is True
    # every case is in the summary, judged from the store without calling the evaluator again
    assert summary["tasks"][0]["counts"]["errors"] == 4


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "has no records"),
        (
            b'{"question": "q", "answer": "a"}\n{"question": "caf\xe9", "answer": "b"}\n',
            ":2: not UTF-8",
        ),
    ],
    ids=["empty", "latin1"],
)
def test_bad_data_file_is_one_clear_message(pytester, content, expected):
    (pytester.path / "qa.jsonl").write_bytes(content)
    result = run(pytester, *sb("http://127.0.0.1:9/v1", dataset="qa.jsonl"))
    text = result.stdout.str() + result.stderr.str()
    assert result.ret == 4 and expected in text
    assert "INTERNALERROR" not in text and "Traceback" not in text


@pytest.mark.parametrize(
    "override",
    [
        "vllm_chat.read_timeout=0",
        "vllm_chat.connect_timeout=-1",
        "vllm_chat.request_timeout=0",
        "vllm_chat.max_concurrency=0",
        "vllm_chat.retries=-1",
        "vllm_chat.generation_kwargs.num_return_sequences=0",
    ],
)
def test_impossible_values_name_the_option_that_set_them(pytester, override):
    result = run(pytester, *sb("http://127.0.0.1:9/v1"), f"--sb-set={override}")
    text = result.stdout.str() + result.stderr.str()
    assert result.ret == 4
    assert f"--sb-set {override}:" in text
    assert "vllm_chat.yaml:" not in text  # not the built-in file's line


def test_impossible_value_in_a_config_file_names_its_line(pytester):
    write_suite(
        pytester.path,
        "my_model",
        "type: openai-chat\nbase_url: http://127.0.0.1:9/v1\nread_timeout: 0\n",
        kind="models",
    )
    result = run(pytester, "--sb-models=my_model", "--sb-datasets=demo_gsm8k")
    text = result.stdout.str() + result.stderr.str()
    assert result.ret == 4
    assert "my_model.yaml:3: read_timeout must be a number of seconds above 0" in text


# -- resume ---------------------------------------------------------------------------------


def test_k_samples_resume_resends_only_the_failed_samples(pytester, demo_records):
    k = 3
    # The mock numbers repeats of one body 0, 1, 2: failing attempt 1 fails one sample of
    # every other case, for good (no retries).
    failing = {r["question"] for r in demo_records[::2]}

    def fault(request, attempt):
        hit = any(q in request.prompt_text for q in failing)
        return "500" if hit and attempt == 1 else None

    args = sb(
        "URL",
        f"--sb-set=vllm_chat.generation_kwargs.num_return_sequences={k}",
        "--sb-set=vllm_chat.retries=0",
        "--sb-set=vllm_chat.max_concurrency=1",
    )
    with MockServer(gsm8k(demo_records), faults=fault) as srv:
        args = [a.replace("URL", srv.base_url) for a in args]
        first = run(pytester, *args)
        assert completion_requests(srv) == 50 * k
        assert len(saved_ok(pytester)) == 50 * k - len(failing)
        assert first.parseoutcomes()["errors"] == len(failing)
        srv.faults = None
        before = completion_requests(srv)
        run(pytester, *args, "--sb-reuse=latest")
        assert completion_requests(srv) - before == len(failing)  # was 3 per case
    assert len(saved_ok(pytester)) == 50 * k
    task = summary_json(pytester.path / "out")["tasks"][0]
    assert task["complete"] and task["counts"]["errors"] == 0


def test_last_failed_merges_new_overrides_with_the_remembered_ones(pytester, demo_records):
    bad = {r["question"] for r in demo_records[:4]}

    def fault(request, attempt):
        return "500" if any(q in request.prompt_text for q in bad) else None

    with MockServer(gsm8k(demo_records), faults=fault) as srv:
        args = sb(srv.base_url, "--sb-set=vllm_chat.retries=0", cache=True)
        first = run(pytester, *args, "--sb-set=vllm_chat.generation_kwargs.max_tokens=256")
        assert first.parseoutcomes()["errors"] == 4
        srv.faults = None
        before = completion_requests(srv)
        again = run(pytester, "--lf", f"--sb-set=vllm_chat.base_url={srv.base_url}")
        assert completion_requests(srv) - before == 4  # only the errors; wrong answers re-scored
    snapshot = sorted((pytester.path / "out").glob("*/configs/run_*.json"))[-1]
    kwargs = json.loads(snapshot.read_text())["models"]["vllm_chat"]["generation_kwargs"]
    assert kwargs["max_tokens"] == 256
    assert summary_json(pytester.path / "out")["tasks"][0]["complete"]
    assert again.ret == 1


# -- nothing secret, nothing raw ------------------------------------------------------------


def test_planted_url_credentials_appear_in_no_output(pytester, demo_records):
    pytest.importorskip("pytest_html")
    secret, query_secret = "PlantedPass42", "PlantedQueryKey77"
    answer = gsm8k(demo_records)
    killer = Killer()
    seen = []

    def responder(request):
        seen.append(1)
        if len(seen) == 5:
            killer.kill()
        return answer(request)

    srv = killer.server = MockServer(responder, latency=0.02).start()
    url = f"http://user:{secret}@127.0.0.1:{srv.port}/v1?api_key={query_secret}"
    args = sb(url, "--sb-set=vllm_chat.max_concurrency=2", *FAST)
    result = run(pytester, *args, "--html=report.html", "--self-contained-html")
    killer.release()
    out = result.stdout.str() + result.stderr.str()
    assert "servebench summary" in out and "aborted:" in out
    for planted in (secret, query_secret):
        assert planted not in out
        for path in pytester.path.rglob("*"):
            if path.is_file():
                assert planted.encode() not in path.read_bytes(), path


def test_a_query_in_base_url_stays_after_the_request_path(pytester):
    with MockServer(lambda request: "answer: 7") as srv:
        result = run(pytester, *sb(f"{srv.base_url}?api_key=PlantedKey99", "--sb-limit=3"))
        assert completion_requests(srv) == 3
    assert result.ret == 1 and result.parseoutcomes().get("failed") == 3  # answered, judged
    assert "PlantedKey99" not in result.stdout.str()


@pytest.mark.parametrize("verbose", [[], ["-v"]], ids=["compact", "verbose"])
def test_control_characters_from_the_model_never_reach_the_terminal(pytester, verbose):
    nasty = "\x1b[2J\x1b]0;pwned\x07\x00\r\u202e answer: 7\x1b[0m"
    with MockServer(lambda request: nasty) as srv:
        result = run(pytester, *sb(srv.base_url, "--sb-limit=2"), *verbose)
    out = result.stdout.str()
    assert result.ret == 1 and "servebench summary" in out
    for raw in ("\x1b[2J", "\x1b]0", "\x07", "\x00", "\u202e", "\x1b[0m"):
        assert raw not in out
    if verbose:  # the output is shown, its controls escaped
        assert "wrong answer" in out and "\\x1b[2J" in out
