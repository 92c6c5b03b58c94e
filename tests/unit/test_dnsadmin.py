"""The DNS admin page (`liminati.dnsadmin.app`): auth, CSRF, validation, atomic writes, health.

Network: the app listens on 127.0.0.1 only, on an ephemeral port, in a thread stopped after each
test. The health check's DNS probe is tested against a tiny fake UDP responder on 127.0.0.1 (a
stand-in for dnsmasq, so these tests do not need it); one test runs the real dnsmasq on a free
loopback port and queries it with dig.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import http.client
import ipaddress
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest

from liminati.dnsadmin import app

DOMAIN = "liminati.internal"
PASSWORD = "correct horse battery staple"
APP_FILE = Path(app.__file__)


@dataclass
class Admin:
    server: app.DnsAdminServer
    port: int
    hosts_dir: Path
    query_log: Path

    @property
    def hosts_file(self) -> Path:
        return self.hosts_dir / app.HOSTS_FILE

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    text: str

    def json(self) -> dict[str, object]:
        data = json.loads(self.text)
        assert isinstance(data, dict)
        return data


def basic(user: str = "admin", password: str = PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def request(
    admin: Admin,
    method: str,
    path: str,
    body: str | bytes | None = None,
    headers: dict[str, str] | None = None,
    auth: str | None = basic(),
) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", admin.port, timeout=10)
    try:
        all_headers = dict(headers or {})
        if auth is not None:
            all_headers["Authorization"] = auth
        conn.request(method, path, body=body, headers=all_headers)
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read().decode())
    finally:
        conn.close()


def token_of(admin: Admin) -> str:
    page = request(admin, "GET", "/")
    assert page.status == 200
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


def post_form(
    admin: Admin, path: str, fields: dict[str, str], headers: dict[str, str] | None = None
) -> Response:
    """A form POST as the browser sends it from the page; a header given as "" is left out."""
    merged = {"Content-Type": "application/x-www-form-urlencoded", "Origin": admin.origin}
    merged |= headers or {}
    sent = {key: value for key, value in merged.items() if value != ""}
    return request(admin, "POST", path, urlencode(fields), sent)


def add(admin: Admin, name: str, address: str, **headers: str) -> Response:
    fields = {"csrf": token_of(admin), "name": name, "address": address}
    return post_form(admin, "/add", fields, headers)


@contextlib.contextmanager
def running(tmp_path: Path, **overrides: object) -> Iterator[Admin]:
    hosts_dir = Path(str(overrides.get("hosts_dir", tmp_path / "hosts.d")))
    hosts_dir.mkdir(exist_ok=True)
    query_log = tmp_path / "queries.log"
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    raw: dict[str, object] = {
        "domain": DOMAIN,
        "server_ip": "100.64.0.10",
        "listen": "127.0.0.1",
        "port": 5380,
        "hosts_dir": str(hosts_dir),
        "query_log": str(query_log),
        "password_file": str(password_file),
        "dns_port": 53,
    } | overrides
    config = app.parse_config(raw)
    server = app.make_server(config, app.read_password(password_file), bind=("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield Admin(server, server.server_port, hosts_dir, query_log)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[Admin]:
    # the DNS probe goes to a closed loopback port: it fails fast instead of timing out
    with running(tmp_path, server_ip="127.0.0.1", dns_port=free_port()) as running_admin:
        yield running_admin


def free_port() -> int:
    """A loopback port free for both UDP and TCP (dnsmasq binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def hosts_snapshot(admin: Admin) -> bytes | None:
    return admin.hosts_file.read_bytes() if admin.hosts_file.exists() else None


# ----------------------------------------------------------------------------- auth


def test_healthz_needs_no_auth(admin: Admin) -> None:
    resp = request(admin, "GET", "/healthz", auth=None)
    assert (resp.status, resp.text) == (200, "ok\n")
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("path", ["/", "/api/records", "/api/health", "/nope", "/healthz/x"])
def test_every_other_path_needs_auth(admin: Admin, path: str) -> None:
    resp = request(admin, "GET", path, auth=None)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith('Basic realm="liminati DNS admin"')
    assert resp.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    "auth",
    [
        basic(password="wrong"),
        basic(user="root"),
        basic(password=PASSWORD + "x"),
        "Basic !!!not-base64",
        "Bearer " + PASSWORD,
        "Basic " + base64.b64encode(PASSWORD.encode()).decode(),  # no user, no colon
    ],
)
def test_wrong_credentials_401(admin: Admin, auth: str) -> None:
    assert request(admin, "GET", "/", auth=auth).status == 401


