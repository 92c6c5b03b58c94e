#!/usr/bin/env python3
"""liminati DNS admin: list, add and remove the extra records of the zone dnsmasq serves.

Runs alone in its own container (`python3 app.py --config /path/config.json`) with only this
file mounted, so it uses the Python standard library and nothing else: it must never import
liminati.

* Extra records live in one file the app owns, `<hosts_dir>/liminati-admin.hosts`, one
  `ADDRESS NAME` per line. dnsmasq watches the directory (`hostsdir=`) and re-reads a file when
  it changes, dropping the names it read from it before, so adds and removes need no restart.
  Writes are atomic: a temp file in the same directory whose name starts with a dot (dnsmasq's
  inotify ignores dotfiles, so it never reads the half-written temp file), fsync, rename.
* HTTP Basic auth (user `admin`, the password from a 0600 file) on everything but `/healthz`;
  failed logins are rate limited per client address.
* Every change is a POST carrying a CSRF token (random, HMAC-bound to the credentials with a
  secret generated at start) and passing a same-origin check; GET never changes anything.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hashlib
import hmac
import html
import ipaddress
import json
import math
import os
import re
import secrets
import signal
import socket
import stat
import struct
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn
from urllib.parse import parse_qs, urlsplit

USER = "admin"
REALM = "liminati DNS admin"
HOSTS_FILE = "liminati-admin.hosts"
#: failed logins allowed per client address within the window, then 429
FAIL_LIMIT = 5
FAIL_WINDOW = 60.0
#: how long a CSRF token stays valid
TOKEN_TTL = 12 * 3600
MAX_BODY = 16 * 1024
LOG_LINES = 50
PROBE_TIMEOUT = 1.0

SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
    ("X-Frame-Options", "DENY"),
)

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


class ConfigError(Exception):
    """The config or the password file is unusable; the message says what and how to fix it."""


class InvalidRecord(ValueError):
    """A name or address the app refuses to write; the message is shown to the user."""


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Config:
    domain: str
    server_ip: str
    hosts_dir: Path
    query_log: Path
    password_file: Path
    listen: str = "0.0.0.0"
    port: int = 5380
    dns_port: int = 53
    #: where the health check sends its query; in the container that shares dnsmasq's network
    #: namespace this is 127.0.0.1 (server_ip is the address clients use, outside)
    probe_address: str = ""

    @property
    def probe(self) -> str:
        return self.probe_address or self.server_ip


_REQUIRED = ("domain", "server_ip", "hosts_dir", "query_log", "password_file")
_OPTIONAL = ("listen", "port", "dns_port", "probe_address")


def _valid_domain(domain: str) -> bool:
    labels = domain.split(".")
    return len(domain) <= 253 and all(_LABEL.fullmatch(label) for label in labels)


def parse_config(data: object) -> Config:
    if not isinstance(data, dict):
        raise ConfigError("the config must be a JSON object")
    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise ConfigError(f"missing config keys: {', '.join(missing)}")
    for key in (
        "domain",
        "server_ip",
        "hosts_dir",
        "query_log",
        "password_file",
        "listen",
        "probe_address",
    ):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"{key} must be a string")
    for key in ("port", "dns_port"):
        value = data.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise ConfigError(f"{key} must be an integer from 1 to 65535")
    domain = data["domain"]
    if not _valid_domain(domain):
        raise ConfigError(f"domain {domain!r} is not a lowercase DNS name")
    for key in ("server_ip", "listen", "probe_address"):
        if key in data:
            try:
                ipaddress.ip_address(data[key])
            except ValueError:
                raise ConfigError(f"{key} {data[key]!r} is not an IP address") from None
    return Config(
        domain=domain,
        server_ip=str(ipaddress.ip_address(data["server_ip"])),
        hosts_dir=Path(data["hosts_dir"]),
        query_log=Path(data["query_log"]),
        password_file=Path(data["password_file"]),
        listen=data.get("listen", "0.0.0.0"),
        port=data.get("port", 5380),
        dns_port=data.get("dns_port", 53),
        probe_address=data.get("probe_address", ""),
    )


def load_config(path: Path) -> Config:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the config {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"the config {path} is not valid JSON: {exc}") from None
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def read_password(path: Path) -> str:
    """The admin password: the file's content without the trailing newline.

    The file must be private (no group or other permission bits), like the 0600 file liminati
    writes; a password that others could read is refused rather than used.
    """
    try:
        with path.open("rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            raw = handle.read(4097)
    except OSError as exc:
        raise ConfigError(f"cannot read the password file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"the password file {path} is not a regular file")
    if mode & 0o077:
        raise ConfigError(
            f"the password file {path} has mode {stat.S_IMODE(mode):04o}; "
            f"it must be readable by its owner only: chmod 600 {path}"
        )
    if len(raw) > 4096:
        raise ConfigError(f"the password file {path} is longer than 4096 bytes")
    try:
        password = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(f"the password file {path} is not UTF-8") from None
    if not password:
        raise ConfigError(f"the password file {path} is empty")
    return password


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True, order=True)
class Record:
    name: str
    address: str

    def line(self) -> str:
        return f"{self.address} {self.name}"


def _shown(value: str) -> str:
    """The user's input quoted for an error message (escaped later, like all output)."""
    return repr(value if len(value) <= 64 else value[:61] + "...")


