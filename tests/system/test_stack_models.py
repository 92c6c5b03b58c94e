"""Tier 4: `liminati model` on the running stack, with vLLM's own CPU server.

* switch between two tiny models (the stand-in image's /models/tiny-llama and a copy of it in
  vllm-user's Hugging Face cache) while a tailnet peer sends requests in a loop: the alias
  answers before and after, and no request fails outside the switch window;
* switch to a model that cannot start: rolled back, the previous model answers, exit 1 with
  the reason and the log's tail;
* two models at once: each answers by its `model` through one base URL, /v1/models lists both,
  and Open WebUI offers both (install gives it the new connection through its admin API: it
  keeps the ones of its first start otherwise); taking the second out of the config retires
  its unit and its connection;
* switching back to the model the config names clears the recorded switch;
* `model pull` of a gated model from a FAKE Hugging Face Hub (tests/system/fake_hub.py: no
  model hub is reachable here) by the vLLM image's own huggingface_hub as vllm-user: refused
  without a token, then `model token set` and the pull lands in vllm-user's cache, the token
  never in an argument, an output or the journal.

The stack is left as it was found (one model, /models/tiny-llama) for the modules after this.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from stack import (
    CONF,
    CONFIG,
    HOST_ARGS,
    SERVED,
    TAG,
    Stack,
    admin,
    https,
    output,
    status_and_body,
    webui_models,
)

pytestmark = pytest.mark.system

ORIGINAL = "/models/tiny-llama"
#: the copy in vllm-user's cache, as the container sees it (HF_HOME)
COPY = "/root/.cache/huggingface/local/tiny-llama-b"
STATE = "/var/lib/liminati/models.json"
SWITCH_TIMEOUT = 1200


@dataclass
class Loop:
    """Chat completions from the tailnet peer, one after the other, until stopped."""

    stack: Stack
    key: str
    results: list[tuple[float, float, int, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        request = json.dumps(
            {"model": SERVED, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        )
        while not self._stop.is_set():
            t0 = time.monotonic()
            proc = https(self.stack, "vllm", "/v1/chat/completions", key=self.key, data=request)
            code = int(proc.stdout.rpartition("\n")[2] or 0) if proc.returncode == 0 else 0
            self.results.append((t0, time.monotonic(), code, proc.stdout[-300:]))
            time.sleep(0.5)

    def __enter__(self) -> Loop:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=200)

    def failures(self, start: float, end: float) -> tuple[list[str], list[str]]:
        """(failed outside [start, end], failed inside)."""
        outside: list[str] = []
        inside: list[str] = []
        for t0, t1, code, tail in self.results:
            if code == 200:
                continue
            line = f"{t0 - start:+.1f}s: {code} {tail!r}"
            (inside if t1 >= start and t0 <= end else outside).append(line)
        return outside, inside


def _models(stack: Stack, key: str) -> list[dict[str, object]]:
    code, body = status_and_body(https(stack, "vllm", "/v1/models", key=key))
    assert code == 200, body
    data: list[dict[str, object]] = json.loads(body)["data"]
    return data


def _liminati(
    stack: Stack, *args: str, timeout: float = SWITCH_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return stack.system.run(["liminati", *args, *HOST_ARGS], check=False, timeout=timeout)


@pytest.fixture(scope="module")
def key(stack: Stack) -> Iterator[str]:
    if stack.not_ready:
        pytest.fail(stack.not_ready)
    ready = stack
    proc = ready.system.run(["liminati", "keys", "add", "model-tests", *HOST_ARGS], timeout=300)
    token = proc.stdout.strip().splitlines()[-1].strip()
    deadline = time.monotonic() + 15
    while status_and_body(https(ready, "vllm", "/v1/models", key=token))[0] != 200:
        assert time.monotonic() < deadline, "the new key is not accepted"
        time.sleep(0.3)
    # the second model: a copy of the image's tiny Llama in vllm-user's own cache
    copy = (
        "mkdir -p /hf/local && rm -rf /hf/local/tiny-llama-b && "
        "cp -r /models/tiny-llama /hf/local/tiny-llama-b"
    )
    ready.system.run_as(
        "vllm-user",
        ["podman", "run", "--rm", "--entrypoint", "sh", "-v",
         "/var/lib/vllm/.cache/huggingface:/hf:Z", TAG.format("vllm"), "-c", copy],
        timeout=300,
    )  # fmt: skip
    yield token
    ready.system.run(["liminati", "keys", "revoke", "model-tests", *HOST_ARGS], check=False)


def test_switch_keeps_the_alias_answering(ready: Stack, key: str) -> None:
    before = _models(ready, key)
    assert [(m["id"], m["root"]) for m in before] == [(SERVED, ORIGINAL)], before
    with Loop(ready, key) as loop:
        time.sleep(3)
        start = time.monotonic()
        proc = _liminati(ready, "model", "switch", COPY)
        end = time.monotonic()
        time.sleep(5)
    print(output(proc))
    assert proc.returncode == 0, output(proc)
    after = _models(ready, key)
    assert [(m["id"], m["root"]) for m in after] == [(SERVED, COPY)], after
    outside, inside = loop.failures(start, end)
    served = sum(1 for r in loop.results if r[2] == 200)
    print(f"switch took {end - start:.0f} s; {len(loop.results)} requests, {served} answered, "
          f"{len(inside)} failed during the switch, {len(outside)} outside")  # fmt: skip
    print("failed during the switch (first 5):\n" + "\n".join(inside[:5]))
    assert served >= 5, loop.results
    assert not outside, "\n".join(outside)
    # recorded: a later install keeps serving the switched model
    state = json.loads(ready.system.run(["cat", STATE]).stdout)
    assert (
        state["slots"][SERVED]["model"] == COPY and state["slots"][SERVED]["previous"] == ORIGINAL
    )
    again = _liminati(ready, "install", timeout=600)
    assert "Nothing to change" in again.stdout + again.stderr, output(again)
    listing = ready.system.run(["liminati", "model", "list", "--json", *HOST_ARGS]).stdout
    served_list = json.loads(listing)["served"]
    assert served_list[0]["model"] == COPY and served_list[0]["previous"] == ORIGINAL


def test_a_model_that_cannot_start_is_rolled_back(ready: Stack, key: str) -> None:
    t0 = time.monotonic()
    proc = _liminati(ready, "model", "switch", "/models/does-not-exist")
    print(f"failed switch took {time.monotonic() - t0:.0f} s")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    assert "did not start" in text and f"still serves {COPY}" in text, text
    # the previous model answers, the standby is gone, the recorded switch unchanged
    assert [(m["id"], m["root"]) for m in _models(ready, key)] == [(SERVED, COPY)]
    units = ready.system.run(
        ["systemctl", "--user", "-M", "vllm-user@", "list-units", "--all", "--no-legend",
         "vllm-qwen-standby.service"], check=False,
    )  # fmt: skip
    assert "vllm-qwen-standby" not in units.stdout, units.stdout
    state = json.loads(ready.system.run(["cat", STATE]).stdout)
    assert state["slots"][SERVED]["model"] == COPY


TWO_MODELS = (
    CONFIG
    + f"""
