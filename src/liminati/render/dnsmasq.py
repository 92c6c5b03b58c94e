"""dnsmasq.conf: authoritative for the domain, REFUSED for everything else."""

from __future__ import annotations

from liminati.config import Config
from liminati.render.templates import render_template

#: dnsmasq listens here inside its container; podman publishes it on <tailnet-ip>:53.
INNER_PORT = 53
#: where the watched hosts directory is mounted inside the container
HOSTS_DIR = "/etc/dnsmasq-llm/hosts.d"


def render_dnsmasq(config: Config, listen_ip: str) -> str:
    return render_template(
        "dnsmasq.conf.j2", domain=config.domain, listen_ip=listen_ip, inner_port=INNER_PORT
    )
