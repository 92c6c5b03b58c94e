"""The benchmark's streaming client (stdlib asyncio): reads a JSON job on stdin, prints a JSON
result on stdout. Run by bench/run.py inside a network namespace, directly against the model
server (plain HTTP) or through the gateway (TLS, verified against liminati's CA, the name
resolved by the system resolver, i.e. by liminati's dnsmasq in the client namespace).

Connections are kept alive, as SDK clients keep them: the DNS lookup, TCP connect and TLS
handshake happen once per connection, before any timer starts, followed by one unmeasured
warm-up request.

Jobs:
* `{"mode": "stream", "users": C, "streams": S, "stagger": T, ...}`: C connections, each
  running S streams back to back, their first streams started evenly over T seconds (one
  stream's length: C streams are then open at any time, starting at a steady pace).
  Per stream: time to first token (request written -> first content event read); per
  event: the gap since the previous one (inter-token gap) and the delivery delay (read
  here - written by the backend, both `time.monotonic()`).
* `{"mode": "hold", "users": N, "ramp": R, ...}`: N connections opened over R seconds, each
  holding one long stream; counts errors and how long all N were open at once.
* `{"mode": "request", ...}`: sequential non-streaming requests on one connection, for the
  real llama.cpp figure (latency per request).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import ssl
import sys
import time
from collections import Counter
from typing import Any

#: what a failed connection or request raises: counted by type, never fatal
ERRORS = (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError)


def summary(values: list[float]) -> dict[str, float]:
    """count, mean and percentiles (nearest rank) of seconds, reported in milliseconds."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    n = len(ordered)

    def pct(p: float) -> float:
        return ordered[min(n - 1, max(0, round(p / 100 * n + 0.5) - 1))] * 1000

    return {
        "count": n,
        "mean": sum(ordered) / n * 1000,
        "p50": pct(50),
        "p90": pct(90),
        "p99": pct(99),
        "max": ordered[-1] * 1000,
    }


class Conn:
    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        ctx = None
        if self.job.get("ca"):
            ctx = ssl.create_default_context(cafile=self.job["ca"])
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(
                self.job["host"],
                self.job["port"],
                ssl=ctx,
                server_hostname=self.job["host"] if ctx else None,
                limit=1 << 20,
            ),
            30,
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    async def post(self, body: dict[str, Any]) -> tuple[int, float]:
        """Write the request; read the status line and headers. (status, time written)."""
        assert self.reader is not None and self.writer is not None
        data = json.dumps(body).encode()
        head = (
            f"POST {self.job['path']} HTTP/1.1\r\nHost: {self.job['host_header']}\r\n"
            f"Authorization: Bearer {self.job['key']}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode()
        t0 = time.monotonic()
        self.writer.write(head + data)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        self.headers = {
            k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)
        }
        return int(lines[0].split(" ", 2)[1]), t0

    async def chunks(self) -> Any:
        """The response body, chunk by chunk, with the time each chunk was read."""
        assert self.reader is not None
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readline()
                    return
                data = await self.reader.readexactly(size + 2)
                yield data[:-2], time.monotonic()
        else:
            length = int(self.headers.get("content-length", "0"))
            yield await self.reader.readexactly(length), time.monotonic()


class Stream:
    """One streamed completion: its events' arrival times, delays and the errors seen."""

    def __init__(self) -> None:
        self.ttft: float | None = None
        self.gaps: list[float] = []
        self.delays: list[float] = []
        self.tokens = 0
        self.done = False

    async def run(self, conn: Conn, body: dict[str, Any]) -> str | None:
        status, t0 = await conn.post(body)
        buffer = b""
        last = None
        async for data, t in conn.chunks():
            if status != 200:
                continue
            buffer += data
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                payload = event.removeprefix(b"data: ")
                if payload == b"[DONE]":
                    self.done = True
                    continue
                sent = json.loads(payload)["sent"]
                self.delays.append(t - sent)
                if last is None:
                    self.ttft = t - t0
                else:
                    self.gaps.append(t - last)
                last = t
                self.tokens += 1
        if status != 200:
            return f"http_{status}"
        if not self.done or self.tokens != body["max_tokens"]:
            return "incomplete"
        return None


def body_for(job: dict[str, Any], tokens: int, stream: bool) -> dict[str, Any]:
    return {
        "model": job.get("model", "qwen"),
        "messages": [{"role": "user", "content": "Say hi"}],
        "max_tokens": tokens,
        "stream": stream,
    }


