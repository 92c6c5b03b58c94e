"""The gateway as a tailnet peer sees it: DNS from the rendered dnsmasq.conf, streaming,
long generations, upload limits and websockets through the rendered nginx, and the DNS admin
page, all between the "client" and "server" namespaces.

The upstreams here are stub_upstreams.py (declared test fixtures, see there): they let a test
see what nginx does to each event. The real vLLM, llama.cpp and Open WebUI are in
test_backends.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from livetools import DOMAIN, KEY_OWNERS, LiveNginx, record_timing
from netns import CLIENT_IP, SERVER_IP, Namespaces

from clitools import Clock, make_env
from liminati.render.dnsmasq import ADMIN_PASSWORD, HOSTS_DIR, QUERY_LOG

HERE = Path(__file__).resolve().parent
WEBUI, VLLM = f"webui.{DOMAIN}", f"vllm.{DOMAIN}"
#: the test's config: short enough timeouts and limits to be exercised in seconds
CONFIG = """\
[nginx]
# the silence nginx tolerates between two reads from the upstream: a stream whose events come
# faster than this may last far longer (production default 1800 s)
read_timeout_seconds = 2

[webui]
client_max_body_size = "1m"
"""


class Gateway:
    """A staged install with `config` (CONFIG by default); nginx, dnsmasq, the DNS admin page
    and, with `stubs`, the stub upstreams running from it in the server namespace.

    `stubs=False` leaves 127.0.0.1:8000 and :3000 of the server namespace to the caller's
    real servers (test_browser.py). `clock` stages the install at its time (the fixed test
    clock by default; a browser needs the real time to accept the leaf).
    """

    def __init__(
        self,
        ns: Namespaces,
        work: Path,
        *,
        config: str = CONFIG,
        stubs: bool = True,
        clock: Clock | None = None,
    ) -> None:
        self.ns = ns
        self.work = work
        self.stubs = stubs
        self.procs: list[subprocess.Popen[Any]] = []
        config_file = work / "liminati.toml"
        config_file.write_text(config)
        clock = clock or Clock()
        self.nginx = LiveNginx(
            ns=ns, root=work / "stage", env=make_env(clock), clock=clock, log=work / "nginx.log"
        )
        self.args = (
            "--root",
            str(self.nginx.root),
            "--listen-ip",
            SERVER_IP,
            "--config",
            str(config_file),
        )
        code, out = self.nginx.cli("install", *self.args)
        assert code == 0, out
        for person in KEY_OWNERS:
            assert self.nginx.cli("keys", "add", person, *self.args)[0] == 0

    @property
    def root(self) -> Path:
        return self.nginx.root

    def secret(self, name: str) -> str:
        return (self.root / "var/lib/liminati/secrets" / name).read_text().strip()

    def spawn(self, argv: list[str], name: str, env: dict[str, str] | None = None) -> None:
        with (self.work / f"{name}.log").open("ab") as log:
            proc = self.ns.popen_in(
                "server",
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self.procs.append(proc)

    def start(self) -> None:
        if self.stubs:
            env = {**os.environ, "STUB_KEY": self.secret("vllm-api-key")}
            stub = str(HERE / "stub_upstreams.py")
            self.spawn([sys.executable, stub, "api", "8000"], "api", env)
            self.spawn([sys.executable, stub, "web", "3000"], "web")
        self._start_dnsmasq()
        self.nginx.start()

    def _start_dnsmasq(self) -> None:
        """The rendered dnsmasq.conf and admin config, with the container's mount points
        mapped to this test's folders as podman's volumes map them."""
        home = self.root / "var/lib/dnsmasq-llm"
        self.hosts = home / "hosts.d"
        self.query_log = home / "log/queries.log"
        conf = (home / "dnsmasq.conf").read_text()
        conf = conf.replace(HOSTS_DIR, str(self.hosts)).replace(QUERY_LOG, str(self.query_log))
        (self.work / "dnsmasq.conf").write_text(conf)
        # in the container dnsmasq is root of a user namespace; here it is root: keep it so
        self.spawn(
            [
                "dnsmasq",
                "--keep-in-foreground",
                f"--conf-file={self.work}/dnsmasq.conf",
                "--user=root",
            ],
            "dnsmasq",
        )
        admin = json.loads((home / "dnsadmin/config.json").read_text())
        admin.update(
            hosts_dir=str(self.hosts),
            query_log=str(self.query_log),
            password_file=str(home / ".config/liminati/dnsadmin-password"),
        )
        (self.work / "dnsadmin.json").write_text(json.dumps(admin))
        assert admin["password_file"] and ADMIN_PASSWORD
        self.spawn(
            [
                sys.executable,
                str(home / "dnsadmin/app.py"),
                "--config",
                str(self.work / "dnsadmin.json"),
            ],
            "dnsadmin",
        )
        self.wait(lambda: self.dig("liminati.internal") == [SERVER_IP])

    def wait(self, ready: Any, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert time.monotonic() < deadline, self.logs()
            time.sleep(0.1)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.work.glob("*.log"))
        )

    def client(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.ns.run_in("client", argv, check=False, **kw)

    def dig(self, name: str, *extra: str) -> list[str]:
        out = self.client(["dig", f"@{SERVER_IP}", name, "+short", "+time=1", "+tries=1", *extra])
        return out.stdout.split()

    def curl(self, url: str, *args: str) -> subprocess.CompletedProcess[str]:
        """curl from a peer that resolves our names through our DNS and trusts our CA."""
        host = url.split("/")[2].split(":")[0]
        port = self.ns.https_port if url.startswith("https") else self.ns.http_port
        return self.client(
            [
                "curl",
                "-sS",
                "--max-time",
                "30",
                "--cacert",
                str(self.root / "var/lib/liminati/pki/ca.crt"),
                "--resolve",
                f"{host}:{port}:{self.dig(host)[0]}",
                *args,
                url,
            ]
        )

    def stop(self) -> None:
        self.nginx.stop()
        for proc in self.procs:
            self.ns.stop(proc)


@contextlib.contextmanager
def gateway_up(
    namespaces: Namespaces, label: str, prefix: str = "liminati-gw-", **kw: Any
) -> Iterator[Gateway]:
    """A Gateway(namespaces, work, **kw) in a fresh work folder, started, its start-up time
    recorded as `label`; stopped and its folder removed on exit (the live modules' fixture)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    work.chmod(0o755)
    t0 = time.monotonic()
    gateway = Gateway(namespaces, work, **kw)
    try:
        gateway.start()
        record_timing(label, time.monotonic() - t0)
        yield gateway
    finally:
        gateway.stop()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def gw(namespaces: Namespaces) -> Iterator[Gateway]:
    with gateway_up(namespaces, "gateway up (nginx, dnsmasq, admin)") as gateway:
        yield gateway


def api_url(gw: Gateway, path: str) -> str:
    port = gw.ns.https_port
    return f"https://{VLLM}{'' if port == 443 else f':{port}'}{path}"


def web_url(gw: Gateway, path: str) -> str:
    port = gw.ns.https_port
    return f"https://{WEBUI}{'' if port == 443 else f':{port}'}{path}"


# -- DNS ----------------------------------------------------------------------------------------
def test_dns_answers_our_names_with_the_server_address(gw: Gateway) -> None:
    for name in (WEBUI, VLLM, DOMAIN, f"anything.{DOMAIN}"):
        assert gw.dig(name) == [SERVER_IP], name


def test_dns_refuses_every_other_name(gw: Gateway) -> None:
    for name in ("example.com", "localhost", "internal"):
        out = gw.client(["dig", f"@{SERVER_IP}", name, "+time=1", "+tries=1"])
        assert "status: REFUSED" in out.stdout, out.stdout


def test_upstream_ports_are_not_reachable_from_a_peer(gw: Gateway) -> None:
    for port in (8000, 3000):
        out = gw.client(["curl", "-sS", "--max-time", "3", f"http://{SERVER_IP}:{port}/"])
        assert out.returncode != 0, (port, out.stdout)


# -- the API ------------------------------------------------------------------------------------
def test_api_streams_each_event_within_50ms(gw: Gateway) -> None:
    """proxy_buffering off: every server-sent event reaches the peer as it is sent."""
    key = gw.nginx.api_key("alice")
    body = json.dumps(
        {
            "model": "qwen",
            "stream": True,
            "stub_events": 20,
            "stub_interval": 0.1,
            "messages": [{"role": "user", "content": "hi"}],
        }
    )
    script = HERE / "sse_timing.py"
    out = gw.client(
        [
            sys.executable,
            str(script),
            api_url(gw, "/v1/chat/completions"),
            str(gw.root / "var/lib/liminati/pki/ca.crt"),
            SERVER_IP,
            str(gw.ns.https_port),
        ],
        input=body,
        env={**os.environ, "SSE_KEY": key},
    )
    assert out.returncode == 0, out.stderr
    delays = json.loads(out.stdout)
    assert len(delays) == 20
    print(f"per-event delay through nginx: max {max(delays) * 1000:.1f} ms")
    assert max(delays) < 0.050, delays


def test_api_long_generation_is_not_cut_by_the_read_timeout(gw: Gateway) -> None:
    """A stream lasting 3x the read timeout completes: the timeout bounds silence only."""
    key = gw.nginx.api_key("alice")
    body = json.dumps(
        {"model": "qwen", "stream": True, "stub_events": 12, "stub_interval": 0.5, "messages": []}
    )
    t0 = time.monotonic()
    out = gw.curl(
        api_url(gw, "/v1/chat/completions"),
        "-N",
        "-H",
        f"Authorization: Bearer {key}",
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
    )
    took = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("data: {") == 12 and "data: [DONE]" in out.stdout
    assert took > 2 * 2, took  # longer than twice read_timeout_seconds


def test_api_silence_longer_than_the_read_timeout_ends_the_request(gw: Gateway) -> None:
    key = gw.nginx.api_key("alice")
    body = json.dumps(
        {"model": "qwen", "stream": True, "stub_events": 2, "stub_interval": 4, "messages": []}
    )
    out = gw.curl(
        api_url(gw, "/v1/chat/completions"),
        "-N",
        "-H",
        f"Authorization: Bearer {key}",
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
    )
    assert "data: [DONE]" not in out.stdout


def test_api_key_swapped_for_the_internal_one_and_owner_logged(gw: Gateway) -> None:
    """The stub answers 401 unless nginx sent vLLM's internal key; the access log names the
    key's owner and the peer's real address, never the key."""
    key = gw.nginx.api_key("bob")
    out = gw.curl(
        api_url(gw, "/v1/models"), "-H", f"Authorization: Bearer {key}", "-w", "\n%{http_code}"
    )
    assert out.stdout.splitlines()[-1] == "200", out.stdout
    entries = [
        json.loads(line) for line in gw.nginx.log.read_text().splitlines() if line.startswith("{")
    ]
    mine = [e for e in entries if e["uri"] == "/v1/models" and e["key_owner"] == "bob"]
    assert mine and mine[-1]["client"] == CLIENT_IP and mine[-1]["status"] == 200
    assert key not in gw.nginx.log.read_text()
    assert float(mine[-1]["request_time"]) >= 0 and mine[-1]["upstream_time"] != ""


# -- Open WebUI's vhost -------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "status"), [(512 * 1024, "200"), (2 * 1024 * 1024, "413")])
def test_webui_upload_limit(gw: Gateway, size: int, status: str) -> None:
    blob = gw.work / f"upload-{size}"
    blob.write_bytes(os.urandom(size))
    out = gw.curl(
        web_url(gw, "/api/v1/files/"),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--data-binary",
        f"@{blob}",
    )
    assert out.stdout == status, out


def test_webui_websocket_upgrade_passes(gw: Gateway) -> None:
    """Open WebUI's /ws/: nginx passes Upgrade/Connection, the handshake completes (the
    accept value is RFC 6455's example), and a frame comes through."""
    raw = gw.work / "ws.out"
    gw.curl(
        web_url(gw, "/ws/socket.io/?EIO=4&transport=websocket"),
        "-i",
        "-N",
        "--http1.1",
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: websocket",
        "-H",
        "Sec-WebSocket-Version: 13",
        "-o",
        str(raw),
        "-H",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "--max-time",
        "3",
    )
    data = raw.read_bytes()
    assert data.startswith(b"HTTP/1.1 101"), data[:200]
    assert b"sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=" in data.lower()
    assert b"\x81\x13hello through nginx" in data


def test_webui_signin_is_rate_limited_more_strictly(gw: Gateway) -> None:
    statuses = []
    for _ in range(12):
        out = gw.curl(
            web_url(gw, "/api/v1/auths/signin"), "-o", "/dev/null", "-w", "%{http_code}", "-d", "{}"
        )
        statuses.append(out.stdout)
    assert "429" in statuses, statuses
    assert statuses[:5] == ["200"] * 5, statuses


# -- the DNS admin page ---------------------------------------------------------------------------
def test_dns_admin_adds_a_record_that_dig_then_answers(gw: Gateway) -> None:
    password = (gw.root / "var/lib/dnsmasq-llm/.config/liminati/dnsadmin-password").read_text()
    auth = f"admin:{password.strip()}"
    base = f"http://{SERVER_IP}:5380"
    unauth = gw.client(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{base}/"])
    assert unauth.stdout == "401"
    got = gw.client(["curl", "-sS", "-u", auth, f"{base}/api/records"])
    token = json.loads(got.stdout)["csrf_token"]
    body = json.dumps({"action": "add", "name": "gpu2", "address": "100.64.0.30"})
    added = gw.client(
        [
            "curl",
            "-sS",
            "-u",
            auth,
            "-H",
            f"X-CSRF-Token: {token}",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
            "-w",
            "\n%{http_code}",
            f"{base}/api/records",
        ]
    )
    assert added.stdout.splitlines()[-1] == "200", added.stdout
    gw.wait(lambda: gw.dig(f"gpu2.{DOMAIN}") == ["100.64.0.30"], timeout=5)
    page = gw.client(["curl", "-sS", "-u", auth, f"{base}/"]).stdout
    assert f"gpu2.{DOMAIN}" in page and "100.64.0.30" in page
    # recent queries: dig's question for gpu2 made it into the log the page shows
    row = (
        rf"<td>query\[A\]</td><td class=\"m\">gpu2\.{re.escape(DOMAIN)}</td>"
        rf"<td class=\"m\">from {re.escape(CLIENT_IP)}</td>"
    )
    assert re.search(row, page), page
