"""Smoke tests of the tier-4 harness itself: systemd, logind linger, quadlet, rootless podman."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from nspawn import BootedSystem

pytestmark = pytest.mark.system


def _make_service_user(system: BootedSystem, user: str, home: str, first_subid: int) -> int:
    """A system account as liminati makes them: subids, linger, its user manager running."""
    system.run(
        [
            "useradd",
            "--system",
            "--create-home",
            "--home-dir",
            home,
            "--shell",
            "/usr/sbin/nologin",
            user,
        ]
    )
    subids = f"{first_subid}-{first_subid + 65535}"
    system.run(["usermod", "--add-subuids", subids, "--add-subgids", subids, user])
    system.run(["loginctl", "enable-linger", user])
    uid = int(system.run(["id", "-u", user]).stdout)
    system.wait_until(["systemctl", "is-active", "--quiet", f"user@{uid}.service"], timeout=30)
    return uid


def _user_systemctl(system: BootedSystem, user: str, *args: str, check: bool = True) -> str:
    return system.run(["systemctl", "--user", "-M", f"{user}@", *args], check=check).stdout.strip()


def test_harness_system_boots_with_network_online(booted_system: BootedSystem) -> None:
    assert booted_system.state in ("running", "degraded"), booted_system.console()
    assert booted_system.state == "running", f"failed units:\n{booted_system.failed_units}"
    assert booted_system.run(["systemctl", "is-active", "network-online.target"]).stdout == (
        "active\n"
    )
    version = booted_system.run(["podman", "--version"]).stdout
    assert re.match(r"podman version 5\.", version), version
    ci_conf = booted_system.run(["cat", "/etc/containers/containers.conf.d/50-ci.conf"]).stdout
    assert "pids_limit = 0" in ci_conf


def test_harness_lingering_user_gets_a_generated_quadlet_unit(booted_system: BootedSystem) -> None:
    user, home = "smoke-user", "/var/lib/smoke"
    _make_service_user(booted_system, user, home, 200000)

    assert f"{user}:200000:65536" in booted_system.run(["cat", "/etc/subuid"]).stdout.split()
    assert f"{user}:200000:65536" in booted_system.run(["cat", "/etc/subgid"]).stdout.split()
    linger = booted_system.run(["loginctl", "show-user", user, "-p", "Linger"]).stdout
    assert linger.strip() == "Linger=yes"

    booted_system.run_as(user, ["mkdir", "-p", f"{home}/.config/containers/systemd"])
    booted_system.write_file(
        f"{home}/.config/containers/systemd/smoke.container",
        "[Container]\nImage=localhost/nothing:latest\nPull=never\n",
        owner=user,
    )
    _user_systemctl(booted_system, user, "daemon-reload")

    assert _user_systemctl(booted_system, user, "show", "-p", "LoadState", "smoke.service") == (
        "LoadState=loaded"
    )
    assert _user_systemctl(booted_system, user, "is-enabled", "smoke.service") == "generated"


def test_harness_rootless_quadlet_container_runs(booted_system: BootedSystem) -> None:
    """A real rootless container under the user's systemd: pasta (/dev/net/tun), overlay, crun."""
    user, home = "smoke-podman", "/var/lib/smoke-podman"
    _make_service_user(booted_system, user, home, 300000)
    # A registry-free image: /usr/bin/sleep and the libraries it links (from the system itself).
    booted_system.sh(
        """
        d=$(mktemp -d)
        for f in /usr/bin/sleep $(ldd /usr/bin/sleep | grep -o '/[^ ]*'); do
            mkdir -p "$d$(dirname "$f")"; cp -L "$f" "$d$f"
        done
        tar -C "$d" -cf /tmp/sleeper.tar . && chmod 0644 /tmp/sleeper.tar && rm -rf "$d"
        """
    )
    booted_system.run_as(user, ["podman", "import", "-q", "/tmp/sleeper.tar", "localhost/sleeper"])
    booted_system.run_as(user, ["mkdir", "-p", f"{home}/.config/containers/systemd"])
    booted_system.write_file(
        f"{home}/.config/containers/systemd/sleeper.container",
        "[Container]\nImage=localhost/sleeper:latest\nPull=never\n"
        # RunInit: catatonit as PID 1 passes SIGTERM on; sleep as PID 1 would ignore it and
        # every stop would take podman's 10 s timeout.
        "Exec=/usr/bin/sleep infinity\nPublishPort=127.0.0.1:18080:8080\nRunInit=true\n",
        owner=user,
    )
    _user_systemctl(booted_system, user, "daemon-reload")
    try:
        _user_systemctl(booted_system, user, "start", "sleeper.service")
        assert _user_systemctl(booted_system, user, "is-active", "sleeper.service") == "active"
        names = booted_system.run_as(user, ["podman", "ps", "--format", "{{.Names}}"]).stdout
        assert names.split() == ["systemd-sleeper"]
        # pasta forwards the published port on the system's loopback.
        listening = booted_system.run(["ss", "-Htln", "sport = :18080"]).stdout
        assert "127.0.0.1:18080" in listening, listening
    finally:
        _user_systemctl(booted_system, user, "stop", "sleeper.service", check=False)
    assert _user_systemctl(booted_system, user, "is-active", "sleeper.service", check=False) != (
        "active"
    )


