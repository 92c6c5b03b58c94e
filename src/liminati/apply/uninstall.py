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


def uninstall(
    executor: Executor, config: Config, *, keep_data: bool, progress: Progress
) -> list[str]:
    """Stop and remove every unit, file, directory and user liminati made. With keep_data the
    model cache, Open WebUI's data (chats, users), the CA, the secrets and the API keys stay,
    and so do the service users that own them, so a re-install finds them as they were."""
    layout = Layout(config)
    removed: list[str] = []

    def gone(what: str) -> None:
        removed.append(what)
        progress(f"removed {what}")

    users = config.users
    with executor.lock(layout.lock):
        manifest = Manifest.parse(executor.read(layout.manifest))
        # 1. services: stop every unit (reverse order: the gateway before what it fronts)
        for _name, user, unit in reversed(build_service_names(config)):
            if executor.user(user) is not None:
                executor.systemctl_user(user, "stop", unit, check=False)
                progress(f"stopped {unit} ({user})")
        if executor.read(layout.renew_timer) is not None:
            executor.systemctl("disable", "--now", TIMER_UNIT)
            progress(f"disabled {TIMER_UNIT}")

        # 2. what is kept with --keep-data
        keep: list[PurePosixPath] = []
        if keep_data:
            keep = [layout.hf_cache, layout.webui_data, layout.pki_dir, layout.secrets_dir,
                    layout.api_keys, layout.manifest, layout.lock]  # fmt: skip

        def kept(path: PurePosixPath) -> bool:
            return any(path == k or k in path.parents for k in keep)

        # 3. files liminati wrote (the manifest lists each), then the trees it made
        for path in sorted(manifest.files):
            p = PurePosixPath(path)
            if not kept(p) and executor.stat(p) is not None:
                executor.remove(p)
                gone(path)
        homes = [PurePosixPath(u.home) for u in (users.vllm, users.webui, users.nginx,
                                                  users.dnsmasq)]  # fmt: skip
        for home in homes:
            if executor.stat(home) is None:
                continue
            if not keep_data:
                executor.remove_tree(home)
                gone(f"{home}/")
            else:
                for child in _children(executor, home):
                    if not kept(child) and not any(child in k.parents for k in keep):
                        executor.remove_tree(child)
                        gone(str(child))
        if not keep_data:
            for tree in (layout.state_dir,):
                if executor.stat(tree) is not None:
                    executor.remove_tree(tree)
                    gone(f"{tree}/")
        else:
            for child in _children(executor, layout.state_dir):
                if not kept(child):
                    executor.remove_tree(child)
                    gone(str(child))
            kept_manifest = Manifest(
                files={p: h for p, h in manifest.files.items() if kept(PurePosixPath(p))},
            )
            executor.write_file(layout.manifest, kept_manifest.dump(), 0o600, "root", "root")
        executor.systemctl("daemon-reload")
        if str(layout.sysctl_dropin) in removed:
            # the kernel's default, now that no rootless container publishes 53, 80 or 443
            executor.set_sysctl("net.ipv4.ip_unprivileged_port_start", "1024")

        # 4. the service users (without --keep-data: they own nothing any more)
        if not keep_data:
            for account in (users.vllm, users.webui, users.nginx, users.dnsmasq):
                if executor.user(account.name) is not None:
                    executor.remove_user(account.name)
                    gone(f"user {account.name} (with its subordinate ids and linger)")
    return removed


def _children(executor: Executor, directory: PurePosixPath) -> list[PurePosixPath]:
    host = executor.host_path(directory)
    if not host.is_dir():
        return []
    return sorted(directory / p.name for p in host.iterdir())
