"""A fast OpenAI-compatible server that generates tokens at a fixed rate: a BENCHMARK FIXTURE.

It is not liminati's code and no test of behaviour uses it (those use the real vLLM and
llama.cpp, or tests/live/stub_upstreams.py). It stands in for vLLM on 127.0.0.1:8000 while
bench/ measures what nginx costs, so it must cost as little as possible itself: one asyncio
event loop, a hand-written HTTP/1.1 parser (keep-alive, Content-Length bodies), no framework.

* `POST /v1/chat/completions` and `/v1/completions`: `max_tokens` tokens (16 by default)
  generated at exactly `--rate` tokens per second per request (the first one after one token
  interval, like a prefill). Non-streaming: one JSON answer when the last token is due.
  `"stream": true`: server-sent events, chunked, one per token, each carrying the
  `time.monotonic()` at which it was written (`"sent"`: the clock is system-wide, so a client
  on the same machine, in any network namespace, can compute each event's delivery delay),
  then `data: [DONE]`.
* `GET /v1/models`: one model; `GET /health`: 200; `GET /bench/stats`: connections accepted,
  requests answered, streams open and their peak (nginx does not proxy this path).
* Every /v1 request must carry `Authorization: Bearer $BENCH_BACKEND_KEY` when that variable
  is set (vLLM's `--api-key`); 401 otherwise.

Run: BENCH_BACKEND_KEY=... python3 fake_backend.py --port 8000 --rate 1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import time
from typing import Any

MODEL = "qwen"


class Stats:
    connections = 0
    requests = 0
    streams_open = 0
    streams_peak = 0
    errors = 0


class Options:
    rate = 1000.0
    key = b""


def _response(status: int, reason: str, body: bytes, ctype: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
        % (status, reason.encode(), ctype, len(body))
        + body
    )


def _completion(n: int, chat: bool) -> bytes:
    text = " ".join(["tok"] * n)
    choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return json.dumps(
        {
            "id": "cmpl-bench",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": MODEL,
            "choices": [choice],
            "usage": {"prompt_tokens": 8, "completion_tokens": n, "total_tokens": 8 + n},
        },
        separators=(",", ":"),
    ).encode()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Http(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        #: a request being answered: the next one on this connection waits (no pipelining)
        self.busy = False
        self.streaming = False
        self.timers: list[asyncio.TimerHandle] = []
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        Stats.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in self.timers:
            timer.cancel()
        if self.streaming:
            Stats.streams_open -= 1
            self.streaming = False
        self.timers.clear()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._next()

    def _next(self) -> None:
        if self.busy or self.transport is None:
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].decode("latin-1").split("\r\n")
        method, path = head[0].split(" ", 2)[:2]
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if len(self.buf) < end + 4 + length:
            return
        body = self.buf[end + 4 : end + 4 + length]
        self.buf = self.buf[end + 4 + length :]
        Stats.requests += 1
        self._handle(method, path, headers, body)

    def _send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _done(self) -> None:
        self.busy = False
        self.streaming = False
        self.timers.clear()
        self._next()

    def _handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        if path == "/health":
            self._send(_response(200, "OK", b"{}"))
            return self._next()
        if path == "/bench/stats":
            stats = {k: getattr(Stats, k) for k in vars(Stats) if not k.startswith("_")}
            self._send(_response(200, "OK", json.dumps(stats).encode()))
            return self._next()
        if Options.key and headers.get("authorization", "").encode() != b"Bearer " + Options.key:
            self._send(_response(401, "Unauthorized", b'{"error":"bad key"}'))
            return self._next()
        if method == "GET" and path == "/v1/models":
            models = {"object": "list", "data": [{"id": MODEL, "object": "model"}]}
            self._send(_response(200, "OK", json.dumps(models).encode()))
            return self._next()
        if method != "POST" or path not in ("/v1/chat/completions", "/v1/completions"):
            self._send(_response(404, "Not Found", b'{"error":"not found"}'))
            return self._next()
        try:
            request = json.loads(body)
            n = max(1, int(request.get("max_tokens") or 16))
        except (ValueError, TypeError):
            Stats.errors += 1
            self._send(_response(400, "Bad Request", b'{"error":"bad json"}'))
            return self._next()
        chat = path.endswith("chat/completions")
        self.busy = True
        interval = 1.0 / Options.rate
        t0 = self.loop.time()
        if not request.get("stream"):
            answer = _response(200, "OK", _completion(n, chat))
            self.timers.append(self.loop.call_at(t0 + n * interval, self._finish, answer))
            return None
        self._send(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        self.streaming = True
        Stats.streams_open += 1
        Stats.streams_peak = max(Stats.streams_peak, Stats.streams_open)
        self._tick(t0, interval, 0, n, chat)
        return None

    def _finish(self, answer: bytes) -> None:
        self._send(answer)
        self._done()

    def _tick(self, t0: float, interval: float, i: int, n: int, chat: bool) -> None:
        """Token i is due at t0 + (i + 1) * interval: a fixed schedule, no drift."""
        self.timers.clear()
        if self.transport is None:
            return
        if i > 0:
            delta = {"content": f"t{i - 1} "} if chat else None
            choice: dict[str, Any] = {"index": 0, "finish_reason": None}
            if chat:
                choice["delta"] = delta
            else:
                choice["text"] = f"t{i - 1} "
            event = {
                "id": "cmpl-bench",
                "object": "chat.completion.chunk" if chat else "text_completion",
                "model": MODEL,
                "choices": [choice],
                "seq": i - 1,
                "sent": time.monotonic(),
            }
            self._send(_chunk(b"data: " + json.dumps(event, separators=(",", ":")).encode()
                              + b"\n\n"))  # fmt: skip
        if i == n:
            self._send(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            Stats.streams_open -= 1
            self.streaming = False
            self._done()
            return
        self.timers.append(
            self.loop.call_at(t0 + (i + 1) * interval, self._tick, t0, interval, i + 1, n, chat)
        )


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Http, host, port, backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready on {host}:{port}, {Options.rate:g} tokens/s per request", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--rate", type=float, default=1000.0, help="tokens per second")
    args = parser.parse_args()
    Options.rate = args.rate
    Options.key = os.environ.get("BENCH_BACKEND_KEY", "").encode()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