[[models]]
name = "second"
alias = "tiny-second"
model = "{ORIGINAL}"
port = 8001
gpus = "none"
"""
)


def test_two_models_behind_one_base_url(ready: Stack, key: str) -> None:
    system = ready.system
    system.write_file(CONF, TWO_MODELS, mode=0o600)
    try:
        proc = _liminati(ready, "install", timeout=900)
        assert proc.returncode == 0, output(proc)
        deadline = time.monotonic() + 600
        while len(_models(ready, key)) < 2:
            assert time.monotonic() < deadline, "the second model never answered"
            time.sleep(3)
        listed = {m["id"]: m["root"] for m in _models(ready, key)}
        assert listed == {SERVED: COPY, "tiny-second": ORIGINAL}, listed
        for name in (SERVED, "tiny-second"):
            request = {"model": name, "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": 3}  # fmt: skip
            code, body = status_and_body(
                https(ready, "vllm", "/v1/chat/completions", key=key, data=json.dumps(request))
            )
            assert code == 200 and json.loads(body)["model"] == name, body
        request = {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
        code, body = status_and_body(
            https(ready, "vllm", "/v1/chat/completions", key=key, data=json.dumps(request))
        )
        assert code == 404 and "tiny-second" in body, body
        # Open WebUI was given the second connection, and offers both models
        said = proc.stdout + proc.stderr
        assert "Open WebUI connections: add http://127.0.0.1:8001/v1" in said, output(proc)
        token, both = admin(ready), sorted([SERVED, "tiny-second"])
        deadline = time.monotonic() + 60
        while webui_models(ready, token) != both and time.monotonic() < deadline:
            time.sleep(2)
        assert webui_models(ready, token) == both
        again = _liminati(ready, "plan", "--detailed-exitcode", timeout=300)
        assert again.returncode == 0, output(again)
    finally:
        system.write_file(CONF, CONFIG, mode=0o600)
        back = _liminati(ready, "install", timeout=900)
    text = back.stdout + back.stderr
    assert back.returncode == 0, text
    assert "stopped vllm-second.service" in text, text
    assert "Open WebUI connections: remove http://127.0.0.1:8001/v1" in text, text
    assert [m["id"] for m in _models(ready, key)] == [SERVED]
    token = admin(ready)
    deadline = time.monotonic() + 60
    while webui_models(ready, token) != [SERVED] and time.monotonic() < deadline:
        time.sleep(2)
    assert webui_models(ready, token) == [SERVED]
    quadlet = "/var/lib/vllm/.config/containers/systemd/vllm-second.container"
    gone = system.run(["test", "-e", quadlet], check=False)
    assert gone.returncode == 1


def test_switching_back_to_the_configured_model_clears_the_switch(ready: Stack, key: str) -> None:
    proc = _liminati(ready, "model", "switch", ORIGINAL)
    assert proc.returncode == 0, output(proc)
    assert [(m["id"], m["root"]) for m in _models(ready, key)] == [(SERVED, ORIGINAL)]
    state = json.loads(ready.system.run(["cat", STATE]).stdout)
    assert state["slots"] == {}, state
    again = _liminati(ready, "plan", "--detailed-exitcode", timeout=600)
    assert again.returncode == 0, output(again)


HUB_PORT = 18990
HUB_REPO = "test-org/tiny-llama"
#: a made-up token: what the fake hub accepts, and what must never show anywhere
HUB_TOKEN = "hf_liminatiTestToken0123456789abcdef"


@pytest.fixture
def fake_hub(stack: Stack) -> Iterator[str]:
    """The fake hub inside the system on 127.0.0.1, serving the live tier's tiny Llama."""
    system = stack.system
    source = Path(os.environ.get("LIMINATI_TINY_LLAMA", ""))
    if not (source / "config.json").is_file():
        pytest.fail("LIMINATI_TINY_LLAMA is not set: source the live tier's live-env.sh")
    folder = system.root / "srv/fake-hub/tiny"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(source, folder)
    system.write_file("/root/fake_hub.py", (Path(__file__).parent / "fake_hub.py").read_text())
    system.write_file("/root/hub-token", HUB_TOKEN + "\n", mode=0o600)
    system.run(["rm", "-f", "/root/hub.log"])
    system.run(["systemd-run", "--unit=liminati-test-hub", "--collect", "/usr/bin/python3",
                "/root/fake_hub.py", str(HUB_PORT), HUB_REPO, "/srv/fake-hub/tiny",
                "/root/hub-token", "/root/hub.log"])  # fmt: skip
    probe = f"import socket; socket.create_connection(('127.0.0.1', {HUB_PORT}), 1)"
    system.wait_until(["python3", "-c", probe], timeout=20)
    try:
        yield f"http://127.0.0.1:{HUB_PORT}"
    finally:
        system.run(["systemctl", "stop", "liminati-test-hub"], check=False)
        system.run(["liminati", "model", "token", "clear", *HOST_ARGS], check=False)
        system.run(["liminati", "model", "remove", HUB_REPO, "--purge", *HOST_ARGS], check=False)


