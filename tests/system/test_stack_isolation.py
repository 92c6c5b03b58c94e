"""Tier 4: what the running stack keeps apart, how it is locked down, and the day-to-day
commands against it (tests/system/stack.py says how the stack is built and started).

* Isolation: as each service user, another service's home, its private env files, the leaf
  key, the CA key and root's state are unreadable, another service's processes cannot be
  signalled or read, no service user can use sudo, and one user's `systemctl --user` cannot
  reach another's units.
* Hardening: every container runs as its quadlet asks (no new privileges, only the added
  capabilities, read-only root and tmpfs where set), seen in `podman inspect` and in the
  container process's own /proc status; the certificate renewal unit's `systemd-analyze
  security` exposure, and that the renewal still renews and reloads nginx inside its sandbox.
* The privileged-port choice keeps the client's real address: nginx logs 100.64.0.20.
* `liminati logs` (only that unit's lines; `-f` follows), `liminati restart`, and kill -9 of
  a container: systemd brings it back.

Non-destructive: every test leaves the stack as it found it (a restarted or killed service
runs again, the sudo and nginx stand-ins are removed), so this module may run in any order
with the other read-only test_stack_* modules.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import secrets
import shlex
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nspawn import BootedSystem
from stack import (
    CLIENT_IP,
    DOMAIN,
    HOST_ARGS,
    LISTEN_IP,
    REPO,
    SERVICES,
    Stack,
    active,
    client,
    diagnose,
    health,
    https,
    output,
    status_and_body,
    user_systemctl,
)

pytestmark = pytest.mark.system

STATE_DIR = "/var/lib/liminati"
LEAF_KEY = "/var/lib/nginx-proxy/ssl/liminati.key"
RENEW_UNIT = "liminati-cert-renew.service"
#: the exposure `systemd-analyze security` gave the renewal unit on Debian 13 (systemd 257):
#: 1.5, "OK"; above this a hardening setting was lost (4.9 would still be "OK")
RENEW_EXPOSURE_MAX = 2.0

#: capability name -> bit, as the kernel numbers them (linux/capability.h)
CAP_NAMES = (
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
    "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO "
    "SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME "
    "SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG "
    "WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF CHECKPOINT_RESTORE"
)
CAP_BITS = {name: bit for bit, name in enumerate(CAP_NAMES.split(" "))}


def _uid(system: BootedSystem, user: str) -> int:
    return int(system.run(["id", "-u", user]).stdout)


def _home(system: BootedSystem, user: str) -> str:
    return system.run(["getent", "passwd", user]).stdout.split(":")[5]


def _unit_props(system: BootedSystem, user: str, unit: str) -> dict[str, str]:
    shown = system.run(user_systemctl(user, "show", "-p", "ActiveState,MainPID,NRestarts", unit))
    return dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)


def _container_pid(system: BootedSystem, user: str, name: str) -> int:
    proc = system.run_as(user, ["podman", "inspect", "--format", "{{.State.Pid}}", name])
    return int(proc.stdout)


def _wait_healthy(stack: Stack, user: str, name: str, timeout: float = 120) -> None:
    c = next(c for c in SERVICES[user] if c.name == name)
    deadline = time.monotonic() + timeout
    while True:
        state = active(stack.system, user, name)
        healthy = health(stack.system, user, name) if c.health else "no health check"
        if state == "active" and healthy in ("healthy", "no health check"):
            return
        if time.monotonic() > deadline:
            pytest.fail(
                f"{name}: {state}, {healthy} after {timeout:.0f}s\n"
                + diagnose(stack.system, user, name)
            )
        time.sleep(0.5)


def _webui_answers(stack: Stack, timeout: float = 60) -> float:
    """Seconds until https://webui.<domain>/health answers 200 through nginx from the peer."""
    t0 = time.monotonic()
    while True:
        proc = https(stack, "webui", "/health", "--max-time", "5")
        if proc.returncode == 0 and status_and_body(proc)[0] == 200:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"webui did not answer through nginx within {timeout:.0f}s\n{output(proc)}")
        time.sleep(0.2)


# ---- isolation between the service users --------------------------------------------------------

