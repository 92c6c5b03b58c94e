"""The real backends answer: llama.cpp (Gemma 3 270M), vLLM (a tiny random Llama) and Open WebUI.

Everything runs inside a loopback-only network namespace of its own, so it is offline by
construction: a server that tried to reach a model hub or a telemetry endpoint would fail,
not leak. vLLM is started with exactly the arguments liminati renders into its quadlet
(`build_vllm`), which is how liminati's flags get checked by vLLM's own parser.

Needs root (namespaces) and `bash scripts/install-live-deps.sh`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from backends import (  # noqa: E402
    OFFLINE_ENV,
    LlamaServer,
    LoopbackNamespace,
    OpenWebUI,
    Response,
    Server,
    VllmServer,
    live_env,
    missing_live_env,
    vllm_args,
)

from liminati.config import Config, Model  # noqa: E402
from liminati.layout import Layout  # noqa: E402
from liminati.render.quadlet import build_vllm, build_webui  # noqa: E402

pytestmark = pytest.mark.live

ENV = live_env()
SERVED = "qwen"
MESSAGES = [{"role": "user", "content": "Say hello in one word."}]
MAX_TOKENS = 8


def _require(*names: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("the live tier runs the backends in a network namespace: run as root")
    if shutil.which("ip") is None:
        pytest.skip("ip not found (package iproute2)")
    why = missing_live_env(ENV, *names)
    if why:
        pytest.skip(why)


def _report(config: pytest.Config, server: Server) -> None:
    """Startup and stop times into the live tier's timing summary (tests/live/conftest.py)."""
    for plugin in config.pluginmanager.get_plugins():
        record = getattr(plugin, "record_timing", None)
        if callable(record) and str(getattr(plugin, "__file__", "")).startswith(str(HERE)):
            record(f"{server.name} ready", server.startup_seconds or 0.0)
            kill = " (SIGKILL)" if server.killed else ""
            record(f"{server.name} stop{kill}", server.stop_seconds or 0.0)
            return


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    _require()
    with LoopbackNamespace() as ns:
        yield ns.name


@pytest.fixture(scope="module")
def llama_key() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def llama(
    netns: str, llama_key: str, tmp_path_factory: pytest.TempPathFactory, request: Any
) -> Iterator[LlamaServer]:
    _require("LIMINATI_LLAMA_PY", "LIMINATI_GGUF")
    server = LlamaServer(
        model_alias=SERVED,
        api_key=llama_key,
        netns=netns,
        log_dir=tmp_path_factory.mktemp("llama"),
    )
    with server:
        yield server
    _report(request.config, server)


def rendered_vllm_args(model_dir: str) -> list[str]:
    """The vLLM arguments liminati writes into the quadlet for a model at `model_dir`."""
    config = Config(models=(Model(name=SERVED, model=model_dir),))
    return list(build_vllm(config, Layout(config), config.models[0]).exec_args)


@pytest.fixture(scope="module")
def vllm_key() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def vllm(
    netns: str, vllm_key: str, tmp_path_factory: pytest.TempPathFactory, request: Any
) -> Iterator[VllmServer]:
    _require("LIMINATI_VLLM_PY", "LIMINATI_TINY_LLAMA")
    # verbatim, `--host 0.0.0.0 --port 8000` included: the namespace has only loopback
    server = VllmServer(
        args=rendered_vllm_args(ENV["LIMINATI_TINY_LLAMA"]),
        api_key=vllm_key,
        netns=netns,
        log_dir=tmp_path_factory.mktemp("vllm"),
    )
    with server:
        yield server
    _report(request.config, server)


@pytest.fixture(scope="module")
def webui(
    netns: str,
    llama: LlamaServer,
    llama_key: str,
    tmp_path_factory: pytest.TempPathFactory,
    request: Any,
) -> Iterator[OpenWebUI]:
    _require("LIMINATI_WEBUI_PY")
    server = OpenWebUI(
        admin_email="admin@liminati.internal",
        admin_password=secrets.token_urlsafe(18),
        secret_key=secrets.token_urlsafe(32),
        openai_base_url=llama.url("/v1"),
        openai_key=llama_key,
        netns=netns,
        data_dir=tmp_path_factory.mktemp("webui-data"),
        log_dir=tmp_path_factory.mktemp("webui"),
    )
    with server:
        yield server
    _report(request.config, server)


# ---------------------------------------------------------------------------------------------
# OpenAI API checks shared by llama.cpp and vLLM


def _chat(server: Server, token: str | None, stream: bool) -> Response:
    return server.request(
        "POST",
        "/v1/chat/completions",
        token=token,
        json_body={
            "model": SERVED,
            "messages": MESSAGES,
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "stream": stream,
        },
        timeout=120,
    )


def check_chat(server: Server, token: str | None) -> None:
    resp = _chat(server, token, stream=False)
    assert resp.status == 200, f"{resp.status} {resp.text[:500]}\n{server.log_tail()}"
    body = resp.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == SERVED
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    assert 0 < body["usage"]["completion_tokens"] <= MAX_TOKENS


def check_stream(server: Server, token: str | None) -> None:
    resp = _chat(server, token, stream=True)
    assert resp.status == 200, f"{resp.status} {resp.text[:500]}\n{server.log_tail()}"
    assert resp.headers.get("content-type", "").startswith("text/event-stream")
    data = resp.sse_data()
    assert data, resp.text[:500]
    assert data[-1] == "[DONE]", data[-3:]
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    finish = [c["choices"][0].get("finish_reason") for c in chunks if c["choices"]]
    assert isinstance(text, str)
    assert finish[-1] in ("stop", "length"), finish


# ---------------------------------------------------------------------------------------------
# llama.cpp


