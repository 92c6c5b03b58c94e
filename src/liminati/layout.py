"""Every path liminati reads or writes on the target host, derived from the config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from liminati.config import Config, Model, ServiceUser

P = PurePosixPath


@dataclass(frozen=True)
class Layout:
    """Paths as they are on the target ("/"-based); the executor maps them under --root."""

    config: Config

    @property
    def state_dir(self) -> P:
        return P("/var/lib/liminati")

    @property
    def manifest(self) -> P:
        return self.state_dir / "manifest.json"

    @property
    def lock(self) -> P:
        return self.state_dir / "lock"

    @property
    def backups(self) -> P:
        return self.state_dir / "backups"

    @property
    def secrets_dir(self) -> P:
        return self.state_dir / "secrets"

    @property
    def pki_dir(self) -> P:
        return self.state_dir / "pki"

    @property
    def ca_key(self) -> P:
        return self.pki_dir / "ca.key"

    @property
    def ca_cert(self) -> P:
        return self.pki_dir / "ca.crt"

    @property
    def api_keys(self) -> P:
        return self.state_dir / "api-keys.json"

    @property
    def previous_ca(self) -> P:
        return self.pki_dir / "previous-ca.crt"

    @property
    def retired_dir(self) -> P:
        return self.pki_dir / "retired"

    @property
    def renew_service(self) -> P:
        return P("/etc/systemd/system/liminati-cert-renew.service")

    @property
    def renew_timer(self) -> P:
        return P("/etc/systemd/system/liminati-cert-renew.timer")

    @property
    def sysctl_dropin(self) -> P:
        return P("/etc/sysctl.d/60-liminati-unprivileged-ports.conf")

    # --- per service -------------------------------------------------------------------------

    @staticmethod
    def home(user: ServiceUser) -> P:
        return P(user.home)

    @staticmethod
    def quadlet_dir(user: ServiceUser) -> P:
        return P(user.home) / ".config" / "containers" / "systemd"

    @staticmethod
    def private_dir(user: ServiceUser) -> P:
        """Per-user 0700 folder for files holding secrets (env files read by podman)."""
        return P(user.home) / ".config" / "liminati"

    @property
    def nginx_home(self) -> P:
        return P(self.config.users.nginx.home)

    @property
    def nginx_conf(self) -> P:
        return self.nginx_home / "nginx.conf"

    @property
    def nginx_confd(self) -> P:
        return self.nginx_home / "conf.d"

    @property
    def nginx_snippets(self) -> P:
        return self.nginx_home / "snippets"

    @property
    def nginx_ssl(self) -> P:
        return self.nginx_home / "ssl"

    @property
    def leaf_cert(self) -> P:
        return self.nginx_ssl / "liminati.crt"

    @property
    def leaf_key(self) -> P:
        return self.nginx_ssl / "liminati.key"

    @property
    def dist_ca(self) -> P:
        return self.nginx_ssl / "dist" / "liminati-ca.crt"

    @property
    def dist_previous_ca(self) -> P:
        return self.nginx_ssl / "dist" / "liminati-ca-previous.crt"

    @property
    def dist_dir(self) -> P:
        return self.nginx_home / "dist"

    @property
    def dnsmasq_conf(self) -> P:
        return P(self.config.users.dnsmasq.home) / "dnsmasq.conf"

    @property
    def dnsmasq_hosts(self) -> P:
        return P(self.config.users.dnsmasq.home) / "hosts.d"

    @property
    def dnsmasq_log_dir(self) -> P:
        """dnsmasq's query log, read by the DNS admin page."""
        return P(self.config.users.dnsmasq.home) / "log"

    @property
    def dnsadmin_dir(self) -> P:
        return P(self.config.users.dnsmasq.home) / "dnsadmin"

    @property
    def dnsadmin_password(self) -> P:
        return self.private_dir(self.config.users.dnsmasq) / "dnsadmin-password"

    @property
    def hf_cache(self) -> P:
        return P(self.config.users.vllm.home) / ".cache" / "huggingface"

    @property
    def webui_data(self) -> P:
        return P(self.config.users.webui.home) / "data"

    def vllm_env(self, model: Model) -> P:
        return self.private_dir(self.config.users.vllm) / f"{model.unit}.env"

    @property
    def webui_env(self) -> P:
        return self.private_dir(self.config.users.webui) / "open-webui.env"
