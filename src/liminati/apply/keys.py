"""`liminati keys`: per-person API keys for the vLLM vhost, enforced by nginx."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from liminati import keystore
from liminati.apply.live import swap_nginx_files
from liminati.config import Config
from liminati.errors import UsageError
from liminati.executor import Executor
from liminati.keystore import ApiKey
from liminati.layout import Layout
from liminati.render.nginx import render_api_keys_map


def list_keys(executor: Executor, config: Config) -> list[ApiKey]:
    raw = executor.read(Layout(config).api_keys)
    return sorted(keystore.parse(raw).values(), key=lambda k: k.owner)


def change_keys(
    executor: Executor,
    config: Config,
    edit: Callable[[dict[str, ApiKey]], None],
    *,
    strict: bool,
) -> bool:
    """Apply `edit` to the store, then swap nginx's key map in and reload it (no restart).
    Returns whether nginx was reloaded (False: not started by liminati yet, or staged)."""
    layout = Layout(config)
    with executor.lock(layout.lock):
        keys = keystore.parse(executor.read(layout.api_keys))
        edit(keys)
        new_map = render_api_keys_map({k.owner: k.key for k in keys.values()}).encode()
        # the store right after nginx accepted the map: if the map write then fails, the next
        # install renders it from the store
        return swap_nginx_files(
            executor, config, {layout.nginx_snippets / "api-keys.map": (new_map, 0o600)},
            strict=strict,
            after_validation=lambda: executor.write_file(
                layout.api_keys, keystore.dump(keys), 0o600, "root", "root"
            ),
        )  # fmt: skip


def add_key(
    executor: Executor,
    config: Config,
    owner: str,
    *,
    token: Callable[[], str],
    now: dt.datetime,
    strict: bool,
) -> tuple[ApiKey, bool]:
    keystore.check_owner(owner)
    made: list[ApiKey] = []

    def edit(keys: dict[str, ApiKey]) -> None:
        if owner in keys:
            raise UsageError(
                f"a key named {owner!r} exists already",
                hint=f"`liminati keys revoke {owner}` first, or choose another name",
            )
        key = ApiKey(owner, keystore.PREFIX + token(), now.isoformat())
        keys[owner] = key
        made.append(key)

    reloaded = change_keys(executor, config, edit, strict=strict)
    return made[0], reloaded


def revoke_key(executor: Executor, config: Config, owner: str, *, strict: bool) -> bool:
    def edit(keys: dict[str, ApiKey]) -> None:
        if owner not in keys:
            names = ", ".join(sorted(keys)) or "none"
            raise UsageError(f"no key named {owner!r}", hint=f"existing keys: {names}")
        del keys[owner]

    return change_keys(executor, config, edit, strict=strict)