def test_llama_lists_its_alias(llama: LlamaServer) -> None:
    resp = llama.request("GET", "/v1/models")
    assert resp.status == 200, resp.text
    assert [m["id"] for m in resp.json()["data"]] == [SERVED]


def test_llama_wants_its_key(llama: LlamaServer) -> None:
    assert llama.request("GET", "/v1/models", token="wrong").status == 401


def test_llama_chat(llama: LlamaServer, llama_key: str) -> None:
    check_chat(llama, llama_key)


def test_llama_stream(llama: LlamaServer, llama_key: str) -> None:
    check_stream(llama, llama_key)


# ---------------------------------------------------------------------------------------------
# vLLM


def test_vllm_args_match_liminati() -> None:
    """backends.vllm_args stays flag for flag what liminati renders (no server needed)."""
    rendered = rendered_vllm_args("/models/tiny")
    assert rendered == vllm_args("/models/tiny", SERVED, host="0.0.0.0", port=8000)


def test_vllm_key_is_not_in_argv(vllm: VllmServer, vllm_key: str) -> None:
    assert vllm_key not in " ".join(vllm.argv())
    assert vllm.vllm_argv() == rendered_vllm_args(ENV["LIMINATI_TINY_LLAMA"])


def test_vllm_models_with_key(vllm: VllmServer, vllm_key: str) -> None:
    resp = vllm.request("GET", "/v1/models", token=vllm_key)
    assert resp.status == 200, resp.text
    assert [m["id"] for m in resp.json()["data"]] == [SERVED]


@pytest.mark.parametrize("token", [None, "wrong-key"], ids=["no-key", "wrong-key"])
def test_vllm_refuses_without_key(vllm: VllmServer, token: str | None) -> None:
    assert vllm.request("GET", "/v1/models", token=token).status == 401
    assert _chat(vllm, token, stream=False).status == 401


def test_vllm_chat(vllm: VllmServer, vllm_key: str) -> None:
    check_chat(vllm, vllm_key)


def test_vllm_stream(vllm: VllmServer, vllm_key: str) -> None:
    check_stream(vllm, vllm_key)


def test_vllm_metrics_are_open_despite_the_key(vllm: VllmServer) -> None:
    """THE THREAT: VLLM_API_KEY guards /v1/* only. /metrics (model name, request counts,
    token throughput) and /health answer anyone who reaches the port, which is why liminati
    publishes vLLM on loopback only and its nginx must never proxy these paths."""
    metrics = vllm.request("GET", "/metrics")
    assert metrics.status == 200
    assert "vllm:" in metrics.text
    assert f'model_name="{SERVED}"' in metrics.text
    assert vllm.request("GET", "/health").status == 200


# ---------------------------------------------------------------------------------------------
# Open WebUI


def test_webui_env_covers_liminatis() -> None:
    """Every variable liminati's quadlet and env file give Open WebUI is set by OpenWebUI()."""
    if missing_live_env(ENV, "LIMINATI_WEBUI_PY"):
        pytest.skip("no Open WebUI venv")
    config = Config()
    quadlet = dict(build_webui(config, Layout(config)).environment)
    env_file = {
        "WEBUI_SECRET_KEY",
        "OPENAI_API_KEYS",
        "WEBUI_ADMIN_EMAIL",
        "WEBUI_ADMIN_NAME",
        "WEBUI_ADMIN_PASSWORD",
    }
    server = OpenWebUI(openai_base_url="http://127.0.0.1:8000/v1", openai_key="k")
    server.data_dir = Path("/nonexistent")
    env = {**OFFLINE_ENV, **server.environment()}
    missing = (set(quadlet) | env_file) - set(env)
    assert not missing
    for key in ("ENABLE_OLLAMA_API", "ENABLE_SIGNUP"):
        assert env[key] == quadlet[key] == "false"


def test_webui_health(webui: OpenWebUI) -> None:
    resp = webui.request("GET", "/health")
    assert resp.status == 200
    assert resp.json() == {"status": True}


def test_webui_admin_signs_in(webui: OpenWebUI) -> None:
    resp = webui.signin()
    assert resp.status == 200, resp.text
    body = resp.json()
    assert body["token"]
    assert body["role"] == "admin"
    assert body["email"] == webui.admin_email


def test_webui_refuses_a_wrong_password(webui: OpenWebUI) -> None:
    resp = webui.signin(password="not-the-password")
    assert resp.status in (400, 401, 403), resp.text
    assert "token" not in resp.text


def test_webui_signup_is_closed(webui: OpenWebUI) -> None:
    resp = webui.request(
        "POST",
        "/api/v1/auths/signup",
        json_body={"name": "Eve", "email": "eve@liminati.internal", "password": "pw-123456789"},
    )
    assert resp.status in (401, 403), resp.text


def test_webui_lists_the_backend_model(webui: OpenWebUI) -> None:
    assert webui.request("GET", "/api/models").status == 401
    resp = webui.request("GET", "/api/models", token=webui.token())
    assert resp.status == 200, resp.text
    ids = [m["id"] for m in resp.json()["data"]]
    assert SERVED in ids, f"{ids}\n{webui.log_tail()}"


def test_webui_chats_through_the_backend(webui: OpenWebUI) -> None:
    resp = webui.request(
        "POST",
        "/api/chat/completions",
        token=webui.token(),
        json_body={"model": SERVED, "messages": MESSAGES, "max_tokens": MAX_TOKENS},
        timeout=120,
    )
    assert resp.status == 200, f"{resp.status} {resp.text[:500]}\n{webui.log_tail()}"
    assert isinstance(resp.json()["choices"][0]["message"]["content"], str)
