"""The planner: desired + observed + manifest -> ordered actions, a reason for every one."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from liminati.plan.manifest import Manifest, sha256
from liminati.plan.model import Action, Change, Plan
from liminati.plan.webui import WebuiSeen, webui_action
from liminati.render import Desired, FileSpec, Policy

#: subordinate ids start above every id a distribution hands out to people
SUBID_FLOOR = 100000
#: what a changed file with `activate` set triggers, as the plan names it
ACTIVATION_TARGETS = {
    "sysctl": "net.ipv4.ip_unprivileged_port_start",
    "systemd": "liminati-cert-renew.timer",
}


@dataclass(frozen=True)
class Facts:
    """The observed host, as the planner needs it (built by liminati.observe)."""

    #: path -> (is_dir, mode, owner, group) or None when missing
    stats: dict[str, tuple[bool, int, str, str] | None]
    contents: dict[str, bytes | None]
    #: user -> (uid, home, shell) or None when missing
    users: dict[str, tuple[int, str, str] | None]
    #: (name, start, count) for subuid and subgid
    subuid: list[tuple[str, int, int]]
    subgid: list[tuple[str, int, int]]
    linger: dict[str, bool]
    active: dict[str, bool | None]
    manifest: Manifest
    #: "user image" -> present in that user's podman storage? (None: cannot tell yet)
    images: dict[str, bool | None] = field(default_factory=dict)
    #: sysctl key -> its live value (None: cannot tell, e.g. staged)
    sysctl: dict[str, str | None] = field(default_factory=dict)
    #: Open WebUI's connections (None: not looked at: staged or --no-start)
    webui: WebuiSeen | None = None


def _mode(m: int) -> str:
    return f"{m:04o}"


def file_diff(spec: FileSpec, old: bytes | None) -> str:
    if spec.secret:
        return f"--- {spec.path}\n+++ {spec.path}\n(secret content: not shown)\n"
    try:
        before = old.decode().splitlines(keepends=True) if old is not None else []
        after = spec.content.decode().splitlines(keepends=True)
    except UnicodeDecodeError:
        return f"--- {spec.path}\n+++ {spec.path}\n(binary content)\n"
    lines = difflib.unified_diff(
        before,
        after,
        fromfile="/dev/null" if old is None else spec.path,
        tofile=spec.path,
    )
    out = "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
    )
    return out


def _attrs(stat: tuple[bool, int, str, str], mode: int, owner: str, group: str) -> str:
    problems = []
    if stat[1] != mode:
        problems.append(f"mode {_mode(stat[1])} -> {_mode(mode)}")
    if (stat[2], stat[3]) != (owner, group):
        problems.append(f"owner {stat[2]}:{stat[3]} -> {owner}:{group}")
    return ", ".join(problems)


def build_plan(
    desired: Desired,
    facts: Facts,
    *,
    force: bool = False,
    start_units: bool = True,
    generated: tuple[Action, ...] = (),
    pull_policy: str = "missing",
) -> Plan:
    """`generated`: the plan lines of the CA, leaf and secrets (from prepare_material)."""
    actions: list[Action] = list(generated)
    manifest = facts.manifest

    # users, their subordinate ids, linger
    taken = [s + c for _, s, c in facts.subuid + facts.subgid]
    next_subid = max([SUBID_FLOOR, *taken])
    for user in desired.users:
        seen = facts.users.get(user.name)
        if seen is None:
            actions.append(
                Action(
                    "user",
                    user.name,
                    Change.CREATE,
                    f"system user, home {user.home}, no login shell",
                )
            )
        else:
            uid, home, shell = seen
            extra = "" if home == user.home else f"; its home is {home}, not {user.home}"
            actions.append(
                Action(
                    "user", user.name, Change.UNCHANGED, f"exists (uid {uid}, shell {shell}){extra}"
                )
            )
        ranges = [(s, c) for n, s, c in facts.subuid if n == user.name]
        granges = [(s, c) for n, s, c in facts.subgid if n == user.name]
        if ranges and granges:
            s, c = ranges[0]
            actions.append(
                Action("subids", user.name, Change.UNCHANGED, f"has {c} subordinate ids from {s}")
            )
        else:
            actions.append(
                Action(
                    "subids",
                    user.name,
                    Change.CREATE,
                    f"rootless podman needs {user.subid_count} subordinate ids; "
                    f"range {next_subid}-{next_subid + user.subid_count - 1}",
                    verb=f"{next_subid} {user.subid_count}",
                )
            )
            next_subid += user.subid_count
        if facts.linger.get(user.name):
            actions.append(Action("linger", user.name, Change.UNCHANGED, "linger enabled"))
        else:
            actions.append(
                Action(
                    "linger",
                    user.name,
                    Change.CREATE,
                    "the user's services start at boot without a login",
                )
            )

    # directories, parents first
    for d in sorted(desired.dirs, key=lambda d: d.path):
        st = facts.stats.get(d.path)
        if st is None:
            actions.append(
                Action("dir", d.path, Change.CREATE, f"{_mode(d.mode)} {d.owner}:{d.group}")
            )
        elif not st[0]:
            actions.append(
                Action(
                    "dir",
                    d.path,
                    Change.UPDATE,
                    "exists but is not a directory: moved to backups, replaced",
                    backup=True,
                )
            )
        elif fix := _attrs(st, d.mode, d.owner, d.group):
            if d.data and (st[2], st[3]) != (d.owner, d.group):
                fix += f"; what {st[2]}:{st[3]} owns inside follows"
            actions.append(Action("dir", d.path, Change.UPDATE, fix, attrs_only=True))
        else:
            actions.append(
                Action(
                    "dir", d.path, Change.UNCHANGED, f"exists, {_mode(d.mode)} {d.owner}:{d.group}"
                )
            )

    # files, then what activates host-level ones (sysctl, root systemd units)
    written: set[str] = set()
    activations: dict[str, list[str]] = {}
    for f in desired.files:
        action = _file_action(f, facts, manifest, force)
        actions.append(action)
        if action.changes and not action.attrs_only:
            written.add(f.path)
        if f.activate:
            activations.setdefault(f.activate, [])
            if f.path in written:
                activations[f.activate].append(f.path)
    for kind, changed in activations.items():
        target = ACTIVATION_TARGETS[kind]
        # a run killed between writing the drop-in and loading it, or values reset since (an
        # uninstall restores the defaults): the file is unchanged but the kernel is not
        stale = [] if kind != "sysctl" else sysctl_differences(desired, facts)
        if changed:
            actions.append(Action(kind, target, Change.UPDATE, "changed: " + ", ".join(changed)))
        elif stale:
            actions.append(
                Action(kind, target, Change.UPDATE, "not in effect: " + ", ".join(stale))
            )
        else:
            actions.append(Action(kind, target, Change.UNCHANGED, "its files are unchanged"))

    # units: daemon-reload per user, then start / restart / reload
    unit_actions: list[Action] = []
    reload_users: dict[str, str] = {}
    for unit in desired.units:
        key = f"{unit.user}/{unit.unit}"
        inputs = {
            f.path: sha256(f.content)
            for f in desired.files
            if any(r.user == unit.user and r.unit == unit.unit for r in f.units)
        }
        if unit.quadlet in written:
            reload_users.setdefault(unit.user, f"{unit.quadlet} changed")
        if not start_units:
            unit_actions.append(
                Action("unit", key, Change.UNCHANGED, "not started (--no-start)", user=unit.user)
            )
            continue
        recorded = manifest.units.get(key)
        differing = sorted(
            p
            for p in inputs
            if p in written or (recorded is not None and recorded.get(p) != inputs[p])
        )
        active = facts.active.get(key)
        if recorded is None:
            verb, reason = (
                ("restart", "running, but not started by liminati yet")
                if active
                else ("start", "first start")
            )
        elif unit.quadlet in differing or set(recorded) != set(inputs):
            verb, reason = "restart", "unit file changed"
        elif differing:
            verb = "reload" if unit.reloadable else "restart"
            reason = "inputs changed: " + ", ".join(differing)
        elif active is False:
            verb, reason = "start", "not running"
        else:
            unit_actions.append(
                Action(
                    "unit",
                    key,
                    Change.UNCHANGED,
                    "inputs unchanged since liminati last started it",
                    user=unit.user,
                )
            )
            continue
        if verb != "reload":
            reload_users.setdefault(unit.user, f"{unit.unit} must {verb}")
        unit_actions.append(Action("unit", key, Change.UPDATE, reason, verb=verb, user=unit.user))
    # units liminati started that the config no longer has (a model taken out of [[models]]):
    # stopped before their files go
    retired: list[Action] = []
    wanted = {f"{u.user}/{u.unit}" for u in desired.units}
    for key in sorted(set(manifest.units) - wanted):
        owner, name = key.split("/", 1)
        why = "no longer configured: stopped"
        retired.append(Action("unit", key, Change.REMOVE, why, verb="stop", user=owner))
        reload_users.setdefault(owner, f"{name} is retired")
    desired_paths = {f.path for f in desired.files}
    for path in sorted(set(manifest.files) - desired_paths):
        have = facts.contents.get(path)
        if have is None:
            actions.append(
                Action("file", path, Change.REMOVE, "no longer configured; already gone")
            )
        elif sha256(have) != manifest.files[path] and not force:
            why = "no longer configured, but edited by hand: kept; --force removes it"
            actions.append(Action("file", path, Change.DRIFT, why))
        else:
            why = "no longer configured: removed, backup kept"
            actions.append(Action("file", path, Change.REMOVE, why, backup=True))
    unit_actions = retired + unit_actions
    # images: pulled as their user before any unit starts (progress shown, many GB for vLLM)
    if start_units:
        for owner, image in dict.fromkeys((u.user, u.image) for u in desired.units):
            present = facts.images.get(f"{owner} {image}")
            if present:
                change, why = Change.UNCHANGED, f"in {owner}'s podman storage"
            elif pull_policy == "never":
                change, why = Change.UNCHANGED, f"pull = never: {owner} must have it (podman load)"
            else:
                change, why = Change.CREATE, f"pull into {owner}'s podman storage"
            actions.append(Action("image", image, change, why, user=owner))
    for name in dict.fromkeys(u.user for u in desired.units):
        if name in reload_users:
            actions.append(
                Action("daemon-reload", name, Change.UPDATE, reload_users[name], user=name)
            )
        else:
            actions.append(
                Action("daemon-reload", name, Change.UNCHANGED, "unit files unchanged", user=name)
            )
    actions += unit_actions
    # Open WebUI's connections to the models, once its units run (its admin API)
    if start_units and desired.webui is not None and facts.webui is not None:
        restarting = any(a.target == desired.webui.unit and a.changes for a in unit_actions)
        actions.append(webui_action(desired.webui, facts.webui, restarting))
    return Plan(tuple(actions))


def sysctl_settings(desired: Desired) -> dict[str, str]:
    """key -> value of every `key = value` line of the sysctl drop-ins liminati writes."""
    out: dict[str, str] = {}
    for f in desired.files:
        if f.activate == "sysctl":
            for line in f.content.decode().splitlines():
                key, eq, value = line.partition("=")
                if eq and not line.lstrip().startswith(("#", ";")):
                    out[key.strip()] = value.strip()
    return out


def sysctl_differences(desired: Desired, facts: Facts) -> list[str]:
    """`key is X, not Y` for every setting whose live value is known and differs."""
    return [
        f"{key} is {facts.sysctl[key]}, not {want}"
        for key, want in sysctl_settings(desired).items()
        if facts.sysctl.get(key) not in (None, want)
    ]


def _file_action(f: FileSpec, facts: Facts, manifest: Manifest, force: bool) -> Action:
    st = facts.stats.get(f.path)
    old = facts.contents.get(f.path)
    want = sha256(f.content)
    desc = f"{_mode(f.mode)} {f.owner}:{f.group}"
    if st is None or old is None:
        return Action("file", f.path, Change.CREATE, desc, diff=file_diff(f, None))
    have = sha256(old)
    if f.policy is Policy.GENERATE_ONCE or have == want:
        why = (
            "generated once, kept as it is"
            if f.policy is Policy.GENERATE_ONCE and have != want
            else "content matches"
        )
        fix = _attrs(st, f.mode, f.owner, f.group)
        if fix:
            return Action("file", f.path, Change.UPDATE, f"{why}; {fix}", attrs_only=True)
        return Action("file", f.path, Change.UNCHANGED, f"{why}, {desc}")
    recorded = manifest.files.get(f.path)
    diff = file_diff(f, old)
    if recorded is not None and recorded != have:
        if not force:
            return Action(
                "file",
                f.path,
                Change.DRIFT,
                "edited by hand since liminati wrote it: kept; --force replaces it "
                "(a backup is kept)",
                diff=diff,
            )
        return Action(
            "file",
            f.path,
            Change.UPDATE,
            "edited by hand; replaced (--force), backup kept",
            diff=diff,
            backup=True,
        )
    if recorded is None:
        return Action(
            "file",
            f.path,
            Change.UPDATE,
            "not written by liminati before; replaced, backup kept",
            diff=diff,
            backup=True,
        )
    return Action("file", f.path, Change.UPDATE, "rendered content changed", diff=diff)