def test_brute_force_is_rate_limited(admin: Admin) -> None:
    for _ in range(app.FAIL_LIMIT):
        assert request(admin, "GET", "/", auth=basic(password="guess")).status == 401
    blocked = request(admin, "GET", "/", auth=basic(password="guess"))
    assert blocked.status == 429
    assert 1 <= int(blocked.headers.get("Retry-After", "60")) <= 60
    # while blocked, even the right password is refused: guessing gains nothing
    assert request(admin, "GET", "/").status == 429
    assert request(admin, "GET", "/healthz", auth=None).status == 200


def test_rate_limiter_window() -> None:
    now = [1000.0]
    limiter = app.RateLimiter(limit=3, window=60, clock=lambda: now[0])
    for _ in range(3):
        assert limiter.retry_after("a") == 0
        limiter.fail("a")
    assert limiter.retry_after("a") == 60
    assert limiter.retry_after("b") == 0  # per client
    now[0] += 30
    assert limiter.retry_after("a") == 30
    now[0] += 30.5
    assert limiter.retry_after("a") == 0


def test_security_headers(admin: Admin) -> None:
    resp = request(admin, "GET", "/")
    assert resp.status == 200
    assert resp.headers["Content-Security-Policy"] == (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    )
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["Cache-Control"] == "no-store"
    assert "<script" not in resp.text


# ----------------------------------------------------------------------------- records


def test_page_lists_builtins(admin: Admin) -> None:
    page = request(admin, "GET", "/").text
    assert f'<td class="m">{DOMAIN}</td>' in page
    assert f"*.{DOMAIN}" in page


@pytest.mark.parametrize("name", ["gpu2", f"gpu2.{DOMAIN}", f"gpu2.{DOMAIN}."])
def test_add_valid_record(admin: Admin, name: str) -> None:
    resp = add(admin, name, "100.64.0.30")
    assert resp.status == 303
    assert resp.headers["Location"] == "/"
    lines = admin.hosts_file.read_text().splitlines()
    assert f"100.64.0.30 gpu2.{DOMAIN}" in lines
    assert [line for line in lines if not line.startswith("#")] == [f"100.64.0.30 gpu2.{DOMAIN}"]
    page = request(admin, "GET", "/").text
    assert f'<td class="m">gpu2.{DOMAIN}</td><td class="m">100.64.0.30</td>' in page
    assert oct(admin.hosts_file.stat().st_mode & 0o777) == "0o644"
    # no temp file left behind in the watched directory
    assert sorted(p.name for p in admin.hosts_dir.iterdir()) == [app.HOSTS_FILE]


def test_add_ipv6_and_subdomain(admin: Admin) -> None:
    assert add(admin, f"a.b.{DOMAIN}", "FD7A:115C:A1E0::0001").status == 303
    assert f"fd7a:115c:a1e0::1 a.b.{DOMAIN}" in admin.hosts_file.read_text()


def test_add_duplicate_is_refused(admin: Admin) -> None:
    assert add(admin, "gpu2", "100.64.0.30").status == 303
    before = hosts_snapshot(admin)
    resp = add(admin, "gpu2", "100.64.0.30")
    assert resp.status == 400
    assert "already exists" in resp.text
    assert hosts_snapshot(admin) == before


