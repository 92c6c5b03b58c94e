"""The whole desired host: users, directories, files and units, from config and material."""

from __future__ import annotations

from pathlib import PurePosixPath as P

from liminati.config import Config, ServiceUser
from liminati.layout import Layout
from liminati.render.dnsmasq import dnsadmin_source, render_dnsadmin_config, render_dnsmasq
from liminati.render.ini import ContainerSpec, serialize
from liminati.render.model import (
    Desired,
    DirSpec,
    FileSpec,
    Material,
    Policy,
    UnitRef,
    UnitSpec,
    UserSpec,
    WebuiConnections,
)
from liminati.render.nginx import SECRET_FILES, render_nginx
from liminati.render.quadlet import (
    build_dnsadmin,
    build_dnsmasq,
    build_nginx,
    build_vllm,
    build_webui,
    model_urls,
)
from liminati.render.scripts import (
    CLIENT_PS1,
    CLIENT_SCRIPT,
    MOBILECONFIG,
    render_client_ps1,
    render_client_script,
    render_mobileconfig,
)
from liminati.render.systemd import render_renew_service, render_renew_timer

#: Names of the secrets liminati generates once and keeps in /var/lib/liminati/secrets.
SECRET_NAMES = ("vllm-api-key", "webui-secret-key", "webui-admin-password", "dnsadmin-password")

ROOT = "root"
#: a service's home and everything under it belongs to that service user alone
PRIVATE_DIR = 0o700
PUBLIC_FILE = 0o644
PRIVATE_FILE = 0o600
#: the CA key: read-only even for root, so nothing rewrites it by accident (mkcert does the same)
CA_KEY_MODE = 0o400


def _env_file(pairs: list[tuple[str, str]]) -> bytes:
    # podman --env-file: KEY=value per line, value taken literally (no quotes, no expansion)
    for key, value in pairs:
        if "\n" in value:
            raise ValueError(f"{key}: a value with a newline cannot go into an env file")
    return "".join(f"{k}={v}\n" for k, v in pairs).encode()


class _Builder:
    def __init__(self) -> None:
        self.dirs: dict[str, DirSpec] = {}
        self.files: list[FileSpec] = []

    def dir(self, path: P, owner: str, mode: int = PRIVATE_DIR, *, data: bool = False) -> None:
        self.dirs.setdefault(str(path), DirSpec(str(path), owner, owner, mode, data))

    def file(
        self, path: P, content: str | bytes, owner: str, mode: int = PUBLIC_FILE, **kw: object
    ) -> None:
        data = content.encode() if isinstance(content, str) else content
        self.files.append(FileSpec(str(path), data, owner, owner, mode, **kw))  # type: ignore[arg-type]


#: how the renewal timer runs liminati when the caller does not say (a pip install puts it here)
DEFAULT_PROGRAM = ("/usr/local/bin/liminati",)


