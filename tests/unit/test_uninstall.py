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
    assert "sysctl -w net.ipv4.ip_nonlocal_bind=0" in commands
    # every manager is stopped before its user's files go
    assert commands.index("loginctl disable-linger nginx-user") < commands.index(
        "userdel nginx-user"
    )
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


def test_uninstall_keep_data_keeps_only_the_accounts_owning_data(
    run_cli: RunCli, tmp_path: Path
) -> None:
    """vllm-user and webui-user own the model cache and the chats: their accounts (uids) stay,
    with nothing running; nginx-user and dnsmasq-user own nothing kept and go."""
    root = tmp_path / "root"
    assert run_cli("install", "--root", str(root), "--listen-ip", IP)[0] == 0
    (root / "var/lib/vllm/.cache/vllm-compile").mkdir(parents=True)
    code, _, err = run_cli("uninstall", "--keep-data", "--yes", "--root", str(root))
    assert code == 0, err
    state = json.loads((root / ".liminati-staging.json").read_text())
    assert sorted(state["users"]) == ["vllm-user", "webui-user"]
    assert state["linger"] == []
    assert sorted({r[0] for r in state["subuid"]}) == ["vllm-user", "webui-user"]
    commands = (root / ".liminati-staged-commands.sh").read_text().splitlines()
    for user in ("vllm-user", "webui-user", "nginx-user", "dnsmasq-user"):
        assert f"loginctl disable-linger {user}" in commands
    assert "userdel nginx-user" in commands and "userdel dnsmasq-user" in commands
    assert "userdel vllm-user" not in commands and "userdel webui-user" not in commands
    assert not (root / "var/lib/nginx-proxy").exists()
    assert not (root / "var/lib/dnsmasq-llm").exists()
    # a kept home holds the kept data and the folders leading to it, nothing else
    left = sorted(str(p.relative_to(root)) for p in (root / "var/lib/vllm").rglob("*"))
    assert left == ["var/lib/vllm/.cache", "var/lib/vllm/.cache/huggingface"]
    assert sorted(p.name for p in (root / "var/lib/webui").iterdir()) == ["data"]
    assert "kept user webui-user: it owns the kept data" in err
    assert "kept /var/lib/webui/data: Open WebUI's data (users, chats, uploads)" in err
    assert "kept /var/lib/liminati/pki: the CA" in err


def test_reinstall_gives_kept_data_to_a_remade_account(run_cli: RunCli, tmp_path: Path) -> None:
    """The account owning kept data was deleted by hand and made again with another uid: the
    data folder and what the old uid owned inside follow the new account, so Open WebUI can
    read its chats; what another uid owns inside (a container's own user) stays."""
    root = tmp_path / "root"
    assert run_cli("install", "--root", str(root), "--listen-ip", IP)[0] == 0
    data = root / "var/lib/webui/data"
    (data / "webui.db").write_bytes(b"a team's chats")
    (data / "uploads").mkdir()
    assert run_cli("uninstall", "--keep-data", "--yes", "--root", str(root))[0] == 0
    state_file = root / ".liminati-staging.json"
    state = json.loads(state_file.read_text())
    del state["users"]["webui-user"]  # userdel by hand: its files show its bare uid
    owners = state["owners"]
    for rel in ("", "/webui.db", "/uploads"):
        owners[f"/var/lib/webui/data{rel}"] = ["995", "995"]
    owners["/var/lib/webui/data/uploads"] = ["100999", "100999"]  # a subordinate id's
    state_file.write_text(json.dumps(state))

    code, out, _ = run_cli("plan", "--root", str(root), "--listen-ip", IP, "--no-diff")
    assert "owner 995:995 -> webui-user:webui-user; what 995:995 owns inside follows" in out
    code, _, err = run_cli("install", "--root", str(root), "--listen-ip", IP)
    assert code == 0, err
    assert "1 entry in /var/lib/webui/data moved from 995 to webui-user" in err
    owners = json.loads(state_file.read_text())["owners"]
    assert owners["/var/lib/webui/data"] == ["webui-user", "webui-user"]
    assert owners["/var/lib/webui/data/webui.db"] == ["webui-user", "webui-user"]
    assert owners["/var/lib/webui/data/uploads"] == ["100999", "100999"]
    assert run_cli("plan", "--root", str(root), "--listen-ip", IP, "--detailed-exitcode")[0] == 0
