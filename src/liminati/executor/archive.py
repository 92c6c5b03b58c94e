"""What backups and restores need from the host: a consistent copy of a live SQLite database,
and files streamed into place atomically (archives and databases can be large)."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from liminati.errors import HostError
from liminati.executor.common import TEMP_MARK

#: seconds SQLite waits for a writer's lock before giving up on a backup step
SQLITE_BUSY_TIMEOUT = 30.0


def sqlite_snapshot(src: Path, dest: Path) -> None:
    """Copy the database at src into dest with SQLite's online backup API.

    Consistent while the owner keeps writing: `backup()` with its default pages=-1 copies every
    page in one read transaction, so the copy is one committed state. In WAL mode (Open WebUI's
    default) that read does not block the writer at all; in rollback-journal mode a writer waits
    for the copy (milliseconds per MB). The source is opened read-only (`mode=ro`): nothing is
    written to the database. SQLite may open (or, after a clean shutdown, create) the `-shm`
    index, and when running as root it gives such a file the database's owner, so no
    root-owned file appears in the service user's folder.
    """
    if not src.is_file():
        raise HostError(f"no database at {src}", hint="is the service installed and started?")
    uri = "file:" + urllib.parse.quote(str(src)) + "?mode=ro"
    try:
        source = sqlite3.connect(uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT)
        try:
            target = sqlite3.connect(dest)
            try:
                source.backup(target)
                verdict = target.execute("PRAGMA quick_check").fetchone()
            finally:
                target.close()
        finally:
            source.close()
    except sqlite3.Error as exc:
        raise HostError(
            f"could not copy the database {src}: {exc}",
            hint="check that the file is an SQLite database and the disk is not full",
        ) from None
    if not verdict or verdict[0] != "ok":
        raise HostError(
            f"the copy of {src} fails SQLite's quick_check: {verdict[0] if verdict else '?'}",
            hint="the database itself may be damaged: stop the service and run "
            "`sqlite3 FILE 'PRAGMA integrity_check'`",
        )


@contextlib.contextmanager
def atomic_writer(target: Path, mode: int, uid: int | None, gid: int | None) -> Iterator[BinaryIO]:
    """Yield a file to stream into; on a clean exit it replaces target atomically.

    Like common.atomic_write, for data too large to hold in memory: a temp file in the same
    folder, created with its final mode and owner, fsync, rename, fsync of the folder. An
    exception inside the `with` block (a checksum that does not match, say) removes the temp
    file and leaves target untouched.
    """
    tmp = target.with_name(f".{target.name}{TEMP_MARK}{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise _write_error(target, exc) from None
    fh = os.fdopen(fd, "wb")
    try:
        try:
            if uid is not None and gid is not None:
                os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
        except OSError as exc:
            raise _write_error(target, exc) from None
        yield fh  # the caller's own errors come out of here, as they are
        try:
            fh.flush()
            os.fsync(fd)
            fh.close()
            os.replace(tmp, target)
            dfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            raise _write_error(target, exc) from None
    finally:
        if not fh.closed:
            with contextlib.suppress(OSError):
                fh.close()
        with contextlib.suppress(OSError):
            tmp.unlink()


def _write_error(target: Path, exc: OSError) -> HostError:
    why = "the file system is full" if exc.errno == errno.ENOSPC else exc.strerror
    return HostError(
        f"could not write {target}: {why}",
        hint="free space or fix the permission; the previous file is untouched",
    )
