"""The command line as a function: version, help of every command, `config show`, and the
error when no tailnet address can be found."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import click
import pytest

from clitools import RunCli
from liminati import __version__
from liminati.cli.main import cli


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group under `group` (itself included), as argv prefixes."""
    found = [path]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += _commands(command, (*path, name))
        else:
            found.append((*path, name))
    return found


def _help_case(path: tuple[str, ...]) -> object:
    return pytest.param(path, id=" ".join(path) or "liminati")


def test_cli_version(run_cli: RunCli) -> None:
    assert run_cli("--version") == (0, f"liminati, version {__version__}\n", "")


@pytest.mark.parametrize("path", [_help_case(p) for p in _commands(cli)])
def test_cli_help_has_examples(run_cli: RunCli, path: tuple[str, ...]) -> None:
    code, out, err = run_cli(*path, "--help")
    assert (code, err) == (0, "")
    assert out.startswith(f"Usage: liminati {' '.join(path)}".rstrip())
    assert "Examples:" in out


def test_cli_walk_finds_every_command() -> None:
    # guards the walk above: a new command must show up in the --help test by itself
    assert {("plan",), ("install",), ("config",), ("config", "show")} <= set(_commands(cli))


def test_config_show_defaults_toml_matches_json(run_cli: RunCli, tmp_path: Path) -> None:
    root = str(tmp_path / "root")  # an empty staging root: no config file, built-in defaults
    code, toml_out, err = run_cli("config", "show", "--root", root)
    assert (code, err) == (0, "")
    assert 'domain = "liminati.internal"' in toml_out.splitlines()
    code, json_out, err = run_cli("config", "show", "--root", root, "--json")
    assert (code, err) == (0, "")
    assert tomllib.loads(toml_out) == json.loads(json_out)
    assert not (tmp_path / "root").exists()


def test_config_show_reflects_config_file(run_cli: RunCli, tmp_path: Path) -> None:
    config = tmp_path / "liminati.toml"
    config.write_text('domain = "llm.corp.internal"\n')
    code, out, err = run_cli("config", "show", "--config", str(config))
    assert (code, err) == (0, "")
    assert 'domain = "llm.corp.internal"' in out.splitlines()
    code, out, err = run_cli("config", "show", "--config", str(config), "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["domain"] == "llm.corp.internal"


def test_install_without_tailnet_address_fails(
    run_cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no `tailscale` to ask for the address
    code, out, err = run_cli("install", "--root", str(tmp_path / "root"))
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        "error: no tailnet address: "
        "listen_ip is not set and the tailscale command is not installed",
        "hint: pass --listen-ip 100.x.y.z, set listen_ip in the config, or install Tailscale",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty-path"]
