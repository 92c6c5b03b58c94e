"""doctor's network checks (liminati.checks: DNS, TLS, API, streaming, websocket) from a
tailnet peer against the real nginx and dnsmasq of a staged install, with the stub upstreams
of test_gateway.py in vLLM's and Open WebUI's places (declared fixtures: they let the test
know exactly how the upstream streams). The same checks against the real vLLM and Open WebUI
run in tests/system/test_stack_doctor.py."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netns import SERVER_IP, Namespaces
from test_gateway import Gateway, gateway_up

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def gateway(namespaces: Namespaces) -> Iterator[Gateway]:
    with gateway_up(namespaces, "doctor gateway up", "liminati-doctor-") as gw:
        yield gw


def probe(gw: Gateway, now: dt.datetime) -> dict[str, dict[str, Any]]:
    proc = gw.client(
        [sys.executable, str(HERE / "doctor_probe.py"), SERVER_IP, str(gw.ns.https_port),
         str(gw.nginx.ca), str(gw.nginx.leaf), now.isoformat()],
        env={**os.environ, "DOCTOR_KEY": gw.nginx.api_key("alice")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    checks: dict[str, dict[str, Any]] = json.loads(proc.stdout)
    print(json.dumps(checks, indent=1))
    return checks


def test_doctor_network_checks_pass_through_the_gateway(gateway: Gateway) -> None:
    checks = probe(gateway, dt.datetime.now(dt.UTC))
    assert {name: c["status"] for name, c in checks.items()} == {
        "dns": "ok", "tls": "ok", "api": "ok", "streaming": "ok", "websocket": "ok",
    }, checks  # fmt: skip
    # the stub sends 20 events 50 ms apart: each arrives in a read of its own (a loaded
    # machine may coalesce a few)
    m = re.match(r"(\d+) events in (\d+) reads?,", checks["streaming"]["detail"])
    assert m and int(m[1]) == 20 and int(m[2]) >= 10, checks["streaming"]


def test_doctor_tls_warns_inside_the_renewal_window(gateway: Gateway) -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=340)
    tls = probe(gateway, later)["tls"]
    assert tls["status"] == "warn", tls
    assert "renewal due at 30" in tls["detail"], tls


def test_doctor_streaming_fails_when_nginx_buffers(gateway: Gateway) -> None:
    snippet = gateway.nginx.home / "snippets/proxy-stream.conf"
    original = snippet.read_text()
    assert "proxy_buffering off;" in original
    try:
        snippet.write_text(original.replace("proxy_buffering off;", "proxy_buffering on;"))
        gateway.nginx.reload()
        time.sleep(1)  # the new workers take over
        checks = probe(gateway, dt.datetime.now(dt.UTC))
    finally:
        snippet.write_text(original)
        gateway.nginx.reload()
    streaming = checks["streaming"]
    assert streaming["status"] == "fail", streaming
    assert "buffered" in streaming["detail"], streaming
    assert "proxy_buffering off" in streaming["hint"], streaming
    others = {name: c["status"] for name, c in checks.items() if name != "streaming"}
    assert set(others.values()) == {"ok"}, checks
