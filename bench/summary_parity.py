"""Same predictions, same summary: compare two checkouts' summary files byte for byte.

A refactor must not change a figure. This runs one evaluation (two models x GSM8K demo, MMLU's
57 subjects with their category rows, C-Eval, MATH-500, k=3 samples on one model) against the
mock server with the AFTER python, then re-scores copies of that work dir with both pythons
(`--sb-mode eval`, no request sent) and compares the summary files (csv, md, txt, json) and the
terminal's summary section, the run's timestamp aside.

    python bench/summary_parity.py --before /path/to/old/.venv/bin/python \
        --after .venv/bin/python --datasets-dir ../shared/datasets

Exit status 0 when every file is identical; the differences are printed otherwise.
"""

from __future__ import annotations

import argparse
import difflib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("vllm_chat", "vllm_stream_chat")
DATASETS = ("demo_gsm8k", "mmlu", "ceval", "math500")
LIMITS = {"mmlu": 2, "ceval": 2, "math500": 40}


def start_mock(python: str, folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    port_file = folder / "mock.port"
    code = (
        "import sys; from pytest_servebench.catalog.datasets import PACKAGE_DATA as p; "
        "print(p / 'gsm8k_demo' / 'test.jsonl')"
    )
    try:
        data = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    except subprocess.CalledProcessError:  # an older layout
        code = code.replace("catalog.datasets", "datasets")
        data = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    proc = subprocess.Popen(
        [
            python,
            "-m",
            "pytest_servebench.testing.mockserver",
            "--dataset",
            data.stdout.strip(),
            "--p-correct",
            "0.6",
            "--seed",
            "7",
            "--latency",
            "0",
            "--port-file",
            str(port_file),
        ],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(200):
        if port_file.exists() and port_file.read_text().strip():
            return proc, f"http://127.0.0.1:{port_file.read_text().strip()}/v1"
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("the mock server did not start")


def pytest_args(base_url: str, work: Path, datasets_dir: Path) -> list[str]:
    args = [
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        "-q",
        "--sb-models",
        *MODELS,
        "--sb-datasets",
        *DATASETS,
        f"--sb-work-dir={work}",
        f"--sb-datasets-dir={datasets_dir}",
        "--sb-set=vllm_chat.generation_kwargs.num_return_sequences=3",
    ]
    for model in MODELS:
        args += [f"--sb-set={model}.base_url={base_url}", f"--sb-set={model}.model=mock-model"]
    for dataset, limit in LIMITS.items():
        args.append(f"--sb-set={dataset}.limit={limit}")
    return args


def run_pytest(python: str, args: list[str], cwd: Path) -> str:
    result = subprocess.run(
        [python, "-m", "pytest", *args], cwd=cwd, capture_output=True, text=True, timeout=1800
    )
    if result.returncode not in (0, 1):
        raise SystemExit(f"pytest exited {result.returncode}:\n{result.stdout[-3000:]}")
    return result.stdout


def summary_section(stdout: str) -> str:
    """The terminal's servebench summary, without the lines that name the run's folder."""
    start = stdout.find("servebench summary")
    section = stdout[start:] if start >= 0 else ""
    return "\n".join(
        line
        for line in section.splitlines()
        if not line.startswith(("work dir:", "summary:", "resume:", "=", "servebench work dir"))
        and " in " not in line.split("=")[-1]  # pytest's final "N passed in 1.2s" line
    )


def summary_files(work: Path) -> dict[str, str]:
    files = {}
    for path in sorted(work.glob("*/summary/summary_*")):
        text = path.read_text(encoding="utf-8").replace(str(work), "WORK")
        text = re.sub(r"\d{8}_\d{6}", "STAMP", text)  # the run's and the re-scoring's times
        files[re.sub(r"_\d{8}_\d{6}", "_STAMP", path.name)] = text
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="python of the old checkout's venv")
    parser.add_argument("--after", default=sys.executable, help="python of the new checkout")
    parser.add_argument("--datasets-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    datasets_dir = args.datasets_dir.resolve()
    with tempfile.TemporaryDirectory(prefix="servebench-parity-") as tmp:
        root = Path(tmp)
        proc, base_url = start_mock(args.after, root)
        try:
            run_pytest(args.after, pytest_args(base_url, root / "infer", datasets_dir), root)
        finally:
            proc.kill()
        outputs = {}
        for side, python in (("before", args.before), ("after", args.after)):
            work = root / side
            shutil.copytree(root / "infer", work)
            for old in work.glob("*/summary"):
                shutil.rmtree(old)
            eval_args = [
                *pytest_args("http://127.0.0.1:9/v1", work, datasets_dir),
                "--sb-mode=eval",
                "--sb-reuse=latest",
            ]
            stdout = run_pytest(python, eval_args, root)
            outputs[side] = {"terminal": summary_section(stdout), **summary_files(work)}
        before, after = outputs["before"], outputs["after"]
        differ = 0
        for name in sorted(set(before) | set(after)):
            a, b = before.get(name), after.get(name)
            if a == b:
                print(f"identical: {name} ({len(a or '')} chars)")
                continue
            differ += 1
            print(f"DIFFERENT: {name}")
            diff = difflib.unified_diff(
                (a or "").splitlines(), (b or "").splitlines(), "before", "after", lineterm=""
            )
            print("\n".join(list(diff)[:60]))
        return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