@pytest.mark.parametrize(
    "name",
    [
        "evil.example",
        "a b",
        "x;rm",
        "a" * 300,
        f"*.{DOMAIN}",
        "*",
        "",
        DOMAIN,
        "GPU2",
        "-gpu",
        "gpu-",
        "gpu_2",
        "a" * 64,
        f"gpu2.{DOMAIN}.evil.example",
        f"gpu2{DOMAIN}",
        "gpu2\n100.64.0.31 evil.example",
        "gpu2 evil.example",
        "<script>alert(1)</script>",
        "gpü",
        "gpu..two",
        f".{DOMAIN}",
    ],
)
def test_invalid_names_are_refused(admin: Admin, name: str) -> None:
    resp = add(admin, name, "100.64.0.30")
    assert resp.status == 400, name
    assert 'class="error"' in resp.text
    assert "<script>" not in resp.text
    assert hosts_snapshot(admin) is None


@pytest.mark.parametrize(
    "address",
    [
        "",
        "999.1.1.1",
        "100.64.0",
        "100.64.0.030",
        "abc",
        "100.64.0.30 evil.example",
        "100.64.0.30\n1.2.3.4 evil.example",
        "fe80::1%eth0",
        "0.0.0.0",
        "::",
        "224.0.0.1",
        "100.64.0.30/32",
        "gpu1.liminati.internal",
    ],
)
def test_invalid_addresses_are_refused(admin: Admin, address: str) -> None:
    resp = add(admin, "gpu2", address)
    assert resp.status == 400, address
    assert 'class="error"' in resp.text
    assert hosts_snapshot(admin) is None


def test_refused_input_is_echoed_escaped(admin: Admin) -> None:
    resp = add(admin, '"><script>x</script>', "1.2.3.4")
    assert resp.status == 400
    assert "<script>" not in resp.text
    assert "&lt;script&gt;" in resp.text


def test_remove(admin: Admin) -> None:
    assert add(admin, "gpu2", "100.64.0.30").status == 303
    assert add(admin, "gpu3", "100.64.0.31").status == 303
    fields = {"csrf": token_of(admin), "name": f"gpu2.{DOMAIN}", "address": "100.64.0.30"}
    assert post_form(admin, "/remove", fields).status == 303
    records = [line for line in admin.hosts_file.read_text().splitlines() if line[0] != "#"]
    assert records == [f"100.64.0.31 gpu3.{DOMAIN}"]
    page = request(admin, "GET", "/").text
    assert f'<td class="m">gpu2.{DOMAIN}</td>' not in page
    assert f'<td class="m">gpu3.{DOMAIN}</td>' in page
    # removing it again: 404, nothing changes
    before = hosts_snapshot(admin)
    assert post_form(admin, "/remove", fields).status == 404
    assert hosts_snapshot(admin) == before


def test_other_files_are_shown_read_only_and_escaped(admin: Admin) -> None:
    (admin.hosts_dir / "manual.hosts").write_text("10.0.0.1 <b>odd</b>.liminati.internal\n")
    page = request(admin, "GET", "/").text
    assert "&lt;b&gt;odd&lt;/b&gt;" in page and "<b>odd" not in page
    assert "manual.hosts (read-only)" in page


def test_concurrent_adds_are_serialized(admin: Admin) -> None:
    token = token_of(admin)
    results: list[int] = []

    def worker(i: int) -> None:
        fields = {"csrf": token, "name": f"n{i}", "address": f"100.64.1.{i}"}
        results.append(post_form(admin, "/add", fields).status)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [303] * 20
    records = [line for line in admin.hosts_file.read_text().splitlines() if line[0] != "#"]
    assert len(records) == 20


# ----------------------------------------------------------------------------- CSRF


