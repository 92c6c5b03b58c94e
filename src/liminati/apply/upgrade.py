"""`liminati upgrade`: move running services to the image their configured reference names now,
health-gated; when the new image does not come up healthy, the previous image (by ID) and
Open WebUI's database (from the backup taken first) are put back.

How an image is pinned and put back: a unit's `Image=` stays the configured reference (the
quadlet file is rendered from the config and not touched here). Before anything changes, the
image ID each container runs is read from podman and kept; `upgrade` pulls the reference
(unless `images.pull = "never"`, where the new image is expected in the user's storage under
that reference already), and compares IDs. A rollback re-tags the kept ID to the reference
(`podman tag`), so the unit's next start, with `--pull=missing` or `never`, runs it again. The
IDs and digests are recorded in /var/lib/liminati/images.json.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from liminati.apply.backup import DATABASE, plan_restore, restore_files, verify_archive
from liminati.apply.services import Service, find_service, journal_argv, services
from liminati.config import Config, ServiceUser
from liminati.errors import HostError, LiminatiError, UsageError
from liminati.executor import Executor
from liminati.layout import Layout

#: seconds between two looks at a restarting unit
POLL_SECONDS = 2.0
#: a container without a health check counts as up once it ran this long without a restart
STABLE_SECONDS = 10.0
#: how long a service other than vLLM may take to become healthy after a restart (Open WebUI
#: runs its database migrations first); vLLM gets its own start timeout (model loads)
DEFAULT_TIMEOUT = 600.0
#: lines of the failed container's log shown with a rollback
LOG_LINES = 30
WEBUI = "open-webui"
STATE_FILE = "images.json"


@dataclass(frozen=True)
class Target:
    """The units of one user that run one image reference: they move together (several vLLM
    models share the vLLM image; re-tagging it moves all of them)."""

    user: str
    image: str
    services: tuple[Service, ...]

    @property
    def names(self) -> str:
        return ", ".join(s.name for s in self.services)

    @property
    def has_webui(self) -> bool:
        return any(s.name == WEBUI for s in self.services)


@dataclass(frozen=True)
class Health:
    ok: bool
    why: str


@dataclass
class Outcome:
    target: Target
    #: "unchanged", "upgraded", "rolled back" or "rollback failed"
    result: str
    previous: str = ""
    new: str = ""
    why: str = ""
    log: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.result in ("unchanged", "upgraded")


@dataclass(frozen=True)
class Waiting:
    """Time, injected so that tests do not wait for real."""

    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


# --- what runs where ---------------------------------------------------------------------------


def _user(config: Config, name: str) -> ServiceUser:
    users = config.users
    return next(u for u in (users.vllm, users.webui, users.nginx, users.dnsmasq) if u.name == name)


def installed_image(executor: Executor, config: Config, svc: Service) -> str:
    """The Image= of the installed quadlet: what the unit really starts (not what the config
    would render now: an `install` may not have run since the config changed)."""
    quadlet = Layout.quadlet_dir(_user(config, svc.user)) / svc.unit.replace(
        ".service", ".container"
    )
    raw = executor.read(quadlet)
    if raw is None:
        raise UsageError(f"{svc.name} is not installed ({quadlet} is missing)",
                         hint="run `liminati install` first")  # fmt: skip
    for line in raw.decode(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "Image":
            return value.strip()
    raise UsageError(f"{quadlet} names no image", hint="run `liminati install` to rewrite it")


def targets(executor: Executor, config: Config, name: str | None) -> list[Target]:
    """Every service (name None), or the named one with the units sharing its image."""
    known = services(config)
    wanted = known if name is None else [find_service(config, name)]
    groups: dict[tuple[str, str], list[Service]] = {}
    for svc in known:
        groups.setdefault((svc.user, installed_image(executor, config, svc)), []).append(svc)
    out = []
    for (user, image), members in groups.items():
        if any(w in members for w in wanted):
            out.append(Target(user, image, tuple(members)))
    return out


def image_id(executor: Executor, user: str, ref: str) -> str:
    """The ID of the image ref names in user's storage ("" when it has none)."""
    found = executor.user_command(user, ["podman", "image", "inspect", "--format", "{{.Id}}", ref])
    return found.stdout.strip() if found.ok else ""


