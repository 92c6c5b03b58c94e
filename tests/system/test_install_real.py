"""Tier 4: `liminati install` on a real (booted) Debian 13 host, without starting containers.

The booted system has no container images, so every install here runs with `--no-start`
(starting units is covered elsewhere). The module-scoped fixture `installed` performs the first
install once; every test only reads the result or leaves the system as it found it (a refused
install changes nothing), so the tests do not depend on their order.

What the real install must produce is taken from a staged install of the same configuration,
run on the host with `--root`: the same paths, modes and owners.
"""

from __future__ import annotations

import itertools
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nspawn import BootedSystem

pytestmark = pytest.mark.system

LISTEN_IP = "100.64.0.10"
STAGE_ARGS = ["--listen-ip", LISTEN_IP, "--no-start"]
INSTALL = ["liminati", "install", *STAGE_ARGS]
PLAN = ["liminati", "plan", "--listen-ip", LISTEN_IP, "--no-start"]
CDI_STAND_IN = "/etc/cdi/nvidia.yaml"

#: user -> (home, the quadlet it gets); the layout table in the README
SERVICES = {
    "vllm-user": ("/var/lib/vllm", "vllm-qwen"),
    "webui-user": ("/var/lib/webui", "open-webui"),
    "nginx-user": ("/var/lib/nginx-proxy", "nginx-proxy"),
    "dnsmasq-user": ("/var/lib/dnsmasq-llm", "dnsmasq"),
}
STATE_DIR = "/var/lib/liminati"
SYSCTL_DROPIN = "/etc/sysctl.d/60-liminati-unprivileged-ports.conf"
#: files the staging executor writes for itself, not part of an install
STAGING_META = {".liminati-staging.json", ".liminati-staged-commands.sh"}

#: Everything an install may touch: a refused install must leave all of it as it was.
SNAPSHOT_ROOTS = [
    STATE_DIR,
    "/etc/liminati",
    *(home for home, _ in SERVICES.values()),
    "/etc/sysctl.d",
    "/etc/passwd",
    "/etc/group",
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/subuid",
    "/etc/subgid",
    "/var/lib/systemd/linger",
]

# Run inside the container: path -> [type, mode, uid, gid, sha256 or link target].
SNAPSHOT_SCRIPT = r"""
import hashlib, json, os, stat, sys
out = {}
def add(p):
    st = os.lstat(p)
    if stat.S_ISREG(st.st_mode):
        with open(p, "rb") as fh:
            extra = hashlib.sha256(fh.read()).hexdigest()
        kind = "file"
    elif stat.S_ISDIR(st.st_mode):
        kind, extra = "dir", None
    elif stat.S_ISLNK(st.st_mode):
        kind, extra = "link", os.readlink(p)
    else:
        kind, extra = "other", None
    out[p] = [kind, oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid, extra]
for root in sys.argv[1:]:
    if not os.path.lexists(root):
        out[root] = None
        continue
    add(root)
    if os.path.isdir(root) and not os.path.islink(root):
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                add(os.path.join(dirpath, name))
json.dump(out, sys.stdout, sort_keys=True)
"""


@dataclass
class Installed:
    system: BootedSystem
    first: subprocess.CompletedProcess[str]
    seconds: float
    #: the staged install of the same configuration, on the host
    staged_root: Path
    staged: dict  # type: ignore[type-arg]  # .liminati-staging.json


def _output(proc: subprocess.CompletedProcess[str]) -> str:
    return f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


def _ensure_tailnet_address(system: BootedSystem) -> None:
    """100.64.0.10 on an interface inside; another test of the session may have added it."""
    if f" {LISTEN_IP}/" in system.run(["ip", "-4", "-o", "addr", "show"]).stdout:
        return
    links = system.run(["ip", "-o", "link", "show"]).stdout
    name = "tailscale0" if ": tailscale0" not in links else "ltailnet0"
    system.add_tailnet_interface(name, f"{LISTEN_IP}/32")


def _snapshot(system: BootedSystem) -> dict[str, object]:
    proc = system.run(["python3", "-c", SNAPSHOT_SCRIPT, *SNAPSHOT_ROOTS])
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _diff(before: dict[str, object], after: dict[str, object]) -> list[str]:
    lines = []
    for path in sorted(set(before) | set(after)):
        if before.get(path, "<absent>") != after.get(path, "<absent>"):
            lines.append(f"{path}: {before.get(path, '<absent>')} -> {after.get(path, '<absent>')}")
    return lines


