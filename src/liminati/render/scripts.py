"""Shell scripts liminati serves: the client installer."""

from __future__ import annotations

from liminati import __version__
from liminati.config import Config
from liminati.render.nginx import CA_FILENAME
from liminati.render.templates import render_template


def render_client_script(config: Config, listen_ip: str, ca_sha256: str) -> str:
    return render_template(
        "install-client.sh.j2",
        domain=config.domain,
        server_ip=listen_ip,
        dist_port=config.ports.dist,
        ca_sha256=ca_sha256,
        ca_filename=CA_FILENAME,
        version=__version__,
    )
