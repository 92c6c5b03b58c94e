"""Open WebUI is given the models' connections through its admin API (liminati.apply.webui),
against the real Open WebUI.

Open WebUI stores `OPENAI_API_BASE_URLS` at its first start and ignores the environment
afterwards; this test shows that on the real server first (a second model in the environment
of a restart is not seen), then that liminati's sync makes it see both models, keeps an
admin's own connection, changes nothing when run again, and only warns when the admin's
password was changed in Open WebUI. The upstreams are stub_upstreams.py (declared fixtures: the
point is Open WebUI's configuration, not the models); everything runs in a namespace of its
own with only loopback.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from backends import LoopbackNamespace, OpenWebUI, in_netns, live_env, missing_live_env  # noqa: E402

from liminati.apply.webui import sync_connections  # noqa: E402
from liminati.render import WebuiConnections  # noqa: E402

pytestmark = pytest.mark.live

KEY = secrets.token_urlsafe(24)
FIRST, SECOND = "http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1"
#: an admin's own connection to another provider (disabled: nothing answers there)
THEIRS = "https://api.provider.invalid/v1"


class Site:
    def __init__(self, ns: str, work: Path) -> None:
        self.ns, self.work = ns, work
        self.stubs: list[subprocess.Popen[bytes]] = []
        self.webui: OpenWebUI | None = None
        self.password = secrets.token_urlsafe(18)
        self.secret_key = secrets.token_urlsafe(32)

    def stub(self, port: int, model: str) -> None:
        argv = [sys.executable, str(HERE / "stub_upstreams.py"), "api", str(port), "--model", model]
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "STUB_KEY": KEY},
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        self.stubs.append(proc)

    def start_webui(self, urls: list[str]) -> OpenWebUI:
        """Open WebUI as liminati's quadlet starts it, with `urls` in its environment."""
        self.webui = OpenWebUI(
            admin_password=self.password,
            secret_key=self.secret_key,
            openai_base_url=urls,
            openai_key=[KEY] * len(urls),
            netns=self.ns,
            data_dir=self.work / "data",
            log_dir=self.work,
        )
        self.webui.__enter__()
        return self.webui

    def stop_webui(self) -> None:
        if self.webui is not None:
            self.webui.stop()
            self.webui = None

    def close(self) -> None:
        self.stop_webui()
        for proc in self.stubs:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()

    def want(self, *urls: str, password: str | None = None) -> WebuiConnections:
        assert self.webui is not None
        return WebuiConnections(
            base_url=self.webui.base_url,
            admin_email=self.webui.admin_email,
            urls=urls,
            admin_password=self.password if password is None else password,
            api_key=KEY,
        )

    def sync(self, want: WebuiConnections) -> tuple[list[str], str | None]:
        said: list[str] = []
        warning = in_netns(self.ns, sync_connections, want, said.append, health_timeout=60)
        return said, warning

    def models(self) -> list[str]:
        assert self.webui is not None
        resp = self.webui.request("GET", "/api/models", token=self.webui.token())
        assert resp.status == 200, resp.text
        return sorted(m["id"] for m in resp.json()["data"])

    def openai_config(self) -> dict[str, Any]:
        assert self.webui is not None
        resp = self.webui.request("GET", "/openai/config", token=self.webui.token())
        assert resp.status == 200, resp.text
        config: dict[str, Any] = resp.json()
        return config


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("the live tier runs as root with iproute2 (bash scripts/install-test-deps.sh)")
    missing = missing_live_env(live_env(), "LIMINATI_WEBUI_PY")
    if missing:
        pytest.fail(missing)
    work = Path(f"/tmp/liminati-webui-sync-{os.getpid()}")
    work.mkdir(mode=0o700)
    with LoopbackNamespace() as ns:
        s = Site(ns.name, work)
        try:
            s.stub(8000, "qwen")
            s.stub(8001, "org/small-1b")
            yield s
        finally:
            s.close()
            shutil.rmtree(work, ignore_errors=True)


def test_open_webui_keeps_its_first_connections_and_the_sync_adds_a_new_model(site: Site) -> None:
    # first start: one model, taken from the environment
    site.start_webui([FIRST])
    assert site.models() == ["qwen"]
    # an admin adds a connection of their own in Admin settings (disabled)
    token = site.webui.token() if site.webui else ""
    body = {
        "ENABLE_OPENAI_API": True,
        "OPENAI_API_BASE_URLS": [FIRST, THEIRS],
        "OPENAI_API_KEYS": [KEY, "their-key"],
        "OPENAI_API_CONFIGS": {"0": {"prefix_id": ""}, "1": {"enable": False, "tags": []}},
    }
    assert site.webui is not None
    resp = site.webui.request("POST", "/openai/config/update", json_body=body, token=token)
    assert resp.status == 200, resp.text

    # a second model in [[models]]: liminati restarts Open WebUI with both in its environment,
    # and Open WebUI still shows one: its database wins
    site.stop_webui()
    site.start_webui([FIRST, SECOND])
    assert site.models() == ["qwen"]

    # liminati's sync: both models, the admin's connection kept after them with its key
    said, warning = site.sync(site.want(FIRST, SECOND))
    assert warning is None
    assert said == [f"Open WebUI connections: add {SECOND}; keep 1 other connection"]
    assert site.models() == ["org/small-1b", "qwen"]
    config = site.openai_config()
    assert config["OPENAI_API_BASE_URLS"] == [FIRST, SECOND, THEIRS]
    assert config["OPENAI_API_KEYS"] == [KEY, KEY, "their-key"]
    assert config["OPENAI_API_CONFIGS"]["2"] == {"enable": False, "tags": []}

    # again: nothing to do
    said, warning = site.sync(site.want(FIRST, SECOND))
    assert (said, warning) == (["Open WebUI has the connections of all 2 models"], None)

    # and it survives a restart (it is in Open WebUI's database now)
    site.stop_webui()
    site.start_webui([FIRST, SECOND])
    assert site.models() == ["org/small-1b", "qwen"]


def test_a_retired_model_goes_and_a_changed_password_only_warns(site: Site) -> None:
    if site.webui is None:
        site.start_webui([FIRST, SECOND])
    said, warning = site.sync(site.want(FIRST))
    assert warning is None and said == [
        f"Open WebUI connections: remove {SECOND}; keep 1 other connection"
    ]
    t0 = time.monotonic()
    while site.models() != ["qwen"] and time.monotonic() - t0 < 10:
        time.sleep(0.5)
    assert site.models() == ["qwen"]

    before = site.openai_config()
    said, warning = site.sync(site.want(FIRST, SECOND, password="not-the-password"))
    assert said == []
    assert warning is not None and warning.startswith(
        f"Open WebUI refused to sign in {site.webui.admin_email if site.webui else ''} (400"
    ), warning
    assert "not-the-password" not in warning and KEY not in warning
    assert SECOND in warning and "Admin settings > Connections" in warning
    assert site.openai_config() == before
    print(json.dumps({"warning": warning}))
