"""Listening sockets and the processes holding them, read from /proc (no ss or lsof needed)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from liminati.executor.base import Socket

TCP_LISTEN = "0A"
UDP_UNCONNECTED = "07"


def _addr(hexaddr: str, v6: bool) -> str:
    raw = bytes.fromhex(hexaddr)
    if v6:
        # four little-endian 32-bit words
        words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
        return str(ipaddress.IPv6Address(words))
    return str(ipaddress.IPv4Address(raw[::-1]))


def _owners(proc: Path) -> dict[str, tuple[int, str]]:
    """socket inode -> (pid, command name)."""
    owners: dict[str, tuple[int, str]] = {}
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            fds = list((pid_dir / "fd").iterdir())
            comm = (pid_dir / "comm").read_text().strip()
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                owners.setdefault(target[8:-1], (int(pid_dir.name), comm))
    return owners


def listening_sockets(proc: Path) -> list[Socket]:
    found: list[tuple[str, str, int, int, str]] = []
    for name, proto, state in (
        ("tcp", "tcp", TCP_LISTEN),
        ("tcp6", "tcp", TCP_LISTEN),
        ("udp", "udp", UDP_UNCONNECTED),
        ("udp6", "udp", UDP_UNCONNECTED),
    ):
        try:
            lines = (proc / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 10 or f[3] != state:
                continue
            hexaddr, hexport = f[1].split(":")
            found.append(
                (proto, _addr(hexaddr, name.endswith("6")), int(hexport, 16), int(f[7]), f[9])
            )
    owners = _owners(proc) if found else {}
    out = []
    for proto, addr, port, uid, inode in found:
        pid, comm = owners.get(inode, (None, "unknown process"))
        out.append(Socket(proto, addr, port, uid, pid, comm))
    return out
