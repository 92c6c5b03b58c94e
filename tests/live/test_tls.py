"""The staged nginx config, served by the real nginx, probed from a second network namespace:
curl (verifying against the staged CA, never -k), sslyze's Mozilla "intermediate" check,
testssl, and a leaf renewal + `nginx -s reload` under a stream of HTTPS requests.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from livetools import DOMAIN, HERE, STAGED_AGO, LiveNginx, record_timing
from netns import SERVER_IP

from liminati import pki

WEBUI = f"webui.{DOMAIN}"
VLLM = f"vllm.{DOMAIN}"
HSTS = "max-age=63072000; includeSubDomains"
# curl's exit codes
CURL_COULDNT_CONNECT = 7
CURL_SSL_CONNECT_ERROR = 35
CURL_EMPTY_REPLY = 52


@dataclass
class Response:
    returncode: int
    status: int | None
    headers: dict[str, str]
    body: bytes
    stderr: str


def curl(live: LiveNginx, url: str, *opts: str) -> Response:
    """curl from the client namespace; `-i` output split into status, headers and body."""
    proc = live.ns.run_in(
        "client",
        ["curl", "-sS", "-i", "--max-time", "5", "--cacert", str(live.ca), *opts, url],
        check=False,
        text=False,
    )
    status, headers, body = None, {}, b""
    if proc.returncode == 0:
        head, _, body = proc.stdout.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return Response(proc.returncode, status, headers, body, proc.stderr.decode(errors="replace"))


def https(live: LiveNginx, name: str, path: str, *opts: str) -> Response:
    """GET https://<name><path> at the server's tailnet address (as the name would resolve)."""
    port = live.ns.https_port
    authority = name if port == 443 else f"{name}:{port}"
    return curl(
        live, f"https://{authority}{path}", "--resolve", f"{name}:{port}:{SERVER_IP}", *opts
    )


def http(live: LiveNginx, port: int, path: str, *opts: str) -> Response:
    return curl(live, f"http://{SERVER_IP}:{port}{path}", *opts)


# -- the API vhost ----------------------------------------------------------------------------
def test_api_without_a_valid_key_is_401(live: LiveNginx) -> None:
    assert https(live, VLLM, "/v1/models").status == 401
    wrong = https(live, VLLM, "/v1/models", "-H", "Authorization: Bearer not-a-key")
    assert wrong.status == 401
    post = https(live, VLLM, "/v1/chat/completions", "-d", "{}")
    assert post.status == 401


def test_api_with_a_valid_key_reaches_for_the_upstream(live: LiveNginx) -> None:
    """Past the key check nginx proxies: there is no vLLM in the namespace, hence 502."""
    auth = f"Authorization: Bearer {live.api_key('alice')}"
    assert https(live, VLLM, "/v1/models", "-H", auth).status == 502


@pytest.mark.parametrize("path", ["/metrics", "/invocations", "/pause", "/health", "/"])
def test_api_paths_outside_the_openai_api_are_404(live: LiveNginx, path: str) -> None:
    assert https(live, VLLM, path).status == 404
    auth = f"Authorization: Bearer {live.api_key('alice')}"
    assert https(live, VLLM, path, "-H", auth).status == 404


@pytest.mark.parametrize("key", ["alice", None, "wrong"], ids=["valid-key", "no-key", "bad-key"])
def test_api_rate_limit_answers_429_past_the_burst(live: LiveNginx, key: str | None) -> None:
    """20 r/s and a burst of 40 per client address: 80 requests at once overflow it, with a
    valid key or without one (the key check runs after the limit: guessing is limited too)."""
    port = live.ns.https_port
    url = f"https://{VLLM}/v1/models" if port == 443 else f"https://{VLLM}:{port}/v1/models"
    bearer = {"alice": live.api_key("alice"), "wrong": "lmk_not-a-key", None: ""}[key]
    header = ["-H", f"Authorization: Bearer {bearer}"] if bearer else []
    time.sleep(2.5)  # the bucket drains (20 r/s) from what earlier tests sent
    proc = live.ns.run_in(
        "client",
        ["curl", "-sS", "--max-time", "20", "--cacert", str(live.ca),
         "--resolve", f"{VLLM}:{port}:{SERVER_IP}", *header,
         "-w", "%{http_code}\\n", *["-o", "/dev/null", url] * 80],
    )  # fmt: skip
    statuses = [int(s) for s in proc.stdout.split()]
    first = 502 if key == "alice" else 401  # 502: a valid key, and no vLLM behind nginx here
    assert len(statuses) == 80
    assert set(statuses) == {first, 429}, statuses
    assert statuses[:40] == [first] * 40, statuses
    time.sleep(2.5)  # let the bucket drain for the tests after this one