def image_digest(executor: Executor, user: str, ref: str) -> str:
    found = executor.user_command(
        user, ["podman", "image", "inspect", "--format", "{{.Digest}}", ref]
    )
    return found.stdout.strip() if found.ok else ""


def container_image(executor: Executor, user: str, container: str) -> str:
    """The image ID a container was created from ("" when there is no such container)."""
    found = executor.user_command(
        user, ["podman", "container", "inspect", "--format", "{{.Image}}", container]
    )
    return found.stdout.strip() if found.ok else ""


def _container(svc: Service) -> str:
    return svc.unit.removesuffix(".service")


# --- health gate -------------------------------------------------------------------------------


def _props(executor: Executor, svc: Service) -> dict[str, str]:
    shown = executor.systemctl_user(
        svc.user, "show", "-p", "ActiveState,SubState,NRestarts,Result", svc.unit, check=False
    )
    return dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)


def wait_healthy(
    executor: Executor,
    svc: Service,
    *,
    expect_image: str,
    timeout: float,
    waiting: Waiting,
) -> Health:
    """After a (re)start: healthy, or why not. Fails as soon as the unit leaves "running", its
    restart counter moves or its container is replaced (the container exited: a failed
    migration, a broken image), or when the health check has not passed within timeout."""
    if executor.staged:
        return Health(True, "staged: nothing runs")
    name = _container(svc)
    deadline = waiting.clock() + timeout
    first: tuple[str, str] | None = None  # (NRestarts, container ID) at the first look
    stable_since: float | None = None
    last = "not looked at yet"
    while True:
        props = _props(executor, svc)
        state = f"{props.get('ActiveState', '?')} ({props.get('SubState', '?')})"
        if props.get("ActiveState") == "failed":
            return Health(False, f"{svc.unit} failed ({props.get('Result', '?')})")
        # `systemctl restart` returned once the container ran: from then on, anything but
        # "active (running)" means it exited ("activating (auto-restart)", "deactivating")
        if (props.get("ActiveState"), props.get("SubState")) != ("active", "running"):
            return Health(False, f"the container exited: {svc.unit} is {state}")
        found = executor.user_command(
            svc.user, ["podman", "container", "inspect", "--format", "{{.Id}} {{.Image}}", name]
        )
        cid, _, image = found.stdout.strip().partition(" ")
        seen = (props.get("NRestarts", "0"), cid)
        if first is None:
            first = seen
        elif seen[0] != first[0]:
            return Health(False, f"the container exited and systemd restarted it ({state})")
        elif seen[1] != first[1]:
            return Health(False, "the container exited and was started again")
        if expect_image and image and image != expect_image:
            return Health(False, f"{name} runs image {image[:12]}, not {expect_image[:12]}")
        check = executor.user_command(svc.user, ["podman", "healthcheck", "run", name])
        if check.ok:
            return Health(True, "healthy")
        detail = (check.stderr or check.stdout).strip()
        if "no defined healthcheck" in detail or "no healthcheck" in detail:
            stable_since = stable_since if stable_since is not None else waiting.clock()
            if waiting.clock() - stable_since >= STABLE_SECONDS:
                return Health(True, f"running {STABLE_SECONDS:g}s without a restart")
            last = "running (no health check)"
        else:
            last = f"running, health check not passing yet ({detail or 'unhealthy'})"
        if waiting.clock() >= deadline:
            return Health(False, f"not healthy after {timeout:g}s: {last}")
        waiting.sleep(POLL_SECONDS)


