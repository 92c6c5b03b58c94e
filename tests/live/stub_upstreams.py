"""Test fixtures standing in for vLLM and Open WebUI where a test measures nginx itself.

Declared as such: they are not liminati's code, and the real servers are exercised by
test_backends.py. Here the point is what nginx does to a stream, an upload or an upgrade, so
the upstream must be exactly controllable:

* `api` (vLLM's place, 127.0.0.1:8000): POST /v1/chat/completions with `"stream": true`
  answers server-sent events, one every `interval` seconds, each carrying the wall-clock time
  it was sent (`"sent"`), then `data: [DONE]`. GET /v1/models lists one model (`--model`,
  default qwen); a request without streaming answers which port served it. Every request is
  checked for the internal key nginx must put in place of the user's.
* `web` (Open WebUI's place, 127.0.0.1:3000): any POST is read whole and answered with its
  length; GET /ws/ with `Upgrade: websocket` completes the handshake (RFC 6455) and echoes
  one text frame.

Run: STUB_KEY=<internal key> python3 stub_upstreams.py api|web PORT (the key in the
environment, not on the command line). A request may set "stub_events" and "stub_interval".
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import socketserver
import sys
import time
from http.server import BaseHTTPRequestHandler

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    options: argparse.Namespace

    def log_message(self, fmt: str, *args: object) -> None:
        sys.stderr.write(f"{self.command} {self.path}\n")

    def _json(self, status: int, obj: object) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self) -> bool:
        if self.options.key and self.headers.get("Authorization") != f"Bearer {self.options.key}":
            self._json(401, {"error": "internal key expected"})
            return False
        return True

    def do_GET(self) -> None:
        if self.options.mode == "web" and self.path.startswith("/ws/"):
            self._websocket()
            return
        if self.options.mode == "api" and not self._authorized():
            return
        if self.path == "/v1/models":
            model = {"id": self.options.model, "object": "model"}
            self._json(200, {"object": "list", "data": [model]})
        else:
            self._json(200, {"path": self.path})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if self.options.mode == "web":
            self._json(200, {"received": len(body)})
            return
        if not self._authorized():
            return
        request = json.loads(body or b"{}")
        if not request.get("stream"):
            self._json(
                200,
                {
                    "model": self.options.model,
                    "asked": request.get("model"),
                    # which process answered: the main unit's port or the standby's
                    "served_by": self.options.port,
                    "choices": [{"message": {"content": "ok"}}],
                },
            )
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        events = int(request.get("stub_events", 20))
        interval = float(request.get("stub_interval", 0.05))
        for i in range(events):
            event = {"choices": [{"delta": {"content": f"t{i}"}}], "seq": i, "sent": time.time()}
            self._chunk(f"data: {json.dumps(event)}\n\n".encode())
            time.sleep(interval)
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _websocket(self) -> None:
        key = self.headers.get("Sec-WebSocket-Key", "")
        if self.headers.get("Upgrade", "").lower() != "websocket" or not key:
            self._json(400, {"error": "not an upgrade"})
            return
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        payload = b"hello through nginx"
        self.wfile.write(bytes([0x81, len(payload)]) + payload)
        self.wfile.flush()
        self.close_connection = True


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["api", "web"])
    parser.add_argument("port", type=int)
    parser.add_argument("--model", default="qwen", help="the id GET /v1/models lists")
    options = parser.parse_args()
    options.key = os.environ.get("STUB_KEY", "")
    Handler.options = options
    with Server(("127.0.0.1", options.port), Handler) as server:
        print("ready", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
