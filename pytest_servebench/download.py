"""`python -m pytest_servebench download NAME... [--to DIR]`: fetch the built-in datasets.

Each set comes from its canonical public source, pinned to a commit, and every file is checked
against a pinned sha256 (``data/datasets.sha256``) before it takes its place. MMLU and C-Eval
come as zip archives: the archive's own sha256 is checked, then each extracted file's. A file is
written to a temporary name beside its destination and renamed only once verified, so an
interrupted or corrupted download never leaves a half file where the configs look.

``--mirror URL`` (or ``$SERVEBENCH_DOWNLOAD_MIRROR``) fetches from a mirror instead: an HTTP(S)
URL, ``file://`` URL or folder laid out like the datasets dir (``<mirror>/mmlu/test/x.csv``),
each file checked against the same pinned sha256. Air-gapped sites and the tests use it.

C-Eval is CC BY-NC-SA 4.0 (non-commercial): it is never shipped with the package; this command
fetches it for the user and prints its licence.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlparse

from .errors import ServebenchError

SUMS_FILE = Path(__file__).parent / "data" / "datasets.sha256"
MIRROR_ENV = "SERVEBENCH_DOWNLOAD_MIRROR"
CHUNK = 1 << 16
GH = "https://raw.githubusercontent.com"


class DownloadError(ServebenchError):
    """A file could not be fetched or did not match its pinned checksum."""


@dataclass(frozen=True)
class Archive:
    url: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Source:
    """One downloadable set: where its files come from and what they must hash to."""

    name: str
    title: str
    license: str
    license_url: str
    homepage: str
    required: tuple[
        str, ...
    ]  # file paths, or folder prefixes ending in "/", under the datasets dir
    urls: dict[str, tuple[str, ...]] = field(default_factory=dict)  # file -> canonical URL(s)
    archive: Archive | None = None  # required files without a URL come from it
    extras: tuple[str, ...] = ()  # licence and readme files: fetched when available
    notice: str = ""


_GSM8K = f"{GH}/openai/grade-school-math/3101c7d5072418e28b9008a6636bde82a006892c"
_PRM800K = "openai/prm800k/7ecc794703b2877f63226f2477a49b34f9b25163"
_QWEN = f"{GH}/QwenLM/Qwen2.5-Math/a45202bd16f1ec06f433442dc1152d0074773465"
_AREAL = f"{GH}/inclusionAI/AReaL/f55fe685c661b0117d888fcae47d6f46e9a85087"
_LLAMA_FACTORY = f"{GH}/hiyouga/LLaMA-Factory/465ee8119aa489a41bee0b01b3c105a2f3dd137f"
_FOUNDRY = f"{GH}/mosaicml/llm-foundry/8c8dd48f72168c5d51e2f7b151595892a8fba43d"
_HUMANEVAL = f"{GH}/openai/human-eval/6d43fb980f9fee3c892a914eda09951f772ad10d"

SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            "gsm8k",
            "GSM8K test (1,319 problems)",
            "MIT",
            "https://github.com/openai/grade-school-math/blob/master/LICENSE",
            "https://github.com/openai/grade-school-math",
            ("gsm8k/test.jsonl",),
            {
                "gsm8k/test.jsonl": (f"{_GSM8K}/grade_school_math/data/test.jsonl",),
                "gsm8k/LICENSE": (f"{_GSM8K}/LICENSE",),
            },
            extras=("gsm8k/LICENSE",),
        ),
        Source(
            "math500",
            "MATH-500 (PRM800K test subset, 500 problems)",
            "MIT",
            "https://github.com/openai/prm800k/blob/main/LICENSE",
            "https://github.com/openai/prm800k",
            ("math500/test.jsonl",),
            {
                "math500/test.jsonl": (
                    # The official file is Git LFS; its oid is the pinned sha256.
                    f"https://media.githubusercontent.com/media/{_PRM800K}/prm800k/math_splits/test.jsonl",
                    f"{GH}/hkust-nlp/simpleRL-reason/cf1c7858bfc145a27aa733e75d930d34f0d318a6"
                    "/examples/simplelr_math_eval/data/math500/test.jsonl",
                ),
                "math500/LICENSE": (f"{GH}/{_PRM800K}/LICENSE",),
            },
            extras=("math500/LICENSE",),
        ),
        Source(
            "aime2024",
            "AIME 2024 I and II (30 problems)",
            "MIT for the compilation; problem statements (c) MAA",
            "https://github.com/QwenLM/Qwen2.5-Math",
            "https://github.com/QwenLM/Qwen2.5-Math",
            ("aime2024/test.jsonl",),
            {
                "aime2024/test.jsonl": (f"{_QWEN}/evaluation/data/aime24/test.jsonl",),
                "aime2024/LICENSE": (f"{_QWEN}/evaluation/LICENSE",),
            },
            extras=("aime2024/LICENSE",),
            notice="The problems are (c) MAA: fine for evaluation, not for redistribution as MIT.",
        ),
        Source(
            "aime2025",
            "AIME 2025 I and II (30 problems)",
            "Apache-2.0 for the compilation; problem statements (c) MAA",
            "https://github.com/inclusionAI/AReaL/blob/main/LICENSE",
            "https://github.com/inclusionAI/AReaL",
            ("aime2025/test.jsonl",),
            {
                "aime2025/test.jsonl": (f"{_AREAL}/evaluation/data/aime25/test.jsonl",),
                "aime2025/LICENSE": (f"{_AREAL}/LICENSE",),
            },
            extras=("aime2025/LICENSE",),
            notice="The problems are (c) MAA. Three records have LaTeX mis-escaped in the "
            "source file; the dataset reader restores them (repair_latex).",
        ),
        Source(
            "mmlu",
            "MMLU (57 subjects: dev 285, val 1,531, test 14,042)",
            "MIT",
            "https://github.com/hendrycks/test/blob/master/LICENSE",
            "https://github.com/hendrycks/test",
            ("mmlu/dev/", "mmlu/val/", "mmlu/test/"),
            {
                "mmlu/LICENSE": (
                    f"{GH}/hendrycks/test/4450500f923c49f1fb1dd3d99108a0bd9717b660/LICENSE",
                )
            },
            Archive(
                f"{_LLAMA_FACTORY}/evaluation/mmlu/mmlu.zip",
                "9e2b2d78bf59d80baf271a13005568ef0aca17bd663f2e5ebfecdc07a68f0edc",
                2_336_375,
            ),
            extras=("mmlu/LICENSE", "mmlu/README.txt", "mmlu/possibly_contaminated_urls.txt"),
        ),
        Source(
            "ceval",
            "C-Eval (52 subjects: val 1,346, dev 260)",
            "CC BY-NC-SA 4.0 (non-commercial, share-alike)",
            "https://creativecommons.org/licenses/by-nc-sa/4.0/",
            "https://github.com/hkust-nlp/ceval",
            ("ceval/val/", "ceval/dev/"),
            {
                "ceval/subject_mapping.json": (
                    f"{GH}/hkust-nlp/ceval/cba65ae93bcf189149ced9f66ae0c958201faed9/subject_mapping.json",
                )
            },
            Archive(
                f"{_LLAMA_FACTORY}/evaluation/ceval/ceval.zip",
                "68786deeea68ff089c56563ee48fab8160da857b77b913437bb504d681fd8e20",
                1_548_171,
            ),
            extras=("ceval/subject_mapping.json", "ceval/LICENSE-DATA"),
            notice="C-Eval is licensed CC BY-NC-SA 4.0: non-commercial use only, and what you "
            "derive from it must be shared alike. It is not shipped with pytest-servebench; you "
            "fetch it here for your own evaluation. Licence: "
            "https://creativecommons.org/licenses/by-nc-sa/4.0/legalcode",
        ),
        Source(
            "arc_challenge",
            "ARC-Challenge test (1,172 questions, MosaicML's converted form)",
            "CC BY-SA 4.0",
            "https://creativecommons.org/licenses/by-sa/4.0/",
            "https://allenai.org/data/arc",
            ("arc_challenge/test.jsonl",),
            {
                "arc_challenge/test.jsonl": (
                    f"{_FOUNDRY}/scripts/eval/local_data/world_knowledge/arc_challenge.jsonl",
                ),
                "arc_challenge/LICENSE-llm-foundry-Apache-2.0": (f"{_FOUNDRY}/LICENSE",),
            },
            extras=(
                "arc_challenge/LICENSE-CC-BY-SA-4.0.txt",
                "arc_challenge/LICENSE-llm-foundry-Apache-2.0",
            ),
            notice="ARC is CC BY-SA 4.0 (AI2): share derivatives alike.",
        ),
        Source(
            "humaneval",
            "HumanEval (164 Python problems with unit tests, gzip JSONL)",
            "MIT",
            "https://github.com/openai/human-eval/blob/master/LICENSE",
            "https://github.com/openai/human-eval",
            ("humaneval/HumanEval.jsonl.gz",),
            {
                "humaneval/HumanEval.jsonl.gz": (f"{_HUMANEVAL}/data/HumanEval.jsonl.gz",),
                "humaneval/LICENSE": (f"{_HUMANEVAL}/LICENSE",),
            },
            extras=("humaneval/LICENSE",),
            notice="The records hold Python tests; scoring runs model code (in a sandbox: see "
            "docs/code-execution.md).",
        ),
    )
}
ALIASES = {"math": "math500", "aime24": "aime2024", "aime25": "aime2025", "arc": "arc_challenge"}


def pinned_sums(path: Path = SUMS_FILE) -> dict[str, str]:
    """relative path -> sha256, from a ``sha256sum`` style file."""
    sums: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            digest, _, name = line.strip().partition("  ")
            sums[name.lstrip("*")] = digest.lower()
    return sums


def files_of(source: Source, sums: dict[str, str]) -> tuple[list[str], list[str]]:
    """(required files, extra files) of a source, each with a pinned sha256."""
    required: list[str] = []
    for item in source.required:
        if item.endswith("/"):
            found = sorted(name for name in sums if name.startswith(item))
            if not found:
                raise DownloadError(f"no pinned files under {item} in {SUMS_FILE}")
            required += found
        elif item in sums:
            required.append(item)
        else:
            raise DownloadError(f"{item} has no pinned sha256 in {SUMS_FILE}")
    extras = [name for name in source.extras if name in sums and name not in required]
    return required, extras


# -- fetching ------------------------------------------------------------------------------------


def _is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")


@contextmanager
def _open_url(url: str) -> Iterator[Iterator[bytes]]:
    """Chunks of the resource at ``url`` (http, https, file:// or a plain path)."""
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        import httpx

        client = _client(trust_env=not _is_loopback(url))
        try:
            with client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise DownloadError(f"GET {url}: HTTP {response.status_code}")
                yield response.iter_bytes(CHUNK)
        except httpx.HTTPError as exc:
            raise DownloadError(f"GET {url}: {type(exc).__name__}: {exc}") from None
        return
    path = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(url)
    try:
        handle: IO[bytes] = path.open("rb")
    except OSError as exc:
        raise DownloadError(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        yield iter(lambda: handle.read(CHUNK), b"")


_CLIENTS: dict[bool, object] = {}


def _client(trust_env: bool):  # -> httpx.Client, one per kind for a whole download session
    import httpx

    if trust_env not in _CLIENTS:
        _CLIENTS[trust_env] = httpx.Client(
            follow_redirects=True, timeout=httpx.Timeout(30.0, read=120.0), trust_env=trust_env
        )
    return _CLIENTS[trust_env]


def close_clients() -> None:
    for client in _CLIENTS.values():
        client.close()  # type: ignore[attr-defined]
    _CLIENTS.clear()


def _download_to(url: str, target: Path) -> str:
    """Stream ``url`` into ``target``; the sha256 of what was written."""
    digest = hashlib.sha256()
    with _open_url(url) as chunks, target.open("wb") as out:
        for chunk in chunks:
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


@contextmanager
def _staging(dest: Path) -> Iterator[Path]:
    """A temporary file beside ``dest``, removed unless it was renamed into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _install(urls: tuple[str, ...], dest: Path, sha256: str) -> None:
    """Fetch the first URL that works into ``dest``, verified; nothing is left on failure."""
    errors = []
    for url in urls:
        with _staging(dest) as tmp:
            try:
                got = _download_to(url, tmp)
            except DownloadError as exc:
                errors.append(str(exc))
                continue
            if got != sha256:
                errors.append(f"{url}: sha256 {got} does not match the pinned {sha256}")
                continue
            os.replace(tmp, dest)
            return
    raise DownloadError("; ".join(errors) or f"no source for {dest.name}")


# -- one set -------------------------------------------------------------------------------------


@dataclass
class Report:
    fetched: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # extras that could not be had


def download(
    source: Source,
    to: Path,
    mirror: str | None = None,
    force: bool = False,
    sums: dict[str, str] | None = None,
    say: Callable[[str], None] = print,
) -> Report:
    """Lay one set out under ``to``; raise DownloadError when a required file fails."""
    try:
        return _download(source, to, mirror, force, sums, say)
    finally:
        close_clients()


def _download(
    source: Source,
    to: Path,
    mirror: str | None,
    force: bool,
    sums: dict[str, str] | None,
    say: Callable[[str], None],
) -> Report:
    sums = sums if sums is not None else pinned_sums()
    required, extras = files_of(source, sums)
    report = Report()
    todo = []
    for name in required + extras:
        dest = to / name
        if not force and dest.is_file():
            if file_sha256(dest) == sums[name]:
                report.present.append(name)
                continue
            say(f"  {name}: differs from the pinned sha256, fetching it again")
        todo.append(name)
    if not todo:
        return report
    to.mkdir(parents=True, exist_ok=True)
    if mirror:
        base = mirror.rstrip("/")
        for name in todo:
            try:
                _install((f"{base}/{name}",), to / name, sums[name])
                report.fetched.append(name)
            except DownloadError as exc:
                if name in required:
                    raise
                report.skipped.append(f"{name} ({exc})")
        return report
    from_archive = [n for n in todo if n not in source.urls and n in required]
    from_archive += [n for n in todo if n not in source.urls and n in extras]
    for name in todo:
        if name not in source.urls:
            continue
        try:
            _install(source.urls[name], to / name, sums[name])
            report.fetched.append(name)
        except DownloadError as exc:
            if name in required:
                raise
            report.skipped.append(f"{name} ({exc})")
    if from_archive:
        if source.archive is None:
            missing = [n for n in from_archive if n in required]
            if missing:
                raise DownloadError(f"no canonical source for {', '.join(missing)}; use --mirror")
            report.skipped += [f"{n} (available from a --mirror only)" for n in from_archive]
            return report
        _from_archive(source, to, from_archive, required, sums, report, say)
    return report


def _from_archive(
    source: Source,
    to: Path,
    names: list[str],
    required: list[str],
    sums: dict[str, str],
    report: Report,
    say: Callable[[str], None],
) -> None:
    archive = source.archive
    assert archive is not None
    say(f"  fetching {archive.url} ({archive.size / 1e6:.1f} MB)")
    with tempfile.TemporaryDirectory(prefix=".servebench-download-", dir=to) as tmpdir:
        zip_path = Path(tmpdir) / "archive.zip"
        got = _download_to(archive.url, zip_path)
        if got != archive.sha256:
            raise DownloadError(
                f"{archive.url}: sha256 {got} does not match the pinned {archive.sha256}"
            )
        try:
            bundle = zipfile.ZipFile(zip_path)
        except zipfile.BadZipFile as exc:
            raise DownloadError(f"{archive.url}: not a zip archive ({exc})") from None
        with bundle:
            members = [m for m in bundle.namelist() if not m.endswith("/")]
            for name in names:
                inner = name.split("/", 1)[1]  # "mmlu/test/x.csv" -> "test/x.csv"
                candidates = [m for m in members if m == inner or m.endswith("/" + inner)]
                if not candidates:
                    if name in required:
                        raise DownloadError(f"{archive.url} has no member {inner}")
                    report.skipped.append(f"{name} (not in the archive)")
                    continue
                dest = to / name
                placed = False
                for member in sorted(candidates, key=len):
                    with _staging(dest) as tmp:
                        with bundle.open(member) as src, tmp.open("wb") as out:
                            shutil.copyfileobj(src, out, CHUNK)
                        if file_sha256(tmp) == sums[name]:
                            os.replace(tmp, dest)
                            placed = True
                            break
                if placed:
                    report.fetched.append(name)
                elif name in required:
                    raise DownloadError(
                        f"{archive.url}: {inner} does not match its pinned sha256 {sums[name]}"
                    )
                else:
                    report.skipped.append(f"{name} (checksum differs)")


# -- command line --------------------------------------------------------------------------------


def resolve_names(names: list[str]) -> list[Source]:
    """Set names, aliases, ``all``, or dataset config names (by the top folder of `path`)."""
    chosen: list[Source] = []
    for raw in names:
        name = ALIASES.get(raw.lower(), raw.lower())
        if name == "all":
            picked = list(SOURCES.values())
        elif name in SOURCES:
            picked = [SOURCES[name]]
        else:
            picked = [_source_of_config(raw)]
        for source in picked:
            if source not in chosen:
                chosen.append(source)
    return chosen


def _source_of_config(name: str) -> Source:
    from .config import near_matches
    from .suites import BUILTIN_SUITES, SuiteIndex

    index = SuiteIndex([(BUILTIN_SUITES, "built-in")])
    try:
        raw = index.raw(index.find("dataset", name))
    except ServebenchError:
        raw = {}
    top = Path(str(raw.get("path", ""))).parts[:1]
    if top and top[0] in SOURCES:
        return SOURCES[top[0]]
    if raw.get("builtin_data"):
        raise DownloadError(f"dataset {name!r} ships with the package: nothing to download.")
    close = near_matches(name, [*SOURCES, *index.names("dataset")])
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise DownloadError(
        f"unknown dataset {name!r}.{hint} Downloadable: {', '.join(SOURCES)} (or all)."
    )


def list_sources() -> str:
    sums = pinned_sums()
    lines = []
    for s in SOURCES.values():
        required, _ = files_of(s, sums)
        lines.append(f"{s.name:14} {s.title}; {len(required)} file(s); licence: {s.license}")
    return "\n".join(lines)


def default_datasets_dir() -> Path:
    return Path(os.environ.get("SERVEBENCH_DATASETS") or "datasets")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_servebench download",
        description="Fetch built-in datasets from their canonical sources, check each file's "
        "pinned sha256 and lay them out as the dataset configs expect.",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="set names, config names or all")
    parser.add_argument(
        "--to",
        type=Path,
        default=None,
        help="datasets dir to fill (default $SERVEBENCH_DATASETS or ./datasets)",
    )
    parser.add_argument(
        "--mirror",
        default=None,
        help=f"fetch from a mirror laid out like the datasets dir (URL or folder; default "
        f"${MIRROR_ENV})",
    )
    parser.add_argument("--force", action="store_true", help="fetch even files already present")
    parser.add_argument("--list", action="store_true", help="list the downloadable sets and exit")
    args = parser.parse_args(argv)
    if args.list or not args.names:
        print(list_sources())
        if not args.names and not args.list:
            print(
                "\nusage: python -m pytest_servebench download NAME... [--to DIR]", file=sys.stderr
            )
            return 2
        return 0
    try:
        sources = resolve_names(args.names)
    except ServebenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    to = (args.to or default_datasets_dir()).expanduser().resolve()
    mirror = args.mirror or os.environ.get(MIRROR_ENV) or None
    to.mkdir(parents=True, exist_ok=True)
    failed = 0
    for source in sources:
        print(f"{source.name}: {source.title}, licence {source.license}", flush=True)
        if source.notice:
            print(f"  NOTE: {source.notice}", flush=True)
        try:
            report = download(source, to, mirror, args.force)
        except (DownloadError, OSError) as exc:
            failed += 1
            print(f"  FAILED: {exc}", file=sys.stderr, flush=True)
            continue
        print(
            f"  {len(report.fetched)} file(s) fetched and verified, {len(report.present)} "
            f"already present, in {to / source.name}",
            flush=True,
        )
        for item in report.skipped:
            print(f"  skipped {item}", flush=True)
    if failed:
        print(f"{failed} of {len(sources)} set(s) failed; nothing half-written was left behind.")
        return 1
    print(f"datasets dir: {to} (pass --sb-datasets-dir={to} or set SERVEBENCH_DATASETS)")
    return 0
