"""Tier 4: the running stack's life cycle and its faults, destructive, so this module runs
last of the test_stack_* modules (the "z"): tests/system/stack.py says how the stack starts.

In this order, each test leaving the stack running for the next:

1. port 53 taken by another process: preflight names it, nothing changes; freed, install
   brings dnsmasq back;
2. the file system holding nginx's conf.d full: a config change fails with one line naming
   the file and a hint, leaves no temp file and the old file intact, the stack untouched;
   with room again the same install converges;
3. `systemctl reboot`: every service answers again without anyone logging in (timed);
4. `uninstall --keep-data` (vllm-user keeps its account and uid; webui-user is then deleted
   by hand and its uid given to another account), the re-install killed with SIGKILL after
   it started writing, run again (converges), the images loaded again, `install`: the same
   chats in Open WebUI (moved to the new webui-user) and the same CA;
5. `uninstall --yes`: no users, units, timer, state or listener left.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from nspawn import BootedSystem
from stack import (
    CA_CERT,
    CONF,
    DOMAIN,
    HEALTHY_TIMEOUT,
    LISTEN_IP,
    SECRETS,
    SERVED,
    SERVICES,
    Stack,
    active,
    chunks_text,
    client,
    diagnose,
    health,
    https,
    load_images,
    output,
    status_and_body,
    stream_chat,
    user_systemctl,
)

pytestmark = pytest.mark.system

LISTEN = ["--listen-ip", LISTEN_IP]
STATE_DIR = "/var/lib/liminati"
HOMES = {
    "vllm-user": "/var/lib/vllm",
    "webui-user": "/var/lib/webui",
    "nginx-user": "/var/lib/nginx-proxy",
    "dnsmasq-user": "/var/lib/dnsmasq-llm",
}
#: how long every unit may take to be active and healthy again (vLLM loads its model in about
#: 60 s on a quiet machine; stack.py's own start allows as much)
READY_TIMEOUT = HEALTHY_TIMEOUT


def _liminati(
    system: BootedSystem, *args: str, config: str = CONF, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return system.run(
        ["liminati", *args, "--config", config, *LISTEN], check=False, timeout=timeout
    )


def _wait_all_ready(stack: Stack, timeout: float = READY_TIMEOUT) -> float:
    """Poll every unit until all are active (and healthy, where they have a health check);
    return the seconds it took."""
    t0 = time.monotonic()
    while True:
        pending = []
        for user, containers in SERVICES.items():
            for c in containers:
                state = active(stack.system, user, c.name)
                healthy = health(stack.system, user, c.name) if c.health else "healthy"
                if state != "active" or healthy != "healthy":
                    pending.append((user, c.name, state, healthy))
        if not pending:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            pytest.fail(
                f"not ready after {timeout:.0f}s: {pending}\n"
                + "\n".join(diagnose(stack.system, u, n) for u, n, _, _ in pending)
            )
        time.sleep(2)


def _stream_chat(stack: Stack, key: str) -> str:
    """A streamed chat completion through nginx from the peer; return the text."""
    chunks = stream_chat(stack, key, "Say hi.", 8)
    assert len(chunks) >= 2, chunks
    return chunks_text(chunks)


def _dns_answers(stack: Stack) -> None:
    proc = client(
        stack, ["dig", f"@{LISTEN_IP}", f"vllm.{DOMAIN}", "+short", "+time=2", "+tries=3"]
    )
    assert proc.stdout.split() == [LISTEN_IP], output(proc)


@pytest.fixture(scope="module")
def lifecycle_key(stack: Stack) -> str:
    """A personal API key (`liminati keys add`), accepted by nginx once it has reloaded."""
    proc = _liminati(stack.system, "keys", "add", "lifecycle")
    assert proc.returncode == 0, output(proc)
    key = proc.stdout.strip().splitlines()[-1].strip()
    deadline = time.monotonic() + 15
    while status_and_body(https(stack, "vllm", "/v1/models", key=key))[0] != 200:
        assert time.monotonic() < deadline, "the new key is not accepted 15 s after the reload"
        time.sleep(0.2)
    return key


# Run inside: path -> [type, mode, owner, group, sha256 or None, mtime] under the given roots,
# except what the running services write themselves: podman's storage (.local), Open WebUI's
# data, dnsmasq's query log, vLLM's cache.
SNAPSHOT = r"""
import hashlib, json, os, stat, sys
out = {}
for root in sys.argv[1:]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in (".local", "data", "log", ".cache")]
        for name in [""] + dirnames + filenames:
            p = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(p)
            digest = None
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as fh:
                    digest = hashlib.sha256(fh.read()).hexdigest()
            # a folder's mtime moves when an entry comes and goes (a temp file removed again)
            mtime = None if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns
            out[p] = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                      digest, mtime]
