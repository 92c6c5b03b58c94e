"""`liminati uninstall`: remove what install made; with keep_data, keep what people made."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath

from liminati.config import Config
from liminati.executor import Executor
from liminati.layout import Layout
from liminati.plan import Manifest
from liminati.render.quadlet import build_service_names
from liminati.render.systemd import TIMER_UNIT

Progress = Callable[[str], None]

#: where systemd records the last run of a Persistent= timer (it outlives `disable --now`)
TIMER_STAMP = PurePosixPath(f"/var/lib/systemd/timers/stamp-{TIMER_UNIT}")
#: the kernel's defaults, restored once no rootless container publishes 53, 80 or 443
SYSCTL_DEFAULTS = (
    ("net.ipv4.ip_unprivileged_port_start", "1024"),
    ("net.ipv4.ip_nonlocal_bind", "0"),
)


def kept_data(layout: Layout) -> list[tuple[PurePosixPath, str]]:
    """What `--keep-data` keeps, and what it is, for the report."""
    return [
        (layout.hf_cache, "the model cache"),
        (layout.webui_data, "Open WebUI's data (users, chats, uploads)"),
        (layout.pki_dir, "the CA (clients keep trusting a re-install)"),
        (layout.secrets_dir, "the secrets (Open WebUI's admin password, internal keys)"),
        (layout.api_keys, "the API keys"),
    ]


def uninstall(
    executor: Executor, config: Config, *, keep_data: bool, progress: Progress
) -> list[str]:
    """Stop and remove every unit, container, file, directory and user liminati made, and the
    renewal timer; return what was removed.

    With keep_data the model cache, Open WebUI's data (chats, users), the CA, the secrets and
    the API keys stay, and so do the accounts of the users owning that data (vllm-user and
    webui-user): their uids keep owning the files, so a re-install finds them readable and
    no new account can be handed those uids in between. Their systemd managers are stopped
    and linger is disabled all the same: nothing of liminati's runs after an uninstall.
    """
    layout = Layout(config)
    removed: list[str] = []

    def gone(what: str) -> None:
        removed.append(what)
        progress(f"removed {what}")

    accounts = (config.users.vllm, config.users.webui, config.users.nginx, config.users.dnsmasq)
    # the manifest (rewritten to list the kept files) and the lock stay with the data
    keep = [*(p for p, _ in kept_data(layout)), layout.manifest, layout.lock] if keep_data else []

    def kept(path: PurePosixPath) -> bool:
        return any(path == k or k in path.parents for k in keep)

    def holds_kept(path: PurePosixPath) -> bool:
        return any(path in k.parents for k in keep)

    staying = {a.name for a in accounts if holds_kept(PurePosixPath(a.home))}
    with executor.lock(layout.lock):
        manifest = Manifest.parse(executor.read(layout.manifest))
        # 1. services: stop every unit (reverse order: the gateway before what it fronts);
        #    quadlet's units remove their containers when they stop
        for _name, user, unit in reversed(build_service_names(config)):
            if executor.user(user) is not None:
                executor.systemctl_user(user, "stop", unit, check=False)
                progress(f"stopped {unit} ({user}) and removed its container")
        if executor.read(layout.renew_timer) is not None:
            executor.systemctl("disable", "--now", TIMER_UNIT)
            progress(f"disabled {TIMER_UNIT}")
        # 2. the users' systemd managers (and podman's pause processes) before their files go
        for account in accounts:
            if executor.user(account.name) is not None and executor.linger(account.name):
                executor.disable_linger(account.name)
                progress(f"stopped the systemd user manager of {account.name}, linger disabled")

        # 3. files liminati wrote (the manifest lists each), then the trees it made
        for path in sorted(manifest.files):
            p = PurePosixPath(path)
            if not kept(p) and executor.stat(p) is not None:
                executor.remove(p)
                gone(path)
        for account in accounts:
            home = PurePosixPath(account.home)
            if executor.stat(home) is None:
                continue
            if account.name not in staying:
                executor.remove_tree(home)
                gone(f"{home}/")
                continue
            # a kept user's home: everything but the kept data (quadlets, podman's storage)
            for child in _walk_around(executor, home, kept, holds_kept):
                executor.remove_tree(child)
                gone(str(child))
        if not keep_data:
            if executor.stat(layout.state_dir) is not None:
                executor.remove_tree(layout.state_dir)
                gone(f"{layout.state_dir}/")
        else:
            for child in _children(executor, layout.state_dir):
                if not kept(child):
                    executor.remove_tree(child)
                    gone(str(child))
            # what stays is no longer running: no unit inputs; the kept files still recorded
            kept_manifest = Manifest(
                files={p: h for p, h in manifest.files.items() if kept(PurePosixPath(p))},
            )
            executor.write_file(layout.manifest, kept_manifest.dump(), 0o600, "root", "root")
        if executor.stat(TIMER_STAMP) is not None:
            executor.remove(TIMER_STAMP)
            gone(str(TIMER_STAMP))
        executor.systemctl("daemon-reload")
        if str(layout.sysctl_dropin) in removed:
            for key, value in SYSCTL_DEFAULTS:
                executor.set_sysctl(key, value)
            defaults = ", ".join(f"{k} = {v}" for k, v in SYSCTL_DEFAULTS)
            progress(f"restored the kernel's defaults: {defaults}")

        # 4. the service users (with their subordinate ids and linger), except data owners
        for account in accounts:
            if account.name in staying:
                if executor.user(account.name) is not None:
                    progress(f"kept user {account.name}: it owns the kept data")
            elif executor.user(account.name) is not None:
                executor.remove_user(account.name)
                gone(f"user {account.name} (with its subordinate ids and linger)")
        for data, what in kept_data(layout) if keep_data else []:
            if executor.stat(data) is not None:
                progress(f"kept {data}: {what}")
    return removed


def _walk_around(
    executor: Executor,
    directory: PurePosixPath,
    kept: Callable[[PurePosixPath], bool],
    holds_kept: Callable[[PurePosixPath], bool],
) -> list[PurePosixPath]:
    """The entries under directory to remove so that only the kept paths (and the folders
    leading to them) stay: descends into a folder that holds kept data, removes the rest."""
    out: list[PurePosixPath] = []
    for child in _children(executor, directory):
        if kept(child):
            continue
        if holds_kept(child):
            out += _walk_around(executor, child, kept, holds_kept)
        else:
            out.append(child)
    return out


def _children(executor: Executor, directory: PurePosixPath) -> list[PurePosixPath]:
    host = executor.host_path(directory)
    if not host.is_dir() or host.is_symlink():
        return []
    return sorted(directory / p.name for p in host.iterdir())
