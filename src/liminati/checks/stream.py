"""Server-sent events through nginx, timed: a streamed chat completion must reach the client
event by event, not in a few bursts (what `proxy_buffering on` does to it).

The criterion counts reads of the socket, not milliseconds. With buffering off, nginx passes
each piece vLLM writes on as soon as it arrives, so each read brings about one event. With
buffering on, nginx holds the events until a buffer (4 or 8 KiB: 20-40 events) fills or the
stream ends, then writes them together: one read brings tens of them. HTTP chunks would not
tell (nginx keeps the upstream's chunk boundaries when it buffers), so the response is read
from the socket here, below HTTP. A model can outrun the path, and then vLLM itself writes
events in bursts (seen on the test system's tiny CPU model right after start): a stream in
bursts is therefore compared with the same request straight to vLLM on loopback before nginx
is blamed.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from liminati.checks.model import Check, fail, ok, warn
from liminati.checks.web import NETWORK_ERRORS, TIMEOUT, Endpoint, describe_error

NAME = "streaming"
PATH = "/v1/chat/completions"
#: enough events that buffering (one burst per 4-8 KiB, ~200 bytes an event) shows as few
#: reads, and that a fast model still spreads them over some time (the test system's tiny CPU
#: model, starved by a loaded machine, sent 64 all at once); a few seconds on a GPU.
#: `ignore_eos` (a vLLM extension) makes the model produce all of them.
MAX_TOKENS = 128
#: fewer events than this and the stream says nothing about buffering
MIN_EVENTS = 8
#: events per read above this on average: nginx is holding them back. Measured on the test
#: system (tiny CPU model, tokens ~1 ms apart): unbuffered 1.0-1.4 (65 events in 46-65
#: reads), buffered 65 in one read; a longer stream fills a buffer every 20-40 events.
MAX_EVENTS_PER_READ = 4.0
#: a stream in bursts is blamed on nginx only when it is this many times burstier than the
#: same request straight from vLLM: on a loaded 2-core test machine vLLM itself sent 129
#: events in 44 reads (2.6 a read) and nginx passed them on in 26 (5 a read), unbuffered
BURSTIER = 3.0
BUFFERING_HINT = (
    "nginx buffers the event stream: `proxy_buffering off` must be in effect for the API "
    "(snippets/proxy-stream.conf in nginx's home, managed by liminati): `liminati plan` shows "
    "a hand edit, `sudo liminati install --force` restores the file"
)


@dataclass(frozen=True)
class Arrival:
    """One read from the response: when it came and how many events it completed."""

    at: float  # seconds since the request was sent
    events: int  # events this read completed
    size: int  # bytes this read brought


@dataclass(frozen=True)
class Stream:
    status: int
    arrivals: tuple[Arrival, ...]
    done: bool  # the closing `data: [DONE]` arrived
    #: the start of the body of a reply that is not a stream (an error from nginx or vLLM)
    body: str = ""

    @property
    def events(self) -> int:
        return sum(a.events for a in self.arrivals)

    @property
    def reads(self) -> int:
        """Reads that delivered at least one event."""
        return sum(1 for a in self.arrivals if a.events)


class EventCounter:
    """Splits the bytes of a text/event-stream into events as they arrive (WHATWG HTML
    9.2.6: an empty line ends an event)."""

    def __init__(self) -> None:
        self._buffer = b""
        self.done = False

    def feed(self, chunk: bytes) -> int:
        """Events with data completed by this chunk, not counting the final [DONE]."""
        self._buffer += chunk.replace(b"\r\n", b"\n")
        count = 0
        while b"\n\n" in self._buffer:
            event, self._buffer = self._buffer.split(b"\n\n", 1)
            data = [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]
            if data == [b"[DONE]"]:
                self.done = True
            elif data:
                count += 1
        return count


def completion_request(model: str) -> bytes:
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Count from one to one hundred in words."}],
            "max_tokens": MAX_TOKENS,
            "ignore_eos": True,
            "temperature": 0,
            "stream": True,
        }
    ).encode()


class ResponseReader:
    """An HTTP/1.1 response read as it arrives: the head, then the body with any chunked
    framing removed (RFC 9112 7.1). `feed` returns the body bytes each network read brought,
    so that events are counted per read of the socket, not per HTTP chunk: nginx keeps the
    upstream's chunk boundaries even when it buffers, so chunks say nothing about timing."""

    def __init__(self) -> None:
        self._buffer = b""
        self.status = 0
        self.fields: dict[str, str] = {}
        self.complete = False  # the last chunk arrived
        self._chunked: bool | None = None  # None: head not read yet
        self._left = 0  # bytes of the current chunk still to come (chunked)
        self._after_chunk = False  # the CRLF after a chunk's data is still due

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        if self._chunked is None:
            head, sep, rest = self._buffer.partition(b"\r\n\r\n")
            if not sep:
                return b""
            self._parse_head(head)
            self._buffer = rest
        if not self._chunked:
            body, self._buffer = self._buffer, b""
            return body
        return self._dechunk()

    def _parse_head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ValueError(f"not an HTTP/1.1 response: {lines[0][:60]!r}")
        self.status = int(parts[1])
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.fields[name.strip().lower()] = value.strip()
        self._chunked = "chunked" in self.fields.get("transfer-encoding", "").lower()

    def _dechunk(self) -> bytes:
        out = b""
        while self._buffer and not self.complete:
            if self._left:
                piece = self._buffer[: self._left]
                out += piece
                self._left -= len(piece)
                self._buffer = self._buffer[len(piece) :]
                self._after_chunk = self._left == 0
                continue
            if self._after_chunk:
                if len(self._buffer) < 2:
                    break
                self._buffer, self._after_chunk = self._buffer[2:], False
                continue
            line, sep, rest = self._buffer.partition(b"\r\n")
            if not sep:
                break
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            self._buffer = rest
            if size == 0:
                self.complete = True
            self._left = size
        return out


