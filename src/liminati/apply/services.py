"""`status`, `logs` and `restart`: the right user's systemd and journal, by service name."""

from __future__ import annotations

from dataclasses import dataclass

from liminati.config import Config
from liminati.errors import HostError, UsageError
from liminati.executor import Executor
from liminati.render.quadlet import build_service_names


@dataclass(frozen=True)
class Service:
    name: str
    user: str
    unit: str


def services(config: Config) -> list[Service]:
    return [Service(name, user, unit) for name, user, unit in build_service_names(config)]


def find_service(config: Config, name: str) -> Service:
    known = services(config)
    for s in known:
        if name in (s.name, s.unit, s.unit.removesuffix(".service")):
            return s
    raise UsageError(
        f"no service named {name!r}",
        hint="one of: " + ", ".join(s.name for s in known),
    )


def service_status(executor: Executor, config: Config) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for s in services(config):
        entry: dict[str, object] = {"service": s.name, "user": s.user, "unit": s.unit}
        if executor.staged:
            entry.update(state="staged (nothing runs)", health="", ok=True)
            out.append(entry)
            continue
        if executor.user(s.user) is None:
            entry.update(state="not installed", health="", ok=False)
            out.append(entry)
            continue
        shown = executor.systemctl_user(
            s.user, "show", "-p", "ActiveState,SubState,MainPID,NRestarts", s.unit, check=False
        )
        props = dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)
        state = f"{props.get('ActiveState', 'unknown')} ({props.get('SubState', '?')})"
        name = s.unit.removesuffix(".service")
        health = executor.user_command(
            s.user, ["podman", "inspect", "--format", "{{.State.Health.Status}}", name]
        )
        verdict = health.stdout.strip() if health.ok else ""
        entry.update(
            state=state,
            health=verdict or "no health check",
            restarts=props.get("NRestarts", ""),
            ok=props.get("ActiveState") == "active" and verdict in ("", "healthy"),
        )
        out.append(entry)
    return out


def _props(executor: Executor, service: Service) -> dict[str, str]:
    shown = executor.systemctl_user(
        service.user, "show", "-p", "ActiveState,SubState,MainPID", service.unit, check=False
    )
    return dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)


def restart_service(executor: Executor, service: Service) -> str:
    """Restart a service through its user's systemd and check that it runs again; return its
    state for the report. systemd waits for the start (and, with Notify=healthy, for the
    health check), so a unit that is not active right after has failed to come back."""
    executor.systemctl_user(service.user, "restart", service.unit)
    if executor.staged:
        return "restart staged"
    props = _props(executor, service)
    state = f"{props.get('ActiveState', 'unknown')} ({props.get('SubState', '?')})"
    if props.get("ActiveState") != "active":
        raise HostError(
            f"{service.name} ({service.unit} of {service.user}) is {state} after the restart",
            hint=f"`liminati logs {service.name}` shows why",
        )
    return f"{state}, main PID {props.get('MainPID', '?')}"


def journal_argv(executor: Executor, service: Service, follow: bool, lines: int) -> list[str]:
    if executor.staged:
        raise UsageError("a staged install has no logs", hint="run `liminati logs` on the host")
    user = executor.user(service.user)
    if user is None:
        raise UsageError(f"{service.user} does not exist", hint="run `liminati install`")
    # root reads a user's units by uid; `journalctl --user -M` would need systemd-machined
    argv = ["journalctl", f"_UID={user.uid}", f"_SYSTEMD_USER_UNIT={service.unit}",
            "+", f"_UID={user.uid}", f"USER_UNIT={service.unit}",
            "-n", str(lines), "--no-pager", "-o", "short-iso"]  # fmt: skip
    if follow:
        argv.append("-f")
    return argv
