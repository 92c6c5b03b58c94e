"""Client side of the live doctor test: runs doctor's network checks (liminati.checks) from the
client namespace against the real nginx and dnsmasq, and prints them as JSON.

Usage: DOCTOR_KEY=<key> python doctor_probe.py IP HTTPS_PORT CA_FILE LEAF_FILE NOW_ISO
(the key in the environment, never on a command line)."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path

from liminati.checks import api, dns, stream, tls, websocket
from liminati.checks.web import Endpoint

DOMAIN = "liminati.internal"


def main() -> None:
    ip, port, ca, leaf, now = sys.argv[1:6]
    key = os.environ["DOCTOR_KEY"]
    # a remote peer: the kernel picks the source address (doctor on the host uses loopback)
    endpoint = Endpoint(ip, int(port), DOMAIN, Path(ca).read_bytes(), source="")
    checks = [
        dns.check_dns(ip, 53, DOMAIN, source=""),
        tls.check_tls(endpoint, Path(leaf).read_bytes(), dt.datetime.fromisoformat(now), 30),
        api.check_api(endpoint, key, ["qwen"], "vllm-qwen"),
        stream.check_streaming(endpoint, key, "qwen", "vllm-qwen"),
        websocket.check_websocket(endpoint),
    ]
    print(json.dumps({c.name: c.as_json() for c in checks}))


if __name__ == "__main__":
    main()
