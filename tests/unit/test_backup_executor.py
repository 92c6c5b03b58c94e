"""The executor pieces backups rest on, on real files: streamed atomic writes and SQLite's
online backup."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from liminati.errors import HostError
from liminati.executor import HostExecutor
from liminati.executor.common import TEMP_MARK


def test_open_atomic_replaces_the_file_whole_with_its_mode_set(tmp_path: Path) -> None:
    target = tmp_path / "archive.tar.gz"
    target.write_bytes(b"old")
    with HostExecutor().open_atomic(str(target), 0o600, "root", "root") as fh:
        for _ in range(3):
            fh.write(b"x" * 1_000_000)
        assert target.read_bytes() == b"old"  # nothing visible before the block ends
    assert target.stat().st_size == 3_000_000
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["archive.tar.gz"]


def test_open_atomic_leaves_the_file_untouched_when_the_block_fails(tmp_path: Path) -> None:
    target = tmp_path / "webui.db"
    target.write_bytes(b"the database")

    class ChecksumMismatch(Exception):
        pass

    with (
        pytest.raises(ChecksumMismatch),
        HostExecutor().open_atomic(str(target), 0o644, "root", "root") as fh,
    ):
        fh.write(b"half of something else")
        raise ChecksumMismatch
    assert target.read_bytes() == b"the database"
    assert not [p for p in tmp_path.iterdir() if TEMP_MARK in p.name]


def test_sqlite_backup_copies_a_database_in_wal_mode(tmp_path: Path) -> None:
    src = tmp_path / "webui.db"
    con = sqlite3.connect(src)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE chat (title TEXT)")
    con.execute("INSERT INTO chat VALUES ('hello')")
    con.commit()
    dest = tmp_path / "copy.db"
    HostExecutor().sqlite_backup(str(src), dest)
    con.close()
    copy = sqlite3.connect(dest)
    assert copy.execute("SELECT title FROM chat").fetchall() == [("hello",)]
    copy.close()


@pytest.mark.parametrize("content", [None, b"not a database, just text" * 100])
def test_sqlite_backup_of_no_or_a_damaged_database_is_a_clear_error(
    tmp_path: Path, content: bytes | None
) -> None:
    src = tmp_path / "webui.db"
    if content is not None:
        src.write_bytes(content)
    with pytest.raises(HostError) as caught:
        HostExecutor().sqlite_backup(str(src), tmp_path / "copy.db")
    expected = "no database at" if content is None else "could not copy the database"
    assert caught.value.message.startswith(expected), caught.value.message
    assert caught.value.hint
