"""`/v1/models` through nginx: refused without a key, listing every configured model with one."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from liminati.checks.model import Check, fail, ok
from liminati.checks.web import NETWORK_ERRORS, Endpoint, Reply, describe_error, request

NAME = "api"
PATH = "/v1/models"
#: nginx's answers when vLLM is down or still loading its model
UPSTREAM_DOWN = (502, 503, 504)


def judge_models(without_key: Reply, with_key: Reply, served: Sequence[str], unit: str) -> Check:
    if without_key.status != 401:
        return fail(
            NAME,
            f"{PATH} without a key answered HTTP {without_key.status}, not 401: the API is open",
            "nginx must check keys: `liminati plan` shows a hand edit of nginx's files, "
            "`sudo liminati install --force` restores them",
        )
    if with_key.status == 401:
        return fail(
            NAME,
            f"{PATH} refused doctor's key (HTTP 401)",
            "nginx has not loaded the key map: `liminati logs nginx`; "
            "`sudo liminati restart nginx`",
        )
    if with_key.status in UPSTREAM_DOWN:
        return fail(
            NAME,
            f"{PATH}: nginx cannot reach vLLM (HTTP {with_key.status})",
            f"`liminati status`; `liminati logs {unit}` (a model still loading answers "
            f"{with_key.status} until it is ready)",
        )
    if with_key.status != 200:
        return fail(NAME, f"{PATH} answered HTTP {with_key.status}", "`liminati logs nginx`")
    try:
        listed = [str(m["id"]) for m in with_key.json()["data"]]
    except (ValueError, KeyError, TypeError):
        return fail(
            NAME,
            f"{PATH} answered 200 but not an OpenAI model list",
            "`liminati logs nginx`; is vLLM behind the proxy?",
        )
    missing = [name for name in served if name not in listed]
    if missing:
        return fail(
            NAME,
            f"{PATH} lists {', '.join(listed) or 'nothing'}; missing {', '.join(missing)}",
            "`liminati status`: is every vLLM unit running the configured model? "
            "`sudo liminati install` converges",
        )
    return ok(NAME, f"{PATH} lists {', '.join(listed)} with a key, 401 without")


def check_api(
    endpoint: Endpoint,
    key: str,
    served: Sequence[str],
    unit: str,
    *,
    key_grace: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Check:
    """`key_grace`: seconds to keep trying while nginx's new workers (after the reload that
    added doctor's key) take over; 0 when the key existed before."""
    where = f"https://{endpoint.name('vllm')}{PATH} at {endpoint.where}"
    try:
        without_key = request(endpoint, "vllm", "GET", PATH)
        deadline = time.monotonic() + key_grace
        while True:
            with_key = request(endpoint, "vllm", "GET", PATH, key=key)
            if with_key.status != 401 or time.monotonic() >= deadline:
                break
            sleep(0.25)
    except NETWORK_ERRORS as exc:
        return fail(
            NAME,
            f"{where}: {describe_error(exc)}",
            "is nginx running? `liminati status`; `liminati logs nginx`",
        )
    return judge_models(without_key, with_key, served, unit)