# Run as a service user: try each path (list a folder, read a byte of a file), signal and read
# the environment of each pid; print what happened (ok or the errno's name) as JSON.
PROBE = r"""
import errno, json, os, sys
ask = json.load(sys.stdin)
out = {}
def attempt(key, fn):
    try:
        fn()
        out[key] = "ok"
    except OSError as exc:
        out[key] = errno.errorcode.get(exc.errno, str(exc.errno))
for path in ask["paths"]:
    attempt(path, (lambda p=path: os.listdir(p)) if ask["dirs"].get(path)
            else (lambda p=path: open(p, "rb").read(1)))
for pid in ask["pids"]:
    attempt(f"kill -0 {pid}", lambda p=pid: os.kill(p, 0))
    attempt(f"/proc/{pid}/environ", lambda p=pid: open(f"/proc/{p}/environ", "rb").read(1))
json.dump(out, sys.stdout)
"""


def _private_paths(system: BootedSystem, user: str) -> list[tuple[str, bool]]:
    """(path, is a folder) of what belongs to user alone: its home, its private env files."""
    home = _home(system, user)
    found = system.run(
        ["find", f"{home}/.config/liminati", "-mindepth", "1", "-maxdepth", "1", "-type", "f"]
    ).stdout.split()
    return [(home, True), (f"{home}/.config/liminati", True), *((f, False) for f in found)]


def test_no_service_user_reads_another_services_files_or_roots_state(ready: Stack) -> None:
    system = ready.system
    users = list(SERVICES)
    own = {user: _private_paths(system, user) for user in users}
    root_only = [
        (STATE_DIR, True),
        (f"{STATE_DIR}/pki/ca.key", False),
        (f"{STATE_DIR}/manifest.json", False),
        *(
            (p, False)
            for p in system.run(["find", f"{STATE_DIR}/secrets", "-type", "f"]).stdout.split()
        ),
    ]
    assert len(root_only) >= 7, root_only  # the secrets are there to be refused
    pids = {
        user: [_container_pid(system, user, c.name) for c in containers]
        for user, containers in SERVICES.items()
    }
    for user in users:
        others = [p for other in users if other != user for p in own[other]]
        if user != "nginx-user":
            others.append((LEAF_KEY, False))
        paths = own[user] + others + root_only
        other_pids = [pid for other in users if other != user for pid in pids[other]]
        ask = {"paths": [p for p, _ in paths], "dirs": dict(paths), "pids": other_pids}
        proc = system.run(
            ["runuser", "-u", user, "--", "python3", "-c", PROBE], input=json.dumps(ask)
        )
        got = json.loads(proc.stdout)
        # what is its own it reads (the probe works), everything else is refused
        assert all(got[p] == "ok" for p, _ in own[user]), (user, got)
        allowed = {k: v for k, v in got.items() if v not in ("EACCES", "EPERM")}
        allowed = {k: v for k, v in allowed.items() if k not in dict(own[user])}
        assert not allowed, f"{user} got at {allowed}"
        refused = [k for k, v in got.items() if v in ("EACCES", "EPERM")]
        print(f"{user}: reads its {len(own[user])} own paths; refused {len(refused)}")
    # and nginx-user reads its leaf key (the one exception above)
    system.run(["runuser", "-u", "nginx-user", "--", "head", "-c1", LEAF_KEY])


#: where the Debian 13 client root filesystem keeps dpkg's list of the sudo package's files
SUDO_LIST = "var/lib/dpkg/info/sudo.list"
SUDO_PROBE_USER = "lmn-sudo-probe"


