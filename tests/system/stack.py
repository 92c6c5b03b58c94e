"""Tier 4 support: the whole stack RUNNING: every service of a real `liminati install` as a
rootless podman container under its own user, in a booted Debian 13 system, from locally built
stand-in images.

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

One stack is booted per session (conftest's `stack` fixture) and shared by the test_stack_*
modules, in the order conftest.STACK_ORDER gives: read-only checks first, destructive ones
(faults, reboot, uninstall) last. test_install_real.py uses a system of its own. Durations of
each step go to the tier-4 timing summary.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nspawn import BootedSystem

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


def output(proc: subprocess.CompletedProcess[str]) -> str:
    return f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


def user_systemctl(user: str, *args: str) -> list[str]:
    return ["systemctl", "--user", "-M", f"{user}@", *args]


def health(system: BootedSystem, user: str, container: str) -> str:
    proc = system.run_as(
        user,
        ["podman", "inspect", "--format", "{{.State.Health.Status}}", container],
        check=False,
        timeout=60,
    )
    if proc.returncode != 0:
        return f"(podman inspect failed: {proc.stderr.strip()[-200:]})"
    return proc.stdout.strip()


def active(system: BootedSystem, user: str, container: str) -> str:
    proc = system.run(user_systemctl(user, "is-active", f"{container}.service"), check=False)
    return proc.stdout.strip() or proc.stderr.strip()


def diagnose(system: BootedSystem, user: str, container: str, lines: int = 40) -> str:
    uid = system.run(["id", "-u", user]).stdout.strip()
    status = system.run(
        user_systemctl(user, "status", "--no-pager", "-n", "0", f"{container}.service"),
        check=False,
    )
    journal = system.run(
        ["journalctl", f"_UID={uid}", "--no-pager", "-o", "cat", "-n", str(lines)], check=False
    )
    return (
        f"=== {user} {container}: systemctl status ===\n{status.stdout}{status.stderr}"
        f"=== {user}'s journal (last {lines}) ===\n{journal.stdout}{journal.stderr}"
    )


def build_images() -> Path:
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-images.sh")], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.fail(
            f"scripts/build-images.sh exited {proc.returncode}:\n{proc.stderr[-3000:]}\n"
            "It needs scripts/install-test-deps.sh and scripts/install-live-deps.sh first."
        )
    return Path(proc.stdout.strip().splitlines()[-1])


def link_images(system: BootedSystem, folder: Path) -> None:
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


def wait_until_ready(stack: Stack, t_install: float) -> None:
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
                state = active(system, user, c.name)
                healthy = health(system, user, c.name) if c.health else "no health check"
                stack.active[c.name], stack.health[c.name] = state, healthy
                if state == "active" and (not c.health or healthy == "healthy"):
                    stack.ready_after[c.name] = time.monotonic() - t_install
                    continue
                pending.append((user, c))
                # Restart=always: a container that cannot start ends in "failed" (start limit)
                failed_polls[c.name] = failed_polls.get(c.name, 0) + (state == "failed")
        if not pending:
            return
        given_up = any(failed_polls.get(c.name, 0) >= 5 for _, c in pending)
        if given_up or time.monotonic() > deadline:
            why = "a unit failed" if given_up else f"not ready after {HEALTHY_TIMEOUT:.0f}s"
            stack.not_ready = f"{why}: " + ", ".join(
                f"{c.name} ({stack.active[c.name]}, {stack.health[c.name]})" for _, c in pending
            )
            stack.not_ready += "\n" + "\n".join(diagnose(system, u, c.name) for u, c in pending)
            return
        time.sleep(3)


def load_images(stack: Stack, user: str) -> str:
    """`podman load` as user of each image that user runs, one after the other: "" or why not."""
    for c in SERVICES[user]:
        t = time.monotonic()
        loaded = stack.system.run_as(
            user, ["podman", "load", "-i", f"{IMAGES_INSIDE}/{c.image}.tar"], check=False,
            timeout=1800,
        )  # fmt: skip
        stack.timings[f"podman load {c.image} ({user})"] = time.monotonic() - t
        if loaded.returncode != 0 or TAG.format(c.image) not in loaded.stdout:
            return f"podman load of {c.image} as {user} failed\n" + output(loaded)
    return ""


def client(stack: Stack, argv: Sequence[str], *, input: str | None = None,
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


def https(stack: Stack, host: str, path: str, *extra: str, key: str | None = None,
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
        return client(stack, [*argv, f"https://{name}{path}"], input=data)


def status_and_body(proc: subprocess.CompletedProcess[str]) -> tuple[int, str]:
    assert proc.returncode == 0, output(proc)
    body, _, code = proc.stdout.rpartition("\n")
    return int(code), body


def sign_in(stack: Stack, email: str, password: str) -> str:
    """A token of Open WebUI's, signed in through nginx from the peer."""
    body = json.dumps({"email": email, "password": password})
    code, text = status_and_body(https(stack, "webui", "/api/v1/auths/signin", data=body))
    assert code == 200, text
    token: str = json.loads(text)["token"]
    return token


