"""`liminati restart` and `liminati logs` on a staged install: what they would run, and the
arguments they refuse (the running behaviour is tested in tests/system/test_stack_isolation.py)."""

from __future__ import annotations

from pathlib import Path

from clitools import RunCli

IP = "100.64.0.10"


def test_restart_staged_records_the_users_systemctl(run_cli: RunCli, tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert run_cli("install", "--root", str(root), "--listen-ip", IP)[0] == 0
    code, _, err = run_cli("restart", "nginx", "--root", str(root), "--listen-ip", IP)
    assert code == 0, err
    assert "nginx restarted: restart staged." in err
    commands = (root / ".liminati-staged-commands.sh").read_text().splitlines()
    assert commands[-1] == "systemctl --user -M nginx-user@ restart nginx-proxy.service"


def test_restart_and_logs_name_the_services_they_know(run_cli: RunCli, tmp_path: Path) -> None:
    root = tmp_path / "root"
    for verb in ("restart", "logs"):
        code, _, err = run_cli(verb, "nginx-prox", "--root", str(root), "--listen-ip", IP)
        assert code == 2, err
        assert "no service named 'nginx-prox'" in err
        assert "hint: one of: vllm-qwen, open-webui, nginx, dnsmasq, dnsmasq-admin" in err


def test_logs_refuses_a_negative_line_count(run_cli: RunCli, tmp_path: Path) -> None:
    code, _, err = run_cli("logs", "nginx", "-n", "-1", "--root", str(tmp_path / "root"))
    assert code == 2
    assert "-1 is not in the range x>=0" in err
