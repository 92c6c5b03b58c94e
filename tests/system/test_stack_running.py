"""Tier 4: the whole stack RUNNING: every service of a real `liminati install` as a rootless podman
container under its own user, in a booted Debian 13 system, from locally built stand-in images.

No registry is reachable here: scripts/build-images.sh builds stand-ins for the five images
(nginx, dnsmasq and python3 from Debian; Open WebUI and vLLM on the CPU from the live tier's
venvs, the tiny Llama baked in at /models/tiny-llama). The configuration points `[images]` at
them with `pull = "never"` and runs the model with `gpus = "none"` (no CDI device on a CPU).

The flow is the one an operator without a registry follows:

    liminati install --no-start   users, subordinate ids, linger, files (the users exist now)
    podman load -i FILE           as each service user, only the image(s) that user runs
    liminati install              starts every unit

Then: every unit active, every health check healthy, `liminati status` exits 0, nothing listens
on a wildcard address, vLLM answers on 127.0.0.1:8000 with its internal key, and from a tailnet
peer (a network namespace joined to the system by a veth pair, as 100.64.0.20): nginx on
100.64.0.10:443 with a key made by `liminati keys add` (models, a streamed chat completion, Open
WebUI's sign-in and its view of vLLM's models) and dnsmasq's answer for webui.<domain>.

The system is booted for this module alone: the other modules share the session's system and
install other configurations into it. Durations of each step go to the tier-4 timing summary.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from nspawn import BootedSystem

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
LISTEN_IP = "100.64.0.10"
CLIENT_IP = "100.64.0.20"
DOMAIN = "liminati.internal"
CONF = "/root/liminati-stack.toml"
HOST_ARGS = ["--config", CONF, "--listen-ip", LISTEN_IP]
#: where the image archives are hard-linked inside the system (readable by every user)
IMAGES_INSIDE = "/var/tmp/liminati-images"
SECRETS = "/var/lib/liminati/secrets"
CA_CERT = "/var/lib/liminati/pki/ca.crt"
TAG = "localhost/liminati-test/{}:1"
SERVED = "qwen"
#: vLLM compiles its graph (torch inductor) and loads the model at start; two cores, shared
HEALTHY_TIMEOUT = 900.0


@dataclass(frozen=True)
class Container:
    name: str  # also the unit's name, minus .service
    image: str  # the stand-in's name in scripts/build-images.sh
    health: bool  # liminati gives it a HealthCmd


#: user -> the containers liminati runs as that user (the README's layout table)
SERVICES: dict[str, tuple[Container, ...]] = {
    "vllm-user": (Container("vllm-qwen", "vllm", True),),
    "webui-user": (Container("open-webui", "open-webui", True),),
    "nginx-user": (Container("nginx-proxy", "nginx", True),),
    "dnsmasq-user": (
        Container("dnsmasq", "dnsmasq", False),
        Container("dnsmasq-admin", "dnsadmin", True),
    ),
}

CONFIG = f"""\
# liminati tier 4: the whole stack from stand-in images, vLLM on the CPU
[images]
vllm = "{TAG.format("vllm")}"
webui = "{TAG.format("open-webui")}"
nginx = "{TAG.format("nginx")}"
dnsmasq = "{TAG.format("dnsmasq")}"
dnsadmin = "{TAG.format("dnsadmin")}"
pull = "never"