def _client_rootfs() -> Path:
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-rootfs.sh"), "--client"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/build-rootfs.sh --client exited {proc.returncode}:\n{proc.stderr}")
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def sudo_installed(ready: Stack) -> Iterator[BootedSystem]:
    """sudo in the system, with Debian's sudoers (members of group sudo may use it).

    The server's root filesystem has no sudo and the system no network: the package's files
    are copied from the client root filesystem (same Debian 13, same libraries), and removed
    afterwards. A probe user in group sudo shows the check below can tell "allowed" apart.
    """
    system = ready.system
    client_root = _client_rootfs()
    files = []
    for line in (client_root / SUDO_LIST).read_text().splitlines():
        path = client_root / line.lstrip("/")
        if line.strip() not in ("", "/.") and (path.is_symlink() or path.is_file()):
            files.append(line.lstrip("/"))
    present = [f for f in files if (system.root / f).exists() or (system.root / f).is_symlink()]
    assert not present, f"sudo is already in the system: {present[:3]}"
    pack = subprocess.run(
        ["tar", "-C", str(client_root), "-cf", "-", *files], capture_output=True, check=True
    )
    subprocess.run(["tar", "-C", str(system.root), "-xpf", "-"], input=pack.stdout, check=True)
    system.run(["useradd", "--system", "--groups", "sudo", SUDO_PROBE_USER])
    try:
        yield system
    finally:
        system.run(["userdel", SUDO_PROBE_USER], check=False)
        system.run(["rm", "-f", *(f"/{f}" for f in files)], check=False)


def test_no_service_user_is_in_an_admin_group_or_may_use_sudo(sudo_installed: BootedSystem) -> None:
    system = sudo_installed
    allowed = system.run(["sudo", "-n", "-l", "-U", SUDO_PROBE_USER], check=False)
    assert "may run the following commands" in allowed.stdout, output(allowed)
    for user in SERVICES:
        groups = system.run(["id", "-Gn", user]).stdout.split()
        assert groups == [user], f"{user} is in {groups}"
        shadow = system.run(["getent", "shadow", user]).stdout.split(":")
        assert shadow[1].startswith(("!", "*")), f"{user} has a usable password"
        listed = system.run(["sudo", "-n", "-l", "-U", user], check=False)
        assert f"User {user} is not allowed to run sudo" in listed.stdout, output(listed)
        tried = system.run(["runuser", "-u", user, "--", "sudo", "-n", "true"], check=False)
        assert tried.returncode != 0, output(tried)
        assert "password is required" in tried.stderr, output(tried)


def test_one_users_systemctl_cannot_touch_another_users_units(ready: Stack) -> None:
    system = ready.system
    unit = "nginx-proxy.service"
    before = _unit_props(system, "nginx-user", unit)
    assert before["ActiveState"] == "active", before
    nginx_run = f"/run/user/{_uid(system, 'nginx-user')}"
    attempts = {
        # through the system bus, as root does it: refused without polkit's consent
        "-M nginx-user@": ["systemctl", "--user", "-M", "nginx-user@", "stop", unit],
        # straight at nginx-user's own bus socket
        "nginx-user's bus": [
            "env",
            f"XDG_RUNTIME_DIR={nginx_run}",
            f"DBUS_SESSION_BUS_ADDRESS=unix:path={nginx_run}/bus",
            "systemctl",
            "--user",
            "stop",
            unit,
        ],
        "systemd-run -M nginx-user@": [
            "systemd-run",
            "--user",
            "-M",
            "nginx-user@",
            "--wait",
            "--quiet",
            "kill",
            "1",
        ],
    }
    for what, argv in attempts.items():
        proc = system.run_as("vllm-user", argv, check=False)
        assert proc.returncode != 0, f"vllm-user reached nginx-user's manager ({what})"
        assert re.search(r"Permission denied|Operation not permitted|Access denied", proc.stderr), (
            what,
            output(proc),
        )
    # the owner itself can (so the attempts above were refused, not malformed)
    own = system.run_as("nginx-user", ["systemctl", "--user", "is-active", unit], check=False)
    assert own.stdout.strip() == "active", output(own)
    after = _unit_props(system, "nginx-user", unit)
    assert after == before, f"nginx-proxy changed: {before} -> {after}"


# ---- container hardening -----------------------------------------------------------------------


def _quadlet(system: BootedSystem, user: str, name: str) -> list[tuple[str, str]]:
    """The [Container] keys of the quadlet liminati wrote for this container, in order."""
    text = system.run(["cat", f"{_home(system, user)}/.config/containers/systemd/{name}.container"])
    section, pairs = "", []
    for line in text.stdout.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Container" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            pairs.append((key, value))
    return pairs