def request_bytes(host: str, key: str, body: bytes) -> bytes:
    fields = {
        "Host": host,
        "User-Agent": "liminati-doctor",
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "Accept": "text/event-stream",
        # one request on this connection: the server closes it after the response
        "Connection": "close",
    }
    head = f"POST {PATH} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return head.encode() + b"\r\n" + body


def read_stream(sock: socket.socket, request: bytes) -> Stream:
    """Send the request; note when each read of the socket came and the events it ended."""
    start = time.monotonic()
    sock.sendall(request)
    reader, counter = ResponseReader(), EventCounter()
    arrivals = []
    body = b""
    while not reader.complete and (data := sock.recv(65536)):
        payload = reader.feed(data)
        if reader.status == 200:
            arrivals.append(Arrival(time.monotonic() - start, counter.feed(payload), len(data)))
        elif reader.status:
            body += payload
            if len(body) > 300:
                break
    if reader.status != 200:
        return Stream(reader.status, (), False, body[:300].decode(errors="replace"))
    return Stream(200, tuple(arrivals), counter.done)


def measure(endpoint: Endpoint, key: str, model: str) -> Stream:
    """The stream through nginx, as a client gets it."""
    with endpoint.connect("vllm") as tls:
        return read_stream(
            tls, request_bytes(endpoint.name("vllm"), key, completion_request(model))
        )


def measure_direct(port: int, internal_key: str, model: str) -> Stream:
    """The same stream straight from vLLM on loopback: how vLLM itself sent the events."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        request = request_bytes(f"127.0.0.1:{port}", internal_key, completion_request(model))
        return read_stream(sock, request)


def per_read(stream: Stream) -> float:
    return stream.events / max(stream.reads, 1)


def bursty(stream: Stream) -> bool:
    return per_read(stream) > MAX_EVENTS_PER_READ


def burstier(stream: Stream, reference: Stream) -> bool:
    """nginx made the stream clearly burstier than vLLM itself sent it."""
    return per_read(stream) > BURSTIER * per_read(reference)


def _counted(stream: Stream) -> str:
    reads = stream.reads
    return f"{stream.events} events in {reads} read{'' if reads == 1 else 's'}"


def judge_stream(stream: Stream, unit: str, reference: Stream | None = None) -> Check:
    """`stream`: through nginx; `reference`: the same request straight from vLLM, measured
    only when `stream` came in bursts (None: not measured)."""
    if stream.status != 200:
        said = " ".join(stream.body.split())[:120]
        return fail(
            NAME,
            f"{PATH} answered HTTP {stream.status}: {said}",
            f"`liminati status`; `liminati logs {unit}`",
        )
    if stream.events == 0:
        return fail(NAME, "the stream carried no events", f"`liminati logs {unit}`")
    with_events = [a for a in stream.arrivals if a.events]
    first, last = with_events[0].at, with_events[-1].at
    detail = f"{_counted(stream)}, first after {first:.2f}s, last after {last:.2f}s"
    if not stream.done:
        return fail(
            NAME,
            f"{detail}; the stream ended without [DONE] (cut off)",
            f"nginx's read timeout or vLLM stopped: `liminati logs nginx`, `liminati logs {unit}`",
        )
    if stream.events < MIN_EVENTS:
        return warn(
            NAME,
            f"{detail}: too few to judge buffering",
            f"the model stopped early; `liminati logs {unit}`",
        )
    if not bursty(stream):
        return ok(NAME, f"{detail}: one by one, not buffered")
    biggest = max(a.events for a in with_events)
    if reference is not None and reference.status == 200 and not burstier(stream, reference):
        if not bursty(reference):
            return ok(
                NAME, f"{detail}: as vLLM itself sent them ({_counted(reference)}), not buffered"
            )
        return warn(
            NAME,
            f"{detail}, up to {biggest} at once; straight from vLLM too "
            f"({_counted(reference)}): the model is too fast here to tell whether nginx buffers",
            "run `liminati doctor` again",
        )
    direct = ""
    if reference is not None and reference.status == 200:
        direct = f" (straight from vLLM: {_counted(reference)})"
    return fail(NAME, f"{detail}{direct}: buffered, up to {biggest} events at once", BUFFERING_HINT)


#: a stream that looks buffered while vLLM itself sent it in bursts (a first request after
#: start, a model far faster than the client) is measured again, this many times in all
ATTEMPTS = 3


def check_streaming(
    endpoint: Endpoint,
    key: str,
    model: str,
    unit: str,
    direct: Callable[[], Stream] | None = None,
) -> Check:
    """`direct`: measures the same stream straight from vLLM (None: no reference, e.g. the
    internal key is unreadable); asked only when the stream through nginx came in bursts."""
    try:
        for _ in range(ATTEMPTS):
            stream = measure(endpoint, key, model)
            if stream.status != 200 or not bursty(stream) or direct is None:
                return judge_stream(stream, unit)
            reference = direct()
            if reference.status != 200 or burstier(stream, reference) or not bursty(reference):
                break  # a verdict either way; else vLLM was as bursty: measure again
    except (*NETWORK_ERRORS, ValueError) as exc:
        return fail(
            NAME,
            f"{PATH} at {endpoint.where}: {describe_error(exc)}",
            f"`liminati status`; `liminati logs nginx`; `liminati logs {unit}`",
        )
    return judge_stream(stream, unit, reference)