def _restart(
    executor: Executor, svc: Service, *, expect_image: str, timeout: float, waiting: Waiting
) -> Health:
    # a unit that hit its start limit (a crash loop) refuses even a manual start until reset
    executor.systemctl_user(svc.user, "reset-failed", svc.unit, check=False)
    restarted = executor.systemctl_user(svc.user, "restart", svc.unit, check=False)
    if not restarted.ok:
        detail = (restarted.stderr or restarted.stdout).strip().splitlines() or ["?"]
        return Health(False, f"systemctl restart {svc.unit} failed: {detail[-1]}")
    return wait_healthy(executor, svc, expect_image=expect_image, timeout=timeout,
                        waiting=waiting)  # fmt: skip


#: journal lines of podman's and conmon's own (container create/init/remove events, cgroup
#: warnings): around a crash loop they outnumber what the container said
_NOISE = (" podman[", " conmon[")


def log_tail(
    executor: Executor, svc: Service, since: dt.datetime | None = None, lines: int = LOG_LINES
) -> str:
    """The unit's last journal lines (since `since`: the failed start, not the hours before):
    what the container printed and what systemd said."""
    if executor.staged:
        return ""
    argv = journal_argv(executor, svc, False, lines * 5)
    if since is not None:
        argv += ["--since", f"@{int(since.timestamp())}"]
    result = executor.run_tool(argv, timeout=60)
    text = result.stdout if result.ok else result.stderr
    kept = [line for line in text.splitlines() if not any(n in line for n in _NOISE)]
    return "\n".join(kept[-lines:])


# --- the upgrade -------------------------------------------------------------------------------


def _timeout(config: Config, target: Target, given: float | None) -> float:
    if given is not None:
        return given
    vllm = target.user == config.users.vllm.name
    return float(config.vllm.start_timeout_seconds) if vllm else DEFAULT_TIMEOUT


def _record(
    executor: Executor, config: Config, target: Target, outcome: Outcome, now: dt.datetime
) -> None:
    """images.json (root only): per service, the image ID and digest it runs, the one it ran
    before the last upgrade, and the one a failed upgrade tried."""
    path = Layout(config).state_dir / STATE_FILE
    raw = executor.read(path)
    try:
        state = json.loads(raw) if raw else {}
    except ValueError:
        state = {}
    if not isinstance(state, dict) or not isinstance(state.get("services", {}), dict):
        state = {}
    entries = state.setdefault("services", {})
    upgraded = outcome.result == "upgraded"
    running = outcome.new if upgraded or outcome.result == "unchanged" else outcome.previous
    digest = image_digest(executor, target.user, target.image)
    for svc in target.services:
        before = entries.get(svc.name) if isinstance(entries.get(svc.name), dict) else {}
        entries[svc.name] = {
            "user": target.user,
            "image": target.image,
            "id": running,
            "digest": digest,
            "previous_id": outcome.previous if upgraded else before.get("previous_id", ""),
            "result": outcome.result,
            "tried_id": "" if upgraded or outcome.result == "unchanged" else outcome.new,
            "at": now.isoformat(),
        }
    state["version"] = 1
    data = json.dumps(state, indent=2, sort_keys=True).encode() + b"\n"
    executor.write_file(path, data, 0o600, "root", "root")


def check_pull_policy(config: Config) -> None:
    if config.images.pull in ("always", "newer"):
        raise UsageError(
            f'images.pull = "{config.images.pull}": every start of a unit pulls the image '
            "again, which would undo a rollback to the previous image",
            hint='set images.pull = "missing" (the default) and run `liminati install`; then '
            "`liminati upgrade` pulls, and a rollback stays rolled back",
        )


