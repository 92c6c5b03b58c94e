"""HTTPS requests in a loop, a new verified connection each time, until a stop file appears.

    python https_loop.py CA_FILE NAME IP PORT PATH STOP_FILE

One JSON line per request on stdout: {"t": seconds since start, "status": int or null,
"serial": the server certificate's serial (hex) or null, "error": text or null}.
Run inside the client namespace by the live tier's renewal test; stdlib only.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import sys
import time


def main(argv: list[str]) -> int:
    ca, name, ip, port, path, stop = argv
    context = ssl.create_default_context(cafile=ca)
    t0 = time.monotonic()
    while not os.path.exists(stop):
        record: dict[str, object] = {"status": None, "serial": None, "error": None}
        conn = http.client.HTTPSConnection(name, int(port), timeout=5, context=context)
        # connect to the server's address, verify and send SNI for `name`
        conn._create_connection = (  # type: ignore[attr-defined]
            lambda _addr, timeout, source: socket.create_connection(
                (ip, int(port)), timeout, source
            )
        )
        try:
            conn.connect()
            record["serial"] = conn.sock.getpeercert()["serialNumber"]
            conn.request("GET", path, headers={"Connection": "close"})
            response = conn.getresponse()
            response.read()
            record["status"] = response.status
        except (OSError, http.client.HTTPException) as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
        record["t"] = round(time.monotonic() - t0, 4)
        print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
