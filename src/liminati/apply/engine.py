"""One pass of config -> render -> observe -> plan, shared by `plan` and `install`."""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from dataclasses import dataclass

from cryptography import x509

from liminati import pki
from liminati.config import Config
from liminati.config.model import TAILNET
from liminati.errors import UsageError
from liminati.executor import Executor
from liminati.observe import observe, observe_existing
from liminati.plan import Facts, Generators, Plan, Prepared, build_plan, prepare_material
from liminati.render import Desired, build_desired
from liminati.render.stack import DEFAULT_PROGRAM


def real_generators() -> Generators:
    return Generators(
        new_key=pki.new_key,
        serial=x509.random_serial_number,
        # 32 random bytes: 256 bits, URL-safe so it fits env files, headers and nginx maps
        token=lambda: secrets.token_urlsafe(32),
    )


@dataclass(frozen=True)
class Pass:
    listen_ip: str
    prepared: Prepared
    desired: Desired
    facts: Facts
    plan: Plan


def resolve_listen_ip(executor: Executor, config: Config) -> str:
    """The configured address, or what `tailscale ip -4` says."""
    if config.listen_ip:
        return config.listen_ip
    tailscale = executor.which("tailscale")
    if tailscale is None:
        raise UsageError(
            "no tailnet address: listen_ip is not set and the tailscale command is not installed",
            hint="pass --listen-ip 100.x.y.z, set listen_ip in the config, or install Tailscale",
        )
    result = executor.run_tool([tailscale, "ip", "-4"], timeout=15)
    lines = result.stdout.split()
    if not result.ok or not lines:
        raise UsageError(
            f"`tailscale ip -4` gave no address: {(result.stderr or result.stdout).strip()}",
            hint="run `tailscale up`, or pass --listen-ip 100.x.y.z",
        )
    ip = lines[0]
    try:
        addr = ipaddress.IPv4Address(ip)
    except ValueError:
        raise UsageError(f"`tailscale ip -4` printed {ip!r}, not an IPv4 address") from None
    if addr not in TAILNET and not config.allow_non_tailnet_ip:
        raise UsageError(
            f"`tailscale ip -4` gave {ip}, outside 100.64.0.0/10",
            hint="pass --listen-ip, or set allow_non_tailnet_ip = true",
        )
    return ip


def run_pass(
    executor: Executor,
    config: Config,
    *,
    now: dt.datetime,
    gen: Generators,
    force: bool = False,
    start_units: bool = True,
    renew_leaf: bool = False,
    program: tuple[str, ...] = DEFAULT_PROGRAM,
    config_file: str | None = None,
) -> Pass:
    listen_ip = resolve_listen_ip(executor, config)
    existing = observe_existing(executor, config)
    prepared = prepare_material(config, existing, now, gen, renew_leaf=renew_leaf)
    desired = build_desired(config, listen_ip, prepared.material, program, config_file)
    facts = observe(executor, config, desired, images=start_units)
    plan = build_plan(
        desired,
        facts,
        force=force,
        start_units=start_units,
        generated=prepared.actions,
        pull_policy=config.images.pull,
    )
    return Pass(listen_ip, prepared, desired, facts, plan)
