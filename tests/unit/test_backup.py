"""`liminati backup` and `restore` on a staged install, with real files: a real SQLite database
in Open WebUI's place (WAL mode, as Open WebUI runs it), real archives, real checksums.

Open WebUI itself is not here (the system tier runs it): a test writes its database with
sqlite3, as Open WebUI would.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import sqlite3
import stat
import tarfile
from pathlib import Path

import pytest

from clitools import NOW, RunCli

IP = "100.64.0.10"
DB = "var/lib/webui/data/webui.db"
HOSTS = "var/lib/dnsmasq-llm/hosts.d"
BACKUPS = "var/lib/liminati/backups"
STAMP = NOW.strftime("%Y%m%dT%H%M%SZ")


def args(root: Path) -> list[str]:
    return ["--root", str(root), "--listen-ip", IP]


def make_db(path: Path, users: list[str], chats: list[str]) -> None:
    """A database shaped like a tiny Open WebUI: WAL mode, users and chats."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE IF NOT EXISTS user (email TEXT PRIMARY KEY)")
    con.execute("CREATE TABLE IF NOT EXISTS chat (title TEXT)")
    con.executemany("INSERT INTO user VALUES (?)", [(u,) for u in users])
    con.executemany("INSERT INTO chat VALUES (?)", [(c,) for c in chats])
    con.commit()
    con.close()


def rows(path: Path) -> tuple[list[str], list[str]]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        users = [r[0] for r in con.execute("SELECT email FROM user ORDER BY email")]
        chats = [r[0] for r in con.execute("SELECT title FROM chat ORDER BY title")]
    finally:
        con.close()
    return users, chats


@pytest.fixture
def root(run_cli: RunCli, tmp_path: Path) -> Path:
    """A staged install with a database, a DNS record, an upload and an API key."""
    root = tmp_path / "root"
    assert run_cli("install", *args(root))[0] == 0
    make_db(root / DB, ["admin@liminati.internal", "bob@example.org"], ["hello", "plans"])
    (root / HOSTS / "printer.hosts").write_text("100.64.0.30 printer.liminati.internal\n")
    uploads = root / "var/lib/webui/data/uploads/abc"
    uploads.mkdir(parents=True)
    (uploads / "report.pdf").write_bytes(b"%PDF-1.4 a report")
    assert run_cli("keys", "add", "alice", *args(root))[0] == 0
    return root


def backup(run_cli: RunCli, root: Path, *extra: str) -> Path:
    code, out, err = run_cli("backup", *args(root), *extra)
    assert code == 0, err
    path = Path(out.strip().splitlines()[-1])
    assert path.is_file(), out
    return path


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        out = {}
        for m in tar.getmembers():
            fh = tar.extractfile(m)
            assert fh is not None
            out[m.name] = fh.read()
        return out