def build_desired(
    config: Config,
    listen_ip: str,
    material: Material,
    program: tuple[str, ...] = DEFAULT_PROGRAM,
    config_file: str | None = None,
) -> Desired:
    """`program` runs liminati in the renewal unit; `config_file` is the `--config` the install
    was given (None: the default path), which the renewal reads too."""
    layout = Layout(config)
    b = _Builder()
    users = config.users

    # root's own state: the CA, the secrets, the manifest
    b.dir(layout.state_dir, ROOT)
    b.dir(layout.pki_dir, ROOT)
    b.dir(layout.secrets_dir, ROOT)
    b.file(
        layout.ca_key,
        material.ca_key_pem,
        ROOT,
        CA_KEY_MODE,
        secret=True,
        policy=Policy.GENERATE_ONCE,
    )
    b.file(layout.ca_cert, material.ca_cert_pem, ROOT, PUBLIC_FILE, policy=Policy.GENERATE_ONCE)
    for name in SECRET_NAMES:
        b.file(
            layout.secrets_dir / name,
            material.secrets[name] + "\n",
            ROOT,
            PRIVATE_FILE,
            secret=True,
            policy=Policy.GENERATE_ONCE,
        )
    # the daily renewal: a root service and its timer
    b.file(
        layout.renew_service,
        render_renew_service(program, (str(layout.state_dir), str(layout.nginx_ssl)), config_file),
        ROOT,
        activate="systemd",
    )
    b.file(layout.renew_timer, render_renew_timer(), ROOT, activate="systemd")
    # rootless containers publish 53, 80 and 443 themselves
    lowest = min(config.ports.dns, config.ports.http, config.ports.https, config.ports.dist)
    b.file(
        layout.sysctl_dropin,
        "# Managed by liminati: rootless nginx and dnsmasq publish ports from "
        f"{lowest} up on the tailnet address.\n"
        f"net.ipv4.ip_unprivileged_port_start = {min(lowest, 1024)}\n"
        "# At boot the tailnet address may come after the containers (tailscaled sets it when it\n"
        "# is up): this lets them bind it before it exists, instead of failing to start.\n"
        "net.ipv4.ip_nonlocal_bind = 1\n",
        ROOT,
        activate="sysctl",
    )

    def home(user: ServiceUser) -> None:
        b.dir(P(user.home), user.name)
        b.dir(P(user.home) / ".config", user.name)
        b.dir(P(user.home) / ".config" / "containers", user.name)
        b.dir(layout.quadlet_dir(user), user.name)
        b.dir(layout.private_dir(user), user.name)

    def quadlet(user: ServiceUser, spec: ContainerSpec, image: str) -> UnitSpec:
        path = layout.quadlet_dir(user) / f"{spec.name}.container"
        unit = UnitSpec(user.name, f"{spec.name}.service", str(path), image, bool(spec.exec_reload))
        b.file(path, serialize(spec), user.name, units=(UnitRef(user.name, unit.unit),))
        return unit

    units: list[UnitSpec] = []
    internal_key = material.secrets["vllm-api-key"]

    # vLLM: one unit per model, the internal key in an env file only vllm-user can read
    home(users.vllm)
    b.dir(P(users.vllm.home) / ".cache", users.vllm.name)
    b.dir(layout.hf_cache, users.vllm.name, data=True)
    for model in config.models:
        spec = build_vllm(config, layout, model)
        unit = quadlet(users.vllm, spec, config.images.vllm)
        units.append(unit)
        b.file(
            layout.vllm_env(model),
            _env_file([("VLLM_API_KEY", internal_key)]),
            users.vllm.name,
            PRIVATE_FILE,
            secret=True,
            units=(UnitRef(users.vllm.name, unit.unit),),
        )

    # Open WebUI: talks to vLLM on loopback with the internal key; admin from the secrets
    home(users.webui)
    b.dir(layout.webui_data, users.webui.name, data=True)
    unit = webui_unit = quadlet(users.webui, build_webui(config, layout), config.images.webui)
    units.append(unit)
    webui_env = [
        ("WEBUI_SECRET_KEY", material.secrets["webui-secret-key"]),
        ("OPENAI_API_KEYS", ";".join(internal_key for _ in config.models)),
        ("WEBUI_ADMIN_EMAIL", config.webui.admin_email),
        ("WEBUI_ADMIN_NAME", config.webui.admin_name),
        ("WEBUI_ADMIN_PASSWORD", material.secrets["webui-admin-password"]),
    ]
    b.file(
        layout.webui_env,
        _env_file(webui_env),
        users.webui.name,
        PRIVATE_FILE,
        secret=True,
        units=(UnitRef(users.webui.name, unit.unit),),
    )

    # nginx: config tree, certificates, client downloads
    home(users.nginx)
    nginx_unit = quadlet(users.nginx, build_nginx(config, layout, listen_ip), config.images.nginx)
    units.append(nginx_unit)
    reload = (UnitRef(users.nginx.name, nginx_unit.unit),)
    for sub in ("conf.d", "snippets", "ssl", "ssl/dist", "dist"):
        b.dir(layout.nginx_home / sub, users.nginx.name, 0o755)
    # mount point of the container's tmpfs (pid file, temp files): the home is mounted read-only
    b.dir(layout.nginx_home / "tmp", users.nginx.name, 0o700)
    for rel, text in render_nginx(config, material.api_keys, internal_key).items():
        secret = rel in SECRET_FILES
        b.file(
            layout.nginx_home / rel,
            text,
            users.nginx.name,
            PRIVATE_FILE if secret else PUBLIC_FILE,
            secret=secret,
            units=reload,
        )
    b.file(layout.leaf_cert, material.leaf_cert_pem, users.nginx.name, units=reload)
    b.file(
        layout.leaf_key,
        material.leaf_key_pem,
        users.nginx.name,
        PRIVATE_FILE,
        secret=True,
        units=reload,
    )
    b.file(layout.dist_ca, material.ca_cert_pem, users.nginx.name)
    if material.previous_ca_pem is not None:
        b.file(layout.previous_ca, material.previous_ca_pem, ROOT)
        b.file(layout.dist_previous_ca, material.previous_ca_pem, users.nginx.name)
    b.file(
        layout.dist_dir / CLIENT_SCRIPT,
        render_client_script(config, listen_ip, material.ca_sha256),
        users.nginx.name,
    )
    b.file(
        layout.dist_dir / CLIENT_PS1,
        render_client_ps1(config, listen_ip, material.ca_sha256),
        users.nginx.name,
    )
    b.file(
        layout.dist_dir / MOBILECONFIG,
        render_mobileconfig(config, listen_ip, material.ca_cert_pem),
        users.nginx.name,
    )

    # dnsmasq
    home(users.dnsmasq)
    dns_unit = quadlet(
        users.dnsmasq, build_dnsmasq(config, layout, listen_ip), config.images.dnsmasq
    )
    units.append(dns_unit)
    b.dir(layout.dnsmasq_hosts, users.dnsmasq.name, 0o755)
    b.dir(layout.dnsmasq_log_dir, users.dnsmasq.name, 0o755)
    dns_inputs = (UnitRef(users.dnsmasq.name, dns_unit.unit),)
    b.file(
        layout.dnsmasq_conf, render_dnsmasq(config, listen_ip), users.dnsmasq.name, units=dns_inputs
    )

    # the DNS admin page (port 5380): one stdlib-only Python file, its config, its password
    admin_unit = quadlet(users.dnsmasq, build_dnsadmin(config, layout), config.images.dnsadmin)
    units.append(admin_unit)
    admin_inputs = (UnitRef(users.dnsmasq.name, admin_unit.unit),)
    b.dir(layout.dnsadmin_dir, users.dnsmasq.name, 0o755)
    b.file(
        layout.dnsadmin_dir / "app.py", dnsadmin_source(), users.dnsmasq.name, units=admin_inputs
    )
    b.file(
        layout.dnsadmin_dir / "config.json",
        render_dnsadmin_config(config, listen_ip),
        users.dnsmasq.name,
        units=admin_inputs,
    )
    b.file(
        layout.dnsadmin_password,
        material.secrets["dnsadmin-password"] + "\n",
        users.dnsmasq.name,
        PRIVATE_FILE,
        secret=True,
        units=admin_inputs,
    )

    service_users = tuple(
        UserSpec(u.name, u.home) for u in (users.vllm, users.webui, users.nginx, users.dnsmasq)
    )
    webui = WebuiConnections(
        base_url=f"http://127.0.0.1:{config.ports.webui}",
        admin_email=config.webui.admin_email,
        urls=model_urls(config),
        unit=f"{users.webui.name}/{webui_unit.unit}",
        admin_password=material.secrets["webui-admin-password"],
        api_key=internal_key,
    )
    return Desired(service_users, tuple(b.dirs.values()), tuple(b.files), tuple(units), webui)
