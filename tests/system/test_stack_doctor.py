"""Tier 4: `liminati doctor` on the running stack (tests/system/stack.py).

Healthy, it passes; with `proxy_buffering on` put into nginx's config by hand, the streaming
check fails (and only it); with the clock moved to just before the served leaf's renewal
date, the TLS check warns and doctor still exits 0. Every change is undone before the test
ends: later test_stack_* modules use the same stack.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from cryptography import x509
from stack import HOST_ARGS, Stack, diagnose, output

pytestmark = pytest.mark.system

SNIPPET = "/var/lib/nginx-proxy/snippets/proxy-stream.conf"
LEAF = "/var/lib/nginx-proxy/ssl/liminati.crt"
#: the checks that cannot apply to this system: no GPU model (gpus = "none"), no tailscale
SKIPPED = {"gpu", "tailscale"}
EVERY_CHECK = {
    "services", "users", "dns", "tls", "api", "streaming", "websocket", "gpu", "disk",
    "tailscale", "images",
}  # fmt: skip


def doctor(
    stack: Stack, *extra: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return stack.system.run(["liminati", "doctor", *extra, *HOST_ARGS], check=False,
                            timeout=300, env=env)  # fmt: skip


def doctor_json(
    stack: Stack, env: Mapping[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, Any]]]:
    proc = doctor(stack, "--json", env=env)
    try:
        checks = {c["name"]: c for c in json.loads(proc.stdout)}
    except ValueError:
        pytest.fail("doctor --json printed no JSON\n" + output(proc))
    assert set(checks) == EVERY_CHECK, output(proc)
    print(json.dumps(list(checks.values()), indent=1))
    return proc, checks


def not_fine(checks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Checks that are neither ok nor an expected skip."""
    return {
        name: c
        for name, c in checks.items()
        if not (c["status"] == "ok" or (c["status"] == "skip" and name in SKIPPED))
    }


def reload_nginx(stack: Stack) -> None:
    stack.system.run(["systemctl", "--user", "-M", "nginx-user@", "reload", "nginx-proxy.service"])
    # `nginx -s reload` only signals: the new workers take over within moments
    time.sleep(2)


def test_doctor_passes_on_the_healthy_stack(ready: Stack) -> None:
    t = time.monotonic()
    table = doctor(ready)
    seconds = time.monotonic() - t
    print(table.stdout + table.stderr + f"\n(doctor took {seconds:.1f}s)")
    assert table.returncode == 0, output(table) + diagnose(
        ready.system, "nginx-user", "nginx-proxy"
    )
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["STATUS", "CHECK", "DETAIL"], table.stdout
    assert {line.split()[1] for line in lines[1:] if line.strip()} >= EVERY_CHECK, table.stdout
    assert "[11/11] images as pinned..." in table.stderr, table.stderr

    proc, checks = doctor_json(ready)
    assert proc.returncode == 0, output(proc)
    assert not not_fine(checks), output(proc)
    assert "one by one, not buffered" in checks["streaming"]["detail"], checks["streaming"]
    assert "101 Switching Protocols" in checks["websocket"]["detail"], checks["websocket"]
    # doctor's own key is made once, then reused; it is never printed
    listing = ready.system.run(["liminati", "keys", "list", "--json", *HOST_ARGS]).stdout
    doctor_keys = [k for k in json.loads(listing) if k["name"] == "liminati-doctor"]
    assert len(doctor_keys) == 1, listing
    assert "lmk_" not in table.stdout + table.stderr + proc.stdout + proc.stderr


@pytest.fixture
def buffering_on(ready: Stack) -> Iterator[Stack]:
    """`proxy_buffering on;` in nginx's streaming snippet, by hand, and nginx reloaded; the
    file as it was and nginx reloaded again afterwards."""
    system = ready.system
    backup = "/root/proxy-stream.conf.doctor-test"
    system.run(["cp", "-a", SNIPPET, backup])
    try:
        system.run(["sed", "-i", "s/^proxy_buffering off;/proxy_buffering on;/", SNIPPET])
        assert "proxy_buffering on;" in system.run(["cat", SNIPPET]).stdout
        reload_nginx(ready)
        yield ready
    finally:
        system.run(["cp", "-a", backup, SNIPPET])
        system.run(["rm", "-f", backup])
        reload_nginx(ready)


def test_doctor_fails_streaming_when_nginx_buffers(buffering_on: Stack) -> None:
    proc, checks = doctor_json(buffering_on)
    assert proc.returncode == 4, output(proc)
    assert not_fine(checks).keys() == {"streaming"}, output(proc)
    streaming = checks["streaming"]
    assert streaming["status"] == "fail", streaming
    assert "buffered" in streaming["detail"], streaming
    assert "proxy_buffering off" in streaming["hint"], streaming
    table = doctor(buffering_on)
    print(table.stdout)
    assert table.returncode == 4, output(table)
    assert "streaming: nginx buffers the event stream" in table.stdout, table.stdout


def test_doctor_streams_again_once_the_file_is_restored(ready: Stack) -> None:
    """The fixture above put the file back: the stack is as the other modules expect it."""
    proc, checks = doctor_json(ready)
    assert proc.returncode == 0, output(proc)
    assert checks["streaming"]["status"] == "ok", checks["streaming"]


def test_doctor_warns_when_the_served_leaf_nears_expiry(ready: Stack) -> None:
    leaf = x509.load_pem_x509_certificate(ready.system.run(["cat", LEAF]).stdout.encode())
    # ten days before the end: inside the 30-day renewal window, not yet expired
    later = leaf.not_valid_after_utc - dt.timedelta(days=10)
    env = {"LIMINATI_NOW": later.isoformat()}
    proc, checks = doctor_json(ready, env=env)
    assert proc.returncode == 0, output(proc)
    tls = checks["tls"]
    assert tls["status"] == "warn", tls
    assert "10 days left" in tls["detail"], tls
    assert "liminati cert renew" in tls["hint"], tls
    assert not_fine(checks).keys() == {"tls"}, output(proc)
    table = doctor(ready, env=env)
    print(table.stdout + table.stderr)
    assert table.returncode == 0, output(table)
    assert "1 warning(s), 0 failed" in table.stderr, table.stderr