@pytest.mark.parametrize(
    "token",
    [None, "", "garbage", "1.2.3", "0.abc.0123", "forged"],
)
def test_post_without_valid_token_is_forbidden(admin: Admin, token: str | None) -> None:
    assert add(admin, "gpu1", "100.64.0.20").status == 303
    before = hosts_snapshot(admin)
    if token == "forged":  # a well-formed token with the MAC of another server's secret
        token = app.Tokens(PASSWORD.encode()).issue()
    fields = {"name": "gpu2", "address": "100.64.0.30"}
    if token is not None:
        fields["csrf"] = token
    assert post_form(admin, "/add", fields).status == 403
    remove = {"name": f"gpu1.{DOMAIN}", "address": "100.64.0.20"}
    if token is not None:
        remove["csrf"] = token
    assert post_form(admin, "/remove", remove).status == 403
    assert hosts_snapshot(admin) == before


def test_token_is_bound_to_the_credentials() -> None:
    tokens = app.Tokens(b"one")
    token = tokens.issue()
    assert tokens.verify(token)
    other = app.Tokens(b"two")
    other._secret = tokens._secret  # same secret, other credentials
    assert not other.verify(token)


def test_expired_token_is_refused() -> None:
    now = [1_000_000.0]
    tokens = app.Tokens(b"pw", clock=lambda: now[0])
    token = tokens.issue()
    now[0] += app.TOKEN_TTL + 1
    assert not tokens.verify(token)


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "https://evil.example:5380"},
        {"Origin": "http://127.0.0.1:1"},
        {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "", "Referer": "http://evil.example/page"},
    ],
)
def test_cross_origin_post_is_forbidden(admin: Admin, headers: dict[str, str]) -> None:
    resp = add(admin, "gpu2", "100.64.0.30", **headers)
    assert resp.status == 403
    assert "cross-origin" in resp.text
    assert hosts_snapshot(admin) is None


def test_same_origin_variants_are_accepted(admin: Admin) -> None:
    # a browser posting this app's own form: Referrer-Policy no-referrer makes Origin "null"
    null_origin = {"Origin": "null", "Sec-Fetch-Site": "same-origin"}
    assert add(admin, "a1", "100.64.0.1", **null_origin).status == 303
    assert add(admin, "a2", "100.64.0.2", Origin="", Referer=f"{admin.origin}/").status == 303
    assert add(admin, "a3", "100.64.0.3", Origin="").status == 303  # a script: the token decides
    assert add(admin, "a4", "100.64.0.4", Origin="").status == 303
    assert len(admin.hosts_file.read_text().splitlines()) == 2 + 4


def test_get_never_changes_anything(admin: Admin) -> None:
    token = token_of(admin)
    query = urlencode({"csrf": token, "name": "gpu2", "address": "100.64.0.30"})
    assert request(admin, "GET", f"/?{query}").status == 200
    assert request(admin, "GET", f"/add?{query}").status == 405
    assert request(admin, "GET", f"/remove?{query}").status == 405
    assert request(admin, "HEAD", f"/add?{query}").status == 405
    assert request(admin, "GET", f"/api/records?{query}&action=add").status == 200
    assert hosts_snapshot(admin) is None


def test_other_methods_are_refused(admin: Admin) -> None:
    assert request(admin, "PUT", "/api/records", "{}").status == 405
    assert request(admin, "DELETE", "/api/records").status == 405


def test_oversized_body_is_refused(admin: Admin) -> None:
    fields = {"csrf": token_of(admin), "name": "a" * 20000, "address": "1.2.3.4"}
    assert post_form(admin, "/add", fields).status == 413
    assert hosts_snapshot(admin) is None


# ----------------------------------------------------------------------------- API


def api_post(admin: Admin, payload: object, token: str | None) -> Response:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["X-CSRF-Token"] = token
    return request(admin, "POST", "/api/records", json.dumps(payload), headers)