def _host_links() -> str:
    with open("/proc/net/dev") as links:
        return links.read()


def test_harness_tailnet_interface_stays_inside(booted_system: BootedSystem) -> None:
    booted_system.add_tailnet_interface("tailscale9", "100.64.0.9/32")
    inside = booted_system.run(["ip", "-br", "addr", "show", "dev", "tailscale9"]).stdout
    assert "100.64.0.9/32" in inside and " UP " in inside, inside
    assert "tailscale9" not in _host_links()


def test_harness_tailnet_peer_reaches_the_system(booted_system: BootedSystem) -> None:
    """A client namespace joined by a veth pair plays a tailnet peer."""
    peer = f"liminati-peer-{os.getpid()}"
    booted_system.add_tailnet_interface(
        "tailscale0", "100.64.0.10/32", peer_netns=peer, peer_address="100.64.0.20/32"
    )
    assert "tailscale0" not in _host_links()
    booted_system.run(
        [
            "systemd-run",
            "--unit=peer-probe",
            "--property=WorkingDirectory=/etc",
            "python3",
            "-m",
            "http.server",
            "--bind",
            "100.64.0.10",
            "18081",
        ]
    )
    try:
        booted_system.wait_until(["sh", "-c", "ss -Htln 'src 100.64.0.10:18081' | grep -q ."])
        fetched = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                peer,
                "curl",
                "-sS",
                "--noproxy",
                "*",
                "--max-time",
                "5",
                "http://100.64.0.10:18081/hostname",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert fetched.stdout.strip() == "liminati-test", fetched.stderr
        # The server saw the peer's own address, as nginx must.
        booted_system.wait_until(
            ["sh", "-c", "journalctl -u peer-probe -o cat | grep -q '^100.64.0.20 '"], timeout=10
        )
    finally:
        booted_system.run(["systemctl", "stop", "peer-probe"], check=False)


def test_harness_installs_liminati_offline(liminati_system: BootedSystem) -> None:
    system = liminati_system
    target = system.run(["readlink", "-f", "/usr/local/bin/liminati"]).stdout.strip()
    assert target == "/opt/liminati/bin/liminati"
    # The binary dependencies (pydantic-core, cryptography) load on the system's CPython 3.13.
    system.run(
        [
            "/opt/liminati/bin/python",
            "-c",
            "import click, cryptography.x509, jinja2, pydantic, rich, tomli_w, liminati",
        ]
    )
    python = system.run(["/opt/liminati/bin/python", "-c", "import sys; print(sys.version)"])
    assert python.stdout.startswith("3.13"), python.stdout
    # The console script works from root's plain PATH.
    usage = system.run(["liminati", "--help"]).stdout
    assert usage.startswith("Usage: liminati"), usage
