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
from typing import BinaryIO

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


#: errors that mean "no room": the next step is to free space, not to fix a permission
_NO_ROOM = {
    errno.ENOSPC: "no space left on the file system holding it",
    errno.EDQUOT: "the disk quota on the file system holding it is used up",
}


def write_error(target: Path, exc: OSError, *, untouched: str) -> HostError:
    """A failed write as one line naming the path, with the next step for that failure.

    `untouched` says what the failure left as it was (the previous file, the original).
    """
    where = target.parent
    if exc.errno in _NO_ROOM:
        return HostError(
            f"could not write {target}: {_NO_ROOM[exc.errno]} ({where})",
            hint=f"free space there (`df -h {where}` shows how much is left) and re-run; "
            f"{untouched}",
        )
    if exc.errno == errno.EROFS:
        return HostError(
            f"could not write {target}: {where} is on a read-only file system",
            hint=f"remount it read-write and re-run; {untouched}",
        )
    return HostError(
        f"could not write {target}: {exc.strerror or exc}",
        hint=f"check the owner and mode of {where} (`ls -ld {where}`) and re-run; {untouched}",
    )


def atomic_write(target: Path, data: bytes, mode: int, uid: int | None, gid: int | None) -> None:
    """Temp file in the same directory, created with its final mode and owner, then rename.

    A reader sees the old file or the new one, never a partial one; a crash leaves only a
    temp file, which the next run removes. A failure before the rename (a full disk: ENOSPC,
    EDQUOT) removes the temp file and leaves the old file as it was.
    """
    with atomic_writer(target, mode, uid, gid) as fh:
        try:
            view = memoryview(data)
            while view:  # straight to the descriptor: nothing waits in a buffer
                view = view[os.write(fh.fileno(), view) :]
        except OSError as exc:
            raise write_error(target, exc, untouched="the previous file is untouched") from None


@contextlib.contextmanager
def atomic_writer(target: Path, mode: int, uid: int | None, gid: int | None) -> Iterator[BinaryIO]:
    """Yield a file to write or stream into; on a clean exit it replaces target atomically:
    a temp file in the same folder, created with its final mode and owner, fsync, rename,
    fsync of the folder. An exception inside the `with` block (a checksum that does not match,
    say) removes the temp file and leaves target untouched; an OSError of the writer's own
    steps becomes a HostError naming the path (write_error)."""
    tmp = target.with_name(f".{target.name}{TEMP_MARK}{os.getpid()}")
    untouched = "the previous file is untouched"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise write_error(target, exc, untouched=untouched) from None
    fh = os.fdopen(fd, "wb")
    replaced = False
    try:
        try:
            if uid is not None and gid is not None:
                os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
        except OSError as exc:
            raise write_error(target, exc, untouched=untouched) from None
        yield fh  # the caller's own errors come out of here, as they are
        try:
            fh.flush()
            os.fsync(fd)
            fh.close()
            os.replace(tmp, target)
            replaced = True
            dfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            if replaced:
                untouched = "the new file is in place but may not be on disk yet"
            raise write_error(target, exc, untouched=untouched) from None
    finally:
        if not fh.closed:
            with contextlib.suppress(OSError):
                fh.close()
        if not replaced:
            with contextlib.suppress(OSError):
                tmp.unlink()


def move_ownership(top: Path, old: tuple[int, int], new: tuple[int, int]) -> int:
    """lchown every entry under top whose uid (gid) is old's to new's; return the count."""
    moved = 0
    try:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                entry = Path(dirpath) / name
                st = entry.lstat()
                uid = new[0] if st.st_uid == old[0] else st.st_uid
                gid = new[1] if st.st_gid == old[1] else st.st_gid
                if (uid, gid) != (st.st_uid, st.st_gid):
                    os.lchown(entry, uid, gid)
                    moved += 1
    except OSError as exc:
        raise HostError(
            f"could not give {top} to its service user: {exc.filename}: {exc.strerror}",
            hint=f"`chown -R` the folder to its service user by hand and re-run ({moved} moved)",
        ) from None
    return moved


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
    """An exclusive flock on path, for the whole `with`; another process holding it is an
    error at once. Re-entrant within this process: a command that holds the lock for its
    whole run (`model switch`) can run the converge, which takes it too."""
    key = path.absolute()
    if _HELD.get(key):
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
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
        _HELD[key] = 1
        try:
            yield
        finally:
            del _HELD[key]
    finally:
        os.close(fd)


#: locks this process holds: path -> depth
_HELD: dict[Path, int] = {}


@contextlib.contextmanager
def temp_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="liminati-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def copy_file(src: Path, dest: Path) -> None:
    """Copy src to dest (backups); a failed copy leaves no partial file behind."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copy2(src, dest)
    except OSError as exc:
        with contextlib.suppress(OSError):
            dest.unlink()
        raise write_error(dest, exc, untouched=f"{src} is untouched") from None


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
