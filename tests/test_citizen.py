"""A good pytest citizen: a session that evaluates nothing does not pay for the plugin,
--collect-only writes nothing, and an ini evaluation runs beside the project's own tests."""

from __future__ import annotations

import pytest

LOADED = r"""
import sys
def pytest_sessionfinish(session):
    heavy = sorted(m for m in sys.modules if m.startswith("pytest_servebench")
                   or m.split(".")[0] in ("numpy", "httpx", "yaml", "math_verify"))
    print("LOADED:", ",".join(heavy))
"""


def test_a_run_without_evaluation_imports_only_the_options(pytester):
    pytester.makeconftest(LOADED)
    pytester.makepyfile(test_own="def test_own():\n    assert True\n")
    result = pytester.runpytest_subprocess("-s")
    result.assert_outcomes(passed=1)
    loaded = result.stdout.str().split("LOADED: ", 1)[1].splitlines()[0].split(",")
    assert set(loaded) <= {
        "pytest_servebench",
        "pytest_servebench.entry",
        "pytest_servebench.session",
        "pytest_servebench.session.options",
        "pytest_servebench.errors",
    }, loaded


def test_collect_only_lists_the_cases_and_writes_nothing(pytester, gsm8k_server):
    result = pytester.runpytest_subprocess(
        "--sb-models=vllm_chat",
        "--sb-datasets=demo_gsm8k",
        f"--sb-set=vllm_chat.base_url={gsm8k_server.base_url}",
        "--sb-work-dir=out",
        "--collect-only",
        "-q",
    )
    assert result.ret == 0
    assert result.stdout.str().count("servebench/vllm_chat/demo_gsm8k::") == 50
    assert not (pytester.path / "out").exists()
    assert "servebench summary" not in result.stdout.str()
    assert sum(gsm8k_server.stats.requests.values()) == 0


@pytest.fixture
def ini_evaluation(pytester, gsm8k_server):
    pytester.makeini(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
        "sb_models = vllm_chat\nsb_datasets = demo_gsm8k\nsb_limit = 4\nsb_work_dir = out\n"
        f"sb_set = vllm_chat.base_url={gsm8k_server.base_url}\n"
    )
    pytester.makepyfile(test_own="def test_own():\n    assert True\n")
    return pytester


def test_an_ini_evaluation_runs_beside_the_projects_own_tests(ini_evaluation):
    result = ini_evaluation.runpytest_subprocess("-v")
    result.stdout.fnmatch_lines(["*test_own.py::test_own PASSED*"])
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 1 + 4
    assert "servebench summary" in result.stdout.str()


def test_naming_test_paths_runs_only_those_with_an_ini_evaluation(ini_evaluation):
    result = ini_evaluation.runpytest_subprocess("test_own.py")
    result.assert_outcomes(passed=1)
    assert not (ini_evaluation.path / "out").exists()
    assert "servebench summary" not in result.stdout.str()


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one process", "xdist"])
def test_a_wrong_answer_is_one_line_and_the_table_comes_last(pytester, workers):
    from pytest_servebench.testing.mockserver import MockServer

    with MockServer(lambda request: "answer: 123456") as server:
        result = pytester.runpytest_subprocess(
            "--sb-models=vllm_chat",
            "--sb-datasets=demo_gsm8k",
            f"--sb-set=vllm_chat.base_url={server.base_url}",
            "--sb-work-dir=out",
            "--sb-limit=4",
            *workers,
        )
    result.assert_outcomes(failed=4)
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if "= wrong answers: 4 " in line)
    wrong = lines[start + 1 : start + 5]
    assert all(
        line.startswith("servebench/vllm_chat/demo_gsm8k::q000")
        and ": extracted '123456', reference '" in line
        for line in wrong
    ), wrong
    assert "servebench summary" in lines[start + 5]
    after_table = "\n".join(lines[start + 5 :])
    assert "FAILED" not in after_table and "short test summary" not in after_table
    assert "= FAILURES =" not in result.stdout.str()