def snapshot(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file under root: content, mode, mtime (ns): what "changes nothing" compares."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(root))] = (p.read_bytes(), st.st_mode, st.st_mtime_ns)
    return out


# --- backup ------------------------------------------------------------------------------------


def test_backup_writes_a_root_only_archive_with_a_manifest_of_checksums(
    run_cli: RunCli, root: Path
) -> None:
    archive = backup(run_cli, root)
    assert archive == root / BACKUPS / f"liminati-backup-{STAMP}.tar.gz"
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    staged = json.loads((root / ".liminati-staging.json").read_text())
    assert staged["owners"][f"/{BACKUPS}/{archive.name}"] == ["root", "root"]
    found = members(archive)
    assert next(iter(found)) == "MANIFEST.json"  # first, for `tar tzf | head`
    manifest = json.loads(found.pop("MANIFEST.json"))
    assert manifest["format"] == "liminati-backup" and manifest["version"] == 1
    assert manifest["created"] == "2026-11-27T12:00:00Z" and manifest["kind"] == "manual"
    assert manifest["liminati_version"] and manifest["hostname"]
    listed = {f["name"]: f for f in manifest["files"]}
    assert set(listed) == set(found)
    for name, data in found.items():
        assert listed[name]["sha256"] == hashlib.sha256(data).hexdigest(), name
        assert listed[name]["size"] == len(data), name
    assert set(found) >= {
        "webui/data/webui.db",
        "webui/data/uploads/abc/report.pdf",
        "liminati/pki/ca.key",
        "liminati/pki/ca.crt",
        "liminati/api-keys.json",
        "liminati/secrets/webui-secret-key",
        "liminati/secrets/webui-admin-password",
        "liminati/secrets/vllm-api-key",
        "nginx/ssl/liminati.crt",
        "nginx/ssl/liminati.key",
        "dnsmasq/hosts.d/printer.hosts",
    }
    assert listed["liminati/pki/ca.key"] == {**listed["liminati/pki/ca.key"], "mode": "0400",
                                             "role": "root",
                                             "path": "/var/lib/liminati/pki/ca.key"}  # fmt: skip
    assert listed["nginx/ssl/liminati.key"]["role"] == "nginx"
    assert listed["webui/data/webui.db"]["role"] == "webui"
    assert found["liminati/pki/ca.key"] == (root / "var/lib/liminati/pki/ca.key").read_bytes()
    # the database member is a real, complete SQLite database
    copy = root.parent / "copy.db"
    copy.write_bytes(found["webui/data/webui.db"])
    assert rows(copy) == (["admin@liminati.internal", "bob@example.org"], ["hello", "plans"])


def test_backup_takes_a_consistent_copy_while_a_writer_is_busy_and_writes_nothing_beside_it(
    run_cli: RunCli, root: Path
) -> None:
    db = root / DB
    # a writer with committed rows still only in the WAL and a transaction still open
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("INSERT INTO chat VALUES ('committed, only in the WAL')")
    writer.execute("BEGIN")
    writer.execute("INSERT INTO chat VALUES ('not committed')")
    if os.geteuid() == 0:  # the data folder belongs to webui-user on a real host
        for p in db.parent.iterdir():
            os.chown(p, 65534, 65534)
    before = {p.name: p.stat().st_uid for p in db.parent.iterdir()}
    try:
        archive = backup(run_cli, root)
        # read through a read-only connection: no new file beside the database, no owner changed
        assert {p.name: p.stat().st_uid for p in db.parent.iterdir()} == before
    finally:
        writer.rollback()
        writer.close()
    copy = root.parent / "copy.db"
    copy.write_bytes(members(archive)["webui/data/webui.db"])
    assert rows(copy)[1] == ["committed, only in the WAL", "hello", "plans"]


def test_backup_without_a_database_says_so(run_cli: RunCli, root: Path) -> None:
    (root / DB).unlink()
    code, _, err = run_cli("backup", *args(root))
    assert code == 0, err
    assert "no Open WebUI database at /var/lib/webui/data/webui.db" in err
    assert "without Open WebUI's database" in err


def test_backup_names_never_collide_and_keep_prunes_only_on_request(
    run_cli: RunCli, root: Path
) -> None:
    first = backup(run_cli, root)
    second = backup(run_cli, root)  # the test clock stands still: same second
    assert second.name == f"liminati-backup-{STAMP}-2.tar.gz"
    assert first.is_file()
    os.utime(first, (1, 1))  # older
    code, out, err = run_cli("backup", *args(root), "--keep", "2", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["pruned"] == [str(first)]
    assert not first.exists() and second.exists() and Path(result["path"]).exists()
    assert "webui/data/webui.db" in {f["name"] for f in result["manifest"]["files"]}


def test_backup_to_another_folder(run_cli: RunCli, root: Path) -> None:
    archive = backup(run_cli, root, "--to", "/var/lib/elsewhere")
    assert archive.parent == root / "var/lib/elsewhere"
    assert stat.S_IMODE(archive.parent.stat().st_mode) == 0o700
    code, _, err = run_cli("backup", *args(root), "--to", "/no/such/parent")
    assert code == 2 and "/no/such does not exist" in err


# --- restore -----------------------------------------------------------------------------------


def test_restore_brings_back_database_records_and_keys_after_a_pre_restore_backup(
    run_cli: RunCli, root: Path
) -> None:
    archive = backup(run_cli, root)
    db = root / DB
    # later: Open WebUI's data is lost, a record added, a key revoked
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    make_db(db, ["admin@liminati.internal"], [])
    upload = root / "var/lib/webui/data/uploads/abc/report.pdf"
    upload.unlink()
    upload.parent.rmdir()
    (root / HOSTS / "later.hosts").write_text("100.64.0.31 later.liminati.internal\n")
    assert run_cli("keys", "revoke", "alice", *args(root))[0] == 0
    map_file = root / "var/lib/nginx-proxy/snippets/api-keys.map"
    assert "alice" not in map_file.read_text()

    code, out, err = run_cli("restore", str(archive), *args(root))
    assert code == 0, err
    assert rows(db) == (["admin@liminati.internal", "bob@example.org"], ["hello", "plans"])
    assert upload.read_bytes() == b"%PDF-1.4 a report"
    assert not (root / HOSTS / "later.hosts").exists()
    assert (root / HOSTS / "printer.hosts").exists()
    assert "alice" in json.loads((root / "var/lib/liminati/api-keys.json").read_text())["keys"]
    # converged afterwards: nginx's key map is rendered from the restored store
    assert "alice" in map_file.read_text()
    assert "remove    /var/lib/dnsmasq-llm/hosts.d/later.hosts" in out
    # the state it replaced was saved first, and it says where
    pre = root / BACKUPS / f"liminati-backup-{STAMP}-pre-restore.tar.gz"
    assert f"The state before this restore is saved in {pre}" in err
    saved = members(pre)
    assert "dnsmasq/hosts.d/later.hosts" in saved
    copy = root.parent / "pre.db"
    copy.write_bytes(saved["webui/data/webui.db"])
    assert rows(copy) == (["admin@liminati.internal"], [])
    # Open WebUI was stopped for the database and started again by the converge
    commands = (root / ".liminati-staged-commands.sh").read_text().splitlines()
    stop = commands.index("systemctl --user -M webui-user@ stop open-webui.service")
    assert any("open-webui.service" in c and ("start" in c or "restart" in c)
               for c in commands[stop + 1 :])  # fmt: skip
    staged = json.loads((root / ".liminati-staging.json").read_text())
    assert staged["owners"]["/" + DB] == ["webui-user", "webui-user"]
    assert staged["owners"]["/var/lib/webui/data/uploads/abc"] == ["webui-user", "webui-user"]
    assert staged["owners"]["/var/lib/webui/data/uploads/abc/report.pdf"] == [
        "webui-user", "webui-user"]  # fmt: skip
    assert staged["owners"]["/var/lib/liminati/pki/ca.key"] == ["root", "root"]
    # and the host is converged
    assert run_cli("plan", *args(root), "--detailed-exitcode")[0] == 0


def test_restore_removes_a_stale_wal_that_would_be_replayed_into_the_restored_database(
    run_cli: RunCli, root: Path, tmp_path: Path
) -> None:
    archive = backup(run_cli, root)
    db = root / DB
    # a crashed writer: the database and a WAL full of its last transactions
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    make_db(crashed / "webui.db", ["mallory@example.org"], ["from the crashed one"])
    writer = sqlite3.connect(crashed / "webui.db", isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("INSERT INTO chat VALUES ('only in the stale WAL')")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").write_bytes(Path(f"{crashed / 'webui.db'}{suffix}").read_bytes())
    writer.close()
    assert Path(f"{db}-wal").stat().st_size > 0

    code, _, err = run_cli("restore", str(archive), *args(root))
    assert code == 0, err
    assert not Path(f"{db}-wal").exists() and not Path(f"{db}-shm").exists()
    assert rows(db) == (["admin@liminati.internal", "bob@example.org"], ["hello", "plans"])


def flip_byte(archive: Path, at: float = 0.5) -> None:
    data = bytearray(archive.read_bytes())
    i = int(len(data) * at)
    data[i] ^= 0xFF
    archive.write_bytes(bytes(data))


def rewrite(archive: Path, change: dict[str, bytes | None], keep_manifest: bool = True) -> None:
    """A well-formed gzip tar whose members differ from what its MANIFEST.json says."""
    found = members(archive)
    found.update({k: v for k, v in change.items() if v is not None})
    for k, v in change.items():
        if v is None:
            found.pop(k)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in found.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive.write_bytes(buf.getvalue())


@pytest.mark.parametrize(
    "damage,why",
    [
        (lambda a: flip_byte(a, 0.5), "is not a usable liminati backup"),
        (lambda a: flip_byte(a, 0.97), "is not a usable liminati backup"),
        (lambda a: a.write_bytes(a.read_bytes()[: len(a.read_bytes()) // 2]),
         "does not read as a gzip tar archive"),
        (lambda a: rewrite(a, {"webui/data/webui.db": b"SQLite format 3\0 tampered"}),
         "'webui/data/webui.db' does not match its checksum"),
        (lambda a: rewrite(a, {"liminati/pki/ca.key": None}),
         "'liminati/pki/ca.key' is listed in MANIFEST.json but missing"),
        (lambda a: rewrite(a, {"../../etc/cron.d/x": b"* * * * * root sh"}),
         "'../../etc/cron.d/x' is in the archive but not in MANIFEST.json"),
        (lambda a: rewrite(a, {"MANIFEST.json": None}), "it has no MANIFEST.json"),
        (lambda a: a.write_bytes(gzip.compress(b"not a tar at all" * 100)),
         "does not read as a gzip tar archive"),
    ],
    ids=["flipped-byte", "flipped-byte-near-end", "truncated", "tampered-member",
         "missing-member", "extra-member", "no-manifest", "not-a-tar"],
)  # fmt: skip
def test_restore_refuses_a_damaged_archive_before_changing_anything(
    run_cli: RunCli, root: Path, tmp_path: Path, damage: object, why: str
) -> None:
    archive = backup(run_cli, root)
    damaged = tmp_path / "damaged.tar.gz"
    damaged.write_bytes(archive.read_bytes())
    damage(damaged)  # type: ignore[operator]
    (root / DB).unlink()  # something to restore
    before = snapshot(root)
    code, _, err = run_cli("restore", str(damaged), *args(root))
    assert code == 1, err
    assert why in err, err
    assert "nothing was changed" in err
    assert snapshot(root) == before  # not even a pre-restore backup


def test_restore_refuses_unknown_names_even_when_the_manifest_lists_them(
    run_cli: RunCli, root: Path
) -> None:
    archive = backup(run_cli, root)
    found = members(archive)
    manifest = json.loads(found["MANIFEST.json"])
    evil = b"root::0:0::/root:/bin/sh\n"
    manifest["files"].append({"name": "liminati/secrets/../../../../etc/passwd",
                              "path": "/etc/passwd", "sha256": hashlib.sha256(evil).hexdigest(),
                              "size": len(evil), "mode": "0644", "role": "root"})  # fmt: skip
    rewrite(archive, {"MANIFEST.json": json.dumps(manifest).encode(),
                      "liminati/secrets/../../../../etc/passwd": evil})  # fmt: skip
    before = snapshot(root)
    code, _, err = run_cli("restore", str(archive), *args(root))
    assert code == 1
    assert "is not a file liminati restores" in err
    assert snapshot(root) == before


def test_restore_of_a_different_ca_needs_yes(run_cli: RunCli, root: Path) -> None:
    archive = backup(run_cli, root)
    ca = root / "var/lib/liminati/pki/ca.crt"
    old = ca.read_bytes()
    assert run_cli("cert", "rotate-ca", "--yes", *args(root))[0] == 0
    rotated = ca.read_bytes()
    assert rotated != old
    before = snapshot(root)
    code, _, err = run_cli("restore", str(archive), *args(root))
    assert code == 2
    assert "the CA changes from sha256" in err and "--yes" in err
    assert snapshot(root) == before
    code, _, err = run_cli("restore", str(archive), "--yes", *args(root))
    assert code == 0, err
    assert ca.read_bytes() == old
    # the leaf is the archived one, signed by the archived CA: nothing to re-issue
    assert run_cli("cert", "status", *args(root))[0] == 0


def test_restore_dry_run_shows_changes_and_changes_nothing(run_cli: RunCli, root: Path) -> None:
    archive = backup(run_cli, root)
    (root / HOSTS / "printer.hosts").write_text("100.64.0.99 printer.liminati.internal\n")
    before = snapshot(root)
    code, out, err = run_cli("restore", str(archive), "--dry-run", *args(root))
    assert code == 0, err
    assert "replace   /var/lib/dnsmasq-llm/hosts.d/printer.hosts" in out
    assert "unchanged /var/lib/liminati/pki/ca.key" in out
    assert "every checksum matches" in err
    assert snapshot(root) == before


def test_restore_puts_back_the_config_file_it_archived(run_cli: RunCli, tmp_path: Path) -> None:
    root = tmp_path / "root"
    conf = root / "etc/liminati/liminati.toml"
    conf.parent.mkdir(parents=True)
    conf.write_text('listen_ip = "100.64.0.10"\n\n[webui]\nadmin_name = "Boss"\n')
    assert run_cli("install", "--root", str(root))[0] == 0
    archive = backup(run_cli, root)
    assert members(archive)["config.toml"] == conf.read_bytes()
    conf.write_text('listen_ip = "100.64.0.10"\n\n[webui]\nadmin_name = "Someone else"\n')
    code, _, err = run_cli("restore", str(archive), "--root", str(root))
    assert code == 0, err
    assert "Boss" in conf.read_text()
    env = root / "var/lib/webui/.config/liminati/open-webui.env"
    assert "WEBUI_ADMIN_NAME=Boss" in env.read_text()


def test_restore_before_install_says_how(run_cli: RunCli, root: Path, tmp_path: Path) -> None:
    archive = backup(run_cli, root)
    empty = tmp_path / "fresh"
    code, _, err = run_cli("restore", str(archive), "--yes", *args(empty))
    assert code == 2
    assert "liminati is not installed here" in err and "install --no-start" in err
