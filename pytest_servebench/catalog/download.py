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

from pytest_servebench.catalog.config import near_matches
from pytest_servebench.catalog.finder import BUILTIN_SUITES, SuiteIndex
from pytest_servebench.catalog.sources import (
    ALIASES,
    SOURCES,
    DownloadError,
    Source,
    files_of,
    pinned_sums,
)
from pytest_servebench.errors import ServebenchError

MIRROR_ENV = "SERVEBENCH_DOWNLOAD_MIRROR"
CHUNK = 1 << 16


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
