"""End-to-end performance benchmark of pytest-servebench against the mock server.

    python bench/throughput.py            # every scenario, 3 repeats, medians
    python bench/throughput.py --quick    # the main scenarios once, smaller sizes skipped
    python bench/throughput.py --only c256_10k c256_10k_stream --repeat 5

Each run starts a fresh mock OpenAI server (its own process, loopback, fixed latency) and a
whole `pytest` process (start-up included) in a fresh temp folder, on a synthetic GSM8K-like
dataset of N records. Measured per run: wall time against the ideal N*k/C*latency, the most
requests the server saw in flight, completion requests per second, peak RSS of the pytest
process tree (wait4 ru_maxrss, and a /proc poll of the whole tree), the server's CPU use (it
must not be the bottleneck), and the pytest outcome (every case must have passed or failed:
no errors). A table is printed and everything is written to bench/results/<stamp>.json.

`--src DIR` runs another copy of the package (DIR/pytest_servebench is put first on
PYTHONPATH, for the pytest process only; the mock server is always this tree's), which is how
before/after figures are taken.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Scenario:
    name: str
    n: int
    concurrency: int
    latency: float
    stream: bool = False
    samples: int = 1
    quick: bool = True  # part of --quick
    # targets (None: not a target of this scenario)
    max_ratio: float | None = None  # wall <= max_ratio x ideal
    max_wall: float | None = None  # wall <= seconds
    min_in_flight: int | None = None
    min_rate: float | None = None  # cases per second end to end
    max_rss_mb: float | None = None
    note: str = ""

    @property
    def requests(self) -> int:
        return self.n * self.samples

    @property
    def ideal(self) -> float:
        return max(1.0, self.requests / self.concurrency) * self.latency


def scenarios() -> list[Scenario]:
    base = [
        Scenario("one_case", 1, 64, 0.2, max_wall=1.5, note="a run of one case"),
        Scenario("c64_1k", 1000, 64, 0.2, max_ratio=1.5, note="1,000 cases, C=64, 200 ms"),
        Scenario(
            "c256_10k",
            10_000,
            256,
            0.2,
            max_ratio=1.3,
            min_in_flight=240,
            max_rss_mb=200,
            note="10,000 cases, C=256, 200 ms",
        ),
        Scenario(
            "zero_10k",
            10_000,
            256,
            0.0,
            min_rate=1500,
            max_rss_mb=200,
            note="10,000 cases, zero latency",
        ),
        Scenario(
            "zero_50k",
            50_000,
            256,
            0.0,
            max_rss_mb=200,
            quick=False,
            note="50,000 cases, zero latency (memory)",
        ),
        Scenario(
            "k1_5k",
            5000,
            256,
            0.2,
            max_ratio=1.3,
            quick=False,
            note="5,000 cases, k=1 (reference for k=8)",
        ),
        Scenario(
            "k8_5k",
            5000,
            256,
            0.2,
            samples=8,
            max_ratio=1.3,
            quick=False,
            note="5,000 cases x 8 samples, C=256, 200 ms",
        ),
    ]
    out = []
    for s in base:
        out.append(s)
        streamed = Scenario(**{**asdict(s), "name": s.name + "_stream", "stream": True})
        streamed.note = s.note + ", streamed"
        out.append(streamed)
    return out


# ----------------------------------------------------------------------------- data


def make_dataset(root: Path, n: int) -> str:
    """N GSM8K-like records and a dataset config; returns the dataset config name."""
    name = f"bench_{n}"
    data = root / "datasets" / "bench" / f"test_{n}.jsonl"
    if not data.exists():
        data.parent.mkdir(parents=True, exist_ok=True)
        rng = random.Random(n)
        names = ["Ann", "Ben", "Carla", "Dev", "Emma", "Farid", "Gita", "Hugo"]
        things = ["apples", "marbles", "stickers", "books", "coins", "pencils"]
        with data.open("w", encoding="utf-8") as handle:
            for i in range(n):
                who, what = rng.choice(names), rng.choice(things)
                a, b, c = rng.randint(2, 900), rng.randint(2, 900), rng.randint(2, 9)
                total = (a + b) * c
                question = (
                    f"Problem {i}: {who} has {a} {what} and buys {b} more {what} at the "
                    f"market on Monday. On Tuesday {who} multiplies the collection by {c} "
                    f"after a lucky trade with a neighbour. How many {what} does {who} "
                    f"have at the end of Tuesday?"
                )
                answer = (
                    f"{who} has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} {what} on Monday.\n"
                    f"After Tuesday {who} has {a + b} * {c} = <<{a + b}*{c}={total}>>"
                    f"{total} {what}.\n#### {total}"
                )
                handle.write(json.dumps({"question": question, "answer": answer}) + "\n")
    suite = root / "suites" / "datasets" / f"{name}.yaml"
    suite.parent.mkdir(parents=True, exist_ok=True)
    suite.write_text(
        "kind: dataset\n"
        "abbr: bench\n"
        f"path: bench/test_{n}.jsonl\n"
        "answer_field: answer\n"
        "prompt:\n"
        "  - role: user\n"
        '    content: "Question: {question}\\nLet\'s think step by step\\nAnswer:"\n'
        "evaluator: {type: gsm8k}\n",
        encoding="utf-8",
    )
    return name


# ----------------------------------------------------------------------------- processes


def proc_cpu(pid: int) -> float:
    """utime + stime of a process, in seconds (children it waited for included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # fields[0] is state (field 3); utime is field 14, stime 15, cutime 16, cstime 17
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            continue
    return out


def tree_rss(root: int) -> int:
    """Bytes of RSS of a process and all its descendants (from /proc)."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except OSError:
            continue
        todo += _children(pid)
    return total


class Server:
    """The mock server in its own process (also used by the micro benchmarks). Without a
    dataset it gives the mock's default answers."""

    def __init__(self, folder: Path, dataset: Path | None, latency: float, env: dict[str, str]):
        self.port_file = folder / "port"
        self.stats_file = folder / "stats.json"
        for f in (self.port_file, self.stats_file):
            f.unlink(missing_ok=True)
        self.log = (folder / "server.log").open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest_servebench.testing.mockserver",
                *([f"--dataset={dataset}", "--p-correct=0.7"] if dataset else []),
                f"--latency={latency}",
                f"--port-file={self.port_file}",
                f"--stats-file={self.stats_file}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=folder,
        )
        deadline = time.monotonic() + 60
        while not self.port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mock server did not start; see {folder / 'server.log'}")
            time.sleep(0.02)
        self.port = int(self.port_file.read_text())
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        try:
            stats = json.loads(self.stats_file.read_text())
        except (OSError, ValueError):
            return {}
        stats.pop("bodies", None)
        return stats


