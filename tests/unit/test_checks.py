"""The pure parts of `liminati doctor`: each check's judgement on real inputs (bytes dnsmasq
sent, certificates liminati's PKI makes, the dnsmasq.conf it renders, podman's and tailscale's
JSON shapes), the aggregation and the exit status. The network and host parts run against the
real stack in tests/system/test_stack_doctor.py."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from clitools import NOW, RunCli
from liminati import pki
from liminati.checks import api, disk, dns, gpu, images, services, stream, tailscale, tls, users
from liminati.checks import websocket as ws
from liminati.checks.doctor import Probe, parse_listen_ip, run_probes
from liminati.checks.model import Check, Status, exit_code, ok, worst
from liminati.checks.web import Reply
from liminati.cli.doctor import NOW_VARIABLE, doctor_now, print_checks
from liminati.config import Config
from liminati.errors import ExitCode, HostError, UsageError
from liminati.executor import RunResult
from liminati.render.dnsmasq import render_dnsmasq

DOMAIN = "liminati.internal"
IP = "100.64.0.10"
HOST = f"webui.{DOMAIN}"

# ---- aggregation -----------------------------------------------------------------------------


def test_checks_exit_code_fails_only_on_a_failed_check() -> None:
    fine = [
        Check("a", Status.OK, ""),
        Check("b", Status.WARN, "", "x"),
        Check("c", Status.SKIP, ""),
    ]
    assert exit_code(fine) == ExitCode.OK
    assert exit_code([*fine, Check("d", Status.FAIL, "", "y")]) == ExitCode.CHECKS_FAILED == 4
    assert exit_code([]) == ExitCode.OK


def test_checks_worst_orders_fail_warn_ok_skip() -> None:
    assert worst([Status.OK, Status.WARN, Status.SKIP]) is Status.WARN
    assert worst([Status.OK, Status.FAIL, Status.WARN]) is Status.FAIL
    assert worst([Status.SKIP, Status.OK]) is Status.OK
    assert worst([Status.SKIP]) is Status.SKIP
    assert worst([]) is Status.SKIP


def test_checks_json_has_the_four_fields() -> None:
    check = Check("dns", Status.FAIL, "no answer", "is dnsmasq running?")
    assert check.as_json() == {
        "name": "dns",
        "status": "fail",
        "detail": "no answer",
        "hint": "is dnsmasq running?",
    }


# ---- DNS -------------------------------------------------------------------------------------

# What dnsmasq 2.90 (no-resolv, local=/liminati.internal/, address=/liminati.internal/100.64.0.10)
# answered to build_query(...), recorded on loopback.
QUERY_VLLM = bytes.fromhex(
    "12340100000100000000000004766c6c6d086c696d696e61746908696e7465726e616c0000010001"
)
REPLY_VLLM = bytes.fromhex(
    "12348580000100010000000004766c6c6d086c696d696e61746908696e7465726e616c0000010001"
    "c00c000100010000000000046440000a"
)
REPLY_EXAMPLE_REFUSED = bytes.fromhex("432181850001000000000000076578616d706c6503636f6d0000010001")


def test_dns_query_is_one_a_question() -> None:
    assert dns.build_query(f"vllm.{DOMAIN}", 0x1234) == QUERY_VLLM


def test_dns_reply_from_dnsmasq_parses() -> None:
    assert dns.parse_response(REPLY_VLLM, 0x1234) == dns.Answer(0, (IP,))
    refused = dns.parse_response(REPLY_EXAMPLE_REFUSED, 0x4321)
    assert (refused.rcode, refused.rcode_name, refused.addresses) == (5, "REFUSED", ())


@pytest.mark.parametrize(
    "data, qid",
    [
        (REPLY_VLLM, 0x9999),  # another query's reply
        (QUERY_VLLM, 0x1234),  # not a reply (QR bit clear)
        (REPLY_VLLM[:-6], 0x1234),  # cut inside the answer
        (REPLY_VLLM[:8], 0x1234),  # shorter than a header
    ],
    ids=["other-id", "query", "truncated", "short"],
)
def test_dns_reply_that_is_not_ours_is_refused(data: bytes, qid: int) -> None:
    with pytest.raises(dns.DnsFormatError):
        dns.parse_response(data, qid)


def test_dns_judgement() -> None:
    answer = dns.Answer(0, (IP,))
    refused = dns.Answer(5, ())
    names = {f"webui.{DOMAIN}": answer, f"vllm.{DOMAIN}": answer}
    good = dns.judge_dns(names, refused, IP, f"{IP}:53")
    assert good.status is Status.OK, good
    wrong = dns.judge_dns(
        {**names, f"vllm.{DOMAIN}": dns.Answer(0, ("100.64.0.99",))}, refused, IP, f"{IP}:53"
    )
    assert wrong.status is Status.FAIL and "100.64.0.99, not 100.64.0.10" in wrong.detail
    nx = dns.judge_dns({f"webui.{DOMAIN}": dns.Answer(3, ())}, refused, IP, f"{IP}:53")
    assert nx.status is Status.FAIL and "NXDOMAIN" in nx.detail
    open_resolver = dns.judge_dns(names, dns.Answer(0, ("93.184.215.14",)), IP, f"{IP}:53")
    assert open_resolver.status is Status.WARN and "open resolver" in open_resolver.detail


def test_installed_listen_ip_comes_from_the_rendered_dnsmasq_conf() -> None:
    conf = render_dnsmasq(Config(), IP)
    assert parse_listen_ip(conf, DOMAIN) == IP
    assert parse_listen_ip(conf, "other.internal") is None
    assert parse_listen_ip(conf.replace(IP, "not-an-ip"), DOMAIN) is None


# ---- TLS -------------------------------------------------------------------------------------


def _leaf(now: dt.datetime, days: int, serial: int) -> tuple[bytes, bytes]:
    """(DER, PEM) of a leaf made by liminati's own PKI code."""
    ca_key = pki.new_key()
    ca = pki.build_ca(DOMAIN, ca_key, now, 1)
    leaf = pki.build_leaf(DOMAIN, pki.new_key(), ca, ca_key, now, days, serial)
    return leaf.public_bytes(Encoding.DER), pki.cert_pem(leaf)


