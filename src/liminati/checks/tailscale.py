"""Tailscale up, and the tailnet address still the one nginx and dnsmasq were installed on (a
re-authenticated node can get a new one: then clients reach nothing)."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

from liminati.checks.model import Check, fail, ok, skip, warn
from liminati.config import Config
from liminati.executor import Executor, RunResult

NAME = "tailscale"
MOVE_HINT = (
    "`sudo liminati install` moves nginx and dnsmasq to the current address; then change the "
    "nameserver in the Tailscale admin console (DNS) to it"
)


@dataclass(frozen=True)
class TailscaleState:
    backend: str  # Running, Stopped, NeedsLogin, ...
    ipv4: tuple[str, ...]


def parse_status(text: str) -> TailscaleState:
    """`tailscale status --json`: BackendState and this node's TailscaleIPs."""
    data = json.loads(text)
    ips = data.get("TailscaleIPs") or (data.get("Self") or {}).get("TailscaleIPs") or []
    v4 = tuple(ip for ip in ips if isinstance(ipaddress.ip_address(ip), ipaddress.IPv4Address))
    return TailscaleState(str(data.get("BackendState", "")), v4)


def judge_tailscale(installed: str, configured: str, status: RunResult | None) -> Check:
    """`installed`: the address the services were installed on; `configured`: listen_ip from
    the config or --listen-ip ("" = follow `tailscale ip -4`); `status`: `tailscale status
    --json` (None: tailscale is not installed)."""
    if configured and configured != installed:
        return fail(
            NAME,
            f"listen_ip is {configured}, but the services listen on {installed}",
            "`sudo liminati install` moves them to the configured address",
        )
    if status is None:
        return skip(
            NAME,
            f"tailscale is not installed; the services listen on {installed}",
            "install Tailscale, or keep listen_ip set to the address clients reach",
        )
    if not status.stdout.strip():
        said = status.stderr.strip().splitlines()
        return fail(
            NAME,
            f"`tailscale status` failed: {said[-1] if said else status.returncode}",
            "is tailscaled running? `sudo systemctl status tailscaled`",
        )
    try:
        state = parse_status(status.stdout)
    except (ValueError, AttributeError) as exc:
        return fail(NAME, f"`tailscale status --json` is not readable: {exc}", "`tailscale status`")
    if state.backend != "Running":
        return fail(NAME, f"Tailscale is {state.backend or 'not running'}", "`sudo tailscale up`")
    if installed not in state.ipv4:
        now = ", ".join(state.ipv4) or "no IPv4 address"
        if configured:
            return warn(
                NAME,
                f"listen_ip {installed} is not this node's tailnet address ({now})",
                "set listen_ip to the Tailscale address, or leave it empty",
            )
        return fail(
            NAME, f"the tailnet address is now {now}; the services listen on {installed}", MOVE_HINT
        )
    return ok(NAME, f"up; {installed} is still this node's tailnet address")


def check_tailscale(executor: Executor, config: Config, installed: str) -> Check:
    path = executor.which("tailscale")
    status = None
    if path is not None:
        status = executor.run_tool([path, "status", "--json"], timeout=15)
    return judge_tailscale(installed, config.listen_ip, status)
