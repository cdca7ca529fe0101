"""`python -m pytest_servebench download`: pinned checksums, atomic files, archives, mirrors.
Every source here is a local HTTP server on 127.0.0.1 (or a folder): nothing leaves the host."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import shutil
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_servebench.__main__ import main as cli
from pytest_servebench.catalog import download as dl
from pytest_servebench.catalog import sources

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/datasets is absent")


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        server = self.server
        server.requests.append(self.path)  # type: ignore[attr-defined]
        if self.path in server.cut:  # type: ignore[attr-defined]
            data = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


class FileServer:
    """Serves a folder on 127.0.0.1; paths in `cut` are sent half and the connection closed."""

    def __init__(self, root: Path):
        handler = functools.partial(_Handler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.requests = []  # type: ignore[attr-defined]
        self.httpd.cut = set()  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def requests(self) -> list[str]:
        return self.httpd.requests  # type: ignore[attr-defined]

    def cut(self, path: str) -> None:
        self.httpd.cut.add(path)  # type: ignore[attr-defined]

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[Path, FileServer]]:
    root = tmp_path / "www"
    root.mkdir()
    with FileServer(root) as server:
        yield root, server


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(folder: Path) -> list[Path]:
    return [
        p for p in folder.rglob("*") if p.name.endswith(".part") or "servebench-download" in p.name
    ]


def toy_source(**changes) -> sources.Source:
    fields = dict(
        name="toy",
        title="Toy set",
        license="MIT",
        license_url="https://example.invalid/LICENSE",
        homepage="https://example.invalid",
        required=("toy/test.jsonl",),
        extras=("toy/LICENSE",),
    )
    fields.update(changes)
    return sources.Source(**fields)


# -- single files --------------------------------------------------------------------------------


def test_single_files_verified_and_idempotent(served, tmp_path):
    root, server = served
    body = b'{"question": "q", "answer": "a"}\n'
    (root / "toy").mkdir()
    (root / "toy" / "test.jsonl").write_bytes(body)
    (root / "toy" / "LICENSE").write_bytes(b"MIT\n")
    sums = {"toy/test.jsonl": sha(body), "toy/LICENSE": sha(b"MIT\n")}
    source = toy_source(
        urls={
            "toy/test.jsonl": (f"{server.url}/missing.jsonl", f"{server.url}/toy/test.jsonl"),
            "toy/LICENSE": (f"{server.url}/toy/LICENSE",),
        }
    )
    to = tmp_path / "datasets"
    report = dl.download(source, to, sums=sums, say=lambda _: None)
    assert sorted(report.fetched) == ["toy/LICENSE", "toy/test.jsonl"]
    assert (to / "toy" / "test.jsonl").read_bytes() == body
    assert "/missing.jsonl" in server.requests  # the first URL failed, the second served
    count = len(server.requests)
    again = dl.download(source, to, sums=sums, say=lambda _: None)
    assert again.fetched == [] and len(again.present) == 2
    assert len(server.requests) == count  # nothing fetched again
    (to / "toy" / "test.jsonl").write_bytes(b"edited\n")
    third = dl.download(source, to, sums=sums, say=lambda _: None)
    assert third.fetched == ["toy/test.jsonl"]
    assert (to / "toy" / "test.jsonl").read_bytes() == body
    assert not leftovers(to)


def test_checksum_mismatch_leaves_nothing(served, tmp_path):
    root, server = served
    (root / "toy").mkdir()
    (root / "toy" / "test.jsonl").write_bytes(b"tampered\n")
    source = toy_source(urls={"toy/test.jsonl": (f"{server.url}/toy/test.jsonl",)}, extras=())
    to = tmp_path / "datasets"
    with pytest.raises(dl.DownloadError, match="does not match the pinned"):
        dl.download(source, to, sums={"toy/test.jsonl": sha(b"original\n")}, say=lambda _: None)
    assert not (to / "toy" / "test.jsonl").exists()
    assert not leftovers(to)


def test_interrupted_download_leaves_no_half_file(served, tmp_path):
    root, server = served
    body = b"x" * 300_000
    (root / "toy").mkdir()
    (root / "toy" / "test.jsonl").write_bytes(body)
    server.cut("/toy/test.jsonl")
    source = toy_source(urls={"toy/test.jsonl": (f"{server.url}/toy/test.jsonl",)}, extras=())
    to = tmp_path / "datasets"
    with pytest.raises(dl.DownloadError):
        dl.download(source, to, sums={"toy/test.jsonl": sha(body)}, say=lambda _: None)
    assert not (to / "toy" / "test.jsonl").exists()
    assert not leftovers(to)


def test_keyboard_interrupt_mid_file_leaves_nothing(served, tmp_path, monkeypatch):
    root, server = served
    body = b"y" * 500_000
    (root / "toy").mkdir()
    (root / "toy" / "test.jsonl").write_bytes(body)
    real = dl._download_to

    def interrupted(url: str, target: Path) -> str:
        real(url, target)  # the bytes are on disk under the temporary name ...
        raise KeyboardInterrupt  # ... when the user presses Ctrl-C

    monkeypatch.setattr(dl, "_download_to", interrupted)
    source = toy_source(urls={"toy/test.jsonl": (f"{server.url}/toy/test.jsonl",)}, extras=())
    to = tmp_path / "datasets"
    with pytest.raises(KeyboardInterrupt):
        dl.download(source, to, sums={"toy/test.jsonl": sha(body)}, say=lambda _: None)
    assert not (to / "toy" / "test.jsonl").exists()
    assert not leftovers(to)


def test_missing_extra_is_skipped_not_fatal(served, tmp_path):
    root, server = served
    body = b"data\n"
    (root / "toy").mkdir()
    (root / "toy" / "test.jsonl").write_bytes(body)
    source = toy_source(
        urls={
            "toy/test.jsonl": (f"{server.url}/toy/test.jsonl",),
            "toy/LICENSE": (f"{server.url}/toy/LICENSE",),
        }
    )
    sums = {"toy/test.jsonl": sha(body), "toy/LICENSE": sha(b"MIT\n")}
    report = dl.download(source, tmp_path / "d", sums=sums, say=lambda _: None)
    assert report.fetched == ["toy/test.jsonl"]
    assert report.skipped and "toy/LICENSE" in report.skipped[0]


# -- archives ------------------------------------------------------------------------------------


def make_zip(files: dict[str, bytes], prefix: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as bundle:
        bundle.writestr(prefix + "README.md", b"not wanted")
        for name, data in files.items():
            bundle.writestr(prefix + name, data)
    return buf.getvalue()


@pytest.mark.parametrize("prefix", ["", "data/", "mmlu/data/"])
def test_archive_members_are_verified_one_by_one(served, tmp_path, prefix):
    root, server = served
    files = {"test/a_test.csv": b"q,1,2,3,4,A\n", "dev/a_dev.csv": b"d,1,2,3,4,B\n"}
    blob = make_zip({**files, "test/extra.csv": b"ignored"}, prefix)
    (root / "set.zip").write_bytes(blob)
    sums = {f"toy/{name}": sha(data) for name, data in files.items()}
    source = toy_source(
        required=("toy/test/", "toy/dev/"),
        extras=(),
        archive=sources.Archive(f"{server.url}/set.zip", sha(blob), len(blob)),
    )
    to = tmp_path / "datasets"
    report = dl.download(source, to, sums=sums, say=lambda _: None)
    assert sorted(report.fetched) == ["toy/dev/a_dev.csv", "toy/test/a_test.csv"]
    assert (to / "toy" / "test" / "a_test.csv").read_bytes() == files["test/a_test.csv"]
    assert not (to / "toy" / "test" / "extra.csv").exists()
    assert not leftovers(to)


def test_archive_with_a_wrong_member_or_checksum_fails_cleanly(served, tmp_path):
    root, server = served
    files = {"test/a_test.csv": b"q,1,2,3,4,A\n"}
    blob = make_zip(files, "")
    (root / "set.zip").write_bytes(blob)
    to = tmp_path / "datasets"
    source = toy_source(
        required=("toy/test/",),
        extras=(),
        archive=sources.Archive(f"{server.url}/set.zip", sha(b"another archive"), len(blob)),
    )
    sums = {"toy/test/a_test.csv": sha(files["test/a_test.csv"])}
    with pytest.raises(dl.DownloadError, match="does not match the pinned"):
        dl.download(source, to, sums=sums, say=lambda _: None)
    source = toy_source(
        required=("toy/test/",),
        extras=(),
        archive=sources.Archive(f"{server.url}/set.zip", sha(blob), len(blob)),
    )
    with pytest.raises(dl.DownloadError, match="does not match its pinned"):
        dl.download(source, to, sums={"toy/test/a_test.csv": sha(b"other")}, say=lambda _: None)
    with pytest.raises(dl.DownloadError, match="has no member"):
        dl.download(source, to, sums={"toy/test/b_test.csv": "0" * 64}, say=lambda _: None)
    assert not list((to / "toy").rglob("*.csv")) if (to / "toy").exists() else True
    assert not leftovers(to)


@needs_shared
def test_real_mmlu_archive_layout(served, tmp_path, monkeypatch):
    """The MMLU source, its archive replaced by one built from the shared files (the pinned
    per-file checksums are the real ones)."""
    root, server = served
    files = {
        str(p.relative_to(SHARED / "mmlu")): p.read_bytes()
        for p in (SHARED / "mmlu").rglob("*.csv")
    }
    blob = make_zip(files, "data/")
    (root / "mmlu.zip").write_bytes(blob)
    source = sources.SOURCES["mmlu"]
    fake = sources.Source(
        **{
            **{f: getattr(source, f) for f in source.__dataclass_fields__},
            "archive": sources.Archive(f"{server.url}/mmlu.zip", sha(blob), len(blob)),
            "urls": {},
        }
    )
    to = tmp_path / "datasets"
    report = dl.download(fake, to, say=lambda _: None)
    assert len(report.fetched) == 171
    assert len(list((to / "mmlu" / "test").glob("*_test.csv"))) == 57
    assert all("not in the archive" in s for s in report.skipped)


# -- mirrors and the command line -----------------------------------------------------------------


@needs_shared
def test_every_set_from_a_loopback_mirror(tmp_path, capsys):
    www = tmp_path / "www"
    shutil.copytree(SHARED, www)
    to = tmp_path / "datasets"
    with FileServer(www) as server:
        assert cli(["download", "all", "--to", str(to), "--mirror", server.url]) == 0
        out = capsys.readouterr().out
        assert "CC BY-NC-SA 4.0" in out and "non-commercial" in out  # C-Eval's licence
        sums = sources.pinned_sums()
        for name in sources.SOURCES:
            required, _ = sources.files_of(sources.SOURCES[name], sums)
            for rel in required:
                assert hashlib.sha256((to / rel).read_bytes()).hexdigest() == sums[rel], rel
        count = len(server.requests)
        assert (
            cli(["download", "mmlu_gen_5_shot_str", "--to", str(to), "--mirror", server.url]) == 0
        )
        assert len(server.requests) == count  # all present: nothing fetched
        assert "174 already present" in capsys.readouterr().out
    assert not leftovers(to)
    # the datasets dir now serves the configs
    from pytest_servebench.catalog.datasets import expand
    from pytest_servebench.catalog.finder import BUILTIN_SUITES, SuiteIndex, load_configs

    _, configs = load_configs(
        SuiteIndex([(BUILTIN_SUITES, "built-in")]),
        [],
        ["ceval_gen_0_shot_cot_chat_prompt", "ARC_c_gen_0_shot_chat_prompt"],
        {},
    )
    assert [sum(len(d.cases) for d in expand(c, to)) for c in configs] == [1346, 1172]


def test_mirror_from_env_and_folder(tmp_path, monkeypatch, capsys):
    mirror = tmp_path / "mirror"
    body = b'{"question": "q", "answer": "1"}\n'
    (mirror / "gsm8k").mkdir(parents=True)
    (mirror / "gsm8k" / "test.jsonl").write_bytes(body)
    monkeypatch.setattr(dl, "pinned_sums", lambda path=None: {"gsm8k/test.jsonl": sha(body)})
    monkeypatch.setenv(dl.MIRROR_ENV, str(mirror))
    to = tmp_path / "d"
    assert cli(["download", "gsm8k", "--to", str(to)]) == 0
    assert (to / "gsm8k" / "test.jsonl").read_bytes() == body
    monkeypatch.setenv(dl.MIRROR_ENV, mirror.as_uri())
    assert cli(["download", "gsm8k", "--to", str(tmp_path / "e")]) == 0
    (mirror / "gsm8k" / "test.jsonl").write_bytes(b"changed")
    assert cli(["download", "gsm8k", "--to", str(tmp_path / "f")]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "does not match the pinned" in err
    assert not (tmp_path / "f" / "gsm8k" / "test.jsonl").exists()


def test_cli_names_and_list(capsys):
    assert cli(["download", "--list"]) == 0
    out = capsys.readouterr().out
    for name in (
        "gsm8k", "math500", "aime2024", "aime2025", "mmlu", "ceval", "arc_challenge", "humaneval",
    ):  # fmt: skip
        assert name in out
    assert cli(["download", "mmlux"]) == 2
    assert "Did you mean: mmlu" in capsys.readouterr().err
    assert [s.name for s in dl.resolve_names(["ARC_c_gen_0_shot_chat_prompt", "aime25"])] == [
        "arc_challenge",
        "aime2025",
    ]
    assert [s.name for s in dl.resolve_names(["all"])] == list(sources.SOURCES)
    assert [s.name for s in dl.resolve_names(["humaneval_gen_0_shot_perf"])] == ["humaneval"]
    assert cli(["download"]) == 2


def test_pinned_sums_cover_every_builtin_source():
    sums = sources.pinned_sums()
    counts = {
        name: len(sources.files_of(source, sums)[0]) for name, source in sources.SOURCES.items()
    }
    assert counts == {
        "gsm8k": 1,
        "math500": 1,
        "aime2024": 1,
        "aime2025": 1,
        "mmlu": 171,
        "ceval": 104,
        "arc_challenge": 1,
        "humaneval": 1,
    }
    for source in sources.SOURCES.values():  # canonical sources are pinned to a commit or an oid
        for urls in source.urls.values():
            assert all(u.startswith("https://") for u in urls)
        if source.archive is not None:
            assert len(source.archive.sha256) == 64


def test_ceval_is_never_shipped():
    package = Path(dl.__file__).parents[1]  # the whole pytest_servebench package
    shipped = [p for p in package.rglob("*") if p.is_file() and p.suffix not in (".yaml", ".pyc")]
    assert not [p for p in shipped if "ceval" in str(p.relative_to(package)).lower()]
    assert json.dumps(sources.SOURCES["ceval"].license).count("NC") == 1
