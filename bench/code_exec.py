"""HumanEval 164 x k=4 against the mock server: wall time, the overlap of execution with the
requests, the cost of one sandboxed program.

    python bench/code_exec.py [--datasets-dir ../shared/datasets] [--latency 0] [--distinct]

Two pytest runs in one sitting, in fresh temp folders: `--sb-mode infer` (requests only: the
engine's own time) and `--sb-mode all` (requests and sandboxed execution). The mock answers
three samples in four with the canonical solution and one with a stub; `--distinct` makes
every sample's program different (a comment with its number), so nothing is shared between
samples. Figures, from the prediction files (each reply's finish time) and the pool's stats:

* requests span: first to last reply, in both runs: equal spans mean the engine never
  waited on execution;
* programs started before the last reply: execution overlapped the requests;
* execution span and mean program time; the pytest wall time of each run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from pytest_servebench.testing.mockserver import MockServer  # noqa: E402


def responder(path: Path, distinct: bool):  # type: ignore[no-untyped-def]
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        problems = [json.loads(line) for line in handle]

    def respond(request):  # type: ignore[no-untyped-def]
        for record in problems:
            if record["prompt"] in request.prompt_text:
                body = (
                    "    pass\n" if request.sample_index % 4 == 3 else record["canonical_solution"]
                )
                tag = f"# sample {request.sample_index}\n" if distinct else ""
                return f"```python\n{record['prompt']}{body}{tag}```"
        return "?"

    return respond


def run(url: str, datasets: Path, mode: str) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        command = [
            sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
            "--sb-models", "vllm_chat", "--sb-datasets", "humaneval",
            "--sb-set", f"vllm_chat.base_url={url}",
            "--sb-set", "vllm_chat.generation_kwargs.num_return_sequences=4",
            "--sb-datasets-dir", str(datasets), "--sb-work-dir", "out", "--sb-mode", mode,
        ]  # fmt: skip
        started = time.time()
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
        wall = time.time() - started
        root = next((Path(folder) / "out").iterdir())
        times = sorted(
            json.loads(line)["time"]
            for path in (root / "predictions").rglob("*.jsonl")
            for line in path.read_text().splitlines()
        )
        stats = [json.loads(p.read_text()) for p in (root / "executions").glob("stats-*.json")]
        return {"wall": wall, "rc": done.returncode, "times": times, "stats": stats,
                "started": started, "tail": done.stdout[-600:]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets-dir", default=str(REPO.parent.parent / "shared" / "datasets"))
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--distinct", action="store_true")
    args = parser.parse_args()
    datasets = Path(args.datasets_dir)
    data = datasets / "humaneval" / "HumanEval.jsonl.gz"
    with MockServer(responder(data, args.distinct), latency=args.latency) as server:
        infer = run(server.base_url, datasets, "infer")
        full = run(server.base_url, datasets, "all")
    for name, result in (("infer", infer), ("all", full)):
        times = result["times"]
        print(f"{name}: pytest wall {result['wall']:.2f}s, exit {result['rc']}, "
              f"{len(times)} replies, requests span {times[-1] - times[0]:.2f}s")  # fmt: skip
    stats = full["stats"][0]
    last_reply = full["times"][-1]
    print(
        f"execution: {stats['ran']} programs run ({stats['judged']} samples judged), "
        f"mean {stats['run_seconds'] / max(1, stats['ran']):.3f}s each, {stats['workers']} "
        f"workers, span {stats['last_end'] - stats['first_start']:.2f}s; first program "
        f"{stats['first_start'] - full['times'][0]:+.2f}s after the first reply; last reply "
        f"{last_reply - stats['first_start']:.2f}s after the first program started "
        f"(isolation {stats['isolation']})"
    )
    print(full["tail"])


if __name__ == "__main__":
    main()