json.dump(out, sys.stdout, sort_keys=True)
"""
SNAPSHOT_ROOTS = [STATE_DIR, "/etc/sysctl.d", "/etc/systemd/system", *HOMES.values()]


def _snapshot(system: BootedSystem) -> dict[str, object]:
    proc = system.run(["python3", "-c", SNAPSHOT, *SNAPSHOT_ROOTS])
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _changed(before: dict[str, object], after: dict[str, object]) -> list[str]:
    return [p for p in sorted(set(before) | set(after)) if before.get(p) != after.get(p)]


def _diagnose_all(system: BootedSystem) -> str:
    """Every service's state and journal, the users' ids and runtime folders: for a failure."""
    ids = system.run(["sh", "-c", "for u in vllm-user webui-user nginx-user dnsmasq-user; do "
                                  "id $u; done; ls -la /run/user"], check=False)  # fmt: skip
    return (
        ids.stdout
        + ids.stderr
        + "\n".join(diagnose(system, user, c.name, 30) for user, cs in SERVICES.items() for c in cs)
    )


def _main_pids(system: BootedSystem) -> dict[str, str]:
    pids = {}
    for user, containers in SERVICES.items():
        for c in containers:
            shown = system.run(
                user_systemctl(user, "show", "-p", "MainPID", "--value", f"{c.name}.service")
            )
            pids[c.name] = shown.stdout.strip()
    return pids


# ---- 1. a port taken by another process ---------------------------------------------------------

SQUATTER = "lmn-dns-squatter"
SQUAT = f"""
import socket, time
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("{LISTEN_IP}", 53))
tcp = socket.socket()
tcp.bind(("{LISTEN_IP}", 53))
tcp.listen()
time.sleep(3600)
"""


def test_port_53_taken_is_named_by_preflight_and_nothing_changes(ready: Stack) -> None:
    """test_install_real.py checks 8081 on a fresh host; this is port 53, on the running stack,
    while dnsmasq is stopped and something else grabbed its address."""
    system = ready.system
    system.run(user_systemctl("dnsmasq-user", "stop", "dnsmasq.service"))
    try:
        system.run(
            ["systemd-run", f"--unit={SQUATTER}", "--collect", "--quiet", "python3", "-c", SQUAT]
        )
        system.wait_until(["sh", "-c", f"ss -lnuH | grep -q '{LISTEN_IP}:53 '"], timeout=20)
        pid = system.run(
            ["systemctl", "show", "-p", "MainPID", "--value", f"{SQUATTER}.service"]
        ).stdout.strip()
        before = _snapshot(system)
        proc = _liminati(system, "install")
        after = _snapshot(system)
        assert proc.returncode == 1, output(proc)
        lines = [line for line in proc.stderr.splitlines() if "port 53 " in line]
        for proto in ("udp", "tcp"):
            line = next((x for x in lines if f"{proto} port 53 (ports.dns)" in x), None)
            assert line is not None, output(proc)
            assert f"on {LISTEN_IP} is taken by python3 (pid {pid})" in line, line
        assert "nothing was changed" in proc.stderr, output(proc)
        assert not _changed(before, after), _changed(before, after)
        assert active(system, "dnsmasq-user", "dnsmasq") == "inactive"
    finally:
        system.run(["systemctl", "stop", f"{SQUATTER}.service"], check=False)
    # freed: install starts dnsmasq (and its admin page) again
    proc = _liminati(system, "install")
    assert proc.returncode == 0, output(proc)
    assert "started dnsmasq.service" in proc.stderr, output(proc)
    _wait_all_ready(ready, timeout=120)
    _dns_answers(ready)


# ---- 2. a full file system ---------------------------------------------------------------------

CONF_D = "/var/lib/nginx-proxy/conf.d"


@contextlib.contextmanager
def _full_conf_d(system: BootedSystem) -> Iterator[None]:
    """A 64 KiB tmpfs over nginx's conf.d holding a copy of its files, then filled up.

    The nginx container keeps its own view of the folder (podman's bind mounts are private), so
    the running stack never sees the tmpfs; unmounting brings the real folder back as it was.
    """
    copy = "/run/lmn-conf.d-copy"
    system.sh(f"""
        cp -a {CONF_D} {copy}
        mount -t tmpfs -o size=64k,mode=0755 lmn-full-disk {CONF_D}
        cp -a {copy}/. {CONF_D}/
        chown nginx-user:nginx-user {CONF_D}
        dd if=/dev/zero of={CONF_D}/.lmn-fill bs=4k 2>/dev/null || true
    """)
    try:
        free = system.run(["df", "--output=avail", "-B1", CONF_D]).stdout.split()[-1]
        assert free == "0", f"{CONF_D} still has {free} bytes free"
        yield
    finally:
        system.sh(f"umount {CONF_D}; rm -rf {copy}")


@pytest.fixture
def bigger_uploads(ready: Stack) -> Iterator[tuple[str, str]]:
    """The stack's config, and it plus a change that rewrites a file in conf.d (and reloads
    nginx): the test writes them in turn to the stack's own config file (the renewal unit
    runs with the install's `--config`, so another path would change that unit too). The
    stack's config is put back afterwards."""
    system = ready.system
    text = system.run(["cat", CONF]).stdout
    assert "webui" not in tomllib.loads(text), "the stack's config already sets [webui]"
    yield text, text + '\n[webui]\nclient_max_body_size = "250m"\n'
    system.write_file(CONF, text, mode=0o600)


