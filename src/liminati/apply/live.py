"""Changing files of the running nginx in place: validate against the live configuration,
write atomically, record in the manifest, reload (`cert renew`, `keys`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath

from liminati.apply.validate import Validator
from liminati.config import Config
from liminati.executor import Executor
from liminati.layout import Layout
from liminati.plan import Manifest, sha256
from liminati.render import Desired, FileSpec

NGINX_UNIT = "nginx-proxy.service"


def swap_nginx_files(
    executor: Executor,
    config: Config,
    new: dict[PurePosixPath, tuple[bytes, int]],
    *,
    strict: bool,
    after_validation: Callable[[], None] | None = None,
) -> bool:
    """Write `new` (path -> (content, mode)) in order, after `nginx -t` accepted the live
    configuration with them in place; reload nginx if liminati started it. The caller holds
    the lock. `after_validation` runs once nginx accepted the files, before any is written.
    Returns whether nginx was reloaded."""
    layout = Layout(config)
    _validate_live_nginx(executor, config, {p: data for p, (data, _) in new.items()}, strict)
    if after_validation is not None:
        after_validation()
    owner = config.users.nginx.name
    manifest = Manifest.parse(executor.read(layout.manifest))
    for path, (data, mode) in new.items():
        executor.write_file(path, data, mode, owner, owner)
        manifest.files[str(path)] = sha256(data)
    key = f"{owner}/{NGINX_UNIT}"
    reloaded = False
    if key in manifest.units:
        # graceful: old workers finish their connections, new ones use the new files
        executor.systemctl_user(owner, "reload", NGINX_UNIT)
        for path, (data, _) in new.items():
            manifest.units[key][str(path)] = sha256(data)
        reloaded = True
    executor.write_file(layout.manifest, manifest.dump(), 0o600, "root", "root")
    return reloaded


def _validate_live_nginx(
    executor: Executor, config: Config, new: dict[PurePosixPath, bytes], strict: bool
) -> None:
    """nginx -t on the configuration that is live now, with the new files in place."""
    layout = Layout(config)
    files = []
    for rel in (
        "nginx.conf",
        *(f"conf.d/{n}" for n in _names(executor, layout.nginx_confd)),
        *(f"snippets/{n}" for n in _names(executor, layout.nginx_snippets)),
        "ssl/liminati.crt",
        "ssl/liminati.key",
    ):
        path = layout.nginx_home / rel
        if path in new:
            continue
        data = executor.read(path)
        if data is not None:
            files.append(FileSpec(str(path), data, "root", "root", 0o600))
    files += [FileSpec(str(p), d, "root", "root", 0o600) for p, d in new.items()]
    Validator(executor, config, Desired((), (), tuple(files), ()), strict).run(["nginx"])


def _names(executor: Executor, directory: PurePosixPath) -> list[str]:
    host = executor.host_path(directory)
    return sorted(p.name for p in host.iterdir() if p.is_file()) if host.is_dir() else []
