"""DNS through our dnsmasq: one A question over UDP, built and read with the stdlib (RFC 1035).

A dependency (dnspython) for two message shapes would be more code to trust than this.
"""

from __future__ import annotations

import secrets
import socket
import struct
from dataclasses import dataclass

from liminati.checks.model import Check, fail, ok, warn
from liminati.checks.web import LOCAL_SOURCE

NAME = "dns"
#: RFC 1035 4.1.1 RCODE values the check tells apart
NOERROR, SERVFAIL, NXDOMAIN, REFUSED = 0, 2, 3, 5
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
TYPE_A, CLASS_IN = 1, 1
#: a name outside the zone: dnsmasq must refuse it (no-resolv), or it is an open resolver
OUTSIDE_NAME = "example.com"
#: seconds per try; dnsmasq answers from memory in well under a millisecond
TIMEOUT = 2.0
TRIES = 2


@dataclass(frozen=True)
class Answer:
    rcode: int
    addresses: tuple[str, ...]

    @property
    def rcode_name(self) -> str:
        return RCODES.get(self.rcode, str(self.rcode))


class DnsFormatError(ValueError):
    """The reply is not a DNS message answering our question."""


def build_query(name: str, qid: int) -> bytes:
    """A standard query (recursion desired, as dig sends it) for the A record of `name`."""
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(label)]) + label.encode("ascii") for label in name.split("."))
    return header + qname + b"\x00" + struct.pack("!HH", TYPE_A, CLASS_IN)


def _skip_name(data: bytes, pos: int) -> int:
    """The offset just past a (possibly compressed) name starting at `pos`."""
    while True:
        if pos >= len(data):
            raise DnsFormatError("name runs past the end of the message")
        length = data[pos]
        if length & 0xC0 == 0xC0:  # a pointer ends the name (RFC 1035 4.1.4)
            return pos + 2
        if length == 0:
            return pos + 1
        pos += 1 + length


def parse_response(data: bytes, qid: int) -> Answer:
    """The RCODE and the A records of a reply to build_query(..., qid)."""
    if len(data) < 12:
        raise DnsFormatError(f"{len(data)} bytes: shorter than a DNS header")
    rid, flags, qdcount, ancount, _, _ = struct.unpack("!HHHHHH", data[:12])
    if rid != qid or not flags & 0x8000:
        raise DnsFormatError("not a reply to our query (id or QR bit)")
    pos = 12
    for _ in range(qdcount):
        pos = _skip_name(data, pos) + 4
    addresses = []
    for _ in range(ancount):
        pos = _skip_name(data, pos)
        if pos + 10 > len(data):
            raise DnsFormatError("answer record runs past the end of the message")
        rtype, rclass, _ttl, rdlength = struct.unpack("!HHIH", data[pos : pos + 10])
        pos += 10
        rdata = data[pos : pos + rdlength]
        pos += rdlength
        if rtype == TYPE_A and rclass == CLASS_IN and len(rdata) == 4:
            addresses.append(socket.inet_ntoa(rdata))
    return Answer(flags & 0x000F, tuple(addresses))


def query(server: str, port: int, name: str, source: str = LOCAL_SOURCE) -> Answer:
    """Ask `server` over UDP (from `source`, see web.LOCAL_SOURCE); a lost datagram is tried
    again once."""
    qid = secrets.randbelow(0x10000)
    message = build_query(name, qid)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        if source:
            sock.bind((source, 0))
        sock.connect((server, port))
        for attempt in range(TRIES):
            sock.send(message)
            try:
                while True:
                    reply = sock.recv(4096)
                    try:
                        return parse_response(reply, qid)
                    except DnsFormatError:
                        continue  # a stray or late datagram: keep listening until the timeout
            except TimeoutError:
                if attempt == TRIES - 1:
                    raise
    raise AssertionError("unreachable")


def judge_dns(
    answers: dict[str, Answer], outside: Answer | None, listen_ip: str, where: str
) -> Check:
    """Every zone name must answer exactly the listen address; a name outside the zone must
    not be answered (REFUSED), else the server is an open resolver."""
    hint = "`liminati status` and `liminati logs dnsmasq`; `liminati install` rewrites dnsmasq.conf"
    for name, answer in answers.items():
        if answer.rcode != NOERROR:
            return fail(NAME, f"{name} at {where}: {answer.rcode_name}", hint)
        if list(answer.addresses) != [listen_ip]:
            got = ", ".join(answer.addresses) or "no address"
            return fail(NAME, f"{name} at {where} answers {got}, not {listen_ip}", hint)
    names = ", ".join(answers)
    if outside is not None and outside.rcode == NOERROR and outside.addresses:
        return warn(
            NAME,
            f"{names} -> {listen_ip}, but {OUTSIDE_NAME} is answered too (an open resolver)",
            "dnsmasq.conf must keep `no-resolv`: `liminati plan` shows a hand edit, "
            "`liminati install --force` restores it",
        )
    return ok(NAME, f"{names} -> {listen_ip} from {where}; other names refused")


def check_dns(listen_ip: str, port: int, domain: str, source: str = LOCAL_SOURCE) -> Check:
    where = f"{listen_ip}:{port}"
    answers: dict[str, Answer] = {}
    try:
        for host in ("webui", "vllm"):
            answers[f"{host}.{domain}"] = query(listen_ip, port, f"{host}.{domain}", source)
        outside: Answer | None = query(listen_ip, port, OUTSIDE_NAME, source)
    except TimeoutError:
        return fail(
            NAME,
            f"no answer from {where} within {TIMEOUT * TRIES:g}s",
            "is dnsmasq running? `liminati status`; `liminati logs dnsmasq`",
        )
    except (OSError, DnsFormatError) as exc:
        return fail(NAME, f"asking {where}: {exc}", "`liminati status`; `liminati logs dnsmasq`")
    return judge_dns(answers, outside, listen_ip, where)