def admin(stack: Stack) -> str:
    """A token of the admin liminati created in Open WebUI."""
    password = stack.system.run(["cat", f"{SECRETS}/webui-admin-password"]).stdout.strip()
    return sign_in(stack, f"admin@{DOMAIN}", password)


def stream_chat(stack: Stack, key: str, content: str, max_tokens: int) -> list[dict[str, Any]]:
    """A streamed chat completion to the served model through nginx from the peer: its chunks
    (the events before `[DONE]`, which must end the stream)."""
    request = {
        "model": SERVED,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    proc = https(stack, "vllm", "/v1/chat/completions", key=key, data=json.dumps(request))
    code, body = status_and_body(proc)
    assert code == 200, body
    events = [line[5:].strip() for line in body.splitlines() if line.startswith("data:")]
    assert events and events[-1] == "[DONE]", body
    return [json.loads(e) for e in events[:-1]]


def chunks_text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def webui_models(stack: Stack, token: str) -> list[str]:
    """The models Open WebUI offers (what its model selector lists)."""
    code, text = status_and_body(https(stack, "webui", "/api/models", key=token))
    assert code == 200, text
    return sorted(m["id"] for m in json.loads(text)["data"])


@contextmanager
def start_stack(rootfs: Path, tier4_timings: dict[str, float]) -> Iterator[Stack]:
    """Boot a system, install liminati into it and start the whole stack (see the docstring)."""
    t0 = time.monotonic()
    images = build_images()
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
            pytest.fail("liminati install --no-start failed\n" + output(first))

        # 2. each user's image(s), into that user's own storage only; the users side by side
        link_images(system, images)
        t = time.monotonic()
        with ThreadPoolExecutor(max_workers=len(SERVICES)) as pool:
            failures = [f for f in pool.map(lambda u: load_images(stack, u), SERVICES) if f]
        timings["podman load, all users at once"] = time.monotonic() - t
        if failures:
            pytest.fail("\n".join(failures))

        # 3. the real install: starts every unit
        t_install = time.monotonic()
        second = system.run(["liminati", "install", *HOST_ARGS], check=False, timeout=1800)
        timings["install (starts units)"] = time.monotonic() - t_install
        if second.returncode != 0:
            diag = "\n".join(diagnose(system, u, c.name, 20)
                             for u, cs in SERVICES.items() for c in cs)  # fmt: skip
            pytest.fail("liminati install failed\n" + output(second) + "\n" + diag)

        wait_until_ready(stack, t_install)
        timings["install start to all healthy"] = time.monotonic() - t_install
        stack.ca.write_text(system.run(["cat", CA_CERT]).stdout)

        for name, seconds in timings.items():
            tier4_timings[f"stack: {name}"] = seconds
        for name, seconds in stack.ready_after.items():
            tier4_timings[f"stack: {name} ready after"] = seconds
        yield stack
