"""`liminati backup` and `restore`: one root-only archive holding Open WebUI's database (copied
with SQLite's online backup), its uploads, liminati's config, secrets, API keys, the CA, the
leaf and the DNS records, with a manifest of checksums that a restore checks before it touches
anything."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import socket
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from liminati import __version__, pki
from liminati.config import Config
from liminati.errors import LiminatiError, PkiError, UsageError
from liminati.executor import Executor
from liminati.executor.common import TEMP_MARK
from liminati.layout import Layout

P = PurePosixPath

FORMAT = "liminati-backup"
VERSION = 1
MANIFEST = "MANIFEST.json"
PREFIX = "liminati-backup-"
SUFFIX = ".tar.gz"
#: the archive holds the CA key and every secret: root only, like /var/lib/liminati itself
ARCHIVE_MODE = 0o600
BACKUPS_DIR_MODE = 0o700
#: gzip level: 6 is zlib's default trade-off; 9 (tarfile's default) is several times slower
#: on a large database for a few percent
COMPRESSLEVEL = 6
#: the manifest is small; anything bigger is not ours
MANIFEST_MAX = 16 * 1024 * 1024
CHUNK = 1024 * 1024
#: members larger than this are streamed, never held in memory (the database, uploads)
IN_MEMORY_MAX = 4 * 1024 * 1024

#: archive names: logical, not host paths, so a restore follows the current layout (homes and
#: user names come from the config)
CONFIG = "config.toml"
DATABASE = "webui/data/webui.db"
UPLOADS = "webui/data/uploads/"
SECRETS = "liminati/secrets/"
HOSTS = "dnsmasq/hosts.d/"
#: trees a restore makes exactly as archived: a DNS record added since the backup goes
#: (it is in the pre-restore backup). Secrets and uploads added since are kept.
EXACT_TREES = (HOSTS,)
#: what SQLite may keep beside a database; a stale one would be replayed into the restored file
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")

#: whose file it is, mapped to that service's user (from the config) on restore
Role = str
ROLES = ("root", "webui", "nginx", "dnsmasq", "vllm")


@dataclass(frozen=True)
class Entry:
    """One file in the archive, as MANIFEST.json lists it."""

    name: str
    #: where it was on the host the backup was taken on (information; restore uses `name`)
    path: str
    sha256: str
    size: int
    mode: int
    role: Role

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "path": self.path,
            "sha256": self.sha256,
            "size": self.size,
            "mode": f"{self.mode:04o}",
            "role": self.role,
        }


@dataclass(frozen=True)
class BackupManifest:
    created: str
    liminati_version: str
    hostname: str
    kind: str
    domain: str
    files: tuple[Entry, ...]
    #: tree prefixes that were collected (possibly empty), so a restore knows "no file" from
    #: "not in this backup"
    trees: tuple[str, ...] = ()

    def dump(self) -> bytes:
        data = {
            "format": FORMAT,
            "version": VERSION,
            "created": self.created,
            "liminati_version": self.liminati_version,
            "hostname": self.hostname,
            "kind": self.kind,
            "domain": self.domain,
            "trees": list(self.trees),
            "files": [e.to_json() for e in self.files],
        }
        return json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def parse(cls, raw: bytes) -> BackupManifest:
        """Strict: anything unexpected is an error (an archive is data from outside)."""
        try:
            data = json.loads(raw)
            if data.get("format") != FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, not {FORMAT!r}")
            if data.get("version") != VERSION:
                raise ValueError(
                    f"manifest version {data.get('version')!r}; this liminati reads {VERSION}"
                )
            files = tuple(
                Entry(
                    name=str(f["name"]),
                    path=str(f["path"]),
                    sha256=str(f["sha256"]),
                    size=int(f["size"]),
                    mode=int(str(f["mode"]), 8),
                    role=str(f["role"]),
                )
                for f in data["files"]
            )
            return cls(
                created=str(data["created"]),
                liminati_version=str(data["liminati_version"]),
                hostname=str(data["hostname"]),
                kind=str(data["kind"]),
                domain=str(data["domain"]),
                files=files,
                trees=tuple(str(t) for t in data.get("trees", [])),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{MANIFEST} is not valid: {exc}") from None

    def entry(self, name: str) -> Entry | None:
        return next((e for e in self.files if e.name == name), None)


# --- where each archived name lives on this host -----------------------------------------------


def _fixed(layout: Layout) -> dict[str, tuple[P, Role]]:
    return {
        "liminati/api-keys.json": (layout.api_keys, "root"),
        "liminati/pki/ca.key": (layout.ca_key, "root"),
        "liminati/pki/ca.crt": (layout.ca_cert, "root"),
        "liminati/pki/previous-ca.crt": (layout.previous_ca, "root"),
        "nginx/ssl/liminati.crt": (layout.leaf_cert, "nginx"),
        "nginx/ssl/liminati.key": (layout.leaf_key, "nginx"),
        DATABASE: (layout.webui_data / "webui.db", "webui"),
    }


def _trees(layout: Layout) -> dict[str, tuple[P, Role, bool]]:
    """prefix -> (folder, role, nested?)"""
    return {
        SECRETS: (layout.secrets_dir, "root", False),
        HOSTS: (layout.dnsmasq_hosts, "dnsmasq", False),
        UPLOADS: (layout.webui_data / "uploads", "webui", True),
    }


def _safe_rel(rel: str, nested: bool) -> bool:
    parts = rel.split("/")
    if not rel or (len(parts) > 1 and not nested):
        return False
    return all(p and p not in (".", "..") and not p.startswith(".") for p in parts)


def target_of(layout: Layout, name: str, config_path: P) -> tuple[P, Role] | None:
    """Where archive member `name` goes on this host, and whose it is; None: not a name this
    liminati writes (the archive is refused: it is damaged or from something else)."""
    if name == CONFIG:
        return config_path, "root"
    fixed = _fixed(layout)
    if name in fixed:
        return fixed[name]
    for prefix, (folder, role, nested) in _trees(layout).items():
        if name.startswith(prefix):
            rel = name[len(prefix) :]
            return (folder / rel, role) if _safe_rel(rel, nested) else None
    return None


def owner_of(config: Config, role: Role) -> str:
    users = config.users
    return {
        "root": "root",
        "webui": users.webui.name,
        "nginx": users.nginx.name,
        "dnsmasq": users.dnsmasq.name,
        "vllm": users.vllm.name,
    }[role]


# --- backup ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigFile:
    """The configuration file this run read (--config or the default path), to archive."""

    path: str
    data: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class _Source:
    name: str
    path: P
    role: Role
    mode: int
    data: bytes | None = None
    local: Path | None = None  # a large file, streamed from here


@dataclass(frozen=True)
class BackupResult:
    #: the archive's target path, and where it really is (under --root when staged)
    path: P
    host_path: Path
    manifest: BackupManifest
    size: int
    notes: tuple[str, ...] = ()


def _stamp(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def archive_name(now: dt.datetime, kind: str, taken: Callable[[str], bool]) -> str:
    """liminati-backup-<UTC time>[-<kind>].tar.gz, with -2, -3 ... when that name is taken
    (two backups in one second, e.g. a backup then a restore's own pre-restore backup)."""
    base = PREFIX + _stamp(now) + ("" if kind == "manual" else f"-{kind}")
    name, n = base + SUFFIX, 1
    while taken(name):
        n += 1
        name = f"{base}-{n}{SUFFIX}"
    return name


def _list_files(executor: Executor, folder: P, nested: bool) -> list[str]:
    """Relative names of the regular files under folder (read-only; temp files skipped)."""
    host = executor.host_path(folder)
    if not host.is_dir():
        return []
    found = host.rglob("*") if nested else host.iterdir()
    out = []
    for p in found:
        rel = p.relative_to(host).as_posix()
        regular = p.is_file() and not p.is_symlink() and TEMP_MARK not in p.name
        if regular and _safe_rel(rel, nested):
            out.append(rel)
    return sorted(out)


def _collect(
    executor: Executor,
    config: Config,
    config_file: ConfigFile | None,
    scratch: Path,
    notes: list[str],
) -> tuple[list[_Source], list[str]]:
    layout = Layout(config)
    sources: list[_Source] = []
    if config_file is not None:
        sources.append(_Source(CONFIG, P(config_file.path), "root", config_file.mode,
                               data=config_file.data))  # fmt: skip
    else:
        notes.append("no config file: this host runs on the built-in defaults")
    for name, (path, role) in _fixed(layout).items():
        st = executor.stat(path)
        if st is None or st.is_dir:
            if name == DATABASE:
                notes.append(f"no Open WebUI database at {path} (not started yet?)")
            continue
        if name == DATABASE:
            snapshot = scratch / "webui.db"
            executor.sqlite_backup(path, snapshot)
            sources.append(_Source(name, path, role, st.mode, local=snapshot))
            continue
        data = executor.read(path)
        if data is not None:
            sources.append(_Source(name, path, role, st.mode, data=data))
    trees = []
    for prefix, (folder, role, nested) in _trees(layout).items():
        if executor.stat(folder) is None:
            continue
        trees.append(prefix)
        for rel in _list_files(executor, folder, nested):
            path = folder / rel
            st = executor.stat(path)
            if st is None:
                continue  # removed meanwhile
            if nested:
                sources.append(_Source(prefix + rel, path, role, st.mode,
                                       local=executor.host_path(path)))  # fmt: skip
            else:
                data = executor.read(path)
                if data is not None:
                    sources.append(_Source(prefix + rel, path, role, st.mode, data=data))
    return sources, trees


def _digest(src: _Source) -> tuple[str, int]:
    if src.data is not None:
        return hashlib.sha256(src.data).hexdigest(), len(src.data)
    assert src.local is not None
    h, size = hashlib.sha256(), 0
    with src.local.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def create_backup(
    executor: Executor,
    config: Config,
    *,
    now: dt.datetime,
    config_file: ConfigFile | None,
    kind: str = "manual",
    dest: P | None = None,
) -> BackupResult:
    """Write one archive into dest (default /var/lib/liminati/backups). The caller holds the
    lock. Nothing but the archive (and its folder, when missing) is written."""
    layout = Layout(config)
    folder = dest if dest is not None else layout.backups
    st = executor.stat(folder)
    if st is None:
        if dest is not None and executor.stat(folder.parent) is None:
            raise UsageError(f"{folder.parent} does not exist", hint="create it or choose --to")
        executor.make_dir(folder, BACKUPS_DIR_MODE, "root", "root")
    elif not st.is_dir:
        raise UsageError(f"{folder} is not a folder", hint="give --to a folder")
    name = archive_name(now, kind, lambda n: executor.stat(folder / n) is not None)
    path = folder / name
    notes: list[str] = []
    with executor.tempdir() as scratch:
        sources, trees = _collect(executor, config, config_file, scratch, notes)
        entries = []
        for src in sources:
            sha, size = _digest(src)
            entries.append(Entry(src.name, str(src.path), sha, size, src.mode, src.role))
        manifest = BackupManifest(
            created=now.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
            liminati_version=__version__,
            hostname=socket.gethostname(),
            kind=kind,
            domain=config.domain,
            files=tuple(entries),
            trees=tuple(trees),
        )
        mtime = int(now.timestamp())
        with (
            executor.open_atomic(path, ARCHIVE_MODE, "root", "root") as fh,
            tarfile.open(fileobj=fh, mode="w:gz", compresslevel=COMPRESSLEVEL) as tar,
        ):
            raw = manifest.dump()
            tar.addfile(_info(MANIFEST, len(raw), 0o600, mtime), io.BytesIO(raw))
            for src, entry in zip(sources, entries, strict=True):
                info = _info(src.name, entry.size, src.mode, mtime)
                if src.data is not None:
                    tar.addfile(info, io.BytesIO(src.data))
                else:
                    assert src.local is not None
                    with src.local.open("rb") as data:
                        reader = _Hashing(data)
                        tar.addfile(info, reader)
                        if reader.sha256.hexdigest() != entry.sha256:
                            # the archive would contradict its manifest: not written at all
                            raise LiminatiError(
                                f"{src.path} changed while it was being backed up",
                                hint="run the backup again",
                            )
    size = executor.host_path(path).stat().st_size
    return BackupResult(path, executor.host_path(path), manifest, size, tuple(notes))


def _info(name: str, size: int, mode: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, mtime
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


class _Hashing(io.RawIOBase):
    """A large file read into the archive, hashed as it goes: its sha256 must still be the
    one in the manifest (an upload rewritten meanwhile would make the two disagree)."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        self.sha256.update(data)
        return data


def prune(executor: Executor, folder: P, keep: int) -> list[P]:
    """Remove all but the `keep` newest liminati-backup-* archives in folder; return them."""
    host = executor.host_path(folder)
    if keep < 1 or not host.is_dir():
        return []
    archives = sorted(
        (p for p in host.iterdir() if p.name.startswith(PREFIX) and p.name.endswith(SUFFIX)),
        key=lambda p: (p.stat().st_mtime, p.name),
    )
    gone = [folder / p.name for p in archives[:-keep]]
    for path in gone:
        executor.remove(path)
    return gone


# --- verify ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verified:
    """An archive whose every member matched its checksum when it was read."""

    path: Path
    manifest: BackupManifest
    #: the content of every member small enough to keep (all but the database and uploads)
    small: dict[str, bytes] = field(default_factory=dict)


class _Damaged(Exception):
    pass


def damaged(path: Path, why: str) -> LiminatiError:
    return LiminatiError(
        f"{path} is not a usable liminati backup: {why}",
        hint="nothing was changed; use another archive (`ls -l /var/lib/liminati/backups`)",
    )


def _hash_member(fh: IO[bytes]) -> tuple[str, int, bytes | None]:
    h, size, kept = hashlib.sha256(), 0, io.BytesIO()
    while chunk := fh.read(CHUNK):
        h.update(chunk)
        size += len(chunk)
        if size <= IN_MEMORY_MAX:
            kept.write(chunk)
    return h.hexdigest(), size, kept.getvalue() if size <= IN_MEMORY_MAX else None


def _members(path: Path) -> Iterator[tuple[tarfile.TarInfo, IO[bytes] | None]]:
    """The archive's members in order, read as a stream (one pass, nothing extracted)."""
    with tarfile.open(path, mode="r|gz") as tar:
        for info in tar:
            yield info, tar.extractfile(info) if info.isreg() else None


def verify_archive(path: Path, layout: Layout) -> Verified:
    """Read the whole archive and check every member against MANIFEST.json: names known,
    regular files only, no member missing or extra, sizes and sha256 equal. Raises before
    anything is changed when one does not hold."""
    if not path.is_file():
        raise UsageError(
            f"no backup archive at {path}", hint="give the path `liminati backup` printed"
        )
    seen: dict[str, tuple[str, int]] = {}
    small: dict[str, bytes] = {}
    raw_manifest: bytes | None = None
    try:
        for info, fh in _members(path):
            if fh is None:
                raise _Damaged(f"{info.name!r} is not a regular file")
            if info.name in seen or (info.name == MANIFEST and raw_manifest is not None):
                raise _Damaged(f"{info.name!r} appears twice")
            if info.name == MANIFEST:
                if info.size > MANIFEST_MAX:
                    raise _Damaged(f"{MANIFEST} is {info.size} bytes")
                raw_manifest = fh.read()
                continue
            sha, size, data = _hash_member(fh)
            seen[info.name] = (sha, size)
            if data is not None:
                small[info.name] = data
    except _Damaged as exc:
        raise damaged(path, str(exc)) from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise damaged(path, f"it does not read as a gzip tar archive ({exc})") from None
    if raw_manifest is None:
        raise damaged(path, f"it has no {MANIFEST}")
    try:
        manifest = BackupManifest.parse(raw_manifest)
    except ValueError as exc:
        raise damaged(path, str(exc)) from None
    listed = {e.name for e in manifest.files}
    if len(listed) != len(manifest.files):
        raise damaged(path, f"{MANIFEST} lists a file twice")
    for name in sorted(set(seen) - listed):
        raise damaged(path, f"{name!r} is in the archive but not in {MANIFEST}")
    for e in manifest.files:
        if e.name not in seen:
            raise damaged(path, f"{e.name!r} is listed in {MANIFEST} but missing")
        if seen[e.name] != (e.sha256, e.size):
            raise damaged(path, f"{e.name!r} does not match its checksum")
        if target_of(layout, e.name, P("/")) is None:
            raise damaged(path, f"{e.name!r} is not a file liminati restores")
        if e.role not in ROLES or not 0 <= e.mode <= 0o777:
            raise damaged(path, f"{e.name!r} has an unexpected owner role or mode")
    return Verified(path, manifest, small)


# --- restore -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    name: str
    target: P
    role: Role
    #: "create", "replace", "unchanged" or "remove"
    change: str


@dataclass(frozen=True)
class RestorePlan:
    verified: Verified
    steps: tuple[Step, ...]
    #: what changes when the archived CA replaces the installed one ("" when it does not)
    ca_change: str = ""
    notes: tuple[str, ...] = ()

    @property
    def changes(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.change != "unchanged")


def _sha_of(executor: Executor, path: P) -> str | None:
    host = executor.host_path(path)
    if not host.is_file():
        return None
    h = hashlib.sha256()
    with host.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _fingerprint(pem: bytes) -> str:
    try:
        return pki.fingerprint(pem)
    except PkiError:  # not a certificate: the file's own hash still tells them apart
        return "(not a certificate) " + hashlib.sha256(pem).hexdigest()


def plan_restore(
    executor: Executor,
    config: Config,
    verified: Verified,
    *,
    config_path: P | None,
    only: tuple[str, ...] | None = None,
) -> RestorePlan:
    """What a restore would change on this host. `config_path`: where the archived config goes
    (None: it is not restored). `only`: restore just these names (upgrade's rollback)."""
    layout = Layout(config)
    steps: list[Step] = []
    notes: list[str] = []
    archived = {e.name for e in verified.manifest.files}
    for e in verified.manifest.files:
        if only is not None and e.name not in only:
            continue
        if e.name == CONFIG and config_path is None:
            continue
        placed = target_of(layout, e.name, config_path or P("/"))
        assert placed is not None  # verify_archive checked every name
        target, _ = placed
        if e.name == DATABASE:
            # a live database always differs from a snapshot in its header: always replaced
            change = "replace" if executor.stat(target) is not None else "create"
        else:
            have = _sha_of(executor, target)
            change = "create" if have is None else "unchanged" if have == e.sha256 else "replace"
        steps.append(Step(e.name, target, e.role, change))
    if only is None:
        for prefix in EXACT_TREES:
            if prefix not in verified.manifest.trees:
                continue
            folder, role, nested = _trees(layout)[prefix]
            for rel in _list_files(executor, folder, nested):
                if prefix + rel not in archived:
                    steps.append(Step(prefix + rel, folder / rel, role, "remove"))
    ca_change = ""
    new_ca = verified.small.get("liminati/pki/ca.crt")
    old_ca = executor.read(layout.ca_cert)
    if (only is None or "liminati/pki/ca.crt" in only) and new_ca and old_ca and new_ca != old_ca:
        ca_change = (
            f"the CA changes from sha256 {_fingerprint(old_ca)} to {_fingerprint(new_ca)}: "
            "every client that trusts the current CA must trust the restored one (run the "
            "client installer again on each)"
        )
    return RestorePlan(verified, tuple(steps), ca_change, tuple(notes))


@dataclass(frozen=True)
class Restored:
    written: tuple[str, ...]
    removed: tuple[str, ...]


def _check(name: str, entry: Entry, sha: str, size: int, path: Path) -> None:
    if (sha, size) != (entry.sha256, entry.size):
        # the archive changed since it was verified: stop before this file is swapped in
        raise damaged(path, f"{name!r} no longer matches its checksum")


def _ensure_dirs(executor: Executor, config: Config, target: P, stop: P, role: Role) -> None:
    """Missing folders between stop (exclusive) and target's folder, owned by role (uploads)."""
    missing = []
    parent = target.parent
    while parent != stop and executor.stat(parent) is None:
        missing.append(parent)
        parent = parent.parent
    owner = owner_of(config, role)
    for d in reversed(missing):
        executor.make_dir(d, 0o755, owner, owner)


def restore_files(
    executor: Executor,
    config: Config,
    plan: RestorePlan,
    *,
    progress: Callable[[str], None] = lambda _: None,
) -> Restored:
    """Put back every changed file of the plan, reading the archive once more and checking
    each member's checksum again before it replaces anything. The caller holds the lock and
    has stopped Open WebUI when the database is among the changes."""
    layout = Layout(config)
    todo = {s.name: s for s in plan.changes if s.change in ("create", "replace")}
    manifest = plan.verified.manifest
    written: list[str] = []
    path = plan.verified.path
    try:
        for info, fh in _members(path):
            step = todo.get(info.name)
            if step is None or fh is None:
                continue
            entry = manifest.entry(info.name)
            assert entry is not None
            owner = owner_of(config, step.role)
            if step.name == DATABASE:
                _write_database(executor, step.target, entry, fh, owner, path)
            elif step.name.startswith(UPLOADS):
                _ensure_dirs(executor, config, step.target, layout.webui_data, step.role)
                _stream_to(executor, step.target, entry, fh, owner, path)
            else:
                data = fh.read()
                _check(info.name, entry, hashlib.sha256(data).hexdigest(), len(data), path)
                if executor.stat(step.target.parent) is None:
                    executor.make_dir(step.target.parent, 0o755 if step.role == "root" else 0o700,
                                      owner, owner)  # fmt: skip
                executor.write_file(step.target, data, entry.mode, owner, owner)
            written.append(step.name)
            progress(f"{step.change:<8} {step.target}")
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise damaged(path, f"it stopped reading as a gzip tar archive ({exc})") from None
    removed = []
    for s in plan.changes:
        if s.change == "remove":
            executor.remove(s.target)
            removed.append(s.name)
            progress(f"remove   {s.target}")
    return Restored(tuple(written), tuple(removed))


def _stream_to(
    executor: Executor, target: P, entry: Entry, fh: IO[bytes], owner: str, archive: Path
) -> None:
    h, size = hashlib.sha256(), 0
    with executor.open_atomic(target, entry.mode, owner, owner) as out:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
            out.write(chunk)
        _check(entry.name, entry, h.hexdigest(), size, archive)


def _write_database(
    executor: Executor, target: P, entry: Entry, fh: IO[bytes], owner: str, archive: Path
) -> None:
    # SQLite's side files belong to the database being replaced: a stale -wal would be
    # replayed into the restored one (WAL frames are not tied to a database file) and corrupt
    # it. They go first: a crash in between leaves the old database without its last
    # transactions (the pre-restore backup has them), never a mix of two.
    for suffix in SQLITE_SIDE_FILES:
        executor.remove(P(str(target) + suffix))
    _stream_to(executor, target, entry, fh, owner, archive)


def describe(manifest: BackupManifest) -> dict[str, Any]:
    """The manifest as `--json` shows it."""
    data: dict[str, Any] = json.loads(manifest.dump())
    return data