def upgrade_target(
    executor: Executor,
    config: Config,
    target: Target,
    *,
    before_change: Callable[[], Path | None],
    now: dt.datetime,
    timeout: float | None,
    waiting: Waiting = Waiting(),
    progress: Callable[[str], None] = lambda _: None,
) -> Outcome:
    """Pull, compare, restart gated on health, and roll back on failure. `before_change` runs
    once the image is known to change, before any unit restarts: it takes the backup and
    returns its path. The caller holds the lock."""
    user, ref = target.user, target.image
    running = {s.name: container_image(executor, user, _container(s)) for s in target.services}
    previous = next((i for i in running.values() if i), "") or image_id(executor, user, ref)
    if config.images.pull != "never":
        progress(f"pulling {ref} as {user}...")
        executor.pull_image(user, ref)
    new = image_id(executor, user, ref)
    if executor.staged:
        return Outcome(target, "unchanged", why="staged: no image to compare")
    if not new:
        raise HostError(
            f"{user} has no image {ref}",
            hint=f"images.pull is never: load it first (`podman load -i FILE` as {user})"
            if config.images.pull == "never"
            else "check the image reference and the network",
        )
    if not previous:
        raise HostError(f"{target.names}: no container or image to upgrade from",
                        hint="run `liminati install` first")  # fmt: skip
    if all(i == new for i in running.values()):
        outcome = Outcome(target, "unchanged", previous, new)
        if ref.partition("@")[2].startswith("sha256:"):
            outcome.notes.append(f"{ref} is pinned by digest: change it in the config to move")
        _record(executor, config, target, outcome, now)
        return outcome
    backup = before_change()
    wait = _timeout(config, target, timeout)
    outcome = Outcome(target, "upgraded", previous, new)
    for svc in target.services:
        progress(f"restarting {svc.unit} on {new[:12]} (was {previous[:12]})...")
        health = _restart(executor, svc, expect_image=new, timeout=wait, waiting=waiting)
        if not health.ok:
            outcome.why = health.why if len(target.services) == 1 else f"{svc.name}: {health.why}"
            outcome.log = log_tail(executor, svc, since=now)
            _rollback(executor, config, target, outcome, backup, wait, waiting, progress)
            break
        progress(f"{svc.name} is {health.why} on {new[:12]}")
    _record(executor, config, target, outcome, now)
    return outcome


def _rollback(
    executor: Executor,
    config: Config,
    target: Target,
    outcome: Outcome,
    backup: Path | None,
    wait: float,
    waiting: Waiting,
    progress: Callable[[str], None],
) -> None:
    """Tag the previous image ID back to the reference, put the database back (Open WebUI:
    the new version may have migrated it half way), restart, gate on health again."""
    user, ref = target.user, target.image
    progress(f"rolling back {target.names} to {outcome.previous[:12]}...")
    # stopped first: ends a crash loop that would keep starting the new image (and, for Open
    # WebUI, keep migrating the database we are about to put back)
    for svc in target.services:
        executor.systemctl_user(user, "stop", svc.unit, check=False)
    tagged = executor.user_command(user, ["podman", "tag", outcome.previous, ref])
    if not tagged.ok:
        outcome.result = "rollback failed"
        outcome.notes.append(f"`podman tag {outcome.previous} {ref}` failed: "
                             f"{tagged.stderr.strip()}; {target.names} stay stopped")  # fmt: skip
        return
    if target.has_webui:
        try:
            _restore_database(executor, config, backup, outcome)
        except LiminatiError as exc:  # still start the previous image: say what happened
            outcome.notes.append(f"the database could not be put back: {exc.message}")
    for svc in target.services:
        health = _restart(executor, svc, expect_image=outcome.previous, timeout=wait,
                          waiting=waiting)  # fmt: skip
        if not health.ok:
            outcome.result = "rollback failed"
            outcome.notes.append(f"{svc.name} on the previous image: {health.why}")
            return
    outcome.result = "rolled back"


def _restore_database(
    executor: Executor, config: Config, backup: Path | None, outcome: Outcome
) -> None:
    verified = verify_archive(backup, Layout(config)) if backup is not None else None
    if verified is None or verified.manifest.entry(DATABASE) is None:
        outcome.notes.append("no database in the backup to put back (there was none)")
        return
    plan = plan_restore(executor, config, verified, config_path=None, only=(DATABASE,))
    restore_files(executor, config, plan)
    outcome.notes.append(f"Open WebUI's database put back from {backup}")
