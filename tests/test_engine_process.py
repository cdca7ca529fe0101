"""The engine process (process.py + child.py): the same answers as the in-thread engine,
bounded memory on pytest's side, and no lost work or hang when the child goes away."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import pytest

from pytest_servebench.catalog.config import ModelConfig
from pytest_servebench.engine.jobs import CaseJobs, CaseResult, Job, RunAborted, each_case
from pytest_servebench.engine.process import ProcessEngine
from pytest_servebench.engine.protocol import TaskSpec
from pytest_servebench.engine.wire import Done, Feed, LogLine, frame, unframe
from pytest_servebench.testing.mockserver import FaultPlan, MockServer


def test_frames_come_out_whole_however_the_bytes_arrive():
    job = Job("a", 0, 1, {"prompt": "a"}, "h", "ref")
    messages = [
        Done(1, [CaseResult("a", [{"ok": True, "content": "x" * 70_000}])]),
        LogLine(20, "n", "é"),
        Feed(1, [CaseJobs("a", [job]), CaseJobs("b", [], "no template")], True),
    ]
    stream = b"".join(frame(m) for m in messages)
    for step in (1, 3, 4096, len(stream)):
        buffer = bytearray()
        got = []
        for i in range(0, len(stream), step):
            buffer += stream[i : i + step]
            got.extend(unframe(buffer))
        assert got == messages and not buffer


def _model(url: str, **extra) -> ModelConfig:
    return ModelConfig(
        name="m",
        source="test",
        type="openai-completions",
        base_url=url,
        model="x",
        **extra,
    )


def _jobs(case_id: str) -> list[Job]:
    return [Job(case_id, 0, 1, {"prompt": case_id, "max_tokens": 8}, f"h-{case_id}")]


def _spec(model: ModelConfig, path: Path, order: list[str], build=_jobs, key="m/d") -> TaskSpec:
    return TaskSpec(key, model, path, 1, order, each_case(key, order, build))


def _answer(request) -> str:
    prompt = request.body["prompt"]
    return f"answer: {prompt[1:]}"


def test_every_case_comes_back_once_with_its_reply_saved_by_the_child(tmp_path):
    order = [f"c{i}" for i in range(300)]
    path = tmp_path / "p.jsonl"
    with MockServer(_answer) as srv:
        engine = ProcessEngine(lambda cfg: {"Authorization": "Bearer sk-secret"})
        try:
            run = engine.start(_spec(_model(srv.base_url), path, order))
            got = {cid: run.wait(cid, 20.0).records for cid in order}
        finally:
            engine.close()
        seen = dict(srv.stats.requests)
    assert all(got[cid][0]["content"] == f"answer: {cid[1:]}" for cid in order)
    assert sum(v for k, v in seen.items() if k.endswith("completions")) == 300
    saved = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(r["case"] for r in saved) == sorted(order)  # the child wrote them, once each
    p = run.progress
    assert (p.posted, p.received, p.finished, p.failed) == (300, 300, 300, 0)
    with pytest.raises(KeyError):
        run.wait("c0", 0.1)  # taken already
    assert engine._proc is None  # closed and reaped


def test_pytest_never_holds_more_than_a_window_of_finished_cases(tmp_path):
    order = [f"c{i}" for i in range(3000)]
    built: list[str] = []

    def build(case_id: str) -> list[Job]:
        built.append(case_id)
        return _jobs(case_id)

    with MockServer(_answer) as srv:
        engine = ProcessEngine(lambda cfg: {})
        try:
            model = _model(srv.base_url, max_concurrency=16)
            run = engine.start(_spec(model, tmp_path / "p", order, build))
            assert run.window == 1024
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and len(run._done) < run.window:
                engine.pump(0.2)  # pytest is busy elsewhere: nothing is taken
            held = len(run._done) + run.in_child
            time.sleep(0.5)
            engine.pump(0.0)
            # Feeding stops once a window of finished cases waits: what is held stays put,
            # below two windows (one finished, one in the child), however long the dataset.
            assert len(run._done) + run.in_child == held <= 2 * run.window
            assert len(built) == run.pulled == held  # nothing more was pulled, nor built
            got = [run.wait(cid, 20.0) for cid in order]  # taking them lets the rest through
        finally:
            engine.close()
    assert all(r.records[0]["ok"] for r in got) and built == order


def test_a_case_whose_request_cannot_be_built_fails_alone(tmp_path):
    def make_jobs(case_id: str) -> list[Job]:
        if case_id == "b":
            raise ValueError("no template")
        return _jobs(case_id)

    with MockServer(_answer) as srv:
        engine = ProcessEngine(lambda cfg: {})
        try:
            run = engine.start(
                _spec(_model(srv.base_url), tmp_path / "p", ["a", "b", "c"], make_jobs)
            )
            got = {cid: run.wait(cid, 10.0).records for cid in ("a", "b", "c")}
        finally:
            engine.close()
    assert got["a"][0]["ok"] and got["c"][0]["ok"]
    assert not got["b"][0]["ok"] and "no template" in got["b"][0]["error"]


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_a_case_the_iterator_never_gives_fails_instead_of_hanging(tmp_path, kind):
    from pytest_servebench.session.tasks import make_engine

    def broken(order: list[str]):
        yield CaseJobs("a", _jobs("a"))
        raise RuntimeError("the dataset broke")  # b and c are never given

    with MockServer(_answer) as srv:
        engine = make_engine(kind, lambda cfg: {}, tmp_path / "logs")
        try:
            order = ["a", "b", "c"]
            spec = TaskSpec("m/d", _model(srv.base_url), tmp_path / "p", 1, order, broken(order))
            run = engine.start(spec)
            got = {cid: run.wait(cid, 10.0) for cid in order}
        finally:
            engine.close()
    assert got["a"].records[0]["ok"]
    for cid in ("b", "c"):
        (record,) = got[cid].records
        assert not record["ok"] and "no request was built" in record["error"]


def test_a_dead_child_fails_what_is_left_and_keeps_what_finished(tmp_path):
    path = tmp_path / "p.jsonl"
    order = [f"c{i}" for i in range(40)]

    def stall_all_but_c0(request, attempt):
        return None if request.body["prompt"] == "c0" else "stall"  # no reply for 30 s

    with MockServer(_answer, faults=FaultPlan(custom=stall_all_but_c0)) as srv:
        engine = ProcessEngine(lambda cfg: {}, tmp_path)
        try:
            model = _model(srv.base_url, max_concurrency=4, read_timeout=60.0)
            run = engine.start(_spec(model, path, order))
            assert run.wait("c0", 10.0).records[0]["ok"]
            os.kill(engine._proc.pid, signal.SIGKILL)
            started = time.monotonic()
            with pytest.raises(RunAborted, match="engine process stopped unexpectedly"):
                while run.wait("c1", 1.0) is None:
                    assert time.monotonic() - started < 10
            assert engine.fatal and "exit code -9" in engine.fatal
            child = engine._proc
            with pytest.raises(RunAborted):  # a later task is refused, not given a new child
                engine.start(_spec(model, tmp_path / "q", ["x"], key="m/e"))
            assert engine._proc is child
        finally:
            engine.close()
    assert not list(tmp_path.glob("engine-*"))  # the child printed nothing: no file left
    assert [json.loads(line)["case"] for line in path.read_text().splitlines()] == ["c0"]


def test_the_model_name_is_asked_once_and_log_lines_come_home(tmp_path, caplog):
    order = ["a", "b"]

    def first_attempt_of_a_fails(request, attempt):
        return "500" if request.body["prompt"] == "a" and attempt == 0 else None

    with MockServer(_answer, faults=FaultPlan(custom=first_attempt_of_a_fails)) as srv:
        model = ModelConfig(
            name="m",
            source="test",
            type="openai-completions",
            base_url=srv.base_url,
            retry_backoff=0.01,
        )
        engine = ProcessEngine(lambda cfg: {})
        try:
            with caplog.at_level(logging.INFO, logger="servebench"):
                name = engine.model_name(model)
                run = engine.start(_spec(model, tmp_path / "p", order))
                got = [run.wait(cid, 10.0).records for cid in order]
                # the child's log lines come over the socket on their own schedule
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and not any(
                    "retry 1/" in r.getMessage() for r in caplog.records
                ):
                    engine.pump(0.1)
        finally:
            engine.close()
    assert name == srv.model_name
    assert all(r[0]["ok"] for r in got)
    assert any("retry 1/" in r.getMessage() for r in caplog.records)


def test_an_unreachable_server_stops_the_run_once(tmp_path):
    engine = ProcessEngine(lambda cfg: {})
    try:
        model = _model("http://127.0.0.1:9/v1", retries=0, connect_timeout=1.0)
        run = engine.start(_spec(model, tmp_path / "p", ["a", "b"]))
        with pytest.raises(RunAborted, match="not reachable"):
            for _ in range(40):
                if run.wait("a", 0.5) is not None:
                    break
        with pytest.raises(RunAborted):
            run.wait("b", 0.5)
    finally:
        engine.close()


@pytest.mark.parametrize("engine", ["process", "thread"])
def test_both_engines_give_the_same_verdicts(pytester, engine):
    from test_lean import _eval_args, _tiny_eval

    _tiny_eval(pytester)
    with MockServer(lambda r: "answer: 3") as srv:
        result = pytester.runpytest_subprocess(*_eval_args(srv.base_url), f"--sb-engine={engine}")
    result.assert_outcomes(passed=1, failed=5)
    saved = list(Path(pytester.path, "out").glob("*/predictions/*/*.jsonl"))
    assert len(saved) == 1 and len(saved[0].read_text().splitlines()) == 6


def test_a_child_that_crashes_says_why_and_leaves_its_traceback_in_the_logs(tmp_path, monkeypatch):
    # A child that cannot even start (its module fails to import) stands for any crash.
    broken = tmp_path / "broken"
    (broken / "pytest_servebench" / "engine").mkdir(parents=True)
    (broken / "pytest_servebench" / "__init__.py").write_text("")
    (broken / "pytest_servebench" / "engine" / "__init__.py").write_text("")
    (broken / "pytest_servebench" / "engine" / "child.py").write_text(
        "raise RuntimeError('engine exploded, key sk-planted-secret')\n"
    )
    from pytest_servebench.redaction import redactor

    redactor.add("sk-planted-secret")
    engine = ProcessEngine(lambda cfg: {}, tmp_path / "logs")
    monkeypatch.setattr(ProcessEngine, "package_root", broken)
    try:
        run = engine.start(_spec(_model("http://127.0.0.1:9/v1"), tmp_path / "p", ["a"]))
        with pytest.raises(RunAborted) as caught:
            for _ in range(40):
                if run.wait("a", 0.5) is not None:
                    break
    finally:
        engine.close()
    message = str(caught.value)
    assert "exit code 1" in message and "engine exploded" in message
    assert "sk-planted-secret" not in message
    (log,) = (tmp_path / "logs").glob("engine-*.stderr")
    assert "Traceback" in log.read_text()


def test_both_engines_offer_every_member_of_the_protocol_with_its_signature(tmp_path):
    import inspect

    from pytest_servebench.engine import protocol
    from pytest_servebench.engine.local import ThreadEngine, ThreadTask
    from pytest_servebench.engine.process import ProcessTask

    engines = [ThreadEngine(lambda cfg: {}), ProcessEngine(lambda cfg: {})]  # nothing starts yet
    spec = _spec(_model("http://127.0.0.1:9/v1"), tmp_path / "p", ["a"])
    handles = [
        ThreadTask("m/d", None, None, 1, ["a"], None),  # type: ignore[arg-type]
        ProcessTask(engines[1], 1, spec, 8),  # type: ignore[arg-type]
    ]
    for proto, impls in [(protocol.Engine, engines), (protocol.TaskHandle, handles)]:
        names = {n for n in [*vars(proto), *proto.__annotations__] if not n.startswith("_")}
        assert {"start", "fatal", "on_progress"} <= names or {"wait", "progress"} <= names
        for impl in impls:
            for name in names:
                assert hasattr(impl, name), (impl, name)
                wanted = getattr(proto, name, None)
                if inspect.isfunction(wanted):  # a method: the same parameters
                    got = inspect.signature(getattr(type(impl), name))
                    assert list(got.parameters) == list(inspect.signature(wanted).parameters)
    for engine in engines:
        engine.close()


def test_an_engine_that_cannot_start_a_task_gives_one_clear_error_per_case(pytester):
    # An internal error of ours (here planted in ProcessEngine.start) is not the server's
    # fault: every case of the task says what happened once, no KeyError chain per case.
    from test_lean import _eval_args, _tiny_eval

    _tiny_eval(pytester)
    pytester.makeconftest(
        "from pytest_servebench.engine.process import ProcessEngine\n"
        "def broken(self, spec):\n"
        "    raise RuntimeError('planted start failure')\n"
        "ProcessEngine.start = broken\n"
    )
    with MockServer(lambda r: "answer: 3") as srv:
        result = pytester.runpytest_subprocess(*_eval_args(srv.base_url))
        assert srv.stats.total_requests == 0
    result.assert_outcomes(errors=6)
    out = result.stdout.str()
    assert (
        out.count(
            "internal error: the engine could not start task vllm_chat/tiny: "
            "RuntimeError: planted start failure"
        )
        >= 6
    )
    assert "KeyError" not in out and "Traceback" not in out
