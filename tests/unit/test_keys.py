"""`liminati keys` on a staged install: a key is shown once, listed by its last four
characters, enforced through nginx's map, and revoked with a reload (no restart)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clitools import RunCli

IP = "100.64.0.10"
MAP = "var/lib/nginx-proxy/snippets/api-keys.map"


@pytest.fixture
def root(run_cli: RunCli, tmp_path: Path) -> Path:
    root = tmp_path / "root"
    assert run_cli("install", "--root", str(root), "--listen-ip", IP)[0] == 0
    return root


def test_keys_add_prints_once_lists_last4_and_reloads(run_cli: RunCli, root: Path) -> None:
    code, out, err = run_cli("keys", "add", "alice", "--root", str(root), "--listen-ip", IP)
    assert code == 0, err
    key = out.strip()
    assert key == "lmk_test-token-0005"  # the test's counter stands in for 32 random bytes
    assert key not in err
    assert f'"Bearer {key}" "alice";' in (root / MAP).read_text()
    assert (root / MAP).stat().st_mode & 0o777 == 0o600
    store = root / "var/lib/liminati/api-keys.json"
    assert store.stat().st_mode & 0o777 == 0o600
    commands = (root / ".liminati-staged-commands.sh").read_text().splitlines()
    assert commands[-1] == "systemctl --user -M nginx-user@ reload nginx-proxy.service"
    assert not any("restart nginx-proxy" in c for c in commands)

    code, out, _ = run_cli("keys", "list", "--root", str(root), "--json")
    assert code == 0
    listed = json.loads(out)
    assert [(k["name"], k["last4"]) for k in listed] == [("alice", key[-4:])]
    assert key not in out
    # install renders the same map from the store: nothing to change
    code, _, err = run_cli("plan", "--root", str(root), "--listen-ip", IP, "--detailed-exitcode")
    assert code == 0, err


def test_keys_revoke_removes_the_key_from_nginx(run_cli: RunCli, root: Path) -> None:
    _, alice, _ = run_cli("keys", "add", "alice", "--root", str(root), "--listen-ip", IP)
    _, bob, _ = run_cli("keys", "add", "bob", "--root", str(root), "--listen-ip", IP)
    code, _, err = run_cli("keys", "revoke", "alice", "--root", str(root), "--listen-ip", IP)
    assert code == 0, err
    text = (root / MAP).read_text()
    assert alice.strip() not in text and bob.strip() in text
    code, _, err = run_cli("keys", "revoke", "alice", "--root", str(root), "--listen-ip", IP)
    assert code == 2
    assert "error: no key named 'alice'" in err and "existing keys: bob" in err


@pytest.mark.parametrize("name", ["Alice", "a b", 'x"y', "", ".dot", "a" * 65])
def test_keys_add_refuses_bad_names_and_changes_nothing(
    run_cli: RunCli, root: Path, name: str
) -> None:
    before = (root / MAP).read_bytes()
    code, out, err = run_cli("keys", "add", name, "--root", str(root), "--listen-ip", IP)
    assert code == 2
    assert out == ""
    assert f"error: key name {name!r} is not allowed" in err
    assert (root / MAP).read_bytes() == before
    assert not (root / "var/lib/liminati/api-keys.json").exists()


def test_keys_add_twice_is_refused(run_cli: RunCli, root: Path) -> None:
    assert run_cli("keys", "add", "alice", "--root", str(root), "--listen-ip", IP)[0] == 0
    code, out, err = run_cli("keys", "add", "alice", "--root", str(root), "--listen-ip", IP)
    assert code == 2 and out == ""
    assert "a key named 'alice' exists already" in err
