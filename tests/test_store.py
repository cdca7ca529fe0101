"""The work dir's writer lock and the prediction writer's failures, without a server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pytest_servebench.errors import ServebenchError
from pytest_servebench.store import PredictionWriter, WorkDir, load_predictions, write_json


def test_a_work_dir_has_one_writer(tmp_path):
    work = WorkDir.create(tmp_path)
    lock = work.lock()
    holder = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from pytest_servebench.store import WorkDir\n"
            "try:\n    WorkDir(Path(sys.argv[1])).lock()\n"
            "except Exception as exc:\n    print(exc)\n",
            str(work.root),
        ],
        capture_output=True,
        text=True,
    )
    assert f"in use by pid {os.getpid()} on host" in holder.stdout
    lock.release()
    again = work.lock()  # released: free for the next run
    again.release()


def test_a_lock_left_by_a_dead_process_is_not_in_the_way(tmp_path):
    work = WorkDir.create(tmp_path)
    code = (
        "import os, sys; from pathlib import Path; from pytest_servebench.store import WorkDir\n"
        "WorkDir(Path(sys.argv[1])).lock(); os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(work.root)], check=True)
    assert "pid" in (work.root / ".lock").read_text()  # its note stays, the lock does not
    work.lock().release()


def test_a_lock_file_alone_counts_only_while_its_pid_lives(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_fcntl(name, *args, **kwargs):  # the Windows path: the file is the lock
        if name == "fcntl":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_fcntl)
    work = WorkDir.create(tmp_path)
    lock = work.lock()
    with pytest.raises(ServebenchError, match="in use by pid"):
        work.lock()
    lock.release()
    assert not (work.root / ".lock").exists()
    import socket

    (work.root / ".lock").write_text(f"pid 999999999 on host {socket.gethostname()} since x\n")
    work.lock().release()  # stale: that pid is gone


class _FullDisk:
    """A file object whose writes fail as on a full disk."""

    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")

    def flush(self) -> None:
        raise OSError(28, "No space left on device")

    def close(self) -> None:
        raise OSError(28, "No space left on device")


def test_a_write_that_fails_is_reported_once_and_never_raised(tmp_path):
    heard = []
    writer = PredictionWriter(tmp_path / "p.jsonl", on_error=lambda w, exc: heard.append(exc))
    writer.write({"case": "a", "sample": 0, "ok": True})
    writer._handle = _FullDisk()  # type: ignore[assignment]
    writer.write({"case": "b", "sample": 0, "ok": True})
    writer.write({"case": "c", "sample": 0, "ok": True})
    writer.flush()
    writer.close()
    assert len(heard) == 1 and heard[0].errno == 28
    assert writer.failed is heard[0]
    assert set(load_predictions(tmp_path / "p.jsonl")) == {("a", 0)}


def test_write_json_uses_a_temporary_name_of_its_own(tmp_path):
    target = tmp_path / "results" / "r.json"
    write_json(target, {"x": 1})
    assert json.loads(target.read_text()) == {"x": 1}
    assert [p.name for p in target.parent.iterdir()] == ["r.json"]  # no temporary left
    # another process's temporary file of the same target is left alone
    other = target.with_suffix(".json.1.tmp")
    other.write_text("half")
    write_json(target, {"x": 2})
    assert other.read_text() == "half" and json.loads(target.read_text()) == {"x": 2}
