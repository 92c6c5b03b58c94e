"""`liminati cert` on a staged install: status, renewal when due, rotation of the CA."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from clitools import Clock, RunCli, make_env
from liminati import pki
from liminati.cli.main import main
from liminati.render.systemd import render_renew_service

IP = "100.64.0.10"
CA = "var/lib/liminati/pki/ca.crt"
LEAF = "var/lib/nginx-proxy/ssl/liminati.crt"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cli(clock: Clock, capsys: pytest.CaptureFixture[str]) -> RunCli:
    env = make_env(clock)

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv), env)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def root(cli: RunCli, tmp_path: Path) -> Path:
    root = tmp_path / "root"
    code, _, err = cli("install", "--root", str(root), "--listen-ip", IP)
    assert code == 0, err
    return root


def serial(root: Path) -> int:
    return pki.load_cert((root / LEAF).read_bytes(), "leaf").serial_number


def staged(root: Path) -> list[str]:
    return (root / ".liminati-staged-commands.sh").read_text().splitlines()


def test_cert_status_reports_ca_and_leaf(cli: RunCli, root: Path) -> None:
    code, out, _ = cli("cert", "status", "--root", str(root), "--json")
    assert code == 0
    status = json.loads(out)
    assert status["problems"] == []
    ca, leaf = status["ca"], status["leaf"]
    assert ca["ca"] is True and ca["path_length"] == 0
    assert ca["permitted_dns"] == ["liminati.internal"]
    assert ca["days_left"] == 3650
    assert ca["sha256"] == pki.fingerprint((root / CA).read_bytes())
    assert sorted(leaf["san"]) == ["*.liminati.internal", "liminati.internal"]
    assert leaf["days_left"] == 365
    assert leaf["matches_key"] is True and leaf["chains_to_ca"] is True
    code, out, _ = cli("cert", "status", "--root", str(root))
    assert code == 0
    assert "permitted names liminati.internal, no IP addresses" in out
    assert "key          matches" in out


def test_cert_renew_keeps_a_valid_leaf_and_renews_when_due(
    cli: RunCli, root: Path, clock: Clock
) -> None:
    first = serial(root)
    code, _, err = cli("cert", "renew", "--root", str(root), "--listen-ip", IP)
    assert code == 0
    assert "Certificate kept: leaf valid for 365 more days" in err
    assert serial(root) == first

    clock.now += timedelta(days=340)  # 25 days left: inside the 30-day window
    code, out, err = cli("cert", "status", "--root", str(root))
    assert code == 4
    assert "the leaf expires in 25 days" in err
    code, out, err = cli("plan", "--root", str(root), "--listen-ip", IP, "--detailed-exitcode")
    assert code == 3
    assert "leaf expires in 25 days (renewing at 30): issue a new one valid 365 days" in out
    code, _, err = cli("cert", "renew", "--root", str(root), "--listen-ip", IP)
    assert code == 0, err
    assert "Certificate renewed: leaf expires in 25 days (renewing at 30)" in err
    assert "nginx reloaded" in err
    assert serial(root) != first
    assert "systemctl --user -M nginx-user@ reload nginx-proxy.service" in staged(root)
    # renewal recorded what it did: the next install and plan find nothing to do
    code, _, err = cli("plan", "--root", str(root), "--listen-ip", IP, "--detailed-exitcode")
    assert code == 0, err
    code, out, _ = cli("cert", "status", "--root", str(root), "--json")
    assert json.loads(out)["leaf"]["days_left"] == 365


def test_cert_renew_force_renews_now(cli: RunCli, root: Path) -> None:
    first = serial(root)
    code, _, err = cli("cert", "renew", "--force", "--root", str(root), "--listen-ip", IP)
    assert code == 0, err
    assert "renewal forced" in err
    assert serial(root) != first


def test_plan_reissues_a_leaf_that_does_not_match_its_key(cli: RunCli, root: Path) -> None:
    key = root / "var/lib/nginx-proxy/ssl/liminati.key"
    key.write_bytes(pki.key_pem(pki.new_key()))
    _, out, _ = cli("plan", "--root", str(root), "--listen-ip", IP)
    assert "~ update    leaf          certificate *.liminati.internal" in out
    assert "leaf certificate does not match its key" in out


def test_cert_rotate_ca_needs_yes_then_replaces_and_archives(cli: RunCli, root: Path) -> None:
    old = (root / CA).read_bytes()
    code, _, err = cli("cert", "rotate-ca", "--root", str(root), "--listen-ip", IP)
    assert code == 2
    assert "rotating the CA breaks HTTPS for every client" in err
    assert (root / CA).read_bytes() == old

    code, _, err = cli("cert", "rotate-ca", "--yes", "--root", str(root), "--listen-ip", IP)
    assert code == 0, err
    new = (root / CA).read_bytes()
    assert new != old
    assert f"new CA sha256 {pki.fingerprint(new)} (was {pki.fingerprint(old)})" in err
    retired = list((root / "var/lib/liminati/pki/retired").glob("*/ca.crt"))
    assert [p.read_bytes() for p in retired] == [old]
    assert (root / "var/lib/nginx-proxy/ssl/dist/liminati-ca.crt").read_bytes() == new
    previous = root / "var/lib/nginx-proxy/ssl/dist/liminati-ca-previous.crt"
    assert previous.read_bytes() == old
    leaf = pki.load_cert((root / LEAF).read_bytes(), "leaf")
    leaf.verify_directly_issued_by(pki.load_cert(new, "ca"))
    script = (root / "var/lib/nginx-proxy/dist/install-client.sh").read_text()
    assert pki.fingerprint(new) in script and pki.fingerprint(old) not in script
    code, _, _ = cli("plan", "--root", str(root), "--listen-ip", IP, "--detailed-exitcode")
    assert code == 0

    code, _, err = cli("cert", "rotate-ca", "--forget-previous", "--root", str(root))
    assert code == 0
    assert not previous.exists()
    code, _, err = cli("plan", "--root", str(root), "--listen-ip", IP, "--detailed-exitcode")
    assert code == 0, err


def test_cert_rotate_ca_then_new_domain(cli: RunCli, root: Path, tmp_path: Path) -> None:
    """Moving to another domain is what rotate-ca is for."""
    config = tmp_path / "c.toml"
    config.write_text('domain = "other.internal"\n')
    args = ("--root", str(root), "--listen-ip", IP, "--config", str(config))
    assert cli("install", *args)[0] == 2
    code, _, err = cli("cert", "rotate-ca", "--yes", *args)
    assert code == 0, err
    ca = pki.load_cert((root / CA).read_bytes(), "ca")
    assert pki.permitted_domains(ca) == ["other.internal"]
    assert cli("plan", *args, "--detailed-exitcode")[0] == 0


def test_install_enables_the_renewal_timer(root: Path) -> None:
    commands = staged(root)
    assert "systemctl enable --now liminati-cert-renew.timer" in commands
    service = (root / "etc/systemd/system/liminati-cert-renew.service").read_text()
    assert " -m liminati cert renew\n" in service
    timer = (root / "etc/systemd/system/liminati-cert-renew.timer").read_text()
    assert "OnCalendar=daily" in timer and "RandomizedDelaySec=" in timer


def test_the_renewal_reads_the_config_the_install_was_given(cli: RunCli, tmp_path: Path) -> None:
    """`install --config X`: the daily renewal runs with `--config X` (the domain and the
    users are in it); a config in a home folder is bound into the sandbox read-only."""
    root = tmp_path / "fresh"
    config = tmp_path / "site.toml"
    config.write_text('domain = "corp.internal"\n')
    code, _, err = cli("install", "--root", str(root), "--listen-ip", IP, "--config", str(config))
    assert code == 0, err
    service = (root / "etc/systemd/system/liminati-cert-renew.service").read_text()
    assert f" -m liminati cert renew --config {config}\n" in service
    assert "ProtectHome=yes\n" in service and "BindReadOnlyPaths" not in service

    in_home = render_renew_service(("/usr/local/bin/liminati",), ("/var/lib/liminati",),
                                   "/root/liminati.toml")  # fmt: skip
    lines = in_home.splitlines()
    assert "ExecStart=/usr/local/bin/liminati cert renew --config /root/liminati.toml" in lines
    assert "ProtectHome=tmpfs" in lines and "BindReadOnlyPaths=/root/liminati.toml" in lines
    assert "ProtectHome=yes" not in lines
