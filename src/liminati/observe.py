"""Read-only facts about the host, gathered through the executor for the planner."""

from __future__ import annotations

from liminati import keystore
from liminati.config import Config
from liminati.errors import HostError
from liminati.executor import Executor
from liminati.executor.webui import WebuiAdmin
from liminati.layout import Layout
from liminati.plan import Existing, Facts, Manifest
from liminati.plan.build import sysctl_settings
from liminati.plan.webui import WebuiSeen
from liminati.render import SECRET_NAMES, Desired


def observe_existing(executor: Executor, config: Config) -> Existing:
    """The generated inputs already on the host: CA, leaf, secrets."""
    layout = Layout(config)

    def text(name: str) -> str | None:
        raw = executor.read(layout.secrets_dir / name)
        return raw.decode().strip() if raw else None

    return Existing(
        ca_key=executor.read(layout.ca_key),
        ca_cert=executor.read(layout.ca_cert),
        leaf_cert=executor.read(layout.leaf_cert),
        leaf_key=executor.read(layout.leaf_key),
        secrets={name: text(name) for name in SECRET_NAMES},
        previous_ca=executor.read(layout.previous_ca),
        api_keys={k.owner: k.key for k in keystore.parse(executor.read(layout.api_keys)).values()},
    )


def observe(executor: Executor, config: Config, desired: Desired, *, images: bool = True) -> Facts:
    """`images`: look into the service users' podman storage and ask Open WebUI for its
    connections (both skipped for --no-start)."""
    layout = Layout(config)
    stats: dict[str, tuple[bool, int, str, str] | None] = {}
    contents: dict[str, bytes | None] = {}
    for path in [d.path for d in desired.dirs] + [f.path for f in desired.files]:
        st = executor.stat(path)
        stats[path] = None if st is None else (st.is_dir, st.mode, st.owner, st.group)
    for f in desired.files:
        st_f = stats[f.path]
        contents[f.path] = executor.read(f.path) if st_f is not None and not st_f[0] else None
    users: dict[str, tuple[int, str, str] | None] = {}
    linger: dict[str, bool] = {}
    for u in desired.users:
        seen = executor.user(u.name)
        users[u.name] = None if seen is None else (seen.uid, seen.home, seen.shell)
        linger[u.name] = executor.linger(u.name)
    active: dict[str, bool | None] = {}
    for unit in desired.units:
        key = f"{unit.user}/{unit.unit}"
        if executor.staged or users.get(unit.user) is None or not linger[unit.user]:
            active[key] = None
        else:
            result = executor.systemctl_user(unit.user, "is-active", unit.unit, check=False)
            active[key] = result.stdout.strip() == "active"
    present: dict[str, bool | None] = {}
    for user, image in dict.fromkeys((u.user, u.image) for u in desired.units):
        account = users.get(user)
        if not images or account is None or not linger[user]:
            present[f"{user} {image}"] = None
        else:
            present[f"{user} {image}"] = executor.image_present(user, image)
    # the kernel's live values of the settings the drop-in makes (a staged install has none)
    sysctl: dict[str, str | None] = {}
    for key in sysctl_settings(desired):
        raw = None if executor.staged else executor.read("/proc/sys/" + key.replace(".", "/"))
        sysctl[key] = raw.decode().strip() if raw is not None else None
    manifest = Manifest.parse(executor.read(layout.manifest))
    # files liminati wrote that the config no longer renders: the planner removes them
    wanted = {f.path for f in desired.files}
    for path in manifest.files:
        if path not in wanted:
            contents[path] = executor.read(path)
    return Facts(
        stats=stats,
        contents=contents,
        users=users,
        subuid=[(r.name, r.start, r.count) for r in executor.subids("subuid")],
        subgid=[(r.name, r.start, r.count) for r in executor.subids("subgid")],
        linger=linger,
        active=active,
        manifest=manifest,
        images=present,
        sysctl=sysctl,
        webui=observe_webui(executor, config, desired, active) if images else None,
    )


def observe_webui(
    executor: Executor, config: Config, desired: Desired, active: dict[str, bool | None]
) -> WebuiSeen | None:
    """Open WebUI's OpenAI connections, asked through its admin API (a sign-in as the admin
    liminati created); None for a staged host, or when not root (the admin's password is
    root's: a `plan` by another user must not try one it made up)."""
    want = desired.webui
    if executor.staged or want is None or not executor.is_root():
        return None
    if executor.stat(Layout(config).webui_data / "webui.db") is None:
        return WebuiSeen(has_database=False)
    if not active.get(want.unit):
        return WebuiSeen(has_database=True, problem="Open WebUI is not running")
    api = WebuiAdmin(want.base_url)
    try:
        token = api.signin(want.admin_email, want.admin_password)
        return WebuiSeen(has_database=True, config=api.openai_config(token))
    except HostError as exc:
        return WebuiSeen(has_database=True, problem=exc.message)