def normalize_name(raw: str, domain: str) -> str:
    """`name` or `name.<domain>` (lowercase) -> the FQDN inside the domain, or InvalidRecord."""
    name = raw.strip()
    if not name:
        raise InvalidRecord("enter a name, for example gpu2")
    if len(name) > 253:
        raise InvalidRecord(f"the name is {len(name)} characters long; at most 253 are allowed")
    if name != name.lower():
        raise InvalidRecord(f"{_shown(name)}: names are lowercase, try {_shown(name.lower())}")
    name = name.removesuffix(".")
    suffix = "." + domain
    if name == domain:
        raise InvalidRecord(f"{domain} itself is a built-in record")
    if name.endswith(suffix):
        fqdn, relative = name, name[: -len(suffix)]
    elif "." in name:
        raise InvalidRecord(
            f"{_shown(name)} is not inside {domain}: use a name like gpu2 or gpu2{suffix}"
        )
    else:
        fqdn, relative = name + suffix, name
    if len(fqdn) > 253:
        raise InvalidRecord(f"{_shown(fqdn)} is longer than 253 characters")
    for label in relative.split("."):
        if label == "*" or "*" in label:
            raise InvalidRecord(
                f"wildcards cannot be added: *{suffix} is built in and already answers"
            )
        if not _LABEL.fullmatch(label):
            raise InvalidRecord(
                f"{_shown(name)} is not a valid name: each part between dots is 1-63 "
                "characters a-z, 0-9 and '-', not starting or ending with '-'"
            )
    return fqdn


def normalize_address(raw: str) -> str:
    """An IPv4 or IPv6 address in canonical form, or InvalidRecord."""
    text = raw.strip()
    if not text:
        raise InvalidRecord("enter an address, for example 100.64.0.30")
    if "%" in text:
        raise InvalidRecord(f"{_shown(text)}: scoped IPv6 addresses (with %zone) are not allowed")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidRecord(f"{_shown(text)} is not an IPv4 or IPv6 address") from None
    if address.is_unspecified or address.is_multicast:
        raise InvalidRecord(f"{address} cannot be a host's address")
    return str(address)


def make_record(name: str, address: str, domain: str) -> Record:
    return Record(normalize_name(name, domain), normalize_address(address))


# --------------------------------------------------------------------------- the hosts file


@dataclass
class HostsFile:
    records: list[Record]
    #: lines of our file that are not valid records (dropped at the next change)
    invalid: list[str]


@dataclass(frozen=True)
class OtherEntry:
    source: str
    address: str
    names: str