@dataclass
class Result:
    scenario: str
    wall: float
    ideal: float
    ratio: float | None
    max_in_flight: int
    requests: int
    req_per_s: float
    cases_per_s: float
    rss_mb: float  # wait4 ru_maxrss of the pytest process
    tree_rss_mb: float  # /proc poll, sum over the process tree
    pytest_cpu: float
    server_cpu: float
    server_cpu_pct: float
    outcome: str
    exit_code: int
    load: float  # 1-minute load average when the run started (the machine is shared)
    ok: bool
    problems: list[str] = field(default_factory=list)


_OUTCOME = re.compile(r"=+ (.*?) in ([\d.]+)s")


def run_once(
    s: Scenario,
    root: Path,
    env: dict[str, str],
    keep: bool,
    extra: list[str],
    python: str = sys.executable,
) -> Result:
    dataset = make_dataset(root, s.n)
    data_file = root / "datasets" / "bench" / f"test_{s.n}.jsonl"
    run_dir = Path(tempfile.mkdtemp(prefix=f"{s.name}-", dir=root))
    server_env = {**os.environ, "PYTHONPATH": str(REPO)}
    server = Server(run_dir, data_file, s.latency, server_env)
    model = "vllm_stream_chat" if s.stream else "vllm_chat"
    args = [
        python,
        "-m",
        "pytest",
        "--sb-models",
        model,
        "--sb-datasets",
        dataset,
        f"--sb-suites={root / 'suites'}",
        f"--sb-datasets-dir={root / 'datasets'}",
        f"--sb-work-dir={run_dir / 'out'}",
        f"--sb-set={model}.base_url={server.url}",
        # Named, so no GET /models first: the mock answers /models after its full latency too
        # (a real server answers it at once), which would add one latency to every run.
        f"--sb-set={model}.model=mock-model",
        f"--sb-set={model}.max_concurrency={s.concurrency}",
        *(
            [f"--sb-set={model}.generation_kwargs.num_return_sequences={s.samples}"]
            if s.samples > 1
            else []
        ),
        *extra,
    ]
    out = (run_dir / "pytest.out").open("w")
    load = os.getloadavg()[0]
    cpu0 = server.cpu()
    peak = 0
    start = time.perf_counter()
    try:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=run_dir, env=env)
    except BaseException:
        server.stop()
        raise
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.wait(0.05):
            peak = max(peak, tree_rss(proc.pid))

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:  # interrupted: leave no process behind
        proc.kill()
        proc.wait()
        server.stop()
        raise
    wall = time.perf_counter() - start
    done.set()
    poller.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.close()
    server_cpu = server.cpu() - cpu0
    stats = server.stop()
    text = (run_dir / "pytest.out").read_text(errors="replace")
    matches = _OUTCOME.findall(text)
    outcome = matches[-1][0] if matches else "?"
    counts = {word: int(num) for num, word in re.findall(r"(\d+) (passed|failed|errors?)", outcome)}
    problems = []
    if counts.get("passed", 0) + counts.get("failed", 0) != s.n:
        problems.append(f"expected {s.n} passed+failed, got {outcome!r}")
    if counts.get("error", 0) or counts.get("errors", 0):
        problems.append(f"errors: {outcome!r}")
    completions = sum(
        v for k, v in (stats.get("requests") or {}).items() if k.endswith("completions")
    )
    if completions != s.requests:
        problems.append(f"server saw {completions} completion requests, expected {s.requests}")
    if not keep and not problems:
        shutil.rmtree(run_dir, ignore_errors=True)
    elif problems:
        problems.append(f"kept {run_dir}")
    return Result(
        scenario=s.name,
        wall=wall,
        ideal=s.ideal,
        ratio=wall / s.ideal if s.ideal else None,
        max_in_flight=int(stats.get("max_in_flight", 0)),
        requests=completions,
        req_per_s=completions / wall,
        cases_per_s=s.n / wall,
        rss_mb=usage.ru_maxrss / 1024,
        tree_rss_mb=peak / 2**20,
        pytest_cpu=usage.ru_utime + usage.ru_stime,
        server_cpu=server_cpu,
        server_cpu_pct=100 * server_cpu / wall,
        outcome=outcome,
        exit_code=proc.returncode,
        load=load,
        ok=not problems,
        problems=problems,
    )


