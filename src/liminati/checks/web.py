"""HTTPS to nginx as a tailnet client sees it: connect to the listen address, send the name as
SNI and Host, verify against liminati's CA only (never the system store)."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from dataclasses import dataclass
from typing import Any

#: seconds to connect and for each read; generous for a loaded host, short enough for a person
TIMEOUT = 15.0
#: what a request to nginx may raise: the check reports it, doctor goes on
NETWORK_ERRORS = (OSError, http.client.HTTPException)
#: doctor's connections to the host's own tailnet address leave from loopback. podman's
#: pasta publishes the ports; it resets a connection whose source is the host's own tailnet
#: address (the container holds a copy of that address), and splices one from loopback
#: straight into the container, as it does for any local client.
LOCAL_SOURCE = "127.0.0.1"


@dataclass(frozen=True)
class Endpoint:
    """nginx on the tailnet address, as doctor reaches it."""

    ip: str
    port: int
    domain: str
    ca_pem: bytes
    #: the local address to connect from ("" lets the kernel choose: a remote client's view)
    source: str = LOCAL_SOURCE

    def name(self, host: str) -> str:
        return f"{host}.{self.domain}"

    @property
    def where(self) -> str:
        return f"{self.ip}:{self.port}"

    def context(self) -> ssl.SSLContext:
        # only our CA: a certificate from anywhere else must fail the check, as on a client
        return ssl.create_default_context(cadata=self.ca_pem.decode())

    def connect(self, host: str, timeout: float = TIMEOUT) -> ssl.SSLSocket:
        raw = socket.create_connection(
            (self.ip, self.port),
            timeout=timeout,
            source_address=(self.source, 0) if self.source else None,
        )
        try:
            return self.context().wrap_socket(raw, server_hostname=self.name(host))
        except BaseException:
            raw.close()
            raise

    def https(self, host: str, timeout: float = TIMEOUT) -> http.client.HTTPSConnection:
        """An HTTPS connection to the IP that verifies and sends SNI for host.<domain>, as a
        client resolving the name through our DNS would."""
        conn = http.client.HTTPSConnection(self.ip, self.port, timeout=timeout)
        conn.sock = self.connect(host, timeout)
        return conn


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    endpoint: Endpoint,
    host: str,
    method: str,
    path: str,
    *,
    key: str | None = None,
    body: bytes | None = None,
    timeout: float = TIMEOUT,
) -> Reply:
    """One request; the key goes in the Authorization header only (never logged)."""
    conn = endpoint.https(host, timeout)
    try:
        conn.request(method, path, body=body, headers=headers(endpoint, host, key, body))
        response = conn.getresponse()
        return Reply(response.status, response.read())
    finally:
        conn.close()


def headers(endpoint: Endpoint, host: str, key: str | None, body: bytes | None) -> dict[str, str]:
    out = {"Host": endpoint.name(host), "User-Agent": "liminati-doctor"}
    if key is not None:
        out["Authorization"] = f"Bearer {key}"
    if body is not None:
        out["Content-Type"] = "application/json"
    return out


def describe_error(exc: BaseException) -> str:
    """One line for a failed connection, without the noise of ssl's reprs."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, http.client.HTTPException):
        return f"bad HTTP reply: {exc!r}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
