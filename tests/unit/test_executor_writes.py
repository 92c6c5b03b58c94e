"""Writes that fail: one line naming the path, a hint for that failure, nothing half-written.

A full disk and a used-up quota cannot be made on purpose in this tier (the system tier fills
a real tmpfs in the booted system: tests/system/test_stack_zlifecycle.py); here `os.write` is
the fake, at the kernel boundary, and everything above it is the real code.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from liminati.cli.main import main
from liminati.errors import HostError
from liminati.executor import common

IP = "100.64.0.10"


_REAL_WRITE = os.write


def _failing_write(code: int) -> Callable[[int, bytes | memoryview], int]:
    """os.write that writes a few bytes, then fails the way the kernel does."""
    calls = 0

    def write(fd: int, data: bytes | memoryview) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            return _REAL_WRITE(fd, bytes(memoryview(data)[:3]))
        raise OSError(code, os.strerror(code))

    return write


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if common.TEMP_MARK in p.name)


@pytest.mark.parametrize(
    ("code", "why", "hint"),
    [
        (errno.ENOSPC, "no space left on the file system holding it ({dir})", "free space there"),
        (errno.EDQUOT, "the disk quota on the file system holding it is used up ({dir})", "df -h"),
        (errno.EIO, "Input/output error", "check the owner and mode"),
    ],
)
def test_atomic_write_failure_names_the_path_and_keeps_the_old_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    code: int,
    why: str,
    hint: str,
) -> None:
    target = tmp_path / "conf.d" / "20-webui.conf"
    target.parent.mkdir()
    target.write_bytes(b"the old file\n")
    monkeypatch.setattr(os, "write", _failing_write(code))
    with pytest.raises(HostError) as caught:
        common.atomic_write(
            target, b"a new file, much longer than three bytes\n", 0o644, None, None
        )
    monkeypatch.undo()
    err = caught.value
    assert err.message == f"could not write {target}: " + why.format(dir=target.parent)
    assert "\n" not in err.message
    assert err.hint is not None and hint in err.hint, err.hint
    assert err.hint.endswith("the previous file is untouched"), err.hint
    assert target.read_bytes() == b"the old file\n"
    assert _leftovers(target.parent) == []


def test_atomic_write_to_a_missing_directory_says_so(tmp_path: Path) -> None:
    target = tmp_path / "gone" / "file"
    with pytest.raises(HostError) as caught:
        common.atomic_write(target, b"x", 0o644, None, None)
    assert caught.value.message == f"could not write {target}: No such file or directory"
    assert caught.value.hint is not None and f"ls -ld {target.parent}" in caught.value.hint


def test_copy_file_failure_is_a_host_error_and_leaves_no_partial_copy(tmp_path: Path) -> None:
    src = tmp_path / "nginx.conf"
    src.write_bytes(b"worker_processes auto;\n")
    blocker = tmp_path / "backups"
    blocker.write_bytes(b"a file where the backup folder should be")
    dest = blocker / "20261127T120000Z" / "nginx.conf"
    with pytest.raises(HostError) as caught:
        common.copy_file(src, dest)
    assert str(dest) in caught.value.message and "Not a directory" in caught.value.message
    assert caught.value.hint is not None and f"{src} is untouched" in caught.value.hint
    assert src.read_bytes() == b"worker_processes auto;\n"


def test_install_on_a_full_disk_exits_1_with_one_line_and_no_temp_files(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The whole path through the CLI: the first file of a changed config cannot be written."""
    root = tmp_path / "root"
    conf = tmp_path / "c.toml"
    conf.write_text("")
    assert main(["install", "--root", str(root), "--listen-ip", IP, "--config", str(conf)]) == 0
    conf.write_text('[webui]\nclient_max_body_size = "250m"\n')
    webui = root / "var/lib/nginx-proxy/conf.d/20-webui.conf"
    before = webui.read_bytes()
    manifest = (root / "var/lib/liminati/manifest.json").read_bytes()
    capsys.readouterr()
    monkeypatch.setattr(os, "write", _failing_write(errno.ENOSPC))
    code = main(["install", "--root", str(root), "--listen-ip", IP, "--config", str(conf)])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: could not write {webui}: no space left on the file system holding it "
        f"({webui.parent})"
    ], err
    assert "hint: free space there" in err
    assert webui.read_bytes() == before
    assert (root / "var/lib/liminati/manifest.json").read_bytes() == manifest
    assert _leftovers(webui.parent) == []


def test_the_lock_is_reentrant_in_one_process_and_exclusive_between_processes(
    tmp_path: Path,
) -> None:
    """`model switch` holds the install lock for its whole run and converges inside it; any
    other process is refused while it does, and after it the lock is free again."""
    import subprocess
    import sys

    lock = tmp_path / "lock"
    probe = (
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
        "except BlockingIOError:\n    print('held')\n"
    )

    def other_process() -> str:
        argv = [sys.executable, "-c", probe, str(lock)]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()

    with common.file_lock(lock):
        with common.file_lock(lock):  # the converge inside the switch
            assert other_process() == "held"
        # the inner one ending does not free what the outer one holds
        assert other_process() == "held"
    assert other_process() == "free"
    with common.file_lock(lock):
        assert other_process() == "held"
