"""The API vhost in front of REAL model servers: vLLM's own OpenAI server (CPU build, a tiny
model made locally) and llama.cpp (Gemma 270M), each started as liminati's unit starts
vLLM (the internal key in its environment), on 127.0.0.1:8000 of the server namespace, with
nginx from the rendered config in front and a tailnet peer as the client."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from backends import LlamaServer, VllmServer, live_env, missing_live_env
from livetools import LiveNginx
from test_tls import VLLM, https

from liminati.config import parse_config
from liminati.render.quadlet import build_vllm

#: what a client may reach, and what it must not even with a valid key
DENIED = ["/metrics", "/invocations", "/pause", "/resume", "/is_paused", "/sleep", "/wake_up",
          "/collective_rpc", "/reset_prefix_cache", "/update_weights", "/tokenize",
          "/detokenize", "/version", "/health", "/ping", "/load", "/docs", "/openapi.json",
          "/pooling", "/classify", "/score", "/rerank", "/v1/score", "/v1/rerank",
          "/v1/models/../../metrics", "/v1/chat/completions/../../metrics"]  # fmt: skip


def internal_key(live: LiveNginx) -> str:
    return (live.root / "var/lib/liminati/secrets/vllm-api-key").read_text().strip()


def rendered_vllm_args() -> list[str]:
    """The exec args of the rendered vllm-qwen unit: what vLLM must parse."""
    config = parse_config(None, "defaults", {"listen_ip": "100.64.0.10"})
    from liminati.layout import Layout

    return list(build_vllm(config, Layout(config), config.models[0]).exec_args)


@pytest.fixture(scope="module", params=["vllm", "llama.cpp"])
def backend(request: pytest.FixtureRequest, live: LiveNginx) -> Iterator[str]:
    env = live_env()
    missing = missing_live_env(env, "LIMINATI_VLLM_PY", "LIMINATI_LLAMA_PY", "LIMINATI_GGUF",
                               "LIMINATI_TINY_LLAMA")  # fmt: skip
    assert missing is None, missing
    server_ns = live.ns.names["server"]
    key = internal_key(live)
    if request.param == "vllm":
        args = rendered_vllm_args()
        # the model path is the test's; podman publishes the container's 0.0.0.0:8000 on the
        # host's 127.0.0.1:8000 only, so here vLLM binds 127.0.0.1 itself
        args[args.index("--model") + 1] = env["LIMINATI_TINY_LLAMA"]
        args[args.index("--host") + 1] = "127.0.0.1"
        server: LlamaServer | VllmServer = VllmServer(args=args, api_key=key, netns=server_ns)
    else:
        server = LlamaServer(model_alias="qwen", api_key=key, host="127.0.0.1", port=8000,
                             netns=server_ns)  # fmt: skip
    with server:
        yield request.param


def chat(live: LiveNginx, key: str | None, *, stream: bool = False) -> tuple[int | None, bytes]:
    body = json.dumps({"model": "qwen", "max_tokens": 8, "stream": stream,
                       "messages": [{"role": "user", "content": "Say hello."}]})  # fmt: skip
    auth = ["-H", f"Authorization: Bearer {key}"] if key else []
    r = https(live, VLLM, "/v1/chat/completions", "--max-time", "60", "-H",
              "Content-Type: application/json", *auth, "-d", body)  # fmt: skip
    return r.status, r.body


def test_real_backend_answers_a_valid_key(backend: str, live: LiveNginx) -> None:
    status, body = chat(live, live.api_key("alice"))
    assert status == 200, body
    answer = json.loads(body)["choices"][0]["message"]["content"]
    assert isinstance(answer, str)
    models = https(live, VLLM, "/v1/models", "-H", f"Authorization: Bearer {live.api_key('alice')}")
    assert models.status == 200
    assert json.loads(models.body)["data"][0]["id"] == "qwen"


def test_real_backend_streams_through_nginx(backend: str, live: LiveNginx) -> None:
    status, body = chat(live, live.api_key("alice"), stream=True)
    assert status == 200, body
    events = [line for line in body.decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and len(events) >= 3, events


def test_real_backend_no_or_wrong_key_is_401(backend: str, live: LiveNginx) -> None:
    assert chat(live, None)[0] == 401
    assert chat(live, "lmk_guess")[0] == 401
    # not even the internal key works from the tailnet: only people's keys do
    assert chat(live, internal_key(live))[0] == 401


@pytest.mark.parametrize("path", DENIED)
def test_real_backend_paths_outside_the_allowlist_are_refused(
    backend: str, live: LiveNginx, path: str
) -> None:
    auth = ["-H", f"Authorization: Bearer {live.api_key('alice')}"]
    for method in ([], ["-X", "POST", "-d", "{}"]):
        r = https(live, VLLM, path, "--path-as-is", *auth, *method)
        assert r.status in (403, 404), (path, method, r.status, r.body[:200])


def test_real_backend_revoked_key_is_401_after_a_reload(backend: str, live: LiveNginx) -> None:
    key = live.api_key("bob")
    assert chat(live, key)[0] == 200
    code, out = live.cli("keys", "revoke", "bob", "--root", str(live.root),
                         "--listen-ip", "100.64.0.10")  # fmt: skip
    assert code == 0, out
    live.reload()  # what systemd's ExecReload does for `keys revoke` on a real host
    try:
        # `nginx -s reload` only signals: new workers take over within moments
        deadline = time.monotonic() + 5
        while chat(live, key)[0] != 401:
            assert time.monotonic() < deadline, "the revoked key still works after the reload"
            time.sleep(0.1)
        assert chat(live, live.api_key("alice"))[0] == 200
    finally:
        code, out = live.cli("keys", "add", "bob", "--root", str(live.root),
                             "--listen-ip", "100.64.0.10")  # fmt: skip
        assert code == 0, out
        live.reload()