def _status_field(status: str, name: str) -> str:
    return next(
        line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith(f"{name}:")
    )


CONTAINERS = [(user, c.name) for user, containers in SERVICES.items() for c in containers]


@pytest.mark.parametrize(("user", "name"), CONTAINERS, ids=[n for _, n in CONTAINERS])
def test_container_runs_with_the_hardening_its_quadlet_asks_for(
    ready: Stack, user: str, name: str
) -> None:
    system = ready.system
    keys = _quadlet(system, user, name)
    drop = [v for k, v in keys if k == "DropCapability"]
    add = sorted(f"CAP_{v}" for k, v in keys if k == "AddCapability")
    podman_args = [w for k, v in keys if k == "PodmanArgs" for w in shlex.split(v)]
    tmpfs = {a.split("=", 1)[1].split(":")[0]: a for a in podman_args if a.startswith("--tmpfs=")}
    read_only = ("ReadOnly", "true") in keys
    assert drop == ["ALL"], f"{name}: every capability is dropped first: {drop}"
    assert ("NoNewPrivileges", "true") in keys, keys

    inspected = json.loads(system.run_as(user, ["podman", "inspect", name]).stdout)[0]
    host = inspected["HostConfig"]
    assert "no-new-privileges" in host["SecurityOpt"], host["SecurityOpt"]
    assert sorted(inspected["EffectiveCaps"] or []) == add, inspected["EffectiveCaps"]
    assert host["ReadonlyRootfs"] is read_only
    assert set(host["Tmpfs"] or {}) == set(tmpfs), (host["Tmpfs"], tmpfs)
    for path, arg in tmpfs.items():
        if "mode=" in arg:
            mode = arg.split("mode=")[1].split(",")[0]
            assert f"mode={mode}" in host["Tmpfs"][path], host["Tmpfs"]

    # what the kernel enforces on the container's main process
    pid = inspected["State"]["Pid"]
    status = system.run(["cat", f"/proc/{pid}/status"]).stdout
    assert _status_field(status, "NoNewPrivs") == "1", status
    bounding = int(_status_field(status, "CapBnd"), 16)
    assert bounding == sum(1 << CAP_BITS[c.removeprefix("CAP_")] for c in add), (
        f"{name}: CapBnd {bounding:#x}, quadlet adds {add}"
    )
    if read_only:
        probe = system.run_as(
            user, ["podman", "exec", name, "touch", "/liminati-probe"], check=False
        )
        assert probe.returncode != 0 and "Read-only file system" in probe.stderr, output(probe)
        for path in tmpfs:
            probe_file = f"{path}/liminati-probe"
            write = f'echo x > "{probe_file}" && rm "{probe_file}"'
            wrote = system.run_as(user, ["podman", "exec", name, "sh", "-c", write], check=False)
            assert wrote.returncode == 0, f"{name}: tmpfs {path} not writable\n" + output(wrote)
    print(f"{name}: caps {add or 'none'}, read-only {read_only}, tmpfs {sorted(tmpfs) or 'none'}")


# ---- the renewal unit: sandboxed, and still working ---------------------------------------------


def test_renewal_unit_exposure_is_ok(ready: Stack) -> None:
    proc = ready.system.run(["systemd-analyze", "security", "--no-pager", RENEW_UNIT])
    m = re.search(rf"Overall exposure level for {RENEW_UNIT}: ([0-9.]+) (\w+)", proc.stdout)
    assert m, proc.stdout[-2000:]
    exposure, verdict = float(m.group(1)), m.group(2)
    print(f"systemd-analyze security {RENEW_UNIT}: {exposure} {verdict}")
    assert verdict == "OK" and exposure <= RENEW_EXPOSURE_MAX, proc.stdout


#: the renewal forced, with a missing validator an error: the drop-in only changes ExecStart
FORCE_DROPIN = "/run/systemd/system/liminati-cert-renew.service.d/50-test-force.conf"


