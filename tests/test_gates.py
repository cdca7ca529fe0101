"""Accuracy gates for CI: gate files, checks against task results and baselines, exit status."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import REPO, summary_json, truth_fraction

from pytest_servebench.errors import ConfigError, ServebenchError
from pytest_servebench.report.gates import (
    Gate,
    check,
    load_baseline,
    load_gate_file,
    load_gates,
    parse_condition,
    render,
)
from pytest_servebench.scoring.aggregate import TaskResult
from pytest_servebench.scoring.verdict import Verdict
from pytest_servebench.testing.mockserver import FaultPlan, MockServer, dataset_responder

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


# -- helpers -------------------------------------------------------------------------------


def result(
    dataset: str = "demo_gsm8k",
    model: str = "vllm_chat",
    right: int = 6,
    wrong: int = 4,
    errors: int = 0,
    missing: int = 0,
    samples: int = 1,
    dataset_name: str | None = None,
    run_mode: str = "all",
) -> TaskResult:
    """A finished task: `right` cases correct, `wrong` wrong, `errors` with request errors,
    `missing` not evaluated."""
    n = right + wrong + errors + missing
    ids = [f"q{i:03d}" for i in range(n)]
    cases = {}
    for i, case in enumerate(ids[: right + wrong + errors]):
        ok = i < right
        err = i >= right + wrong
        cases[case] = Verdict.from_dict(
            {
                "status": "error" if err else ("passed" if ok else "failed"),
                "scores": [1.0 if ok else 0.0] * samples,
                "correct": [ok] * samples,
                "votes": ["1" if ok else "2"] * samples,
                "errors": samples if err else 0,
                "truncated": 0,
                "unparsable": 0,
            }
        )
    return TaskResult(
        key=f"{model}/{dataset}",
        model=model,
        model_name=model,
        dataset=dataset,
        dataset_name=dataset_name or dataset,
        version="abc123",
        mode="gen",
        run_mode=run_mode,
        samples=samples,
        case_ids=ids,
        cases=cases,
    )


def gate_file(tmp_path: Path, text: str, name: str = "gate.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def statuses(outcomes) -> list[tuple[str, str]]:
    return [(o.status, o.message) for o in outcomes]


# -- conditions and files ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (">= 55.0", (">=", 55.0)),
        (">55", (">", 55.0)),
        ("<= 3", ("<=", 3.0)),
        ("< .5", ("<", 0.5)),
        ("== 100", ("==", 100.0)),
        ("60%", (">=", 60.0)),
        (70, (">=", 70.0)),
        (70.5, (">=", 70.5)),
    ],
)
def test_parse_condition(raw, expected):
    assert parse_condition(raw) == expected


@pytest.mark.parametrize("raw", ["=> 55", "about 55", "", ">= ", True, None, [55], "!= 3"])
def test_parse_condition_rejects(raw):
    with pytest.raises(ValueError, match="expected a condition like"):
        parse_condition(raw)


def test_load_gate_file_rules(tmp_path):
    path = gate_file(
        tmp_path,
        """\
kind: gate
max_errors: 1
max_drop: 2.0
datasets:
  demo_gsm8k:
    accuracy: ">= 55.0"
    truncated: "<= 3"
    models:
      big:
        accuracy: "> 80"
        max_errors: 0
  other:
    pass@4: 90