def test_full_file_system_fails_cleanly_and_the_stack_keeps_running(
    ready: Stack, bigger_uploads: tuple[str, str]
) -> None:
    system = ready.system
    original, changed = bigger_uploads
    target = f"{CONF_D}/20-webui.conf"
    pids = _main_pids(system)
    system.write_file(CONF, changed, mode=0o600)
    with _full_conf_d(system):
        before = _snapshot(system)
        listing = system.run(["ls", "-A", CONF_D]).stdout.split()
        proc = _liminati(system, "install")
        after = _snapshot(system)
        # no temp file left, the old file (and everything else) as it was
        assert system.run(["ls", "-A", CONF_D]).stdout.split() == listing
        assert not _changed(before, after), _changed(before, after)
    assert proc.returncode == 1, output(proc)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: could not write {target}: no space left on the file system holding it ({CONF_D})"
    ], output(proc)
    assert f"hint: free space there (`df -h {CONF_D}` shows how much is left)" in proc.stderr
    assert "the previous file is untouched" in proc.stderr and "Traceback" not in proc.stderr
    print(errors[0])
    # the stack never noticed: the same processes, still answering
    assert _main_pids(system) == pids
    _wait_all_ready(ready, timeout=60)
    assert status_and_body(https(ready, "webui", "/health"))[0] == 200
    # with room again the same change goes through; then back to the stack's own config
    for text in (changed, original):
        system.write_file(CONF, text, mode=0o600)
        proc = _liminati(system, "install")
        assert proc.returncode == 0, output(proc)
        assert "reloaded nginx-proxy.service" in proc.stderr, output(proc)
        plan = _liminati(system, "plan", "--detailed-exitcode", "--no-diff")
        assert plan.returncode == 0, output(plan)
    assert "client_max_body_size 100m" in system.run(["cat", target]).stdout


# ---- 3. a reboot -------------------------------------------------------------------------------


def test_reboot_brings_every_service_back_without_a_login(
    ready: Stack, lifecycle_key: str, tier4_timings: dict[str, float]
) -> None:
    system = ready.system
    booted = system.reboot()
    after_boot = _wait_all_ready(ready)
    total = booted + after_boot
    tier4_timings["lifecycle: reboot until running"] = booted
    tier4_timings["lifecycle: reboot until all healthy"] = total
    print(
        f"reboot: system running after {booted:.1f}s (shutdown "
        f"{system.timings['reboot: shutdown']:.1f}s), every service healthy after "
        f"{total:.1f}s"
    )
    # the lingering users' managers hold sessions of class "manager"; a login would be "user"
    sessions = system.run(["loginctl", "list-sessions", "--no-legend"]).stdout
    classes = {line.split()[5] for line in sessions.splitlines() if line.strip()}
    assert classes <= {"manager", "manager-early"}, f"someone logged in:\n{sessions}"
    assert (
        system.run(["sysctl", "-n", "net.ipv4.ip_unprivileged_port_start"]).stdout.strip() == "53"
    )
    text = _stream_chat(ready, lifecycle_key)
    assert text, "the streamed completion was empty"
    _dns_answers(ready)
    status = _liminati(system, "status")
    assert status.returncode == 0, output(status)


# ---- 4. uninstall --keep-data, a killed re-install, the same chats and CA -----------------------


def _signin(stack: Stack) -> str:
    password = stack.system.run(["cat", f"{SECRETS}/webui-admin-password"]).stdout.strip()
    body = json.dumps({"email": f"admin@{DOMAIN}", "password": password})
    code, answer = status_and_body(https(stack, "webui", "/api/v1/auths/signin", data=body))
    assert code == 200, answer
    return json.loads(answer)["token"]  # type: ignore[no-any-return]


