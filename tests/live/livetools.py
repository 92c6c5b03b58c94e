"""The live tier's support: a staged install and the real nginx serving it (importable by
name from the tests; conftest modules are not)."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from netns import SERVER_IP, Namespaces

from clitools import Clock
from liminati.cli.main import Env, main

HERE = Path(__file__).resolve().parent
DOMAIN = "liminati.internal"
#: the install is staged this long before now: its leaf has 20 days left, inside the 30-day
#: renewal window
STAGED_AGO = timedelta(days=345)
#: people given an API key (`liminati keys add`) before nginx starts
KEY_OWNERS = ("alice", "bob")

#: name -> seconds, printed at the end of the session by conftest
TIMINGS: dict[str, float] = {}


def record_timing(name: str, seconds: float) -> None:
    TIMINGS[name] = seconds


@dataclass
class LiveNginx:
    """A staged install and the nginx serving it inside `ns`'s server namespace."""

    ns: Namespaces
    root: Path
    env: Env
    clock: Clock
    log: Path
    proc: subprocess.Popen[Any] | None = None

    @property
    def home(self) -> Path:
        return self.root / "var/lib/nginx-proxy"

    @property
    def ca(self) -> Path:
        return self.root / "var/lib/liminati/pki/ca.crt"

    @property
    def leaf(self) -> Path:
        return self.home / "ssl/liminati.crt"

    def nginx(self, *argv: str) -> list[str]:
        return ["nginx", "-p", f"{self.home}/", "-c", f"{self.home}/nginx.conf", *argv]

    def start(self) -> None:
        # the container mounts a tmpfs here; the staged tree has the directory already
        (self.home / "tmp").mkdir(exist_ok=True)
        with self.log.open("ab") as log:
            self.proc = self.ns.popen_in(
                "server",
                self.nginx("-g", "daemon off;"),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 15
        while True:
            assert self.proc.poll() is None, f"nginx exited:\n{self.log_tail(40)}"
            probe = self.ns.run_in(
                "client",
                ["curl", "-s", "-o", "/dev/null", "--max-time", "1",
                 f"http://{SERVER_IP}:{self.ns.dist_port}/"],
                check=False,
            )  # fmt: skip
            if probe.returncode == 0:
                return
            assert time.monotonic() < deadline, f"nginx does not answer:\n{self.log_tail(40)}"
            time.sleep(0.1)

    def reload(self) -> None:
        """What the production ExecReload does: `nginx -s reload` with the same -p and -c."""
        proc = self.ns.run_in("server", self.nginx("-s", "reload"), check=False)
        assert proc.returncode == 0, proc.stderr

    def stop(self) -> None:
        if self.proc is not None:
            self.ns.stop(self.proc)
            self.proc = None

    def api_key(self, owner: str) -> str:
        """`owner`'s key, read back from nginx's map (`keys add` prints it only once)."""
        text = (self.home / "snippets/api-keys.map").read_text()
        match = re.search(rf'^"Bearer (\S+)" "{re.escape(owner)}";$', text, re.MULTILINE)
        assert match, f"no key for {owner} in api-keys.map"
        return match.group(1)

    def log_tail(self, lines: int) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def cli(self, *argv: str) -> tuple[int, str]:
        """`liminati *argv` in-process with this install's env; (exit code, stdout+stderr)."""
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            code = main(list(argv), self.env)
        return code, buf.getvalue()