def _stage_on_host(root: Path) -> dict:  # type: ignore[type-arg]
    """`liminati install --root` with the same configuration (built-in defaults) as inside."""
    proc = subprocess.run(
        [sys.executable, "-m", "liminati", "install", "--root", str(root), *STAGE_ARGS],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "LIMINATI_REQUIRE_VALIDATORS"},
    )
    assert proc.returncode == 0, "staged install on the host failed\n" + _output(proc)
    return json.loads((root / ".liminati-staging.json").read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def installed(liminati_system: BootedSystem, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The first real install, done once for the module (asserted in its own test)."""
    system = liminati_system
    leftover = system.run(["test", "-e", STATE_DIR], check=False)
    if leftover.returncode == 0:
        pytest.fail(
            f"{STATE_DIR} exists before this module's first install: another module of the "
            "session installed liminati into the shared system first"
        )
    _ensure_tailnet_address(system)
    # Stand-in at the GPU boundary: no GPU or NVIDIA toolkit here, so an empty CDI
    # specification takes the place of `nvidia-ctk cdi generate`'s (preflight checks it exists;
    # --no-start means no container ever asks podman for the device).
    system.write_file(CDI_STAND_IN, "# stand-in: this test system has no GPU\n", mode=0o644)
    staged_root = tmp_path_factory.mktemp("staged") / "root"
    staged = _stage_on_host(staged_root)
    t0 = time.monotonic()
    first = system.run(INSTALL, check=False, timeout=300)
    return Installed(system, first, time.monotonic() - t0, staged_root, staged)


def _require_first_install(installed: Installed) -> None:
    if installed.first.returncode != 0:
        pytest.fail("the first install failed (see test_first_install_succeeds)")


@pytest.fixture
def system(installed: Installed) -> BootedSystem:
    _require_first_install(installed)
    return installed.system


# ---- 1. the first install -------------------------------------------------------------------


def test_first_install_succeeds(installed: Installed) -> None:
    proc = installed.first
    assert proc.returncode == 0, _output(proc)
    assert "Done:" in proc.stderr + proc.stdout, _output(proc)
    assert "error" not in proc.stderr.lower(), _output(proc)
    # Units are generated and reloaded, never started with --no-start.
    assert "daemon-reload" in proc.stderr
    assert "started " not in proc.stderr, _output(proc)
    print(f"first install took {installed.seconds:.1f}s")


def test_service_users_are_system_users_with_nologin(
    installed: Installed, system: BootedSystem
) -> None:
    for user, (home, _) in SERVICES.items():
        fields = system.run(["getent", "passwd", user]).stdout.strip().split(":")
        name, _, uid, gid, _, got_home, shell = fields
        assert name == user
        assert shell == "/usr/sbin/nologin", fields
        assert got_home == home, fields
        assert int(uid) < 1000, f"{user} is not a system user: {fields}"
        # --user-group: a primary group of the same name, also a system group
        group = system.run(["getent", "group", gid]).stdout.strip().split(":")
        assert group[0] == user, group
        assert int(gid) < 1000, group
        # the same account the staged install describes
        want = installed.staged["users"][user]
        assert (got_home, shell) == (want["home"], want["shell"])


@pytest.mark.parametrize("idfile", ["/etc/subuid", "/etc/subgid"])
def test_each_user_has_its_own_subordinate_id_range(system: BootedSystem, idfile: str) -> None:
    entries = []
    for line in system.run(["cat", idfile]).stdout.splitlines():
        if line.strip() and not line.startswith("#"):
            owner, start, count = line.strip().split(":")
            entries.append((owner, int(start), int(count)))
    for user in SERVICES:
        mine = [e for e in entries if e[0] == user]
        assert len(mine) == 1, f"{idfile}: {user} has {mine}"
        assert mine[0][2] == 65536, f"{idfile}: {mine}"
    # no two ranges overlap (ours with each other, or with any other account's)
    ranges = sorted((start, start + count, owner) for owner, start, count in entries)
    for (s1, e1, o1), (s2, e2, o2) in itertools.pairwise(ranges):
        assert e1 <= s2, f"{idfile}: {o1} [{s1}, {e1}) overlaps {o2} [{s2}, {e2})"


def test_linger_enabled_and_user_managers_active(system: BootedSystem) -> None:
    for user in SERVICES:
        system.run(["test", "-f", f"/var/lib/systemd/linger/{user}"])
        uid = system.run(["id", "-u", user]).stdout.strip()
        system.wait_until(["systemctl", "is-active", "--quiet", f"user@{uid}.service"], timeout=60)


def _staged_tree(installed: Installed) -> dict[str, tuple[str, str, str]]:
    """path -> (type, mode, owner:group) for what the staged install created.

    Directories that already exist in the pristine root filesystem (/etc, /var/lib, ...) are
    not the install's. Paths not in the staging's owner list are root's (the state folder, its
    lock): the staging executor itself runs as root.
    """
    root = installed.staged_root
    pristine = installed.system.rootfs
    owners = installed.staged["owners"]
    tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            host = Path(dirpath) / name
            rel = host.relative_to(root)
            if str(rel) in STAGING_META:
                continue
            path = "/" + str(rel)
            if path not in owners and os.path.lexists(pristine / rel):
                continue
            st = host.lstat()
            kind = "dir" if host.is_dir() and not host.is_symlink() else "file"
            assert stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode), host
            owner, group = owners.get(path, ("root", "root"))
            tree[path] = (kind, f"{stat.S_IMODE(st.st_mode):o}", f"{owner}:{group}")
    return tree


def _real_tree(system: BootedSystem, tops: list[str]) -> dict[str, tuple[str, str, str]]:
    proc = system.run(
        ["find", *tops, "-exec", "stat", "-c", "%n|%F|%a|%U:%G", "{}", "+"], check=False
    )
    tree = {}
    for line in proc.stdout.splitlines():
        path, ftype, mode, owner = line.split("|")
        kind = "dir" if ftype == "directory" else "file" if ftype.startswith("regular") else ftype
        tree[path] = (kind, mode, owner)
    assert proc.returncode == 0, proc.stderr
    return tree


def test_paths_modes_and_owners_match_the_staged_install(
    installed: Installed, system: BootedSystem
) -> None:
    want = _staged_tree(installed)
    assert SYSCTL_DROPIN in want and STATE_DIR in want, sorted(want)
    # the topmost created paths: find walks each of them inside
    tops = sorted(p for p in want if os.path.dirname(p) not in want)
    got = _real_tree(system, tops)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    assert not missing, f"staged but not on the real host: {missing}"
    assert not extra, f"on the real host but not staged: {extra}"
    wrong = [f"{p}: staged {want[p]}, real {got[p]}" for p in sorted(want) if want[p] != got[p]]
    assert not wrong, "\n".join(wrong)


def test_ca_key_is_root_only_and_leaf_key_is_nginx_users(system: BootedSystem) -> None:
    def st(path: str) -> str:
        return system.run(["stat", "-c", "%U:%G %a %F", path]).stdout.strip()

    assert st(f"{STATE_DIR}/pki") == "root:root 700 directory"
    assert st(f"{STATE_DIR}/pki/ca.key") == "root:root 400 regular file"
    assert st(f"{STATE_DIR}/secrets") == "root:root 700 directory"
    assert st("/var/lib/nginx-proxy/ssl/liminati.key") == "nginx-user:nginx-user 600 regular file"
    # and it works as intended: nginx-user reads its key, nobody else reads either key
    leaf_key = "/var/lib/nginx-proxy/ssl/liminati.key"
    system.run(["runuser", "-u", "nginx-user", "--", "test", "-r", leaf_key])
    for user in ("nginx-user", "webui-user", "nobody"):
        denied = system.run(
            ["runuser", "-u", user, "--", "cat", f"{STATE_DIR}/pki/ca.key"], check=False
        )
        assert denied.returncode != 0, f"{user} can read the CA key"
    denied = system.run(
        ["runuser", "-u", "webui-user", "--", "cat", leaf_key],
        check=False,
    )
    assert denied.returncode != 0, "webui-user can read the leaf key"


def test_unprivileged_port_start_is_53(system: BootedSystem) -> None:
    got = system.run(["sysctl", "-n", "net.ipv4.ip_unprivileged_port_start"]).stdout.strip()
    assert got == "53"
    assert "53" in system.run(["cat", SYSCTL_DROPIN]).stdout


UNIT_PROPS = "LoadState,UnitFileState,ActiveState,SourcePath"


def user_systemctl(user: str) -> list[str]:
    return ["systemctl", "--user", "-M", f"{user}@"]


def test_quadlet_units_are_loaded_generated_and_not_started(system: BootedSystem) -> None:
    for user, (home, quadlet) in SERVICES.items():
        unit = f"{quadlet}.service"
        show = system.run([*user_systemctl(user), "show", unit, "-p", UNIT_PROPS]).stdout
        props = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
        assert props["LoadState"] == "loaded", (user, props)
        # quadlet's generator makes the unit: it is neither enabled nor disabled, "generated"
        assert props["UnitFileState"] == "generated", (user, props)
        assert props["SourcePath"] == f"{home}/.config/containers/systemd/{quadlet}.container"
        assert props["ActiveState"] == "inactive", f"--no-start started {unit}: {props}"
        enabled = system.run([*user_systemctl(user), "is-enabled", unit], check=False)
        assert enabled.stdout.strip() == "generated", _output(enabled)
        # each user's manager has only its own quadlet
        for other, (_, other_quadlet) in SERVICES.items():
            if other == user:
                continue
            load = system.run(
                [*user_systemctl(user), "show", "-p", "LoadState", f"{other_quadlet}.service"]
            ).stdout.strip()
            assert load == "LoadState=not-found", (user, other_quadlet, load)


# ---- 2. a second install changes nothing ------------------------------------------------------


def test_second_install_changes_nothing(system: BootedSystem) -> None:
    before = _snapshot(system)
    proc = system.run(INSTALL, check=False, timeout=300)
    assert proc.returncode == 0, _output(proc)
    assert "Nothing to change" in proc.stdout + proc.stderr, _output(proc)
    assert not _diff(before, _snapshot(system))

    plan = system.run([*PLAN, "--detailed-exitcode"], check=False, timeout=300)
    assert plan.returncode == 0, _output(plan)


# ---- 3. preflight refuses, and nothing changes -----------------------------------------------

OTHER_CONFIG = "/tmp/liminati-test-other-domain.toml"
SQUATTER = "liminati-test-port-squatter"
HTTP_SERVER = ["python3", "-m", "http.server", "--bind", LISTEN_IP, "8081"]


@pytest.fixture
def changed_config(system: BootedSystem) -> Iterator[str]:
    """A config (readable by anyone) with which an install WOULD change things."""
    system.write_file(OTHER_CONFIG, '[webui]\nclient_max_body_size = "250m"\n', mode=0o644)
    plan = system.run(
        [*PLAN, "--config", OTHER_CONFIG, "--detailed-exitcode", "--no-diff"],
        check=False,
        timeout=300,
    )
    assert plan.returncode == 3, "the other domain should change something\n" + _output(plan)
    yield OTHER_CONFIG
    system.run(["rm", "-f", OTHER_CONFIG])


@pytest.fixture
def port_squatter(system: BootedSystem) -> Iterator[int]:
    """A foreign process listening on 100.64.0.10:8081 (ports.dist); yields its pid."""
    system.run(["systemd-run", f"--unit={SQUATTER}", "--collect", "--quiet", *HTTP_SERVER])
    try:
        system.wait_until(
            ["python3", "-c", f"import socket; socket.create_connection(('{LISTEN_IP}', 8081), 1)"],
            timeout=20,
        )
        pid = system.run(
            ["systemctl", "show", "-p", "MainPID", "--value", f"{SQUATTER}.service"]
        ).stdout.strip()
        yield int(pid)
    finally:
        system.run(["systemctl", "stop", f"{SQUATTER}.service"], check=False)


def test_preflight_refuses_a_taken_port_and_changes_nothing(
    system: BootedSystem, changed_config: str, port_squatter: int
) -> None:
    before = _snapshot(system)
    proc = system.run([*INSTALL, "--config", changed_config], check=False, timeout=300)
    after = _snapshot(system)
    assert proc.returncode == 1, _output(proc)
    lines = [line for line in proc.stderr.splitlines() if "8081" in line]
    assert lines, _output(proc)
    assert "ports.dist" in lines[0], _output(proc)
    assert LISTEN_IP in lines[0], _output(proc)
    assert f"python3 (pid {port_squatter})" in lines[0], _output(proc)
    assert "nothing was changed" in proc.stderr, _output(proc)
    assert not _diff(before, after), "\n".join(_diff(before, after))


@pytest.mark.parametrize(
    "as_nobody",
    [
        pytest.param(["runuser", "-u", "nobody", "--"], id="runuser"),
        pytest.param(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"],
            id="setpriv",
        ),
    ],
)
def test_install_as_non_root_is_refused_and_changes_nothing(
    system: BootedSystem, changed_config: str, as_nobody: list[str]
) -> None:
    before = _snapshot(system)
    proc = system.run([*as_nobody, *INSTALL, "--config", changed_config], check=False, timeout=300)
    after = _snapshot(system)
    assert not _diff(before, after), "\n".join(_diff(before, after))
    assert proc.returncode == 1, _output(proc)
    assert "error: not running as root" in proc.stderr, _output(proc)


def test_preflight_refuses_a_gpu_model_without_the_cdi_specification(
    system: BootedSystem, changed_config: str
) -> None:
    before = _snapshot(system)
    system.run(["mv", CDI_STAND_IN, CDI_STAND_IN + ".away"])
    try:
        proc = system.run([*INSTALL, "--config", changed_config], check=False, timeout=300)
    finally:
        system.run(["mv", CDI_STAND_IN + ".away", CDI_STAND_IN])
    assert proc.returncode == 1, _output(proc)
    assert "no NVIDIA CDI specification (/etc/cdi/nvidia.yaml)" in proc.stderr, _output(proc)
    assert "nvidia-ctk cdi generate" in proc.stderr
    assert not _diff(before, _snapshot(system)), "\n".join(_diff(before, _snapshot(system)))