class HostsStore:
    """The app's own file in the watched hosts directory; changes are serialized by a lock."""

    def __init__(self, directory: Path, domain: str) -> None:
        self.directory = directory
        self.domain = domain
        self.path = directory / HOSTS_FILE
        self.lock = threading.Lock()

    def read(self) -> HostsFile:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return HostsFile([], [])
        records: list[Record] = []
        invalid: list[str] = []
        for raw in text.splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            fields = line.split()
            try:
                if len(fields) < 2:
                    raise InvalidRecord("no name")
                address = normalize_address(fields[0])
                for name in fields[1:]:
                    if normalize_name(name, self.domain) != name:
                        raise InvalidRecord("not a full name")
                    record = Record(name, address)
                    if record not in records:
                        records.append(record)
            except InvalidRecord:
                invalid.append(raw)
        return HostsFile(records, invalid)

    def others(self, limit: int = 500) -> list[OtherEntry]:
        """Entries of the other files dnsmasq reads from the directory (shown read-only)."""
        entries: list[OtherEntry] = []
        try:
            paths = sorted(self.directory.iterdir())
        except OSError:
            return entries
        for path in paths:
            name = path.name
            # the files dnsmasq's hostsdir skips: dotfiles and editor backups
            if name == HOSTS_FILE or name.startswith(".") or name.endswith("~"):
                continue
            try:
                if not path.is_file() or path.stat().st_size > 1 << 20:
                    continue
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            for raw in text.splitlines():
                fields = raw.split("#", 1)[0].split()
                if len(fields) >= 2:
                    entries.append(OtherEntry(name, fields[0], " ".join(fields[1:])))
                    if len(entries) >= limit:
                        return entries
        return entries

    def add(self, record: Record) -> None:
        with self.lock:
            current = self.read().records
            if record in current:
                raise InvalidRecord(f"{record.name} -> {record.address} already exists")
            self._write([*current, record])

    def remove(self, record: Record) -> bool:
        with self.lock:
            current = self.read().records
            if record not in current:
                return False
            self._write([r for r in current if r != record])
            return True

    def _write(self, records: Iterable[Record]) -> None:
        body = "".join(f"{r.line()}\n" for r in sorted(set(records)))
        text = (
            f"# Managed by the liminati DNS admin page: edits here are replaced.\n"
            f"# One record per line: ADDRESS NAME (names inside {self.domain}).\n{body}"
        )
        # a dotfile in the same directory: dnsmasq ignores it, and rename is atomic
        fd, tmp = tempfile.mkstemp(prefix=f".{HOSTS_FILE}.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                os.fchmod(handle.fileno(), 0o644)  # dnsmasq reads it as its own user
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            # this app runs alone in its container: it cannot use liminati.executor
            os.replace(tmp, self.path)  # noqa: TID251
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)

    def remove_stale_temps(self) -> None:
        """Temp files a killed process left behind (dnsmasq ignores them, but tidy up)."""
        try:
            paths = list(self.directory.glob(f".{HOSTS_FILE}.*.tmp"))
        except OSError:
            return
        for path in paths:
            with contextlib.suppress(OSError):
                path.unlink()


# --------------------------------------------------------------------------- auth


