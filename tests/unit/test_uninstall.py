"""`liminati uninstall` on a staged install: everything goes, or (--keep-data) what people
made stays and a re-install brings it back unchanged."""

from __future__ import annotations

import json
from pathlib import Path

from clitools import RunCli

IP = "100.64.0.10"


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
            and not p.name.startswith(".liminati-")}  # fmt: skip


def test_uninstall_needs_yes_and_changes_nothing_without(run_cli: RunCli, tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert run_cli("install", "--root", str(root), "--listen-ip", IP)[0] == 0
    before = files(root)
    code, _, err = run_cli("uninstall", "--root", str(root))
    assert code == 2
    assert "including models, chats and the CA" in err
    assert files(root) == before


def test_uninstall_removes_units_files_users_and_timer(run_cli: RunCli, tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert run_cli("install", "--root", str(root), "--listen-ip", IP)[0] == 0
    code, _, err = run_cli("uninstall", "--yes", "--root", str(root), "--listen-ip", IP)
    assert code == 0, err
    assert files(root) == set()
    state = json.loads((root / ".liminati-staging.json").read_text())
    assert state["users"] == {} and state["subuid"] == [] and state["linger"] == []
    commands = (root / ".liminati-staged-commands.sh").read_text().splitlines()
    assert "systemctl --user -M nginx-user@ stop nginx-proxy.service" in commands
    assert "systemctl disable --now liminati-cert-renew.timer" in commands
    assert "userdel vllm-user" in commands
    assert "sysctl -w net.ipv4.ip_unprivileged_port_start=1024" in commands
    assert "removed /var/lib/liminati/pki/ca.key" in err
    # and the plan is back to a fresh host
    code, out, _ = run_cli("plan", "--root", str(root), "--listen-ip", IP, "--json")
    assert json.loads(out)["changes"] > 0 and not any(
        a["change"] == "unchanged" for a in json.loads(out)["actions"] if a["kind"] == "user"
    )


def test_uninstall_keep_data_then_reinstall_keeps_ca_chats_and_models(
    run_cli: RunCli, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    assert run_cli("install", "--root", str(root), "--listen-ip", IP)[0] == 0
    assert run_cli("keys", "add", "alice", "--root", str(root), "--listen-ip", IP)[0] == 0
    chats = root / "var/lib/webui/data/webui.db"
    chats.write_bytes(b"a team's chats")
    model = root / "var/lib/vllm/.cache/huggingface/hub/model.safetensors"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"weights")
    ca = (root / "var/lib/liminati/pki/ca.crt").read_bytes()
    secret = (root / "var/lib/liminati/secrets/webui-secret-key").read_bytes()

    code, _, err = run_cli("uninstall", "--keep-data", "--yes", "--root", str(root))
    assert code == 0, err
    assert not (root / "var/lib/nginx-proxy/nginx.conf").exists()
    assert not (root / "var/lib/vllm/.config/containers/systemd/vllm-qwen.container").exists()
    assert chats.read_bytes() == b"a team's chats" and model.read_bytes() == b"weights"

    code, _, err = run_cli("install", "--root", str(root), "--listen-ip", IP)
    assert code == 0, err
    assert (root / "var/lib/liminati/pki/ca.crt").read_bytes() == ca
    assert (root / "var/lib/liminati/secrets/webui-secret-key").read_bytes() == secret
    assert chats.read_bytes() == b"a team's chats" and model.read_bytes() == b"weights"
    assert "alice" in (root / "var/lib/nginx-proxy/snippets/api-keys.map").read_text()
    assert run_cli("plan", "--root", str(root), "--listen-ip", IP, "--detailed-exitcode")[0] == 0