def test_tls_served_leaf_judged_by_days_left() -> None:
    der, pem = _leaf(NOW, 365, 7)
    served = {f"webui.{DOMAIN}": der, f"vllm.{DOMAIN}": der}
    fresh = tls.judge_served(served, "TLSv1.3", pem, NOW, 30)
    assert fresh.status is Status.OK, fresh
    assert "365 days left" in fresh.detail and "TLSv1.3" in fresh.detail
    near = tls.judge_served(served, "TLSv1.3", pem, NOW + dt.timedelta(days=340), 30)
    assert near.status is Status.WARN, near
    assert "25 days left" in near.detail and "liminati cert renew" in near.hint
    gone = tls.judge_served(served, "TLSv1.3", pem, NOW + dt.timedelta(days=366), 30)
    assert gone.status is Status.FAIL and "expired" in gone.detail


def test_tls_leaf_on_disk_not_yet_served_warns() -> None:
    der, _ = _leaf(NOW, 365, 7)
    _, renewed = _leaf(NOW, 365, 8)
    check = tls.judge_served({f"vllm.{DOMAIN}": der}, "TLSv1.3", renewed, NOW, 30)
    assert check.status is Status.WARN, check
    assert "serves serial 7" in check.detail and "holds 8" in check.detail
    assert "restart nginx" in check.hint


# ---- API ---------------------------------------------------------------------------------------

