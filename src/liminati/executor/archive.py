"""What backups and restores need from the host: a consistent copy of a live SQLite database,
and files streamed into place atomically (archives and databases can be large)."""

from __future__ import annotations

import sqlite3
import urllib.parse
from pathlib import Path

from liminati.errors import HostError

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
