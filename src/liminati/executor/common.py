"""What the host and staging executors share: real processes, temp dirs, atomic writes."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from liminati.errors import HostError, LockError
from liminati.executor.base import RunResult

TEMP_MARK = ".liminati-tmp-"


def run(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    cwd: Path | None = None,
    input_text: str | None = None,
) -> RunResult:
    try:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            cwd=cwd,
            input=input_text,
            check=False,
        )
    except FileNotFoundError:
        return RunResult(tuple(argv), 127, "", f"{argv[0]}: command not found")
    except subprocess.TimeoutExpired:
        return RunResult(tuple(argv), 124, "", f"{argv[0]}: timed out after {timeout:g}s")
    return RunResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)


def stream(argv: Sequence[str]) -> int:
    try:
        return subprocess.run(list(argv), check=False).returncode
    except FileNotFoundError:
        raise HostError(f"{argv[0]}: command not found") from None
    except KeyboardInterrupt:
        return 130


def atomic_write(target: Path, data: bytes, mode: int, uid: int | None, gid: int | None) -> None:
    """Temp file in the same directory, created with its final mode and owner, then rename.

    A reader sees the old file or the new one, never a partial one; a crash leaves only a
    temp file, which the next run removes.
    """
    tmp = target.with_name(f".{target.name}{TEMP_MARK}{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            if uid is not None and gid is not None:
                os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        dfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        why = "the file system is full" if exc.errno == errno.ENOSPC else exc.strerror
        raise HostError(
            f"could not write {target}: {why}",
            hint="free space or fix the permission; the previous file is untouched",
        ) from None


def remove_stale_temp(directory: Path) -> list[str]:
    removed = []
    if directory.is_dir():
        for entry in directory.iterdir():
            if TEMP_MARK in entry.name and entry.is_file():
                entry.unlink()
                removed.append(str(entry))
    return removed


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockError(
                f"another liminati run holds {path}",
                hint="wait for it to finish; the lock is released when that process exits",
            ) from None
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def temp_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="liminati-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def copy_file(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copy2(src, dest)


def remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def which(name: str) -> str | None:
    return shutil.which(name)


def read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    except PermissionError:
        raise HostError(
            f"cannot read {path}: permission denied",
            hint="run liminati as root (sudo), or use --root DIR for a staged install",
        ) from None