MODELS = json.dumps(
    {
        "object": "list",
        "data": [
            {
                "id": "qwen",
                "object": "model",
                "created": 1764244800,
                "owned_by": "vllm",
                "root": "/models/tiny-llama",
                "parent": None,
                "max_model_len": 16384,
            },
        ],
    }
).encode()
UNAUTHORIZED = Reply(401, b"<html><head><title>401 Authorization Required</title></head></html>")


def test_api_judgement() -> None:
    good = api.judge_models(UNAUTHORIZED, Reply(200, MODELS), ["qwen"], "vllm-qwen")
    assert good.status is Status.OK and "lists qwen" in good.detail, good
    open_api = api.judge_models(Reply(200, MODELS), Reply(200, MODELS), ["qwen"], "vllm-qwen")
    assert open_api.status is Status.FAIL and "the API is open" in open_api.detail
    refused = api.judge_models(UNAUTHORIZED, UNAUTHORIZED, ["qwen"], "vllm-qwen")
    assert refused.status is Status.FAIL and "refused doctor's key" in refused.detail
    loading = api.judge_models(UNAUTHORIZED, Reply(502, b"bad gateway"), ["qwen"], "vllm-qwen")
    assert loading.status is Status.FAIL and "liminati logs vllm-qwen" in loading.hint
    missing = api.judge_models(UNAUTHORIZED, Reply(200, MODELS), ["qwen", "llama"], "vllm-qwen")
    assert missing.status is Status.FAIL and "missing llama" in missing.detail
    garbage = api.judge_models(UNAUTHORIZED, Reply(200, b"<html>"), ["qwen"], "vllm-qwen")
    assert garbage.status is Status.FAIL


# ---- streaming -------------------------------------------------------------------------------


def _event(i: int) -> bytes:
    """One event as vLLM's OpenAI server writes a chat completion chunk."""
    chunk = {
        "id": "chatcmpl-9f2c",
        "object": "chat.completion.chunk",
        "created": 1764244800,
        "model": "qwen",
        "choices": [
            {"index": 0, "delta": {"content": f" w{i}"}, "logprobs": None, "finish_reason": None}
        ],
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def test_stream_events_are_counted_across_read_boundaries() -> None:
    data = b"".join(_event(i) for i in range(5)) + DONE
    counter = stream.EventCounter()
    # cut at arbitrary points, as TLS records and nginx's chunks do
    counted = [counter.feed(data[a:b]) for a, b in [(0, 70), (70, 300), (300, 301), (301, None)]]
    assert sum(counted) == 5 and counter.done
    crlf = stream.EventCounter()
    assert crlf.feed(_event(1).replace(b"\n", b"\r\n") + b": keep-alive comment\r\n\r\n") == 1


#: the head nginx sends before a stream (as recorded through the live gateway)
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Fri, 27 Nov 2026 20:57:27 GMT\r\n"
    b"Content-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
    b"Cache-Control: no-cache\r\nStrict-Transport-Security: max-age=63072000; "
    b"includeSubDomains\r\n\r\n"
)


def _chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def test_stream_response_is_dechunked_whatever_the_read_boundaries() -> None:
    events = [_event(i) for i in range(3)] + [DONE]
    wire = SSE_HEAD + _chunked(*events)
    for cut in range(1, len(wire), 7):
        reader = stream.ResponseReader()
        body = reader.feed(wire[:cut]) + reader.feed(wire[cut:])
        assert (reader.status, body, reader.complete) == (200, b"".join(events), True), cut
    assert reader.fields["content-type"] == "text/event-stream"


def test_stream_reads_count_events_per_network_read() -> None:
    """What nginx does with `proxy_buffering on`: every event in its own chunk still, but all
    of them written at once, so they arrive in one read of the socket."""
    events = [_event(i) for i in range(20)] + [DONE]
    reader, counter = stream.ResponseReader(), stream.EventCounter()
    assert counter.feed(reader.feed(SSE_HEAD)) == 0
    assert counter.feed(reader.feed(_chunked(*events))) == 20
    assert counter.done and reader.complete