async def stream_job(job: dict[str, Any]) -> dict[str, Any]:
    errors: Counter[str] = Counter()
    ttft: list[float] = []
    gaps: list[float] = []
    delays: list[float] = []
    ready = asyncio.Barrier(job["users"])

    async def user(i: int) -> None:
        conn = Conn(job)
        try:
            await conn.open()
            await Stream().run(conn, body_for(job, 1, True))  # warm-up, not measured
            await ready.wait()
            # starts spread over one stream's length: a steady `users` streams open, not a burst
            await asyncio.sleep(job.get("stagger", 0.0) * i / job["users"])
            for _ in range(job["streams"]):
                stream = Stream()
                error = await stream.run(conn, body_for(job, job["tokens"], True))
                if error:
                    errors[error] += 1
                if stream.ttft is not None:
                    ttft.append(stream.ttft)
                gaps.extend(stream.gaps)
                delays.extend(stream.delays)
        except (*ERRORS, asyncio.BrokenBarrierError) as exc:
            errors[type(exc).__name__] += 1
            with contextlib.suppress(asyncio.BrokenBarrierError):
                await ready.abort()
        finally:
            conn.close()

    t0 = time.monotonic()
    await asyncio.gather(*(user(i) for i in range(job["users"])))
    return {
        "seconds": time.monotonic() - t0,
        "errors": dict(errors),
        "ttft_ms": summary(ttft),
        "gap_ms": summary(gaps),
        "delay_ms": summary(delays),
    }


async def hold_job(job: dict[str, Any]) -> dict[str, Any]:
    """N streams opened over `ramp` seconds, each `tokens` long at the backend's rate."""
    n, ramp = job["users"], job["ramp"]
    errors: Counter[str] = Counter()
    delays: list[float] = []
    gaps_max: list[float] = []
    state = {"active": 0, "peak": 0, "completed": 0}
    timeline: list[tuple[float, int]] = []
    t0 = time.monotonic()

    async def user(i: int) -> None:
        await asyncio.sleep(ramp * i / n)
        conn = Conn(job)
        counted = False
        try:
            await conn.open()
            stream = Stream()
            state["active"] += 1
            counted = True
            state["peak"] = max(state["peak"], state["active"])
            error = await stream.run(conn, body_for(job, job["tokens"], True))
            if error:
                errors[error] += 1
            else:
                state["completed"] += 1
            delays.extend(stream.delays)
            if stream.gaps:
                gaps_max.append(max(stream.gaps))
        except ERRORS as exc:
            errors[type(exc).__name__] += 1
        finally:
            if counted:
                state["active"] -= 1
            conn.close()

    async def sampler() -> None:
        while True:
            timeline.append((time.monotonic() - t0, state["active"]))
            await asyncio.sleep(0.5)

    sample = asyncio.create_task(sampler())
    await asyncio.gather(*(user(i) for i in range(n)))
    sample.cancel()
    full = [t for t, active in timeline if active == n]
    return {
        "seconds": time.monotonic() - t0,
        "errors": dict(errors),
        "completed": state["completed"],
        "peak_open": state["peak"],
        "all_open_seconds": (full[-1] - full[0]) if full else 0.0,
        "delay_ms": summary(delays),
        "worst_gap_per_stream_ms": summary(gaps_max),
    }


async def request_job(job: dict[str, Any]) -> dict[str, Any]:
    """`count` non-streaming requests, one after the other, on one kept-alive connection."""
    conn = Conn(job)
    await conn.open()
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    try:
        for i in range(job["count"] + 1):
            status, t0 = await conn.post(body_for(job, job["tokens"], False))
            async for _ in conn.chunks():
                pass
            if i == 0:
                continue  # warm-up
            if status != 200:
                errors[f"http_{status}"] += 1
            latencies.append(time.monotonic() - t0)
    finally:
        conn.close()
    return {"errors": dict(errors), "latency_ms": summary(latencies)}


def main() -> None:
    job = json.load(sys.stdin)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    runner = {"stream": stream_job, "hold": hold_job, "request": request_job}[job["mode"]]
    result = asyncio.run(runner(job))
    user, system = resource.getrusage(resource.RUSAGE_SELF)[:2]
    result["client_cpu_seconds"] = user + system
    print(json.dumps(result))


if __name__ == "__main__":
    main()
