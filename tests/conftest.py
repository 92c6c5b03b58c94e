"""Shared fixtures: a deterministic CLI environment and an in-process `liminati` runner."""

from __future__ import annotations

import pytest

from clitools import RunCli, make_env
from liminati.cli.main import Env, main


@pytest.fixture
def env() -> Env:
    return make_env()


@pytest.fixture
def run_cli(env: Env, capsys: pytest.CaptureFixture[str]) -> RunCli:
    """Run `liminati *argv` in-process; return (exit code, stdout, stderr) of that run only."""

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()  # drop anything printed before this run
        code = main(list(argv), env)
        out, err = capsys.readouterr()
        return code, out, err

    return run
