"""Carry out a plan: users, directories, files (validated first), sysctl, units; record it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from liminati.apply.webui import sync_connections
from liminati.config import Config
from liminati.errors import HostError
from liminati.executor import Executor
from liminati.layout import Layout
from liminati.plan import Action, Change, Manifest, Plan, sha256
from liminati.render import Desired

Progress = Callable[[str], None]


@dataclass
class Applied:
    done: list[Action] = field(default_factory=list)
    backups: list[str] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)
    #: what could not be done and needs a person (said at the end of the run)
    warnings: list[str] = field(default_factory=list)


def apply_plan(
    executor: Executor,
    config: Config,
    desired: Desired,
    plan: Plan,
    manifest: Manifest,
    *,
    now: dt.datetime,
    progress: Progress = lambda _: None,
) -> Applied:
    """Run the plan's changes in order. Validation has already happened (see validate)."""
    layout = Layout(config)
    result = Applied()
    files = {f.path: f for f in desired.files}
    dirs = {d.path: d for d in desired.dirs}
    users = {u.name: u for u in desired.users}
    stamp = now.strftime("%Y%m%dT%H%M%SZ")

    def done(action: Action, message: str) -> None:
        result.done.append(action)
        progress(message)

    # 1. users, subordinate ids, linger
    for a in plan.actions:
        if not a.changes:
            continue
        if a.kind == "user":
            u = users[a.target]
            executor.create_user(u.name, u.home, u.shell)
            done(a, f"created user {u.name}")
        elif a.kind == "subids":
            start, count = (int(x) for x in a.verb.split())
            executor.add_subids(a.target, start, count)
            done(a, f"gave {a.target} subordinate ids {start}-{start + count - 1}")
        elif a.kind == "linger":
            executor.enable_linger(a.target)
            done(a, f"enabled linger for {a.target}")

    # 2. directories (parents first: the plan lists them sorted)
    for a in plan.of_kind("dir"):
        d = dirs[a.target]
        if a.changes:
            st = executor.stat(d.path)
            if st is not None and not st.is_dir:
                raise HostError(
                    f"{d.path} exists and is not a directory", hint="move it away and re-run"
                )
            if d.data and st is not None and (st.owner, st.group) != (d.owner, d.group):
                # what is inside first: until the folder itself changes owner, a run killed
                # halfway through sees the old owner and moves the rest
                moved = executor.move_ownership(d.path, st.owner, st.group, d.owner, d.group)
                what = "entry" if moved == 1 else "entries"
                progress(f"{moved} {what} in {d.path} moved from {st.owner} to {d.owner}")
            executor.make_dir(d.path, d.mode, d.owner, d.group)
            done(a, f"{'created' if a.change is Change.CREATE else 'fixed'} {d.path}")

    # leftovers of an interrupted write
    for parent in sorted({str(PurePosixPath(p).parent) for p in files} | {str(layout.state_dir)}):
        result.cleaned += executor.remove_stale_temp(parent)

    # 3. files; the manifest records every managed file as it now is. Units no longer
    # configured stop first: their quadlet goes with the files.
    for a in plan.of_kind("unit"):
        if a.change is Change.REMOVE:
            user, unit = a.target.split("/", 1)
            progress(f"stopping {unit} ({user}): no longer configured...")
            executor.systemctl_user(user, "stop", unit, check=False)
            manifest.units.pop(a.target, None)
            done(a, f"stopped {unit} ({user})")
    for a in plan.of_kind("file"):
        if a.change is Change.REMOVE:
            dest = layout.backups / stamp / PurePosixPath(a.target).relative_to("/")
            if executor.stat(a.target) is not None:
                executor.copy_to(a.target, dest)
                result.backups.append(str(dest))
                executor.remove(a.target)
            manifest.files.pop(a.target, None)
            done(a, f"removed {a.target} (no longer configured)")
            continue
        if a.target not in files:
            continue  # a file no longer configured but edited by hand: kept (drift)
        f = files[a.target]
        if a.change is Change.DRIFT:
            progress(f"kept {f.path}: edited by hand (use --force to replace it)")
            continue
        if a.changes and a.attrs_only:
            executor.set_attrs(f.path, f.mode, f.owner, f.group)
            done(a, f"fixed owner/mode of {f.path}")
        elif a.changes:
            if a.backup:
                dest = layout.backups / stamp / PurePosixPath(f.path).relative_to("/")
                executor.copy_to(f.path, dest)
                result.backups.append(str(dest))
            executor.write_file(f.path, f.content, f.mode, f.owner, f.group)
            done(a, f"{'wrote' if a.change is Change.CREATE else 'updated'} {f.path}")
        manifest.files[f.path] = sha256(f.content)
    _save(executor, layout, manifest)

    for a in plan.of_kind("sysctl"):
        if a.changes:
            executor.apply_sysctl(layout.sysctl_dropin)
            done(a, f"applied {layout.sysctl_dropin}")
    for a in plan.of_kind("systemd"):
        if a.changes:
            executor.systemctl("daemon-reload")
            executor.systemctl("enable", "--now", a.target)
            done(a, f"enabled {a.target} (daily certificate check)")

    # 4. systemd: regenerate units from quadlets, then start/restart/reload what changed
    for a in plan.of_kind("daemon-reload"):
        if a.changes:
            executor.systemctl_user(a.target, "daemon-reload")
            done(a, f"systemctl --user daemon-reload for {a.target}")
    for a in plan.of_kind("image"):
        if a.changes:
            progress(f"pulling {a.target} as {a.user} (podman's progress follows)...")
            executor.pull_image(a.user, a.target)
            done(a, f"pulled {a.target} for {a.user}")
    for a in plan.of_kind("unit"):
        if not a.changes or a.change is Change.REMOVE:
            continue
        user, unit = a.target.split("/", 1)
        progress(f"{a.verb} {unit} ({user})...")
        executor.systemctl_user(user, a.verb, unit)
        inputs = {
            f.path: sha256(f.content)
            for f in desired.files
            if any(r.user == user and r.unit == unit for r in f.units)
        }
        manifest.units[a.target] = inputs
        _save(executor, layout, manifest)
        done(a, f"{a.verb}ed {unit} ({user})")

    # 5. Open WebUI's connections to the models, once it runs (its admin API)
    for a in plan.of_kind("webui"):
        if a.changes and desired.webui is not None:
            warning = sync_connections(desired.webui, progress)
            if warning:
                result.warnings.append(warning)
            else:
                result.done.append(a)
    return result


def _save(executor: Executor, layout: Layout, manifest: Manifest) -> None:
    data = manifest.dump()
    if executor.read(layout.manifest) != data:
        executor.write_file(layout.manifest, data, 0o600, "root", "root")