""",
    )
    gates = load_gate_file(path)
    kinds = [(g.kind, g.dataset, g.model, g.metric, g.op, g.value) for g in gates]
    assert ("max_errors", None, None, None, "<=", 1.0) in kinds
    assert ("threshold", "demo_gsm8k", None, "accuracy", ">=", 55.0) in kinds
    assert ("threshold", "demo_gsm8k", None, "truncated", "<=", 3.0) in kinds
    # the model's own scope: its override plus the dataset's other conditions
    assert ("threshold", "demo_gsm8k", "big", "accuracy", ">", 80.0) in kinds
    assert ("threshold", "demo_gsm8k", "big", "truncated", "<=", 3.0) in kinds
    assert ("max_errors", "demo_gsm8k", "big", None, "<=", 0.0) in kinds
    assert ("threshold", "other", None, "pass@4", ">=", 90.0) in kinds
    # max_drop covers each gated figure (not the counts)
    drops = [(g.dataset, g.model, g.metric) for g in gates if g.kind == "max_drop"]
    assert sorted(drops, key=str) == sorted(
        [
            ("demo_gsm8k", None, "accuracy"),
            ("demo_gsm8k", "big", "accuracy"),
            ("other", None, "pass@4"),
        ],
        key=str,
    )
    dataset_level = next(g for g in gates if g.kind == "threshold" and g.model is None)
    assert dataset_level.except_models == ("big",)
    assert dataset_level.line == 6 and dataset_level.where == f"{path}:6"


@pytest.mark.parametrize(
    ("text", "message", "line"),
    [
        ("kind: gate\ngsm8k: {accuracy: '>= 55'}\n", "thresholds go under `datasets:`", 2),
        ("kind: gate\ndatasets:\n  gsm8k: {acuracy: '>= 55'}\n", "did you mean accuracy", 3),
        ("kind: gate\ndatasets:\n  gsm8k: {accuracy: 'over 55'}\n", "expected a condition", 3),
        ("kind: gate\ndatasets: {}\n", "needs `datasets:`", 2),
        ("kind: gate\nmax_errors: -1\ndatasets: {g: {accuracy: 1}}\n", "max_errors must be", 2),
        ("kind: gate\nmax_drop: lots\ndatasets: {g: {accuracy: 1}}\n", "max_drop must be", 2),
        ("kind: gate\ndatasets: {g: {models: {m: {models: {}}}}}\n", "unknown metric or key", 2),
        ("kind: dataset\n", "kind: gate", 1),
        ("kind: gate\ndatasets:\n  gsm8k:\n", "no threshold given", 3),
    ],
)
def test_gate_file_mistakes_name_file_and_line(tmp_path, text, message, line):
    path = gate_file(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_gate_file(path)
    assert info.value.path == str(path)
    assert info.value.line == line


def test_load_gates_missing_file(tmp_path):
    with pytest.raises(ServebenchError, match="no such file"):
        load_gates([tmp_path / "nope.yaml"])


def test_repo_demo_gate_loads():
    gates = load_gates([REPO / "suites" / "demo_gate.yaml"])
    threshold = next(g for g in gates if g.kind == "threshold")
    assert (threshold.dataset, threshold.metric, threshold.op) == ("demo_gsm8k", "accuracy", ">=")


# -- checking ------------------------------------------------------------------------------


def rules(tmp_path: Path, text: str) -> list[Gate]:
    return load_gate_file(gate_file(tmp_path, "kind: gate\n" + text))


def test_threshold_held_and_broke_with_margins(tmp_path):
    gates = rules(tmp_path, "datasets: {demo_gsm8k: {accuracy: '>= 55'}}\n")
    held = check(gates, [result(right=6, wrong=4)])
    assert held[0].status == "held"
    assert held[0].message == "accuracy 60.00 (needs >= 55.00, margin 5.00)"
    broke = check(gates, [result(right=5, wrong=5)])
    assert broke[0].status == "broke"
    assert broke[0].message == "accuracy 50.00 (needs >= 55.00, short by 5.00)"
    assert broke[0].margin == pytest.approx(-5.0)
    # every applying gate also checks request errors, default max 0
    assert broke[-1].message.startswith("request errors 0 (max_errors 0 [default]")


@pytest.mark.parametrize(
    ("condition", "status"),
    [("> 60", "broke"), (">= 60", "held"), ("== 60", "held"), ("< 60", "broke"), ("<= 60", "held")],
)
def test_operators_at_the_bound(tmp_path, condition, status):
    gates = rules(tmp_path, f"datasets: {{demo_gsm8k: {{accuracy: '{condition}'}}}}\n")
    assert check(gates, [result(right=6, wrong=4)])[0].status == status


def test_compared_at_table_precision(tmp_path):
    # 2/3 = 66.666..% shows as 66.67 and holds "== 66.67"
    gates = rules(tmp_path, "datasets: {demo_gsm8k: {accuracy: '== 66.67'}}\n")
    assert check(gates, [result(right=2, wrong=1)])[0].status == "held"


def test_dataset_key_matches_abbr_or_config_name(tmp_path):
    r = result(dataset="gsm8k", dataset_name="gsm8k_gen_0_shot_cot_chat_prompt")
    for key in ("gsm8k", "gsm8k_gen_0_shot_cot_chat_prompt"):
        gates = rules(tmp_path, f"datasets: {{{key}: {{accuracy: '>= 50'}}}}\n")
        assert check(gates, [r])[0].status == "held"


def test_per_model_conditions_replace_the_dataset_one(tmp_path):
    gates = rules(
        tmp_path,
        "datasets:\n  demo_gsm8k:\n    accuracy: '>= 50'\n    models:\n      big: {accuracy: '>= 70'}\n",
    )
    small, big = result(model="small", right=6), result(model="big", right=6)
    outcomes = [o for o in check(gates, [small, big]) if "accuracy" in o.message]
    assert [(o.subject, o.status) for o in outcomes] == [
        ("demo_gsm8k / small", "held"),
        ("demo_gsm8k / big", "broke"),
    ]


def test_unmatched_keys_are_skipped_with_a_hint(tmp_path):
    gates = rules(
        tmp_path,
        "datasets:\n  demo_gsm8:\n    accuracy: '>= 50'\n  demo_gsm8k:\n    models:\n"
        "      vllm_chatt: {accuracy: '>= 50'}\n",
    )
    outcomes = check(gates, [result()])
    assert all(o.status == "skipped" for o in outcomes)  # nothing applies: no errors check
    text = " | ".join(o.message for o in outcomes)
    assert "dataset 'demo_gsm8' was not evaluated in this run (did you mean demo_gsm8k?)" in text
    assert "model 'vllm_chatt' did not run demo_gsm8k (did you mean vllm_chat?)" in text


def test_partial_task_breaks_its_gates(tmp_path):
    gates = rules(tmp_path, "datasets: {demo_gsm8k: {accuracy: '>= 10'}}\n")
    outcome = check(gates, [result(right=6, wrong=0, missing=4)])[0]
    assert outcome.status == "broke"
    assert "only 6 of 10 cases were evaluated" in outcome.message


def test_accuracy_means_runs_average_with_samples(tmp_path):
    gates = rules(tmp_path, "datasets: {demo_gsm8k: {accuracy: '>= 50', pass@4: '>= 50'}}\n")
    outcomes = check(gates, [result(samples=4, right=6, wrong=4)])
    assert outcomes[0].message.startswith("accuracy (4 runs average) 60.00")
    assert outcomes[1].message.startswith("pass@4 60.00")
    missing = rules(tmp_path, "datasets: {demo_gsm8k: {pass@8: '>= 50'}}\n")
    outcome = check(missing, [result(samples=4)])[0]
    assert outcome.status == "broke" and "has no 'pass@8' figure" in outcome.message


def test_counts_can_be_gated(tmp_path):
    gates = rules(tmp_path, "datasets: {demo_gsm8k: {failed: '<= 3'}}\n")
    outcome = check(gates, [result(right=6, wrong=4)])[0]
    assert outcome.status == "broke"
    assert outcome.message == "failed 4 (needs <= 3, short by 1)"


def test_request_errors_break_unless_allowed(tmp_path):
    strict = rules(tmp_path, "datasets: {demo_gsm8k: {accuracy: '>= 10'}}\n")
    r = result(right=8, wrong=0, errors=2)
    assert statuses(check(strict, [r]))[-1] == (
        "broke",
        "request errors 2 (max_errors 0 [default], broke by 2)",
    )
    lenient = rules(tmp_path, "max_errors: 2\ndatasets: {demo_gsm8k: {accuracy: '>= 10'}}\n")
    assert check(lenient, [r])[-1].status == "held"
    per_dataset = rules(
        tmp_path, "max_errors: 5\ndatasets: {demo_gsm8k: {accuracy: '>= 10', max_errors: 1}}\n"
    )
    assert check(per_dataset, [r])[-1].message == "request errors 2 (max_errors 1, broke by 1)"


def test_ungated_tasks_of_the_run_count_their_request_errors(tmp_path):
    gates = rules(tmp_path, "datasets: {demo_gsm8k: {accuracy: '>= 10'}}\n")
    other = result(dataset="other", right=5, wrong=0, errors=1)
    outcomes = check(gates, [result(), other])
    assert ("broke", "other / vllm_chat") in [(o.status, o.subject) for o in outcomes]


def test_max_drop_against_baseline(tmp_path):
    gates = rules(tmp_path, "max_drop: 2.0\ndatasets: {demo_gsm8k: {accuracy: '>= 10'}}\n")
    baseline = {
        "tasks": [{"model": "vllm_chat", "dataset": "demo_gsm8k", "metrics": {"accuracy": 63.0}}]
    }
    drops = [
        o for o in check(gates, [result(right=6, wrong=4)], baseline) if "baseline" in o.message
    ]
    assert drops[0].status == "broke"
    assert drops[0].message == (
        "accuracy fell 3.00 points vs baseline (63.00 -> 60.00; max_drop 2.00, broke by 1.00)"
    )
    baseline["tasks"][0]["metrics"]["accuracy"] = 61.5
    held = [o for o in check(gates, [result()], baseline) if "baseline" in o.message]
    assert held[0].status == "held" and "margin 0.50" in held[0].message
    no_baseline = [o for o in check(gates, [result()], None) if "max_drop" in o.message]
    assert no_baseline[0].status == "skipped" and "no --sb-baseline" in no_baseline[0].message
    other = {"tasks": [{"model": "x", "dataset": "demo_gsm8k", "metrics": {"accuracy": 90.0}}]}
    unknown = [o for o in check(gates, [result()], other) if "max_drop" in o.message]
    assert unknown[0].status == "skipped" and "baseline has no accuracy" in unknown[0].message


def test_max_drop_alone_uses_the_headline_figure(tmp_path):
    gates = rules(tmp_path, "max_drop: 1.0\ndatasets: {demo_gsm8k: {}}\n")
    baseline = {
        "tasks": [{"model": "vllm_chat", "dataset": "demo_gsm8k", "metrics": {"avg@4": 60.0}}]
    }
    outcome = check(gates, [result(samples=4)], baseline)[0]
    assert outcome.status == "held" and outcome.message.startswith("avg@4 unchanged vs baseline")


def test_infer_runs_are_not_gated(tmp_path):
    gates = rules(tmp_path, "datasets: {demo_gsm8k: {accuracy: '>= 10'}}\n")
    assert all(o.status == "skipped" for o in check(gates, [result(run_mode="infer")]))


def test_render_lists_broken_first_and_counts(tmp_path):
    gates = rules(tmp_path, "datasets: {demo_gsm8k: {accuracy: '>= 55'}, other: {accuracy: 90}}\n")
    lines = render(check(gates, [result(), result(dataset="other")]), "exit status 1")
    assert lines[0].startswith(
        "BROKE other / vllm_chat: accuracy 60.00 (needs >= 90.00, short by 30.00)"
    )
    assert lines[0].endswith(":2]")  # the gate's file and line
    assert lines[-1] == "gates: 3 held, 1 broke -> exit status 1"


def test_load_baseline_file_and_folder(tmp_path):
    run = tmp_path / "20260101_000000"
    (run / "summary").mkdir(parents=True)
    summary = run / "summary" / "summary_20260101_000000.json"
    summary.write_text(json.dumps({"tasks": []}))
    assert load_baseline(summary)["tasks"] == []
    assert load_baseline(run)["_path"] == str(summary)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ServebenchError, match="not a servebench summary"):
        load_baseline(tmp_path / "bad.json")
    with pytest.raises(ServebenchError, match="no summary_"):
        load_baseline(tmp_path)


# -- end to end ----------------------------------------------------------------------------


def sb_args(url: str, *extra: str) -> list[str]:
    return [
        "--sb-models",
        "vllm_chat",
        "--sb-datasets",
        "demo_gsm8k",
        "--sb-set",
        f"vllm_chat.base_url={url}",
        "--sb-work-dir",
        "out",
        "--tb=no",
        *extra,
    ]


GATE_60 = "kind: gate\ndatasets:\n  demo_gsm8k:\n    accuracy: '>= {bound}'\n"


@pytest.fixture
def gated(pytester: pytest.Pytester) -> pytest.Pytester:
    return pytester


def test_gate_holds_with_failed_cases_exit_0(gated, gsm8k_server, demo_records):
    truth = 100 * truth_fraction(demo_records, 0.6, 1)
    gated.path.joinpath("gate.yaml").write_text(GATE_60.format(bound=truth - 10))
    result = gated.runpytest_subprocess(*sb_args(gsm8k_server.base_url, "--sb-gate", "gate.yaml"))
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] > 0  # wrong answers are there ...
    assert result.ret == 0  # ... and the gate decides
    result.stdout.fnmatch_lines(
        [
            "*= servebench gates =*",
            f"HELD  demo_gsm8k / vllm_chat: accuracy {truth:.2f} (needs >= {truth - 10:.2f}, "
            "margin 10.00)  [[]gate.yaml:4[]]",
            "HELD  demo_gsm8k / vllm_chat: request errors 0 *",
            "gates: 2 held, 0 broke -> exit status 0 (* wrong answers do not fail the run*",
        ]
    )


def test_gate_breaks_exit_1_and_names_the_gate(gated, gsm8k_server, demo_records):
    truth = 100 * truth_fraction(demo_records, 0.6, 1)
    gated.path.joinpath("gate.yaml").write_text(GATE_60.format(bound=truth + 5))
    result = gated.runpytest_subprocess(*sb_args(gsm8k_server.base_url, "--sb-gate", "gate.yaml"))
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            f"BROKE demo_gsm8k / vllm_chat: accuracy {truth:.2f} (needs >= {truth + 5:.2f}, "
            "short by 5.00)  [[]gate.yaml:4[]]",
            "gates: 1 held, 1 broke -> exit status 1",
        ]
    )


def test_all_cases_pass_but_gate_breaks_exit_1(gated, demo_records):
    with MockServer(dataset_responder(demo_records, p_correct=1.0, seed=0)) as server:
        gated.path.joinpath("gate.yaml").write_text(
            "kind: gate\ndatasets: {demo_gsm8k: {accuracy: '< 50'}}\n"
        )
        result = gated.runpytest_subprocess(
            *sb_args(server.base_url, "--sb-gate", "gate.yaml", "--sb-limit", "5")
        )
    result.assert_outcomes(passed=5)
    assert result.ret == 1


def test_gate_in_suites_folder_is_found(gated, gsm8k_server, demo_records):
    truth = 100 * truth_fraction(demo_records, 0.6, 1)
    suites = gated.path / "suites"
    suites.mkdir()
    (suites / "ci_gate.yaml").write_text(GATE_60.format(bound=truth + 5))
    result = gated.runpytest_subprocess(*sb_args(gsm8k_server.base_url))
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        ["BROKE demo_gsm8k / vllm_chat: accuracy * [[]suites/ci_gate.yaml:4[]]"]
    )
    # --sb-no-gates: pytest's own exit status (1: cases failed) and no gate section
    result = gated.runpytest_subprocess(*sb_args(gsm8k_server.base_url, "--sb-no-gates"))
    assert result.ret == 1
    assert "servebench gates" not in result.stdout.str()


def test_suites_gate_for_other_datasets_leaves_exit_status(gated, demo_records):
    suites = gated.path / "suites"
    suites.mkdir()
    (suites / "gate.yaml").write_text("kind: gate\ndatasets: {mmlu: {accuracy: '>= 50'}}\n")
    with MockServer(dataset_responder(demo_records, p_correct=1.0, seed=0)) as server:
        result = gated.runpytest_subprocess(*sb_args(server.base_url, "--sb-limit", "3"))
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "SKIP  suites/gate.yaml:2: dataset 'mmlu' was not evaluated in this run",
            "gates: 0 held, 0 broke, 1 skipped -> no gate applies to this run: pytest's exit "
            "status stands",
        ]
    )


def test_explicit_gate_naming_no_selected_dataset_is_a_usage_error(gated, gsm8k_server):
    gated.path.joinpath("gate.yaml").write_text("kind: gate\ndatasets: {mmlu: {accuracy: 50}}\n")
    result = gated.runpytest_subprocess(*sb_args(gsm8k_server.base_url, "--sb-gate", "gate.yaml"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*gate.yaml names the datasets mmlu; this run evaluates*"])
    assert gsm8k_server.stats.total_requests == 0  # stopped before sending anything


def test_bad_gate_file_stops_before_any_request(gated, gsm8k_server):
    gated.path.joinpath("gate.yaml").write_text("kind: gate\ndatasets:\n  demo_gsm8k: {acc: 50}\n")
    result = gated.runpytest_subprocess(*sb_args(gsm8k_server.base_url, "--sb-gate", "gate.yaml"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*gate.yaml:3: datasets: demo_gsm8k: unknown metric or key 'acc'*"]
    )
    assert gsm8k_server.stats.total_requests == 0


def test_request_errors_break_the_gates(gated, demo_records):
    def serve() -> MockServer:  # a fresh server gives the same faults to the same requests
        faults = FaultPlan({"500": 0.3}, seed=3)
        return MockServer(dataset_responder(demo_records, p_correct=1.0, seed=0), faults=faults)

    gate = gated.path / "gate.yaml"
    gate.write_text("kind: gate\ndatasets: {demo_gsm8k: {accuracy: '>= 10'}}\n")
    with serve() as server:
        args = sb_args(server.base_url, "--sb-gate", "gate.yaml", "--sb-limit", "20")
        result = gated.runpytest_subprocess(*args, "--sb-set", "vllm_chat.retries=0")
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        ["BROKE demo_gsm8k / vllm_chat: request errors * (max_errors 0 [[]default[]], broke by *)"]
    )
    errors = summary_json(gated.path / "out")["tasks"][0]["counts"]["errors"]
    assert errors > 0
    gate.write_text(
        f"kind: gate\nmax_errors: {errors}\ndatasets: {{demo_gsm8k: {{accuracy: '>= 10'}}}}\n"
    )
    with serve() as server:
        args = sb_args(server.base_url, "--sb-gate", "gate.yaml", "--sb-limit", "20")
        result = gated.runpytest_subprocess(*args, "--sb-set", "vllm_chat.retries=0")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines([f"HELD  demo_gsm8k / vllm_chat: request errors {errors} *"])


def test_baseline_drop(gated, gsm8k_server, demo_records):
    truth = 100 * truth_fraction(demo_records, 0.6, 1)
    baseline = gated.path / "baseline.json"
    baseline.write_text(
        json.dumps(
            {
                "tasks": [
                    {
                        "model": "vllm_chat",
                        "dataset": "demo_gsm8k",
                        "metrics": {"accuracy": truth + 3},
                    }
                ]
            }
        )
    )
    gated.path.joinpath("gate.yaml").write_text(
        "kind: gate\nmax_drop: 2.0\ndatasets: {demo_gsm8k: {accuracy: '>= 10'}}\n"
    )
    args = sb_args(
        gsm8k_server.base_url, "--sb-gate", "gate.yaml", "--sb-baseline", "baseline.json"
    )
    result = gated.runpytest_subprocess(*args)
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "BROKE demo_gsm8k / vllm_chat: accuracy fell 3.00 points vs baseline (*; max_drop 2.00, broke by 1.00)*"
        ]
    )
    # the summary of this very run as baseline, its predictions reused: no drop
    own = next((gated.path / "out").glob("*/summary/summary_*.json"))
    args = sb_args(gsm8k_server.base_url, "--sb-gate", "gate.yaml", f"--sb-baseline={own}")
    args.append("--sb-reuse")
    result = gated.runpytest_subprocess(*args)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["HELD  demo_gsm8k / vllm_chat: accuracy unchanged vs baseline*"])


def test_gates_with_xdist(gated, gsm8k_server, demo_records):
    truth = 100 * truth_fraction(demo_records, 0.6, 1)
    gated.path.joinpath("gate.yaml").write_text(GATE_60.format(bound=truth - 1))
    url = gsm8k_server.base_url
    args = sb_args(url, "--sb-gate", "gate.yaml", "-n", "2", "-p", "no:benchmark")
    args[1:2] = ["vllm_chat", "vllm_stream_chat"]
    args += ["--sb-set", f"vllm_stream_chat.base_url={url}"]
    result = gated.runpytest_subprocess(*args)
    assert result.parseoutcomes()["failed"] > 0
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines_random(
        [
            "HELD  demo_gsm8k / vllm_chat: accuracy *",
            "HELD  demo_gsm8k / vllm_stream_chat: accuracy *",
            "gates: 4 held, 0 broke -> exit status 0*",
        ]
    )


def test_repo_demo_gate_passes_the_mock_demo(gated):
    """suites/demo_gate.yaml holds for `python -m pytest_servebench demo` (p_correct 0.7, seed 0)
    and breaks when the simulated model is worse."""
    from pytest_servebench.testing.mockserver import load_jsonl

    records = load_jsonl(REPO / "pytest_servebench" / "data" / "gsm8k_demo" / "test.jsonl")
    gate = str(REPO / "suites" / "demo_gate.yaml")
    for p_correct, code in ((0.7, 0), (0.3, 1)):
        with MockServer(dataset_responder(records, p_correct=p_correct, seed=0)) as server:
            result = gated.runpytest_subprocess(*sb_args(server.base_url, f"--sb-gate={gate}"))
        assert result.ret == code, result.stdout.str()


# -- the CI examples -----------------------------------------------------------------------

CI = REPO / "examples" / "ci"


def ci_command(workflow: dict) -> list[str]:
    import shlex

    steps = workflow["jobs"]["evaluate"]["steps"]
    run = next(s["run"] for s in steps if s.get("name", "").startswith("Evaluate"))
    args = shlex.split(run)
    assert args[0] == "pytest"
    return args[1:]


def test_ci_examples_are_valid():
    import yaml

    from pytest_servebench.catalog.finder import BUILTIN_SUITES, SuiteIndex, load_configs

    github = yaml.safe_load((CI / "github-actions.yml").read_text())
    gitlab = yaml.safe_load((CI / "gitlab-ci.yml").read_text())
    args = ci_command(github)
    gitlab_args = gitlab["model-eval"]["script"][-1].split()
    assert gitlab_args[0] == "pytest" and gitlab_args[1:] == args  # the same command
    assert gitlab["model-eval"]["artifacts"]["reports"]["junit"] == "reports/model-eval.xml"
    for option in ("--sb-gate=examples/ci/gate.yaml", "--junitxml=reports/model-eval.xml"):
        assert option in args
    gates = load_gates([CI / "gate.yaml"])
    assert {g.dataset for g in gates if g.dataset} == {"demo_gsm8k"}
    baseline = load_baseline(CI / "baseline_summary.json")
    assert baseline["tasks"][0]["model"] == "ci_mock"
    index = SuiteIndex([(CI / "suites", "--sb-suites"), (BUILTIN_SUITES, "built-in")])
    models, _ = load_configs(index, ["ci_mock", "ci_vllm"], ["demo_gsm8k"], {})
    assert all(m.launch and m.launch["port"] == "auto" for m in models)


def test_ci_example_command_runs(pytester):
    """The GitHub workflow's command, as written, in a copy of the example: the launched mock
    server passes the gate although some answers are wrong, and both files are written."""
    import inspect

    import yaml

    from pytest_servebench.session import plugin

    if "launch" not in inspect.getsource(plugin):
        pytest.skip("the plugin does not start `launch:` servers yet")
    shutil.copytree(CI, pytester.path / "examples" / "ci")
    args = ci_command(yaml.safe_load((CI / "github-actions.yml").read_text()))
    result = pytester.runpytest_subprocess(*args)
    assert result.parseoutcomes().get("failed", 0) > 0
    assert result.ret == 0, result.stdout.str()
    assert (pytester.path / "reports" / "model-eval.html").is_file()
    assert (pytester.path / "reports" / "model-eval.xml").is_file()
    result.stdout.fnmatch_lines(["HELD  demo_gsm8k / ci_mock: accuracy *"])


def test_gate_outcomes_in_html_report(gated, gsm8k_server, demo_records):
    truth = 100 * truth_fraction(demo_records, 0.6, 1)
    gated.path.joinpath("gate.yaml").write_text(GATE_60.format(bound=truth + 5))
    args = sb_args(gsm8k_server.base_url, "--sb-gate", "gate.yaml", "--html", "report.html")
    result = gated.runpytest_subprocess(*args)
    assert result.ret == 1
    page = (gated.path / "report.html").read_text(encoding="utf-8")
    table = page[page.index('<table class="sb-table" id="sb-gates">') :]
    table = table[: table.index("</table>")]
    assert '<tr class="sb-gate-broke"><td class="sb-bad">BROKE</td>' in table
    assert f"accuracy {truth:.2f} (needs &gt;= {truth + 5:.2f}, short by 5.00)" in table
    assert "<td>gate.yaml:4</td>" in table
    assert "exit status 1" in page


def test_gates_table_escapes():
    from pytest_servebench.report.gates import GateOutcome
    from pytest_servebench.report.html_report import gates_table

    text = gates_table([GateOutcome("broke", "<b>d</b> / m", "x < y & <i>z</i>")], "<exit>")
    assert "<b>" not in text and "<i>" not in text and "<exit>" not in text
    assert "x &lt; y &amp; &lt;i&gt;z&lt;/i&gt;" in text
    assert gates_table([]) == ""
