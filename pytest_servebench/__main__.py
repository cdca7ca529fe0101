"""`python -m pytest_servebench COMMAND`: the demo, dataset downloads, run comparison."""

from __future__ import annotations

import argparse
import sys


def demo(argv: list[str]) -> int:
    """Evaluate the shipped GSM8K demo subset against a simulated endpoint."""
    import pytest

    from pytest_servebench.catalog.datasets import PACKAGE_DATA
    from pytest_servebench.testing.mockserver import MockServer, dataset_responder, load_jsonl

    parser = argparse.ArgumentParser(prog="python -m pytest_servebench demo")
    parser.add_argument(
        "--p-correct",
        type=float,
        default=0.7,
        help="share of questions the simulated model answers right",
    )
    parser.add_argument("--latency", type=float, default=0.05)
    args, rest = parser.parse_known_args(argv)
    records = load_jsonl(PACKAGE_DATA / "gsm8k_demo" / "test.jsonl")
    print(
        "servebench demo: the answers come from a MOCK server that simulates a model "
        f"(right with probability {args.p_correct}), not from a real model.",
        flush=True,
    )
    with MockServer(
        dataset_responder(records, p_correct=args.p_correct, seed=0), latency=args.latency
    ) as server:
        code = pytest.main(
            [
                "--sb-models",
                "vllm_chat",
                "--sb-datasets",
                "demo_gsm8k",
                "--sb-set",
                f"vllm_chat.base_url={server.base_url}",
                "-q",
                *rest,
            ]
        )
    print(
        "servebench demo: answers above came from the mock server; point --sb-set "
        "vllm_chat.base_url=... at a real endpoint to evaluate a model."
    )
    return int(code)


def download(argv: list[str]) -> int:
    """Fetch built-in datasets from their canonical sources, verified by pinned sha256."""
    from pytest_servebench.catalog.download import main as download_main

    return download_main(argv)


def compare(argv: list[str]) -> int:
    """Two runs side by side, case by case: accuracy, flips, paired test, service figures."""
    from pytest_servebench.report.compare import main as compare_main

    return compare_main(argv)


COMMANDS = {"demo": demo, "download": download, "compare": compare}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(
            "usage: python -m pytest_servebench {" + ",".join(COMMANDS) + "} [options]",
            file=sys.stderr,
        )
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
