"""Client side of the streaming test: POST the JSON body on stdin to URL through HTTPS
(verifying against CA, connecting to IP:PORT), and print, as JSON, each server-sent event's
delay between the time the upstream sent it and the time it arrived here."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import sys
import time
from urllib.parse import urlsplit


def main() -> None:
    url, ca, ip, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    parts = urlsplit(url)
    context = ssl.create_default_context(cafile=ca)
    conn = http.client.HTTPSConnection(ip, port, context=context, timeout=30)
    # connect to the IP, but verify and send SNI for the name, as our DNS would resolve it
    conn.sock = context.wrap_socket(
        socket.create_connection((ip, port), timeout=30), server_hostname=parts.hostname
    )
    body = sys.stdin.read().encode()
    conn.request(
        "POST",
        parts.path,
        body=body,
        headers={
            "Host": parts.hostname or "",
            "Content-Type": "application/json",
            "Authorization": f"Bearer {os.environ['SSE_KEY']}",
        },
    )
    response = conn.getresponse()
    assert response.status == 200, response.status
    delays = []
    buffer = b""
    while True:
        chunk = response.read1(65536)
        if not chunk:
            break
        now = time.time()
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            data = event.decode().removeprefix("data: ")
            if data == "[DONE]":
                continue
            delays.append(now - json.loads(data)["sent"])
    print(json.dumps(delays))


if __name__ == "__main__":
    main()
