"""Open WebUI's websocket (socket.io at /ws/) through nginx: the Upgrade must reach it and the
handshake complete (RFC 6455 4.1-4.2), or chats stall in the browser."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import secrets

from liminati.checks.model import Check, fail, ok
from liminati.checks.web import NETWORK_ERRORS, Endpoint, describe_error

NAME = "websocket"
#: Engine.IO 4 over a websocket from the start, as Open WebUI's own front end connects
PATH = "/ws/socket.io/?EIO=4&transport=websocket"
#: RFC 6455 1.3: the GUID the server appends to the client's key
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HINT_PROXY = (
    "nginx must pass Upgrade and Connection for Open WebUI: `liminati plan` shows a hand edit "
    "of its files, `sudo liminati install --force` restores them"
)


def accept_for(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def upgrade_request(host: str, key: str) -> bytes:
    return (
        f"GET {PATH} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "User-Agent: liminati-doctor\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    ).encode()


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status code and headers (names lowercased) of an HTTP/1.1 response head."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {lines[0][:60]!r}")
    fields = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip().lower()] = value.strip()
    return int(parts[1]), fields


def judge_handshake(
    host: str, status: int, fields: dict[str, str], key: str, first_frame: bytes
) -> Check:
    if status != 101:
        hint = (
            "`liminati status`; `liminati logs open-webui`"
            if status in (502, 503, 504)
            else HINT_PROXY
        )
        return fail(NAME, f"{PATH} answered HTTP {status}, not 101 Switching Protocols", hint)
    if fields.get("upgrade", "").lower() != "websocket":
        return fail(NAME, "101 without `Upgrade: websocket`", HINT_PROXY)
    if fields.get("sec-websocket-accept") != accept_for(key):
        return fail(NAME, "101 with a wrong Sec-WebSocket-Accept", HINT_PROXY)
    # a text frame (0x81) whose payload starts with "0": Engine.IO's open packet
    opened = len(first_frame) > 2 and first_frame[0] == 0x81 and first_frame[2:3] == b"0"
    said = ", Engine.IO session opened" if opened else ""
    return ok(NAME, f"wss://{host}{PATH.split('?')[0]}: 101 Switching Protocols{said}")


def check_websocket(endpoint: Endpoint) -> Check:
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    host = endpoint.name("webui")
    try:
        with endpoint.connect("webui") as tls:
            tls.sendall(upgrade_request(host, key))
            received = b""
            while b"\r\n\r\n" not in received:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                received += chunk
                if len(received) > 65536:
                    break
            head, _, rest = received.partition(b"\r\n\r\n")
            status, fields = parse_head(head)
            if status == 101 and len(rest) < 3:
                tls.settimeout(3.0)  # the server speaks first; no frame is no failure
                with contextlib.suppress(TimeoutError):
                    rest += tls.recv(4096)
            # a clean close frame (opcode 8, masked as a client must, empty payload)
            if status == 101:
                tls.sendall(b"\x88\x80" + secrets.token_bytes(4))
    except (*NETWORK_ERRORS, ValueError) as exc:
        return fail(
            NAME,
            f"wss://{host}{PATH} at {endpoint.where}: {describe_error(exc)}",
            "is nginx running? `liminati status`; `liminati logs nginx`",
        )
    return judge_handshake(host, status, fields, key, rest)