def test_stream_error_reply_is_not_chunked() -> None:
    reader = stream.ResponseReader()
    body = reader.feed(
        b"HTTP/1.1 401 Unauthorized\r\nServer: nginx\r\nContent-Type: text/html\r\n"
        b"Content-Length: 12\r\nConnection: close\r\n\r\n<html>401</html>"
    )
    assert (reader.status, body) == (401, b"<html>401</html>")
    with pytest.raises(ValueError):
        stream.ResponseReader().feed(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")


def _stream(per_read: list[int], gap: float = 0.02, done: bool = True) -> stream.Stream:
    arrivals = tuple(stream.Arrival(0.1 + i * gap, n, 200 * n) for i, n in enumerate(per_read))
    return stream.Stream(200, arrivals, done)


def test_stream_one_event_per_read_is_not_buffered() -> None:
    check = stream.judge_stream(_stream([1] * 64), "vllm-qwen")
    assert check.status is Status.OK, check
    assert check.detail.startswith("64 events in 64 reads, first after 0.10s")
    # a loaded host coalesces a few events now and then: still streaming
    coalesced = stream.judge_stream(_stream([1, 3, 1, 2, 4, 1, 1, 2] * 8), "vllm-qwen")
    assert coalesced.status is Status.OK, coalesced


def test_stream_in_bursts_is_buffered() -> None:
    # nginx with proxy_buffering on: a 4 KiB buffer (about 20 events) at a time, then the rest
    check = stream.judge_stream(_stream([0, 21, 21, 22]), "vllm-qwen")
    assert check.status is Status.FAIL, check
    assert "buffered, up to 22 events at once" in check.detail
    assert "proxy_buffering off" in check.hint
    at_the_end = stream.judge_stream(_stream([64]), "vllm-qwen")
    assert at_the_end.status is Status.FAIL and "64 events in 1 read," in at_the_end.detail


def test_stream_bursts_judged_against_vllm_itself() -> None:
    """A stream in bursts through nginx is compared with the same request straight from vLLM:
    one by one there means nginx buffers; in bursts there too means the model was too fast to
    tell (a first request after start, a tiny model on a loaded machine)."""
    proxied = _stream([0, 21, 21, 23])
    buffered = stream.judge_stream(proxied, "vllm-qwen", _stream([1] * 65))
    assert buffered.status is Status.FAIL, buffered
    assert "(straight from vLLM: 65 events in 65 reads): buffered" in buffered.detail
    too_fast = stream.judge_stream(proxied, "vllm-qwen", _stream([0, 30, 35]))
    assert too_fast.status is Status.WARN, too_fast
    assert "straight from vLLM too (65 events in 2 reads)" in too_fast.detail
    assert too_fast.hint == "run `liminati doctor` again"
    # measured on a loaded machine, unbuffered: vLLM 114 events in 44 reads, nginx 129 in 26
    loaded = stream.judge_stream(_stream([5] * 25 + [4]), "vllm-qwen", _stream([3] * 38 + [0] * 6))
    assert loaded.status is Status.OK, loaded
    assert "as vLLM itself sent them (114 events in 38 reads), not buffered" in loaded.detail
    refused = stream.Stream(401, (), False, '{"error": "Unauthorized"}')
    unknown = stream.judge_stream(proxied, "vllm-qwen", refused)
    assert unknown.status is Status.FAIL and "straight from" not in unknown.detail


def test_stream_other_outcomes() -> None:
    cut = stream.judge_stream(_stream([1] * 30, done=False), "vllm-qwen")
    assert cut.status is Status.FAIL and "without [DONE]" in cut.detail
    short = stream.judge_stream(_stream([1, 1, 1]), "vllm-qwen")
    assert short.status is Status.WARN and "too few" in short.detail
    error = stream.Stream(404, (), False, '{"error":{"message":"The model `x` does not exist."}}')
    refused = stream.judge_stream(error, "vllm-qwen")
    assert refused.status is Status.FAIL and "HTTP 404" in refused.detail
    empty = stream.judge_stream(_stream([0, 0], done=True), "vllm-qwen")
    assert empty.status is Status.FAIL


def test_stream_request_asks_vllm_for_every_token() -> None:
    body = json.loads(stream.completion_request("qwen"))
    assert body["stream"] is True and body["ignore_eos"] is True
    assert body["max_tokens"] == stream.MAX_TOKENS and body["model"] == "qwen"


# ---- websocket -------------------------------------------------------------------------------


def test_websocket_accept_is_rfc6455s_example() -> None:
    # RFC 6455 section 1.3
    assert ws.accept_for("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_websocket_handshake_judgement() -> None:
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    head = (
        b"HTTP/1.1 101 Switching Protocols\r\nServer: nginx\r\nDate: Fri, 27 Nov 2026 "
        b"12:00:00 GMT\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    )
    status, fields = ws.parse_head(head)
    assert status == 101 and fields["upgrade"] == "websocket"
    # Engine.IO's open packet, as python-engineio sends it first
    frame = b"\x81\x5a" + b'0{"sid":"x","upgrades":[],"pingTimeout":20000,"pingInterval":25000}'
    opened = ws.judge_handshake(HOST, status, fields, key, frame)
    assert opened.status is Status.OK, opened
    assert opened.detail == (
        f"wss://{HOST}/ws/socket.io/: 101 Switching Protocols, Engine.IO session opened"
    )
    assert ws.judge_handshake(HOST, status, fields, key, b"").status is Status.OK
    wrong = ws.judge_handshake(HOST, status, fields, "AAAAAAAAAAAAAAAAAAAAAA==", b"")
    assert wrong.status is Status.FAIL
    not_upgraded = ws.judge_handshake(HOST, 400, {}, key, b"")
    assert not_upgraded.status is Status.FAIL and "Upgrade and Connection" in not_upgraded.hint
    down = ws.judge_handshake(HOST, 502, {}, key, b"")
    assert "logs open-webui" in down.hint
    with pytest.raises(ValueError):
        ws.parse_head(b"SSH-2.0-OpenSSH_9.2")


# ---- users -----------------------------------------------------------------------------------


def test_users_judgement() -> None:
    fine = users.UserFacts("vllm-user", True, True, 999, "active", "running")
    assert users.judge_users([fine]).status is Status.OK
    cases = {
        users.UserFacts("vllm-user", False): (Status.FAIL, "does not exist"),
        users.UserFacts("vllm-user", True, False, 999): (Status.FAIL, "linger is off"),
        users.UserFacts("vllm-user", True, True, 999, "inactive"): (
            Status.FAIL,
            "user@999.service is inactive",
        ),
        users.UserFacts(
            "vllm-user", True, True, 999, "active", "degraded", ("vllm-qwen.service",)
        ): (Status.WARN, "vllm-qwen.service failed"),
    }
    for facts, (status, text) in cases.items():
        check = users.judge_users([fine, facts])
        assert check.status is status and text in check.detail, check
        assert check.hint
    # only podman's transient healthcheck runs failed (left by a container that is gone): the
    # services check judges health, the manager itself is fine
    runs = ("a" * 64 + "-5c1d2e3f4a5b6c7d.service", "b" * 64 + "-1f2e.timer")
    leftovers = users.UserFacts("webui-user", True, True, 998, "active", "degraded", runs)
    assert users.judge_users([fine, leftovers]).status is Status.OK
    mixed = users.UserFacts(
        "webui-user", True, True, 998, "active", "degraded", (*runs, "open-webui.service")
    )
    check = users.judge_users([mixed])
    assert check.status is Status.WARN
    assert check.detail == "webui-user's manager is degraded: open-webui.service failed", check
    both = users.judge_users([users.UserFacts("a-user", False), users.UserFacts("b-user", False)])
    assert both.detail == "a-user does not exist; b-user does not exist", both
    assert both.hint == "`sudo liminati install` creates it"  # the same hint once


# ---- GPU -------------------------------------------------------------------------------------

#: the shape of `nvidia-ctk cdi generate` output (trimmed): the driver's libraries as mounts
CDI_SPEC = """\
---
cdiVersion: 0.5.0
containerEdits:
  deviceNodes:
  - path: /dev/nvidia-modeset
  - path: /dev/nvidia-uvm
  - path: /dev/nvidiactl
  env:
  - NVIDIA_VISIBLE_DEVICES=void
  hooks:
  - args:
    - nvidia-cdi-hook
    - create-symlinks
    - --link
    - libcuda.so.1::/usr/lib/x86_64-linux-gnu/libcuda.so
    hookName: createContainer
    path: /usr/bin/nvidia-cdi-hook
  mounts:
  - containerPath: /usr/lib/x86_64-linux-gnu/libcuda.so.550.127.05
    hostPath: /usr/lib/x86_64-linux-gnu/libcuda.so.550.127.05
    options:
    - ro
    - nosuid
    - nodev
    - bind
  - containerPath: /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.127.05
    hostPath: /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.127.05
    options:
    - ro
    - nosuid
    - nodev
    - bind
devices:
- containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
  name: "0"
kind: nvidia.com/gpu
"""


def _smi(stdout: str, code: int = 0, stderr: str = "") -> RunResult:
    argv = ("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader")
    return RunResult(argv, code, stdout, stderr)


def test_gpu_cdi_spec_names_its_driver() -> None:
    assert gpu.spec_driver_versions(CDI_SPEC) == {"550.127.05"}
    assert gpu.spec_driver_versions(
        json.dumps(
            {"containerEdits": {"mounts": [{"hostPath": "/usr/lib64/libcuda.so.575.57.08"}]}}
        )
    ) == {"575.57.08"}


def test_gpu_judgement() -> None:
    spec = {"/etc/cdi/nvidia.yaml": CDI_SPEC}
    units = ["vllm-qwen"]
    assert gpu.judge_gpu([], None, {}).status is Status.SKIP
    good = gpu.judge_gpu(units, _smi("550.127.05\n550.127.05\n"), spec)
    assert good.status is Status.OK and "matches driver 550.127.05" in good.detail
    upgraded = gpu.judge_gpu(units, _smi("570.86.15\n"), spec)
    assert upgraded.status is Status.FAIL and "made for driver 550.127.05" in upgraded.detail
    assert "nvidia-ctk cdi generate" in upgraded.hint
    assert gpu.judge_gpu(units, _smi("570.86.15\n"), {}).status is Status.FAIL
    assert gpu.judge_gpu(units, None, spec).status is Status.FAIL
    no_driver = gpu.judge_gpu(
        units,
        _smi(
            "", 9, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
        ),
        spec,
    )
    assert no_driver.status is Status.FAIL and "communicate" in no_driver.detail
    stand_in = gpu.judge_gpu(units, _smi("550.127.05\n"), {"/etc/cdi/nvidia.yaml": "# empty\n"})
    assert stand_in.status is Status.WARN


# ---- disk ------------------------------------------------------------------------------------


def test_disk_thresholds() -> None:
    gib = disk.GIB
    assert disk.judge_free("/var/lib/vllm/.cache/huggingface", 56 * gib, 252 * gib).status is (
        Status.OK
    )
    low = disk.judge_free("/c", 19 * gib, 252 * gib)
    assert low.status is Status.WARN and "19.0 GiB free of 252 GiB at /c" in low.detail
    assert disk.judge_free("/c", 4 * gib, 252 * gib).status is Status.FAIL


# ---- tailscale -------------------------------------------------------------------------------

#: `tailscale status --json`, trimmed to what the check reads (and a little around it)
TAILSCALE_UP = json.dumps(
    {
        "Version": "1.76.6-t1a2b3c4d",
        "TUN": True,
        "BackendState": "Running",
        "TailscaleIPs": [IP, "fd7a:115c:a1e0::1234:5678"],
        "Self": {
            "HostName": "gpu-box",
            "TailscaleIPs": [IP, "fd7a:115c:a1e0::1234:5678"],
            "Online": True,
        },
        "MagicDNSSuffix": "tail1234.ts.net",
    }
)


def _ts(stdout: str, code: int = 0, stderr: str = "") -> RunResult:
    return RunResult(("tailscale", "status", "--json"), code, stdout, stderr)


def test_tailscale_status_parses() -> None:
    state = tailscale.parse_status(TAILSCALE_UP)
    assert state == tailscale.TailscaleState("Running", (IP,))


def test_tailscale_judgement() -> None:
    assert tailscale.judge_tailscale(IP, "", _ts(TAILSCALE_UP)).status is Status.OK
    assert tailscale.judge_tailscale(IP, IP, None).status is Status.SKIP
    moved = tailscale.judge_tailscale("100.64.0.9", "", _ts(TAILSCALE_UP))
    assert moved.status is Status.FAIL and f"now {IP}" in moved.detail
    assert "liminati install" in moved.hint
    stopped = json.loads(TAILSCALE_UP) | {"BackendState": "Stopped", "TailscaleIPs": []}
    down = tailscale.judge_tailscale(IP, "", _ts(json.dumps(stopped)))
    assert down.status is Status.FAIL and "tailscale up" in down.hint
    no_daemon = _ts("", 1, "failed to connect to local tailscaled; it doesn't appear to be running")
    assert tailscale.judge_tailscale(IP, "", no_daemon).status is Status.FAIL
    reconfigured = tailscale.judge_tailscale(IP, "100.64.0.11", _ts(TAILSCALE_UP))
    assert reconfigured.status is Status.FAIL and "listen_ip is 100.64.0.11" in reconfigured.detail
    elsewhere = tailscale.judge_tailscale("100.64.0.9", "100.64.0.9", _ts(TAILSCALE_UP))
    assert elsewhere.status is Status.WARN


# ---- images ----------------------------------------------------------------------------------

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def _running(
    ref: str, image_name: str, running_id: str, current_id: str | None, digest: str = D1
) -> images.Running:
    # the fields of `podman container inspect` / `podman image inspect` the check reads
    inspect = {
        "Id": "c" * 64,
        "Image": running_id,
        "ImageName": image_name,
        "ImageDigest": digest,
        "State": {"Status": "running"},
    }
    image = {
        "Id": running_id,
        "Digest": digest,
        "RepoTags": [image_name],
        "RepoDigests": [image_name.split(":")[0] + "@" + digest],
    }
    current = None if current_id is None else {"Id": current_id, "Digest": digest}
    return images.Running("vllm-qwen", "vllm-user", "vllm", ref, inspect, image, current)


def test_images_judgement() -> None:
    tag = "docker.io/vllm/vllm-openai:v0.32.0"
    same = images.judge_images([_running(tag, tag, "a" * 64, "a" * 64)])
    assert same.status is Status.OK and "vllm-qwen sha256:111111111111" in same.detail
    assert "by tag, not digest" in same.detail
    pinned_ref = f"docker.io/vllm/vllm-openai@{D1}"
    pinned = images.judge_images([_running(pinned_ref, pinned_ref, "a" * 64, None)])
    assert pinned.status is Status.OK and "(pinned)" in pinned.detail
    other = images.judge_images(
        [_running(f"docker.io/vllm/vllm-openai@{D2}", pinned_ref, "a" * 64, None)]
    )
    assert other.status is Status.FAIL and "pins sha256:222222222222" in other.detail
    newer = images.judge_images([_running(tag, tag, "a" * 64, "b" * 64)])
    assert newer.status is Status.WARN and "restart vllm-qwen" in newer.hint
    changed = images.judge_images([_running(tag, "localhost/old:1", "a" * 64, "b" * 64)])
    assert changed.status is Status.FAIL and "not images.vllm" in changed.detail
    gone = images.Running("vllm-qwen", "vllm-user", "vllm", tag, None, None, None)
    assert images.judge_images([gone]).status is Status.FAIL


def test_images_expected_covers_every_container() -> None:
    names = [c for c, _, _, _ in images.expected(Config())]
    assert names == ["vllm-qwen", "open-webui", "nginx-proxy", "dnsmasq", "dnsmasq-admin"]


# ---- services ----------------------------------------------------------------------------------


def test_services_judgement() -> None:
    up = {"service": "nginx", "state": "active (running)", "health": "healthy", "ok": True}
    plain = {
        "service": "dnsmasq",
        "state": "active (running)",
        "health": "no health check",
        "ok": True,
    }
    assert services.judge_services([up, plain]).status is Status.OK
    down = {
        "service": "vllm-qwen",
        "state": "activating (start)",
        "health": "starting",
        "ok": False,
    }
    check = services.judge_services([up, down])
    assert check.status is Status.FAIL and "vllm-qwen: activating (start)" in check.detail
    assert "liminati logs vllm-qwen" in check.hint


# ---- the command -----------------------------------------------------------------------------


def test_doctor_now_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NOW_VARIABLE, raising=False)
    assert doctor_now(lambda: NOW) == NOW
    monkeypatch.setenv(NOW_VARIABLE, "2027-11-01T00:00:00+00:00")
    assert doctor_now(lambda: NOW) == dt.datetime(2027, 11, 1, tzinfo=dt.UTC)
    monkeypatch.setenv(NOW_VARIABLE, "2027-11-01T00:00:00")  # naive: UTC
    assert doctor_now(lambda: NOW).tzinfo is dt.UTC
    monkeypatch.setenv(NOW_VARIABLE, "next tuesday")
    with pytest.raises(UsageError):
        doctor_now(lambda: NOW)


def test_doctor_refuses_a_staged_root(run_cli: RunCli, tmp_path: Path) -> None:
    code, out, err = run_cli("doctor", "--root", str(tmp_path), "--listen-ip", IP)
    assert code == ExitCode.USAGE and out == ""
    assert "doctor checks a running host" in err and "hint:" in err


def test_doctor_a_check_that_raises_fails_and_the_others_run() -> None:
    def broken() -> Check:
        raise HostError("cannot read /var/lib/liminati/api-keys.json", hint="run as root")

    seen: list[tuple[int, str]] = []
    probes = [
        Probe("a", "first", lambda: ok("a", "fine")),
        Probe("b", "second", broken),
        Probe("c", "third", lambda: ok("c", "fine")),
    ]
    results = run_probes(probes, lambda i, p: seen.append((i, p.name)))
    assert seen == [(0, "a"), (1, "b"), (2, "c")]
    assert [c.status for c in results] == [Status.OK, Status.FAIL, Status.OK]
    assert results[1] == Check(
        "b", Status.FAIL, "cannot read /var/lib/liminati/api-keys.json", "run as root"
    )


def test_doctor_table_then_hints(capsys: pytest.CaptureFixture[str]) -> None:
    print_checks(
        [
            Check("dns", Status.OK, "names -> 100.64.0.10"),
            Check("streaming", Status.FAIL, "65 events in 1 read", "proxy_buffering off"),
            Check("gpu", Status.SKIP, "no model uses a GPU", "not shown"),
            Check("tls", Status.WARN, "10 days left", "cert renew"),
        ]
    )
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "STATUS  CHECK      DETAIL",
        "ok      dns        names -> 100.64.0.10",
        "fail    streaming  65 events in 1 read",
        "skip    gpu        no model uses a GPU",
        "warn    tls        10 days left",
        "",
        "streaming: proxy_buffering off",
        "tls: cert renew",
    ]
    assert err == "1 ok, 1 warning(s), 1 failed, 1 skipped\n"
