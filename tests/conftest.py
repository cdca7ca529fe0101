"""Shared fixtures: mock OpenAI-compatible servers on loopback and small suites."""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_servebench.testing.mockserver import MockServer, dataset_responder, load_jsonl

REPO = Path(__file__).resolve().parent.parent
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
DEMO_DATA = REPO / "pytest_servebench" / "data" / "gsm8k_demo" / "test.jsonl"


# Loaded before any in-process run: pytester drops the modules a run imported when it ends,
# but a package keeps its submodule attributes, so a second run could mix the first run's
# engine/process.py (and its wire classes) with a fresh wire module: pickle then refuses.
IN_PROCESS_MODULES = (
    "pytest_servebench.session.plugin",
    "pytest_servebench.engine.process",
    "pytest_servebench.engine.child",
    "pytest_servebench.engine.wire",
)


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """pytest-randomly (in the test extra, for tests/test_plugins.py) would shuffle the cases
    of the runs the tests make; the tests that want it remove PYTEST_ADDOPTS."""
    for name in IN_PROCESS_MODULES:
        importlib.import_module(name)
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:randomly")
    return pytester


def eval_args(url: str, dataset: str = "demo_gsm8k", *extra: str, model: str | None = None):
    """The arguments of an evaluation of `dataset` by vllm_chat at `url` into ./out; `model`
    sets the model name the requests carry (part of each request's hash)."""
    named = [f"--sb-set=vllm_chat.model={model}"] if model else []
    return [
        "--sb-models",
        "vllm_chat",
        "--sb-datasets",
        dataset,
        f"--sb-set=vllm_chat.base_url={url}",
        *named,
        "--sb-work-dir=out",
        *extra,
    ]


@pytest.fixture
def demo_records() -> list[dict]:
    return load_jsonl(DEMO_DATA)


@pytest.fixture
def gsm8k_server(demo_records: list[dict]) -> Iterator[MockServer]:
    """Answers the demo GSM8K questions, right with probability 0.6 (deterministic per case)."""
    with MockServer(dataset_responder(demo_records, p_correct=0.6, seed=1)) as server:
        yield server


def truth_fraction(records: list[dict], p_correct: float, seed: int) -> float:
    from pytest_servebench.testing.mockserver import is_correct

    right = sum(is_correct(r["question"], 0, p_correct, seed) for r in records)
    return right / len(records)


def write_suite(root: Path, name: str, text: str, kind: str = "datasets") -> Path:
    path = root / "suites" / kind / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def summary_json(workdir_base: Path) -> dict:
    runs = sorted(p for p in workdir_base.iterdir() if p.is_dir())
    files = sorted((runs[-1] / "summary").glob("summary_*.json"))
    return json.loads(files[-1].read_text())


def completion_requests(server) -> int:
    """POSTs to /chat/completions or /completions (GET /models is not a completion)."""
    return sum(n for path, n in server.stats.requests.items() if path.endswith("completions"))


def stable(responder):
    """Answers that depend on the question only. The mock numbers identical requests as
    successive samples; a request sent again (after a kill, or by a second run against the
    same server) would otherwise be answered as a new sample."""
    import dataclasses

    return lambda request: responder(dataclasses.replace(request, sample_index=0))


def needs_sandbox() -> pytest.MarkDecorator:
    """Skip where no usable bubblewrap is found; in CI (SERVEBENCH_REQUIRE_SANDBOX=1, set by
    .ci/run, which installs bubblewrap) that is a failure, never a silent skip."""
    from pytest_servebench.execution import sandbox

    found, notes = sandbox.detect()
    if found is None and os.environ.get("SERVEBENCH_REQUIRE_SANDBOX"):
        pytest.fail(
            f"SERVEBENCH_REQUIRE_SANDBOX is set but no usable bubblewrap: {'; '.join(notes)}",
            pytrace=False,
        )
    return pytest.mark.skipif(
        found is None, reason=f"no usable bubblewrap here: {'; '.join(notes)}"
    )