def test_revoked_key_is_401_after_reload(live: LiveNginx) -> None:
    auth = f"Authorization: Bearer {live.api_key('bob')}"
    assert https(live, VLLM, "/v1/models", "-H", auth).status == 502
    args = ("--root", str(live.root), "--listen-ip", SERVER_IP)
    code, out = live.cli("keys", "revoke", "bob", *args)
    assert code == 0, out
    live.reload()  # what the production reload does after `keys revoke`
    deadline = time.monotonic() + 5
    while (status := https(live, VLLM, "/v1/models", "-H", auth).status) != 401:
        assert time.monotonic() < deadline, status
        time.sleep(0.1)


def test_hsts_and_no_version_on_both_vhosts(live: LiveNginx) -> None:
    for name, path, status in ((VLLM, "/v1/models", 401), (WEBUI, "/", 502)):
        response = https(live, name, path)
        assert response.status == status, (name, response)
        assert response.headers.get("strict-transport-security") == HSTS, (name, response)
        assert response.headers.get("server") == "nginx", (name, response)


# -- plain HTTP and the handshake ------------------------------------------------------------
@pytest.mark.parametrize("name", [DOMAIN, WEBUI, VLLM])
def test_http_redirects_our_names_to_https(live: LiveNginx, name: str) -> None:
    response = http(live, live.ns.http_port, "/some/path?q=1", "-H", f"Host: {name}")
    assert response.status == 301, response
    assert response.headers["location"] == f"https://{name}/some/path?q=1"


def test_http_for_other_names_gets_no_answer(live: LiveNginx) -> None:
    response = http(live, live.ns.http_port, "/", "-H", "Host: example.com")
    assert response.returncode == CURL_EMPTY_REPLY, response  # nginx's 444


def test_unknown_sni_fails_the_handshake(live: LiveNginx) -> None:
    other = https(live, f"other.{DOMAIN}", "/")
    assert other.returncode == CURL_SSL_CONNECT_ERROR, other
    assert "unrecognized name" in other.stderr
    # no SNI at all (a bare IP address)
    port = live.ns.https_port
    bare = curl(live, f"https://{SERVER_IP}:{port}/")
    assert bare.returncode == CURL_SSL_CONNECT_ERROR, bare


def test_only_the_published_ports_answer(live: LiveNginx) -> None:
    """podman publishes 443->8443 and 80->8080: the inner ports are not reachable as such."""
    if not live.ns.nat:
        pytest.skip(f"no NAT in the server namespace: {live.ns.nat_error}")
    for port in (8443, 8080):
        response = http(live, port, "/")
        assert response.returncode == CURL_COULDNT_CONNECT, (port, response)


# -- the read-only download server on 8081 ---------------------------------------------------
def test_dist_serves_the_ca_and_the_installer(live: LiveNginx) -> None:
    ca = http(live, live.ns.dist_port, "/liminati-ca.crt")
    assert ca.status == 200, ca
    assert ca.body == live.ca.read_bytes()
    script = http(live, live.ns.dist_port, "/install-client.sh")
    assert script.status == 200, script
    assert script.body == (live.home / "dist/install-client.sh").read_bytes()


@pytest.mark.parametrize(
    "path",
    [
        "/nginx.conf",
        "/ssl/liminati.key",
        "/../ssl/liminati.key",
        "/%2e%2e/ssl/liminati.key",
        "/../nginx.conf",
        "/snippets/api-keys.map",
        "/conf.d/30-vllm.conf",
        "/.config/liminati/",
        "/",
    ],
)
def test_dist_serves_nothing_else(live: LiveNginx, path: str) -> None:
    response = http(live, live.ns.dist_port, path, "--path-as-is")
    assert response.status in (400, 403, 404), response
    assert b"BEGIN" not in response.body


@pytest.mark.parametrize("path", ["/liminati-ca.crt", "/install-client.sh"])
def test_dist_is_read_only(live: LiveNginx, path: str) -> None:
    for method in ("POST", "PUT", "DELETE"):
        response = http(live, live.ns.dist_port, path, "-X", method, "-d", "x")
        assert response.status in (403, 405), (method, response)


# -- scanners --------------------------------------------------------------------------------
def test_sslyze_mozilla_intermediate(live: LiveNginx) -> None:
    port = live.ns.https_port
    t0 = time.monotonic()
    proc = live.ns.run_in(
        "client",
        [
            sys.executable, "-m", "sslyze",
            "--mozilla_config=intermediate",
            f"--certinfo_ca_file={live.ca}",
            f"{VLLM}:{port}{{{SERVER_IP}}}",
            f"{WEBUI}:{port}{{{SERVER_IP}}}",
        ],
        check=False,
        timeout=120,
    )  # fmt: skip
    record_timing("sslyze", time.monotonic() - t0)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    for name in (VLLM, WEBUI):
        assert f"{name}:{port}: OK - Compliant." in output, output
        assert "Supplied CA file CA Store (N/A):   OK - Certificate is trusted" in output, output