def test_api_records(admin: Admin) -> None:
    listing = request(admin, "GET", "/api/records").json()
    assert listing["records"] == []
    assert {"name": f"*.{DOMAIN}", "address": "127.0.0.1"} in listing["builtin"]  # type: ignore[operator]
    token = listing["csrf_token"]
    assert isinstance(token, str)

    add_gpu2 = {"action": "add", "name": "gpu2", "address": "100.64.0.30"}
    assert api_post(admin, add_gpu2, None).status == 403
    assert api_post(admin, add_gpu2, "bad").status == 403
    assert hosts_snapshot(admin) is None

    resp = api_post(admin, add_gpu2, token)
    assert resp.status == 200, resp.text
    assert resp.json()["records"] == [{"name": f"gpu2.{DOMAIN}", "address": "100.64.0.30"}]

    bad = api_post(admin, {"action": "add", "name": "evil.example", "address": "1.2.3.4"}, token)
    assert bad.status == 400
    assert "not inside" in str(bad.json()["error"])

    form_encoded = request(
        admin,
        "POST",
        "/api/records",
        urlencode(add_gpu2),
        {"Content-Type": "application/x-www-form-urlencoded", "X-CSRF-Token": token},
    )
    assert form_encoded.status == 415

    remove = {"action": "remove", "name": f"gpu2.{DOMAIN}", "address": "100.64.0.30"}
    assert api_post(admin, remove, token).status == 200
    assert request(admin, "GET", "/api/records").json()["records"] == []


# ----------------------------------------------------------------------------- log and health


def test_query_log_is_parsed_and_escaped(admin: Admin) -> None:
    lines = [
        f"Nov 27 16:47:0{i} dnsmasq[7]: query[A] n{i}.{DOMAIN} from 100.64.0.2" for i in range(3)
    ]
    lines += [
        f"Nov 27 16:47:06 dnsmasq[7]: config gpu2.{DOMAIN} is 100.64.0.10",
        "Nov 27 16:47:07 dnsmasq[7]: /etc/dnsmasq-llm/hosts.d/liminati-admin.hosts "
        f"gpu3.{DOMAIN} is 100.64.0.31",
        "Nov 27 16:47:08 dnsmasq[7]: query[A] <script>alert(1)</script> from 100.64.0.2",
        "garbage line <script>alert(2)</script> & more",
    ]
    admin.query_log.write_text("\n".join(["old line"] * 100 + lines) + "\n")
    page = request(admin, "GET", "/").text
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "garbage line &lt;script&gt;alert(2)&lt;/script&gt; &amp; more" in page
    assert f'<td>query[A]</td><td class="m">n2.{DOMAIN}</td>' in page
    assert "<td>hosts liminati-admin.hosts</td>" in page
    assert page.count("old line") == app.LOG_LINES - len(lines)


def test_parse_log_line_formats() -> None:
    plain = app.parse_log_line(f"dnsmasq: query[AAAA] gpu2.{DOMAIN} from 10.0.0.1")
    assert (plain.event, plain.name, plain.detail) == (
        "query[AAAA]",
        f"gpu2.{DOMAIN}",
        "from 10.0.0.1",
    )
    extra = app.parse_log_line(
        f"Nov  7 01:02:03 dnsmasq[1]: 12 10.0.0.1/5353 reply {DOMAIN} is 1.2.3.4"
    )
    assert (extra.time, extra.event, extra.detail) == ("Nov  7 01:02:03", "reply", "is 1.2.3.4")
    assert not app.parse_log_line("dnsmasq[1]: started, version 2.90").parsed


