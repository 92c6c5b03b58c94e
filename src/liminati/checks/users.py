"""Each service user's linger and systemd user manager: without them its units do not start at
boot, and `systemctl --user -M` cannot reach them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from liminati.checks.model import Check, Status, worst
from liminati.config import Config
from liminati.executor import Executor

NAME = "users"
#: podman's transient healthcheck runs, `<container id>-<random hex>.service|timer`: one that
#: failed stays listed after its container is gone (a failed upgrade's image, a restart);
#: a container's health itself is the `services` check's
HEALTHCHECK_RUN = re.compile(r"^[0-9a-f]{64}-[0-9a-f]+\.(service|timer)$")


@dataclass(frozen=True)
class UserFacts:
    name: str
    exists: bool
    linger: bool = False
    uid: int = 0
    #: `systemctl is-active user@UID.service`
    manager: str = ""
    #: `systemctl --user -M NAME@ is-system-running`: running, degraded, starting, ...
    system: str = ""
    #: units of that manager in the failed state
    failed: tuple[str, ...] = ()


def judge_user(u: UserFacts) -> tuple[Status, str, str]:
    """(status, what is wrong, hint) for one user; ok has an empty text."""
    if not u.exists:
        return Status.FAIL, f"{u.name} does not exist", "`sudo liminati install` creates it"
    if not u.linger:
        return (
            Status.FAIL,
            f"linger is off for {u.name}: its units do not start at boot",
            f"`sudo loginctl enable-linger {u.name}` (`liminati install` does it)",
        )
    unit = f"user@{u.uid}.service"
    if u.manager != "active":
        return (
            Status.FAIL,
            f"{u.name}'s user manager {unit} is {u.manager or 'unknown'}",
            f"`sudo systemctl start {unit}`; `journalctl -u {unit}` says why it stopped",
        )
    failed = [name for name in u.failed if not HEALTHCHECK_RUN.match(name)]
    if u.system == "degraded" and (failed or not u.failed):
        units = ", ".join(failed) or "a unit"
        first = failed[0] if failed else "--failed"
        return (
            Status.WARN,
            f"{u.name}'s manager is degraded: {units} failed",
            f"`sudo systemctl --user -M {u.name}@ status {first}` says why",
        )
    if u.system not in ("running", "degraded", ""):
        return Status.WARN, f"{u.name}'s manager is {u.system}", "run doctor again in a minute"
    return Status.OK, "", ""


def judge_users(facts: list[UserFacts]) -> Check:
    verdicts = [judge_user(u) for u in facts]
    status = worst(s for s, _, _ in verdicts)
    if status is Status.OK:
        names = ", ".join(u.name for u in facts)
        return Check(NAME, status, f"linger on and user manager running for {names}")
    problems = [(s, text, hint) for s, text, hint in verdicts if s is not Status.OK]
    return Check(
        NAME,
        status,
        "; ".join(text for _, text, _ in problems),
        "; ".join(dict.fromkeys(hint for _, _, hint in problems)),
    )


def observe_user(executor: Executor, name: str) -> UserFacts:
    account = executor.user(name)
    if account is None:
        return UserFacts(name, exists=False)
    linger = executor.linger(name)
    manager = executor.run_tool(["systemctl", "is-active", f"user@{account.uid}.service"])
    facts = UserFacts(name, True, linger, account.uid, manager.stdout.strip())
    if manager.stdout.strip() != "active":
        return facts
    system = executor.systemctl_user(name, "is-system-running", check=False).stdout.strip()
    failed: tuple[str, ...] = ()
    if system == "degraded":
        listed = executor.systemctl_user(
            name, "list-units", "--failed", "--plain", "--no-legend", check=False
        ).stdout
        failed = tuple(line.split()[0] for line in listed.splitlines() if line.strip())
    return UserFacts(name, True, linger, account.uid, "active", system, failed)


def check_users(executor: Executor, config: Config) -> Check:
    users = config.users
    names = [users.vllm.name, users.webui.name, users.nginx.name, users.dnsmasq.name]
    return judge_users([observe_user(executor, n) for n in names])
