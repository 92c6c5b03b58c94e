"""Tier 4: the whole stack RUNNING (tests/system/stack.py says how it is built and started).

Read-only checks of the running stack: every unit active and healthy, status, listeners, the
gateway, Open WebUI and DNS from a tailnet peer. They run first; later test_stack_* modules
change the stack.
"""

from __future__ import annotations

import json
import time

import pytest
from stack import (
    DOMAIN,
    HOST_ARGS,
    LISTEN_IP,
    SECRETS,
    SERVED,
    SERVICES,
    TAG,
    Stack,
    active,
    admin,
    chunks_text,
    client,
    diagnose,
    health,
    https,
    output,
    status_and_body,
    stream_chat,
)

pytestmark = pytest.mark.system


# ---- every service running ------------------------------------------------------------------


def test_timings(stack: Stack) -> None:
    """Not a check: the durations of this module's steps (also in the tier-4 summary)."""
    for name, seconds in stack.timings.items():
        print(f"{name:<40} {seconds:7.1f}s")
    for name, seconds in sorted(stack.ready_after.items(), key=lambda kv: kv[1]):
        print(f"{name + ' ready after install start':<40} {seconds:7.1f}s")


def test_every_unit_is_active(ready: Stack) -> None:
    for user, containers in SERVICES.items():
        for c in containers:
            got = active(ready.system, user, c.name)
            assert got == "active", f"{user} {c.name}: {got}\n" + diagnose(
                ready.system, user, c.name
            )


def test_every_health_check_is_healthy(ready: Stack) -> None:
    for user, containers in SERVICES.items():
        for c in containers:
            if c.health:
                got = health(ready.system, user, c.name)
                assert got == "healthy", f"{user} {c.name}: {got}\n" + diagnose(
                    ready.system, user, c.name
                )


def test_each_user_holds_only_its_own_images(ready: Stack) -> None:
    for user, containers in SERVICES.items():
        listing = ["podman", "images", "--format", "{{.Repository}}:{{.Tag}}"]
        proc = ready.system.run_as(user, listing)
        assert sorted(proc.stdout.split()) == sorted(TAG.format(c.image) for c in containers)


def test_liminati_status_exits_0(ready: Stack) -> None:
    proc = ready.system.run(["liminati", "status", *HOST_ARGS], check=False, timeout=300)
    assert proc.returncode == 0, output(proc)
    as_json = ready.system.run(["liminati", "status", "--json", *HOST_ARGS], timeout=300)
    entries = json.loads(as_json.stdout)
    assert {e["service"] for e in entries} == {
        "vllm-qwen", "open-webui", "nginx", "dnsmasq", "dnsmasq-admin"
    }, entries  # fmt: skip
    assert all(e["ok"] for e in entries), entries


def test_a_second_install_changes_nothing(ready: Stack) -> None:
    proc = ready.system.run(["liminati", "install", *HOST_ARGS], check=False, timeout=600)
    assert proc.returncode == 0, output(proc)
    assert "Nothing to change" in proc.stdout + proc.stderr, output(proc)


# ---- what listens where ---------------------------------------------------------------------

#: (protocol, address:port) every one of which must be listening
EXPECTED_LISTENERS = {
    ("tcp", f"{LISTEN_IP}:443"),
    ("tcp", f"{LISTEN_IP}:80"),
    ("tcp", f"{LISTEN_IP}:8081"),
    ("tcp", f"{LISTEN_IP}:53"),
    ("udp", f"{LISTEN_IP}:53"),
    ("tcp", f"{LISTEN_IP}:5380"),
    ("tcp", "127.0.0.1:8000"),
    ("tcp", "127.0.0.1:3000"),
}


def test_nothing_listens_on_a_wildcard_address(ready: Stack) -> None:
    out = ready.system.run(["ss", "-lntupH"]).stdout
    listeners = []
    for line in out.splitlines():
        fields = line.split()
        # Netid State Recv-Q Send-Q Local:Port Peer:Port Process
        listeners.append((fields[0], fields[4], " ".join(fields[6:])))
    wildcard = [
        entry for entry in listeners if entry[1].startswith(("0.0.0.0:", "*:", "[::]:", "[::%"))
    ]
    assert not wildcard, "listening on every address:\n" + out
    got = {(proto, local) for proto, local, _ in listeners}
    missing = EXPECTED_LISTENERS - got
    assert not missing, f"not listening: {sorted(missing)}\n{out}"
    print(out)