# ----------------------------------------------------------------------------- report


def median_result(results: list[Result]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": len(results)}
    for key in (
        "wall",
        "ratio",
        "max_in_flight",
        "req_per_s",
        "cases_per_s",
        "rss_mb",
        "tree_rss_mb",
        "pytest_cpu",
        "load",
        "server_cpu",
        "server_cpu_pct",
    ):
        values = [getattr(r, key) for r in results if getattr(r, key) is not None]
        out[key] = statistics.median(values) if values else None
    out["walls"] = [round(r.wall, 3) for r in results]
    out["ok"] = all(r.ok for r in results)
    return out


def verdicts(s: Scenario, m: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each target of the scenario."""
    out = []
    if s.max_ratio is not None and m["ratio"] is not None:
        out.append(
            (
                f"wall <= {s.max_ratio} x ideal {s.ideal:.2f}s",
                f"{m['wall']:.2f}s = {m['ratio']:.2f} x",
                m["ratio"] <= s.max_ratio,
            )
        )
    if s.max_wall is not None:
        out.append((f"wall <= {s.max_wall}s", f"{m['wall']:.2f}s", m["wall"] <= s.max_wall))
    if s.min_in_flight is not None:
        out.append(
            (
                f"in flight >= {s.min_in_flight}",
                str(m["max_in_flight"]),
                m["max_in_flight"] >= s.min_in_flight,
            )
        )
    if s.min_rate is not None:
        out.append(
            (
                f">= {s.min_rate:.0f} cases/s",
                f"{m['cases_per_s']:.0f} cases/s",
                m["cases_per_s"] >= s.min_rate,
            )
        )
    if s.max_rss_mb is not None:
        rss = max(m["rss_mb"], m["tree_rss_mb"])
        out.append((f"peak RSS <= {s.max_rss_mb:.0f} MB", f"{rss:.0f} MB", rss <= s.max_rss_mb))
    return out


def print_table(rows: list[tuple[Scenario, dict[str, Any]]], derived: dict[str, Any]) -> None:
    head = (
        f"{'scenario':<18} {'N':>6} {'k':>2} {'C':>4} {'lat':>5} {'ideal':>6} {'wall':>7} "
        f"{'ratio':>5} {'inflt':>5} {'req/s':>7} {'cpu s':>6} {'rss MB':>6} {'srvCPU':>6} "
        f"{'load':>4} {'ok':>3}"
    )
    print(head)
    print("-" * len(head))
    for s, m in rows:
        ratio = f"{m['ratio']:.2f}" if m["ratio"] is not None else "-"
        print(
            f"{s.name:<18} {s.n:>6} {s.samples:>2} {s.concurrency:>4} {s.latency:>5.2f} "
            f"{s.ideal:>6.2f} {m['wall']:>7.2f} {ratio:>5} {m['max_in_flight']:>5.0f} "
            f"{m['req_per_s']:>7.0f} {m['pytest_cpu']:>6.2f} "
            f"{max(m['rss_mb'], m['tree_rss_mb']):>6.0f} {m['server_cpu_pct']:>5.0f}% "
            f"{m['load']:>4.1f} {'yes' if m['ok'] else 'NO':>3}"
        )
    print()
    print(f"{'scenario':<18} {'target':<34} {'measured':<22} met")
    for s, m in rows:
        for target, measured, met in verdicts(s, m):
            print(f"{s.name:<18} {target:<34} {measured:<22} {'yes' if met else 'NO'}")
    for key, value in derived.items():
        print(f"{key}: {value}")


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupted)  # stop the server and pytest, then exit
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="main scenarios, one run each")
    p.add_argument("--repeat", type=int, default=None, help="runs per scenario (default 3)")
    p.add_argument("--only", nargs="+", metavar="SCENARIO", help="run only these scenarios")
    p.add_argument("--src", help="folder holding the pytest_servebench package to measure")
    p.add_argument("--label", default="", help="a label stored in the json")
    p.add_argument("--keep", action="store_true", help="keep the temp folders")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--pytest-arg", action="append", default=[], help="extra pytest argument")
    p.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter that runs pytest (e.g. a clean venv's, with only this package and "
        "its dependencies installed)",
    )
    p.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="keep PYTHONDONTWRITEBYTECODE if set (default: unset it for the runs, as on a "
        "user's machine)",
    )
    args = p.parse_args(argv)
    all_scenarios = scenarios()
    if args.list:
        for s in all_scenarios:
            print(f"{s.name:<18} {s.note}")
        return 0
    if args.only:
        unknown = set(args.only) - {s.name for s in all_scenarios}
        if unknown:
            p.error(f"unknown scenarios: {', '.join(sorted(unknown))} (see --list)")
        chosen = [s for s in all_scenarios if s.name in args.only]
    elif args.quick:
        chosen = [s for s in all_scenarios if s.quick]
    else:
        chosen = all_scenarios
    repeat = args.repeat or (1 if args.quick else 3)
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    if not args.no_bytecode_cache:
        # A user's Python caches bytecode (and pytest its assertion-rewritten plugin modules);
        # without the cache every run recompiles pytest's plugins and ours (~1 s).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    if args.src:
        src = Path(args.src).resolve()
        if not (src / "pytest_servebench").is_dir():
            p.error(f"--src {src}: no pytest_servebench folder there")
        env["PYTHONPATH"] = str(src)
    root = Path(tempfile.mkdtemp(prefix="servebench-bench-"))
    rows: list[tuple[Scenario, dict[str, Any]]] = []
    raw: dict[str, list[dict[str, Any]]] = {}
    try:
        # A warm-up run fills the bytecode caches; not measured.
        warm = next(s for s in all_scenarios if s.name == "one_case")
        run_once(warm, root, env, False, [], args.python)
        # Round-robin over the scenarios so that the machine's noise spreads evenly.
        by_name: dict[str, list[Result]] = {s.name: [] for s in chosen}
        for i in range(repeat):
            for s in chosen:
                result = run_once(s, root, env, args.keep, args.pytest_arg, args.python)
                by_name[s.name].append(result)
                flag = "" if result.ok else "  PROBLEM: " + "; ".join(result.problems)
                print(
                    f"[{i + 1}/{repeat}] {s.name:<18} wall {result.wall:7.2f}s "
                    f"cpu {result.pytest_cpu:6.2f}s load {result.load:4.1f} "
                    f"in flight {result.max_in_flight:4d} rss {result.rss_mb:5.0f} MB "
                    f"server CPU {result.server_cpu_pct:3.0f}% | {result.outcome}{flag}",
                    flush=True,
                )
        for s in chosen:
            raw[s.name] = [asdict(r) for r in by_name[s.name]]
            rows.append((s, median_result(by_name[s.name])))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    medians = {s.name: m for s, m in rows}
    derived: dict[str, Any] = {}
    one = medians.get("one_case")
    for name in ("zero_10k", "zero_10k_stream"):
        if one and name in medians:
            overhead = (medians[name]["wall"] - one["wall"]) / 10_000
            derived[f"per-case overhead ({name}, start-up excluded)"] = (
                f"{overhead * 1e6:.0f} us/case"
            )
    for suffix in ("", "_stream"):
        k1, k8 = medians.get("k1_5k" + suffix), medians.get("k8_5k" + suffix)
        if k1 and k8:
            derived[f"k=8 scaling{suffix} (wall k8 / wall k1, linear = 8)"] = (
                f"{k8['wall'] / k1['wall']:.2f}; ratio to ideal k1 {k1['ratio']:.2f}, "
                f"k8 {k8['ratio']:.2f}"
            )
    print()
    print_table(rows, derived)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d_%H%M%S")
    report = {
        "label": args.label,
        "src": args.src or str(REPO),
        "python": args.python,
        "pytest_args": args.pytest_arg,
        "time": stamp,
        "repeat": repeat,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "bytecode_cache": "PYTHONDONTWRITEBYTECODE" not in env,
        "scenarios": {
            s.name: {
                **asdict(s),
                "ideal": s.ideal,
                "median": m,
                "targets": [{"target": t, "measured": v, "met": ok} for t, v, ok in verdicts(s, m)],
                "runs": raw[s.name],
            }
            for s, m in rows
        },
        "derived": derived,
    }
    path = RESULTS / f"bench_{stamp}{'_' + args.label if args.label else ''}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {path}")
    return 0 if all(m["ok"] for _, m in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
