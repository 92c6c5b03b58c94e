"""`install --root`: the idempotency triple, drift, --force, and an install killed midway."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from clitools import RunCli

IP = "100.64.0.10"


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every path under root -> (mode, sha256 or 'dir'): byte-identical means equal snapshots."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        digest = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        out[str(p.relative_to(root))] = (st.st_mode, digest)
    return out


def test_install_staged_idempotency_triple(run_cli: RunCli, tmp_path: Path) -> None:
    root = tmp_path / "root"
    code, _out, err = run_cli("install", "--root", str(root), "--listen-ip", IP)
    assert code == 0, err
    assert "Installing on staging folder" in err
    assert (root / "var/lib/nginx-proxy/nginx.conf").is_file()

    # second install: nothing to do, every resource unchanged with a reason
    before = snapshot(root)
    code, _out, err = run_cli("install", "--root", str(root), "--listen-ip", IP)
    assert code == 0, err
    assert "Nothing to change" in err
    assert snapshot(root) == before
    code, out, err = run_cli(
        "plan", "--root", str(root), "--listen-ip", IP, "--detailed-exitcode", "--json"
    )
    assert code == 0, err
    plan = json.loads(out)
    assert plan["changes"] == 0
    assert plan["actions"], "the plan lists every resource"
    assert all(a["change"] == "unchanged" and a["reason"] for a in plan["actions"])
    kinds = {a["kind"] for a in plan["actions"]}
    assert {"user", "subids", "linger", "dir", "file", "sysctl", "daemon-reload", "unit"} <= kinds

    # a config change: plan shows it and exits 3, and leaves the tree byte-identical
    config = tmp_path / "changed.toml"
    config.write_text('[webui]\nclient_max_body_size = "250m"\n')
    code, out, err = run_cli(
        "plan",
        "--root",
        str(root),
        "--listen-ip",
        IP,
        "--config",
        str(config),
        "--detailed-exitcode",
    )
    assert code == 3, err
    assert "-    client_max_body_size 100m;" in out
    assert "+    client_max_body_size 250m;" in out
    assert "~ reload    unit          nginx-user/nginx-proxy.service" in out
    assert snapshot(root) == before


def test_install_staged_refuses_a_domain_the_ca_cannot_vouch_for(
    run_cli: RunCli, tmp_path: Path
) -> None:
    """The CA is name-constrained: a leaf for another domain would be refused by every client,
    so the change stops with the way out, and nothing is touched."""
    root = tmp_path / "root"
    assert run_cli("install", "--root", str(root), "--listen-ip", IP)[0] == 0
    before = snapshot(root)
    config = tmp_path / "c.toml"
    config.write_text('domain = "other.internal"\n')
    for verb in ("plan", "install"):
        code, _out, err = run_cli(
            verb, "--root", str(root), "--listen-ip", IP, "--config", str(config)
        )
        assert code == 2, err
        assert err.splitlines()[0] == (
            "error: domain = 'other.internal': the CA only vouches for names under "
            "liminati.internal (its name constraint), so no certificate for other.internal "
            "would be trusted"
        )
        assert "liminati cert rotate-ca --yes" in err
    assert snapshot(root) == before
    # a subdomain of the constrained one is inside the CA's reach
    config.write_text('domain = "lab.liminati.internal"\n')
    code, _, err = run_cli(
        "install", "--root", str(root), "--listen-ip", IP, "--config", str(config)
    )
    assert code == 0, err


def test_install_staged_records_owners_modes_and_host_commands(
    run_cli: RunCli, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    assert run_cli("install", "--root", str(root), "--listen-ip", IP)[0] == 0
    state = json.loads((root / ".liminati-staging.json").read_text())
    owners = state["owners"]
    assert owners["/var/lib/nginx-proxy/ssl/liminati.key"] == ["nginx-user", "nginx-user"]
    assert owners["/var/lib/liminati/pki/ca.key"] == ["root", "root"]
    assert owners["/var/lib/webui/data"] == ["webui-user", "webui-user"]
    assert (root / "var/lib/liminati/pki/ca.key").stat().st_mode & 0o777 == 0o400
    assert (root / "var/lib/liminati/pki").stat().st_mode & 0o777 == 0o700
    assert (root / "var/lib/nginx-proxy/ssl/liminati.key").stat().st_mode & 0o777 == 0o600
    assert (root / "var/lib/vllm/.config/liminati/vllm-qwen.env").stat().st_mode & 0o777 == 0o600
    assert sorted(state["users"]) == ["dnsmasq-user", "nginx-user", "vllm-user", "webui-user"]
    assert all(u["shell"] == "/usr/sbin/nologin" for u in state["users"].values())
    commands = (root / ".liminati-staged-commands.sh").read_text().splitlines()
    assert "loginctl enable-linger vllm-user" in commands
    assert "systemctl --user -M nginx-user@ daemon-reload" in commands
    assert "systemctl --user -M vllm-user@ start vllm-qwen.service" in commands
    assert "usermod --add-subuids 100000-165535 --add-subgids 100000-165535 vllm-user" in commands
    # images are pulled as their user before the units start, each once
    pull = ("systemd-run --user -M vllm-user@ --wait --pipe podman pull "
            "docker.io/vllm/vllm-openai:v0.32.0")  # fmt: skip
    assert commands.count(pull) == 1
    assert commands.index(pull) < commands.index(
        "systemctl --user -M vllm-user@ start vllm-qwen.service"
    )
    assert sum("podman pull" in c for c in commands) == 5  # vllm, webui, nginx, dnsmasq, admin


def test_install_staged_never_prints_secrets(run_cli: RunCli, tmp_path: Path) -> None:
    root = tmp_path / "root"
    _, out1, err1 = run_cli("plan", "--root", str(root), "--listen-ip", IP)
    _, out2, err2 = run_cli("install", "--root", str(root), "--listen-ip", IP)
    secrets = [p.read_text().strip() for p in (root / "var/lib/liminati/secrets").iterdir()]
    assert len(secrets) == 4
    key = (root / "var/lib/liminati/pki/ca.key").read_text()
    for text in (out1, err1, out2, err2):
        for secret in secrets:
            assert secret not in text
        assert "PRIVATE KEY" not in text
    assert key.startswith("-----BEGIN PRIVATE KEY-----")
    assert "(secret content: not shown)" in out1


def test_install_staged_drift_is_kept_then_forced(run_cli: RunCli, tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert run_cli("install", "--root", str(root), "--listen-ip", IP)[0] == 0
    conf = root / "var/lib/dnsmasq-llm/dnsmasq.conf"
    conf.write_text(conf.read_text() + "# hand edit\n")
    code, out, _ = run_cli("plan", "--root", str(root), "--listen-ip", IP, "--detailed-exitcode")
    assert code == 0  # drift alone changes nothing
    assert "! drift     file          /var/lib/dnsmasq-llm/dnsmasq.conf" in out
    assert "-# hand edit" in out
    code, _, err = run_cli("install", "--root", str(root), "--listen-ip", IP)
    assert code == 0
    assert "# hand edit" in conf.read_text()
    code, _, err = run_cli("install", "--root", str(root), "--listen-ip", IP, "--force")
    assert code == 0, err
    assert "# hand edit" not in conf.read_text()
    backups = list((root / "var/lib/liminati/backups").rglob("dnsmasq.conf"))
    assert len(backups) == 1 and "# hand edit" in backups[0].read_text()
    assert "restart   unit" not in err  # nothing printed as plan lines during install
    assert "restarted dnsmasq.service (dnsmasq-user)" in err


def test_install_staged_keeps_ca_and_secrets_across_runs(run_cli: RunCli, tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert run_cli("install", "--root", str(root), "--listen-ip", IP)[0] == 0
    keep = [
        "var/lib/liminati/pki/ca.key",
        "var/lib/liminati/pki/ca.crt",
        *(
            f"var/lib/liminati/secrets/{n}"
            for n in ("vllm-api-key", "webui-secret-key", "webui-admin-password")
        ),
    ]
    before = {k: (root / k).read_bytes() for k in keep}
    leaf = root / "var/lib/nginx-proxy/ssl/liminati.crt"
    leaf_before = leaf.read_bytes()
    config = tmp_path / "c.toml"
    config.write_text('domain = "lab.liminati.internal"\n')
    assert (
        run_cli("install", "--root", str(root), "--listen-ip", IP, "--config", str(config))[0] == 0
    )
    assert leaf.read_bytes() != leaf_before, "the leaf follows the domain"
    leaf.unlink()
    assert run_cli("install", "--root", str(root), "--listen-ip", IP)[0] == 0
    assert run_cli("cert", "renew", "--force", "--root", str(root), "--listen-ip", IP)[0] == 0
    assert {k: (root / k).read_bytes() for k in keep} == before


KILLER = r"""
import os, signal, sys
from liminati.executor import common
from liminati.cli.main import main
limit = int(sys.argv[1])
real = common.atomic_write
calls = 0
def dying_write(target, data, mode, uid, gid):
    global calls
    calls += 1
    if calls == limit:
        # the temp file is on disk, the rename has not happened: the worst moment to die
        tmp = target.with_name(f".{target.name}{common.TEMP_MARK}{os.getpid()}")
        tmp.write_bytes(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return real(target, data, mode, uid, gid)
common.atomic_write = dying_write
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("kill_at", [1, 5, 12, 30, 45])
def test_install_staged_killed_midway_converges(tmp_path: Path, kill_at: int) -> None:
    root = tmp_path / "root"
    argv = ["install", "--root", str(root), "--listen-ip", IP]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, str(kill_at), *argv],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    leftovers = [p for p in root.rglob("*") if ".liminati-tmp-" in p.name]
    assert leftovers, "the kill left a half-written temp file, as a real crash would"
    done = subprocess.run(
        [sys.executable, "-m", "liminati.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert not [p for p in root.rglob("*") if ".liminati-tmp-" in p.name]
    plan = subprocess.run(
        [
            sys.executable,
            "-m",
            "liminati.cli",
            "plan",
            "--root",
            str(root),
            "--listen-ip",
            IP,
            "--detailed-exitcode",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert plan.returncode == 0, plan.stdout
    # every managed file is whole: its content is what the manifest recorded
    manifest = json.loads((root / "var/lib/liminati/manifest.json").read_text())
    for path, digest in manifest["files"].items():
        data = (root / path.lstrip("/")).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, path


def test_install_staged_second_run_at_once_is_refused(run_cli: RunCli, tmp_path: Path) -> None:
    """Two runs at once: the second stops at the lock, names it, and changes nothing."""
    import fcntl

    root = tmp_path / "root"
    assert run_cli("install", "--root", str(root), "--listen-ip", IP)[0] == 0
    config = tmp_path / "c.toml"
    config.write_text('[webui]\nclient_max_body_size = "250m"\n')
    before = snapshot(root)
    lock = root / "var/lib/liminati/lock"
    with lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, _, err = run_cli("install", "--root", str(root), "--listen-ip", IP,
                               "--config", str(config))  # fmt: skip
    assert code == 1
    assert f"error: another liminati run holds {lock}" in err
    assert snapshot(root) == before
