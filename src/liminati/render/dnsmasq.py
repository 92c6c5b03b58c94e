"""dnsmasq.conf: authoritative for the domain, REFUSED for everything else."""

from __future__ import annotations

import json
from importlib import resources

from liminati.config import Config
from liminati.render.templates import render_template

#: dnsmasq listens here inside its container; podman publishes it on <tailnet-ip>:53.
INNER_PORT = 53
#: where the watched hosts directory is mounted inside the container
HOSTS_DIR = "/etc/dnsmasq-llm/hosts.d"
#: dnsmasq's query log inside both containers (dnsmasq writes, the admin page reads)
LOG_DIR = "/var/log/dnsmasq"
QUERY_LOG = f"{LOG_DIR}/queries.log"
#: the admin page's files inside its container
ADMIN_DIR = "/opt/dnsadmin"
ADMIN_PASSWORD = "/run/secrets/dnsadmin-password"


def render_dnsmasq(config: Config, listen_ip: str) -> str:
    return render_template(
        "dnsmasq.conf.j2",
        domain=config.domain,
        listen_ip=listen_ip,
        inner_port=INNER_PORT,
        query_log=QUERY_LOG,
    )


def render_dnsadmin_config(config: Config, listen_ip: str) -> str:
    """The admin page's JSON config; it shares dnsmasq's network namespace, so its health
    probe asks 127.0.0.1, and it listens on every address there (published on listen_ip)."""
    data = {
        "domain": config.domain,
        "server_ip": listen_ip,
        "listen": "0.0.0.0",
        "port": ADMIN_PORT,
        "hosts_dir": HOSTS_DIR,
        "query_log": QUERY_LOG,
        "password_file": ADMIN_PASSWORD,
        "dns_port": INNER_PORT,
        "probe_address": "127.0.0.1",
    }
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def dnsadmin_source() -> bytes:
    """The admin page: one stdlib-only file, shipped inside the liminati package."""
    return resources.files("liminati.dnsadmin").joinpath("app.py").read_bytes()


#: the admin page's port inside the shared network namespace
ADMIN_PORT = 5380
