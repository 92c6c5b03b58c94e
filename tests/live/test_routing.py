"""Several models behind one API base URL, through the rendered nginx (njs router), and the
standby fallback `liminati model switch` relies on.

Upstreams are stub_upstreams.py (declared test fixtures): each says which model it is and which
port answered, so a test sees where nginx sent a request. The real vLLM behind the router runs
in the whole-system tier (tests/system/test_stack_models.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from livetools import DOMAIN
from netns import Namespaces
from test_gateway import Gateway, gateway_up

HERE = Path(__file__).resolve().parent
VLLM = f"vllm.{DOMAIN}"
#: two models, each its own unit and port; the second has an explicit standby port
CONFIG = """\
[[models]]
name = "qwen"
model = "Qwen/Qwen2.5-7B-Instruct"
port = 8000

[[models]]
name = "small"
alias = "org/small-1b"
model = "org/small-1b"
port = 8001
standby_port = 8201
"""


class Routed:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.stubs: dict[int, subprocess.Popen[Any]] = {}

    def stub(self, port: int, model: str) -> None:
        env = {**os.environ, "STUB_KEY": self.gw.secret("vllm-api-key")}
        argv = [sys.executable, str(HERE / "stub_upstreams.py"), "api", str(port)]
        self.gw.spawn([*argv, "--model", model], f"api-{port}", env)
        self.stubs[port] = self.gw.procs[-1]
        self.gw.wait(lambda: self._listening(port))

    def _listening(self, port: int) -> bool:
        probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), 1)"
        argv = [sys.executable, "-c", probe]
        return self.gw.ns.run_in("server", argv, check=False).returncode == 0

    def kill(self, port: int) -> None:
        self.gw.ns.stop(self.stubs.pop(port))

    def closer(self, port: int) -> None:
        """What a rootless container's published port does while the container restarts:
        pasta accepts the connection and closes it at once (no refusal)."""
        script = (
            "import socket; s = socket.socket(); "
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            f"s.bind(('127.0.0.1', {port})); s.listen(64)\n"
            "while True:\n    c, _ = s.accept(); c.close()"
        )
        self.gw.spawn([sys.executable, "-c", script], f"closer-{port}")
        self.stubs[port] = self.gw.procs[-1]
        self.gw.wait(lambda: self._listening(port))

    def api(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        port = self.gw.ns.https_port
        url = f"https://{VLLM}{'' if port == 443 else f':{port}'}{path}"
        key = self.gw.nginx.api_key("alice")
        args = ["-H", f"Authorization: Bearer {key}", "-w", "\n%{http_code}"]
        if body is not None:
            args += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
        out = self.gw.curl(url, *args)
        text, _, code = out.stdout.rpartition("\n")
        assert code.isdigit(), out.stdout + out.stderr
        return int(code), json.loads(text) if text.startswith("{") else text


@pytest.fixture(scope="module")
def routed(namespaces: Namespaces) -> Iterator[Routed]:
    up = gateway_up(
        namespaces, "routing gateway up", "liminati-routing-", config=CONFIG, stubs=False
    )
    with up as gw:
        r = Routed(gw)
        r.stub(8000, "qwen")
        r.stub(8001, "org/small-1b")
        yield r


def chat(model: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    if model is not None:
        body["model"] = model
    return body


def test_models_lists_every_served_model(routed: Routed) -> None:
    code, body = routed.api("/v1/models")
    assert code == 200, body
    assert body["object"] == "list"
    assert sorted(m["id"] for m in body["data"]) == ["org/small-1b", "qwen"], body


@pytest.mark.parametrize(("model", "port"), [("qwen", 8000), ("org/small-1b", 8001)])
def test_the_model_field_selects_the_backend(routed: Routed, model: str, port: int) -> None:
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        code, body = routed.api(path, chat(model))
        assert code == 200, (path, body)
        assert (body["model"], body["asked"], body["served_by"]) == (model, model, port), body


def test_streaming_through_the_router_is_not_buffered(routed: Routed) -> None:
    """Events of a routed stream arrive as they are sent (the njs hop reads the request body
    only; the response streams as without it)."""
    request = {**chat("org/small-1b"), "stream": True, "stub_events": 10, "stub_interval": 0.2}
    port = routed.gw.ns.https_port
    url = f"https://{VLLM}{'' if port == 443 else f':{port}'}/v1/chat/completions"
    key = routed.gw.nginx.api_key("alice")
    out = routed.gw.curl(
        url, "-N", "-H", f"Authorization: Bearer {key}", "-H", "Content-Type: application/json",
        "--data-binary", json.dumps(request), "-w", "\n%{time_starttransfer} %{time_total}",
    )  # fmt: skip
    first, total = (float(x) for x in out.stdout.splitlines()[-1].split())
    events = [line for line in out.stdout.splitlines() if line.startswith("data: {")]
    assert len(events) == 10, out.stdout
    # buffered, the first byte would come with the last, about 2 s after the request
    assert total - first > 1.5, (first, total)


def test_an_unknown_model_is_404_naming_the_served_ones(routed: Routed) -> None:
    code, body = routed.api("/v1/chat/completions", chat("gpt-4"))
    assert code == 404, body
    assert body["error"]["code"] == "model_not_found"
    assert "gpt-4" in body["error"]["message"] and "org/small-1b, qwen" in body["error"]["message"]


def test_a_request_without_model_is_400(routed: Routed) -> None:
    code, body = routed.api("/v1/chat/completions", chat(None))
    assert code == 400, body
    assert body["error"]["code"] == "model_required"
    code, body = routed.api("/v1/chat/completions", None)
    assert code == 400, body


def test_models_lists_the_rest_when_one_model_is_down(routed: Routed) -> None:
    routed.kill(8001)
    try:
        code, body = routed.api("/v1/models")
        assert code == 200, body
        assert [m["id"] for m in body["data"]] == ["qwen"], body
    finally:
        routed.stub(8001, "org/small-1b")


def test_the_standby_answers_while_the_main_unit_is_down(routed: Routed) -> None:
    """What `liminati model switch` does: the new model on the standby port, then the main
    unit restarts; meanwhile nginx sends the model's requests to the standby."""
    routed.stub(8201, "org/small-1b")
    try:
        assert routed.api("/v1/chat/completions", chat("org/small-1b"))[1]["served_by"] == 8001
        routed.kill(8001)
        for _ in range(5):
            code, body = routed.api("/v1/chat/completions", chat("org/small-1b"))
            assert code == 200 and body["served_by"] == 8201, body
        routed.stub(8001, "org/small-1b")
    finally:
        routed.kill(8201)
        if 8001 not in routed.stubs:
            routed.stub(8001, "org/small-1b")
    # with the standby gone, the main unit serves again
    code, body = routed.api("/v1/chat/completions", chat("org/small-1b"))
    assert code == 200 and body["served_by"] == 8001, body


def test_a_restarting_main_unit_that_accepts_and_closes_falls_back_too(routed: Routed) -> None:
    """Rootless podman keeps the port open while the container is down: a POST that meets a
    closed connection before any response goes to the standby, not back as a 502."""
    routed.stub(8201, "org/small-1b")
    routed.kill(8001)
    routed.closer(8001)
    try:
        for path in ("/v1/chat/completions", "/v1/completions"):
            code, body = routed.api(path, chat("org/small-1b"))
            assert code == 200 and body["served_by"] == 8201, body
    finally:
        routed.kill(8001)
        routed.kill(8201)
        routed.stub(8001, "org/small-1b")