def _served_serial(stack: Stack) -> str:
    """The serial (hex) of the certificate nginx serves to the peer for webui.<domain>."""
    script = (
        "import socket, ssl; from cryptography import x509\n"
        f"ctx = ssl.create_default_context(cafile={str(stack.ca)!r})\n"
        f"s = ctx.wrap_socket(socket.create_connection(('{LISTEN_IP}', 443), 10),"
        f" server_hostname='webui.{DOMAIN}')\n"
        "print(f'{x509.load_der_x509_certificate(s.getpeercert(True)).serial_number:x}')\n"
    )
    proc = client(stack, [str(REPO / ".venv" / "bin" / "python"), "-c", script])
    assert proc.returncode == 0, output(proc)
    return proc.stdout.strip()


@pytest.fixture
def nginx_validator(ready: Stack) -> Iterator[None]:
    """nginx in the system, so the renewal's `nginx -t` runs inside its sandbox.

    The server's root filesystem has no nginx package (the container image has it): the
    host's binary (a Debian build, the validators tier needs it) stands in, removed after.
    """
    target = ready.system.root / "usr/local/sbin/nginx"
    assert not target.exists()
    subprocess.run(["cp", "/usr/sbin/nginx", str(target)], check=True)
    try:
        ready.system.run(["nginx", "-v"])
        yield
    finally:
        target.unlink(missing_ok=True)


def test_renewal_unit_renews_and_reloads_nginx_inside_its_sandbox(
    ready: Stack, nginx_validator: None
) -> None:
    system = ready.system
    # as installed: not due, so it checks and keeps the certificate
    system.run(["systemctl", "start", RENEW_UNIT], timeout=120)
    kept = system.run(["journalctl", "-u", RENEW_UNIT, "-n", "20", "-o", "cat"]).stdout
    assert "Certificate kept" in kept, kept

    before = _served_serial(ready)
    program = next(
        line.split("=", 1)[1]
        for line in system.run(["cat", f"/etc/systemd/system/{RENEW_UNIT}"]).stdout.splitlines()
        if line.startswith("ExecStart=")
    )
    system.write_file(
        FORCE_DROPIN,
        "[Service]\nEnvironment=LIMINATI_REQUIRE_VALIDATORS=1\n"
        f"ExecStart=\nExecStart={program} --force\n",
    )
    try:
        system.run(["systemctl", "daemon-reload"])
        started = system.run(["systemctl", "start", RENEW_UNIT], check=False, timeout=120)
        journal = system.run(["journalctl", "-u", RENEW_UNIT, "-n", "20", "-o", "cat"]).stdout
        assert started.returncode == 0, output(started) + journal
    finally:
        system.run(["rm", "-rf", str(Path(FORCE_DROPIN).parent)])
        system.run(["systemctl", "daemon-reload"])
    assert "Certificate renewed" in journal and "nginx reloaded" in journal, journal
    new_serial = re.search(r"new serial ([0-9a-f]+)", journal)
    assert new_serial, journal
    # written by the sandboxed unit with the right owner and mode
    owner = system.run(["stat", "-c", "%U:%G %a", LEAF_KEY]).stdout.strip()
    assert owner == "nginx-user:nginx-user 600", owner
    deadline = time.monotonic() + 15
    while (served := _served_serial(ready)) != new_serial.group(1):
        assert time.monotonic() < deadline, f"nginx serves {served}, renewed {new_serial[1]}"
        time.sleep(0.2)
    assert served != before
    # the renewal recorded what it wrote: the host is still converged
    plan = system.run(
        ["liminati", "plan", "--detailed-exitcode", "--no-diff", *HOST_ARGS],
        check=False,
        timeout=300,
    )
    assert plan.returncode == 0, output(plan)


# ---- the client's real address ------------------------------------------------------------------


def _nginx_log_entry(stack: Stack, marker: str, timeout: float = 15) -> dict[str, object]:
    """The access log entry (JSON) whose user agent is marker, from `liminati logs nginx`."""
    deadline = time.monotonic() + timeout
    while True:
        proc = stack.system.run(
            ["liminati", "logs", "nginx", "-n", "300", *HOST_ARGS], check=False, timeout=60
        )
        assert proc.returncode == 0, output(proc)
        for line in proc.stdout.splitlines():
            if marker in line and "{" in line:
                return json.loads(line[line.index("{") :])  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            pytest.fail(f"no access log line with {marker} in:\n{proc.stdout[-3000:]}")
        time.sleep(0.5)