def _ca_sha256(system: BootedSystem) -> str:
    proc = _liminati(system, "cert", "status", "--json")
    return json.loads(proc.stdout)["ca"]["sha256"]  # type: ignore[no-any-return]


#: the account that takes webui-user's uid after an uninstall (see below)
UID_TAKER = "lmn-uid-taker"
#: the first file a (re-)install writes (desired order: root's files first), and one of the last
FIRST_WRITE = "etc/systemd/system/liminati-cert-renew.service"
LATE_WRITE = "var/lib/dnsmasq-llm/dnsadmin/config.json"


def _install_killed_after_its_first_write(system: BootedSystem) -> tuple[int, bool]:
    """Start `install --no-start`, SIGKILL it (and everything it started) as soon as its first
    file is on disk; return its exit status and whether a late file was still missing."""
    first, late = system.root / FIRST_WRITE, system.root / LATE_WRITE
    assert not first.exists() and not late.exists()
    proc = system.popen(["liminati", "install", "--no-start", "--config", CONF, *LISTEN])
    try:
        deadline = time.monotonic() + 300
        while not first.exists():
            assert proc.poll() is None, f"install exited {proc.returncode} before writing"
            assert time.monotonic() < deadline, "install wrote nothing in 300 s"
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGKILL)
        midway = not late.exists()
    finally:
        BootedSystem.stop_process(proc)
    return proc.returncode, midway


def test_uninstall_keep_data_and_a_killed_reinstall_keep_chats_and_ca(
    ready: Stack, tier4_timings: dict[str, float]
) -> None:
    system = ready.system
    title = f"kept across a re-install {secrets.token_hex(4)}"
    chat = {
        "chat": {
            "title": title,
            "models": [SERVED],
            "messages": [{"role": "user", "content": "hello"}],
            "history": {"messages": {}, "currentId": None},
        }
    }
    token = _signin(ready)
    code, body = status_and_body(
        https(ready, "webui", "/api/v1/chats/new", key=token, data=json.dumps(chat))
    )
    assert code == 200, body
    chat_id = json.loads(body)["id"]
    ca = _ca_sha256(system)
    uids = {u: system.run(["id", "-u", u]).stdout.strip() for u in ("vllm-user", "webui-user")}

    t0 = time.monotonic()
    proc = _liminati(system, "uninstall", "--keep-data", "--yes")
    assert proc.returncode == 0, output(proc)
    tier4_timings["lifecycle: uninstall --keep-data"] = time.monotonic() - t0
    for line in (
        "removed /var/lib/nginx-proxy/",
        "removed user nginx-user",
        "kept /var/lib/webui/data",
        "kept /var/lib/liminati/pki",
        "kept user webui-user",
        "Uninstalled: ",
    ):
        assert line in proc.stderr, output(proc)
    # nothing of liminati's runs; the data and its owners stay
    assert system.run(["ss", "-lntuH"]).stdout.strip() == "", "something still listens"
    for user in SERVICES:
        left = system.run(["pgrep", "-u", user], check=False)
        assert left.returncode != 0, f"{user} still runs {left.stdout}"
    for user in ("nginx-user", "dnsmasq-user"):
        assert system.run(["getent", "passwd", user], check=False).returncode == 2
    for user, uid in uids.items():
        assert system.run(["id", "-u", user]).stdout.strip() == uid
        assert (
            system.run(["test", "-e", f"/var/lib/systemd/linger/{user}"], check=False).returncode
            == 1
        )
    assert system.run(["stat", "-c", "%U", "/var/lib/webui/data/webui.db"]).stdout.strip() == (
        "webui-user"
    )
    assert system.run(["systemctl", "cat", "liminati-cert-renew.timer"], check=False).returncode
    # webui-user is then deleted by hand, and another account gets its uid: the chats now
    # belong to that account; the re-install must give them to the new webui-user
    system.run(["userdel", "webui-user"])
    system.run(["useradd", "--system", "--no-create-home", "--uid", uids["webui-user"], UID_TAKER])

    # the re-install, killed once it has started writing, then run again: it converges
    code, midway = _install_killed_after_its_first_write(system)
    assert code == -signal.SIGKILL, f"install was not killed (exit {code})"
    # (the data moves before any file is written: the killed run did it)
    killed_moved = system.run(["stat", "-c", "%U", "/var/lib/webui/data"]).stdout.strip() == (
        "webui-user"
    )
    print(f"install killed with SIGKILL {'midway through' if midway else 'after'} its writes")
    again = _liminati(system, "install", "--no-start")
    assert again.returncode == 0, output(again)
    moved = killed_moved or f"in /var/lib/webui/data moved from {UID_TAKER} to webui-user" in (
        again.stderr
    )
    assert moved, "the kept data was not given to the new webui-user\n" + output(again)
    assert system.run(["stat", "-c", "%U", "/var/lib/webui/data/webui.db"]).stdout.strip() == (
        "webui-user"
    )
    plan = _liminati(system, "plan", "--no-start", "--detailed-exitcode", "--no-diff")
    assert plan.returncode == 0, output(plan)
    leftovers = system.run(["find", "/etc", "/var/lib", "-name", "*.liminati-tmp-*"]).stdout
    assert leftovers == "", leftovers

    # the users' podman storage went with the uninstall: load the images again, then start
    t1 = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(SERVICES)) as pool:
        failures = [f for f in pool.map(lambda u: load_images(ready, u), SERVICES) if f]
    assert not failures, failures
    proc = _liminati(system, "install", timeout=1800)
    if proc.returncode != 0:
        pytest.fail(
            "install after the re-load failed\n" + output(proc) + "\n" + _diagnose_all(system)
        )
    ready_after = _wait_all_ready(ready)
    tier4_timings["lifecycle: re-install (images, start, healthy)"] = time.monotonic() - t1
    plan = _liminati(system, "plan", "--detailed-exitcode", "--no-diff")
    assert plan.returncode == 0, output(plan)
    print(f"re-installed: every service healthy {ready_after:.1f}s after install started them")

    # the same CA (the peer's copy still verifies nginx), the same chats
    assert _ca_sha256(system) == ca
    assert system.run(["cat", CA_CERT]).stdout == ready.ca.read_text()
    token = _signin(ready)
    code, body = status_and_body(https(ready, "webui", "/api/v1/chats/", key=token))
    assert code == 200, body
    assert {(c["id"], c["title"]) for c in json.loads(body)} >= {(chat_id, title)}, body
    # vllm-user kept its uid; webui-user has a new one, and its chats came with it
    assert system.run(["id", "-u", "vllm-user"]).stdout.strip() == uids["vllm-user"]
    assert system.run(["id", "-u", "webui-user"]).stdout.strip() != uids["webui-user"]
    system.run(["userdel", UID_TAKER])