def test_tail_lines_reads_only_the_end(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_bytes(b"".join(b"line %d\n" % i for i in range(200_000)))
    assert app.tail_lines(log, 3) == ["line 199997", "line 199998", "line 199999"]
    log.write_bytes(b"only\npartial")
    assert app.tail_lines(log, 50) == ["only", "partial"]


@contextlib.contextmanager
def fake_dns(answer: str) -> Iterator[int]:
    """A stand-in for dnsmasq: answers every A query with one A record for `answer`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                query, peer = sock.recvfrom(512)
            except TimeoutError:
                continue
            qid = query[:2]
            question = query[12:]
            header = qid + struct.pack("!HHHHH", 0x8580, 1, 1, 0, 0)
            rr = struct.pack("!HHHIH", 0xC00C, 1, 1, 0, 4) + ipaddress.IPv4Address(answer).packed
            sock.sendto(header + question + rr, peer)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield int(sock.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        sock.close()


def test_health_probe_against_fake_dns(tmp_path: Path) -> None:
    with (
        fake_dns("127.0.0.1") as port,
        running(tmp_path, server_ip="127.0.0.1", dns_port=port) as admin,
    ):
        admin.query_log.write_text("")
        page = request(admin, "GET", "/").text
        assert re.search(
            r'class="ok">NOERROR 127\.0\.0\.1</span> <span class="muted">in [\d.]+ ms', page
        ), page
        assert 'class="ok">writable' in page and 'class="ok">readable' in page
        health = request(admin, "GET", "/api/health").json()
        dns = health["dns"]
        assert isinstance(dns, dict)
        assert dns["ok"] is True and dns["answers"] == ["127.0.0.1"] and dns["rcode"] == "NOERROR"
        assert isinstance(dns["latency_ms"], float)


def test_health_probe_reports_a_wrong_answer_and_no_answer(tmp_path: Path) -> None:
    with fake_dns("100.64.0.99") as port:
        result = app.dns_probe("127.0.0.1", port, DOMAIN)
        assert result.ok and result.answers == ["100.64.0.99"]
        with running(tmp_path, server_ip="127.0.0.1", dns_port=port) as admin:
            assert "(expected 127.0.0.1)" in request(admin, "GET", "/").text
    dead = app.dns_probe("127.0.0.1", free_port(), DOMAIN, timeout=0.5)
    assert not dead.ok and dead.error


def test_health_shows_unwritable_dir_and_missing_log(admin: Admin) -> None:
    page = request(admin, "GET", "/").text
    assert 'class="bad">not readable' in page
    assert 'class="bad">no answer' in page


def test_build_query_and_parse_response() -> None:
    query = app.build_query(DOMAIN, 0x1234)
    assert query[:12] == struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    assert query[12:] == b"\x08liminati\x08internal\x00\x00\x01\x00\x01"
    with pytest.raises(ValueError):
        app.parse_response(b"\x12\x34\x81\x80" + b"\x00" * 8, 0x9999)
    with pytest.raises(ValueError):
        app.parse_response(query[:12].replace(b"\x01\x00", b"\x81\x80", 1) + b"\xff", 0x1234)


# ----------------------------------------------------------------------------- config, standalone


def test_password_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("s3cret\n")
    path.chmod(0o644)
    with pytest.raises(app.ConfigError, match="chmod 600"):
        app.read_password(path)
    path.chmod(0o600)
    assert app.read_password(path) == "s3cret"
    path.write_text("\n")
    with pytest.raises(app.ConfigError, match="empty"):
        app.read_password(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"domain": "Bad_Domain"}, "not a lowercase DNS name"),
        ({"server_ip": "nope"}, "not an IP address"),
        ({"port": "5380"}, "port must be an integer"),
        ({"extra": 1}, "unknown config keys: extra"),
    ],
)
def test_config_errors(change: dict[str, object], message: str) -> None:
    raw: dict[str, object] = {
        "domain": DOMAIN,
        "server_ip": "100.64.0.10",
        "hosts_dir": "/h",
        "query_log": "/l",
        "password_file": "/p",
    }
    with pytest.raises(app.ConfigError, match=message):
        app.parse_config(raw | change)


def test_app_imports_only_the_standard_library() -> None:
    tree = ast.parse(APP_FILE.read_text())
    modules = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    top = {name.split(".")[0] for name in modules}
    assert top - sys.stdlib_module_names == {"__future__"} - sys.stdlib_module_names
    assert "liminati" not in top


def test_runs_alone_as_a_script(tmp_path: Path) -> None:
    """`python3 app.py --config FILE`, from a copy of the file, in isolated mode."""
    copy = tmp_path / "app.py"
    copy.write_bytes(APP_FILE.read_bytes())
    (tmp_path / "hosts.d").mkdir()
    password = tmp_path / "pw"
    password.write_text(PASSWORD)
    password.chmod(0o600)
    port = free_port()
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "domain": DOMAIN,
                "server_ip": "127.0.0.1",
                "listen": "127.0.0.1",
                "port": port,
                "hosts_dir": str(tmp_path / "hosts.d"),
                "query_log": str(tmp_path / "q.log"),
                "password_file": str(password),
                "dns_port": free_port(),
            }
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-I", str(copy), "--config", str(config)],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        assert "listening on" in proc.stderr.readline()
        admin = Admin(None, port, tmp_path / "hosts.d", tmp_path / "q.log")  # type: ignore[arg-type]
        assert request(admin, "GET", "/healthz", auth=None).status == 200
        assert add(admin, "gpu2", "100.64.0.30").status == 303
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()
    assert proc.returncode == 0
    assert f"100.64.0.30 gpu2.{DOMAIN}" in (tmp_path / "hosts.d" / app.HOSTS_FILE).read_text()


# ----------------------------------------------------------------------------- real dnsmasq

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
DIG = shutil.which("dig")


def dig(port: int, *args: str) -> str:
    assert DIG is not None
    cmd = [DIG, "@127.0.0.1", "-p", str(port), "+time=1", "+tries=1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=10).stdout


def wait_for(predicate: object, timeout: float = 3.0) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


@pytest.mark.skipif(
    not (os.access(DNSMASQ, os.X_OK) and DIG), reason="needs dnsmasq and dig (dnsutils)"
)
def test_real_dnsmasq_picks_up_records(tmp_path: Path) -> None:
    port = free_port()
    # dnsmasq started as root drops to `nobody` (as it does in its container), so the watched
    # directory must be reachable by others: pytest's tmp_path is 0700
    shared = Path(tempfile.mkdtemp(prefix="liminati-dnsadmin-"))
    shared.chmod(0o755)
    hosts_dir = shared / "hosts.d"
    hosts_dir.mkdir(mode=0o755)
    hosts_dir.chmod(0o755)
    log = tmp_path / "dnsmasq.log"
    proc = subprocess.Popen(
        [
            DNSMASQ,
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            f"--port={port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            f"--local=/{DOMAIN}/",
            f"--address=/{DOMAIN}/100.64.0.10",
            f"--hostsdir={hosts_dir}",
            "--log-queries",
            f"--log-facility={log}",
            f"--pid-file={tmp_path / 'dnsmasq.pid'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for(lambda: dig(port, DOMAIN, "+short").strip() == "100.64.0.10", 5), (
            proc.poll(),
            proc.stderr.read() if proc.poll() is not None and proc.stderr else "",
        )
        # the app's own probe gets the same answer from the real dnsmasq
        probe = app.dns_probe("127.0.0.1", port, DOMAIN)
        assert probe.ok and probe.answers == ["100.64.0.10"], probe

        with running(
            tmp_path, dns_port=port, query_log=str(log), hosts_dir=str(hosts_dir)
        ) as admin:
            token = request(admin, "GET", "/api/records").json()["csrf_token"]
            assert isinstance(token, str)
            fields = {"csrf": token, "name": "gpu2", "address": "100.64.0.30"}
            assert post_form(admin, "/add", fields).status == 303
            assert wait_for(lambda: dig(port, f"gpu2.{DOMAIN}", "+short").strip() == "100.64.0.30")

            # removing it: dnsmasq flushes what it read from the file, the wildcard answers again
            remove = {"csrf": token, "name": f"gpu2.{DOMAIN}", "address": "100.64.0.30"}
            assert post_form(admin, "/remove", remove).status == 303
            assert wait_for(lambda: dig(port, f"gpu2.{DOMAIN}", "+short").strip() == "100.64.0.10")

            # not an open resolver
            assert "status: REFUSED" in dig(port, "example.com")

            # the page shows dnsmasq's real query log
            page = request(admin, "GET", "/").text
            assert f'<td>query[A]</td><td class="m">gpu2.{DOMAIN}</td>' in page

        # dnsmasq never read the temp files (dotfiles) in the watched directory
        assert ".liminati-admin.hosts" not in log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()
        shutil.rmtree(shared)