def test_pull_a_gated_model_with_a_token(ready: Stack, fake_hub: str) -> None:
    system = ready.system
    env = {"HF_ENDPOINT": fake_hub}
    pull = ["liminati", "model", "pull", HUB_REPO, *HOST_ARGS]
    refused = system.run(pull, check=False, env=env, timeout=600)
    assert refused.returncode == 1, output(refused)
    assert "liminati model token set" in refused.stderr, output(refused)

    token_set = ["liminati", "model", "token", "set", *HOST_ARGS]
    saved = system.run(token_set, input=HUB_TOKEN + "\n", check=False)
    assert saved.returncode == 0, output(saved)
    mode = system.run(["stat", "-c", "%a %U", "/var/lib/vllm/.config/liminati/hf-token.env"])
    assert mode.stdout.split() == ["600", "vllm-user"]

    t0 = time.monotonic()
    pulled = system.run(pull, check=False, env=env, timeout=900)
    print(f"pull took {time.monotonic() - t0:.1f} s")
    assert pulled.returncode == 0, output(pulled)
    listing = json.loads(system.run(["liminati", "model", "list", "--json", *HOST_ARGS]).stdout)
    cached = {c["model"]: c for c in listing["cached"]}
    assert HUB_REPO in cached and cached[HUB_REPO]["bytes"] > 100_000, listing
    shown = json.loads(
        system.run(["liminati", "model", "show", HUB_REPO, "--json", *HOST_ARGS]).stdout
    )
    assert shown["config"]["model_type"] == "llama", shown
    # the hub saw the token on every request of the second pull; nobody else ever did
    hub_log = [
        json.loads(line) for line in system.run(["cat", "/root/hub.log"]).stdout.splitlines()
    ]
    assert any(r["path"].startswith(f"/{HUB_REPO}/resolve/") and r["token"] for r in hub_log)
    journal = system.run(["journalctl", "--no-pager", "-o", "cat"]).stdout
    for text in (refused.stdout, refused.stderr, saved.stdout, saved.stderr, pulled.stdout,
                 pulled.stderr, journal):  # fmt: skip
        assert HUB_TOKEN not in text
