"""Two network namespaces joined by a veth pair: a "server" (the GPU host's tailnet address)
and a "client" (a tailnet peer). Nothing here touches the host's own network: every address
lives inside a namespace this module created, and every namespace is deleted on exit.

Inside the server namespace the production port mapping is made true with an nftables
redirect (443 -> 8443, 80 -> 8080; 8081 is the same on both sides), as podman publishes
`<tailnet-ip>:443` to the container's 8443. The inner ports are then refused when reached
directly, as they are on the real host. Without nftables (or NAT in the kernel) `nat` is
False and callers must connect to the inner ports.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

SERVER_IP = "100.64.0.10"
CLIENT_IP = "100.64.0.20"
PREFIX_LEN = 24
#: outer port -> the port nginx listens on inside the container
PUBLISHED = {443: 8443, 80: 8080, 8081: 8081}

_NFT_RULES = """\
table ip liminati_live {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {ip} tcp dport 443 redirect to :8443
        ip daddr {ip} tcp dport 80 redirect to :8080
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        # like podman's publish: the inner ports are not reachable as themselves
        ip daddr {ip} tcp dport {{ 8443, 8080 }} ct status & dnat == 0 reject with tcp reset
    }}
}}
"""


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, text=True)


class Namespaces:
    """`with Namespaces() as ns: ns.run_in("client", ["curl", ...])`."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}{secrets.token_hex(2)}"
        self.names = {"server": f"lmn-srv-{tag}", "client": f"lmn-cli-{tag}"}
        # interface names are limited to 15 characters
        self._veth = {"server": f"lms{tag}"[:15], "client": f"lmc{tag}"[:15]}
        self._procs: list[subprocess.Popen[Any]] = []
        self._created: list[str] = []
        #: True when 443/80 are redirected to 8443/8080 inside the server namespace
        self.nat = False
        #: why NAT is off, when it is
        self.nat_error = ""

    # -- ports as a client sees them ------------------------------------------------------
    @property
    def https_port(self) -> int:
        return 443 if self.nat else PUBLISHED[443]

    @property
    def http_port(self) -> int:
        return 80 if self.nat else PUBLISHED[80]

    dist_port = 8081

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> Namespaces:
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _setup(self) -> None:
        for role in ("server", "client"):
            _ip("netns", "add", self.names[role])
            self._created.append(self.names[role])
        # both ends are created directly inside their namespaces: never in the host's
        _ip(
            "link", "add", self._veth["server"], "netns", self.names["server"],
            "type", "veth",
            "peer", "name", self._veth["client"], "netns", self.names["client"],
        )  # fmt: skip
        for role, ip in (("server", SERVER_IP), ("client", CLIENT_IP)):
            ns, dev = self.names[role], self._veth[role]
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{ip}/{PREFIX_LEN}", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        self._setup_nat()

    def _setup_nat(self) -> None:
        if shutil.which("nft") is None:
            self.nat_error = "nft is not installed (package nftables)"
            return
        proc = self.run_in(
            "server", ["nft", "-f", "-"], input=_NFT_RULES.format(ip=SERVER_IP), check=False
        )
        if proc.returncode != 0:
            self.nat_error = f"nft -f failed: {proc.stderr.strip()}"
            return
        self.nat = True

    def close(self) -> None:
        for proc in reversed(self._procs):
            _stop(proc)
        self._procs.clear()
        for name in reversed(self._created):
            # anything still inside a namespace of ours was started by us (a daemon's children)
            pids = subprocess.run(
                ["ip", "netns", "pids", name], capture_output=True, text=True, check=False
            ).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        self._created.clear()

    # -- running things ---------------------------------------------------------------------
    def argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.names[ns], *argv]

    def run_in(
        self, ns: str, argv: Sequence[str], *, check: bool = True, timeout: float = 60, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion in namespace `ns` ("server" or "client"); text output captured."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self.argv(ns, argv), check=check, timeout=timeout, **kw)

    def popen_in(self, ns: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start in namespace `ns`, in a session of its own; stopped by `stop` or on exit."""
        proc = subprocess.Popen(self.argv(ns, argv), start_new_session=True, **kw)
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any]) -> None:
        _stop(proc)
        if proc in self._procs:
            self._procs.remove(proc)


def _stop(proc: subprocess.Popen[Any], timeout: float = 10) -> None:
    """SIGTERM the process group of `proc` (its own session), SIGKILL after `timeout`.

    Whatever of the group outlives its leader is still inside one of our namespaces, and
    `Namespaces.close` kills it by pid before deleting the namespace.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