[[models]]
name = "{SERVED}"
model = "/models/tiny-llama"
# a CPU build of vLLM: no NVIDIA CDI device (VLLM_CPU_KVCACHE_SPACE in the image sizes the KV
# cache, so liminati's default --gpu-memory-utilization 0.9 stays as it is)
gpus = "none"
"""


@dataclass
class Stack:
    system: BootedSystem
    client_ns: str
    #: a host-side copy of the CA certificate, for the client's curl
    ca: Path
    timings: dict[str, float] = field(default_factory=dict)
    #: container -> seconds from the start of `liminati install` to healthy (or active)
    ready_after: dict[str, float] = field(default_factory=dict)
    #: what was still not active/healthy when the wait gave up, with diagnostics; "" when all are
    not_ready: str = ""
    health: dict[str, str] = field(default_factory=dict)
    active: dict[str, str] = field(default_factory=dict)


def _output(proc: subprocess.CompletedProcess[str]) -> str:
    return f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


def _user_systemctl(user: str, *args: str) -> list[str]:
    return ["systemctl", "--user", "-M", f"{user}@", *args]


def _health(system: BootedSystem, user: str, container: str) -> str:
    proc = system.run_as(
        user,
        ["podman", "inspect", "--format", "{{.State.Health.Status}}", container],
        check=False,
        timeout=60,
    )
    if proc.returncode != 0:
        return f"(podman inspect failed: {proc.stderr.strip()[-200:]})"
    return proc.stdout.strip()


def _active(system: BootedSystem, user: str, container: str) -> str:
    proc = system.run(_user_systemctl(user, "is-active", f"{container}.service"), check=False)
    return proc.stdout.strip() or proc.stderr.strip()


def _diagnose(system: BootedSystem, user: str, container: str, lines: int = 40) -> str:
    uid = system.run(["id", "-u", user]).stdout.strip()
    status = system.run(
        _user_systemctl(user, "status", "--no-pager", "-n", "0", f"{container}.service"),
        check=False,
    )
    journal = system.run(
        ["journalctl", f"_UID={uid}", "--no-pager", "-o", "cat", "-n", str(lines)], check=False
    )
    return (
        f"=== {user} {container}: systemctl status ===\n{status.stdout}{status.stderr}"
        f"=== {user}'s journal (last {lines}) ===\n{journal.stdout}{journal.stderr}"
    )


def _build_images() -> Path:
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-images.sh")], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.fail(
            f"scripts/build-images.sh exited {proc.returncode}:\n{proc.stderr[-3000:]}\n"
            "It needs scripts/install-test-deps.sh and scripts/install-live-deps.sh first."
        )
    return Path(proc.stdout.strip().splitlines()[-1])


def _link_images(system: BootedSystem, folder: Path) -> None:
    """Hard-link the archives into the system (same file system as the cache: no copy)."""
    system.run(["install", "-d", "-m", "0755", IMAGES_INSIDE])
    inside = system.root / IMAGES_INSIDE.lstrip("/")
    for containers in SERVICES.values():
        for c in containers:
            src, dst = folder / f"{c.image}.tar", inside / f"{c.image}.tar"
            if not src.is_file():
                pytest.fail(f"{src} is missing: scripts/build-images.sh did not build {c.image}")
            if dst.exists():
                continue
            try:
                os.link(src, dst)
            except OSError:
                subprocess.run(["cp", "--reflink=auto", str(src), str(dst)], check=True)


def _wait_until_ready(stack: Stack, t_install: float) -> None:
    """Poll every unit (is-active) and every health check until all pass or time runs out."""
    system = stack.system
    deadline = time.monotonic() + HEALTHY_TIMEOUT
    failed_polls: dict[str, int] = {}
    while True:
        pending = []
        for user, containers in SERVICES.items():
            for c in containers:
                if c.name in stack.ready_after:
                    continue
                active = _active(system, user, c.name)
                health = _health(system, user, c.name) if c.health else "no health check"
                stack.active[c.name], stack.health[c.name] = active, health
                if active == "active" and (not c.health or health == "healthy"):
                    stack.ready_after[c.name] = time.monotonic() - t_install
                    continue
                pending.append((user, c))
                # Restart=always: a container that cannot start ends in "failed" (start limit)
                failed_polls[c.name] = failed_polls.get(c.name, 0) + (active == "failed")
        if not pending:
            return
        given_up = any(failed_polls.get(c.name, 0) >= 5 for _, c in pending)
        if given_up or time.monotonic() > deadline:
            why = "a unit failed" if given_up else f"not ready after {HEALTHY_TIMEOUT:.0f}s"
            stack.not_ready = f"{why}: " + ", ".join(
                f"{c.name} ({stack.active[c.name]}, {stack.health[c.name]})" for _, c in pending
            )
            stack.not_ready += "\n" + "\n".join(_diagnose(system, u, c.name) for u, c in pending)
            return
        time.sleep(3)


def _load_images(stack: Stack, user: str) -> str:
    """`podman load` as user of each image that user runs, one after the other: "" or why not."""
    for c in SERVICES[user]:
        t = time.monotonic()
        loaded = stack.system.run_as(
            user, ["podman", "load", "-i", f"{IMAGES_INSIDE}/{c.image}.tar"], check=False,
            timeout=1800,
        )  # fmt: skip
        stack.timings[f"podman load {c.image} ({user})"] = time.monotonic() - t
        if loaded.returncode != 0 or TAG.format(c.image) not in loaded.stdout:
            return f"podman load of {c.image} as {user} failed\n" + _output(loaded)
    return ""


@pytest.fixture(scope="module")
def stack(rootfs: Path, tier4_timings: dict[str, float]) -> Iterator[Stack]:
    t0 = time.monotonic()
    images = _build_images()
    tier4_timings["stack: images (build or cache)"] = time.monotonic() - t0

    client_ns = f"lmn-stack-{os.getpid() % 100000}"
    with BootedSystem(rootfs) as system, tempfile.TemporaryDirectory() as tmp:
        stack = Stack(system, client_ns, Path(tmp) / "ca.crt")
        timings = stack.timings
        timings["boot"] = system.timings["boot"]
        t = time.monotonic()
        system.install_liminati(REPO)
        timings["liminati into the system"] = time.monotonic() - t
        system.add_tailnet_interface(
            "tailscale0", f"{LISTEN_IP}/32", peer_netns=client_ns, peer_address=f"{CLIENT_IP}/32"
        )
        system.write_file(CONF, CONFIG, mode=0o600)

        # 1. users, subordinate ids, linger and files: the users podman loads as exist after it
        t = time.monotonic()
        first = system.run(["liminati", "install", "--no-start", *HOST_ARGS], check=False,
                           timeout=600)  # fmt: skip
        timings["install --no-start"] = time.monotonic() - t
        if first.returncode != 0:
            pytest.fail("liminati install --no-start failed\n" + _output(first))

        # 2. each user's image(s), into that user's own storage only; the users side by side
        _link_images(system, images)
        t = time.monotonic()
        with ThreadPoolExecutor(max_workers=len(SERVICES)) as pool:
            failures = [f for f in pool.map(lambda u: _load_images(stack, u), SERVICES) if f]
        timings["podman load, all users at once"] = time.monotonic() - t
        if failures:
            pytest.fail("\n".join(failures))

        # 3. the real install: starts every unit
        t_install = time.monotonic()
        second = system.run(["liminati", "install", *HOST_ARGS], check=False, timeout=1800)
        timings["install (starts units)"] = time.monotonic() - t_install
        if second.returncode != 0:
            diag = "\n".join(_diagnose(system, u, c.name, 20)
                             for u, cs in SERVICES.items() for c in cs)  # fmt: skip
            pytest.fail("liminati install failed\n" + _output(second) + "\n" + diag)

        _wait_until_ready(stack, t_install)
        timings["install start to all healthy"] = time.monotonic() - t_install
        stack.ca.write_text(system.run(["cat", CA_CERT]).stdout)

        for name, seconds in timings.items():
            tier4_timings[f"stack: {name}"] = seconds
        for name, seconds in stack.ready_after.items():
            tier4_timings[f"stack: {name} ready after"] = seconds
        yield stack


@pytest.fixture
def ready(stack: Stack) -> Stack:
    """The stack, once every container is running and healthy (else the test fails: why)."""
    if stack.not_ready:
        pytest.fail(stack.not_ready)
    return stack


def _client(stack: Stack, argv: Sequence[str], *, input: str | None = None,
            timeout: float = 180) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """argv on the tailnet peer (its own network namespace on the host), no proxy, clean env."""
    return subprocess.run(
        ["ip", "netns", "exec", stack.client_ns, *argv],
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
    )


def _https(stack: Stack, host: str, path: str, *extra: str, key: str | None = None,
           data: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """curl https://<host>.<domain><path> from the peer, verified against our CA: the body, then
    the status code on the last line. The key goes in through a 0600 file, the data through
    stdin: neither is ever in argv."""
    name = f"{host}.{DOMAIN}"
    argv = ["curl", "-sS", "-N", "--max-time", "120", "--cacert", str(stack.ca),
            "--resolve", f"{name}:443:{LISTEN_IP}", "-w", "\n%{http_code}", *extra]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        if key is not None:
            header = Path(tmp) / "auth"
            header.touch(mode=0o600)
            header.write_text(f"Authorization: Bearer {key}\n")
            argv += ["-H", f"@{header}"]
        if data is not None:
            argv += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
        return _client(stack, [*argv, f"https://{name}{path}"], input=data)


def _status_and_body(proc: subprocess.CompletedProcess[str]) -> tuple[int, str]:
    assert proc.returncode == 0, _output(proc)
    body, _, code = proc.stdout.rpartition("\n")
    return int(code), body


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
            got = _active(ready.system, user, c.name)
            assert got == "active", f"{user} {c.name}: {got}\n" + _diagnose(
                ready.system, user, c.name
            )


def test_every_health_check_is_healthy(ready: Stack) -> None:
    for user, containers in SERVICES.items():
        for c in containers:
            if c.health:
                got = _health(ready.system, user, c.name)
                assert got == "healthy", f"{user} {c.name}: {got}\n" + _diagnose(
                    ready.system, user, c.name
                )


def test_each_user_holds_only_its_own_images(ready: Stack) -> None:
    for user, containers in SERVICES.items():
        listing = ["podman", "images", "--format", "{{.Repository}}:{{.Tag}}"]
        proc = ready.system.run_as(user, listing)
        assert sorted(proc.stdout.split()) == sorted(TAG.format(c.image) for c in containers)


def test_liminati_status_exits_0(ready: Stack) -> None:
    proc = ready.system.run(["liminati", "status", *HOST_ARGS], check=False, timeout=300)
    assert proc.returncode == 0, _output(proc)
    as_json = ready.system.run(["liminati", "status", "--json", *HOST_ARGS], timeout=300)
    entries = json.loads(as_json.stdout)
    assert {e["service"] for e in entries} == {
        "vllm-qwen", "open-webui", "nginx", "dnsmasq", "dnsmasq-admin"
    }, entries  # fmt: skip
    assert all(e["ok"] for e in entries), entries


def test_a_second_install_changes_nothing(ready: Stack) -> None:
    proc = ready.system.run(["liminati", "install", *HOST_ARGS], check=False, timeout=600)
    assert proc.returncode == 0, _output(proc)
    assert "Nothing to change" in proc.stdout + proc.stderr, _output(proc)


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
    code, body = _status_and_body(with_key)
    assert code == 200, body
    assert [m["id"] for m in json.loads(body)["data"]] == [SERVED], body
    assert json.loads(body)["data"][0]["root"] == "/models/tiny-llama", body
    code, body = _status_and_body(system.run([*curl, url]))
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
            + _output(proc)
            + "\n"
            + _diagnose(stack.system, "nginx-user", "nginx-proxy")
        )
    key = proc.stdout.strip().splitlines()[-1].strip()
    assert len(key) >= 20 and " " not in key, _output(proc)
    # `systemctl reload` runs `nginx -s reload`, which only signals: the new workers (with the
    # new key map) take over within moments
    deadline = time.monotonic() + 15
    while _status_and_body(_https(stack, "vllm", "/v1/models", key=key))[0] != 200:
        assert time.monotonic() < deadline, "the new key is not accepted 15 s after the reload"
        time.sleep(0.2)
    return key


def test_gateway_lists_models_with_a_personal_key(ready: Stack, personal_key: str) -> None:
    code, body = _status_and_body(_https(ready, "vllm", "/v1/models", key=personal_key))
    assert code == 200, body
    assert [m["id"] for m in json.loads(body)["data"]] == [SERVED], body
    code, body = _status_and_body(_https(ready, "vllm", "/v1/models", key="sk-not-a-key-of-ours"))
    assert code == 401, body
    code, body = _status_and_body(_https(ready, "vllm", "/v1/models"))
    assert code == 401, body


def test_gateway_streams_a_chat_completion(ready: Stack, personal_key: str) -> None:
    request = {
        "model": SERVED,
        "messages": [{"role": "user", "content": "Say hello in one word."}],
        "max_tokens": 12,
        "stream": True,
    }
    proc = _https(ready, "vllm", "/v1/chat/completions", key=personal_key,
                  data=json.dumps(request))  # fmt: skip
    code, body = _status_and_body(proc)
    assert code == 200, body
    events = [
        line[len("data:") :].strip() for line in body.splitlines() if line.startswith("data:")
    ]
    assert events and events[-1] == "[DONE]", body
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) >= 2, body
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == SERVED for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text, body


def test_webui_signs_in_its_admin_and_sees_vllm_through_the_gateway(ready: Stack) -> None:
    system = ready.system
    code, body = _status_and_body(_https(ready, "webui", "/health"))
    assert code == 200 and json.loads(body)["status"] is True, body
    password = system.run(["cat", f"{SECRETS}/webui-admin-password"]).stdout.strip()
    signin = json.dumps({"email": f"admin@{DOMAIN}", "password": password})
    code, body = _status_and_body(_https(ready, "webui", "/api/v1/auths/signin", data=signin))
    assert code == 200, body
    token = json.loads(body)["token"]
    # Open WebUI asks vLLM (127.0.0.1:8000 through pasta's loopback forwarding) for its models
    code, body = _status_and_body(_https(ready, "webui", "/api/models", key=token))
    assert code == 200, body
    assert SERVED in [m["id"] for m in json.loads(body)["data"]], body


def test_dns_answers_on_the_tailnet_address(ready: Stack) -> None:
    for name in (f"webui.{DOMAIN}", f"vllm.{DOMAIN}"):
        proc = _client(ready, ["dig", f"@{LISTEN_IP}", name, "+short", "+time=3", "+tries=3"])
        assert proc.returncode == 0, _output(proc)
        assert proc.stdout.split() == [LISTEN_IP], _output(proc)
    refused = _client(ready, ["dig", f"@{LISTEN_IP}", "example.com", "+time=3", "+tries=1"])
    assert "status: REFUSED" in refused.stdout, _output(refused)