class RateLimiter:
    """Failed logins per client address in a sliding window; blocked once `limit` are reached."""

    def __init__(
        self,
        limit: int = FAIL_LIMIT,
        window: float = FAIL_WINDOW,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 10_000,
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.max_clients = max_clients
        self._fails: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        fails = self._fails.get(key)
        if fails is None:
            return None
        while fails and fails[0] <= now - self.window:
            fails.popleft()
        if not fails:
            del self._fails[key]
            return None
        return fails

    def retry_after(self, key: str) -> int:
        """Seconds until `key` may try again; 0 when it is not blocked."""
        with self._lock:
            now = self.clock()
            fails = self._recent(key, now)
            if fails is None or len(fails) < self.limit:
                return 0
            return max(1, math.ceil(fails[-self.limit] + self.window - now))

    def fail(self, key: str) -> None:
        with self._lock:
            now = self.clock()
            fails = self._recent(key, now)
            if fails is None:
                if len(self._fails) >= self.max_clients:
                    for stale in list(self._fails):
                        self._recent(stale, now)
                    if len(self._fails) >= self.max_clients:
                        # drop the client whose last failure is oldest
                        del self._fails[min(self._fails, key=lambda k: self._fails[k][-1])]
                fails = self._fails[key] = deque(maxlen=self.limit)
            fails.append(now)


def check_basic(header: str | None, password: bytes) -> bool:
    """Whether an Authorization header carries `admin` and the password (constant time)."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    user, sep, given = decoded.partition(b":")
    user_ok = hmac.compare_digest(user, USER.encode())
    password_ok = hmac.compare_digest(given, password)
    return bool(sep) & user_ok & password_ok


class Tokens:
    """CSRF tokens: `time.nonce.mac`, the MAC binding them to the credentials and this process."""

    def __init__(self, password: bytes, clock: Callable[[], float] = time.time) -> None:
        self._secret = secrets.token_bytes(32)
        self._binding = USER.encode() + b"\0" + hashlib.sha256(password).digest()
        self._clock = clock

    def _mac(self, issued: int, nonce: str) -> str:
        message = f"{issued}.{nonce}".encode() + b"\0" + self._binding
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def issue(self) -> str:
        issued = int(self._clock())
        nonce = secrets.token_urlsafe(16)
        return f"{issued}.{nonce}.{self._mac(issued, nonce)}"

    def verify(self, token: str | None) -> bool:
        if not token or len(token) > 200:
            return False
        parts = token.split(".")
        if len(parts) != 3 or not parts[0].isdigit():
            return False
        issued = int(parts[0])
        age = self._clock() - issued
        if not -60 <= age <= TOKEN_TTL:
            return False
        return hmac.compare_digest(parts[2], self._mac(issued, parts[1]))


def same_origin(
    host: str | None, origins: list[str], referer: str | None, fetch_site: str | None
) -> bool:
    """The same-origin check for a state-changing request (the CSRF token is checked too).

    `Origin: null` is what browsers send for a form POST from a page with
    `Referrer-Policy: no-referrer` (this app's own), so it counts as absent: the token decides,
    and `Sec-Fetch-Site`, when the browser sends it, still tells a cross-site request apart.
    """
    if fetch_site is not None and fetch_site.strip().lower() not in ("same-origin", "none"):
        return False
    if len(origins) > 1:
        return False
    origin = origins[0].strip() if origins else None
    if origin is not None and origin != "null":
        return _matches_host(origin, host)
    if origin is None and referer:
        return _matches_host(referer, host)
    return True


def _matches_host(url: str, host: str | None) -> bool:
    if not host:
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.strip().lower()


# --------------------------------------------------------------------------- health


@dataclass
class ProbeResult:
    server: str
    port: int
    name: str
    rcode: str = ""
    answers: list[str] = field(default_factory=list)
    latency_ms: float | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.rcode == "NOERROR" and bool(self.answers)


def build_query(name: str, qid: int, qtype: int = 1) -> bytes:
    """A DNS query (RFC 1035) for `name`: header with RD set, one question of class IN."""
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(label)]) + label.encode("ascii") for label in name.split("."))
    return header + qname + b"\0" + struct.pack("!HH", qtype, 1)


def _skip_name(data: bytes, offset: int) -> int:
    for _ in range(128):
        if offset >= len(data):
            raise ValueError("truncated name")
        length = data[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            return offset + 2
        if length & 0xC0:
            raise ValueError("bad label")
        offset += 1 + length
    raise ValueError("name too long")


def parse_response(data: bytes, qid: int) -> tuple[str, list[str]]:
    """(rcode, A/AAAA answers) of a response to query `qid`; ValueError when malformed."""
    if len(data) < 12:
        raise ValueError("short response")
    rid, flags, qdcount, ancount, _, _ = struct.unpack("!HHHHHH", data[:12])
    if rid != qid or not flags & 0x8000:
        raise ValueError("not a response to our query")
    rcode = _RCODES.get(flags & 0xF, f"RCODE{flags & 0xF}")
    offset = 12
    for _ in range(qdcount):
        offset = _skip_name(data, offset) + 4
    if offset > len(data):
        raise ValueError("truncated question")
    answers: list[str] = []
    for _ in range(ancount):
        offset = _skip_name(data, offset)
        if offset + 10 > len(data):
            raise ValueError("truncated answer")
        rtype, rclass, _ttl, rdlength = struct.unpack("!HHIH", data[offset : offset + 10])
        offset += 10
        rdata = data[offset : offset + rdlength]
        if len(rdata) != rdlength:
            raise ValueError("truncated rdata")
        offset += rdlength
        if rclass == 1 and rtype == 1 and rdlength == 4:
            answers.append(str(ipaddress.IPv4Address(rdata)))
        elif rclass == 1 and rtype == 28 and rdlength == 16:
            answers.append(str(ipaddress.IPv6Address(rdata)))
    return rcode, answers


def dns_probe(server: str, port: int, name: str, timeout: float = PROBE_TIMEOUT) -> ProbeResult:
    """Ask `server:port` for the A record of `name` over UDP and time the answer."""
    result = ProbeResult(server=server, port=port, name=name)
    qid = secrets.randbelow(1 << 16)
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((server, port))
            start = time.perf_counter()
            deadline = start + timeout
            sock.send(build_query(name, qid))
            while True:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                data = sock.recv(4096)
                try:
                    result.rcode, result.answers = parse_response(data, qid)
                except ValueError:
                    continue  # not ours or garbage: keep waiting for the real answer
                result.latency_ms = (time.perf_counter() - start) * 1000
                return result
    except TimeoutError:
        result.error = f"no answer within {timeout:g} s"
    except OSError as exc:
        result.error = exc.strerror or str(exc)
    return result


@dataclass
class Health:
    hosts_dir_writable: bool
    query_log_readable: bool
    probe: ProbeResult


def check_health(config: Config) -> Health:
    hosts_ok = config.hosts_dir.is_dir() and os.access(config.hosts_dir, os.W_OK | os.X_OK)
    log_ok = config.query_log.is_file() and os.access(config.query_log, os.R_OK)
    probe = dns_probe(config.probe, config.dns_port, config.domain)
    return Health(hosts_ok, log_ok, probe)


# --------------------------------------------------------------------------- the query log


@dataclass(frozen=True)
class LogLine:
    time: str
    event: str
    name: str
    detail: str
    raw: str

    @property
    def parsed(self) -> bool:
        return bool(self.event)


_LOG = re.compile(
    r"(?P<time>.{0,40}?)\s*dnsmasq(?:\[\d+\])?: "
    r"(?:\d+ \S+ )?"  # log-queries=extra: serial and client
    r"(?P<event>query\[[A-Za-z0-9]+\]|reply|cached|cached-stale|forwarded|config|/\S+) "
    r"(?P<name>\S+) (?P<detail>(?:from|is|to) .*)"
)


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "\ufffd" for c in text)


def parse_log_line(raw: str) -> LogLine:
    line = _printable(raw)
    match = _LOG.fullmatch(line)
    if not match:
        return LogLine("", "", "", "", line)
    event = match["event"]
    if event.startswith("/"):
        event = "hosts " + event.rsplit("/", 1)[-1]
    return LogLine(match["time"], event, match["name"], match["detail"], line)


def tail_lines(path: Path, count: int = LOG_LINES, max_bytes: int = 1 << 20) -> list[str]:
    """The last `count` lines of a file, reading at most `max_bytes` from its end."""
    with path.open("rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        position, data = end, b""
        while position > 0 and data.count(b"\n") <= count and end - position < max_bytes:
            step = min(64 * 1024, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
    lines = data.split(b"\n")
    if position > 0:
        lines = lines[1:]  # the first one is probably cut
    if lines and not lines[-1]:
        lines.pop()
    return [line.decode("utf-8", "replace").rstrip("\r") for line in lines[-count:]]


def recent_queries(path: Path) -> tuple[list[LogLine], str]:
    try:
        return [parse_log_line(line) for line in tail_lines(path)], ""
    except OSError as exc:
        return [], f"cannot read {path}: {exc.strerror or exc}"


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
main{max-width:980px;margin:0 auto;padding:1.5rem}
h1{font-size:1.35rem;margin:0 0 1rem}h2{font-size:1.05rem;margin:1.6rem 0 .5rem}
section{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:1rem 1.2rem}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #eceff2;vertical-align:top}
th{font-weight:600;color:#4a5563;font-size:.85rem}
code,td.m{font-family:ui-monospace,monospace;font-size:.9rem;word-break:break-all}
.muted{color:#6b7683}.ok{color:#17803d}.bad{color:#b42318}
.error{background:#fdecea;border:1px solid #f5c2bd;color:#8a1c12;padding:.6rem .9rem;
border-radius:6px;margin-bottom:1rem}
form.add{display:flex;gap:.5rem;flex-wrap:wrap;align-items:end}
label{display:flex;flex-direction:column;font-size:.85rem;color:#4a5563}
input[type=text]{font:inherit;padding:.35rem .5rem;border:1px solid #c5cbd3;border-radius:5px;
min-width:16rem}
button{font:inherit;padding:.35rem .9rem;border-radius:5px;border:1px solid #2458b3;
background:#2f6fde;color:#fff;cursor:pointer}
button.rm{background:#fff;color:#b42318;border-color:#e3a29b;padding:.1rem .6rem}
form.inline{margin:0}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _yes(flag: bool, yes: str, no: str) -> str:
    return f'<span class="ok">{_e(yes)}</span>' if flag else f'<span class="bad">{_e(no)}</span>'


def render_page(
    config: Config,
    token: str,
    hosts: HostsFile,
    others: list[OtherEntry],
    health: Health,
    log: list[LogLine],
    log_error: str,
    error: str = "",
    form: tuple[str, str] = ("", ""),
) -> str:
    domain = config.domain
    hidden = f'<input type="hidden" name="csrf" value="{_e(token)}">'
    rows = [
        f'<tr><td class="m">{_e(domain)}</td><td class="m">{_e(config.server_ip)}</td>'
        '<td class="muted">built-in</td><td></td></tr>',
        f'<tr><td class="m">*.{_e(domain)}</td><td class="m">{_e(config.server_ip)}</td>'
        '<td class="muted">built-in: every name without its own record</td><td></td></tr>',
    ]
    for record in hosts.records:
        rows.append(
            f'<tr><td class="m">{_e(record.name)}</td><td class="m">{_e(record.address)}</td>'
            f'<td class="muted">{_e(HOSTS_FILE)}</td><td>'
            f'<form class="inline" method="post" action="/remove">{hidden}'
            f'<input type="hidden" name="name" value="{_e(record.name)}">'
            f'<input type="hidden" name="address" value="{_e(record.address)}">'
            f'<button class="rm" type="submit">remove</button></form></td></tr>'
        )
    for entry in others:
        rows.append(
            f'<tr><td class="m">{_e(entry.names)}</td><td class="m">{_e(entry.address)}</td>'
            f'<td class="muted">{_e(entry.source)} (read-only)</td><td></td></tr>'
        )
    invalid = ""
    if hosts.invalid:
        invalid = (
            f'<p class="bad">{len(hosts.invalid)} line(s) of {_e(HOSTS_FILE)} are not valid '
            "records and will be dropped at the next change: "
            + ", ".join(f"<code>{_e(line)}</code>" for line in hosts.invalid[:10])
            + "</p>"
        )

    probe = health.probe
    if probe.error:
        dns = _yes(False, "", f"no answer: {probe.error}")
    else:
        answers = ", ".join(probe.answers) or "(no address)"
        latency = f"{probe.latency_ms:.1f} ms" if probe.latency_ms is not None else "?"
        dns = _yes(probe.ok, f"{probe.rcode} {answers}", f"{probe.rcode} {answers}")
        dns += f' <span class="muted">in {_e(latency)}</span>'
        if probe.ok and config.server_ip not in probe.answers:
            dns += f' <span class="bad">(expected {_e(config.server_ip)})</span>'

    log_rows = []
    for line in reversed(log):
        if line.parsed:
            log_rows.append(
                f'<tr><td class="muted">{_e(line.time)}</td><td>{_e(line.event)}</td>'
                f'<td class="m">{_e(line.name)}</td><td class="m">{_e(line.detail)}</td></tr>'
            )
        else:
            log_rows.append(f'<tr><td colspan="4" class="m muted">{_e(line.raw)}</td></tr>')
    if log_error:
        log_html = f'<p class="bad">{_e(log_error)}</p>'
    elif not log_rows:
        log_html = '<p class="muted">no queries logged yet</p>'
    else:
        log_html = (
            "<table><tr><th>time</th><th>event</th><th>name</th><th>detail</th></tr>"
            + "".join(log_rows)
            + "</table>"
        )

    error_html = f'<div class="error" role="alert">{_e(error)}</div>' if error else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>DNS · {_e(domain)}</title><style>{_CSS}</style></head>
<body><main>
<h1>DNS for {_e(domain)} <span class="muted">on {_e(config.server_ip)}</span></h1>
{error_html}
<section><h2>Records</h2>
<table><tr><th>name</th><th>address</th><th>source</th><th></th></tr>
{"".join(rows)}
</table>{invalid}
<h2>Add a record</h2>
<form class="add" method="post" action="/add">{hidden}
<label>name<input type="text" name="name" value="{_e(form[0])}" required
 placeholder="gpu2 or gpu2.{_e(domain)}" autocomplete="off" spellcheck="false"></label>
<label>address (IPv4 or IPv6)<input type="text" name="address" value="{_e(form[1])}"
 required placeholder="100.64.0.30" autocomplete="off" spellcheck="false"></label>
<button type="submit">add</button></form>
<p class="muted">dnsmasq picks changes up within a second, without a restart.</p>
</section>
<h2>Health</h2>
<section><table>
<tr><td>hosts directory <code>{_e(config.hosts_dir)}</code></td>
<td>{_yes(health.hosts_dir_writable, "writable", "not writable")}</td></tr>
<tr><td>query log <code>{_e(config.query_log)}</code></td>
<td>{_yes(health.query_log_readable, "readable", "not readable")}</td></tr>
<tr><td>DNS query <code>A {_e(domain)}</code> to
<code>{_e(probe.server)}:{_e(probe.port)}</code></td><td>{dns}</td></tr>
</table></section>
<h2>Recent queries <span class="muted">(last {LOG_LINES} log lines, newest first)</span></h2>
<section>{log_html}</section>
</main></body></html>
"""


# --------------------------------------------------------------------------- HTTP


class DnsAdminServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 resets connections when a page's requests (or a
    # script's) arrive together on a busy host
    request_queue_size = 128

    def __init__(
        self,
        config: Config,
        password: str,
        *,
        limiter: RateLimiter | None = None,
        bind: tuple[str, int] | None = None,
    ) -> None:
        self.config = config
        self.password = password.encode("utf-8")
        self.limiter = limiter or RateLimiter()
        self.tokens = Tokens(self.password)
        self.store = HostsStore(config.hosts_dir, config.domain)
        self.address_family = socket.AF_INET6 if ":" in config.listen else socket.AF_INET
        super().__init__(bind or (config.listen, config.port), Handler)


class Handler(BaseHTTPRequestHandler):
    server: DnsAdminServer
    server_version = "liminati-dnsadmin"
    sys_version = ""
    timeout = 15

    # ----------------------------------------------------------------- plumbing

    def end_headers(self) -> None:
        for name, value in SECURITY_HEADERS:
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(
            _printable(f"{self.client_address[0]} [{self.log_date_time_string()}] {format % args}")
            + "\n"
        )

    def _send(
        self,
        status: int,
        body: str | bytes,
        content_type: str = "text/html; charset=utf-8",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        data = body.encode("utf-8") if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_json(self, status: int, payload: object) -> None:
        self._send(status, json.dumps(payload, indent=1) + "\n", "application/json")

    def _send_message(self, status: int, message: str, *, as_json: bool = False) -> None:
        if as_json:
            self._send_json(status, {"error": message})
            return
        phrase = HTTPStatus(status).phrase
        self._send(
            status,
            f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{status} '
            f"{_e(phrase)}</title></head><body><h1>{status} {_e(phrase)}</h1>"
            f"<p>{_e(message)}</p></body></html>\n",
        )

    # ----------------------------------------------------------------- methods

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _not_allowed(self) -> None:
        self._send_message(HTTPStatus.METHOD_NOT_ALLOWED, "use GET or POST")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def _dispatch(self) -> None:
        try:
            path = urlsplit(self.path).path
        except ValueError:
            self._send_message(HTTPStatus.BAD_REQUEST, "bad request target")
            return
        if path == "/healthz" and self.command in ("GET", "HEAD"):
            self._send(HTTPStatus.OK, "ok\n", "text/plain; charset=utf-8")
            return
        if not self._authenticated():
            return
        read_only = self.command in ("GET", "HEAD")
        routes: dict[tuple[str, bool], Callable[[], None]] = {
            ("/", True): self._page,
            ("/add", False): self._form_add,
            ("/remove", False): self._form_remove,
            ("/api/records", True): self._api_get,
            ("/api/records", False): self._api_post,
            ("/api/health", True): self._api_health,
        }
        handler = routes.get((path, read_only))
        if handler is not None:
            handler()
        elif (path, not read_only) in routes:
            allowed = "POST" if read_only else "GET, HEAD"
            self._send(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"<!doctype html><p>use {allowed}</p>\n",
                headers=[("Allow", allowed)],
            )
        else:
            self._send_message(HTTPStatus.NOT_FOUND, "no such page")

    def _authenticated(self) -> bool:
        client = self.client_address[0]
        limiter = self.server.limiter
        retry = limiter.retry_after(client)
        if retry:
            self._send_message(
                HTTPStatus.TOO_MANY_REQUESTS,
                f"too many failed logins; try again in {retry} s",
            )
            return False
        header = self.headers.get("Authorization")
        if check_basic(header, self.server.password):
            return True
        if header is not None:
            limiter.fail(client)
        self.send_response(HTTPStatus.UNAUTHORIZED)
        body = b"<!doctype html><p>401: log in as admin</p>\n"
        self.send_header("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        return False

    # ----------------------------------------------------------------- POST plumbing

    def _read_body(self, content_type: str, *, as_json: bool) -> bytes | None:
        if self.headers.get("Transfer-Encoding"):
            self._send_message(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length", as_json=as_json)
            return None
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.strip().isdigit():
            self._send_message(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length", as_json=as_json)
            return None
        length = int(length_header)
        if length > MAX_BODY:
            self.close_connection = True
            self._send_message(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large", as_json=as_json
            )
            return None
        body = self.rfile.read(length)
        given = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if given != content_type:
            self._send_message(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"send {content_type}", as_json=as_json
            )
            return None
        return body

    def _csrf_ok(self, token: str | None, *, as_json: bool) -> bool:
        if not same_origin(
            self.headers.get("Host"),
            self.headers.get_all("Origin") or [],
            self.headers.get("Referer"),
            self.headers.get("Sec-Fetch-Site"),
        ):
            self._send_message(
                HTTPStatus.FORBIDDEN, "cross-origin request refused", as_json=as_json
            )
            return False
        if not self.server.tokens.verify(token):
            self._send_message(
                HTTPStatus.FORBIDDEN,
                "missing or invalid CSRF token: reload the page and try again",
                as_json=as_json,
            )
            return False
        return True

    def _form(self) -> dict[str, str] | None:
        body = self._read_body("application/x-www-form-urlencoded", as_json=False)
        if body is None:
            return None
        try:
            fields = parse_qs(
                body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=8
            )
        except (UnicodeDecodeError, ValueError):
            self._send_message(HTTPStatus.BAD_REQUEST, "malformed form")
            return None
        form = {key: values[0] for key, values in fields.items() if len(values) == 1}
        if not self._csrf_ok(form.get("csrf"), as_json=False):
            return None
        return form

    def _redirect_home(self) -> None:
        self.send_response(HTTPStatus.SEE_OTHER)
        self.send_header("Location", "/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    # ----------------------------------------------------------------- pages

    def _page(
        self, status: int = HTTPStatus.OK, error: str = "", form: tuple[str, str] = ("", "")
    ) -> None:
        config = self.server.config
        log, log_error = recent_queries(config.query_log)
        page = render_page(
            config,
            self.server.tokens.issue(),
            self.server.store.read(),
            self.server.store.others(),
            check_health(config),
            log,
            log_error,
            error=error,
            form=form,
        )
        self._send(status, page)

    def _form_add(self) -> None:
        form = self._form()
        if form is None:
            return
        name, address = form.get("name", ""), form.get("address", "")
        try:
            self.server.store.add(make_record(name, address, self.server.config.domain))
        except InvalidRecord as exc:
            self._page(HTTPStatus.BAD_REQUEST, str(exc), (name[:300], address[:100]))
            return
        except OSError as exc:
            self._page(HTTPStatus.INTERNAL_SERVER_ERROR, f"could not write: {exc}", (name, address))
            return
        self._redirect_home()

    def _form_remove(self) -> None:
        form = self._form()
        if form is None:
            return
        try:
            record = make_record(
                form.get("name", ""), form.get("address", ""), self.server.config.domain
            )
            removed = self.server.store.remove(record)
        except InvalidRecord as exc:
            self._page(HTTPStatus.BAD_REQUEST, str(exc))
            return
        except OSError as exc:
            self._page(HTTPStatus.INTERNAL_SERVER_ERROR, f"could not write: {exc}")
            return
        if not removed:
            self._page(HTTPStatus.NOT_FOUND, f"{record.name} -> {record.address} is not a record")
            return
        self._redirect_home()

    # ----------------------------------------------------------------- API

    def _records_json(self) -> dict[str, object]:
        config = self.server.config
        hosts = self.server.store.read()
        return {
            "domain": config.domain,
            "builtin": [
                {"name": config.domain, "address": config.server_ip},
                {"name": f"*.{config.domain}", "address": config.server_ip},
            ],
            "records": [{"name": r.name, "address": r.address} for r in hosts.records],
            "invalid_lines": hosts.invalid,
            "csrf_token": self.server.tokens.issue(),
        }

    def _api_get(self) -> None:
        self._send_json(HTTPStatus.OK, self._records_json())

    def _api_health(self) -> None:
        health = check_health(self.server.config)
        probe = health.probe
        self._send_json(
            HTTPStatus.OK,
            {
                "hosts_dir_writable": health.hosts_dir_writable,
                "query_log_readable": health.query_log_readable,
                "dns": {
                    "server": f"{probe.server}:{probe.port}",
                    "name": probe.name,
                    "ok": probe.ok,
                    "rcode": probe.rcode,
                    "answers": probe.answers,
                    "latency_ms": probe.latency_ms,
                    "error": probe.error,
                },
            },
        )

    def _api_post(self) -> None:
        """`{"action": "add"|"remove", "name": ..., "address": ...}` with `X-CSRF-Token`."""
        body = self._read_body("application/json", as_json=True)
        if body is None:
            return
        if not self._csrf_ok(self.headers.get("X-CSRF-Token"), as_json=True):
            return
        try:
            request = json.loads(body)
        except ValueError:
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": "the body is not JSON"})
            return
        if not isinstance(request, dict) or not all(
            isinstance(request.get(key), str) for key in ("action", "name", "address")
        ):
            self._send_json(
                HTTPStatus.BAD_REQUEST,
                {"error": 'send {"action": "add" or "remove", "name": "...", "address": "..."}'},
            )
            return
        action = request["action"]
        try:
            record = make_record(request["name"], request["address"], self.server.config.domain)
            if action == "add":
                self.server.store.add(record)
            elif action == "remove":
                if not self.server.store.remove(record):
                    self._send_json(
                        HTTPStatus.NOT_FOUND,
                        {"error": f"{record.name} -> {record.address} is not a record"},
                    )
                    return
            else:
                raise InvalidRecord('action must be "add" or "remove"')
        except InvalidRecord as exc:
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        except OSError as exc:
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"could not write: {exc}"})
            return
        self._send_json(HTTPStatus.OK, {"ok": True, **self._records_json()})


def make_server(
    config: Config,
    password: str,
    *,
    limiter: RateLimiter | None = None,
    bind: tuple[str, int] | None = None,
) -> DnsAdminServer:
    """The server, bound (to `bind`, else the config's listen address and port), not serving."""
    server = DnsAdminServer(config, password, limiter=limiter, bind=bind)
    server.store.remove_stale_temps()
    return server


def _stop(signum: int, frame: FrameType | None) -> NoReturn:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="liminati DNS admin page")
    parser.add_argument("--config", required=True, type=Path, help="path to config.json")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        password = read_password(config.password_file)
    except ConfigError as exc:
        print(f"dnsadmin: {exc}", file=sys.stderr)
        return 2
    try:
        server = make_server(config, password)
    except OSError as exc:
        print(
            f"dnsadmin: cannot listen on {config.listen}:{config.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1
    signal.signal(signal.SIGTERM, _stop)
    print(
        f"dnsadmin: listening on http://{config.listen}:{server.server_port}/",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