def test_testssl_protocols_and_chain(live: LiveNginx) -> None:
    assert shutil.which("testssl"), "testssl not found (Debian package testssl.sh)"
    report = live.root.parent / "testssl.json"
    report.unlink(missing_ok=True)
    t0 = time.monotonic()
    proc = live.ns.run_in(
        "client",
        [
            "testssl", "--quiet", "--warnings", "off", "--color", "0", "--nodns", "none",
            "--add-ca", str(live.ca), "--ip", SERVER_IP, "--jsonfile", str(report),
            "--protocols", "--server-defaults",
            f"{VLLM}:{live.ns.https_port}",
        ],
        check=False,
        timeout=120,
    )  # fmt: skip
    record_timing("testssl", time.monotonic() - t0)
    assert report.exists(), proc.stdout + proc.stderr
    findings = {f["id"]: f for f in json.loads(report.read_text())}
    summary = "\n".join(
        f"{f['id']:<28} {f['severity']:<8} {f['finding']}"
        for f in findings.values()
        if f["severity"] not in ("INFO", "OK")
    )
    print(f"testssl findings above INFO:\n{summary}")
    for legacy in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert findings[legacy]["finding"] == "not offered", (legacy, findings[legacy])
    assert findings["TLS1_2"]["finding"] == "offered"
    assert findings["TLS1_3"]["finding"].startswith("offered")
    assert findings["cert_chain_of_trust"]["severity"] == "OK", findings["cert_chain_of_trust"]
    assert findings["cert_trust"]["severity"] == "OK", findings["cert_trust"]
    assert not [f for f in findings.values() if f["severity"] == "CRITICAL"], summary


# -- renewal under load (last: it replaces the leaf the tests above saw) ----------------------
def _serial(path: Path) -> int:
    return pki.load_cert(path.read_bytes(), "leaf").serial_number


def _records(path: Path) -> list[dict[str, object]]:
    lines = path.read_text().splitlines()
    # the loop may be writing its last line
    return [json.loads(line) for line in lines if line.endswith("}")]


def _runs(items: list[str]) -> str:
    """["a", "a", "b"] -> "a x2, b x1"."""
    out: list[list[object]] = []
    for item in items:
        if out and out[-1][0] == item:
            out[-1][1] += 1  # type: ignore[operator]
        else:
            out.append([item, 1])
    return ", ".join(f"{item} x{count}" for item, count in out)


def _wait_for(predicate: object, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_renewal_and_reload_under_load(live: LiveNginx) -> None:
    old = _serial(live.leaf)
    work = live.root.parent
    stop, out = work / "loop.stop", work / "loop.jsonl"
    stop.unlink(missing_ok=True)
    t0 = time.monotonic()
    with out.open("wb") as sink:
        loop = live.ns.popen_in(
            "client",
            [
                sys.executable, str(HERE / "https_loop.py"),
                str(live.ca), VLLM, SERVER_IP, str(live.ns.https_port), "/v1/models", str(stop),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait_for(lambda: len(_records(out)) >= 20, "20 requests before the renewal")

        live.clock.now += STAGED_AGO  # the staging's "now" (at most seconds ago)
        code, output = live.cli("cert", "renew", "--root", str(live.root), "--listen-ip", SERVER_IP)
        assert code == 0, output
        assert "Certificate renewed: leaf expires in 20 days (renewing at 30)" in output, output
        new = _serial(live.leaf)
        assert new != old

        before_reload = len(_records(out))
        live.reload()
        _wait_for(
            lambda: any(int(str(r["serial"]), 16) == new for r in _records(out) if r["serial"]),
            "the new certificate after the reload",
        )
        time.sleep(2)
    finally:
        stop.touch()
        try:
            loop.wait(timeout=10)
        finally:
            live.ns.stop(loop)
    record_timing("renewal under load", time.monotonic() - t0)

    records = _records(out)
    serials = [int(str(r["serial"]), 16) if r["serial"] else None for r in records]
    runs = _runs(["old" if s == old else "new" if s == new else str(s) for s in serials])
    print(f"serials served, in order: {runs}; reload sent after request {before_reload}")
    # 401: no key; 429: the loop outpaces the per-client rate limit. Either is a complete
    # HTTPS exchange; a failure is a TLS or connection error
    failed = [r for r in records if r["error"] or r["status"] not in (401, 429)]
    assert not failed, f"{len(failed)} of {len(records)} requests failed: {failed[:20]}"
    assert set(serials) == {old, new}, runs
    assert all(s == old for s in serials[:before_reload]), runs
    first_new = serials.index(new)
    last_old = len(serials) - 1 - serials[::-1].index(old)
    # During a reload old and new workers share the listening socket for a moment (the old ones
    # stop accepting once they get their QUIT): a few old answers after the first new one are
    # expected; what must hold is that the old certificate is gone soon after, for good.
    overlap = float(records[last_old]["t"]) - float(records[first_new]["t"])  # type: ignore[arg-type]
    assert overlap < 0.5, runs
    assert float(records[-1]["t"]) - float(records[last_old]["t"]) >= 1.5, runs  # type: ignore[arg-type]
    print(f"{len(records)} requests, none failed; old and new served together for {overlap:.3f}s")