# ---- 5. uninstall, all of it --------------------------------------------------------------------


def test_uninstall_removes_users_units_files_and_timer(ready: Stack) -> None:
    system = ready.system
    proc = _liminati(system, "uninstall", "--yes")
    assert proc.returncode == 0, output(proc)
    assert "removed /var/lib/liminati/" in proc.stderr and "Uninstalled: " in proc.stderr
    for user, home in HOMES.items():
        assert system.run(["getent", "passwd", user], check=False).returncode == 2, user
        assert system.run(["test", "-e", home], check=False).returncode == 1, home
        assert (
            system.run(["test", "-e", f"/var/lib/systemd/linger/{user}"], check=False).returncode
            == 1
        )
        assert system.run(["pgrep", "-u", user], check=False).returncode != 0
    for idfile in ("/etc/subuid", "/etc/subgid"):
        text = system.run(["cat", idfile]).stdout
        assert not any(user in text for user in HOMES), f"{idfile}: {text}"
    assert system.run(["test", "-e", STATE_DIR], check=False).returncode == 1
    units = system.run(
        ["systemctl", "list-unit-files", "--no-legend", "liminati-cert*"], check=False
    ).stdout
    assert units.strip() == "", units
    timers = system.run(["systemctl", "list-timers", "--all", "--no-legend"]).stdout
    assert "liminati" not in timers, timers
    assert system.run(["ls", "/var/lib/systemd/timers"], check=False).stdout.count("liminati") == 0
    assert system.run(["ls", "/etc/sysctl.d"]).stdout.count("liminati") == 0
    assert system.run(["sysctl", "-n", "net.ipv4.ip_unprivileged_port_start"]).stdout.strip() == (
        "1024"
    )
    assert system.run(["sysctl", "-n", "net.ipv4.ip_nonlocal_bind"]).stdout.strip() == "0"
    assert system.run(["ss", "-lntuH"]).stdout.strip() == "", "something still listens"
    # and the host is a fresh one for liminati again
    plan = _liminati(system, "plan", "--detailed-exitcode", "--no-diff")
    assert plan.returncode == 3, output(plan)
    assert "+ create    user          nginx-user" in plan.stdout, plan.stdout