# ---- the services answer ---------------------------------------------------------------------


def test_vllm_answers_on_loopback_with_its_internal_key(ready: Stack) -> None:
    system = ready.system
    key = system.run(["cat", f"{SECRETS}/vllm-api-key"]).stdout.strip()
    curl = ["curl", "-sS", "--max-time", "60", "-w", "\n%{http_code}"]
    url = "http://127.0.0.1:8000/v1/models"
    with_key = system.run([*curl, "-H", "@-", url], input=f"Authorization: Bearer {key}\n")
    code, body = status_and_body(with_key)
    assert code == 200, body
    assert [m["id"] for m in json.loads(body)["data"]] == [SERVED], body
    assert json.loads(body)["data"][0]["root"] == "/models/tiny-llama", body
    code, body = status_and_body(system.run([*curl, url]))
    assert code == 401, body


@pytest.fixture(scope="module")
def personal_key(stack: Stack) -> str:
    """A key from `liminati keys add`, which writes nginx's key map and reloads nginx."""
    proc = stack.system.run(
        ["liminati", "keys", "add", "alice", *HOST_ARGS], check=False, timeout=300
    )
    if proc.returncode != 0:
        pytest.fail(
            "liminati keys add failed\n"
            + output(proc)
            + "\n"
            + diagnose(stack.system, "nginx-user", "nginx-proxy")
        )
    key = proc.stdout.strip().splitlines()[-1].strip()
    assert len(key) >= 20 and " " not in key, output(proc)
    # `systemctl reload` runs `nginx -s reload`, which only signals: the new workers (with the
    # new key map) take over within moments
    deadline = time.monotonic() + 15
    while status_and_body(https(stack, "vllm", "/v1/models", key=key))[0] != 200:
        assert time.monotonic() < deadline, "the new key is not accepted 15 s after the reload"
        time.sleep(0.2)
    return key


def test_gateway_lists_models_with_a_personal_key(ready: Stack, personal_key: str) -> None:
    code, body = status_and_body(https(ready, "vllm", "/v1/models", key=personal_key))
    assert code == 200, body
    assert [m["id"] for m in json.loads(body)["data"]] == [SERVED], body
    code, body = status_and_body(https(ready, "vllm", "/v1/models", key="sk-not-a-key-of-ours"))
    assert code == 401, body
    code, body = status_and_body(https(ready, "vllm", "/v1/models"))
    assert code == 401, body


def test_gateway_streams_a_chat_completion(ready: Stack, personal_key: str) -> None:
    chunks = stream_chat(ready, personal_key, "Say hello in one word.", 12)
    assert len(chunks) >= 2, chunks
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == SERVED for c in chunks)
    assert chunks_text(chunks), chunks


def test_webui_signs_in_its_admin_and_sees_vllm_through_the_gateway(ready: Stack) -> None:
    code, body = status_and_body(https(ready, "webui", "/health"))
    assert code == 200 and json.loads(body)["status"] is True, body
    token = admin(ready)
    # Open WebUI asks vLLM (127.0.0.1:8000 through pasta's loopback forwarding) for its models
    code, body = status_and_body(https(ready, "webui", "/api/models", key=token))
    assert code == 200, body
    assert SERVED in [m["id"] for m in json.loads(body)["data"]], body


def test_dns_answers_on_the_tailnet_address(ready: Stack) -> None:
    for name in (f"webui.{DOMAIN}", f"vllm.{DOMAIN}"):
        proc = client(ready, ["dig", f"@{LISTEN_IP}", name, "+short", "+time=3", "+tries=3"])
        assert proc.returncode == 0, output(proc)
        assert proc.stdout.split() == [LISTEN_IP], output(proc)
    refused = client(ready, ["dig", f"@{LISTEN_IP}", "example.com", "+time=3", "+tries=1"])
    assert "status: REFUSED" in refused.stdout, output(refused)