def test_nginx_logs_the_real_address_of_a_tailnet_client(ready: Stack) -> None:
    marker = f"liminati-real-address-{secrets.token_hex(4)}"
    code, body = status_and_body(https(ready, "webui", "/health", "-A", marker))
    assert code == 200, body
    entry = _nginx_log_entry(ready, marker)
    print(json.dumps(entry))
    assert entry["client"] == CLIENT_IP, entry
    assert entry["host"] == f"webui.{DOMAIN}" and entry["status"] == 200, entry


# ---- liminati logs and restart -----------------------------------------------------------------

#: who writes the lines of nginx-proxy.service: the container, podman, conmon, pasta, systemd
NGINX_IDENTIFIERS = {"nginx-proxy", "podman", "conmon", "pasta", "systemd"}


def test_logs_shows_that_services_lines_only(ready: Stack) -> None:
    system = ready.system
    marker = f"liminati-logs-{secrets.token_hex(4)}"
    assert status_and_body(https(ready, "webui", "/health", "-A", marker))[0] == 200
    _nginx_log_entry(ready, marker)
    nginx = system.run(["liminati", "logs", "nginx", "-n", "1000", *HOST_ARGS]).stdout
    identifiers = {
        m.group(1) for m in re.finditer(r"^\S+ \S+ ([^\[\s:]+)(?:\[\d+\])?:", nginx, re.M)
    }
    assert identifiers and identifiers <= NGINX_IDENTIFIERS, identifiers
    # nginx-user's journal also holds its health checks' transient units: not nginx's lines
    uid = _uid(system, "nginx-user")
    everything = system.run(["journalctl", f"_UID={uid}", "--no-pager", "-o", "cat"]).stdout
    assert "health_status" in everything
    assert "health_status" not in nginx
    for other in ("open-webui", "dnsmasq"):
        theirs = system.run(["liminati", "logs", other, "-n", "1000", *HOST_ARGS]).stdout
        assert theirs.strip() and marker not in theirs, other
    unknown = system.run(["liminati", "logs", "nosuch", *HOST_ARGS], check=False)
    assert unknown.returncode == 2, output(unknown)
    assert "hint: one of: vllm-qwen, open-webui, nginx, dnsmasq, dnsmasq-admin" in unknown.stderr


def test_logs_follow_prints_new_lines_until_stopped(ready: Stack) -> None:
    system = ready.system
    marker = f"liminati-follow-{secrets.token_hex(4)}"
    follower = system.popen(["liminati", "logs", "nginx", "-f", "-n", "0", *HOST_ARGS])
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert follower.stdout is not None
        for line in follower.stdout:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while not any(marker in line for line in seen):
            assert follower.poll() is None, f"logs -f exited {follower.returncode}: {seen}"
            assert time.monotonic() < deadline, f"no line with {marker} within 30 s: {seen}"
            # a request every second: the follower may not be reading the journal yet
            https(ready, "webui", "/health", "-A", marker)
            with_timeout = time.monotonic() + 1
            while time.monotonic() < with_timeout:
                with contextlib.suppress(queue.Empty):
                    seen.append(lines.get(timeout=0.1))
    finally:
        BootedSystem.stop_process(follower, close=False)
        reader.join(timeout=10)
        for pipe in (follower.stdout, follower.stderr):
            if pipe is not None:
                pipe.close()
    entry = json.loads(next(line for line in seen if marker in line).split(": ", 1)[1])
    assert entry["client"] == CLIENT_IP, entry
    # nothing of it is left behind in the system
    left = system.run(["pgrep", "-f", "journalctl _UID="], check=False)
    assert left.returncode == 1, f"journalctl still running: {left.stdout}"


