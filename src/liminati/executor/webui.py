"""Open WebUI's admin API on the host's loopback: health, sign-in, the OpenAI connections.

The only calls liminati makes to Open WebUI; the admin's password and the bearer token go in
request bodies and headers, never in a URL, an argument or a message."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from liminati.errors import HostError

#: no proxy for loopback, whatever the environment says
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class SignInRefused(HostError):
    """Open WebUI answered, and refused the admin's email and password."""


class WebuiAdmin:
    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _call(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.base_url + path, data, headers, method=method)
        try:
            with _OPENER.open(req, timeout=self.timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except (OSError, ValueError) as exc:
            raise HostError(
                f"Open WebUI at {self.base_url} did not answer {method} {path}: {exc}",
                hint="is it running? `liminati status`, `liminati logs webui`",
            ) from None
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")[:200]

    def healthy(self) -> bool:
        try:
            status, _ = self._call("GET", "/health")
        except HostError:
            return False
        return status == 200

    def wait_healthy(self, timeout: float, tick: Callable[[float], None] = lambda _: None) -> None:
        """Until GET /health answers 200; `tick(elapsed)` about every 10 s while waiting."""
        start = last = time.monotonic()
        while not self.healthy():
            now = time.monotonic()
            if now - start > timeout:
                raise HostError(
                    f"Open WebUI at {self.base_url} was not healthy within {timeout:.0f} s",
                    hint="`liminati logs webui` shows why; then run `liminati install` again",
                )
            if now - last >= 10:
                tick(now - start)
                last = now
            time.sleep(1)

    def signin(self, email: str, password: str) -> str:
        status, body = self._call(
            "POST", "/api/v1/auths/signin", {"email": email, "password": password}
        )
        if status == 200 and isinstance(body, dict) and body.get("token"):
            return str(body["token"])
        detail = body.get("detail") if isinstance(body, dict) else body
        if status in (400, 401, 403):
            raise SignInRefused(
                f"Open WebUI refused to sign in {email} ({status}: {detail})",
                hint="the admin's email or password was changed in Open WebUI; add the "
                "connections under Admin settings > Connections, or put the current password "
                "in the secrets file webui-admin-password",
            )
        raise HostError(f"Open WebUI's sign-in answered {status}: {detail}")

    def openai_config(self, token: str) -> dict[str, Any]:
        status, body = self._call("GET", "/openai/config", token=token)
        if status != 200 or not isinstance(body, dict):
            raise HostError(f"Open WebUI's GET /openai/config answered {status}")
        return body

    def update_openai_config(self, token: str, body: dict[str, Any]) -> dict[str, Any]:
        status, answer = self._call("POST", "/openai/config/update", body, token=token)
        if status != 200 or not isinstance(answer, dict):
            detail = answer.get("detail") if isinstance(answer, dict) else answer
            raise HostError(f"Open WebUI refused the new connections ({status}: {detail})")
        return answer
