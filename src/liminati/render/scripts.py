"""What the download server on port 8081 hands to clients: the installers and the profile."""

from __future__ import annotations

import plistlib
import uuid

from cryptography.hazmat.primitives.serialization import Encoding

from liminati import __version__, pki
from liminati.config import Config
from liminati.render.nginx import CA_FILENAME
from liminati.render.templates import render_template

#: dist/ file names, served at http://<tailnet-ip>:<dist>/<name>
CLIENT_SCRIPT = "install-client.sh"
CLIENT_PS1 = "install-client.ps1"
MOBILECONFIG = "liminati.mobileconfig"


def _client_values(config: Config, listen_ip: str, ca_sha256: str) -> dict[str, object]:
    return {
        "domain": config.domain,
        "server_ip": listen_ip,
        "dist_port": config.ports.dist,
        "https_port": config.ports.https,
        "dns_port": config.ports.dns,
        "ca_sha256": ca_sha256,
        "ca_filename": CA_FILENAME,
        "version": __version__,
    }


def render_client_script(config: Config, listen_ip: str, ca_sha256: str) -> str:
    """install-client.sh: Linux and macOS (bash)."""
    return render_template("install-client.sh.j2", **_client_values(config, listen_ip, ca_sha256))


def render_client_ps1(config: Config, listen_ip: str, ca_sha256: str) -> str:
    """install-client.ps1: Windows (Windows PowerShell 5.1 and PowerShell 7)."""
    text = render_template("install-client.ps1.j2", **_client_values(config, listen_ip, ca_sha256))
    # Windows PowerShell 5.1 reads a file without a byte order mark as the ANSI code page:
    # keep the script ASCII so that it means the same everywhere. CRLF for Notepad's sake.
    text.encode("ascii")
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


def _uuid(domain: str, ca_sha256: str, what: str) -> str:
    """A stable PayloadUUID: the same CA and domain give the same profile, byte for byte,
    and a device sees a re-download as the same profile (a new CA as a new one)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"liminati:{domain}:{ca_sha256}:{what}")).upper()


def render_mobileconfig(config: Config, listen_ip: str, ca_cert_pem: bytes) -> bytes:
    """liminati.mobileconfig: the CA as a root certificate payload (iOS, iPadOS, macOS).

    No DNS payload: com.apple.dnsSettings.managed configures encrypted DNS only (DNSProtocol
    HTTPS or TLS; there is no plain-DNS value), and the liminati DNS speaks plain DNS on the
    tailnet. Apple devices get the names from Tailscale's split DNS instead (README,
    "Onboarding a client").
    """
    domain = config.domain
    der = pki.load_cert(ca_cert_pem, "CA certificate").public_bytes(Encoding.DER)
    sha256 = pki.fingerprint(ca_cert_pem)
    identifier = "internal.liminati." + domain
    root_payload = {
        "PayloadType": "com.apple.security.root",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{identifier}.ca",
        "PayloadUUID": _uuid(domain, sha256, "ca"),
        "PayloadDisplayName": f"liminati CA for {domain}",
        "PayloadDescription": (
            f"The private certificate authority of {domain}. It can only vouch for names "
            f"under {domain} (a critical name constraint)."
        ),
        "PayloadCertificateFileName": CA_FILENAME,
        "PayloadContent": der,
    }
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": identifier,
        "PayloadUUID": _uuid(domain, sha256, "profile"),
        "PayloadDisplayName": f"liminati ({domain})",
        "PayloadOrganization": "liminati",
        "PayloadDescription": (
            f"Trusts the liminati CA for https://webui.{domain} and https://vllm.{domain} "
            f"(server {listen_ip}). SHA-256 of the CA: {sha256}. After installing: Settings > "
            "General > About > Certificate Trust Settings > enable full trust for this CA. "
            f"Names under {domain} resolve through Tailscale's split DNS."
        ),
        "PayloadRemovalDisallowed": False,
        "PayloadScope": "System",
        "PayloadContent": [root_payload],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML, sort_keys=True)