def test_restart_starts_a_new_main_process_that_answers(ready: Stack) -> None:
    system = ready.system
    before = _unit_props(system, "nginx-user", "nginx-proxy.service")
    proc = system.run(["liminati", "restart", "nginx", *HOST_ARGS], check=False, timeout=300)
    assert proc.returncode == 0, output(proc)
    after = _unit_props(system, "nginx-user", "nginx-proxy.service")
    assert after["ActiveState"] == "active", after
    assert after["MainPID"] != before["MainPID"], (before, after)
    assert f"nginx restarted: active (running), main PID {after['MainPID']}." in proc.stderr, (
        output(proc)
    )
    print(f"answers {_webui_answers(ready):.1f}s after the restart returned")
    _wait_healthy(ready, "nginx-user", "nginx-proxy")


# ---- a crash: systemd brings the container back --------------------------------------------------


@pytest.mark.parametrize(
    ("user", "name", "victim"),
    [
        pytest.param("nginx-user", "nginx-proxy", "container", id="nginx-container-process"),
        pytest.param("nginx-user", "nginx-proxy", "MainPID", id="nginx-conmon"),
        pytest.param("dnsmasq-user", "dnsmasq", "container", id="dnsmasq-container-process"),
        # the DNS admin page shares dnsmasq's network namespace (Requires=, PartOf=): when
        # dnsmasq's conmon dies, dnsmasq's first restart fails while podman still removes the
        # old container, the admin page's start job fails with it, and only dnsmasq's
        # Upholds=dnsmasq-admin.service starts it again once dnsmasq is back
        pytest.param("dnsmasq-user", "dnsmasq", "MainPID", id="dnsmasq-conmon"),
    ],
)
def test_kill_9_brings_the_service_back(
    ready: Stack, tier4_timings: dict[str, float], user: str, name: str, victim: str
) -> None:
    """Restart=always: SIGKILL the container's own process or the unit's main process (its
    conmon); systemd starts it again and it answers. For dnsmasq, the DNS admin page in its
    network namespace must come back with it."""
    system = ready.system
    try:
        _kill_and_wait(ready, tier4_timings, user, name, victim)
    finally:
        # whatever happened, leave every unit running for the tests after this one
        if user == "dnsmasq-user" and active(system, user, "dnsmasq-admin") != "active":
            system.run(user_systemctl(user, "start", "dnsmasq-admin.service"), check=False)
            _wait_healthy(ready, user, "dnsmasq-admin", timeout=60)


def _kill_and_wait(
    ready: Stack, tier4_timings: dict[str, float], user: str, name: str, victim: str
) -> None:
    system = ready.system
    unit = f"{name}.service"
    before = _unit_props(system, user, unit)
    pid = _container_pid(system, user, name) if victim == "container" else int(before["MainPID"])
    t0 = time.monotonic()
    system.run(["kill", "-9", str(pid)])
    deadline = t0 + 60
    while True:
        now = _unit_props(system, user, unit)
        if now["ActiveState"] == "active" and int(now["NRestarts"]) > int(before["NRestarts"]):
            break
        assert time.monotonic() < deadline, f"{unit} not back: {now}\n" + diagnose(
            system, user, name
        )
        time.sleep(0.2)
    assert now["MainPID"] != before["MainPID"]
    if name == "nginx-proxy":
        _webui_answers(ready)
    else:
        for _ in range(100):
            dig = client(
                ready, ["dig", f"@{LISTEN_IP}", f"webui.{DOMAIN}", "+short", "+time=1", "+tries=1"]
            )
            if dig.stdout.split() == [LISTEN_IP]:
                break
            time.sleep(0.2)
        assert dig.stdout.split() == [LISTEN_IP], output(dig)
        _wait_healthy(ready, user, "dnsmasq-admin", timeout=90)
        admin = client(
            ready,
            [
                "curl",
                "-sS",
                "-m",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                f"http://{LISTEN_IP}:5380/healthz",
            ],
        )
        assert admin.stdout == "200", output(admin)
    seconds = time.monotonic() - t0
    _wait_healthy(ready, user, name)
    tier4_timings[f"kill -9 {name} {victim}: answering again"] = seconds
    print(f"{name} answers again {seconds:.1f}s after kill -9 of its {victim} ({pid})")
