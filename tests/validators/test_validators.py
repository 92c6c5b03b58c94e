"""Tier 1: every rendered file passes the real program that will read it; bad ones are refused.

Needs nginx, dnsmasq, quadlet (podman >= 4.4), systemd-analyze and shellcheck: scripts/test.sh
installs them. A missing one fails the test (strict mode), it never skips.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from clitools import RunCli
from golden_tree import CASES, GOLDEN, UPDATE, fixture_material, render_case
from liminati.apply.validate import split_dryrun, validate
from liminati.errors import ValidationError
from liminati.executor import StagingExecutor
from liminati.render import Desired, build_desired

pytestmark = pytest.mark.validators


def _replace(desired: Desired, path_suffix: str, edit: Callable[[str], str]) -> Desired:
    files = tuple(
        dataclasses.replace(f, content=edit(f.content.decode()).encode())
        if f.path.endswith(path_suffix)
        else f
        for f in desired.files
    )
    return dataclasses.replace(desired, files=files)


@pytest.mark.parametrize("case", CASES)
def test_validators_accept_every_rendered_case(case: str, tmp_path: Path) -> None:
    # the renewal service's ExecStart must name a program that exists here
    config, desired = render_case(case, program=(sys.executable, "-m", "liminati"))
    report = validate(StagingExecutor(tmp_path), config, desired, strict=True)
    assert report.missing == []
    users = {u.user for u in desired.units}
    expected = {
        "nginx -t",
        "dnsmasq --test",
        "bash -n install-client.sh",
        "shellcheck install-client.sh",
        "systemd-analyze verify (renewal timer)",
    }
    expected |= {f"quadlet -dryrun ({u})" for u in users}
    expected |= {f"systemd-analyze verify ({u})" for u in users}
    assert set(report.ran) == expected


def test_renewal_unit_with_a_config_in_a_home_folder_passes_systemd(tmp_path: Path) -> None:
    """`install --config /root/site.toml`: the renewal binds that file into its sandbox
    (ProtectHome=tmpfs, BindReadOnlyPaths=), and systemd-analyze verify accepts the unit."""
    config, _ = render_case("default")
    desired = build_desired(
        config,
        config.listen_ip,
        fixture_material(),
        (sys.executable, "-m", "liminati"),
        "/root/site.toml",
    )
    service = desired.file("/etc/systemd/system/liminati-cert-renew.service").content.decode()
    assert "BindReadOnlyPaths=/root/site.toml\n" in service
    report = validate(StagingExecutor(tmp_path), config, desired, strict=True, groups=["systemd"])
    assert report.ran == ["systemd-analyze verify (renewal timer)"]


def _podman_run_lines(generated: str) -> str:
    lines = [
        line for line in generated.splitlines() if line.startswith(("ExecStart=", "ExecReload="))
    ]
    # the podman path depends on where the validator's podman lives: normalise it
    return "\n".join(re.sub(r"=\S*/podman ", "=/usr/bin/podman ", line) for line in lines) + "\n"


@pytest.mark.parametrize("case", CASES)
def test_quadlet_generated_podman_argv_matches_golden(case: str, tmp_path: Path) -> None:
    """The `podman run` command lines quadlet generates, compared whole with golden files."""
    _config, desired = render_case(case)
    quadlet = os.environ.get("LIMINATI_QUADLET_BIN", "/usr/libexec/podman/quadlet")
    assert Path(quadlet).is_file(), "quadlet not found: run scripts/install-test-deps.sh"
    for unit in desired.units:
        src = tmp_path / unit.user
        src.mkdir(exist_ok=True)
        (src / Path(unit.quadlet).name).write_bytes(desired.file(unit.quadlet).content)
        result = subprocess.run(
            [quadlet, "-dryrun", "-user"],
            capture_output=True,
            text=True,
            env={"QUADLET_UNIT_DIRS": str(src)},
            check=False,
        )
        assert result.returncode == 0, result.stderr
        generated = split_dryrun(result.stdout)[unit.unit]
        golden = GOLDEN / "podman-run" / case / f"{unit.unit}.txt"
        actual = _podman_run_lines(generated)
        if UPDATE:
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(actual)
        assert actual == golden.read_text(), f"{unit.unit} argv differs from {golden}"
        if unit.unit.startswith("vllm"):
            # the internal key travels in an env file: never on a command line
            assert "--env-file" in actual and "API_KEY" not in actual


def test_validator_rejects_bad_nginx_directive(tmp_path: Path) -> None:
    config, desired = render_case("default")
    bad = _replace(desired, "conf.d/20-webui.conf", lambda t: t.replace("proxy_pass", "proxy_pas"))
    with pytest.raises(ValidationError) as info:
        validate(StagingExecutor(tmp_path), config, bad, strict=True, groups=["nginx"])
    assert 'unknown directive "proxy_pas"' in info.value.message
    assert "/var/lib/nginx-proxy/conf.d/20-webui.conf" in info.value.message


def test_validator_rejects_bad_dnsmasq_line(tmp_path: Path) -> None:
    config, desired = render_case("default")
    bad = _replace(desired, "dnsmasq.conf", lambda t: t.replace("address=/", "adress=/"))
    with pytest.raises(ValidationError) as info:
        validate(StagingExecutor(tmp_path), config, bad, strict=True, groups=["dnsmasq"])
    assert "bad option at line" in info.value.message


def test_validator_rejects_unknown_quadlet_key(tmp_path: Path) -> None:
    config, desired = render_case("default")
    bad = _replace(
        desired,
        "open-webui.container",
        lambda t: t.replace("[Container]\n", "[Container]\nFooBar=1\n"),
    )
    with pytest.raises(ValidationError) as info:
        validate(StagingExecutor(tmp_path), config, bad, strict=True, groups=["quadlet"])
    assert "unsupported key 'FooBar' in group 'Container'" in info.value.message


def test_validator_fails_on_systemd_analyze_warning(tmp_path: Path) -> None:
    """systemd-analyze verify exits 0 on a bad value: any line it prints must fail."""
    config, desired = render_case("default")
    bad = _replace(
        desired, "dnsmasq.container", lambda t: t.replace("Restart=always", "Restart=sometimes")
    )
    with pytest.raises(ValidationError) as info:
        validate(StagingExecutor(tmp_path), config, bad, strict=True, groups=["quadlet"])
    assert "Failed to parse service restart specifier" in info.value.message


def test_validator_rejects_script_shellcheck_warning(tmp_path: Path) -> None:
    config, desired = render_case("default")
    bad = _replace(
        desired,
        "install-client.sh",
        lambda t: t.replace("\n{ main", "\necho $UNQUOTED_THING\n{ main"),
    )
    with pytest.raises(ValidationError) as info:
        validate(StagingExecutor(tmp_path), config, bad, strict=True, groups=["shell"])
    assert "SC2086" in info.value.message


def test_install_refuses_config_nginx_rejects_and_writes_nothing(
    run_cli: RunCli, tmp_path: Path
) -> None:
    """A value that passes schema validation but that nginx refuses never reaches the host."""
    config = tmp_path / "c.toml"
    config.write_text('[nginx]\ntls_curves = "X25519:nosuchcurve"\n')
    root = tmp_path / "root"
    code, _, err = run_cli(
        "install", "--root", str(root), "--listen-ip", "100.64.0.10", "--config", str(config)
    )
    assert code == 1
    assert "nginx -t rejected /var/lib/nginx-proxy/nginx.conf" in err
    assert "nosuchcurve" in err
    written = [p for p in root.rglob("*") if p.is_file() and p.name != "lock"]
    assert written == []


def test_install_refuses_change_and_keeps_the_live_file(run_cli: RunCli, tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert run_cli("install", "--root", str(root), "--listen-ip", "100.64.0.10")[0] == 0
    live = root / "var/lib/nginx-proxy/nginx.conf"
    before = live.read_bytes()
    config = tmp_path / "c.toml"
    config.write_text('[nginx]\ntls_curves = "X25519:nosuchcurve"\n')
    code, _, err = run_cli(
        "install", "--root", str(root), "--listen-ip", "100.64.0.10", "--config", str(config)
    )
    assert code == 1, err
    assert live.read_bytes() == before
